"""What a waiting request waited on, step by step, until its first admission.

A turn's queue time (`RequestOutput.queue_s`, `TurnResult.queue_seconds`) says how long it
waited, not why. Each scheduling pass names, for every request it leaves waiting, the reason:

    behind    the step was full, or the queue stopped at a request ranked before it
    slot      `max_num_seqs` requests were running
    loading   its prefix was being copied back from CPU or disk
    room      no GPU room: for its prefix load, or for its first chunk

The time from one pass to the next is charged to the reason the earlier pass gave, and the time
from arrival to the first pass to `behind` (the step in flight). At the first
admission the totals are handed back, and a wait of `log_after_s` or longer is logged at INFO
with its breakdown, so a slow resumed turn in a server log explains itself.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

REASONS = ("behind", "slot", "loading", "room")


@dataclass
class _Waiting:
    since: float                                   # arrival (monotonic)
    reason: str = "behind"                         # what the last pass said
    noted_at: float = 0.0                          # when it said so
    totals: dict[str, float] = field(default_factory=dict)


class WaitReasons:
    def __init__(self, log_after_s: float = 0.1) -> None:
        self.log_after_s = log_after_s
        self._waiting: dict[str, _Waiting] = {}

    def _entry(self, request_id: str, arrival: float) -> _Waiting:
        w = self._waiting.get(request_id)
        if w is None:
            w = self._waiting[request_id] = _Waiting(arrival, noted_at=arrival)
        return w

    def note(self, request_id: str, arrival: float, reason: str, now: float) -> None:
        """This pass leaves the request waiting for `reason` (the time since the last note
        goes to the reason noted then)."""
        w = self._entry(request_id, arrival)
        w.totals[w.reason] = w.totals.get(w.reason, 0.0) + max(0.0, now - w.noted_at)
        w.reason, w.noted_at = reason, now

    def admitted(self, request_id: str, arrival: float, now: float) -> dict[str, float]:
        """The request's first admission: its seconds per reason, adding up to `now - arrival`
        (a request admitted by the first pass that saw it waited for the step in flight:
        `behind`); logged when they add up to `log_after_s` or more."""
        w = self._waiting.pop(request_id, None)
        if w is None:
            return {"behind": now - arrival} if now > arrival else {}
        w.totals[w.reason] = w.totals.get(w.reason, 0.0) + max(0.0, now - w.noted_at)
        total = now - w.since
        if total >= self.log_after_s:
            parts = ", ".join(f"{r} {s:.3f} s" for r, s in
                              sorted(w.totals.items(), key=lambda x: -x[1]) if s >= 0.0005)
            log.info("request %s admitted after waiting %.3f s: %s", request_id, total,
                     parts or "-")
        return dict(w.totals)

    def forget(self, request_id: str) -> None:
        """The request left the queue without an admission (aborted, failed)."""
        self._waiting.pop(request_id, None)

    def __len__(self) -> int:
        return len(self._waiting)
