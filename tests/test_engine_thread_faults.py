"""The engine thread survives errors outside a step's own guard: a failing hook is logged and
skipped, a failing step ends the requests in flight with an error (never a hang), and the next
requests are served with every block back in the pool."""
import pytest
import torch

from hf_models import save_model
from runtime import Engine, EngineConfig, FinishReason, SamplingParams
from runtime.engine_thread import EngineThread


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_model("llama", tmp_path_factory.mktemp("llama") / "model", max_pos=512)


def make_loop(folder):
    eng = Engine(EngineConfig(model=str(folder), device="cpu", dtype="float32",
                              num_gpu_blocks=64, max_num_batched_tokens=256,
                              kernel_backend="torch"))
    return EngineThread(eng).start()


def prompt(n, seed):
    return torch.randint(3, 512, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def run(loop, p, rid, n=6):
    return list(loop.submit(p, SamplingParams(max_tokens=n, ignore_eos=True), rid))


def test_failing_hook_is_skipped_and_requests_complete(folder):
    loop = make_loop(folder)
    try:
        want = run(loop, prompt(12, 1), "a")
        calls = []

        def bad_hook(engine):
            calls.append(1)
            if len(calls) <= 3:
                raise RuntimeError("tier bookkeeping broke")
        loop.on_step.append(bad_hook)
        got = run(loop, prompt(12, 1), "b")
        assert [t for o in got for t in o.new_token_ids] == \
            [t for o in want for t in o.new_token_ids]
        assert got[-1].finish_reason is FinishReason.LENGTH and got[-1].error is None
        assert loop.loop_errors == 3 and loop.alive
    finally:
        loop.shutdown()


def test_failing_step_fails_requests_in_flight_then_serves_the_next(folder):
    loop = make_loop(folder)
    try:
        eng = loop.engine
        real = eng.scheduler.schedule
        state = {"steps": 0}

        def flaky():
            state["steps"] += 1
            if state["steps"] == 3:      # mid-generation of both requests
                raise RuntimeError("scheduler invariant broken")
            return real()
        eng.scheduler.schedule = flaky
        s1 = loop.submit(prompt(20, 2), SamplingParams(max_tokens=50, ignore_eos=True), "x")
        s2 = loop.submit(prompt(9, 3), SamplingParams(max_tokens=50, ignore_eos=True), "y")
        for s in (s1, s2):
            outs = list(s)                                   # ends; does not hang
            assert outs[-1].finished and outs[-1].finish_reason is FinishReason.ERROR
            assert "scheduler invariant broken" in outs[-1].error
        assert loop.loop_errors == 1 and loop.alive
        assert loop.call(lambda e: (e.pool.num_free_blocks, len(e.requests))) == (64, 0)
        after = run(loop, prompt(12, 4), "z")
        assert after[-1].finish_reason is FinishReason.LENGTH
        assert sum(len(o.new_token_ids) for o in after) == 6
    finally:
        loop.shutdown()


def test_the_loop_does_not_spin_while_waiting_turns_cannot_start(folder):
    """Every waiting turn's prefix still loading, nothing running: the loop waits between
    empty steps instead of spinning (a spinning loop holds the GIL that the copy thread needs
    after each copy of the load), and the turn runs once it can."""
    import time
    from runtime.scheduler import SchedulerOutput
    loop = make_loop(folder)
    try:
        eng = loop.engine
        real = eng.scheduler.schedule
        state = {"loading": True, "empty_steps": 0}

        def schedule():
            if state["loading"]:
                state["empty_steps"] += 1
                return SchedulerOutput()
            return real()
        eng.scheduler.schedule = schedule
        stream = loop.submit(prompt(12, 3), SamplingParams(max_tokens=4, ignore_eos=True), "w")
        time.sleep(0.3)
        spun = state["empty_steps"]
        state["loading"] = False
        got = list(stream)
        assert got[-1].finish_reason is FinishReason.LENGTH
        assert sum(len(o.new_token_ids) for o in got) == 4
        assert 10 <= spun <= 2000, spun    # about one per millisecond (the old loop: 100,000)
    finally:
        loop.shutdown()
