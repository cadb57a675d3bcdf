"""The checked-in generated code equals what scripts/gen_proto.sh makes from proto/ now."""
import filecmp
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ROOT / "agentkv_proto" / "agentkv" / "v1"


def test_generated_code_is_current(tmp_path):
    subprocess.run(["bash", str(ROOT / "scripts" / "gen_proto.sh"), str(tmp_path)], check=True,
                   env={**os.environ,
                        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"})
    fresh = tmp_path / "agentkv" / "v1"
    made = sorted(p.name for p in fresh.iterdir())
    assert made, "gen_proto.sh generated nothing"
    checked_in = sorted(p.name for p in GENERATED.iterdir() if p.suffix in (".py", ".pyi")
                        and p.name != "__init__.py")
    assert made == checked_in, "generated files differ in name: run bash scripts/gen_proto.sh"
    stale = [n for n in made if not filecmp.cmp(fresh / n, GENERATED / n, shallow=False)]
    assert not stale, f"{stale} are not current with proto/: run bash scripts/gen_proto.sh"


def test_every_rpc_has_standard_request_and_response_names():
    from agentkv_proto.agentkv.v1 import session_service_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["SessionService"]
    names = {m.name for m in service.methods}
    assert names == {"CreateSession", "Generate", "Pause", "Resume", "GetSession", "ListSessions",
                     "CloseSession", "Cancel"}
    for m in service.methods:
        assert m.input_type.name == f"{m.name}Request"
        assert m.output_type.name == f"{m.name}Response"
    assert service.methods_by_name["Generate"].server_streaming
    from agentkv_proto.agentkv.v1 import session_pb2
    for enum in session_pb2.DESCRIPTOR.enum_types_by_name.values():
        prefix = "".join("_" + c if c.isupper() else c for c in enum.name).lstrip("_").upper()
        assert enum.values[0].number == 0 and enum.values[0].name == f"{prefix}_UNSPECIFIED"
        assert all(v.name.startswith(prefix + "_") for v in enum.values)
