"""The disk tier's read path: short read transactions on a few threads, each block checked
against its header and checksum before it is used (see `kvstore.disk`).

`DiskReader` is a part of `kvstore.disk.DiskStore`, which sets up the state it uses.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from kvstore import block_codec as codec
from kvstore.block_codec import checksum
from kvstore.block_codec import tensor_bytes as _tensor_bytes

log = logging.getLogger("agentkv.kvstore.disk")


class DiskReader:
    """Reads of `DiskStore`."""

    def get_many(self, hashes: list[bytes], out: dict[bytes, torch.Tensor] | None = None
                 ) -> dict[bytes, torch.Tensor]:
        """Blocks found and verified, by hash; a missing or corrupt block is left out (a miss).

        `out` optionally gives the destination of each block (e.g. a host slot view); bytes land
        there before they are checked, so a destination of a miss holds garbage: do not use it.
        """
        hashes = list(hashes)
        self.stats.gets += len(hashes)
        if not self.healthy:
            self.stats.misses += len(hashes)
            return {}
        if len(hashes) <= 2:
            got = [self._read_one(h, out) for h in hashes]
        else:
            got = list(self._readers.map(lambda h: self._read_one(h, out), hashes))
        found = {h: t for h, (t, _, _) in zip(hashes, got) if t is not None}
        with self._lock:
            for _, status, n in got:
                self.stats.bytes_read += n
                if status == "checksum":
                    self.stats.checksum_failures += 1
                elif status == "header":
                    self.stats.header_mismatches += 1
        self.stats.hits += len(found)
        self.stats.misses += len(hashes) - len(found)
        now = self.clock()
        with self._lock:
            for h in found:
                if h in self._index:
                    self.policy.touch(h, now)
        return found

    def _read_one(self, h: bytes, out: dict[bytes, torch.Tensor] | None
                  ) -> tuple[torch.Tensor | None, str, int]:
        """(block or None, "ok" | "absent" | "header" | "checksum", bytes read)."""
        if h not in self._index:
            return None, "absent", 0
        dst = out[h] if out is not None and h in out else self.spec.allocate(1, "cpu")[0]
        dst_bytes = _tensor_bytes(dst) if dst.is_contiguous() else None
        if dst_bytes is None:
            raise ValueError("get_many destinations must be contiguous CPU tensors")
        with self.env.begin(db=self._blocks, buffers=True) as txn:  # one block: a short read
            val = txn.get(self._key(h))
            if val is None:
                return None, "absent", 0
            hdr, start = codec.decode_header(val)    # (None, 0) if the header is damaged
            if not self._header_ok(h, hdr, len(val) - start, dst_bytes.nbytes):
                return None, "header", 0
            dst_bytes[:] = np.frombuffer(val, dtype=np.uint8, count=hdr["n"], offset=start)
            nbytes = len(val)
        if checksum(hdr["ck"], dst_bytes) != hdr["sum"]:
            log.warning("disk tier: block %s failed its %s checksum; treated as a miss "
                        "(it will be recomputed)", h.hex(), hdr["ck"])
            return None, "checksum", nbytes
        return dst, "ok", nbytes

    def _header_ok(self, h: bytes, hdr: dict, payload: int, want: int) -> bool:
        ok = codec.header_matches(self.spec, self.fingerprint, hdr, payload, want)
        if not ok:
            log.warning("disk tier: block %s has a header that does not match this store "
                        "(%r); treated as a miss", h.hex(), hdr)
        return ok
