"""Reading a PC-sampling profile: which source lines of a kernel the warps stalled on, and why.

Triton's profiler (proton, CUPTI backend, mode `pcsampling`) writes a tree (hatchet's JSON
literal: a list whose first element is the root; each node `{"frame": {"name": ...},
"metrics": {...}, "children": [...]}`). Under each kernel launch the leaves are source lines
(`file:line@function` style names) whose metrics count samples, the stalled ones, and the
samples of each stall reason. The exact metric names belong to the profiler's version, so this
reader keys on what they contain ("sample", "stall") rather than on a fixed list.

`line_stalls(tree, path_filter)` folds every leaf into one row per frame name (summed over
launches) and returns them most-sampled first, each with its share of the samples and its main
stall reasons; `bench/prefill_stalls.py` writes them into its JSON.
"""
from __future__ import annotations

from dataclasses import dataclass, field

TOTAL_KEYS = ("num_samples", "samples", "sample_count")


@dataclass
class LineStalls:
    frame: str                        # the profiler's name of the source line
    samples: float = 0.0              # every sample taken at the line
    reasons: dict[str, float] = field(default_factory=dict)   # stall reason -> samples

    def row(self, total: float, top: int = 4) -> dict:
        main = sorted(self.reasons.items(), key=lambda kv: -kv[1])[:top]
        return {"frame": self.frame, "samples": self.samples,
                "share": round(self.samples / total, 4) if total else None,
                "stalls": {k: v for k, v in main}}


def _nodes(tree):
    """Every node of the tree (a list of roots, or one root), depth first."""
    stack = list(tree) if isinstance(tree, list) else [tree]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            continue
        yield node
        stack.extend(node.get("children") or [])


def _sample_count(metrics: dict) -> float | None:
    for k in TOTAL_KEYS:
        if isinstance(metrics.get(k), (int, float)):
            return float(metrics[k])
    return None


def line_stalls(tree, path_filter: str | None = None) -> list[LineStalls]:
    """One row per source line (leaf frame) with samples, most-sampled first; lines whose
    frame name lacks `path_filter` (e.g. 'attention_prefill_ws') are left out."""
    rows: dict[str, LineStalls] = {}
    for node in _nodes(tree):
        if node.get("children"):
            continue
        metrics = node.get("metrics") or {}
        n = _sample_count(metrics)
        if n is None:
            continue
        name = str((node.get("frame") or {}).get("name", "?"))
        if path_filter and path_filter not in name:
            continue
        r = rows.setdefault(name, LineStalls(name))
        r.samples += n
        for k, v in metrics.items():
            if "stall" in k.lower() and k not in TOTAL_KEYS and isinstance(v, (int, float)) \
                    and not k.lower().startswith("num_stalled"):
                r.reasons[k] = r.reasons.get(k, 0.0) + float(v)
    return sorted(rows.values(), key=lambda r: -r.samples)


def reason_totals(lines: list[LineStalls]) -> dict[str, float]:
    """Samples of each stall reason over all lines, largest first."""
    out: dict[str, float] = {}
    for r in lines:
        for k, v in r.reasons.items():
            out[k] = out.get(k, 0.0) + v
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))
