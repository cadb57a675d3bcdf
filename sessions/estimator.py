"""How long will this pause last? A per-tool online model of pause durations.

Each tool name keeps a bounded ring of its most recent observed pauses. A forecast is the pair of
robust quantiles (p50, p90, and p99 once there is data for it) of that ring, blended on a log
scale with a prior while the tool has few observations (the prior's share falls linearly to 0).
Priors come from the published TraceLab figures on real coding-agent traces (uw-syfi/TraceLab,
CC BY 4.0; see shared/workloads/README.md):

- tools: positive tool latencies p50 0.3 s, p90 13.6 s; calls over 1 min are ~4.9% of calls,
  which puts p95 near 60 s; extending that slope gives the p99 prior of ~900 s (an assumption);
- humans: waits p50 ~1.4 min (84 s), p90 ~20.6 min (1236 s), p99 ~13.9 h (50,040 s).

A tool with few observations of its own leans on what this deployment's other tools (or, for
a human, its other human waits) took before it leans on the published prior: every pause also
feeds a pool of its kind, which is blended with the prior the same way and stands in for the
prior in the tool's own blend. A new tool name, or a human wait on a tool seen once, so starts
from the deployment's own durations. Names in parentheses (the server's "(waiting)" between
turns) are kept out of the pools.

A client hint wins over everything: p50 is the hint and p90 a fixed multiple of it.

`PauseForecast` turns the quantiles into a distribution (piecewise log-normal through the known
quantiles), so a policy can ask for any quantile, for the probability that the session is back by
some time, or for the median of the time still to wait given how long the pause has lasted
(heavy tails make that grow as the pause goes on).
"""
from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass
from statistics import NormalDist

import msgpack

_N = NormalDist()
Z50, Z90, Z99 = 0.0, _N.inv_cdf(0.9), _N.inv_cdf(0.99)
_MIN_S = 1e-3               # durations are clamped to 1 ms before taking logs
_SOURCES = ("hint", "learned", "prior")


def _phi(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


@dataclass(frozen=True)
class PauseForecast:
    """Quantiles of one pause's duration (seconds) and where they came from."""
    p50_s: float
    p90_s: float
    source: str
    p99_s: float | None = None
    n_obs: int = 0

    def __post_init__(self) -> None:
        if self.source not in _SOURCES:
            raise ValueError(f"PauseForecast.source must be one of {_SOURCES}, got {self.source!r}")
        if not (self.p50_s > 0 and self.p90_s > 0):
            raise ValueError(f"pause quantiles must be > 0 s, got p50={self.p50_s}, "
                             f"p90={self.p90_s}")

    # log-space slopes of the piecewise log-normal: body through (p50, p90), tail to p99
    @property
    def _s1(self) -> float:
        return max(math.log(max(self.p90_s, self.p50_s)) - math.log(self.p50_s), 0.01) / Z90

    @property
    def _s2(self) -> float:
        if self.p99_s is None or self.p99_s <= self.p90_s:
            return self._s1
        return (math.log(self.p99_s) - math.log(self.p90_s)) / (Z99 - Z90)

    def quantile(self, q: float) -> float:
        """Duration d with P(pause <= d) = q."""
        q = min(max(q, 1e-12), 1.0 - 1e-12)
        z = _N.inv_cdf(q)
        if z <= Z90:
            return self.p50_s * math.exp(self._s1 * z)
        return self.p90_s * math.exp(self._s2 * (z - Z90))

    def cdf(self, duration_s: float) -> float:
        """P(pause <= duration_s)."""
        if duration_s <= 0:
            return 0.0
        lx = math.log(duration_s)
        if lx <= math.log(self.p90_s):
            z = (lx - math.log(self.p50_s)) / self._s1
        else:
            z = Z90 + (lx - math.log(self.p90_s)) / self._s2
        return _phi(z)

    def conditional_quantile(self, q: float, elapsed_s: float) -> float:
        """Total duration d with P(pause <= d | pause > elapsed_s) = q (d >= elapsed_s)."""
        survive = 1.0 - self.cdf(elapsed_s)
        if survive <= 1e-12:
            return max(elapsed_s, self.quantile(1.0 - 1e-12))
        return max(elapsed_s, self.quantile(1.0 - (1.0 - q) * survive))

    def remaining_s(self, elapsed_s: float, q: float = 0.5) -> float:
        """Time still to wait, at quantile q, given the pause has lasted `elapsed_s`."""
        return self.conditional_quantile(q, elapsed_s) - elapsed_s


@dataclass(frozen=True)
class PausePrior:
    p50_s: float
    p90_s: float
    p99_s: float | None = None

    def scaled(self, factor: float) -> "PausePrior":
        """The same distribution on a clock running `factor` times as fast (a replay with its
        pauses compressed by 1/factor uses factor < 1)."""
        if not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"prior scale must be a finite number > 0, got {factor!r}")
        return PausePrior(self.p50_s * factor, self.p90_s * factor,
                          None if self.p99_s is None else self.p99_s * factor)


TOOL_PRIOR = PausePrior(0.3, 13.6, 900.0)
HUMAN_PRIOR = PausePrior(84.0, 1236.0, 50_040.0)


