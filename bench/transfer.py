"""KV tier bandwidth against ceilings measured in the same run, and decode slowdown during offload.

    python bench/transfer.py                  # GPU: Llama-3-8B blocks (2 MiB), 1/64/2048 blocks
    python bench/transfer.py --device cpu     # quick sanity run on the CPU
    python bench/transfer.py --parts ''       # GPU<->CPU only (no disk, no decode beside)

Ceilings: one large pinned copy each way; the disk's own write (os.write + fsync) and read (page
cache dropped with posix_fadvise DONTNEED). Then GPU->CPU and CPU->GPU through TransferEngine
(scattered GPU blocks, as a block pool hands them out), a load while a write-through of as many
other blocks runs (the link's two directions at once, as a resumed turn's prefix load meets other
turns' end-of-turn copies; also as raw pinned copies on two streams), CPU->disk and disk->CPU
through DiskStore (the store reopened before reading, so its file is unmapped and its cache can
be dropped), the same write under DiskStore variants (WRITE_VARIANTS),
and a decode-like step (a chain of bf16 matmuls reading ~16 GB of weights) timed alone and while
a 32K-token (2048-block) offload runs beside it. Writes bench/results/transfer-<hw>-<date>.json.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kvstore.disk import DiskStore  # noqa: E402
from kvstore.host_pool import HostPool  # noqa: E402
from kvstore.spec import KVCacheSpec  # noqa: E402
from kvstore.transfer import TransferEngine  # noqa: E402
from bench_common import git_commit  # noqa: E402

LLAMA3_8B = KVCacheSpec(num_layers=32, num_kv_heads=8, head_dim=128, block_size=16,
                        dtype=torch.bfloat16)  # 2 MiB per block


def log(msg: str) -> None:
    print(f"[transfer-bench] {msg}", file=sys.stderr, flush=True)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn, reps: int, dev: torch.device) -> float:
    """Median seconds of `fn()` (after one warm-up)."""
    fn()
    sync(dev)
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync(dev)
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def pinned_ceilings(host: torch.Tensor, dev: torch.device, nbytes: int) -> dict:
    """GB/s of one large copy host->device and device->host (pinned host memory; on a CPU-only
    machine, a plain memory copy). The host bytes are restored afterwards."""
    h = host.reshape(-1).view(torch.uint8)[:nbytes]
    keep = h.clone()
    d = torch.empty(nbytes, dtype=torch.uint8, device=dev)
    h2d = timed(lambda: d.copy_(h, non_blocking=True), 5, dev)
    d2h = timed(lambda: h.copy_(d, non_blocking=True), 5, dev)
    h.copy_(keep)
    return {"h2d_pinned_GBps": nbytes / h2d / 1e9, "d2h_pinned_GBps": nbytes / d2h / 1e9}


def drop_cache(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def disk_ceilings(src: torch.Tensor, folder: str, nbytes: int) -> dict:
    """The disk's own speed: sequential os.write + fsync, then reads with the cache dropped."""
    data = src.reshape(-1).view(torch.uint8)[:nbytes].numpy()
    path = os.path.join(folder, "raw.bin")
    step = 64 << 20
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    t = time.perf_counter()
    for i in range(0, nbytes, step):
        os.write(fd, data[i:i + step])
    os.fsync(fd)
    write = time.perf_counter() - t
    os.close(fd)
    buf = bytearray(step)

    def read() -> float:
        fd = os.open(path, os.O_RDONLY)
        t = time.perf_counter()
        while os.readv(fd, [buf]):
            pass
        dt = time.perf_counter() - t
        os.close(fd)
        return dt
    drop_cache(path)
    cold = read()
    warm = read()
    os.unlink(path)
    return {"disk_write_GBps": nbytes / write / 1e9, "disk_read_GBps": nbytes / cold / 1e9,
            "disk_read_warm_GBps": nbytes / warm / 1e9}


