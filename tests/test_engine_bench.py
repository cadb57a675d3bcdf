"""bench/engine_throughput.py at a small size on the CPU (the embedded tiny model): decode
steps, offline throughput and prefill are measured and reported in the bench format, so a
broken bench shows here before a GPU run is spent on it."""
import json
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1] / "bench"))


def test_a_small_cpu_run_reports_every_kind_of_row(tmp_path):
    import engine_throughput
    argv = ["--shapes", "32x8x4,16x4x2", "--decode-batches", "1,4", "--decode-context", "64",
            "--decode-steps", "4", "--prefill-len", "64", "--out-dir", str(tmp_path)]
    assert engine_throughput.main(argv) == 0
    (out,) = tmp_path.glob("engine-cpu-*.json")
    doc = json.loads(out.read_text())
    assert doc["bench"] == "engine" and doc["hardware"] == "cpu"
    assert doc["command"] == "python bench/engine_throughput.py " + " ".join(argv)
    assert set(doc["metrics"]) == {"decode_b1_vs_floor", "prefill_64_mfu"}
    assert all(m["value"] > 0 for m in doc["metrics"].values())
    rows = doc["rows"]
    decode = [r for r in rows if r["kind"] == "decode"]
    assert [(r["batch"], r["steps"]) for r in decode] == [(1, 4), (4, 4)]
    assert all(r["step_ms_median"] > 0 for r in decode)
    thr = [r for r in rows if r["kind"] == "throughput"]
    assert [(r["requests"], r["input_len"], r["output_len"]) for r in thr] == [(4, 32, 8),
                                                                                 (2, 16, 4)]
    # every request ran to its output length (EOS ignored): output tokens / time = the rate
    assert all(abs(r["output_tok_s"] * r["seconds"] - r["requests"] * r["output_len"]) < 1e-6
               for r in thr)
    (pf,) = [r for r in rows if r["kind"] == "prefill"]
    assert pf["tokens"] == 64 and pf["tflops"] > 0
    (model,) = [r for r in rows if r["kind"] == "model"]
    assert model["model"] == "tiny" and model["kernel_backend"] == "torch"
