"""DiskStore: byte-exact round trips, checksums, full tiers, restarts, foreign blocks, bad paths,
the map space kept for sessions, and the write path's allocation ahead and early write-out."""
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import msgpack
import pytest
import torch

from kvstore import disk as disk_mod
from kvstore import disk_write
from kvstore.disk import FORMAT_VERSION, DiskStore, DiskStoreError, open_environment
from kvstore.spec import KVCacheSpec
from sessions.errors import SessionStoreError
from sessions.ids import new_session_id
from sessions.model import Session
from sessions.state import SessionState
from sessions.store import SessionStore

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = KVCacheSpec(num_layers=2, num_kv_heads=2, head_dim=16, block_size=4, dtype=torch.bfloat16)
FP = b"model-A-fingerprint"


def rand_blocks(n, seed, spec=SPEC):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, *spec.block_shape), generator=g).to(spec.dtype)


def hashes(n, tag):
    return [hashlib.blake2b(f"{tag}-{i}".encode(), digest_size=16).digest() for i in range(n)]


def same_bytes(a, b):
    return torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def raw_key(fp, h):
    return bytes([len(fp)]) + fp + h


@pytest.fixture
def store(tmp_path):
    s = DiskStore(str(tmp_path / "kv"), SPEC, FP, capacity_bytes=64 << 20)
    yield s
    s.close()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
def test_round_trip_is_byte_exact_with_a_self_describing_header(tmp_path, dtype):
    spec = KVCacheSpec(2, 2, 16, 4, dtype)
    with DiskStore(str(tmp_path / "kv"), spec, FP, capacity_bytes=16 << 20) as s:
        blocks, hs = rand_blocks(6, 1, spec), hashes(6, "rt")
        res = s.put_many(list(zip(hs, blocks))).result()
        assert res.written == hs and not res.refused and s.stats.commits == 1
        assert all(s.contains(h) for h in hs) and s.keys_for_model() == hs
        got = s.get_many(hs + [b"absent"])
        assert set(got) == set(hs) and s.stats.misses == 1
        for h, b in zip(hs, blocks):
            assert same_bytes(got[h], b) and got[h].dtype == dtype
        with s.env.begin(db=s.open_db("kv_blocks")) as txn:
            raw = txn.get(raw_key(FP, hs[0]))
        unp = msgpack.Unpacker()
        unp.feed(raw)
        hdr = unp.unpack()
        assert hdr["v"] == FORMAT_VERSION and hdr["fp"] == FP and hdr["layers"] == 2
        assert tuple(hdr["shape"]) == spec.block_shape and hdr["n"] == spec.block_bytes
        assert hdr["ck"] in ("xxh3_64", "crc32") and len(raw) - unp.tell() == spec.block_bytes


def test_pending_write_bytes_counts_the_writer_backlog(store):
    import threading
    gate = threading.Event()
    store._writer.submit(gate.wait)                      # the writer is busy elsewhere
    fut = store.put_many([(b"q1", rand_blocks(1, 17)[0]), (b"q2", rand_blocks(1, 18)[0])])
    assert store.pending_write_bytes == 2 * SPEC.block_bytes and not fut.done()
    gate.set()
    assert fut.result().written == [b"q1", b"q2"] and store.pending_write_bytes == 0


def test_get_into_given_destinations(store):
    blocks, hs = rand_blocks(3, 2), hashes(3, "into")
    store.put_many(list(zip(hs, blocks))).result()
    dst = torch.zeros((3, *SPEC.block_shape), dtype=SPEC.dtype)
    got = store.get_many(hs, out={h: dst[i] for i, h in enumerate(hs)})
    assert all(got[h].data_ptr() == dst[i].data_ptr() for i, h in enumerate(hs))
    assert same_bytes(dst, blocks)


def test_corrupted_value_is_a_counted_logged_miss(store, caplog):
    blocks, hs = rand_blocks(3, 3), hashes(3, "bad")
    store.put_many(list(zip(hs, blocks))).result()
    db = store.open_db("kv_blocks")
    with store.env.begin(write=True, db=db) as txn:  # flip one byte inside the raw value
        val = bytearray(txn.get(raw_key(FP, hs[1])))
        val[len(val) - 37] ^= 0x10
        txn.put(raw_key(FP, hs[1]), bytes(val))
    got = store.get_many(hs)
    assert set(got) == {hs[0], hs[2]}
    assert store.stats.checksum_failures == 1 and store.stats.misses == 1
    assert "checksum" in caplog.text and hs[1].hex() in caplog.text
    assert same_bytes(got[hs[2]], blocks[2])


