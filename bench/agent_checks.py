"""No wrong token: the replay's checks that reusing KV never changes what the model says.

- `compare_outputs`: the greedy tokens of two replays of the same sessions (say `recompute` and
  `agent`), turn by turn. A session is compared up to its first differing token (after it the
  contexts differ); each such place is a `Divergence`, with the context that led to it.
- `agent_ties.py` judges each such place: a tie within bf16 rounding, or a wrong token.
- `kv_roundtrip`: blocks computed on the GPU, copied to CPU and disk, evicted, and loaded back
  from each tier: every block's xxh3 checksum after the load equals the one before the save.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

from agent_driver import ReplayResult
from agent_workload import ReplaySession

@dataclass
class Divergence:
    session: str
    turn: int
    position: int                       # index in the turn's output
    token_a: int
    token_b: int
    context: list[int] = field(repr=False)   # run A's context up to the differing token
    top2: list[tuple[int, float]] | None = None      # the run's dtype, from scratch
    gap: float | None = None                          # its top-2 logprob gap
    ref_top2: list[tuple[int, float]] | None = None  # the fp32 reference (agent_ties.py)
    ref_margin: float | None = None    # fp32: top-1 less the lower of token_a / token_b
    band: float | None = None          # how far rounding moved the top tokens' gaps here
    rule: str | None = None
    is_tie: bool | None = None

    def row(self) -> dict:
        d = asdict(self)
        d.pop("context")
        d["context_tokens"] = len(self.context)
        return d


@dataclass
class TokenComparison:
    label: str
    counted: bool = True                # False: reported only (see `wrong_tokens`)
    sessions: int = 0
    identical_sessions: int = 0
    incomplete_sessions: int = 0        # a turn missing in one of the runs (error/deadline)
    turns_compared: int = 0
    tokens_compared: int = 0
    divergences: list[Divergence] = field(default_factory=list)

    @property
    def non_ties(self) -> int:
        return sum(1 for d in self.divergences if not d.is_tie)

    def summary(self) -> dict:
        return {"label": self.label, "counted": self.counted, "sessions": self.sessions,
                "identical_sessions": self.identical_sessions,
                "incomplete_sessions": self.incomplete_sessions,
                "turns_compared": self.turns_compared, "tokens_compared": self.tokens_compared,
                "divergences": len(self.divergences), "non_tie_divergences": self.non_ties,
                "places": [d.row() for d in self.divergences]}


def compare_outputs(label: str, sessions: list[ReplaySession], a: ReplayResult,
                    b: ReplayResult) -> TokenComparison:
    out = TokenComparison(label)
    oa, ob = a.outputs(), b.outputs()
    for s in sessions:
        ta, tb = oa.get(s.session_id, []), ob.get(s.session_id, [])
        out.sessions += 1
        context: list[int] = []
        same = True
        for i, turn in enumerate(s.turns):
            if i >= len(ta) or i >= len(tb):
                out.incomplete_sessions += 1
                same = False
                break
            context += list(turn.input_ids)
            out.turns_compared += 1
            pos = next((j for j, (x, y) in enumerate(zip(ta[i], tb[i])) if x != y), None)
            if pos is None and len(ta[i]) != len(tb[i]):
                pos = min(len(ta[i]), len(tb[i]))
            if pos is not None:
                out.tokens_compared += pos + 1
                x = ta[i][pos] if pos < len(ta[i]) else -1
                y = tb[i][pos] if pos < len(tb[i]) else -1
                out.divergences.append(Divergence(s.session_id, i, pos, x, y,
                                                  context + ta[i][:pos]))
                same = False
                break
            out.tokens_compared += len(ta[i])
            context += ta[i]
        out.identical_sessions += same
    return out


def _block_sums(engine, blocks: dict[bytes, int]) -> dict[bytes, int]:
    from kvstore.block_codec import CHECKSUM, checksum, tensor_bytes
    return {h: checksum(CHECKSUM, tensor_bytes(engine.kv_cache[b].cpu()))
            for h, b in blocks.items()}


def _settle(tiers) -> None:
    for _ in range(3):
        tiers.transfer.synchronize()
        tiers.poll()


def kv_roundtrip(engine, prompts: list[list[int]], log=print) -> dict:
    """Save each prompt's KV blocks to CPU and disk, evict, load back from each tier, and compare
    checksums of the block bytes before and after. The engine needs both tiers."""
    from kvstore.block_codec import CHECKSUM
    from kvstore.block_pool import chain_hashes
    from runtime import SamplingParams
    tiers, pool, bs = engine.tiers, engine.pool, engine.config.block_size
    if tiers is None or tiers.host is None or tiers.disk is None:
        raise ValueError("kv_roundtrip needs an engine with CPU and disk tiers")
    res = {"checksum": CHECKSUM, "blocks": 0, "cpu_loads_verified": 0, "disk_loads_verified": 0,
           "mismatches": 0, "not_loaded": 0}
    t0 = time.perf_counter()
    for p in prompts:
        engine.generate([p], SamplingParams(max_tokens=1, ignore_eos=True))
        hashes = chain_hashes(p[:(len(p) - 1) // bs * bs], bs, engine.fingerprint)
        saved = _block_sums(engine, {h: pool.lookup_hash(h) for h in hashes})
        tiers.offload(hashes, "cpu").wait()
        _settle(tiers)
        tiers.offload(hashes, "disk").wait()
        _settle(tiers)
        tiers.disk.flush()
        for src in ("cpu", "disk"):
            tiers.evict(hashes, "gpu")
            if src == "disk":
                tiers.evict(hashes, "cpu")
            handle = tiers.prefetch(hashes)
            handle.wait()
            _settle(tiers)
            back = {h: b for h in hashes if (b := pool.lookup_hash(h)) is not None}
            res["not_loaded"] += len(hashes) - len(back)
            sums = _block_sums(engine, back)
            bad = sum(1 for h, v in sums.items() if v != saved[h])
            res["mismatches"] += bad
            res[f"{src}_loads_verified"] += len(sums) - bad
        res["blocks"] += len(hashes)
    res["seconds"] = round(time.perf_counter() - t0, 2)
    log(f"[check] KV round trip: {res['blocks']} blocks, {res['cpu_loads_verified']} loaded from "
        f"CPU and {res['disk_loads_verified']} from disk with equal {CHECKSUM} checksums, "
        f"{res['mismatches']} mismatches, {res['not_loaded']} not loaded")
    return res


def free_engine(engine) -> None:
    if engine.tiers is not None:
        engine.tiers.close()
    del engine
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
