"""`agentkv serve` as a real subprocess on a free loopback port, for crash and restart tests."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from runtime.client import AgentKVClient

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, data_dir: Path, policy: str = "agent", *extra: str):
        self.data_dir, self.policy, self.extra = data_dir, policy, extra
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self, timeout: float = 120.0) -> AgentKVClient:
        self.port = free_port()
        cmd = [sys.executable, "-m", "runtime.cli", "--log-level", "WARNING", "serve",
               "--model", "tiny", "--device", "cpu", "--port", str(self.port),
               "--data-dir", str(self.data_dir), "--policy", self.policy,
               "--num-gpu-blocks", "256", "--cpu-cache-gb", "0.02", "--disk-cache-gb", "0.1",
               "--grace-s", "1", *self.extra]
        env = dict(os.environ, AGENTKV_API_KEYS="", PYTHONPATH=str(REPO))
        self.log = open(self.data_dir.parent / f"server-{self.port}.log", "w")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        client = AgentKVClient(f"127.0.0.1:{self.port}", timeout=60.0)
        client.wait_ready(timeout)
        return client

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()
