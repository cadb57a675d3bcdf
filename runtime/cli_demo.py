"""`agentkv demo`: serve the embedded `tiny` model and run the example agent against it.

Starts the server in this process on a free loopback port (sessions in a temporary data
directory unless --data-dir is given), runs `examples/agent_loop.py` against it as a separate
program, which prints per turn the time to first token and where the session's KV came from,
then shuts the server down gracefully.
"""
from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "agent_loop.py"


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="serve the tiny model and run the example agent against it")
    p.add_argument("--model", default="tiny", help='"tiny" or a Hugging Face model folder')
    p.add_argument("--device", default="auto")
    p.add_argument("--max-tokens", type=int, default=16, help="per turn")
    p.add_argument("--search-latency", type=float, default=1.0,
                   help="seconds the example's web search takes")
    p.add_argument("--data-dir", default=None, help="keep the sessions here (default: a "
                   "temporary folder, removed at the end)")
    p.add_argument("--verbose", action="store_true", help="show the server's log")


def run(args) -> int:
    from runtime.config import EngineConfig
    from runtime.server import ServerThread
    from runtime.server_config import ServerConfig

    if not EXAMPLE.is_file():
        print(f"agentkv demo: {EXAMPLE} is missing; the demo runs from a checkout of the "
              f"repository (pip install -e .)", file=sys.stderr)
        return 2
    if not args.verbose:
        logging.getLogger().setLevel(logging.ERROR)
    tmp = None if args.data_dir else tempfile.mkdtemp(prefix="agentkv-demo-")
    config = ServerConfig(engine=EngineConfig(model=args.model, device=args.device), port=0,
                          data_dir=args.data_dir or tmp, grace_s=5.0,
                          api_keys_from_env=False)     # a private loopback server, open
    print(f"agentkv demo: starting the server on {args.model} (building the tiny model on "
          f"first use) ...", flush=True)
    server = ServerThread(config).start()
    print(f"agentkv demo: serving on {server.target}; running {EXAMPLE.name}\n", flush=True)
    try:
        code = subprocess.call([sys.executable, str(EXAMPLE), "--target", server.target,
                                "--max-tokens", str(args.max_tokens),
                                "--search-latency", str(args.search_latency)])
    finally:
        server.stop()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nagentkv demo: server stopped; the example exited with status {code}")
    return code
