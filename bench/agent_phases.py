"""The phases of one agent replay run: each policy on a fresh server, the token checks, the peer.

Every phase takes a `RunSetup` (model, KV budgets, workload, where to work) and returns plain
data the report is written from.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from agent_checks import TokenComparison, compare_outputs, free_engine, kv_roundtrip
from agent_driver import DriverConfig, GrpcBackend, ReplayResult, replay
from agent_first_tokens import attach
from agent_report import counter_delta, summarize, tier_bytes
from agent_server import AgentServer, GpuMonitor, ServerSpec
from agent_ties import check_ties, reference_model, reference_tops, run_tops
from agent_workload import ReplaySession, ReplayTurn, Workload

Log = Callable[[str], None]


@dataclass(frozen=True)
class ModelInfo:
    vocab_size: int
    kv_bytes_per_token: int


def model_info(model: str, dtype: str) -> ModelInfo:
    """Vocabulary and KV bytes per token of a `shape:` model or a model folder."""
    import torch

    from runtime.models.arch import arch_from_config
    if model.startswith("shape:"):
        from runtime.models.shapes import shape_config
        cfg = shape_config(model.removeprefix("shape:"))
    else:
        from transformers import AutoConfig

        from runtime.models.loader import resolve_model_path
        cfg = AutoConfig.from_pretrained(resolve_model_path(model))
    a = arch_from_config(cfg)
    size = {"fp32": 4, "float32": 4}.get(dtype, 2) if dtype != "auto" else (
        2 if torch.cuda.is_available() else 4)
    return ModelInfo(a.vocab_size, a.num_layers * 2 * a.num_kv_heads * a.head_dim * size)


@dataclass(frozen=True)
class RunSetup:
    spec: ServerSpec                     # the server of every policy (its policy replaced)
    workload: Workload
    driver: DriverConfig
    work_dir: Path
    log_dir: Path | None = None          # each server's log is copied here when it stops


def _warm_up(backend: GrpcBackend, vocab: int, long_tokens: int) -> None:
    """One session of a long and a short turn, so the kernels and allocations are ready."""
    rng = np.random.default_rng(12345)
    s = ReplaySession("warmup", (
        ReplayTurn(0, tuple(int(x) for x in rng.integers(3, vocab, long_tokens)), 4, 0.0),
        ReplayTurn(1, tuple(int(x) for x in rng.integers(3, vocab, 200)), 4)))
    h = backend.open(s)
    try:
        for t in s.turns:
            backend.turn(h, t)
    finally:
        backend.close(h)


def run_policy(setup: RunSetup, policy: str, log: Log, warm_tokens: int = 3000
               ) -> tuple[ReplayResult, dict]:
    """One policy on a fresh server process: warm up, replay, read its counters, stop it."""
    srv = AgentServer(replace(setup.spec, policy=policy), setup.work_dir)
    t0 = time.perf_counter()
    srv.start()
    log(f"[{policy}] server up in {srv.start_s:.1f} s ({srv.target})")
    backend = GrpcBackend(srv.target, name=policy)
    try:
        vocab = model_info(setup.spec.model, setup.spec.dtype).vocab_size
        _warm_up(backend, vocab, warm_tokens)
        before = srv.scrape()
        with GpuMonitor() as mon:
            res = replay(backend, setup.workload.sessions, setup.driver, log, policy)
        after = srv.scrape()
    finally:
        backend.shutdown()
        srv.stop()
        shutil.rmtree(srv.data_dir, ignore_errors=True)      # its disk tier: room for the next
        if setup.log_dir is not None and srv.log_path.exists():
            setup.log_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy(srv.log_path, setup.log_dir / f"{setup.work_dir.name}-{policy}.log")
    if setup.spec.first_token_log_s is not None:
        n = attach(res.turns, srv.log_path)
        log(f"[{policy}] {n} turns' first-token lines read from the server's log")
    failures = counter_delta(before, after, "agentkv:kv_checksum_failures")
    info = {"server_start_s": round(srv.start_s, 2),
            "phase_s": round(time.perf_counter() - t0, 2),
            "tier_bytes": tier_bytes(before, after),
            "checksum_failures": int(sum(v for k, v in failures.items()
                                         if not k.endswith("_created"))),
            "preemptions": int(_delta(before, after, "agentkv:num_preemptions_total")),
            "preempted_tokens": int(_delta(before, after, "agentkv:preempted_tokens_total")),
            "slow_engine_steps": int(_delta(before, after, "agentkv:engine_slow_steps_total")),
            "short_engine_steps": int(_delta(before, after,
                                             "agentkv:engine_short_steps_total")),
            "prompt_tokens_computed": int(_delta(before, after,
                                                 "agentkv:prompt_tokens_computed_total")),
            "engine_commands": _commands(before, after),
            "queue_wait_mean_s": _mean_of(before, after, "agentkv:turn_queue_seconds"),
            "ttft_server_mean_s": _mean_of(before, after,
                                           "agentkv:time_to_first_token_seconds"),
            **mon.samples.summary(), "server_log_tail": srv.log_tail(12)}
    summary = summarize(res, sum(len(s.turns) for s in setup.workload.sessions))
    summary.update(info)
    log(f"[{policy}] {summary['turns']}/{summary['turns_expected']} turns in {res.wall_s:.1f} s: "
        f"resume TTFT p50 {summary['resume_ttft_p50_s']} s p99 {summary['resume_ttft_p99_s']} s, "
        f"JCT mean {summary['jct_mean_s']} s, GPU hit rate {summary['gpu_hit_rate']}, "
        f"{summary['errors']} errors")
    return res, summary


def _delta(before: dict, after: dict, name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


def _commands(before: dict, after: dict) -> dict:
    """The engine thread's commands during the replay and their host seconds, by when they
    ran (between steps, or while a prefill step ran on the GPU)."""
    return {when: {"count": int(_delta(before, after,
                                       f"agentkv:engine_commands_total{{when={when}}}")),
                   "host_s": round(_delta(before, after, "agentkv:engine_command_seconds_total"
                                                         f"{{when={when}}}"), 4)}
            for when in ("between_steps", "during_steps")}


def _mean_of(before: dict, after: dict, histogram: str) -> float | None:
    """Mean of a histogram's observations between two scrapes (None when there were none)."""
    n = _delta(before, after, histogram + "_count")
    return round(_delta(before, after, histogram + "_sum") / n, 4) if n else None


