"""SessionStore: round trips, chunked token logs, atomic turn commits, stable pagination, tenant
isolation, the shared LMDB environment, and restore after SIGKILL in the middle of turns."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import lmdb
import pytest
import torch

from kvstore.disk import DiskStore
from kvstore.spec import KVCacheSpec
from sessions.errors import InvalidArgument, SessionFormatError, SessionNotFound, \
    SessionStoreError
from sessions.ids import new_session_id
from sessions.manager import SessionManager
from sessions.model import (PauseInfo, Session, TurnRecord, pack_session, session_to_record,
                            unpack_session, pack_record, unpack_record)
from sessions.state import SessionState
from sessions.store import CHUNK_TOKENS, SessionStore, decode_page_token, encode_page_token

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_env(path, map_size=64 << 20):
    return lmdb.open(str(path), map_size=map_size, max_dbs=8)


@pytest.fixture
def store(tmp_path):
    env = small_env(tmp_path / "db")
    yield SessionStore(env)
    env.close()


def full_session(tenant="acme", created_at=1000.0, log=(5, 6, 7)):
    turn = TurnRecord(0, 2, 1, 1001.0, 1001.25, 1002.0, 0.25, "tool_call",
                      [{"id": "c1", "name": "grep", "arguments": {"q": "ü", "n": [1, 2.5]}}],
                      {"gpu": 1, "cpu": 0, "disk": 0, "recomputed": 1}, 0)
    return Session(new_session_id(), tenant, "tiny", created_at, 1002.0, SessionState.PAUSED,
                   token_log=list(log), turns=[turn],
                   pause=PauseInfo("grep", 3.5, True, 1002.0, 3.5, "hint"),
                   system_prompt="be brief ✓", messages=[{"role": "user", "content": "hi"}],
                   tools=[{"type": "function", "function": {"name": "grep"}}],
                   sampling_defaults={"temperature": 0.0, "stop": ["</s>"]}, ttl_s=60.0,
                   resume_expected_at=None)


def test_round_trip_every_field(store):
    s = full_session()
    store.create(s)
    assert store.load(s.session_id) == s
    assert unpack_session(pack_session(s)) == s
    assert store.load(new_session_id()) is None
    with pytest.raises(SessionStoreError, match="already exists"):
        store.create(s)


def test_unknown_format_version_is_refused_with_the_versions_named():
    rec = session_to_record(full_session())
    rec["v"], rec["token_log"] = 99, [1]
    with pytest.raises(SessionFormatError, match="format version 99; this build reads version 1"):
        unpack_session(pack_record(rec))
    with pytest.raises(SessionFormatError, match="not valid msgpack"):
        unpack_record(b"\xc1")


def test_a_turn_appends_only_its_own_chunks(store):
    s = full_session(log=list(range(10)))
    store.create(s)
    assert store.token_chunks(s.session_id) == [10]
    with store.env.begin(db=store._logs) as txn:
        first = bytes(txn.get(s.session_id.encode() + b"/" + (0).to_bytes(4, "big")))
    big = [i % 50_000 for i in range(2 * CHUNK_TOKENS + 100)]
    s.token_log = s.token_log + big
    store.save_turn(s, big)
    assert store.token_chunks(s.session_id) == [10, CHUNK_TOKENS, CHUNK_TOKENS, 100]
    s.token_log = s.token_log + [7, 8]
    store.save_turn(s, [7, 8])
    assert store.token_chunks(s.session_id) == [10, CHUNK_TOKENS, CHUNK_TOKENS, 100, 2]
    with store.env.begin(db=store._logs) as txn:
        assert bytes(txn.get(s.session_id.encode() + b"/" + (0).to_bytes(4, "big"))) == first
    assert store.load(s.session_id).token_log == list(range(10)) + big + [7, 8]


def test_a_turn_that_cuts_the_log_back_rewrites_from_the_cut(store):
    s = full_session(log=list(range(10)))
    store.create(s)
    for n in (CHUNK_TOKENS + 5, 20):
        new = [1000 + i for i in range(n)]
        s.token_log = s.token_log + new
        store.save_turn(s, new)
    before = store.load(s.session_id).token_log
    keep = 10 + 3000                                 # inside the second chunk
    new = [9] * 7
    s.token_log = before[:keep] + new
    store.save_turn(s, new)
    assert store.load(s.session_id).token_log == before[:keep] + new
    assert store.token_chunks(s.session_id) == [10, 3007]
    with pytest.raises(SessionStoreError, match="does not end with the turn's new tokens"):
        store.save_turn(s, [1, 2])


def test_a_failed_turn_commit_leaves_nothing_behind(tmp_path):
    env = small_env(tmp_path / "tiny", map_size=1 << 20)   # 1 MiB: a 2M-token turn cannot fit
    store = SessionStore(env)
    s = full_session(log=[1, 2, 3])
    store.create(s)
    stored = store.load(s.session_id)
    huge = [7] * (2 << 20)
    attempt = Session(**{**s.__dict__, "token_log": s.token_log + huge,
                         "turns": s.turns + s.turns, "state": SessionState.WAITING})
    with pytest.raises(SessionStoreError, match="map of .* is full"):
        store.save_turn(attempt, huge)
    assert store.load(s.session_id) == stored          # neither metadata nor any chunk
    assert store.token_chunks(s.session_id) == [3]
    s.token_log = s.token_log + [4]
    store.save_turn(s, [4])                            # the store still works afterwards
    assert store.load(s.session_id).token_log == [1, 2, 3, 4]
    env.close()


def test_metadata_save_refuses_a_changed_log(store):
    s = full_session()
    store.create(s)
    s.token_log = s.token_log + [1]
    with pytest.raises(SessionStoreError, match="commit turns with save_turn"):
        store.save(s)


def test_delete_removes_record_log_and_index(store):
    s = full_session(log=list(range(CHUNK_TOKENS + 1)))
    store.create(s)
    assert store.delete(s.session_id) and not store.delete(s.session_id)
    assert store.load(s.session_id) is None and store.token_chunks(s.session_id) == []
    assert store.list_ids("acme", 10) == [] and store.count() == 0


def test_pagination_is_stable_while_sessions_come_and_go(store):
    made = []
    for i in range(23):                                # ties on created_at are broken by id
        s = full_session("acme", created_at=2000.0 + i // 3)
        store.create(s)
        made.append(s)
    for i in range(4):
        store.create(full_session("globex", created_at=2000.0 + i))
    order = [s.session_id for s in sorted(made, key=lambda s: (s.created_at, s.session_id))]
    seen, after, pages = [], b"", 0
    while True:
        page = store.list_ids("acme", 4, after)
        if not page:
            break
        seen += [sid for _, sid in page]
        after = page[-1][0]
        pages += 1
        if pages == 2:                                 # churn in the middle of the walk
            store.delete(order[20])
            store.create(full_session("acme", created_at=1500.0))   # sorts before the cursor
            late = full_session("acme", created_at=9000.0)
            store.create(late)
    assert len(seen) == len(set(seen))
    assert seen == [sid for sid in order if sid != order[20]] + [late.session_id]
    assert decode_page_token(encode_page_token(after)) == after
    with pytest.raises(InvalidArgument, match="was not issued by this server"):
        decode_page_token("bm90LWEtdG9rZW4")


def test_tenants_are_isolated(tmp_path):
    env = small_env(tmp_path / "db")
    mgr = SessionManager(SessionStore(env))
    a = mgr.create("acme", "tiny")
    b = mgr.create("acme-corp", "tiny")                # a tenant whose name extends another's
    assert [sid for _, sid in mgr.store.list_ids("acme", 10)] == [a.session_id]
    assert [s.session_id for s in mgr.list("acme-corp")[0]] == [b.session_id]
    with pytest.raises(SessionNotFound) as other:
        mgr.get("acme-corp", a.session_id)
    with pytest.raises(SessionNotFound) as unknown:
        mgr.get("acme-corp", new_session_id())
    assert str(other.value).replace(a.session_id, "ID") == \
        str(unknown.value).replace(unknown.value.session_id, "ID")
    for call in (lambda: mgr.begin_turn("acme-corp", a.session_id, [1]),
                 lambda: mgr.pause("acme-corp", a.session_id, "grep"),
                 lambda: mgr.close("acme-corp", a.session_id)):
        with pytest.raises(SessionNotFound):
            call()
    assert mgr.get("acme", a.session_id).state is SessionState.WAITING
    env.close()


def test_shares_the_disk_tiers_environment(tmp_path):
    path = str(tmp_path / "data")
    spec = KVCacheSpec(2, 2, 16, 4, torch.float32)
    disk = DiskStore(path, spec, b"fp", capacity_bytes=8 << 20)
    store = SessionStore(path)                         # same path, same process: shared
    assert store.env is disk.env
    s = full_session()
    store.create(s)
    store.close()
    assert disk.healthy and disk.env.path() == os.path.realpath(path)
    disk.close()
    reopened = SessionStore(path)
    assert reopened.load(s.session_id) == s
    reopened.close()


def test_refuses_an_environment_without_sync(tmp_path):
    env = lmdb.open(str(tmp_path / "nosync"), max_dbs=8, sync=False)
    with pytest.raises(SessionStoreError, match="sync=True"):
        SessionStore(env)
    env.close()


# -- crash: SIGKILL while turns are being committed ----------------------------------------------
CHILD = textwrap.dedent("""
    import json, random, sys
    from sessions.manager import SessionManager
    from sessions.store import SessionStore

    path, progress = sys.argv[1], open(sys.argv[2], "w")
    def say(**kw):
        progress.write(json.dumps(kw) + "\\n")
        progress.flush()                      # in the kernel before the next commit starts

    rng = random.Random(int(sys.argv[3]))
    mgr = SessionManager(SessionStore(path, map_size=256 << 20))
    def toks(n):
        return [rng.randrange(50_000) for _ in range(n)]
    def turn(tenant, sid, log, tool=None):
        inp, out = toks(rng.randint(1, 300)), toks(rng.randint(1, 300))
        h = mgr.begin_turn(tenant, sid, inp, [{"role": "user", "content": "go"}])
        mgr.end_turn(h, out, "stop", [], {"recomputed": len(inp)}, 0.01, 0.0,
                     auto_pause_tool=tool)
        log += inp + out

    expect = {}
    def new(name, tenant):
        s = mgr.create(tenant, "tiny")
        expect[name] = {"sid": s.session_id, "tenant": tenant, "log": [], "turns": 0}
        return expect[name]

    w = new("waiting", "acme")
    for _ in range(3):
        turn("acme", w["sid"], w["log"])
    w.update(turns=3, state="waiting")
    p = new("paused", "acme")
    turn("acme", p["sid"], p["log"], tool="grep")
    mgr.pause("acme", p["sid"], "grep", expected_s=30.0, human=True)
    p.update(turns=1, state="paused")
    a = new("active", "acme")
    turn("acme", a["sid"], a["log"])
    mgr.begin_turn("acme", a["sid"], toks(50))                      # in flight at the kill
    a.update(turns=1, state="waiting")
    ap = new("active_after_pause", "acme")
    turn("acme", ap["sid"], ap["log"], tool="web")
    mgr.begin_turn("acme", ap["sid"], toks(20))                     # resumed by a new turn
    ap.update(turns=1, state="waiting")
    c = new("closed", "acme")
    turn("acme", c["sid"], c["log"])
    mgr.close("acme", c["sid"])
    c.update(state="gone")
    g = new("other_tenant", "globex")
    turn("globex", g["sid"], g["log"])
    g.update(turns=1, state="waiting")
    f = new("fresh", "globex")
    f.update(state="waiting")
    b = new("busy", "acme")
    b.update(state="waiting")
    say(ready=expect)

    for i in range(10 ** 9):                   # turns until killed
        inp, out = toks(rng.randint(1, 3 * 8192)), toks(rng.randint(1, 500))
        say(turn=i, tokens=inp + out)
        h = mgr.begin_turn("acme", b["sid"], inp)
        mgr.end_turn(h, out, "stop", [], {}, 0.01, 0.0)
        say(done=i)
