"""bench/kernels.py at its smoke size on the CPU (Triton interpreter): every section runs, every
kernel agrees with its torch reference, and the JSON has the shared bench format. A GPU run is
scarce; this catches a broken bench before one is spent on it."""
import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.append(str(BENCH))


def load_bench():
    """bench/kernels.py under its own name (`kernels` is the kernels package)."""
    spec = importlib.util.spec_from_file_location("bench_kernels", BENCH / "kernels.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_kernels"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_the_smoke_run_covers_every_section_and_agrees_with_the_references(tmp_path):
    bench = load_bench()
    bench.main(["--smoke", "--out-dir", str(tmp_path)])
    (out,) = tmp_path.glob("kernels-cpu-*.json")
    doc = json.loads(out.read_text())
    assert doc["bench"] == "kernels" and doc["hardware"] == "cpu"
    assert doc["command"] == f"python bench/kernels.py --smoke --out-dir {tmp_path}"
    assert doc["ceilings"]["copy_GBps"] > 0
    assert list(doc["metrics"]) == list(bench.GOALS)
    assert all(m["goal"] == bench.GOALS[k] for k, m in doc["metrics"].items())
    rows = doc["rows"]
    assert not [r for r in rows if "error" in r]           # no section failed
    ops = {r["op"] for r in rows}
    assert {"decode", "prefill", "block_pack", "block_unpack", "rms_norm_residual",
            "rotary", "write_kv"} <= ops, ops
    decode = [r for r in rows if r["op"] == "decode"]
    assert {r["case"] for r in decode} == set(bench.SMOKE.decode)
    checked = [r for r in rows if "rel_err" in r]
    assert checked and all(float(r["rel_err"]) < 2e-2 for r in checked), checked   # bf16
    assert all(r["ms"] > 0 for r in rows if "ms" in r)
