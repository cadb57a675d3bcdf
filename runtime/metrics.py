"""Prometheus metrics of the server, named in vLLM's style (`agentkv:<name>`).

Counted by the server as things happen:

    agentkv:time_to_first_token_seconds   histogram   request arrival -> first generated token
    agentkv:turns_total{finish_reason}    counter     stop | length | tool_call | cancelled | error
    agentkv:prompt_tokens_by_source_total{source}     gpu | cpu | disk | recomputed (kv_source)
    agentkv:chat_rewrites_total           counter     turns whose chat re-render cut the log back
    agentkv:session_pauses_total{trigger}  counter    tool_call (auto-pause) | client (Pause RPC)
    agentkv:session_resumes_total{trigger} counter    client (Resume RPC) | turn (Generate)
    agentkv:session_events_total{event}    counter    create | turn_end | pause | resume | close
    agentkv:rpc_errors_total{method,code}  counter    calls answered with an error status
    agentkv:rpc_duration_seconds{method}   histogram  a unary call's arrival at its handler ->
                                                      its answer (errors included)

Read at scrape time (engine state through `EngineThread.call`, on the engine thread between
steps or while a prefill step is on the GPU, so the HTTP thread never races the step loop;
session counts from the manager):

    agentkv:kv_cache_usage_perc{tier}     gauge       used / capacity, 0..1
    agentkv:kv_cache_capacity_blocks{tier}
    agentkv:kv_bytes_moved_total{tier,direction}      bytes copied into / out of each tier
    agentkv:prefix_cache_queries_total / agentkv:prefix_cache_hits_total   (tokens)
    agentkv:prompt_tokens_total, agentkv:prompt_tokens_computed_total,
    agentkv:generation_tokens_total
    agentkv:num_preemptions_total, agentkv:preempted_tokens_total,
    agentkv:num_requests_running, agentkv:num_requests_waiting
    agentkv:engine_slow_steps_total       counter     engine steps of 0.5 s or longer (stalls)
    agentkv:engine_short_steps_total      counter     steps cut to the policy's cap (a resume
                                                      was likely soon)
    agentkv:engine_commands_total{when}   counter     the engine thread's commands (submits,
    agentkv:engine_command_seconds_total{when}        session events) and their host time:
                                                      between_steps | during_steps (served
                                                      while a prefill step ran on the GPU)
    agentkv:sessions{state}               gauge       active | waiting | paused | closed | expired

The GPU tier is always reported; CPU and disk appear when the engine has those tiers
(`engine.tiers`, see `_tier_rows`: the one place that lists them).
"""
from __future__ import annotations

import logging
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

log = logging.getLogger(__name__)

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
               10.0)


def _tier_rows(engine) -> list[tuple[str, int, int, int, int]]:
    """(tier, used_blocks, capacity_blocks, bytes_in, bytes_out) for every tier the engine has."""
    pool = engine.pool
    tiers = getattr(engine, "tiers", None)
    if tiers is None:
        return [("gpu", pool.num_blocks - pool.num_free_blocks, pool.num_blocks, 0, 0)]
    usage = tiers.usage()
    rows = []
    for name in ("gpu", "cpu", "disk"):
        u = usage.get(name)
        if u is None or (name != "gpu" and u.capacity_blocks == 0):
            continue
        rows.append((name, u.used_blocks, u.capacity_blocks, u.bytes_in, u.bytes_out))
    return rows


def engine_snapshot(engine) -> dict:
    """What the collector reports, read on the engine thread."""
    st, sched = engine.stats, engine.scheduler
    bs = engine.config.block_size
    return {
        "tiers": _tier_rows(engine),
        "prefix_queries": engine.pool.stats.queries * bs,
        "prefix_hits": engine.pool.stats.hits * bs,
        "prompt_tokens": st.prompt_tokens,
        "prompt_tokens_computed": st.prompt_tokens_computed,
        "generation_tokens": st.generated_tokens,
        "preemptions": st.preemptions,
        "preempted_tokens": sched.preempted_tokens,
        "slow_steps": engine.step_log.slow_steps,
        "short_steps": sched.short_steps,
        "commands": {k: tuple(v) for k, v in engine.step_log.commands.items()},
        "running": len(sched.running),
        "waiting": len(sched.waiting),
        "disk": _disk_health(engine),
    }


