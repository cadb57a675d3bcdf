"""A peer server we did not write: Hugging Face transformers' continuous batching, stateless.

The same Llama shape as agentkv's (`runtime/models/shapes.py`, random weights from the same
seed and std, built on the device), served by transformers' `ContinuousBatchingManager`
(`model.init_continuous_batching()`, paged attention), given the same GPU KV budget in tokens.
It keeps no session: every turn re-sends the session's whole history (all earlier inputs and
the peer's own earlier outputs) plus the new input, as a client of a stateless server does.

Time to first token is measured at the client from `add_request` to the first streamed output
that carries a generated token (`streaming=True`; one router thread hands outputs to the waiting
session threads), the same point agentkv's client measures at. The replay driver
(bench/agent_driver.py) plays the workload with the same sessions, turns and pauses.
"""
from __future__ import annotations

import dataclasses
import gc
import queue
import threading
import time
import uuid
from dataclasses import dataclass

import torch

from agent_driver import TurnOutcome
from agent_workload import ReplaySession, ReplayTurn

ATTN_CANDIDATES = ("paged|sdpa", "sdpa", "paged|eager")


@dataclass(frozen=True)
class PeerConfig:
    shape: str = "llama3-8b"             # a name of runtime/models/shapes.py SHAPES
    device: str = "cuda"
    dtype: str = "bfloat16"
    seed: int = 0
    kv_tokens: int = 49_152              # GPU KV budget, as agentkv's num_gpu_blocks * 16
    page_size: int = 256
    max_batch_tokens: int = 2048         # agentkv's token budget per step
    cuda_graphs: bool = False            # agentkv runs eager too
    attn: tuple[str, ...] = ATTN_CANDIDATES
    turn_timeout_s: float = 600.0
    overrides: tuple[tuple[str, int], ...] = ()     # config fields changed (tests: fewer layers)


def build_model(cfg: PeerConfig, attn: str):
    """LlamaForCausalLM of the named shape with random weights, built on the device."""
    from transformers import LlamaForCausalLM

    from runtime.models.shapes import init_random_, shape_config
    hf = shape_config(cfg.shape)
    for k, v in cfg.overrides:
        setattr(hf, k, v)
    dtype = getattr(torch, cfg.dtype)
    with torch.device(cfg.device):
        model = LlamaForCausalLM._from_config(hf, dtype=dtype, attn_implementation=attn)
    init_random_(model, cfg.seed)
    return model.eval()