def test_corruption_in_the_data_file_is_caught_after_reopen(tmp_path):
    path = str(tmp_path / "kv")
    blocks, hs = rand_blocks(4, 4), hashes(4, "file")
    with DiskStore(path, SPEC, FP, capacity_bytes=16 << 20) as s:
        s.put_many(list(zip(hs, blocks))).result()
    data_file = os.path.join(path, "data.mdb")
    with open(data_file, "rb") as f:      # the pages in use (the file is as long as the map)
        env = open_environment(path, 1 << 20)
        raw = f.read((env.info()["last_pgno"] + 1) * env.stat()["psize"])
        disk_mod.release_environment(path)
    where = raw.find(blocks[2].contiguous().view(torch.uint8).numpy().tobytes()[:256])
    assert where > 0
    fd = os.open(data_file, os.O_RDWR)
    os.pwrite(fd, bytes([raw[where + 100] ^ 0xFF]), where + 100)
    os.fsync(fd)
    os.close(fd)
    with DiskStore(path, SPEC, FP, capacity_bytes=16 << 20) as s:
        assert s.num_blocks == 4
        got = s.get_many(hs)
        assert hs[2] not in got and s.stats.checksum_failures == 1
        assert all(same_bytes(got[h], b) for h, b in zip(hs, blocks) if h != hs[2])


def test_capacity_budget_evicts_oldest_first_and_reports_it(tmp_path):
    per_value = len(msgpack.packb({})) + SPEC.block_bytes + 200
    evicted = []
    with DiskStore(str(tmp_path / "kv"), SPEC, FP, capacity_bytes=4 * per_value) as s:
        s.on_evict(evicted.append)
        blocks, hs = rand_blocks(6, 5), hashes(6, "cap")
        for i in range(6):
            s.put_many([(hs[i], blocks[i])]).result()
        s.get_many([hs[2]])                        # touched: no longer the oldest
        res = s.put_many([(b"new", rand_blocks(1, 6)[0])]).result()
        assert evicted[:2] == hs[:2] and res.evicted == [hs[3]]
        assert s.stats.evictions == 3 and s.stats.full_refusals == 0
        assert set(s.keys_for_model()) == {hs[2], hs[4], hs[5], b"new"}
        assert s.used_bytes <= 4 * per_value
        got = s.get_many(hs)
        assert set(got) == {hs[2], hs[4], hs[5]} and same_bytes(got[hs[5]], blocks[5])


def test_full_map_evicts_to_make_room(tmp_path):
    big = KVCacheSpec(2, 2, 64, 16, torch.float32)            # 32 KiB blocks
    with DiskStore(str(tmp_path / "kv"), big, FP, capacity_bytes=1 << 30,
                   map_size=320 << 10) as s:
        blocks, hs = rand_blocks(12, 7, big), hashes(12, "map")
        for i in range(12):
            res = s.put_many([(hs[i], blocks[i])]).result()
            assert res.written == [hs[i]] and not res.refused
        assert s.stats.evictions > 0 and s.stats.full_refusals == 0 and s.healthy
        assert s.contains(hs[-1]) and not s.contains(hs[0])
        got = s.get_many(hs[-2:])
        assert same_bytes(got[hs[-1]], blocks[-1]) and same_bytes(got[hs[-2]], blocks[-2])


def test_block_larger_than_the_map_is_refused_and_the_store_keeps_working(tmp_path):
    huge = KVCacheSpec(4, 4, 64, 16, torch.float32)           # 128 KiB blocks
    with DiskStore(str(tmp_path / "kv"), huge, FP, capacity_bytes=1 << 30,
                   map_size=64 << 10) as s:
        hs = hashes(2, "huge")
        res = s.put_many(list(zip(hs, rand_blocks(2, 8, huge)))).result()
        assert res.refused == hs and not res.written
        assert "disk tier full" in res.error and "disk_cache_gb" in res.error
        assert s.stats.full_refusals == 2 and s.healthy
        assert s.get_many(hs) == {} and not s.contains(hs[0])
        other = s.open_db("sessions")                          # the environment still serves
        with s.env.begin(write=True, db=other) as txn:
            txn.put(b"s1", b"log")
        with s.env.begin(db=other) as txn:
            assert txn.get(b"s1") == b"log"


