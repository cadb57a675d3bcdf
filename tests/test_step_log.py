"""The engine's periodic progress line."""
import logging
import time

from runtime.step_log import StepLog


def test_the_line_sums_its_interval_and_counts_preemptions_since_the_last(caplog):
    caplog.set_level(logging.INFO, logger="runtime.engine")
    sl = StepLog(interval_s=0.05)
    for prompt, decode, poll in ((2048, 3, 0.0015), (100, 7, 0.0)):
        t0 = time.perf_counter()
        sl.scheduled(0.002 if poll else 0.001, poll)
        time.sleep(0.01)
        sl.record(prompt, decode, t0)
    sl.between_steps(0.003, 0.004)
    sl.served_in_flight(0.002)
    sl.served_in_flight(0.0012)
    assert not sl.maybe_log(2, 1, 5, 1, 10, 100)       # the interval is not over yet
    time.sleep(0.06)
    assert sl.maybe_log(2, 1, 5, 1, 10, 100)
    line = caplog.records[-1].getMessage()
    assert line.startswith("steps: 2 in ")
    assert "2 running, 1 waiting; preempted 5 (growth) + 1 (room" in line
    assert "(scheduling 2 ms, 2 polling the tiers)" in line and "10 of 100 GPU blocks free" in line
    assert "(commands 3 ms, hooks 4 ms); 2 commands in 3 ms while steps ran;" in line
    t0 = time.perf_counter()
    sl.record(1, 0, t0)
    time.sleep(0.06)
    assert sl.maybe_log(1, 0, 7, 1, 10, 100)
    assert "preempted 2 (growth) + 0 (room" in caplog.records[-1].getMessage()


def test_no_line_when_idle_or_off(caplog):
    caplog.set_level(logging.INFO, logger="runtime.engine")
    idle = StepLog(interval_s=0.01)
    time.sleep(0.02)
    assert not idle.maybe_log(0, 0, 0, 0, 1, 1)
    off = StepLog(interval_s=0.0)
    off.record(5, 5, time.perf_counter())
    assert not off.maybe_log(1, 0, 0, 0, 1, 1)
    assert not caplog.records


def test_a_slow_step_is_warned_and_counted_even_with_the_line_off(caplog):
    caplog.set_level(logging.INFO, logger="runtime.engine")
    sl = StepLog(interval_s=0.0)
    sl.record(100, 2, time.perf_counter() - 0.01)                # a normal step
    assert sl.slow_steps == 0 and not caplog.records
    sl.scheduled(0.003, 0.001)
    sl.record(2048, 5, time.perf_counter() - 2.1)               # e.g. a kernel compiled in it
    assert sl.slow_steps == 1 and 2.1 <= sl.slow_step_s < 2.5
    (rec,) = caplog.records
    assert rec.levelno == logging.WARNING
    msg = rec.getMessage()
    assert msg.startswith("slow engine step: 2") and "2048 prompt and 5 decode" in msg
    assert "(scheduling 3 ms, 1 of them polling the tiers); 1 such steps so far" in msg