def gpu_host_rows(eng: TransferEngine, kv: torch.Tensor, host: HostPool, sizes: list[int],
                  modes: list[str], bb: int) -> list[dict]:
    rows = []
    rng = random.Random(0)
    for mode in modes:
        eng.mode = mode
        for n in sizes:
            ids = rng.sample(range(kv.shape[0]), n)          # scattered, as a pool hands out
            back = rng.sample(range(kv.shape[0]), n)
            slots = host.allocate(n)
            reps = 20 if n < 64 else 5
            d2h = timed(lambda: eng.gpu_to_host(ids, slots).wait(), reps, kv.device)
            ok = same(host.buffer[slots].to(kv.device), kv[ids])
            h2d = timed(lambda: eng.host_to_gpu(slots, back).wait(), reps, kv.device)
            ok = ok and same(host.buffer[slots].to(kv.device), kv[back])
            host.free(slots)
            for kind, dt in (("d2h", d2h), ("h2d", h2d)):
                rows.append({"kind": kind, "mode": mode, "blocks": n, "seconds": dt,
                             "GBps": n * bb / dt / 1e9, "byte_exact": ok})
    return rows


def duplex_rows(eng: TransferEngine, kv: torch.Tensor, host: HostPool, n: int,
                bb: int) -> list[dict]:
    """A load (host->GPU) while a write-through (GPU->host) of as many other blocks runs, as
    a resumed turn's prefix load meets other turns' end-of-turn copies: the load's time against
    the same load alone, through TransferEngine and as raw pinned copies on two streams."""
    rng = random.Random(3)
    picked = rng.sample(range(kv.shape[0]), 2 * n)
    out_ids, in_ids = picked[:n], picked[n:]
    s_out, s_in = host.allocate(n), host.allocate(n)
    eng.gpu_to_host(in_ids, s_in).wait()
    dev = kv.device

    def load_alone() -> float:
        t = time.perf_counter()
        eng.host_to_gpu(s_in, in_ids).wait()
        return time.perf_counter() - t

    def load_beside_store() -> float:
        store = eng.gpu_to_host(out_ids, s_out)
        t = time.perf_counter()
        eng.host_to_gpu(s_in, in_ids).wait()
        dt = time.perf_counter() - t
        store.wait()
        return dt
    rows = []
    for name, fn in (("h2d_alone", load_alone), ("h2d_beside_d2h", load_beside_store)):
        fn()
        dts = [fn() for _ in range(5)]
        dt = statistics.median(dts)
        rows.append({"kind": "duplex", "case": name, "impl": "TransferEngine", "blocks": n,
                     "seconds": dt, "GBps": n * bb / dt / 1e9})
    ok = same(host.buffer[s_in].to(dev), kv[in_ids])
    host.free(s_out)
    host.free(s_in)
    rows[-1]["byte_exact"] = ok
    if dev.type == "cuda":
        nbytes = n * bb
        h = host.buffer.reshape(-1).view(torch.uint8)[:2 * nbytes]
        keep = h.clone()
        d_in = torch.empty(nbytes, dtype=torch.uint8, device=dev)
        d_out = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=dev)
        s1, s2 = torch.cuda.Stream(dev), torch.cuda.Stream(dev)

        def raw(both: bool) -> float:
            torch.cuda.synchronize(dev)
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            if both:
                with torch.cuda.stream(s2):
                    h[nbytes:].copy_(d_out, non_blocking=True)
            with torch.cuda.stream(s1):
                a.record()
                d_in.copy_(h[:nbytes], non_blocking=True)
                b.record()
            torch.cuda.synchronize(dev)
            return a.elapsed_time(b) / 1e3
        for name, both in (("h2d_alone", False), ("h2d_beside_d2h", True)):
            raw(both)
            dt = statistics.median(raw(both) for _ in range(5))
            rows.append({"kind": "duplex", "case": name, "impl": "raw_pinned", "blocks": n,
                         "seconds": dt, "GBps": nbytes / dt / 1e9})
        h.copy_(keep)
    for r in rows:
        log(f"duplex {r['impl']} {r['case']}: {r['GBps']:.1f} GB/s")
    return rows


