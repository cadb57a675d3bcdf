"""Python code generated from `proto/agentkv/v1/*.proto` (see proto/README.md).

`agentkv_proto.agentkv.v1.session_service_pb2` holds the messages of the session API and
`session_service_pb2_grpc` its stubs; `runtime.client` wraps them for Python callers.
Regenerate with `bash scripts/gen_proto.sh` after changing a .proto file.
"""
