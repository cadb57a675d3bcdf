"""SessionManager: lifecycle, auto-pause, abort, idle expiry, tenant limits, hooks, restore."""
import itertools
import threading
import time

import lmdb
import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sessions.errors import (IllegalTransition, InvalidArgument, InvalidSessionId,
                             SessionLimitExceeded, SessionNotFound, SessionStoreError,
                             StaleTurnHandle)
from sessions.estimator import PauseEstimator
from sessions.hooks import KVPolicyHook
from sessions.manager import SessionManager
from sessions.state import SessionState
from sessions.store import SessionStore

W, A, P, C, X = (SessionState.WAITING, SessionState.ACTIVE, SessionState.PAUSED,
                 SessionState.CLOSED, SessionState.EXPIRED)


class FakeClock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t

    def advance(self, dt):
        self.t += dt


class RecordingHook:
    """Records every call as (method, state, log length, pause tool)."""

    def __init__(self):
        self.calls = []

    def _rec(self, name, s):
        self.calls.append((name, s.state, len(s.token_log), s.pause.tool if s.pause else None))

    def on_turn_end(self, s):
        self._rec("on_turn_end", s)

    def on_pause(self, s):
        self._rec("on_pause", s)

    def on_resume(self, s):
        self._rec("on_resume", s)

    def on_close(self, s):
        self._rec("on_close", s)


class RecordingEstimator:
    def __init__(self):
        self.observed = []

    def observe(self, tool, human, duration_s):
        self.observed.append((tool, human, duration_s))

    def expected(self, tool, human=False, hint_s=None):
        return PauseEstimator().expected(tool, human, hint_s)


@pytest.fixture
def env(tmp_path):
    e = lmdb.open(str(tmp_path / "db"), map_size=64 << 20, max_dbs=8)
    yield e
    e.close()


@pytest.fixture
def clock():
    return FakeClock()


def make(env, clock, **kw):
    return SessionManager(SessionStore(env), clock=clock, **kw)


def one_turn(mgr, tenant, sid, inp, out, **kw):
    h = mgr.begin_turn(tenant, sid, inp, [{"role": "user", "content": "q"}])
    return mgr.end_turn(h, out, "stop", kv_source={"recomputed": len(h.prompt_token_ids)},
                        ttft_s=0.5, first_token_at=mgr.clock(), **kw)


# -- lifecycle -----------------------------------------------------------------------------------
def test_lifecycle_commits_each_turn_before_returning(env, clock):
    mgr = make(env, clock)
    s = mgr.create("acme", "tiny", system_prompt="sys", tools=[{"name": "grep"}],
                   sampling_defaults={"temperature": 0.2})
    assert (s.state, s.token_log, s.turns, s.ttl_s) == (W, [], [], 24 * 3600.0)
    h = mgr.begin_turn("acme", s.session_id, [1, 2, 3], [{"role": "user", "content": "hi"}])
    assert (h.turn_index, h.prompt_token_ids) == (0, [1, 2, 3])
    assert mgr.get("acme", s.session_id).state is A
    assert mgr.store.load(s.session_id).token_log == []        # nothing of the turn yet
    clock.advance(2.0)
    done = mgr.end_turn(h, [4, 5], "stop", [], {"recomputed": 3}, 0.25, 1001.5,
                        assistant_message={"role": "assistant", "content": "yo"})
    assert (done.state, done.token_log) == (W, [1, 2, 3, 4, 5])
    t = done.turns[0]
    assert (t.index, t.input_tokens, t.output_tokens, t.started_at, t.ended_at, t.ttft_s,
            t.first_token_at, t.finish_reason, t.kv_source) == \
        (0, 3, 2, 1000.0, 1002.0, 0.25, 1001.5, "stop", {"recomputed": 3})
    assert [m["content"] for m in done.messages] == ["hi", "yo"]
    assert mgr.store.load(s.session_id) == done                # durable before end_turn returned
    h2 = mgr.begin_turn("acme", s.session_id, [6])
    assert (h2.turn_index, h2.prompt_token_ids) == (1, [1, 2, 3, 4, 5, 6])
    mgr.end_turn(h2, [7], "length")
    closed = mgr.close("acme", s.session_id)
    assert (closed.state, closed.closed_at) == (C, clock.t)
    assert mgr.store.load(s.session_id) is None
    assert mgr.get("acme", s.session_id).state is C            # still answers, for a while
    with pytest.raises(IllegalTransition, match=r"is CLOSED; cannot start a turn \(legal: none\)"):
        mgr.begin_turn("acme", s.session_id, [1])
    clock.advance(301)
    mgr.expire_idle()
    with pytest.raises(SessionNotFound):
        mgr.get("acme", s.session_id)