""")


def _lines(path):
    try:
        with open(path) as fh:
            text = fh.read()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.split("\n")[:-1]]   # complete lines only


def test_restore_after_sigkill_in_the_middle_of_turns(tmp_path):
    path, progress = str(tmp_path / "data"), str(tmp_path / "progress.jsonl")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    child = subprocess.Popen([sys.executable, "-c", CHILD, path, progress, "7"], cwd=REPO,
                             env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    try:
        while sum("done" in m for m in _lines(progress)) < 4:
            assert child.poll() is None, child.stderr.read().decode()
            assert time.monotonic() < deadline, "the child made no progress"
            time.sleep(0.005)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    msgs = _lines(progress)
    expect = msgs[0]["ready"]
    announced = [m["tokens"] for m in msgs if "turn" in m]
    done = sum("done" in m for m in msgs)

    store = SessionStore(path)
    mgr = SessionManager(store)
    assert mgr.restore() == 7
    for name, e in expect.items():
        if e["state"] == "gone":
            assert store.load(e["sid"]) is None
            with pytest.raises(SessionNotFound):
                mgr.get(e["tenant"], e["sid"])
            continue
        s = mgr.get(e["tenant"], e["sid"])
        if name == "busy":                             # the kill hit somewhere in this loop
            k = len(s.turns)
            assert k in (done, done + 1) and k <= len(announced)
            assert s.token_log == [t for turn in announced[:k] for t in turn]
            assert s.state is SessionState.WAITING
            continue
        assert s.token_log == e["log"], name
        assert len(s.turns) == e["turns"] and s.state.value == e["state"], name
        assert store.load(e["sid"]).state.value == e["state"]      # the fix is persisted
    paused = mgr.get("acme", expect["paused"]["sid"]).pause
    assert (paused.tool, paused.expected_s, paused.human) == ("grep", 30.0, True)
    assert mgr.get("acme", expect["active_after_pause"]["sid"]).pause is None
    assert {s.session_id for s in mgr.list("globex")[0]} == \
        {expect["other_tenant"]["sid"], expect["fresh"]["sid"]}

    a = expect["active"]                               # the session goes on where it stood
    h = mgr.begin_turn("acme", a["sid"], [1, 2])
    assert h.turn_index == 1 and h.prompt_token_ids == a["log"] + [1, 2]
    assert mgr.end_turn(h, [3], "stop").token_log == a["log"] + [1, 2, 3]
    store.close()
