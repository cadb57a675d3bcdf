"""Token sampling for a batch: greedy, temperature, top-k, top-p, per-request seeds, logprobs."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from runtime.config import SamplingParams


@dataclass
class SampleResult:
    token_ids: list[int]              # one per row
    logprobs: list[float] | None      # log p(chosen) under the model's raw distribution
    top: list[list[tuple[int, float]]] | None = None   # per row: the k most likely (id, logprob)


def _filter_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor
                        ) -> torch.Tensor:
    """logits [n, V]; top_k [n] (0 = off); top_p [n] -> logits with the tail masked to -inf."""
    sorted_logits, idx = logits.sort(dim=-1, descending=True)
    vocab = logits.shape[-1]
    ranks = torch.arange(vocab, device=logits.device).expand_as(sorted_logits)
    k = torch.where(top_k > 0, top_k, torch.full_like(top_k, vocab)).unsqueeze(1)
    mask = ranks >= k
    probs = sorted_logits.masked_fill(mask, float("-inf")).softmax(dim=-1)
    cum = probs.cumsum(dim=-1) - probs          # mass strictly before each token
    mask |= cum >= top_p.unsqueeze(1)
    sorted_logits = sorted_logits.masked_fill(mask, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)


@dataclass
class DeviceSample:
    """One step's draws, still on the device (nothing has been read back)."""
    token_ids: torch.Tensor                   # [n] int64
    logprobs: torch.Tensor | None             # [n] float32, log p(chosen)
    top_ids: torch.Tensor | None = None       # [n, k] int64, the k most likely tokens
    top_logprobs: torch.Tensor | None = None  # [n, k] float32
    top_k_each: list[int] | None = None       # how many of the k each row asked for


def sample_on_device(logits: torch.Tensor, params: list[SamplingParams],
                     generators: list[torch.Generator | None]) -> DeviceSample:
    """logits [n, vocab] float32 -> one token per row, left on the device. Greedy and unseeded
    rows never wait for the device; a seeded row draws on its generator's device (the CPU), so
    that its output does not depend on where the model runs."""
    n = logits.shape[0]
    temps = [p.temperature for p in params]
    greedy_tokens = logits.argmax(dim=-1)                                   # [n]
    if all(t == 0.0 for t in temps):
        tokens = greedy_tokens
    else:
        dev = logits.device
        t = torch.tensor([x if x > 0 else 1.0 for x in temps], device=dev).unsqueeze(1)
        top_k = torch.tensor([p.top_k for p in params], device=dev)
        top_p = torch.tensor([p.top_p for p in params], device=dev)
        scaled = _filter_top_k_top_p(logits / t, top_k, top_p)
        probs = scaled.softmax(dim=-1)                                      # [n, vocab]
        tokens = greedy_tokens.clone()
        unseeded = [i for i in range(n) if temps[i] > 0 and generators[i] is None]
        if unseeded:
            rows = torch.tensor(unseeded, device=dev)
            tokens[rows] = torch.multinomial(probs[rows], 1).squeeze(1)
        for i in range(n):
            if temps[i] > 0 and generators[i] is not None:
                g = generators[i]
                # Draw on the generator's device, then move: seeded output is device-independent.
                p = probs[i].to(g.device)
                tokens[i] = torch.multinomial(p, 1, generator=g).to(dev)[0]
    out = DeviceSample(tokens, None)
    if any(p.logprobs or p.top_logprobs for p in params):
        all_lp = logits.log_softmax(dim=-1)                                 # [n, vocab]
        out.logprobs = all_lp.gather(1, tokens.unsqueeze(1)).squeeze(1)
        k = max(p.top_logprobs for p in params)
        if k:
            out.top_logprobs, out.top_ids = all_lp.topk(k, dim=-1)
            out.top_k_each = [p.top_logprobs for p in params]
    return out


@dataclass
class HostCopy:
    """A DeviceSample on its way to pinned host memory; `result()` waits for it."""
    tensors: dict[str, torch.Tensor]
    top_k_each: list[int] | None
    event: "torch.cuda.Event | None"

    def ready(self) -> bool:
        """Whether `result()` would return without waiting for the device."""
        return self.event is None or self.event.query()

    def result(self) -> SampleResult:
        if self.event is not None:
            self.event.synchronize()
        x = self.tensors
        logprobs = x["logprobs"].tolist() if "logprobs" in x else None
        top = None
        if "top_ids" in x:
            top = [[(i, v) for i, v in zip(ir[:k], vr[:k])]
                   for ir, vr, k in zip(x["top_ids"].tolist(), x["top_logprobs"].tolist(),
                                        self.top_k_each)]
        return SampleResult(x["token_ids"].tolist(), logprobs, top)


def copy_to_host(s: DeviceSample) -> HostCopy:
    """Start the device-to-host copy of a sample without waiting for it (on CUDA: pinned
    buffers, non-blocking copies and one event after them)."""
    names = ["token_ids", "logprobs", "top_ids", "top_logprobs"]
    src = {k: getattr(s, k) for k in names if getattr(s, k) is not None}
    if s.token_ids.device.type != "cuda":
        return HostCopy({k: v.clone() for k, v in src.items()}, s.top_k_each, None)
    host = {k: torch.empty(v.shape, dtype=v.dtype, pin_memory=True) for k, v in src.items()}
    for k, v in src.items():
        host[k].copy_(v, non_blocking=True)
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(s.token_ids.device))
    return HostCopy(host, s.top_k_each, event)


def sample(logits: torch.Tensor, params: list[SamplingParams],
           generators: list[torch.Generator | None]) -> SampleResult:
    """logits [n, vocab] float32 -> one token per row, read back to the host."""
    return copy_to_host(sample_on_device(logits, params, generators)).result()
