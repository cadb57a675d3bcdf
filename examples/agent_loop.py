"""An agent with real local tools, running a multi-turn session with tool pauses on agentkv.

    python examples/agent_loop.py --target 127.0.0.1:50051 [--api-key KEY]

The agent has three tools that really run here:

* ``read_file``  reads a text file under the examples folder (notes.txt by default);
* ``web_search`` stands in for a web search: no network, it sleeps (``--search-latency``
  seconds, the time a real search takes) and answers from a small built-in index;
* ``calculator`` evaluates arithmetic safely: the expression is parsed with ``ast`` and only
  numbers and + - * / // % ** and unary minus are evaluated.

Each turn the model's output is parsed for tool calls (the server does it and returns them).
While a tool runs, the session is paused under the tool's name with the expected duration
(``session.tool(...)``), so the server can decide where the session's KV waits; the tool's
result goes back as a role "tool" message in the next turn.

The embedded ``tiny`` model has random weights: its output is noise and practically never a
tool call. When a turn has no parsable tool call, this agent follows its own task plan instead
(read the notes, search, calculate, then answer) and says so in its output. With a real model,
the model's own calls are run. Each turn prints its time to first token and where the context's
KV came from: reused from the GPU prefix cache (or loaded from the CPU / disk tier) versus
recomputed. From the second turn on, the earlier turns' tokens are reused, not recomputed.
"""
from __future__ import annotations

import argparse
import ast
import operator
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from runtime.client import AgentKVClient, AgentKVError, TurnResult  # noqa: E402

HERE = Path(__file__).resolve().parent

TOOLS = [
    {"type": "function", "function": {
        "name": "read_file", "description": "Read a text file from the agent's folder.",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}},
                       "required": ["path"]}}},
    {"type": "function", "function": {
        "name": "web_search", "description": "Search the web; returns short snippets.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}},
                       "required": ["query"]}}},
    {"type": "function", "function": {
        "name": "calculator", "description": "Evaluate an arithmetic expression.",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                       "required": ["expression"]}}},
]

# -- the tools ---------------------------------------------------------------------------------
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
        ast.Pow: operator.pow, ast.USub: operator.neg, ast.UAdd: operator.pos}


def calculator(expression: str) -> str:
    """Arithmetic only: numbers, + - * / // % ** and signs; anything else is refused."""
    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 100:
                raise ValueError("exponent too large")
            return _OPS[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.operand))
        raise ValueError(f"not arithmetic: {ast.dump(node)[:60]}")
    try:
        return repr(ev(ast.parse(expression, mode="eval")))
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError) as e:
        return f"error: {e}"


def read_file(path: str, root: Path = HERE, limit: int = 4000) -> str:
    """A text file under `root` (no escaping it), at most `limit` characters."""
    p = (root / path).resolve()
    if root.resolve() not in p.parents and p != root.resolve():
        return f"error: {path} is outside {root}"
    try:
        return p.read_text(encoding="utf-8")[:limit]
    except OSError as e:
        return f"error: {e}"


_INDEX = {
    "compound interest": "Compound interest: balance = principal * (1 + rate) ** years, for "
                         "yearly compounding (rate as a fraction: 5 % is 0.05).",
    "kv cache": "The KV cache holds attention keys and values of past tokens so they need not "
                "be recomputed.",
}


def make_web_search(latency_s: float):
    def web_search(query: str) -> str:
        time.sleep(latency_s)              # the time a real search would take
        hits = [text for key, text in _INDEX.items() if key in query.lower()]
        return "\n".join(hits) or f"no results for {query!r}"
    return web_search


# -- the agent ---------------------------------------------------------------------------------
PLAN = [
    ("read_file", {"path": "notes.txt"}),
    ("web_search", {"query": "compound interest formula"}),
    ("calculator", {"expression": "1000 * (1 + 0.05) ** 3"}),
]
TASK = ("Read notes.txt, look up how compound interest works, and compute the balance the "
        "notes ask for. Use the tools.")


def describe(turn: int, r: TurnResult) -> str:
    kv = r.kv_source
    return (f"turn {turn}: ttft {r.ttft_s * 1e3:7.1f} ms | kv reused {r.reused_tokens:5d} "
            f"(gpu {kv['gpu']}, cpu {kv['cpu']}, disk {kv['disk']}) recomputed "
            f"{kv['recomputed']:5d} | finish {r.finish_reason:9s} | {r.completion_tokens} "
            f"tokens out, {r.context_tokens} in the session")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default="127.0.0.1:50051")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--max-tokens", type=int, default=16, help="per turn")
    ap.add_argument("--search-latency", type=float, default=1.0, help="seconds")
    ap.add_argument("--wait-s", type=float, default=30.0,
                    help="how long to wait for the server to answer")
    args = ap.parse_args(argv)
    try:
        return run(args)
    except AgentKVError as e:
        print(f"agent_loop: {e}", file=sys.stderr)
        return 1


def run(args) -> int:
    tools = {"read_file": read_file, "web_search": make_web_search(args.search_latency),
             "calculator": calculator}
    expected = {"read_file": 0.01, "web_search": args.search_latency, "calculator": 0.01}

    with AgentKVClient(args.target, api_key=args.api_key) as client:
        client.wait_ready(args.wait_s)
        with client.session(system_prompt="You are a careful assistant. Think, then call tools.",
                            tools=TOOLS, max_tokens=args.max_tokens) as s:
            print(f"session {s.id} on {args.target}; task: {TASK}")
            plan = list(PLAN)
            messages = [{"role": "user", "content": TASK}]
            turn, results = 0, {}
            while True:
                turn += 1
                r = s.run(messages)
                print(describe(turn, r))
                print(f"         model wrote: {r.text[:70]!r}")
                if r.tool_calls:
                    calls = [(c.name, c.arguments, c.id) for c in r.tool_calls]
                    print(f"         the model called {', '.join(c[0] for c in calls)} "
                          f"(session paused on {r.session.paused_tool})")
                elif plan:
                    name, arguments = plan.pop(0)
                    calls = [(name, arguments, "")]
                    print(f"         no tool call in the model's output (the tiny model has "
                          f"random weights): following the task plan -> {name}({arguments})")
                else:
                    break
                messages = []
                for name, arguments, call_id in calls:
                    fn = tools.get(name)
                    t0 = time.perf_counter()
                    with s.tool(name, expected_s=expected.get(name)):
                        try:
                            result = fn(**arguments) if fn else f"error: no tool named {name!r}"
                        except TypeError as e:
                            result = f"error: bad arguments for {name}: {e}"
                    print(f"         tool {name} -> {result.strip()[:70]!r} "
                          f"({time.perf_counter() - t0:.2f} s paused)")
                    results[name] = result
                    messages.append({"role": "tool", "content": result, "name": name,
                                     "tool_call_id": call_id})
                if turn >= 8:
                    break
            print(f"done: {turn} turns, {r.context_tokens} tokens in the session's log; the "
                  f"tools computed {results.get('calculator', 'nothing')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
