"""The `agentkv` command: each subcommand lives in its own module with `add_parser` and `run`."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# subcommand -> module holding `add_parser(subparsers)` and `run(args) -> int`
SUBCOMMANDS = {
    "generate": "runtime.cli_generate",
    "serve": "runtime.cli_serve",
    "demo": "runtime.cli_demo",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentkv", description="agent-aware LLM session runtime")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, mod in SUBCOMMANDS.items():
        try:
            modules[name] = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
            continue
        modules[name].add_parser(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(modules[args.command].run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
