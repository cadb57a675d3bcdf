"""Aggregate a simulation's turns into the figures the policy bench reports.

Resume figures cover turns after a pause (round >= 1), the ones a cache policy can help.
GPU hit rate: the share of resumed turns' private prefix tokens (context before the new input,
shared prefix excluded) found on the GPU. Bytes moved: every copy on every channel, critical
path or background.
"""
from __future__ import annotations

from dataclasses import dataclass

from sessions.sim.records import SimResult


def quantile(xs: list[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default); 0 for no data."""
    if not xs:
        return 0.0
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass(frozen=True)
class PolicySummary:
    policy: str
    turns: int
    resumes: int
    resume_ttft_mean_s: float
    resume_ttft_p50_s: float
    resume_ttft_p99_s: float
    first_ttft_mean_s: float
    recomputed_tokens: int          # over resumed turns
    gpu_hit_rate: float
    from_cpu_tokens: int
    from_disk_tokens: int
    jct_mean_s: float
    h2d_GB: float
    d2h_GB: float
    disk_read_GB: float
    disk_write_GB: float
    prefetches: int
    prefetch_hits: int

    def row(self) -> dict:
        return dict(self.__dict__)


def summarize_result(res: SimResult) -> PolicySummary:
    resumed = [t for t in res.turns if t.is_resume]
    firsts = [t.ttft_s for t in res.turns if not t.is_resume]
    ttft = [t.ttft_s for t in resumed]
    private_prefix = sum(t.context_tokens - t.new_tokens - t.shared_tokens for t in resumed)
    gpu_private = sum(t.reused_gpu - t.shared_hit for t in resumed)
    gb = 1e9
    return PolicySummary(
        policy=res.policy, turns=len(res.turns), resumes=len(resumed),
        resume_ttft_mean_s=sum(ttft) / len(ttft) if ttft else 0.0,
        resume_ttft_p50_s=quantile(ttft, 0.5), resume_ttft_p99_s=quantile(ttft, 0.99),
        first_ttft_mean_s=sum(firsts) / len(firsts) if firsts else 0.0,
        recomputed_tokens=sum(t.recomputed for t in resumed),
        gpu_hit_rate=gpu_private / private_prefix if private_prefix else 0.0,
        from_cpu_tokens=sum(t.reused_cpu for t in resumed),
        from_disk_tokens=sum(t.reused_disk for t in resumed),
        jct_mean_s=sum(res.jct_s.values()) / len(res.jct_s) if res.jct_s else 0.0,
        h2d_GB=res.bytes_moved["h2d"] / gb, d2h_GB=res.bytes_moved["d2h"] / gb,
        disk_read_GB=res.bytes_moved["disk_read"] / gb,
        disk_write_GB=res.bytes_moved["disk_write"] / gb,
        prefetches=res.counters.get("prefetches", 0),
        prefetch_hits=res.counters.get("prefetch_hits", 0))


def agent_beats(summaries: dict[str, PolicySummary], agent: str = "agent") -> bool:
    """True when `agent` is strictly better than every other policy on resume TTFT mean and
    p99, and recomputes no more resumed tokens than any of them (fewer, or both zero)."""
    a = summaries[agent]
    for name, b in summaries.items():
        if name == agent:
            continue
        if not (a.resume_ttft_mean_s < b.resume_ttft_mean_s
                and a.resume_ttft_p99_s < b.resume_ttft_p99_s
                and (a.recomputed_tokens < b.recomputed_tokens
                     or a.recomputed_tokens == b.recomputed_tokens == 0)):
            return False
    return True


def markdown_table(summaries: dict[str, PolicySummary]) -> str:
    cols = [("policy", "policy", "{}"), ("resume TTFT mean s", "resume_ttft_mean_s", "{:.3f}"),
            ("p50 s", "resume_ttft_p50_s", "{:.3f}"), ("p99 s", "resume_ttft_p99_s", "{:.3f}"),
            ("first-turn TTFT mean s", "first_ttft_mean_s", "{:.3f}"),
            ("recomputed tokens", "recomputed_tokens", "{:,}"),
            ("GPU hit", "gpu_hit_rate", "{:.1%}"), ("from CPU tok", "from_cpu_tokens", "{:,}"),
            ("from disk tok", "from_disk_tokens", "{:,}"), ("JCT mean s", "jct_mean_s", "{:.1f}"),
            ("H2D GB", "h2d_GB", "{:.0f}"), ("D2H GB", "d2h_GB", "{:.0f}"),
            ("disk R/W GB", None, None)]
    lines = ["| " + " | ".join(c[0] for c in cols) + " |",
             "|" + "---|" * len(cols)]
    for s in summaries.values():
        cells = []
        for _, attr, fmt in cols:
            if attr is None:
                cells.append(f"{s.disk_read_GB:.0f} / {s.disk_write_GB:.0f}")
            else:
                cells.append(fmt.format(getattr(s, attr)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
