"""Plays a workload against one server: a bounded number of sessions at once, pauses honoured.

Each of `concurrency` worker threads takes the next session, opens it, and plays its turns: send
the turn's input, stream the output (greedy, EOS ignored), then pause as the workload says
(Pause with the tool's name, sleep the compressed pause, Resume) and go on. A session's job
completion time runs from its first request to the end of its last turn, pauses included (the
same for every server). Per turn it records the time to first token seen by the client, the
decode speed, and where the server says the prompt's KV came from.

The server side is a `Backend`: `GrpcBackend` here for agentkv, `HFPeerBackend` in
bench/hf_session_peer.py for the transformers peer.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from agent_workload import ReplaySession, ReplayTurn


@dataclass
class TurnOutcome:
    """What a backend saw of one turn (times from time.perf_counter())."""
    sent_at: float
    first_at: float | None
    last_at: float | None
    token_ids: list[int]
    kv_source: dict[str, int] = field(default_factory=dict)
    server_ttft_s: float | None = None
    prompt_tokens: int = 0
    server_queue_s: float | None = None     # engine arrival -> admission, from the server
    server_queue_reasons: dict[str, float] | None = None   # that time by reason
    server_session: str | None = None       # the server's session id (its log names it)


class Backend(Protocol):
    name: str

    def open(self, session: ReplaySession) -> Any: ...
    def turn(self, handle: Any, turn: ReplayTurn, timeout_s: float | None = None
             ) -> TurnOutcome: ...
    def pause(self, handle: Any, turn: ReplayTurn) -> None: ...
    def resume(self, handle: Any) -> None: ...
    def close(self, handle: Any) -> None: ...


@dataclass
class TurnRecord:
    session: str
    turn: int
    resume: bool                       # the first turn after a pause
    pause_before_s: float              # replay seconds slept before it (0 on the first turn)
    pause_before_real_s: float         # the workload's pause before compression
    tool_before: str | None
    human_before: bool
    prompt_tokens: int                 # the whole context the turn starts from
    input_tokens: int
    output_tokens: int
    start_s: float                     # from the run's start
    ttft_s: float                      # request sent -> first token, at the client
    turn_s: float                      # request sent -> last token
    decode_tok_s: float                # tokens after the first / their time
    server_ttft_s: float | None
    kv_source: dict[str, int]
    token_ids: list[int]
    server_queue_s: float | None = None  # engine arrival -> admission (in server_ttft_s)
    server_queue_reasons: dict[str, float] | None = None   # that time by reason
    server_session: str | None = None
    # the server's and the engine's first-token lines for this turn, read back from the
    # server's log (runtime/first_token_log.py); None unless the turn was logged
    first_token: dict | None = None


@dataclass
class SessionRecord:
    session: str
    start_s: float
    end_s: float
    turns: int
    pause_s: float
    error: str | None = None

    @property
    def jct_s(self) -> float:
        return self.end_s - self.start_s


@dataclass
class ReplayResult:
    backend: str
    turns: list[TurnRecord] = field(default_factory=list)
    sessions: list[SessionRecord] = field(default_factory=list)
    wall_s: float = 0.0
    errors: list[str] = field(default_factory=list)

    def outputs(self) -> dict[str, list[list[int]]]:
        """Generated token ids per session, turn by turn."""
        out: dict[str, list[list[int]]] = {}
        for t in sorted(self.turns, key=lambda t: (t.session, t.turn)):
            out.setdefault(t.session, []).append(t.token_ids)
        return out


class GrpcBackend:
    """agentkv over gRPC, through the project's Python client (runtime/client.py)."""

    def __init__(self, target: str, name: str = "agentkv", timeout_s: float = 60.0):
        from runtime.client import AgentKVClient
        self.name = name
        self.client = AgentKVClient(target, timeout=timeout_s)   # unary calls
        self.client.wait_ready(60.0)

    def open(self, session: ReplaySession):
        return self.client.session()

    def turn(self, handle, turn: ReplayTurn, timeout_s: float | None = None) -> TurnOutcome:
        from runtime.client import Delta
        sent = time.perf_counter()
        first = last = None
        ids: list[int] = []
        result = None
        for event in handle.generate(token_ids=list(turn.input_ids), max_tokens=turn.output_tokens,
                                     temperature=0.0, ignore_eos=True,
                                     timeout=timeout_s or 600.0):
            if isinstance(event, Delta):
                if event.token_ids:
                    last = time.perf_counter()
                    first = first or last
                    ids += event.token_ids
            else:
                result = event
        if result is None:
            raise RuntimeError("the turn ended without a result")
        return TurnOutcome(sent, first, last, ids, dict(result.kv_source), result.ttft_s,
                           result.prompt_tokens, result.queue_s, dict(result.queue_reasons),
                           handle.id)

    def pause(self, handle, turn: ReplayTurn) -> None:
        handle.pause(turn.tool_after or "user", human=turn.human_after)

    def resume(self, handle) -> None:
        from runtime.client import AgentKVError
        try:
            handle.resume()
        except AgentKVError as e:
            if e.code != "FAILED_PRECONDITION":       # already resumed by the server
                raise

    def close(self, handle) -> None:
        handle.close()

    def shutdown(self) -> None:
        self.client.close()


