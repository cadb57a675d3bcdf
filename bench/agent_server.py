"""`agentkv serve` as a fresh process per policy, its Prometheus metrics, and a GPU sampler.

The server is started exactly as a user would (`python -m runtime.cli serve ...`) on free
loopback ports (`--port 0 --metrics-port 0`); the ports are read from the lines it prints once
it listens. Its log goes to a file beside the data directory.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from sessions.policies.options import parse_policy_options

REPO = Path(__file__).resolve().parent.parent
_SERVING = re.compile(r"agentkv serving on (\S+):(\d+)")
_METRICS = re.compile(r"agentkv metrics on http://(\S+):(\d+)/metrics")


@dataclass(frozen=True)
class ServerSpec:
    model: str = "tiny"
    device: str = "auto"
    dtype: str = "auto"
    policy: str = "agent"
    num_gpu_blocks: int = 2048
    block_size: int | None = None          # None: the engine's default for the device
    max_num_batched_tokens: int = 2048
    extend_graphs: bool | None = None    # None: the server's default (on with CUDA)
    extend_graph_max_tokens: int | None = None   # None: the server's default
    cpu_cache_gb: float = 0.0
    disk_cache_gb: float = 0.0
    max_concurrent_turns: int = 256
    pause_prior_scale: float = 1.0       # 1 / the replay's time compression
    log_level: str = "WARNING"
    stats_log_interval_s: float = 10.0     # the engine's progress line (at INFO)
    first_token_log_s: float | None = None  # log slow first tokens' steps (at INFO)
    # (policy, "KEY=VALUE") settings: a server of that policy gets `--policy-option KEY=VALUE`
    policy_options: tuple[tuple[str, str], ...] = ()

    def args(self, data_dir: Path) -> list[str]:
        return ["--log-level", self.log_level, "serve", "--model", self.model,
                "--device", self.device, "--dtype", self.dtype, "--port", "0",
                "--metrics-port", "0", "--data-dir", str(data_dir), "--policy", self.policy,
                "--num-gpu-blocks", str(self.num_gpu_blocks),
                "--max-num-batched-tokens", str(self.max_num_batched_tokens),
                "--cpu-cache-gb", str(self.cpu_cache_gb),
                "--disk-cache-gb", str(self.disk_cache_gb),
                "--max-concurrent-turns", str(self.max_concurrent_turns),
                "--pause-prior-scale", repr(self.pause_prior_scale),
                "--max-sessions-per-tenant", "100000", "--session-ttl-s", "0",
                "--grace-s", "1", "--stats-log-interval-s", repr(self.stats_log_interval_s)] \
            + ([] if self.block_size is None else ["--block-size", str(self.block_size)]) \
            + ([] if self.first_token_log_s is None
               else ["--first-token-log-s", repr(self.first_token_log_s)]) \
            + ([] if self.extend_graphs is None
               else ["--extend-graphs" if self.extend_graphs else "--no-extend-graphs"]) \
            + ([] if self.extend_graph_max_tokens is None
               else ["--extend-graph-max-tokens", str(self.extend_graph_max_tokens)]) \
            + [x for pol, kv in self.policy_options if pol == self.policy
               for x in ("--policy-option", kv)]


def split_policy_options(items: list[str], policies) -> tuple[tuple[tuple[str, str], ...],
                                                                dict[str, dict]]:
    """`POLICY:KEY=VALUE` items -> the servers' (policy, KEY=VALUE) pairs and, for the report,
    policy -> its typed settings; checked here (as the server would) before anything starts."""
    by_policy: dict[str, list[str]] = {}
    for item in items:
        pol, sep, kv = item.partition(":")
        if not sep or pol not in policies:
            raise SystemExit(f"--policy-option {item!r}: expected POLICY:KEY=VALUE with POLICY "
                             f"one of this run's policies ({', '.join(policies)})")
        by_policy.setdefault(pol, []).append(kv)
    doc = {}
    for pol, kvs in by_policy.items():
        try:
            doc[pol] = parse_policy_options(pol, kvs)
        except ValueError as e:
            raise SystemExit(f"agent_replay: {e}") from None
    return tuple((pol, kv) for pol, kvs in by_policy.items() for kv in kvs), doc


class AgentServer:
    """One server process; `start()` returns once it listens (raises with its log if it died)."""

    def __init__(self, spec: ServerSpec, work_dir: Path):
        self.spec, self.work_dir = spec, Path(work_dir)
        self.data_dir = self.work_dir / f"data-{spec.policy}"
        self.log_path = self.work_dir / f"server-{spec.policy}.log"
        self.proc: subprocess.Popen | None = None
        self.target = ""
        self.metrics_url = ""
        self.start_s = 0.0

    def start(self, timeout_s: float = 300.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, AGENTKV_API_KEYS="",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(REPO),
                                                            os.environ.get("PYTHONPATH")])))
        t0 = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "runtime.cli",
                                      *self.spec.args(self.data_dir)],
                                     cwd=REPO, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1)
        ready = threading.Event()
        threading.Thread(target=self._pump, args=(ready,), daemon=True).start()
        while not ready.wait(0.2):
            if self.proc.poll() is not None or time.perf_counter() - t0 > timeout_s:
                self.stop()
                raise RuntimeError(f"agentkv serve ({self.spec.policy}) did not start; the end "
                                   f"of its log:\n{self.log_tail()}")
        self.start_s = time.perf_counter() - t0
        return self.target

    def _pump(self, ready: threading.Event) -> None:
        with open(self.log_path, "w") as log:
            for line in self.proc.stdout:
                log.write(line)
                log.flush()
                if m := _SERVING.search(line):
                    self.target = f"127.0.0.1:{m.group(2)}"
                elif m := _METRICS.search(line):
                    self.metrics_url = f"http://127.0.0.1:{m.group(2)}/metrics"
                if self.target and self.metrics_url:
                    ready.set()

    def log_tail(self, n: int = 40) -> str:
        try:
            return "".join(self.log_path.read_text().splitlines(True)[-n:])
        except OSError:
            return "(no log)"

    def scrape(self) -> dict[str, float]:
        """Every sample of the metrics endpoint, keyed `name{label=value,...}`."""
        from prometheus_client.parser import text_string_to_metric_families
        with urllib.request.urlopen(self.metrics_url, timeout=30) as r:
            text = r.read().decode()
        out = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = float(s.value)
        return out

    def stop(self, wait_s: float = 8.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited (the data directory is thrown away)."""
        p = self.proc
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(wait_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(30)


@dataclass
class GpuSamples:
    util_pct: list[float] = field(default_factory=list)
    mem_used_gib: list[float] = field(default_factory=list)

    def summary(self) -> dict:
        u = self.util_pct
        return {"gpu_util_mean_pct": round(sum(u) / len(u), 1) if u else None,
                "gpu_mem_used_max_gib": round(max(self.mem_used_gib), 2)
                if self.mem_used_gib else None, "gpu_samples": len(u)}


class GpuMonitor:
    """Samples GPU utilisation (NVML) every `period_s` while in its `with` block; nothing
    without NVML or a GPU."""

    def __init__(self, period_s: float = 0.2, index: int = 0):
        self.period_s, self.index = period_s, index
        self.samples = GpuSamples()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "GpuMonitor":
        try:
            import pynvml
            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
        except Exception:
            return self

        def run() -> None:
            while not self._stop.wait(self.period_s):
                u = pynvml.nvmlDeviceGetUtilizationRates(handle)
                m = pynvml.nvmlDeviceGetMemoryInfo(handle)
                self.samples.util_pct.append(float(u.gpu))
                self.samples.mem_used_gib.append(m.used / 2**30)
        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