def _empirical(sorted_xs: list[float], q: float) -> float:
    """Linear-interpolated quantile of sorted data (numpy's default definition)."""
    pos = q * (len(sorted_xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


class PauseEstimator:
    """Per-tool pause quantiles learned online; thread-safe.

    window: pauses kept per tool (the most recent ones).
    prior_strength: observations after which p50 is the data's alone; before that the prior's
        share falls linearly (blended on a log scale). Higher quantiles need more data before
        they are trusted: p90 uses 3x and p99 10x this count.
    hint_p90_ratio: p90 = hint x this ratio when a client gives a hint.
    pool: blend a tool's own pauses with those of every tool of its kind (tool or human), not
        with the published prior directly (see the module docstring).
    """

    def __init__(self, window: int = 256, prior_strength: float = 8.0,
                 hint_p90_ratio: float = 2.0, tool_prior: PausePrior = TOOL_PRIOR,
                 human_prior: PausePrior = HUMAN_PRIOR, pool: bool = True) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if prior_strength < 0:
            raise ValueError(f"prior_strength must be >= 0, got {prior_strength}")
        self.window = int(window)
        self.prior_strength = float(prior_strength)
        self.hint_p90_ratio = float(hint_p90_ratio)
        self.tool_prior = tool_prior
        self.human_prior = human_prior
        self.pool = bool(pool)
        self._rings: dict[str, deque[float]] = {}
        # kind (human?) -> every pause of that kind, the tools' own prior (`pool`)
        self._pools: dict[bool, deque[float]] = {kind: deque(maxlen=self.window)
                                                 for kind in (False, True)}
        self._cache: dict[object, list[float]] = {}  # tool or kind -> sorted ring, until observe
        self._lock = threading.Lock()

    def scale_priors(self, factor: float) -> None:
        """Scale both priors by `factor` (learned pauses are kept as observed)."""
        self.tool_prior = TOOL_PRIOR.scaled(factor)
        self.human_prior = HUMAN_PRIOR.scaled(factor)

    def observe(self, tool: str, human: bool, duration_s: float) -> None:
        """Record a finished pause of `tool` (human: whether a person was being waited on)."""
        if not math.isfinite(duration_s) or duration_s < 0:
            raise ValueError(f"pause duration must be a finite number >= 0, got {duration_s!r}")
        with self._lock:
            ring = self._rings.get(tool)
            if ring is None:
                ring = self._rings[tool] = deque(maxlen=self.window)
            x = max(float(duration_s), _MIN_S)
            ring.append(x)
            self._cache.pop(tool, None)
            if not tool.startswith("("):
                self._pools[bool(human)].append(x)
                self._cache.pop(bool(human), None)

    def count(self, tool: str) -> int:
        with self._lock:
            return len(self._rings.get(tool, ()))

    def tools(self) -> list[str]:
        with self._lock:
            return sorted(self._rings)

    def expected(self, tool: str, human: bool = False, hint_s: float | None = None
                 ) -> PauseForecast:
        """Forecast the pause that `tool` has just started (hint_s: the client's estimate)."""
        if hint_s is not None and hint_s > 0:
            return PauseForecast(hint_s, hint_s * self.hint_p90_ratio, "hint", None, 0)
        prior = self.human_prior if human else self.tool_prior
        kind = bool(human)
        with self._lock:
            xs = self._sorted(tool, self._rings.get(tool))
            pool = self._sorted(kind, self._pools[kind]) if self.pool else None
        base = self._blend(pool, prior) if pool else prior
        if not xs:
            return PauseForecast(base.p50_s, base.p90_s, "learned" if pool else "prior",
                                 base.p99_s, 0)
        got = self._blend(xs, base)
        return PauseForecast(got.p50_s, got.p90_s, "learned", got.p99_s, len(xs))

    def _sorted(self, key, ring) -> list[float] | None:
        """The ring sorted, from the cache (call with the lock held)."""
        xs = self._cache.get(key)
        if xs is None and ring:
            xs = self._cache[key] = sorted(ring)
        return xs

    def _blend(self, xs: list[float], prior: PausePrior) -> PausePrior:
        """Quantiles of sorted pauses `xs` blended on a log scale with `prior`'s, the data's
        share growing with its count (p50 over prior_strength, p90 3x, p99 10x that)."""
        n, k = len(xs), self.prior_strength

        def blend(q: float, prior_q: float | None, strength: float) -> float | None:
            emp = _empirical(xs, q)
            if prior_q is None:
                return emp if n >= 100 else None
            w = min(1.0, n / strength) if strength > 0 else 1.0
            return math.exp(w * math.log(emp) + (1.0 - w) * math.log(prior_q))

        p50 = blend(0.5, prior.p50_s, k)
        p90 = max(blend(0.9, prior.p90_s, 3 * k), p50 * 1.01)
        p99 = blend(0.99, prior.p99_s, 10 * k)
        if p99 is not None:
            p99 = max(p99, p90 * 1.01)
        return PausePrior(p50, p90, p99)

    # -- persistence -------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        with self._lock:
            state = {"version": 1, "window": self.window,
                     "tools": {t: list(r) for t, r in self._rings.items()},
                     "pools": {"tool": list(self._pools[False]),
                               "human": list(self._pools[True])}}
        return msgpack.packb(state, use_bin_type=True)

    @classmethod
    def from_bytes(cls, data: bytes, **kwargs) -> "PauseEstimator":
        """Restore an estimator saved by `to_bytes` (kwargs: constructor options but window)."""
        try:
            state = msgpack.unpackb(data, raw=False)
            version, window, tools = state["version"], state["window"], state["tools"]
        except Exception as exc:  # corrupt or foreign bytes
            raise ValueError(f"not a saved PauseEstimator: {exc}") from exc
        if version != 1:
            raise ValueError(f"unsupported PauseEstimator format version {version}; expected 1")
        est = cls(window=window, **kwargs)
        for tool, durations in tools.items():
            est._rings[tool] = deque((float(d) for d in durations), maxlen=est.window)
        pools = state.get("pools") or {}       # absent in files written before the pools
        for name, kind in (("tool", False), ("human", True)):
            est._pools[kind].extend(float(d) for d in pools.get(name, ()))
        return est
