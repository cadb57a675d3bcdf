"""The agentkv gRPC server: engine, sessions, and the services on one grpc.aio server.

`AgentKVServer(config).start()` binds `config.host:port` (127.0.0.1 unless told otherwise; a
taken port fails before anything loads), opens the session store in the data directory, loads
the model and starts the engine thread, restores the sessions, then serves there (a call made
while the model loads waits; after gRPC's 20 s connect timeout it fails UNAVAILABLE, unless the
client waits for ready):

* `agentkv.v1.SessionService` (runtime/service.py, runtime/server_generate.py);
* the standard `grpc.health.v1.Health` service ("" and "agentkv.v1.SessionService" SERVING;
  NOT_SERVING from the moment shutdown begins);
* server reflection (v1alpha), so clients and tools need no generated code;
* Prometheus metrics on `config.metrics_port` (loopback), when set.

`stop()` shuts down gracefully: health goes NOT_SERVING, no new calls are accepted, running turns
get `grace_s` to finish and are then cancelled (each dropped turn leaves its session WAITING in
LMDB), pending session writes complete, then the engine stops and the store closes. Every change
of a session was already committed when its call returned, so nothing else needs flushing.

`ServerThread` runs a server on its own event loop in a background thread (tests, `agentkv demo`).
"""
from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from agentkv_proto.agentkv.v1 import session_service_pb2 as api
from agentkv_proto.agentkv.v1 import session_service_pb2_grpc as api_grpc
from runtime.auth import Authenticator
from runtime.engine import Engine
from runtime.engine_thread import EngineThread
from runtime.errors import StartupError
from runtime.metrics import Metrics, engine_snapshot
from runtime.server_config import ServerConfig
from runtime.server_tls import server_credentials
from runtime.policy_wiring import kv_policy_hook_factory
from runtime.server_hooks import HookChain, SessionEventLog
from runtime.service import ServiceDeps, SessionService
from sessions.hooks import KVPolicyHook, PauseEstimatorLike
from sessions.manager import SessionManager
from sessions.estimator import PauseEstimator
from sessions.estimator_store import load_estimator, save_estimator
from sessions.store import SessionStore

log = logging.getLogger("agentkv.server")

SERVICE_NAME = api.DESCRIPTOR.services_by_name["SessionService"].full_name
# Builds the KV policy's hook (sessions.hooks.KVPolicyHook) for the running engine; the server
# calls it once at start with the engine thread and the config (config.policy names the policy).
PolicyHookFactory = Callable[[EngineThread, ServerConfig], KVPolicyHook]


def model_name(model: str) -> str:
    return model if model == "tiny" or model.startswith("shape:") else Path(model).name