def test_one_store_per_path_and_shared_environment(store, tmp_path):
    with pytest.raises(DiskStoreError, match="already open"):
        DiskStore(store.path, SPEC, FP, capacity_bytes=1 << 20)
    assert open_environment(store.path, 1 << 20) is store.env   # other modules share it
    disk_mod.release_environment(store.path)
    store.put_many([(b"k", rand_blocks(1, 9)[0])]).result()
    store.close()
    with DiskStore(store.path, SPEC, FP, capacity_bytes=1 << 20) as again:
        assert again.keys_for_model() == [b"k"]


def test_unwritable_path_degrades_the_tier_with_a_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    s = DiskStore(str(blocker / "kv"), SPEC, FP, capacity_bytes=1 << 20)
    assert not s.healthy and "cannot be opened" in s.last_error and "a_file" in s.last_error
    res = s.put_many([(b"x", rand_blocks(1, 10)[0])]).result()
    assert res.refused == [b"x"] and res.error == s.last_error
    assert s.get_many([b"x"]) == {} and not s.contains(b"x") and s.keys_for_model() == []
    with pytest.raises(DiskStoreError, match="degraded"):
        s.open_db("sessions")
    s.close()


_WRITER = textwrap.dedent("""
    import hashlib, sys, time, torch
    from kvstore.disk import DiskStore
    from kvstore.spec import KVCacheSpec
    path, fp, tag, n, seed = sys.argv[1], sys.argv[2].encode(), sys.argv[3], int(sys.argv[4]), \\
        int(sys.argv[5])
    spec = KVCacheSpec(2, 2, 16, 4, torch.bfloat16)
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randn((n, *spec.block_shape), generator=g).to(spec.dtype)
    hs = [hashlib.blake2b(f"{tag}-{i}".encode(), digest_size=16).digest() for i in range(n)]
    s = DiskStore(path, spec, fp, capacity_bytes=64 << 20)
    assert s.put_many(list(zip(hs, blocks))).result().written == hs
    print("committed", flush=True)
    time.sleep(600)
""")


def write_then_sigkill(path, fp, tag, n, seed):
    p = subprocess.Popen([sys.executable, "-c", _WRITER, path, fp, tag, str(n), str(seed)],
                         stdout=subprocess.PIPE, cwd=REPO, text=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(
                             [REPO, os.environ.get("PYTHONPATH", "")])})
    try:
        assert p.stdout.readline().strip() == "committed"
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
    assert p.returncode == -signal.SIGKILL


def test_restart_after_sigkill_finds_blocks_and_ignores_other_models(tmp_path):
    path = str(tmp_path / "kv")
    write_then_sigkill(path, FP.decode(), "a", 5, 11)
    write_then_sigkill(path, "model-B", "b", 3, 12)
    db_env = open_environment(path, 64 << 20)                  # a block of an older format
    with db_env.begin(write=True) as txn:
        meta = db_env.open_db(b"kv_meta", txn=txn)
        txn.put(raw_key(FP, b"old-format"), msgpack.packb({"v": 0, "seq": 99, "n": 10}), db=meta)
    disk_mod.release_environment(path)
    with DiskStore(path, SPEC, FP, capacity_bytes=64 << 20) as s:
        ha, hb = hashes(5, "a"), hashes(3, "b")
        assert s.keys_for_model() == ha                        # oldest first, this model only
        got = s.get_many(ha + hb)
        assert set(got) == set(ha)
        for h, b in zip(ha, rand_blocks(5, 11)):
            assert same_bytes(got[h], b)
        with s.env.begin(db=s.open_db("kv_blocks")) as txn:   # ignored, not deleted
            assert all(txn.get(raw_key(b"model-B", h)) is not None for h in hb)
        assert s.used_bytes >= 8 * SPEC.block_bytes               # foreign blocks use space
        assert s.purge_foreign().result() == 4
        with s.env.begin(db=s.open_db("kv_blocks")) as txn:
            assert all(txn.get(raw_key(b"model-B", h)) is None for h in hb)
        assert s.keys_for_model() == ha


def test_fork_child_never_reuses_the_parent_environment(store):
    store.put_many([(b"p", rand_blocks(1, 13)[0])]).result()
    pid = os.fork()
    if pid == 0:  # child: the parent's environment is forgotten; opening the path degrades
        ok = not disk_mod._ENVS and not disk_mod._STORES
        try:
            child = DiskStore(store.path, SPEC, FP, capacity_bytes=1 << 20, read_threads=1)
            ok = ok and not child.healthy and "forked" in child.last_error
            ok = ok and child.get_many([b"p"]) == {} and child.env is None
        except BaseException:  # noqa: BLE001 - the exit code reports it
            ok = False
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.healthy and same_bytes(store.get_many([b"p"])[b"p"], rand_blocks(1, 13)[0])


