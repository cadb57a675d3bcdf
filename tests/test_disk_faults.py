"""Disk faults: the server keeps serving with the disk tier degraded or refusing, says so in a
log line and a metric, and never gives a wrong token."""
import logging
import urllib.request
from dataclasses import replace

from kvstore.disk import open_environment, release_environment
from grpc_server_fixture import running_server, server_config
from runtime.client import AgentKVClient

GREEDY = dict(max_tokens=6, ignore_eos=True, temperature=0.0)
MSGS = [{"role": "user", "content": "Summarise the design document."},
        {"role": "user", "content": "And list the open questions."}]


def config(data_dir, disk_path=None, disk_gb=0.05):
    cfg = server_config(data_dir, metrics_port=0)
    eng = replace(cfg.engine, cpu_cache_gb=0.0, disk_cache_gb=disk_gb,
                  disk_cache_path=str(disk_path) if disk_path else None)
    return replace(cfg, engine=eng)


def metric(st, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{st.server.metrics_port}/metrics",
                                  timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported")


def two_turns(st, pause_between=False):
    c = AgentKVClient(f"127.0.0.1:{st.server.port}")
    s = c.session(system_prompt="You are an agent.")
    a = s.run([MSGS[0]], **GREEDY)
    if pause_between:
        s.pause("ask_user", expected_s=3 * 3600, human=True)
        s.resume()
    b = s.run([MSGS[1]], **GREEDY)
    c.close()
    return a.token_ids, b.token_ids, b


def spill_a_session(data):
    """A server on `data` runs a session's first turn, which a human pause spills to disk;
    returns the turn's tokens and the session's id."""
    with running_server(config(data)) as st:
        c = AgentKVClient(f"127.0.0.1:{st.server.port}")
        s = c.session(system_prompt="You are an agent.")
        first = s.run([MSGS[0]], **GREEDY).token_ids
        s.pause("ask_user", expected_s=3 * 3600, human=True)     # spilled to disk
        sid = s.id
        c.close()
    return first, sid


def reference(tmp_path):
    with running_server(server_config(tmp_path / "ref")) as st:
        return two_turns(st)[:2]


def test_unwritable_disk_path_degrades_the_tier_and_serving_goes_on(tmp_path, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the disk tier's directory should be")
    with caplog.at_level(logging.ERROR):
        with running_server(config(tmp_path / "data", blocker / "kv")) as st:
            got = two_turns(st, pause_between=True)
            assert metric(st, 'agentkv:kv_tier_degraded{tier="disk"}') == 1.0
    assert any("disk" in r.getMessage().lower() for r in caplog.records
               if r.levelno >= logging.ERROR)
    assert got[:2] == reference(tmp_path)


def test_corrupted_disk_blocks_are_recomputed_not_used(tmp_path):
    data = tmp_path / "data"
    first, sid = spill_a_session(data)
    # flip one byte in the payload of every stored block (the tier's own environment)
    env = open_environment(str(data / "kv"), 1 << 31)
    db = env.open_db(b"kv_blocks")
    with env.begin(write=True, db=db) as txn:
        items = [(k, bytearray(v)) for k, v in txn.cursor()]
        for k, v in items:
            v[-5] ^= 0x40
            txn.put(k, bytes(v))
    release_environment(str(data / "kv"))
    assert items, "the pause spilled nothing to disk"
    with running_server(config(data)) as st:
        c = AgentKVClient(f"127.0.0.1:{st.server.port}")
        s = c.attach(sid)
        s.resume()
        second = s.run([MSGS[1]], **GREEDY)
        assert second.kv_source["disk"] == 0                     # nothing corrupt was used
        assert metric(st, "agentkv:kv_checksum_failures_total") >= 1
        c.close()
    assert [first, second.token_ids] == list(reference(tmp_path))


def test_full_disk_tier_refuses_or_evicts_while_serving(tmp_path):
    with running_server(config(tmp_path / "data", disk_gb=0.0005)) as st:   # ~500 KiB
        results = [two_turns(st, pause_between=True) for _ in range(3)]
        # the tier stays within its size (the policy sends no spill that cannot fit, the store
        # evicts or refuses past it) and is not taken out of service
        assert metric(st, 'agentkv:kv_cache_usage_perc{tier="disk"}') <= 1.0
        assert metric(st, 'agentkv:kv_tier_degraded{tier="disk"}') == 0.0
        metric(st, "agentkv:kv_disk_full_refusals_total")
    ref = reference(tmp_path)
    assert all(r[:2] == ref for r in results)


def test_a_restart_at_another_page_size_recomputes_and_gives_the_same_tokens(tmp_path):
    """Blocks spilled at 16-token pages never match a server at 32-token pages (their hashes
    cover other token spans): the session's log survives the restart, its KV is recomputed, and
    the tokens are those of a server that never paused."""
    data = tmp_path / "data"
    first, sid = spill_a_session(data)
    cfg = config(data)
    with running_server(replace(cfg, engine=replace(cfg.engine, block_size=32))) as st:
        assert st.server.engine_thread.engine.config.block_size == 32
        c = AgentKVClient(f"127.0.0.1:{st.server.port}")
        s = c.attach(sid)
        s.resume()
        second = s.run([MSGS[1]], **GREEDY)
        assert second.kv_source["disk"] == 0 and second.kv_source["recomputed"] > 0
        c.close()
    assert [first, second.token_ids] == list(reference(tmp_path))
