"""The data directory: sessions in its LMDB environment, the disk KV tier in its own (`kv/`).

LMDB lets one writer at a time into an environment, and a KV batch's commit holds that lock for
up to a few hundred ms; a turn commits its session at its start and end, so it must never wait
behind a batch. Blocks an older layout kept in the sessions' environment are dropped.
"""
import logging
import threading
from dataclasses import replace

import lmdb

from grpc_server_fixture import running_server, server_config
from kvstore.disk import BLOCKS_DB, META_DB, drop_blocks, open_environment, release_environment
from runtime.client import AgentKVClient

GREEDY = dict(max_tokens=4, ignore_eos=True, temperature=0.0)


def config(data_dir):
    cfg = server_config(data_dir)
    return replace(cfg, engine=replace(cfg.engine, cpu_cache_gb=0.0, disk_cache_gb=0.05))


def test_the_default_disk_tier_is_its_own_environment_in_the_data_dir(tmp_path):
    cfg = config(tmp_path / "data")
    assert cfg.engine_config().disk_cache_path == str(tmp_path / "data" / "kv")
    with running_server(cfg) as st:
        disk = st.server.engine_thread.engine.tiers.disk
        assert disk.healthy and disk.path == str((tmp_path / "data" / "kv").resolve())
        assert disk.env is not st.server.store.env


def test_a_turn_commits_while_a_kv_batch_holds_the_disk_tiers_writer(tmp_path):
    with running_server(config(tmp_path / "data")) as st:
        disk_env = st.server.engine_thread.engine.tiers.disk.env
        c = AgentKVClient(f"127.0.0.1:{st.server.port}")
        s = c.session(system_prompt="You are an agent.")
        held = disk_env.begin(write=True)        # what a block batch's commit holds
        try:
            done, got = threading.Event(), {}

            def turn():
                got["r"] = s.run([{"role": "user", "content": "List the files."}], **GREEDY)
                s.pause("grep", expected_s=0.5)
                s.resume()
                done.set()
            threading.Thread(target=turn, daemon=True).start()
            # sharing the environment, the turn's first commit would wait for the abort below
            assert done.wait(60), "a turn's session commit waited for the KV tier's writer"
        finally:
            held.abort()
        assert len(got["r"].token_ids) == 4
        assert c.get_session(s.id).turns == 1
        c.close()


def _old_layout_blocks(path, n):
    env = open_environment(str(path), 64 << 20)
    try:
        with env.begin(write=True) as txn:
            blocks = env.open_db(BLOCKS_DB.encode(), txn=txn)
            meta = env.open_db(META_DB.encode(), txn=txn)
            for i in range(n):
                txn.put(b"k%d" % i, b"x" * 1000, db=blocks)
                txn.put(b"k%d" % i, b"m", db=meta)
    finally:
        release_environment(str(path))


def test_blocks_an_older_layout_kept_with_the_sessions_are_dropped(tmp_path, caplog):
    data = tmp_path / "data"
    _old_layout_blocks(data, 3)
    with caplog.at_level(logging.INFO, logger="agentkv.server"):
        with running_server(config(data)) as st:
            c = AgentKVClient(f"127.0.0.1:{st.server.port}")
            sid = c.session(system_prompt="kept").id
            c.close()
    assert any("dropped 3 KV blocks" in r.getMessage() for r in caplog.records)
    env = open_environment(str(data), 64 << 20)
    try:
        for name in (BLOCKS_DB, META_DB):
            try:
                env.open_db(name.encode(), create=False)
                raise AssertionError(f"{name} is still in the sessions' environment")
            except lmdb.NotFoundError:
                pass
        assert drop_blocks(env) == 0                 # nothing left: a no-op
    finally:
        release_environment(str(data))
    with running_server(config(data)) as st:         # the sessions themselves are kept
        c = AgentKVClient(f"127.0.0.1:{st.server.port}")
        assert c.get_session(sid).session_id == sid
        c.close()
