"""Generated code of `agentkv.v1`: session_pb2, session_service_pb2, session_service_pb2_grpc."""