def _cb_config(cfg: PeerConfig):
    """The manager's settings, passed the way this transformers version takes them."""
    try:
        from transformers.generation.configuration_utils import ContinuousBatchingConfig
    except ImportError:
        ContinuousBatchingConfig = None
    kw = {"num_blocks": max(1, cfg.kv_tokens // cfg.page_size), "max_batch_tokens":
          cfg.max_batch_tokens, "use_cuda_graph": cfg.cuda_graphs,
          "auto_switch_to_flash": False, "scheduler_type": "fifo"}
    if ContinuousBatchingConfig is None:
        return None, {**kw, "block_size": cfg.page_size}
    names = {f.name for f in dataclasses.fields(ContinuousBatchingConfig)}
    kw["page_size" if "page_size" in names else "block_size"] = cfg.page_size
    return ContinuousBatchingConfig(**{k: v for k, v in kw.items() if k in names}), kw


class HFPeerBackend:
    """A driver backend over one running ContinuousBatchingManager."""

    name = "hf_cb"

    def __init__(self, cfg: PeerConfig = PeerConfig(), log=print):
        import transformers
        from transformers import GenerationConfig
        self.cfg, self.log = cfg, log
        self.info: dict = {"transformers": transformers.__version__, "shape": cfg.shape,
                           "dtype": cfg.dtype, "kv_tokens": cfg.kv_tokens,
                           "page_size": cfg.page_size, "max_batch_tokens": cfg.max_batch_tokens,
                           "cuda_graphs": cfg.cuda_graphs}
        t0 = time.perf_counter()
        errors = []
        for attn in cfg.attn:             # the first paged implementation this version takes
            try:
                self.model = build_model(cfg, attn)
                gen = GenerationConfig(do_sample=False, max_new_tokens=64, eos_token_id=-1,
                                       pad_token_id=0)
                cb, kw = _cb_config(cfg)
                if cb is None:            # older versions read these from the generation config
                    for k, v in kw.items():
                        setattr(gen, k, v)
                    self.manager = self.model.init_continuous_batching(generation_config=gen)
                else:
                    self.manager = self.model.init_continuous_batching(
                        generation_config=gen, continuous_batching_config=cb)
                self.manager.start()
                self.info["attn_implementation"] = attn
                break
            except Exception as e:      # noqa: BLE001 - try the next implementation
                errors.append(f"{attn}: {type(e).__name__}: {e}")
                self.model = self.manager = None
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
        if self.manager is None:
            raise RuntimeError("transformers continuous batching did not start: "
                               + "; ".join(errors))
        self.info["attn_tried"] = errors
        self._queues: dict[str, queue.Queue] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._router = threading.Thread(target=self._route, daemon=True)
        self._router.start()
        self._warm_up()
        self.info["build_s"] = round(time.perf_counter() - t0, 2)

    def _route(self) -> None:
        while not self._stop.is_set():
            out = self.manager.get_result(timeout=0.05)
            if out is None:
                continue
            with self._lock:
                q = self._queues.get(out.request_id)
            if q is not None:
                q.put((time.perf_counter(), out))

    def _warm_up(self) -> None:
        """One long and one short request, so kernels and allocations are ready."""
        for n in (min(3000, self.cfg.kv_tokens // 2), 200):
            self._generate(list(range(3, 3 + n)), 4)

    def _generate(self, prompt: list[int], max_new: int, timeout_s: float | None = None
                  ) -> TurnOutcome:
        rid = f"r-{uuid.uuid4().hex}"
        q: queue.Queue = queue.Queue()
        with self._lock:
            self._queues[rid] = q
        sent = time.perf_counter()
        first = last = None
        try:
            self.manager.add_request(prompt, request_id=rid, max_new_tokens=max_new,
                                     streaming=True)
            limit = min(self.cfg.turn_timeout_s, timeout_s or self.cfg.turn_timeout_s)
            while True:
                try:
                    at, out = q.get(timeout=max(0.0, sent + limit - time.perf_counter()))
                except queue.Empty:
                    self.manager.cancel_request(rid)
                    raise TimeoutError(f"the turn did not finish in {limit:.0f} s") from None
                if getattr(out, "error", None):
                    raise RuntimeError(f"the peer failed the request: {out.error}")
                if out.generated_tokens:
                    first = first or at
                    last = at
                if out.is_finished():
                    ids = list(out.generated_tokens)
                    break
        finally:
            with self._lock:
                self._queues.pop(rid, None)
        return TurnOutcome(sent, first, last, ids, {}, None, len(prompt))

    # -- Backend ---------------------------------------------------------------------------
    def open(self, session: ReplaySession) -> dict:
        return {"history": []}

    def turn(self, handle: dict, turn: ReplayTurn, timeout_s: float | None = None
             ) -> TurnOutcome:
        prompt = handle["history"] + list(turn.input_ids)
        o = self._generate(prompt, turn.output_tokens, timeout_s)
        handle["history"] = prompt + o.token_ids
        return o

    def pause(self, handle, turn) -> None:
        """Stateless: nothing is kept, so a pause changes nothing on the server."""

    def resume(self, handle) -> None:
        pass

    def close(self, handle) -> None:
        handle["history"] = []

    def shutdown(self) -> None:
        self._stop.set()
        self._router.join(5)
        try:
            self.manager.stop(block=True, timeout=20)
        except Exception as e:            # noqa: BLE001 - report, free memory anyway
            self.log(f"[hf_cb] stop: {e}")
        self.manager = self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
