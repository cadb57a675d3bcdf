"""The `agentkv` command: each subcommand lives in its own module with `add_parser` and `run`.

A failure its user can fix (a model folder that is not there, a port taken, an unreadable key
file, a bad setting) ends the command with one line on stderr, `agentkv <command>: <what to
change>`, and exit status 1; `--log-level DEBUG` also logs where it was raised. Other errors
keep their traceback.
"""
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


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions whose message tells the user what to change (see the module docstring)."""
    from kvstore.lmdb_env import DiskStoreError
    from runtime.errors import StartupError
    from sessions.errors import SessionFormatError, SessionStoreError
    return (ValueError, OSError, StartupError, DiskStoreError, SessionStoreError,
            SessionFormatError)


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
    try:
        return int(modules[args.command].run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except user_errors() as e:
        logging.getLogger("agentkv").debug("agentkv %s failed", args.command, exc_info=True)
        print(f"agentkv {args.command}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