def disk_reps(n: int) -> int:
    return 5 if n == 1 else (2 if n <= 64 else 3)


WRITER_STATS = ("encode_s", "encode_wait_s", "put_s", "commit_s", "commits")


def reopen_cold(eng: TransferEngine, totals: dict) -> DiskStore:
    """Close the engine's disk store and open it again, then drop the data file's cached pages,
    so that the next reads come from the disk. With writemap every page the writer touched
    stays mapped until LMDB unmaps the file, and the kernel keeps mapped pages cached whatever
    posix_fadvise says. The closed store's writer stats are added to `totals`."""
    old = eng.disk
    for k in WRITER_STATS:
        totals[k] = totals.get(k, 0) + getattr(old.stats, k)
    totals["writeback_kicks"] = totals.get("writeback_kicks", 0) + old.writeback_kicks
    old.close()
    eng.disk = DiskStore(old.path, old.spec, old.fingerprint, capacity_bytes=old.capacity_bytes)
    drop_cache(os.path.join(old.path, "data.mdb"))
    return eng.disk


def disk_rows(eng: TransferEngine, kv: torch.Tensor, host: HostPool, sizes: list[int],
              bb: int, tag: str) -> list[dict]:
    rows = []
    totals: dict = {}
    for n in sizes:
        slots = host.allocate(n)
        ids = random.Random(n).sample(range(kv.shape[0]), n)
        eng.gpu_to_host(ids, slots).wait()
        reps = disk_reps(n)
        w, r, ok, split = [], [], True, []
        for rep in range(reps):
            hs = [hashlib.blake2b(f"{tag}-{n}-{rep}-{i}".encode(), digest_size=16).digest()
                  for i in range(n)]
            t = time.perf_counter()
            before = {k: getattr(eng.disk.stats, k) for k in WRITER_STATS}
            res = eng.host_to_disk(hs, slots).wait().result
            w.append(time.perf_counter() - t)
            split.append({k: getattr(eng.disk.stats, k) - v for k, v in before.items()})
            ok = ok and not res.refused
            host.buffer[slots] = 0
            disk = reopen_cold(eng, totals)
            t = time.perf_counter()
            res = eng.disk_to_host(hs, slots).wait().result
            r.append(time.perf_counter() - t)
            ok = ok and not res.missing and same(host.buffer[slots].to(kv.device), kv[ids])
        host.free(slots)
        for kind, dts in (("disk_write", w), ("disk_read", r)):
            dt = statistics.median(dts)
            rows.append({"kind": kind, "blocks": n, "seconds": dt, "GBps": n * bb / dt / 1e9,
                         "reps": len(dts), "GBps_each": [n * bb / x / 1e9 for x in dts],
                         "read_threads": disk._readers._max_workers, "byte_exact": ok})
        rows[-2].update({f"writer_{k}_total": v for k, v in totals.items()})
        rows[-2]["writer_split_each"] = split
        rows[-2].update({"write_chunk_bytes": disk.write_chunk_bytes,
                         "encode_chunk_bytes": disk.encode_chunk_bytes})
    return rows


# name -> DiskStore arguments (and the environment's writemap flag); "default" is what the
# store does unless told otherwise, "previous" what it did before (commits of 128 MiB encoded
# in one step each, no allocation ahead)
WRITE_VARIANTS: dict[str, dict] = {
    "default": {},
    "previous": {"early_writeback": False, "allocate_ahead": False,
                 "write_chunk_bytes": 128 << 20, "encode_chunk_bytes": 128 << 20},
    "commit_128MiB": {"write_chunk_bytes": 128 << 20},
    "commit_256MiB": {"write_chunk_bytes": 256 << 20},
    "commit_1GiB": {"write_chunk_bytes": 1 << 30},
    "no_allocate_ahead": {"allocate_ahead": False},
    "early_writeback": {"early_writeback": True},
    "writemap_off": {"writemap": False},
    "default_again": {},
}


