"""Why a request waited before its first admission: totals per reason, on fake clocks."""
import logging

import pytest

import runtime.scheduler as scheduler_module
from kvstore.block_pool import BlockPool
from runtime.config import SamplingParams
from runtime.request import FinishReason, Request
from runtime.scheduler import Scheduler, SchedulerConfig
from runtime.wait_reasons import WaitReasons


def test_each_stretch_is_charged_to_the_reason_noted_before_it(caplog):
    w = WaitReasons(log_after_s=0.1)
    w.note("r", 10.0, "behind", 10.0)
    w.note("r", 10.0, "loading", 10.05)
    w.note("r", 10.0, "room", 10.25)
    with caplog.at_level(logging.INFO, logger="runtime.wait_reasons"):
        totals = w.admitted("r", 10.0, 10.3)
    assert totals == pytest.approx({"behind": 0.05, "loading": 0.2, "room": 0.05})
    assert "request r admitted after waiting 0.300 s: loading 0.200 s, behind 0.050 s, " \
           "room 0.050 s" in caplog.text
    assert len(w) == 0
    # admitted by the first pass that saw it: it waited for the step in flight
    assert w.admitted("s", 10.0, 10.004) == pytest.approx({"behind": 0.004})
    assert w.admitted("t", 10.0, 10.0) == {}


def test_a_short_wait_is_not_logged_and_a_forgotten_one_is_dropped(caplog):
    w = WaitReasons(log_after_s=0.1)
    w.note("a", 0.0, "slot", 0.01)
    w.note("b", 0.0, "room", 0.0)
    w.forget("b")
    with caplog.at_level(logging.INFO, logger="runtime.wait_reasons"):
        assert w.admitted("a", 0.0, 0.05) == pytest.approx({"behind": 0.01, "slot": 0.04})
        assert w.admitted("b", 0.0, 0.05) == pytest.approx({"behind": 0.05})
    assert "admitted after" not in caplog.text


def test_the_scheduler_names_the_slot_a_turn_waited_for(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(scheduler_module.time, "monotonic", lambda: clock[0])
    s = Scheduler(SchedulerConfig(64, 1, 4, 1024), BlockPool(16, 4, True), b"fp")
    a = Request("a", list(range(100, 110)), SamplingParams(max_tokens=4), 0.0)
    b = Request("b", list(range(200, 206)), SamplingParams(max_tokens=4), 0.0)
    s.add(a)
    s.add(b)
    out = s.schedule()                    # one sequence at a time: a runs, b waits for a slot
    assert [x.request.request_id for x in out.scheduled] == ["a"] and a.wait_reasons == {}
    clock[0] = 0.25
    s.finish(a, FinishReason.LENGTH)
    out = s.schedule()
    assert [x.request.request_id for x in out.scheduled] == ["b"]
    assert b.wait_reasons == pytest.approx({"behind": 0.0, "slot": 0.25})
    assert len(s.waits) == 0