@dataclass
class DriverConfig:
    concurrency: int = 8
    deadline_s: float | None = None     # stop starting turns after this long (recorded)
    progress_every_s: float = 10.0


def replay(backend: Backend, sessions: list[ReplaySession], cfg: DriverConfig,
           log: Callable[[str], None] = print, label: str = "") -> ReplayResult:
    """Play every session (at most `cfg.concurrency` at once); never raises for a failed turn."""
    res = ReplayResult(backend.name)
    todo: queue.Queue[ReplaySession] = queue.Queue()
    for s in sessions:
        todo.put(s)
    lock = threading.Lock()
    t0 = time.perf_counter()
    deadline = None if cfg.deadline_s is None else t0 + cfg.deadline_s
    total_turns = sum(len(s.turns) for s in sessions)
    stop = threading.Event()

    def play(s: ReplaySession) -> None:
        start = time.perf_counter()
        done, slept, err = 0, 0.0, None
        handle = None
        try:
            handle = backend.open(s)
            prev: ReplayTurn | None = None
            prompt = 0
            for t in s.turns:
                if deadline is not None and time.perf_counter() > deadline:
                    err = "deadline"
                    break
                if prev is not None:
                    backend.pause(handle, prev)
                    time.sleep(prev.pause_after_s)
                    slept += prev.pause_after_s
                    backend.resume(handle)
                left = None if deadline is None else max(5.0, deadline - time.perf_counter())
                o = backend.turn(handle, t, left)
                rec = _record(s, t, prev, o, prompt, t0)
                prompt = rec.prompt_tokens + len(o.token_ids)
                with lock:
                    res.turns.append(rec)
                done += 1
                prev = t
        except Exception as e:                 # recorded, the run goes on
            err = f"{type(e).__name__}: {e}"
        finally:
            if handle is not None:
                try:
                    backend.close(handle)
                except Exception as e:
                    err = err or f"close: {e}"
        with lock:
            res.sessions.append(SessionRecord(s.session_id, start - t0, time.perf_counter() - t0,
                                              done, slept, err))
            if err:
                res.errors.append(f"{s.session_id}: {err}")

    def worker() -> None:
        while not stop.is_set():
            try:
                s = todo.get_nowait()
            except queue.Empty:
                return
            play(s)

    def progress() -> None:
        while not stop.wait(cfg.progress_every_s):
            with lock:
                n, ns = len(res.turns), len(res.sessions)
                ttfts = sorted(t.ttft_s for t in res.turns if t.resume)
            p50 = f"{1e3 * ttfts[len(ttfts) // 2]:.0f} ms" if ttfts else "-"
            log(f"[{label or backend.name}] {n}/{total_turns} turns, {ns}/{len(sessions)} "
                f"sessions done, {time.perf_counter() - t0:.0f} s, resume TTFT p50 {p50}, "
                f"{len(res.errors)} errors")

    threads = [threading.Thread(target=worker, daemon=True)
               for _ in range(max(1, min(cfg.concurrency, len(sessions))))]
    mon = threading.Thread(target=progress, daemon=True)
    mon.start()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    stop.set()
    res.wall_s = time.perf_counter() - t0
    res.turns.sort(key=lambda t: t.start_s)
    res.sessions.sort(key=lambda s: s.start_s)
    return res


def _record(s: ReplaySession, t: ReplayTurn, prev: ReplayTurn | None, o: TurnOutcome,
            context_before: int, t0: float) -> TurnRecord:
    first = o.first_at if o.first_at is not None else o.sent_at
    last = o.last_at if o.last_at is not None else first
    n = len(o.token_ids)
    decode = (n - 1) / (last - first) if n > 1 and last > first else 0.0
    return TurnRecord(
        s.session_id, t.index, prev is not None, prev.pause_after_s if prev else 0.0,
        prev.pause_real_s if prev else 0.0, prev.tool_after if prev else None,
        bool(prev and prev.human_after), o.prompt_tokens or context_before + len(t.input_ids),
        len(t.input_ids), n, o.sent_at - t0, first - o.sent_at, last - o.sent_at, decode,
        o.server_ttft_s, o.kv_source, o.token_ids, o.server_queue_s, o.server_queue_reasons,
        o.server_session)