def write_variant_rows(host: HostPool, spec: KVCacheSpec, folder: str, n: int,
                       variants: list[str]) -> list[dict]:
    """The same n-block write under the WRITE_VARIANTS named, each into a fresh environment
    (the same source slots, page cache of the source warm), with the writer's time split
    (encode / put / commit), to show where a write's time goes and what each change buys."""
    from kvstore import lmdb_env
    rows = []
    slots = host.allocate(n)
    for variant in variants:
        kw = dict(WRITE_VARIANTS[variant])
        saved = lmdb_env.LMDB_WRITEMAP
        lmdb_env.LMDB_WRITEMAP = kw.pop("writemap", saved)
        path = os.path.join(folder, f"var-{variant}")
        try:
            store = DiskStore(path, spec, b"bench-model",
                              capacity_bytes=int(1.2 * n * spec.block_bytes), **kw)
            hs = [hashlib.blake2b(f"{variant}-{i}".encode(), digest_size=16).digest()
                  for i in range(n)]
            t = time.perf_counter()
            res = store.put_many([(h, host.slot_view(s)) for h, s in zip(hs, slots)]).result()
            dt = time.perf_counter() - t
            st = store.stats
            df = store._datafile
            rows.append({"kind": "disk_write_variant", "variant": variant, "blocks": n,
                         "seconds": dt, "GBps": n * spec.block_bytes / dt / 1e9,
                         "written": len(res.written), "commits": st.commits,
                         "write_chunk_bytes": store.write_chunk_bytes,
                         "encode_chunk_bytes": store.encode_chunk_bytes,
                         "writemap": lmdb_env.LMDB_WRITEMAP,
                         "encode_s": st.encode_s, "encode_wait_s": st.encode_wait_s,
                         "put_s": st.put_s, "commit_s": st.commit_s,
                         "writeback_kicks": df.kicks if df else 0,
                         "writeback_kick_s": df.kick_s if df else 0.0,
                         "allocated_bytes": df.allocated if df else 0,
                         "allocate_s": df.allocate_s if df else 0.0})
            log(f"variant {variant}: {rows[-1]['GBps']:.3f} GB/s")
            store.close()
        finally:
            lmdb_env.LMDB_WRITEMAP = saved
            shutil.rmtree(path, ignore_errors=True)
    host.free(slots)
    return rows


def decode_rows(eng: TransferEngine, kv: torch.Tensor, host: HostPool, n: int, gb: float,
                modes: list[str]) -> list[dict]:
    """Step time of a weights-read-bound matmul chain alone and beside an n-block offload."""
    dev = kv.device
    k, cols = (8192, 65536) if dev.type == "cuda" else (1024, 4096)
    mats = max(1, int(gb * 2**30 / (k * cols * 2)))
    g = torch.Generator(device=dev).manual_seed(0)
    weights = [torch.randn((k, cols), device=dev, dtype=torch.bfloat16, generator=g)
               for _ in range(mats)]
    x = torch.randn((8, k), device=dev, dtype=torch.bfloat16)
    y = torch.empty((8, cols), device=dev, dtype=torch.bfloat16)

    def step() -> float:
        if dev.type != "cuda":
            t = time.perf_counter()
            for w in weights:
                torch.mm(x, w, out=y)
            return (time.perf_counter() - t) * 1e3
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for w in weights:
            torch.mm(x, w, out=y)
        b.record()
        b.synchronize()
        return a.elapsed_time(b)

    for _ in range(5):
        step()
    alone = [step() for _ in range(40)]
    rows = [{"kind": "decode_alone", "weights_GB": mats * k * cols * 2 / 1e9,
             "step_ms_median": statistics.median(alone)}]
    ids = random.Random(1).sample(range(kv.shape[0]), n)
    for mode in modes:
        eng.mode = mode
        for kind in ("d2h", "h2d"):
            during, offload_s = [], []
            for _ in range(3):
                slots = host.allocate(n)
                t = time.perf_counter()
                h = (eng.gpu_to_host(ids, slots) if kind == "d2h"
                     else eng.host_to_gpu(slots, ids))
                while not h.ready():
                    during.append(step())
                offload_s.append(time.perf_counter() - t)
                host.free(slots)
            med = statistics.median(during) if during else float("nan")
            rows.append({"kind": f"decode_during_{kind}", "mode": mode, "blocks": n,
                         "steps": len(during), "step_ms_median": med,
                         "step_ms_mean": statistics.fmean(during) if during else float("nan"),
                         "offload_s_median": statistics.median(offload_s),
                         "slowdown": med / rows[0]["step_ms_median"] - 1})
    del weights
    return rows


