#!/usr/bin/env bash
# Generate the Python code of proto/agentkv/v1/*.proto into agentkv_proto/agentkv/v1/.
#
#   bash scripts/gen_proto.sh            regenerate the checked-in files
#   bash scripts/gen_proto.sh OUT_DIR    write OUT_DIR/agentkv/v1/*.py instead (the test compares)
#
# protoc writes imports as `from agentkv.v1 import x_pb2` (the proto path); the generated files
# live in the `agentkv_proto` package, so those imports are rewritten to
# `from agentkv_proto.agentkv.v1 import x_pb2`. Needs grpcio-tools (the version pinned in
# proto/README.md: another version writes different files).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/agentkv_proto}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cd "$root/proto"
python3 -m grpc_tools.protoc -I . \
  --python_out="$tmp" --pyi_out="$tmp" --grpc_python_out="$tmp" \
  agentkv/v1/*.proto
mkdir -p "$out/agentkv/v1"
for f in "$tmp"/agentkv/v1/*.py "$tmp"/agentkv/v1/*.pyi; do
  sed -e 's/^from agentkv\.v1 import /from agentkv_proto.agentkv.v1 import /' \
      "$f" > "$out/agentkv/v1/$(basename "$f")"
done
