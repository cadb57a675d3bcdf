"""`agentkv serve`: the gRPC session service on one model.

Prints `agentkv serving on HOST:PORT` on stdout once it listens (with --port 0, the free port it
picked), and shuts down gracefully on SIGINT or SIGTERM: no new calls, running turns get
--grace-s seconds, sessions stay in the data directory for the next start.
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from runtime.config import CPU_BLOCK_SIZE, CUDA_BLOCK_SIZE, EXTEND_GRAPH_MAX_TOKENS
from runtime.server_config import POLICIES


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve the gRPC session API (agentkv.v1.SessionService)")
    p.add_argument("--model", default="tiny", help='a Hugging Face model folder, or "tiny"')
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default loopback; 0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=50051, help="0 picks a free port")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="auto", help="auto, fp32, fp16, bf16")
    p.add_argument("--gpu-memory-fraction", type=float, default=0.85)
    p.add_argument("--num-gpu-blocks", type=int, default=None,
                   help="KV blocks on the device (overrides --gpu-memory-fraction)")
    p.add_argument("--block-size", type=int, default=None,
                   help=f"tokens per KV block, a power of two (default {CUDA_BLOCK_SIZE} on CUDA, "
                        f"{CPU_BLOCK_SIZE} on CPU)")
    p.add_argument("--max-num-batched-tokens", type=int, default=2048,
                   help="token budget of one engine step (prefill chunk size)")
    p.add_argument("--extend-graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="replay small prefill, extend and mixed steps (up to "
                        "--extend-graph-max-tokens) from CUDA graphs (default: on with CUDA "
                        "and the triton kernels)")
    p.add_argument("--extend-graph-max-tokens", type=int, default=EXTEND_GRAPH_MAX_TOKENS,
                   metavar="N",
                   help="the largest step replayed from an extend graph: a power of two >= 16 "
                        "(each doubling captures one more graph per sequence bucket)")
    p.add_argument("--cpu-cache-gb", type=float, default=0.0, help="pinned CPU KV tier size")
    p.add_argument("--stats-log-interval-s", type=float, default=10.0,
                   help="log a line on the engine's progress this often while it works (at "
                        "INFO; 0: never)")
    p.add_argument("--first-token-log-s", type=float, default=None, metavar="S",
                   help="log (at INFO) where the time went for each request whose first token "
                        "took S seconds or more: its queue and the steps it ran in")
    p.add_argument("--disk-cache-path", default=None,
                   help="LMDB folder of the disk KV tier (default: the data directory)")
    p.add_argument("--disk-cache-gb", type=float, default=0.0, help="disk KV tier size (0: off)")
    p.add_argument("--policy", choices=POLICIES, default="agent",
                   help="where paused sessions' KV goes (agentkv's own policy, or a baseline)")
    p.add_argument("--policy-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting of the policy, repeatable (agent: a field of AgentConfig, "
                        "e.g. resume_step_tokens=768 or none; ttl: min_ttl_s, max_ttl_s)")
    p.add_argument("--api-keys", default=None, metavar="FILE",
                   help="JSON or TOML file mapping API keys to tenants (AGENTKV_API_KEYS adds "
                        "key1:tenant1,key2:tenant2); none: open server, one tenant 'default'")
    p.add_argument("--data-dir", default=None,
                   help="LMDB environment with the sessions (default $XDG_DATA_HOME/agentkv "
                        "or ~/.local/share/agentkv)")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus metrics on this loopback port (0: a free one)")
    p.add_argument("--max-sessions-per-tenant", type=int, default=1000)
    p.add_argument("--max-concurrent-turns", type=int, default=64, help="per tenant")
    p.add_argument("--max-prompt-tokens", type=int, default=32768)
    p.add_argument("--max-output-tokens", type=int, default=4096)
    p.add_argument("--max-message-bytes", type=int, default=4 * 2**20)
    p.add_argument("--default-max-tokens", type=int, default=256,
                   help="max_tokens of a turn when neither the session nor the turn sets it")
    p.add_argument("--pause-prior-scale", type=float, default=1.0,
                   help="multiply the published pause-length priors of the pause estimator by "
                        "this (e.g. 0.25 for a replay that runs pauses 4x faster)")
    p.add_argument("--session-ttl-s", type=float, default=24 * 3600.0,
                   help="idle sessions expire after this long (0: never)")
    p.add_argument("--grace-s", type=float, default=10.0,
                   help="at shutdown, how long running turns may finish")
    p.add_argument("--tls-cert", default=None, metavar="PEM",
                   help="serve with TLS: the server's certificate (chain), with --tls-key")
    p.add_argument("--tls-key", default=None, metavar="PEM", help="the certificate's private key")
    p.add_argument("--tls-client-ca", default=None, metavar="PEM",
                   help="mutual TLS: require client certificates signed by these CAs")


def config_from_args(args):
    from runtime.config import EngineConfig
    from runtime.limits import Limits
    from runtime.server_config import ServerConfig
    from sessions.policies.options import parse_policy_options

    engine = EngineConfig(model=args.model, device=args.device, dtype=args.dtype,
                          gpu_memory_fraction=args.gpu_memory_fraction,
                          num_gpu_blocks=args.num_gpu_blocks, block_size=args.block_size,
                          max_num_batched_tokens=args.max_num_batched_tokens,
                          extend_graphs=args.extend_graphs,
                          extend_graph_max_tokens=args.extend_graph_max_tokens,
                          cpu_cache_gb=args.cpu_cache_gb,
                          stats_log_interval_s=args.stats_log_interval_s,
                          first_token_log_s=args.first_token_log_s,
                          disk_cache_path=args.disk_cache_path, disk_cache_gb=args.disk_cache_gb)
    limits = Limits(max_sessions_per_tenant=args.max_sessions_per_tenant,
                    max_concurrent_turns=args.max_concurrent_turns,
                    max_prompt_tokens=args.max_prompt_tokens,
                    max_output_tokens=args.max_output_tokens,
                    max_message_bytes=args.max_message_bytes)
    return ServerConfig(engine=engine, host=args.host, port=args.port, data_dir=args.data_dir,
                        api_key_file=args.api_keys, policy=args.policy,
                        policy_options=parse_policy_options(args.policy, args.policy_option),
                        limits=limits,
                        metrics_port=args.metrics_port, grace_s=args.grace_s,
                        session_ttl_s=args.session_ttl_s or None,
                        default_max_tokens=args.default_max_tokens,
                        pause_prior_scale=args.pause_prior_scale,
                        tls_cert=args.tls_cert, tls_key=args.tls_key,
                        tls_client_ca=args.tls_client_ca)


async def serve(config) -> None:
    from runtime.server import AgentKVServer

    server = AgentKVServer(config)
    port = await server.start()
    print(f"agentkv serving on {config.host}:{port}", flush=True)
    if server.metrics_port is not None:
        print(f"agentkv metrics on http://{config.metrics_host}:{server.metrics_port}/metrics",
              flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()


def run(args) -> int:
    try:
        config = config_from_args(args)
    except ValueError as e:
        print(f"agentkv serve: {e}", file=sys.stderr)
        return 2
    asyncio.run(serve(config))
    return 0
