"""SIGKILL the server mid-turn and mid-offload: every session comes back with its token log up to
its last completed turn, and a resumed session produces the tokens of an uninterrupted run."""
import threading

from server_process import ServerProcess
from sessions.store import SessionStore

GREEDY = dict(max_tokens=8, ignore_eos=True, temperature=0.0)
USER = [{"role": "user", "content": "Plan the next step of the refactor."},
        {"role": "user", "content": "Now read the config file and summarise it."},
        {"role": "user", "content": "Thanks. What should we test first?"}]


def _turn(session, i):
    return session.run([USER[i]], **GREEDY)


def test_sigkill_mid_turn_and_mid_offload_loses_no_completed_turn(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    server = ServerProcess(data)
    client = server.start()
    s1 = client.session(system_prompt="You are a careful coding agent.")
    s2 = client.session(system_prompt="You are a careful coding agent.")
    first = [_turn(s1, 0).token_ids, _turn(s1, 1).token_ids]
    _turn(s2, 0)
    s1.pause("ask_user", expected_s=3 * 3600, human=True)     # spills to disk: offload starts
    # s2 starts a long turn; kill the server while it streams (and s1's spill may be in flight)
    started = threading.Event()

    def long_turn():
        try:
            for ev in s2.generate([USER[1]], max_tokens=2000, ignore_eos=True):
                started.set()
        except Exception:
            started.set()
    t = threading.Thread(target=long_turn, daemon=True)
    t.start()
    assert started.wait(60)
    server.kill()
    t.join(30)
    client.close()

    server = ServerProcess(data)
    client = server.start()
    info1, info2 = client.get_session(s1.id), client.get_session(s2.id)
    assert (info1.turns, info1.state) == (2, "paused")
    assert (info2.turns, info2.state) == (1, "waiting")      # the killed turn left no trace
    resumed = client.attach(s1.id)
    resumed.resume()
    third = _turn(resumed, 2).token_ids
    context = client.get_session(s1.id).context_tokens
    client.close()
    server.stop()

    # the same turns on a server that never stopped
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    ref = ServerProcess(ref_dir)
    rc = ref.start()
    r1 = rc.session(system_prompt="You are a careful coding agent.")
    expected = [_turn(r1, 0).token_ids, _turn(r1, 1).token_ids]
    r1.pause("ask_user", expected_s=3 * 3600, human=True)
    r1.resume()
    expected.append(_turn(r1, 2).token_ids)
    assert rc.get_session(r1.id).context_tokens == context
    rc.close()
    ref.stop()

    assert first + [third] == expected
    # the logs on disk are token for token the same
    a = SessionStore(str(data)).load(s1.id).token_log
    b = SessionStore(str(ref_dir)).load(r1.id).token_log
    assert a == b and len(a) == context
