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
    assert [r["variant"] for r in doc["rows"]] == ["split_off", "split_auto", "torch_sdpa_dense"]
    assert doc["rows"][0]["splits"] == 1 and doc["rows"][1]["splits"] == 2
    assert all(r["ms"] > 0 for r in doc["rows"])
    assert list(doc["metrics"]) == ["extend_attn_1x8_ctx256_split_speedup"]