def test_snapshots_are_copies(env, clock):
    mgr = make(env, clock)
    s = mgr.create("acme", "tiny")
    one_turn(mgr, "acme", s.session_id, [1], [2])
    got = mgr.get("acme", s.session_id)
    got.token_log.append(99)
    got.messages.clear()
    assert mgr.get("acme", s.session_id).token_log == [1, 2]
    assert len(mgr.get("acme", s.session_id).messages) == 1


def test_a_second_concurrent_turn_is_refused(env, clock):
    mgr = make(env, clock)
    s = mgr.create("acme", "tiny")
    results, barrier = [], threading.Barrier(6)

    def go():
        barrier.wait()
        try:
            results.append(mgr.begin_turn("acme", s.session_id, [1]))
        except IllegalTransition as e:
            results.append(e)

    threads = [threading.Thread(target=go) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [r for r in results if isinstance(r, IllegalTransition)]
    assert len(errors) == 5 and len(results) == 6
    assert "is ACTIVE; cannot start a turn (legal: end a turn" in str(errors[0])


def test_bad_input_is_refused_with_what_is_allowed(env, clock):
    mgr = make(env, clock)
    s = mgr.create("acme", "tiny")
    with pytest.raises(InvalidArgument, match=r"appended_token_ids\[1\] = -3 is not a token id"):
        mgr.begin_turn("acme", s.session_id, [1, -3])
    with pytest.raises(InvalidArgument, match="the turn has no tokens"):
        mgr.begin_turn("acme", s.session_id, [])
    with pytest.raises(InvalidSessionId, match="'s_' followed by 32 URL-safe base64"):
        mgr.get("acme", "s_short")
    with pytest.raises(InvalidArgument, match="tenant '' is not valid"):
        mgr.create("", "tiny")
    with pytest.raises(InvalidArgument, match="JSON-like"):
        mgr.create("acme", "tiny", sampling_defaults={"x": object()})
    with pytest.raises(InvalidArgument, match="page_size must be >= 0"):
        mgr.list("acme", -1)
    assert mgr.get("acme", s.session_id).state is W            # nothing changed
    h = mgr.begin_turn("acme", s.session_id, [1])
    with pytest.raises(InvalidArgument, match="kv_source must map tier names"):
        mgr.end_turn(h, [2], "stop", kv_source={"gpu": "many"})
    with pytest.raises(InvalidArgument, match="output_token_ids must be a sequence"):
        mgr.end_turn(h, ["x"], "stop")
    assert mgr.end_turn(h, [2], "stop").token_log == [1, 2]    # the turn is still in flight


# -- pauses --------------------------------------------------------------------------------------
def test_turn_ending_in_a_tool_call_auto_pauses_with_a_forecast(env, clock):
    est = RecordingEstimator()
    mgr = make(env, clock, estimator=est)
    s = mgr.create("acme", "tiny")
    h = mgr.begin_turn("acme", s.session_id, [1, 2])
    calls = [{"id": "c1", "name": "grep", "arguments": {"q": "x"}}]
    done = mgr.end_turn(h, [3], "tool_call", calls, {}, 0.1, 1000.1, auto_pause_tool="grep")
    want = PauseEstimator().expected("grep", False, None)
    assert done.state is P and done.turns[0].tool_calls == calls
    assert (done.pause.tool, done.pause.expected_s, done.pause.human, done.pause.started_at,
            done.pause.forecast_p50_s, done.pause.forecast_source) == \
        ("grep", None, False, 1000.0, want.p50_s, "prior")
    clock.advance(4.0)                      # the client refines: a human looks at the result
    refined = mgr.pause("acme", s.session_id, "grep", expected_s=60.0, human=True)
    assert (refined.pause.started_at, refined.pause.human, refined.pause.forecast_p50_s,
            refined.pause.forecast_source) == (1000.0, True, 60.0, "hint")
    clock.advance(8.0)
    resumed = mgr.resume("acme", s.session_id, hint_s=1.5)
    assert (resumed.state, resumed.pause, resumed.resume_expected_at) == (W, None, 1013.5)
    assert est.observed == [("grep", True, 12.0 + 1.5)]
    with pytest.raises(IllegalTransition, match=r"is WAITING; cannot resume \(legal: start a"):
        mgr.resume("acme", s.session_id)


def test_a_turn_starting_on_a_paused_session_resumes_it(env, clock):
    est, hook = RecordingEstimator(), RecordingHook()
    mgr = make(env, clock, estimator=est, policy_hook=hook)
    s = mgr.create("acme", "tiny")
    mgr.pause("acme", s.session_id, "human", human=True)
    clock.advance(30.0)
    h = mgr.begin_turn("acme", s.session_id, [5])
    assert mgr.get("acme", s.session_id).pause is None
    assert est.observed == [("human", True, 30.0)]
    assert hook.calls[-1] == ("on_resume", A, 0, None)
    with pytest.raises(IllegalTransition, match="is ACTIVE; cannot pause"):
        mgr.pause("acme", s.session_id, "grep")
    mgr.end_turn(h, [6], "stop")


def test_the_real_estimator_learns_from_resumes(env, clock):
    est = PauseEstimator()
    mgr = make(env, clock, estimator=est)
    s = mgr.create("acme", "tiny")
    for _ in range(3):
        mgr.pause("acme", s.session_id, "compile")
        clock.advance(40.0)
        mgr.resume("acme", s.session_id)
    assert est.count("compile") == 3
    p = mgr.pause("acme", s.session_id, "compile").pause
    assert p.forecast_source == "learned" and p.forecast_p50_s == est.expected("compile").p50_s


# -- abort ---------------------------------------------------------------------------------------
def test_abort_keeps_the_log_at_the_last_completed_turn(env, clock):
    mgr = make(env, clock)
    s = mgr.create("acme", "tiny")
    first = one_turn(mgr, "acme", s.session_id, [1, 2], [3])
    mgr.pause("acme", s.session_id, "grep")
    h = mgr.begin_turn("acme", s.session_id, [4, 5], [{"role": "tool", "content": "r"}])
    back = mgr.abort_turn(h, "client disconnected")
    assert (back.state, back.pause, back.token_log, back.turns, back.messages) == \
        (W, None, [1, 2, 3], first.turns, first.messages)
    assert mgr.store.load(s.session_id) == back
    assert mgr.abort_turn(h, "again") is None                  # idempotent
    with pytest.raises(IllegalTransition, match="is WAITING; cannot end a turn"):
        mgr.end_turn(h, [9], "stop")
    h2 = mgr.begin_turn("acme", s.session_id, [6])
    with pytest.raises(StaleTurnHandle, match="turn 1 of .* is no longer in flight"):
        mgr.end_turn(h, [9], "stop")                           # the old handle, same index
    assert mgr.abort_turn(h, "stale") is None
    assert mgr.end_turn(h2, [7], "stop").token_log == [1, 2, 3, 6, 7]


def test_a_failed_commit_leaves_the_turn_in_flight_and_abortable(tmp_path, clock):
    env = lmdb.open(str(tmp_path / "small"), map_size=1 << 20, max_dbs=8)
    mgr = make(env, clock)
    s = mgr.create("acme", "tiny")
    one_turn(mgr, "acme", s.session_id, [1], [2])
    h = mgr.begin_turn("acme", s.session_id, [3] * (1 << 20))   # 4 MiB: more than the map
    with pytest.raises(SessionStoreError, match="is full"):
        mgr.end_turn(h, [4], "stop")
    assert mgr.get("acme", s.session_id).state is A
    assert mgr.abort_turn(h, "store full").token_log == [1, 2]
    assert mgr.store.load(s.session_id).token_log == [1, 2]
    env.close()


def test_a_rewrite_cuts_the_log_back(env, clock):
    mgr = make(env, clock)
    s = mgr.create("acme", "tiny")
    one_turn(mgr, "acme", s.session_id, [1, 2, 3], [4, 5])
    h = mgr.begin_turn("acme", s.session_id, [9, 9], keep_log_tokens=2)
    assert (h.prompt_token_ids, h.dropped_tokens) == ([1, 2, 9, 9], 3)
    done = mgr.end_turn(h, [8], "stop")
    assert done.token_log == [1, 2, 9, 9, 8] and done.turns[1].rewritten_tokens == 3
    assert mgr.store.load(s.session_id).token_log == [1, 2, 9, 9, 8]
    with pytest.raises(InvalidArgument, match=r"keep_log_tokens=9 is outside \[0, 5\]"):
        mgr.begin_turn("acme", s.session_id, [1], keep_log_tokens=9)


# -- expiry and limits ---------------------------------------------------------------------------
def test_idle_expiry_uses_each_tenants_ttl(env, clock):
    hook = RecordingHook()
    mgr = make(env, clock, policy_hook=hook, default_ttl_s=None,
               ttl_by_tenant={"fast": 10.0, "slow": 100.0})
    fw = mgr.create("fast", "tiny")
    fp = mgr.create("fast", "tiny")
    mgr.pause("fast", fp.session_id, "grep")
    fa = mgr.create("fast", "tiny")
    h = mgr.begin_turn("fast", fa.session_id, [1])
    sw = mgr.create("slow", "tiny")
    forever = mgr.create("other", "tiny")
    clock.advance(9.0)
    assert mgr.expire_idle() == []
    mgr.pause("fast", fp.session_id, "grep", expected_s=5.0)   # activity restarts the clock
    clock.advance(1.0)
    assert mgr.expire_idle() == [fw.session_id]
    clock.advance(9.0)
    assert mgr.expire_idle() == [fp.session_id]
    assert mgr.get("fast", fa.session_id).state is A            # a running turn never expires
    assert mgr.get("fast", fw.session_id).state is X
    assert mgr.store.load(fw.session_id) is None
    assert hook.calls[-1] == ("on_close", X, 0, "grep")
    with pytest.raises(IllegalTransition, match=r"is EXPIRED; cannot pause \(legal: none\)"):
        mgr.pause("fast", fw.session_id, "grep")
    clock.advance(90.0)
    assert mgr.expire_idle() == [sw.session_id]
    assert mgr.count_by_state() == {W: 1, A: 1, P: 0, C: 0, X: 3}
    mgr.end_turn(h, [2], "stop")
    clock.advance(10_000.0)
    assert mgr.expire_idle() == [fa.session_id]
    assert mgr.get("other", forever.session_id).state is W
    assert mgr.count_by_state() == {W: 1, A: 0, P: 0, C: 0, X: 1}   # older ones forgotten


def test_max_sessions_per_tenant(env, clock):
    mgr = make(env, clock, max_sessions_per_tenant=2)
    a = mgr.create("acme", "tiny")
    mgr.create("acme", "tiny")
    with pytest.raises(SessionLimitExceeded) as info:
        mgr.create("acme", "tiny")
    assert "tenant 'acme' has 2 open sessions" in str(info.value)
    assert "max_sessions_per_tenant=2" in str(info.value)
    mgr.create("globex", "tiny")                              # other tenants are not affected
    mgr.close("acme", a.session_id)
    mgr.create("acme", "tiny")
    assert mgr.store.count() == 3


def test_the_limit_holds_under_concurrent_creates(env, clock):
    mgr = make(env, clock, max_sessions_per_tenant=3)
    out, barrier = [], threading.Barrier(8)

    def go():
        barrier.wait()
        try:
            out.append(mgr.create("acme", "tiny"))
        except SessionLimitExceeded as e:
            out.append(e)

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(not isinstance(o, Exception) for o in out) == 3
    assert mgr.count_by_state("acme")[W] == 3 and mgr.store.count() == 3


# -- hooks ---------------------------------------------------------------------------------------
def test_hooks_are_called_in_order_after_each_change(env, clock):
    hook = RecordingHook()
    assert isinstance(hook, KVPolicyHook)
    mgr = make(env, clock, policy_hook=hook)
    s = mgr.create("acme", "tiny")
    sid = s.session_id
    h = mgr.begin_turn("acme", sid, [1, 2])
    mgr.end_turn(h, [3], "tool_call", auto_pause_tool="grep")
    mgr.pause("acme", sid, "grep", expected_s=3.0)
    mgr.resume("acme", sid)
    h = mgr.begin_turn("acme", sid, [4])
    mgr.abort_turn(h, "cancel")                                # no hook: nothing changed
    one_turn(mgr, "acme", sid, [5], [6])
    mgr.pause("acme", sid, "human", human=True)
    mgr.begin_turn("acme", sid, [7])
    mgr.close("acme", sid)
    assert hook.calls == [
        ("on_turn_end", P, 3, "grep"), ("on_pause", P, 3, "grep"), ("on_pause", P, 3, "grep"),
        ("on_resume", W, 3, None), ("on_turn_end", W, 5, None), ("on_pause", P, 5, "human"),
        ("on_resume", A, 5, None), ("on_close", C, 5, None)]


def test_hooks_run_outside_the_locks_and_failures_do_not_break_sessions(env, clock):
    mgr = make(env, clock)
    s = mgr.create("acme", "tiny")
    seen = []

    class Hook(RecordingHook):
        def on_turn_end(self, snap):
            reader = threading.Thread(target=lambda: seen.append(mgr.count_by_state()[W]))
            reader.start()
            reader.join(5)                     # would block if the manager lock were held
            seen.append(mgr.pause("acme", snap.session_id, "grep").state)   # same session
            raise RuntimeError("policy bug")

    mgr.policy_hook = Hook()
    worker = threading.Thread(target=one_turn, args=(mgr, "acme", s.session_id, [1], [2]))
    worker.start()
    worker.join(10)
    assert not worker.is_alive() and seen == [1, P]
    assert mgr.get("acme", s.session_id).state is P
    assert [c[0] for c in mgr.policy_hook.calls] == ["on_pause"]


def test_hook_order_matches_commit_order_across_threads(env):
    ticks = itertools.count(1)
    hook = RecordingHook()
    mgr = SessionManager(SessionStore(env), clock=lambda: float(next(ticks)), policy_hook=hook)
    s = mgr.create("acme", "tiny")
    stamps = []

    def on_pause(snap):                        # slow enough for the threads to overlap
        time.sleep(0.002 if snap.updated_at % 2 else 0.0)
        stamps.append((snap.updated_at, snap.pause.tool))

    hook.on_pause = on_pause

    def worker(i):
        for j in range(15):
            mgr.pause("acme", s.session_id, f"t{i}-{j}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(stamps) == 60
    assert [t for t, _ in stamps] == sorted(t for t, _ in stamps)
    assert stamps[-1][1] == mgr.get("acme", s.session_id).pause.tool


# -- listing and restore -------------------------------------------------------------------------
def test_list_pages_filters_and_isolates(env, clock):
    mgr = make(env, clock)
    made = []
    for i in range(7):
        made.append(mgr.create("acme", "tiny").session_id)
        clock.advance(1.0)
    mgr.create("globex", "tiny")
    for sid in made[::3]:
        mgr.pause("acme", sid, "grep")
    mgr.close("acme", made[1])
    pages, token = [], ""
    while True:
        page, token = mgr.list("acme", 2, token)
        pages.append([s.session_id for s in page])
        if not token:
            break
    assert pages == [[made[0], made[2]], [made[3], made[4]], [made[5], made[6]]]
    paused, token = mgr.list("acme", 2, "", state=P)
    assert [s.session_id for s in paused] == [made[0], made[3]] and token
    rest, token = mgr.list("acme", 2, token, state=P)
    assert [s.session_id for s in rest] == [made[6]] and token == ""
    with pytest.raises(InvalidArgument, match="not issued by this server"):
        mgr.list("acme", 2, "garbage")


def test_restore_brings_back_every_open_session(env, clock):
    mgr = make(env, clock, ttl_by_tenant={"acme": 50.0})
    w = mgr.create("acme", "tiny")
    one_turn(mgr, "acme", w.session_id, [1], [2])
    p = mgr.create("acme", "tiny")
    one_turn(mgr, "acme", p.session_id, [3], [4], auto_pause_tool="grep")
    a = mgr.create("globex", "tiny")
    one_turn(mgr, "globex", a.session_id, [5], [6])
    mgr.begin_turn("globex", a.session_id, [7])
    gone = mgr.create("acme", "tiny")
    mgr.close("acme", gone.session_id)
    before = {s: mgr.get(t, s) for t, s in [("acme", w.session_id), ("acme", p.session_id)]}

    clock.advance(5.0)
    again = make(env, clock, ttl_by_tenant={"acme": 20.0})   # as after a restart
    assert again.restore() == 3 and again.restore() == 0
    for sid, s in before.items():
        got = again.get("acme", sid)
        assert (got.state, got.token_log, got.turns, got.pause) == \
            (s.state, s.token_log, s.turns, s.pause)
        assert got.ttl_s == 20.0                              # today's TTL for the tenant
    back = again.get("globex", a.session_id)
    assert (back.state, back.token_log, len(back.turns), back.updated_at) == (W, [5, 6], 1, 1005.0)
    assert again.count_by_state() == {W: 2, A: 0, P: 1, C: 0, X: 0}
    with pytest.raises(SessionNotFound):
        again.get("acme", gone.session_id)


# -- random sequences against a model, with restarts ---------------------------------------------
@settings(max_examples=20, stateful_step_count=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
class ManagerMachine(RuleBasedStateMachine):
    """Any sequence of calls keeps the log equal to the committed turns, and a restart (a new
    manager restoring from the same LMDB) sees exactly the committed state."""

    def __init__(self):
        super().__init__()
        import tempfile
        self.dir = tempfile.TemporaryDirectory()
        self.env = lmdb.open(self.dir.name, map_size=32 << 20, max_dbs=8)
        self.clock = FakeClock()
        self.mgr = SessionManager(SessionStore(self.env), clock=self.clock)
        self.sid = self.mgr.create("acme", "tiny").session_id
        self.log, self.turns, self.state, self.handle = [], 0, W, None
        self.pending = None

    def teardown(self):
        self.env.close()
        self.dir.cleanup()

    @precondition(lambda self: self.state in (W, P))
    @rule(tokens=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=40),
          cut=st.integers(0, 3))
    def begin(self, tokens, cut):
        keep = max(0, len(self.log) - cut)
        self.handle = self.mgr.begin_turn("acme", self.sid, tokens, keep_log_tokens=keep)
        assert self.handle.prompt_token_ids == self.log[:keep] + tokens
        self.pending, self.state = (keep, tokens), A

    @precondition(lambda self: self.state is A)
    @rule(out=st.lists(st.integers(0, 50_000), max_size=40), tool=st.sampled_from([None, "t"]))
    def end(self, out, tool):
        keep, tokens = self.pending
        s = self.mgr.end_turn(self.handle, out, "stop", auto_pause_tool=tool)
        self.log = self.log[:keep] + tokens + out
        self.turns += 1
        self.state = P if tool else W
        assert s.token_log == self.log

    @precondition(lambda self: self.state is A)
    @rule()
    def abort(self):
        assert self.mgr.abort_turn(self.handle, "test") is not None
        self.state = W

    @precondition(lambda self: self.state in (W, P))
    @rule(human=st.booleans())
    def pause(self, human):
        self.mgr.pause("acme", self.sid, "grep", human=human)
        self.state = P

    @precondition(lambda self: self.state is P)
    @rule()
    def resume(self):
        self.mgr.resume("acme", self.sid)
        self.state = W

    @rule(event=st.sampled_from(["begin", "resume", "end"]))
    def illegal_calls_change_nothing(self, event):
        before = self.mgr.get("acme", self.sid)
        try:
            if event == "begin" and self.state is A:
                self.mgr.begin_turn("acme", self.sid, [1])
            elif event == "resume" and self.state is not P:
                self.mgr.resume("acme", self.sid)
            elif event == "end" and self.state is not A and self.handle is not None:
                self.mgr.end_turn(self.handle, [1], "stop")
            else:
                return
        except (IllegalTransition, StaleTurnHandle):
            pass
        else:
            raise AssertionError(f"{event} in {self.state} was accepted")
        assert self.mgr.get("acme", self.sid) == before

    @rule()
    def restart(self):
        self.clock.advance(1.0)
        self.mgr = SessionManager(SessionStore(self.env), clock=self.clock)
        assert self.mgr.restore() == 1
        if self.state is A:
            self.state = W
        self.handle = None

    @invariant()
    def matches_the_model(self):
        s = self.mgr.get("acme", self.sid)
        assert (s.state, s.token_log, len(s.turns)) == (self.state, self.log, self.turns)
        stored = self.mgr.store.load(self.sid)
        assert (stored.token_log, len(stored.turns)) == (self.log, self.turns)


TestManagerMachine = ManagerMachine.TestCase
