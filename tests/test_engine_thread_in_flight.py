"""Commands served while a prefill step is on the device: submissions, aborts and the session
hooks' calls run during the step, a plain call waits for the step's end, and order holds."""
import threading
import time

import pytest
import torch

from hf_models import save_model
from runtime import Engine, EngineConfig, SamplingParams
from runtime.engine_thread import EngineThread


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_model("llama", tmp_path_factory.mktemp("llama") / "model", max_pos=512)


def prompt(n, seed):
    return torch.randint(3, 512, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def wait_for(cond, timeout=10.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.002)


def tokens(stream):
    return [t for o in stream for t in o.new_token_ids]


def test_commands_run_while_a_prefill_step_is_in_flight_and_plain_calls_wait(folder):
    cfg = EngineConfig(model=str(folder), device="cpu", dtype="float32", num_gpu_blocks=64,
                       max_num_batched_tokens=256, kernel_backend="torch")
    params = SamplingParams(max_tokens=4, ignore_eos=True)
    a, b = prompt(40, 1), prompt(24, 2)
    want = Engine(cfg).generate([a, b], params)
    loop = EngineThread(Engine(cfg))
    # On a CPU a step is done when launched: hold the first prefill step "on the device" until
    # the test lets it go (the thread's own predicate is the device's event)
    on_device, release, serve = threading.Event(), threading.Event(), loop._serve_in_flight

    def held_step(done):
        if not release.is_set():
            on_device.set()
        serve(lambda: release.is_set() and done())
        release.wait(10)                            # the read-back waits for the device
    loop.engine.while_in_flight = held_step
    loop.start()
    try:
        ran: list[str] = []

        def note(name):
            return lambda engine: ran.append((name, release.is_set(), len(engine.requests)))
        sa = loop.submit(a, params, "a")
        assert on_device.wait(10)
        loop.call(note("hook"), wait=False, in_flight_ok=True)
        sb = loop.submit(b, params, "b")
        loop.call(note("plain"), wait=False)
        loop.call(note("hook-after-plain"), wait=False, in_flight_ok=True)
        wait_for(lambda: loop.commands_in_flight == 2)
        time.sleep(0.05)                            # the plain call is held, not run
        assert ran == [("hook", False, 1)]
        assert "b" in loop.engine.requests          # submitted during the step
        release.set()
        assert tokens(sa) == want[0].token_ids and tokens(sb) == want[1].token_ids
        assert ran == [("hook", False, 1), ("plain", True, 2), ("hook-after-plain", True, 2)]
        assert loop.commands_in_flight == 2 and loop.loop_errors == 0
        during, between = (loop.engine.step_log.commands[k] for k in ("during_steps",
                                                                       "between_steps"))
        assert during[0] == 2 and during[1] > 0 and between[0] >= 3   # a, plain, hook after
    finally:
        release.set()
        loop.shutdown()


def test_shutdown_during_a_step_in_flight_ends_the_thread(folder):
    cfg = EngineConfig(model=str(folder), device="cpu", dtype="float32", num_gpu_blocks=64,
                       kernel_backend="torch")
    loop = EngineThread(Engine(cfg))
    on_device, serve = threading.Event(), loop._serve_in_flight

    def never_done(done):
        on_device.set()
        serve(lambda: False)
    loop.engine.while_in_flight = never_done
    loop.start()
    stream = loop.submit(prompt(16, 3), SamplingParams(max_tokens=2, ignore_eos=True), "a")
    assert on_device.wait(10)
    loop.shutdown(timeout=10)
    assert not loop.alive and not loop._thread.is_alive()
    with pytest.raises(Exception, match="shut down"):
        tokens(stream)


def test_a_failing_device_query_ends_the_wait_and_the_read_back_goes_on(folder):
    cfg = EngineConfig(model=str(folder), device="cpu", dtype="float32", num_gpu_blocks=64,
                       kernel_backend="torch")
    loop = EngineThread(Engine(cfg))
    serve, seen = loop._serve_in_flight, []

    def failing(done):
        def query():
            seen.append(1)
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        serve(query)
    loop.engine.while_in_flight = failing
    loop.start()
    try:
        got = tokens(loop.submit(prompt(16, 4), SamplingParams(max_tokens=3, ignore_eos=True),
                                 "a"))
        assert len(got) == 3 and seen and loop.loop_errors == 0
    finally:
        loop.shutdown()