def _disk_health(engine) -> dict | None:
    """The disk tier's state: degraded (unusable path, failed open), checksum failures, refusals."""
    tiers = getattr(engine, "tiers", None)
    disk = tiers.disk if tiers is not None else None
    if disk is None:
        return None
    st = disk.stats
    return {"degraded": 0.0 if disk.healthy else 1.0, "checksum_failures": st.checksum_failures,
            "full_refusals": st.full_refusals, "evictions": st.evictions}


class _ScrapeCollector:
    """Engine and session gauges/counters read when Prometheus scrapes."""

    def __init__(self, read_engine: Callable[[], dict | None],
                 read_sessions: Callable[[], dict[str, int]] | None):
        self.read_engine, self.read_sessions = read_engine, read_sessions

    def collect(self):
        snap = None
        try:
            snap = self.read_engine()
        except Exception as e:            # engine stopped or busy past the timeout
            log.debug("metrics: engine not read (%s)", e)
        if snap is not None:
            usage = GaugeMetricFamily("agentkv:kv_cache_usage_perc",
                                      "KV cache usage per tier (used / capacity, 0..1)",
                                      labels=["tier"])
            cap = GaugeMetricFamily("agentkv:kv_cache_capacity_blocks",
                                    "KV blocks each tier can hold", labels=["tier"])
            moved = CounterMetricFamily("agentkv:kv_bytes_moved",
                                        "Bytes of KV copied into or out of each tier",
                                        labels=["tier", "direction"])
            for tier, used, capacity, b_in, b_out in snap["tiers"]:
                usage.add_metric([tier], used / capacity if capacity else 0.0)
                cap.add_metric([tier], capacity)
                moved.add_metric([tier, "in"], b_in)
                moved.add_metric([tier, "out"], b_out)
            yield usage
            yield cap
            yield moved
            for key, name, doc in (
                    ("prefix_queries", "prefix_cache_queries", "Prompt tokens looked up in the "
                     "GPU prefix cache (whole blocks)"),
                    ("prefix_hits", "prefix_cache_hits", "Prompt tokens found in the GPU prefix "
                     "cache"),
                    ("prompt_tokens", "prompt_tokens", "Prompt tokens of every request"),
                    ("prompt_tokens_computed", "prompt_tokens_computed",
                     "Prompt tokens run through the model"),
                    ("generation_tokens", "generation_tokens", "Generated tokens"),
                    ("preemptions", "num_preemptions", "Requests preempted for KV space"),
                    ("preempted_tokens", "preempted_tokens", "Context tokens that "
                     "preempted requests held (computed, or found cached), to be computed or "
                     "matched again"),
                    ("slow_steps", "engine_slow_steps", "Engine steps of 0.5 s or longer "
                     "(a host-side stall, such as a kernel compile)"),
                    ("short_steps", "engine_short_steps", "Engine steps cut to the cache "
                     "policy's cap while a paused session was likely back soon")):
                yield CounterMetricFamily(f"agentkv:{name}", doc, value=snap[key])
            n = CounterMetricFamily("agentkv:engine_commands", "The engine thread's commands "
                                    "(submissions, session events), by when they ran: between "
                                    "steps, or while a prefill step ran on the GPU",
                                    labels=["when"])
            sec = CounterMetricFamily("agentkv:engine_command_seconds", "Host time of those "
                                      "commands", labels=["when"])
            for when, (count, seconds) in snap["commands"].items():
                n.add_metric([when], count)
                sec.add_metric([when], seconds)
            yield n
            yield sec
            disk = snap.get("disk")
            if disk is not None:
                g = GaugeMetricFamily("agentkv:kv_tier_degraded", "1 while a KV tier is out of "
                                      "service (the engine serves without it)", labels=["tier"])
                g.add_metric(["disk"], disk["degraded"])
                yield g
                yield CounterMetricFamily("agentkv:kv_checksum_failures", "Disk KV blocks whose "
                                          "checksum failed (treated as misses, recomputed)",
                                          value=disk["checksum_failures"])
                yield CounterMetricFamily("agentkv:kv_disk_full_refusals", "Disk KV blocks "
                                          "refused because the tier was full",
                                          value=disk["full_refusals"])
                yield CounterMetricFamily("agentkv:kv_disk_evictions", "Disk KV blocks evicted "
                                          "to make room", value=disk["evictions"])
            yield GaugeMetricFamily("agentkv:num_requests_running", "Requests in the running "
                                    "batch", value=snap["running"])
            yield GaugeMetricFamily("agentkv:num_requests_waiting", "Requests waiting for "
                                    "admission", value=snap["waiting"])
        if self.read_sessions is not None:
            g = GaugeMetricFamily("agentkv:sessions", "Sessions in memory per state",
                                  labels=["state"])
            for state, n in self.read_sessions().items():
                g.add_metric([state], n)
            yield g


