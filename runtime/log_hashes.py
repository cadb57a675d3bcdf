"""Block hashes of sessions' token logs, kept between calls (GetSession, ListSessions).

GetSession and ListSessions report how much of each session's log every tier holds, which needs
the log's chained block hashes. Hashing a 128K-token log takes ~25 ms of the interpreter, on
every call. The hashes only change when the log does, and a log changes only when a turn ends:
it becomes the old log cut to the tokens the turn kept, plus the turn's input and output. So the
number of turns and the log's length name a log, and one turn later the old hashes of the kept
full blocks still hold; only the blocks after them are hashed.

The cache holds at most `max_blocks` hashes over all sessions, least recently used dropped first.
It may be read from several threads (the event loop, the service's pool).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from kvstore.block_pool import BlockHash, chain_hashes
from sessions.model import Session


@dataclass(frozen=True)
class _Entry:
    turns: int                   # the session's turns when the hashes were taken
    log_tokens: int              # and its log's length
    hashes: tuple[BlockHash, ...]


class LogHashCache:
    def __init__(self, block_size: int, model_fingerprint: bytes, max_blocks: int = 1 << 18):
        self.block_size, self.fingerprint, self.max_blocks = block_size, model_fingerprint, \
            max_blocks
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._blocks = 0
        self._lock = threading.Lock()

    def _reusable(self, s: Session) -> tuple[BlockHash, ...]:
        """The cached hashes that still hold for `s`'s log (a prefix of its hashes)."""
        with self._lock:
            e = self._entries.get(s.session_id)
        n = len(s.token_log)
        if e is None:
            return ()
        if (e.turns, e.log_tokens) == (s.num_turns, n):
            return e.hashes
        if e.turns == s.num_turns - 1:                  # one turn later: its kept tokens hold
            last = s.turns[-1]
            kept = n - last.input_tokens - last.output_tokens
            if 0 <= kept <= e.log_tokens:
                return e.hashes[:kept // self.block_size]
        return ()

    def tokens_to_hash(self, s: Session) -> int:
        """Tokens `hashes(s)` would hash now (0 when the cache holds them all)."""
        done = len(self._reusable(s)) * self.block_size
        return max(0, len(s.token_log) // self.block_size * self.block_size - done)

    def hashes(self, s: Session) -> list[BlockHash]:
        """The chained hashes of the full blocks of `s.token_log`."""
        old = self._reusable(s)
        out = old + tuple(chain_hashes(s.token_log, self.block_size, self.fingerprint,
                                       start=len(old), parent=old[-1] if old else None))
        self._put(s.session_id, _Entry(s.num_turns, len(s.token_log), out))
        return list(out)

    def forget(self, session_id: str) -> None:
        """Drop a session's hashes (it was closed: its log will not grow again)."""
        with self._lock:
            e = self._entries.pop(session_id, None)
            if e is not None:
                self._blocks -= len(e.hashes)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def num_blocks(self) -> int:
        return self._blocks

    def _put(self, session_id: str, entry: _Entry) -> None:
        with self._lock:
            old = self._entries.pop(session_id, None)
            if old is not None:
                self._blocks -= len(old.hashes)
            if len(entry.hashes) > self.max_blocks:
                return                                   # too long to keep
            self._entries[session_id] = entry
            self._blocks += len(entry.hashes)
            while self._blocks > self.max_blocks:
                _, dropped = self._entries.popitem(last=False)
                self._blocks -= len(dropped.hashes)
