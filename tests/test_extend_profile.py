"""bench/extend_profile.py on the CPU tiny model: one step per extend, and its report."""
import json
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1] / "bench"))


def test_an_extend_is_one_step_and_the_report_names_each_shape(tmp_path):
    import extend_profile
    assert extend_profile.main(["--model", "tiny", "--device", "cpu", "--contexts", "96,1024",
                                "--new", "8,40", "--turns", "2", "--out-dir",
                                str(tmp_path)]) == 0
    (out,) = tmp_path.glob("extend_profile-cpu-*.json")
    doc = json.loads(out.read_text())
    assert doc["bench"] == "extend_profile" and doc["hardware"] == "cpu"
    assert [(r["context"], r["new_tokens"]) for r in doc["rows"]] == [
        (96, 8), (96, 40), (1024, 8), (1024, 40)]
    for r in doc["rows"]:
        assert r["steps_per_turn"] == 1.0 and 0 < r["wall_ms_min"] <= r["wall_ms_median"]
        assert r["host_ops"]
    assert set(doc["metrics"]) == {f"extend_n{n}_ctx{c}_{m}" for n in (8, 40)
                                   for c in ("96", "1k") for m in ("wall_ms", "gpu_busy_ms")}