class AgentKVServer:
    """The server. policy_hook_factory: builds the KV policy's hook at start (None: the
    `config.policy` cache policy on the engine's tiers, runtime/policy_wiring.py). estimator:
    the pause-duration model shared by the session manager and the policy (None: the one saved
    in the data directory, or a fresh one; saved again at shutdown)."""

    def __init__(self, config: ServerConfig, policy_hook_factory: PolicyHookFactory | None = None,
                 estimator: PauseEstimatorLike | None = None):
        self.config = config
        self.policy_hook_factory = policy_hook_factory
        self.estimator = estimator
        self.auth = Authenticator.from_sources(
            config.api_key_file, environ=None if config.api_keys_from_env else {})
        self.metrics = Metrics()
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.engine_thread: EngineThread | None = None
        self.store: SessionStore | None = None
        self.manager: SessionManager | None = None
        self._server: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self._deps: ServiceDeps | None = None
        self._expirer: asyncio.Task | None = None
        self.kv_hook = None

    # -- start -------------------------------------------------------------------------------
    async def start(self) -> int:
        """Load, restore and listen; returns the bound port. On failure, undoes what started."""
        try:
            return await self._start()
        except BaseException:
            await self.stop(0)
            raise

    async def _start(self) -> int:
        cfg = self.config
        loop = asyncio.get_running_loop()
        self._listen()      # first: a taken port fails at once, not after the model has loaded
        if self.auth.is_open:
            log.warning("no API keys configured (--api-keys, AGENTKV_API_KEYS): the server is "
                        "open and every caller is tenant 'default'")
        data_dir = cfg.resolved_data_dir
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StartupError(f"cannot create the data directory {str(data_dir)!r}: "
                               f"{e.strerror or e}; choose another (--data-dir)") from e
        self.store = SessionStore(str(data_dir))
        engine = await loop.run_in_executor(None, Engine, cfg.engine_config())
        self.engine_thread = EngineThread(engine).start()
        await loop.run_in_executor(None, self._drop_old_blocks, engine, data_dir)
        if self.estimator is None:           # what earlier runs learned of pause lengths
            self.estimator = load_estimator(self.store.env)
            if cfg.pause_prior_scale != 1.0:
                self.estimator.scale_priors(cfg.pause_prior_scale)
        if self.policy_hook_factory is None:
            self.policy_hook_factory = kv_policy_hook_factory(self.estimator)
        events = SessionEventLog(self.metrics)
        hooks = [events]
        if self.policy_hook_factory is not None:
            self.kv_hook = self.policy_hook_factory(self.engine_thread, cfg)
            hooks.append(self.kv_hook)
        self.manager = SessionManager(self.store, policy_hook=HookChain(hooks),
                                      default_ttl_s=cfg.session_ttl_s,
                                      max_sessions_per_tenant=cfg.limits.max_sessions_per_tenant,
                                      estimator=self.estimator)
        restored = await loop.run_in_executor(None, self.manager.restore)
        log.info("%d sessions restored from %s", restored, data_dir)
        self._deps = ServiceDeps(self.engine_thread, self.manager, self.auth, cfg.limits,
                                 self.metrics, events, model_name(cfg.engine.model),
                                 cfg.default_max_tokens, self.kv_hook)
        self.metrics.attach(self._read_engine, self._read_sessions)
        api_grpc.add_SessionServiceServicer_to_server(SessionService(self._deps), self._server)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME), self._server)
        await self._server.start()
        for name in ("", SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if cfg.metrics_port is not None:
            try:
                self.metrics_port = self.metrics.serve(cfg.metrics_port, cfg.metrics_host)
            except OSError as e:
                raise StartupError(f"cannot serve metrics on {cfg.metrics_host}:"
                                   f"{cfg.metrics_port}: {e.strerror or e}; free the port or "
                                   "choose another (--metrics-port)") from e
            log.info("metrics on http://%s:%d/metrics", cfg.metrics_host, self.metrics_port)
        self._expirer = asyncio.create_task(self._expire_loop())
        opts = "".join(f" {k}={v}" for k, v in sorted(cfg.policy_options.items()))
        log.info("agentkv serving %s on %s:%d (policy %s%s, data %s)", self._deps.model_name,
                 cfg.host, self.port, cfg.policy, opts, data_dir)
        return self.port

    def _listen(self) -> None:
        """Create the gRPC server and bind its port (held from here on; the services are added
        and the server started once the engine and the sessions are up)."""
        cfg = self.config
        self._server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", cfg.limits.grpc_receive_bytes),
            ("grpc.max_send_message_length", cfg.limits.grpc_receive_bytes),
            ("grpc.so_reuseport", 0),
        ])
        addr = f"[{cfg.host}]:{cfg.port}" if ":" in cfg.host else f"{cfg.host}:{cfg.port}"
        creds = server_credentials(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca) \
            if cfg.tls_cert else None
        try:
            self.port = self._server.add_secure_port(addr, creds) if creds is not None \
                else self._server.add_insecure_port(addr)
        except RuntimeError:          # grpc's "Failed to bind to address ..."
            self.port = 0
        if not self.port:
            raise StartupError(f"cannot listen on {addr}: the port is taken by another process, "
                               f"or {cfg.host!r} is not an address of this machine; free the "
                               "port or choose another (--port, --host)")

    # -- stop --------------------------------------------------------------------------------
    async def stop(self, grace_s: float | None = None) -> None:
        grace = self.config.grace_s if grace_s is None else grace_s
        log.info("shutting down: no new calls; running turns have %.1f s to finish", grace)
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self._expirer is not None:
            self._expirer.cancel()
        if self._server is not None and self.port:
            await self._server.stop(grace)
        loop = asyncio.get_running_loop()
        if self._deps is not None:         # let the session writes of cancelled turns land
            await loop.run_in_executor(None, self._deps.db.shutdown, True)
            await loop.run_in_executor(None, self._deps.aux.shutdown, True)
        self.metrics.stop()
        if self.engine_thread is not None:
            await loop.run_in_executor(None, self.engine_thread.shutdown)
            tiers = self.engine_thread.engine.tiers
            if tiers is not None:              # finish copies in flight, flush disk writes
                await loop.run_in_executor(None, tiers.close)
        if self.store is not None:
            if isinstance(self.estimator, PauseEstimator):
                save_estimator(self.store.env, self.estimator)
            self.store.close()
        log.info("agentkv stopped")

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()

    # -- background --------------------------------------------------------------------------
    async def _expire_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.config.expire_interval_s)
            try:
                expired = await loop.run_in_executor(self._deps.db, self.manager.expire_idle)
                if expired:
                    log.info("%d idle sessions expired", len(expired))
            except Exception:
                log.exception("expiring idle sessions failed")

    def _drop_old_blocks(self, engine: Engine, data_dir: Path) -> None:
        """KV blocks an earlier version kept in the sessions' environment are dropped once the
        disk tier lives elsewhere (a cache: they are recomputed or reloaded from its tier)."""
        from kvstore.disk import drop_blocks
        disk = engine.config.disk_cache_path
        if disk and Path(disk).resolve() == data_dir.resolve():
            return
        n = drop_blocks(self.store.env)
        if n:
            log.info("dropped %d KV blocks an older layout kept in %s (the disk tier is now "
                     "%s)", n, data_dir, disk or "off")

    def _read_engine(self) -> dict | None:
        et = self.engine_thread
        # read-only: it may run while a prefill step is on the GPU, and a scrape then neither
        # waits for the step nor stops the commands queued behind it from running during it
        return (et.call(engine_snapshot, timeout=2.0, in_flight_ok=True)
                if et is not None and et.alive else None)

    def _read_sessions(self) -> dict[str, int]:
        if self.manager is None:
            return {}
        return {st.value: n for st, n in self.manager.count_by_state().items()}


class ServerThread:
    """An AgentKVServer on its own event loop in a daemon thread.

    `start()` returns once the server listens (or raises what start raised); `stop()` shuts it
    down gracefully and joins the thread.
    """

    def __init__(self, config: ServerConfig, policy_hook_factory: PolicyHookFactory | None = None,
                 estimator: PauseEstimatorLike | None = None):
        self.server = AgentKVServer(config, policy_hook_factory, estimator)
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stopped: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="agentkv-server", daemon=True)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def target(self) -> str:
        return f"{self.server.config.host}:{self.port}"

    def start(self, timeout: float = 300.0) -> "ServerThread":
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the server did not start in time")
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._main())
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    async def _main(self) -> None:
        self._stopped = asyncio.Event()
        try:
            await self.server.start()
        except BaseException as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        await self._stopped.wait()

    def stop(self, grace_s: float | None = None, timeout: float = 120.0) -> None:
        if not self._thread.is_alive():
            return
        fut = asyncio.run_coroutine_threadsafe(self.server.stop(grace_s), self.loop)
        try:
            fut.result(timeout)
        finally:
            self.loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(timeout)