@pytest.mark.parametrize("alg", ["crc32", "xxh3_64"])
def test_each_checksum_algorithm_verifies_and_catches_a_flip(tmp_path, monkeypatch, alg):
    if alg == "xxh3_64" and disk_mod.xxhash is None:
        alg = "crc32"                                    # this machine has no xxhash: crc32
    monkeypatch.setattr(disk_write, "CHECKSUM", alg)
    with DiskStore(str(tmp_path / "kv"), SPEC, FP, capacity_bytes=16 << 20) as s:
        blocks, hs = rand_blocks(2, 14), hashes(2, alg)
        s.put_many(list(zip(hs, blocks))).result()
        db = s.open_db("kv_blocks")
        with s.env.begin(write=True, db=db) as txn:
            val = bytearray(txn.get(raw_key(FP, hs[0])))
            val[-1] ^= 0x80
            txn.put(raw_key(FP, hs[0]), bytes(val))
        got = s.get_many(hs)
        assert list(got) == [hs[1]] and same_bytes(got[hs[1]], blocks[1])
        assert s.stats.checksum_failures == 1


def test_a_value_whose_checksum_cannot_be_computed_here_is_a_miss(store):
    blocks, hs = rand_blocks(1, 15), hashes(1, "alg")
    store.put_many(list(zip(hs, blocks))).result()
    db = store.open_db("kv_blocks")
    with store.env.begin(write=True, db=db) as txn:
        val = txn.get(raw_key(FP, hs[0]))
        unp = msgpack.Unpacker()
        unp.feed(val)
        hdr = unp.unpack()
        hdr["ck"] = "sha3-never-heard-of-it"
        txn.put(raw_key(FP, hs[0]), msgpack.packb(hdr) + val[unp.tell():])
    assert store.get_many(hs) == {} and store.stats.checksum_failures == 1


def test_a_damaged_header_is_a_miss_not_an_error(store):
    blocks, hs = rand_blocks(2, 16), hashes(2, "hdr")
    store.put_many(list(zip(hs, blocks))).result()
    db = store.open_db("kv_blocks")
    with store.env.begin(write=True, db=db) as txn:
        val = bytearray(txn.get(raw_key(FP, hs[0])))
        val[0] = 0xC1                                    # a byte msgpack never uses
        txn.put(raw_key(FP, hs[0]), bytes(val))
    got = store.get_many(hs)
    assert list(got) == [hs[1]] and store.stats.header_mismatches == 1


def a_session(tokens):
    return Session(new_session_id(), "acme", "tiny", 1000.0, 1000.0, SessionState.WAITING,
                   token_log=list(tokens), turns=[], pause=None, system_prompt="",
                   messages=[], tools=[], sampling_defaults={}, ttl_s=60.0,
                   resume_expected_at=None)


def fill_the_map(s, spec, n, tag):
    """Write n blocks one batch at a time (more than the map holds): the tier evicts."""
    blocks, hs = rand_blocks(n, 21, spec), hashes(n, tag)
    for h, b in zip(hs, blocks):
        res = s.put_many([(h, b)]).result()
        assert res.written == [h] and not res.refused
    return hs, blocks


@pytest.mark.parametrize("reserve", [0, 1 << 20])
def test_a_full_kv_tier_leaves_the_session_reserve_free(tmp_path, reserve):
    """Blocks never take the map space kept for sessions, even when the block budget exceeds
    the map; without a reserve a full KV tier makes the next session commit fail."""
    big = KVCacheSpec(2, 2, 64, 16, torch.float32)            # 32 KiB blocks
    with DiskStore(str(tmp_path / "kv"), big, FP, capacity_bytes=1 << 30, map_size=4 << 20,
                   session_reserve_bytes=reserve) as s:
        assert s.session_reserve_bytes == reserve
        hs, blocks = fill_the_map(s, big, 160, "fill")           # 5 MiB into a 4 MiB map
        assert s.stats.evictions > 0 and s.stats.full_refusals == 0 and s.healthy
        assert s.contains(hs[-1]) and same_bytes(s.get_many([hs[-1]])[hs[-1]], blocks[-1])
        sessions = SessionStore(s.env)                  # the same environment, its map as is
        turn = a_session(range(96 << 10))                # 384 KiB of token log
        if reserve:
            assert s.stats.reserve_hits > 0
            sessions.create(turn)
            assert sessions.load(turn.session_id).token_log == turn.token_log
            more = [7] * (64 << 10)
            turn.token_log += more
            sessions.save_turn(turn, more)
            fill_the_map(s, big, 40, "again")            # blocks keep cycling beside it
            assert sessions.load(turn.session_id).token_log == turn.token_log
        else:
            with pytest.raises(SessionStoreError, match="map of .* is full"):
                sessions.create(turn)


