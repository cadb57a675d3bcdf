"""bench/extend_attention.py at its smoke size on the CPU: its report's cases and format."""
import json
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1] / "bench"))


def test_the_smoke_run_reports_each_variant(tmp_path):
    import extend_attention
    assert extend_attention.main(["--smoke", "--out-dir", str(tmp_path)]) == 0
    (out,) = tmp_path.glob("extend_attention-cpu-*.json")
    doc = json.loads(out.read_text())
    assert doc["bench"] == "extend_attention" and doc["ceilings"]["copy_GBps"] > 0
    alone = [r for r in doc["rows"] if r["case"] == "1x8_ctx256"]
    mixed = [r for r in doc["rows"] if r["case"] == "1x8_ctx256+2dec_ctx64"]
    assert [r["variant"] for r in alone] == ["split_off", "split_auto", "split_3",
                                             "torch_sdpa_dense"]
    assert [r["variant"] for r in mixed] == ["split_off", "split_auto", "split_3"]
    assert [r["splits"] for r in alone[:3]] == [1, 2, 3]
    assert all(r["ms"] > 0 for r in doc["rows"])
    # every split count computes what the prefill kernels do (fp32 on the CPU)
    assert all(r["rel_err_vs_off"] < 1e-5 for r in alone[:3] + mixed)
    assert list(doc["metrics"]) == [f"extend_attn_{c}_{m}_speedup"
                                    for c in ("1x8_ctx256", "1x8_ctx256+2dec_ctx64")
                                    for m in ("split", "best")]
