"""The engine's step loop on a background thread, streaming each request's tokens to its caller.

Callers (the gRPC server's event loop, or plain threads) never touch the engine directly: they
post commands to a queue that the engine thread drains between steps, and receive outputs through
a `RequestStream`, which is either a blocking iterator or an asyncio async iterator (its items are
handed to the event loop with `call_soon_threadsafe`, so the loop never waits on the GPU).
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from runtime.config import SamplingParams
from runtime.engine import Engine
from runtime.errors import EngineStoppedError
from runtime.request import FinishReason, RequestOutput

log = logging.getLogger(__name__)


class RequestStream:
    """The outputs of one request, in order, ending with one whose `finished` is True."""

    def __init__(self, request_id: str, loop: asyncio.AbstractEventLoop | None = None):
        self.request_id = request_id
        self._loop = loop
        self._aq: asyncio.Queue | None = asyncio.Queue() if loop is not None else None
        self._q: queue.Queue = queue.Queue()
        self.finished = False

    def put(self, item: RequestOutput | BaseException) -> None:
        if self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._aq.put_nowait, item)
            except RuntimeError:   # the event loop has closed: nobody is listening
                pass
        else:
            self._q.put(item)

    def __iter__(self):
        while not self.finished:
            item = self._q.get()
            if isinstance(item, BaseException):
                self.finished = True
                raise item
            self.finished = item.finished
            yield item

    def __aiter__(self):
        return self._aiter()

    async def _aiter(self):
        while not self.finished:
            item = await self._aq.get()
            if isinstance(item, BaseException):
                self.finished = True
                raise item
            self.finished = item.finished
            yield item


@dataclass
class _Add:
    prompt: list[int]
    params: SamplingParams
    request_id: str
    priority: float | None
    stream: RequestStream
    done: threading.Event
    error: list
    submitted: float = 0.0      # time.monotonic() at submit: the request's arrival


@dataclass
class _Call:
    fn: Callable[[Engine], Any]
    done: threading.Event
    result: list
    in_flight_ok: bool = False  # may run while a step is on the device (see EngineThread.call)


# how often the engine thread looks whether the step in flight is done while it waits for
# commands (the most a step's read-back is delayed by serving them)
IN_FLIGHT_POLL_S = 0.0005


def _done_or_failed(done: Callable[[], bool]) -> bool:
    try:
        return done()
    except Exception:             # a device error: the step's read-back raises and reports it
        return True


class EngineThread:
    """Runs `engine.step()` in a loop on its own thread while there is work."""

    def __init__(self, engine: Engine):
        self.engine = engine
        engine.online = True      # turns arrive between steps: prefill steps are read back
        self._cmds: queue.Queue = queue.Queue()
        self._streams: dict[str, RequestStream] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.on_step: list[Callable[[Engine], None]] = []   # hooks run between steps
        self.loop_errors = 0      # errors caught in the loop (hooks, tier polls, steps)
        self.stall_wait_s = 0.001  # the pause between steps that launched nothing
        self._held = None         # a command taken while a step ran that had to wait for its end
        engine.while_in_flight = self._serve_in_flight

    def start(self) -> "EngineThread":
        self._thread = threading.Thread(target=self._run, name="agentkv-engine", daemon=True)
        self._thread.start()
        return self

    @property
    def commands_in_flight(self) -> int:
        """Commands handled while a prefill step ran on the device, since start."""
        return self.engine.step_log.commands["during_steps"][0]

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def submit(self, prompt: list[int], params: SamplingParams, request_id: str,
               priority: float | None = None, loop: asyncio.AbstractEventLoop | None = None) -> RequestStream:
        """Queue a request; raises InvalidRequestError at once if the engine would refuse it."""
        if not self.alive:
            raise EngineStoppedError("the engine is not running")
        self.engine.validate(prompt, params)   # read-only checks: safe from any thread
        stream = RequestStream(request_id, loop)
        self._cmds.put(_Add(prompt, params, request_id, priority, stream, threading.Event(), [],
                            time.monotonic()))
        return stream

    def abort(self, request_id: str) -> None:
        self.call(lambda e: self._abort(request_id), wait=False, in_flight_ok=True)

    def call(self, fn: Callable[[Engine], Any], wait: bool = True, timeout: float | None = None,
             in_flight_ok: bool = False):
        """Run `fn(engine)` on the engine thread between steps (the only safe place to touch it).

        With `in_flight_ok`, it may also run while a launched step is still on the device and
        committed (its tokens counted as computed), as everything does between async steps: it
        must not step the engine or wait for the step's tokens. Calls run in the order posted."""
        if not self.alive:
            raise EngineStoppedError("the engine is not running")
        c = _Call(fn, threading.Event(), [], in_flight_ok)
        self._cmds.put(c)
        if not wait:
            return None
        if not c.done.wait(timeout):
            raise TimeoutError("the engine did not answer in time")
        if c.result and isinstance(c.result[0], BaseException):
            raise c.result[0]
        return c.result[0] if c.result else None

    def shutdown(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._cmds.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
        for s in list(self._streams.values()):
            s.put(EngineStoppedError("the engine shut down before the request finished"))
        self._streams.clear()

    # -- engine thread ----------------------------------------------------------------------
    def _abort(self, request_id: str) -> None:
        out = self.engine.abort(request_id)
        stream = self._streams.pop(request_id, None)
        if stream is not None:
            stream.put(out or RequestOutput(request_id, [], None, True, FinishReason.ABORT))

    def _handle(self, cmd) -> None:
        if isinstance(cmd, _Add):
            try:
                self.engine.add_request(cmd.prompt, cmd.params, cmd.request_id, cmd.priority,
                                        arrival=cmd.submitted)
                self._streams[cmd.request_id] = cmd.stream
            except Exception as e:
                cmd.stream.put(e)
        elif isinstance(cmd, _Call):
            try:
                cmd.result.append(cmd.fn(self.engine))
            except BaseException as e:  # handed back to the caller
                cmd.result.append(e)
            cmd.done.set()

    def _run(self) -> None:
        stalled = False
        while not self._stop.is_set():
            # Idle: wait for a command. Work that cannot go on (every waiting turn's prefix is
            # still being loaded, nothing runs): wait a little too, instead of spinning. A
            # spinning loop holds the GIL, and the copy thread, which takes the GIL back after
            # each of the hundreds of copies of a load, then waits a switch interval each time:
            # an H100 replay saw a 25 ms load of 635 blocks take 4 s.
            idle = not self.engine.has_unfinished()
            block = idle or stalled
            t_cmds, n_cmds = None, 0
            try:
                if self._held is not None:      # it waited for the step's end: first now
                    cmd, self._held = self._held, None
                else:
                    cmd = self._cmds.get(block=block, timeout=(0.5 if idle else
                                                               self.stall_wait_s)
                                         if block else None)
                t_cmds = time.perf_counter()
                while True:
                    if cmd is not None:
                        self._handle(cmd)
                        n_cmds += 1
                    cmd = self._cmds.get_nowait()
            except queue.Empty:
                pass
            if self._stop.is_set():
                break
            t_hooks = time.perf_counter()
            for hook in self.on_step:
                try:
                    hook(self.engine)
                except Exception:   # a hook (KV policy, tier moves) must not stop the engine
                    self.loop_errors += 1
                    log.exception("engine hook %r failed; the engine goes on without it this "
                                  "step", getattr(hook, "__qualname__", hook))
            self.engine.step_log.between_steps(t_hooks - t_cmds if t_cmds is not None else 0.0,
                                               time.perf_counter() - t_hooks, n_cmds)
            if not self.engine.has_unfinished():
                if getattr(self.engine, "tiers", None) is not None:
                    # idle: finish tier copies anyway, so the blocks and slots they hold are
                    # released without waiting for the next request
                    try:
                        self.engine.tiers.poll()
                    except Exception:
                        self.loop_errors += 1
                        log.exception("KV tier poll failed while idle")
                continue
            try:
                outs = self.engine.step()
                stalled = not outs and not self.engine.launched_last_step
            except Exception as e:
                # an error outside the step's own guard: end the requests in flight with an
                # error (their callers get a status, not a hang) and keep serving
                self.loop_errors += 1
                log.exception("engine step failed; failing the %d requests in flight",
                              len(self.engine.requests))
                outs = self.engine.fail_all(e)
            self._deliver(outs)

    def _serve_in_flight(self, done: Callable[[], bool]) -> None:
        """An online prefill step runs on the device (`Engine.while_in_flight`): handle the
        commands that may run then (submissions, aborts, `in_flight_ok` calls such as the KV
        controller's session hooks) until it is done, so their host work overlaps the GPU's and
        a turn submitted meanwhile is in the very next step. The first other command stops it
        and waits, held, for the step's end (order kept). A device error in `done()` ends it:
        the read-back that follows reports the error for the step's requests."""
        while self._held is None and not self._stop.is_set() and not _done_or_failed(done):
            try:
                cmd = self._cmds.get(timeout=IN_FLIGHT_POLL_S)
            except queue.Empty:
                continue
            if isinstance(cmd, _Add) or (isinstance(cmd, _Call) and cmd.in_flight_ok):
                t0 = time.perf_counter()
                self._handle(cmd)
                self.engine.step_log.served_in_flight(time.perf_counter() - t0)
            else:
                self._held = cmd        # a plain call, or the shutdown's None

    def _deliver(self, outs: list[RequestOutput]) -> None:
        for out in outs:
            stream = self._streams.get(out.request_id)
            if stream is None:
                continue
            if out.finished:
                del self._streams[out.request_id]
            stream.put(out)