def test_the_default_map_adds_the_session_reserve_to_the_block_budget(tmp_path):
    cap = 8 << 20
    with DiskStore(str(tmp_path / "kv"), SPEC, FP, capacity_bytes=cap) as s:
        assert s.capacity_bytes == cap                     # the reserve is not block space
        assert s.session_reserve_bytes == disk_mod.SESSION_RESERVE_BYTES == 1 << 30
        assert s.env.info()["map_size"] >= int(cap * 1.1) + disk_mod.SESSION_RESERVE_BYTES
    with DiskStore(str(tmp_path / "kv2"), SPEC, FP, capacity_bytes=cap,
                   session_reserve_bytes=16 << 20) as s:
        assert s.env.info()["map_size"] == (int(cap * 1.1) + 2 * s.write_chunk_bytes
                                            + disk_mod.MAP_HEADROOM_BYTES + (16 << 20))
    with pytest.raises(ValueError, match="session_reserve_bytes"):
        DiskStore(str(tmp_path / "kv3"), SPEC, FP, capacity_bytes=cap, session_reserve_bytes=-1)


@pytest.mark.parametrize("ahead", [True, False])
@pytest.mark.parametrize("writeback", [True, False])
def test_small_commits_with_allocation_ahead_and_early_write_out_stay_exact(tmp_path, ahead,
                                                                           writeback):
    """Many commits per batch, with and without the write path's two hints: every block is
    byte-exact after a reopen, and the hints ran where the system has them."""
    path = str(tmp_path / "kv")
    big = KVCacheSpec(2, 2, 64, 16, torch.float32)            # 32 KiB blocks
    blocks, hs = rand_blocks(96, 22, big), hashes(96, "chunks")
    with DiskStore(path, big, FP, capacity_bytes=64 << 20, write_chunk_bytes=256 << 10,
                   early_writeback=writeback, allocate_ahead=ahead) as s:
        kick, disk_write.WRITEBACK_KICK_BYTES = disk_write.WRITEBACK_KICK_BYTES, 64 << 10
        try:
            res = s.put_many(list(zip(hs, blocks))).result()
        finally:
            disk_write.WRITEBACK_KICK_BYTES = kick
        assert res.written == hs and s.stats.commits >= 12
        df = s._datafile
        if sys.platform.startswith("linux") and disk_mod.LMDB_WRITEMAP and (ahead or writeback):
            assert df is not None      # a file system without fallocate turns allocation off
            assert df.allocated > 0 if ahead and df._allocate else df.allocated == 0
            deadline = time.monotonic() + 10
            while writeback and df.kicks == 0 and time.monotonic() < deadline:
                time.sleep(0.01)                        # the write-out thread runs on its own
            assert df.kicks > 0 if writeback and df.writeback else df.kicks == 0
        elif not (ahead or writeback):
            assert df is None
    with DiskStore(path, big, FP, capacity_bytes=64 << 20) as s:
        got = s.get_many(hs)
        assert set(got) == set(hs)
        assert all(same_bytes(got[h], b) for h, b in zip(hs, blocks))


def test_a_batch_that_fills_the_map_part_way_through_a_commit_evicts_and_goes_on(tmp_path):
    """Several encoder steps per commit and a map that fills in the middle of the batch: the
    commit that hit the full map is encoded again and written after eviction; the batch's
    later commits go on through the encoder as before."""
    big = KVCacheSpec(2, 2, 64, 16, torch.float32)            # 32 KiB blocks
    blocks, hs = rand_blocks(40, 23, big), hashes(40, "midway")
    with DiskStore(str(tmp_path / "kv"), big, FP, capacity_bytes=1 << 30, map_size=768 << 10,
                   write_chunk_bytes=256 << 10, encode_chunk_bytes=64 << 10) as s:
        res = s.put_many(list(zip(hs, blocks))).result()
        assert res.written == hs and not res.refused and s.healthy
        assert res.evicted and s.stats.evictions == len(res.evicted)
        assert set(res.evicted) <= set(hs[:-8]) and s.stats.encode_wait_s >= 0
        assert all(s.contains(h) for h in hs[-8:])
        got = s.get_many(hs)
        assert set(got) == set(hs) - set(res.evicted)
        assert all(same_bytes(got[h], b) for h, b in zip(hs, blocks) if h in got)