class Metrics:
    """The server's metrics in their own registry (several servers may share a process)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.ttft = Histogram("agentkv:time_to_first_token_seconds",
                              "Time from a Generate call's arrival to its first token",
                              buckets=TTFT_BUCKETS, registry=r)
        self.queue = Histogram("agentkv:turn_queue_seconds",
                               "Time from a turn's arrival at the engine to its admission "
                               "(waiting for a slot, for GPU room, for its prefix load)",
                               buckets=TTFT_BUCKETS, registry=r)
        self.turns = Counter("agentkv:turns", "Turns finished, by finish reason",
                             ["finish_reason"], registry=r)
        self.prompt_by_source = Counter("agentkv:prompt_tokens_by_source",
                                        "Turn prompt tokens by where their KV came from",
                                        ["source"], registry=r)
        self.rewrites = Counter("agentkv:chat_rewrites",
                                "Turns whose chat re-render changed earlier tokens", registry=r)
        self.pauses = Counter("agentkv:session_pauses", "Session pauses", ["trigger"],
                              registry=r)
        self.resumes = Counter("agentkv:session_resumes", "Session resumes", ["trigger"],
                               registry=r)
        self.events = Counter("agentkv:session_events", "Session events", ["event"],
                              registry=r)
        self.rpc_errors = Counter("agentkv:rpc_errors", "Calls answered with an error status",
                                  ["method", "code"], registry=r)
        self.rpc_seconds = Histogram("agentkv:rpc_duration_seconds",
                                     "Time a unary call took in its handler, by method",
                                     ["method"], buckets=RPC_BUCKETS, registry=r)
        self._http = None

    def attach(self, read_engine: Callable[[], dict | None],
               read_sessions: Callable[[], dict[str, int]] | None) -> None:
        """Report engine and session state at scrape time."""
        self.registry.register(_ScrapeCollector(read_engine, read_sessions))

    def observe_turn(self, finish_reason: str, ttft_s: float | None,
                     kv_source: dict[str, int], rewritten: bool,
                     queue_s: float | None = None) -> None:
        self.turns.labels(finish_reason).inc()
        if ttft_s is not None:
            self.ttft.observe(ttft_s)
        if queue_s is not None:
            self.queue.observe(max(0.0, queue_s))
        for source in ("gpu", "cpu", "disk", "recomputed"):
            self.prompt_by_source.labels(source).inc(kv_source.get(source, 0))
        if rewritten:
            self.rewrites.inc()

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Start the /metrics HTTP endpoint; returns the bound port (port 0 picks a free one)."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        return server.server_address[1]

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