def check_sample(workload: Workload, sessions: int, turns: int, pause_s: float
                 ) -> list[ReplaySession]:
    """The first sessions, at most `turns` turns each, every pause a human wait of `pause_s`,
    so the agent policy writes their KV down and loads it back."""
    out = []
    for s in workload.sessions[:sessions]:
        ts = [replace(t, pause_after_s=pause_s, pause_real_s=pause_s, tool_after="ask_user",
                      human_after=True) for t in s.turns[:turns]]
        ts[-1] = replace(ts[-1], pause_after_s=0.0, pause_real_s=0.0, tool_after=None,
                         human_after=False)
        out.append(replace(s, turns=tuple(ts)))
    return out


def sample_check(setup: RunSetup, model: str, dtype: str, sample: list[ReplaySession],
                 concurrency: int, log: Log) -> tuple[TokenComparison, dict]:
    """Replay `sample` greedily under recompute and under agent, `concurrency` sessions at a
    time, on a GPU budget below the sample's KV with CPU and disk tiers below it (so the agent
    writes the KV down and loads it back). In fp32 the tokens must be equal; in 16 bits, one
    session at a time, both servers run every step on the same batch, so the runs can part
    only where reused KV rounds differently from recomputed KV."""
    info = model_info(model, dtype)
    tokens = sum(s.context_tokens for s in sample)
    longest = max(s.context_tokens for s in sample)
    blocks = max(longest // 16 + 8, int(0.35 * tokens / 16))
    cpu_gb = round(0.5 * tokens * info.kv_bytes_per_token / 2**30, 4)
    disk_gb = round(max(0.05, 3 * tokens * info.kv_bytes_per_token / 2**30), 3)
    spec = replace(setup.spec, model=model, dtype=dtype, num_gpu_blocks=blocks,
                   cpu_cache_gb=cpu_gb, disk_cache_gb=disk_gb)
    sub = replace(setup, spec=spec, workload=Workload(setup.workload.config, sample),
                  driver=replace(setup.driver, concurrency=concurrency),
                  work_dir=setup.work_dir / f"sample-{dtype}")
    sub.work_dir.mkdir(parents=True, exist_ok=True)
    runs = {p: run_policy(sub, p, log, warm_tokens=min(1000, tokens // 4))
            for p in ("recompute", "agent")}
    at_once = "one session at a time" if concurrency == 1 else f"{concurrency} sessions at once"
    cmp = compare_outputs(f"{dtype} sample ({at_once}): recompute vs agent", sample,
                          runs["recompute"][0], runs["agent"][0])
    agent = runs["agent"][1]
    pause = max((t.pause_after_s for s in sample for t in s.turns), default=0.0)
    detail = {"model": model, "dtype": dtype, "sessions": len(sample),
              "concurrency": concurrency, "pause_s": pause, "gpu_blocks": blocks,
              "cpu_cache_gb": cpu_gb, "disk_cache_gb": disk_gb, "sample_tokens": tokens,
              "agent_resume_kv_source_tokens": agent["resume_kv_source_tokens"],
              "agent_tier_bytes": agent["tier_bytes"],
              "checksum_failures": agent["checksum_failures"] + runs["recompute"][1][
                  "checksum_failures"],
              "errors": agent["errors"] + runs["recompute"][1]["errors"],
              "error_samples": agent["error_samples"] + runs["recompute"][1]["error_samples"]}
    log(f"[check] {dtype} sample: {cmp.identical_sessions}/{cmp.sessions} sessions identical "
        f"over {cmp.tokens_compared} tokens; agent's resumed turns loaded "
        f"{agent['resume_kv_source_tokens']}")
    return cmp, detail


def engine_checks(model: str, dtype: str, device: str, comparisons: list[TokenComparison],
                  prompts: list[list[int]], kv_bytes_per_token: int, max_context: int,
                  log: Log) -> dict:
    """Tie check of every divergence and the KV round trip, on one in-process engine; a 16-bit
    run's counted divergences also on its fp32 reference (agent_ties.py)."""
    from runtime import Engine, EngineConfig
    t0 = time.perf_counter()
    need = sum(len(p) for p in prompts) * kv_bytes_per_token
    blocks = max(512, (max_context + 64) // 16 + 64)
    with tempfile.TemporaryDirectory(prefix="agentkv-kvcheck-") as tmp:
        eng = Engine(EngineConfig(model=model, device=device, dtype=dtype, num_gpu_blocks=blocks,
                                  cpu_cache_gb=2 * need / 2**30 + 0.01, disk_cache_path=tmp,
                                  disk_cache_gb=3 * need / 2**30 + 0.05))
        build_s = time.perf_counter() - t0
        tops = run_tops(comparisons, eng)
        rt = kv_roundtrip(eng, prompts, log)
        free_engine(eng)
    rt["engine_build_s"] = round(build_s, 2)
    ref, rt["tie_reference"] = reference_phase(model, dtype, device, comparisons, blocks, log)
    check_ties(comparisons, tops, ref, log)
    rt["phase_s"] = round(time.perf_counter() - t0, 2)
    return rt


def reference_phase(model: str, dtype: str, device: str, comparisons: list[TokenComparison],
                    blocks: int, log: Log) -> tuple[dict | None, dict | None]:
    """The counted divergences' top-20 on the same weights in fp32. If that engine cannot be
    built or run, the places keep the top-2 rule and the reason is reported."""
    from runtime import Engine, EngineConfig
    ref_model = reference_model(model, dtype)
    if ref_model is None or not any(c.counted and c.divergences for c in comparisons):
        return None, None
    t0 = time.perf_counter()
    info = {"model": ref_model, "dtype": "fp32"}
    try:
        eng = Engine(EngineConfig(model=ref_model, device=device, dtype="fp32",
                                  num_gpu_blocks=blocks, cuda_graphs=False))
        try:
            ref = reference_tops(comparisons, eng)
        finally:
            free_engine(eng)
    except Exception as e:                  # noqa: BLE001 - reported; the top-2 rule stands
        log(f"[check] the fp32 reference {ref_model} failed ({type(e).__name__}: {e}); "
            "the places keep the top-2 rule")
        return None, {**info, "error": f"{type(e).__name__}: {e}"}
    info.update(contexts=len(ref), seconds=round(time.perf_counter() - t0, 2))
    log(f"[check] fp32 reference {ref_model}: {len(ref)} places in {info['seconds']} s")
    return ref, info