def gather_rows(kv: torch.Tensor, n: int) -> list[dict]:
    """The staged path's gather: torch index_select against the Triton pack kernel."""
    if kv.device.type != "cuda":
        return []
    ids = torch.tensor(random.Random(2).sample(range(kv.shape[0]), n), device=kv.device)
    out = torch.empty((n, *kv.shape[1:]), dtype=kv.dtype, device=kv.device)
    rows = [{"kind": "gather", "impl": "index_select", "blocks": n, "seconds":
             timed(lambda: torch.index_select(kv, 0, ids, out=out), 10, kv.device)}]
    try:
        from kernels.block_copy import pack_blocks
        rows.append({"kind": "gather", "impl": "triton_pack_blocks", "blocks": n, "seconds":
                     timed(lambda: pack_blocks(kv, ids, out=out), 10, kv.device)})
    except Exception as e:  # noqa: BLE001 - reported in the row
        rows.append({"kind": "gather", "impl": "triton_pack_blocks", "error": repr(e)})
    for r in rows:
        if "seconds" in r:
            moved = 2 * n * kv[0].numel() * kv.element_size()
            r["GBps_read_plus_write"] = moved / r["seconds"] / 1e9
    return rows


def fs_info(folder: str) -> str:
    try:
        return subprocess.check_output(["df", "-hT", folder], text=True).strip().splitlines()[-1]
    except Exception:  # noqa: BLE001
        return "unknown"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="auto", help="auto, cuda or cpu")
    ap.add_argument("--sizes", default=None, help="blocks per batch, e.g. 1,64,2048")
    ap.add_argument("--modes", default="auto,staged", help="transfer modes (auto is direct)")
    ap.add_argument("--decode-gb", type=float, default=None)
    ap.add_argument("--disk-dir", default=None, help="folder on the disk to measure")
    ap.add_argument("--out-dir", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--commit", default=None, help="the commit measured (when no git is there)")
    ap.add_argument("--variant-blocks", type=int, default=1024,
                    help="blocks per disk write variant (0: no variants)")
    ap.add_argument("--variants", default=",".join(WRITE_VARIANTS),
                    help="disk write variants to run, comma-separated")
    ap.add_argument("--parts", default="disk,decode",
                    help="what runs beside the GPU<->CPU rows, comma-separated: disk (CPU<->disk "
                         "and its write variants), decode (a decode step beside an offload); "
                         "'' for neither")
    args = ap.parse_args(argv)
    parts = {p for p in args.parts.split(",") if p}
    if parts - {"disk", "decode"}:
        ap.error(f"--parts takes disk and decode, got {args.parts!r}")
    gpu = args.device != "cpu" and torch.cuda.is_available()
    dev = torch.device("cuda" if gpu else "cpu")
    spec = LLAMA3_8B
    bb = spec.block_bytes
    sizes = [int(s) for s in (args.sizes or ("1,64,2048" if gpu else "1,16,64")).split(",")]
    modes = args.modes.split(",")
    big = max(sizes)
    hw = torch.cuda.get_device_name(dev) if gpu else "cpu"
    log(f"{hw}: {big} slots of {bb} bytes pinned={gpu}; GPU cache {2 * big} blocks")
    kv = spec.allocate(2 * big, dev)                  # [2 * big, *block_shape], random
    for i in range(0, kv.shape[0], 256):
        kv[i:i + 256].normal_()
    host = HostPool(spec, big * bb)                   # pinned when CUDA is there
    host.buffer.copy_(kv[:big])
    folder = tempfile.mkdtemp(prefix="agentkv-transfer-", dir=args.disk_dir)
    disk_fs = fs_info(folder)
    log(f"disk folder {folder}: {disk_fs}")
    try:
        log("ceilings")
        ceil = pinned_ceilings(host.buffer, dev, min(big * bb, 2 << 30))
        ceil.update(disk_ceilings(host.buffer, folder, min(big * bb, 2 << 30)))
        disk = DiskStore(os.path.join(folder, "kv"), spec, b"bench-model",
                         capacity_bytes=int(1.2 * bb * sum(n * disk_reps(n) for n in sizes)))
        eng = TransferEngine(kv, host, disk)
        log("GPU <-> CPU")
        rows = gpu_host_rows(eng, kv, host, sizes, modes, bb)
        rows += duplex_rows(eng, kv, host, max(1, big // 4), bb)
        rows += gather_rows(kv, 64)
        if "disk" in parts:
            log("CPU <-> disk")
            rows += disk_rows(eng, kv, host, sizes, bb, "a")
            if args.variant_blocks > 0:
                log("disk write variants")
                rows += write_variant_rows(host, spec, folder, min(big, args.variant_blocks),
                                           args.variants.split(","))
        if "decode" in parts:
            log(f"decode beside a {big}-block offload")
            rows += decode_rows(eng, kv, host, big, args.decode_gb or (16.0 if gpu else 0.25),
                                modes)
        eng.close()
        eng.disk.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    pick = {(r["kind"], r.get("mode"), r.get("blocks")): r for r in rows}
    d2h, h2d = pick[("d2h", "auto", big)], pick[("h2d", "auto", big)]
    metrics = {
        "d2h_bw_frac": {"value": round(d2h["GBps"] / ceil["d2h_pinned_GBps"], 3), "goal": ">= 0.8"},
        "h2d_bw_frac": {"value": round(h2d["GBps"] / ceil["h2d_pinned_GBps"], 3), "goal": ">= 0.8"},
    }
    if "disk" in parts:
        dw, dr = pick[("disk_write", None, big)], pick[("disk_read", None, big)]
        metrics["disk_write_frac"] = {"value": round(dw["GBps"] / ceil["disk_write_GBps"], 3),
                                      "goal": ">= 0.7"}
        metrics["disk_read_frac"] = {"value": round(dr["GBps"] / ceil["disk_read_GBps"], 3),
                                     "goal": ">= 0.7"}
    if "decode" in parts:
        ceil["decode_step_ms"] = next(r["step_ms_median"] for r in rows
                                      if r["kind"] == "decode_alone")
        dec = pick[("decode_during_d2h", "auto", big)]
        metrics["decode_slowdown_during_offload"] = {"value": round(dec["slowdown"], 4),
                                                     "goal": "<= 0.1"}
    result = {"bench": "transfer", "hardware": hw, "commit": args.commit or git_commit(),
              "date": date.today().isoformat(), "command": "python " + " ".join(sys.argv),
              "ceilings": {k: round(v, 3) for k, v in ceil.items()}, "metrics": metrics,
              "rows": rows + [{"kind": "setup", "block_bytes": bb, "block_shape":
                               list(spec.block_shape), "dtype": "bfloat16", "metric_blocks": big,
                               "page_cache_drop": "posix_fadvise(POSIX_FADV_DONTNEED) after fsync; "
                               "for DiskStore reads after closing and reopening the store "
                               "(LMDB unmaps the file)",
                               "disk_dir": folder, "disk_fs": disk_fs,
                               "cpus": os.cpu_count(), "kernel": os.uname().release,
                               "python": sys.version.split()[0]}]}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tag = "cpu" if not gpu else hw.lower().replace("nvidia", "").strip().replace(" ", "")
    path = out / f"transfer-{tag}-{date.today().strftime('%Y%m%d')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    for r in rows:
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}))
    print(json.dumps(result["ceilings"]))
    print(f"{'metric':34s} {'value':>10s}  goal")
    for k, v in metrics.items():
        print(f"{k:34s} {v['value']:>10}  {v.get('goal', '')}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
