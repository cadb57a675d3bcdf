"""Each kernel of bench/kernels.py at one size: checked against its torch reference, then timed
beside its variants and its torch peer; one JSON row per measurement (`Bench.rows`)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import kernels.attention_decode as dec
from kernels._triton import next_power_of_2
from kernels.attention_decode import (default_decode_config, paged_decode_attention,
                                      paged_decode_attention_ref)
from kernels.attention_prefill import (default_prefill_config, paged_prefill_attention,
                                       paged_prefill_attention_ref)
from kernels.block_copy import (CopyConfig, pack_blocks, pack_blocks_ref, unpack_blocks,
                                unpack_blocks_ref)
from kernels.kv_write import write_kv, write_kv_ref
from kernels.rms_norm import rms_norm, rms_norm_ref
from kernels.rotary import apply_rotary, apply_rotary_ref, build_cos_sin_cache, llama3_inv_freq
from kernel_timing import graph_timing, rel_err, time_graph_ms, time_ms
from kernels_config import Sizes, decode_variants, prefill_variants


class Bench:
    def __init__(self, sizes: Sizes, device: str, dtype: torch.dtype, variants: bool):
        self.s, self.device, self.dtype, self.variants = sizes, device, dtype, variants
        self.cuda = device == "cuda"
        self.rows: list[dict] = []
        self.copy_gbps = 0.0
        self.elem = torch.empty((), dtype=dtype).element_size()

    def row(self, **kw) -> dict:
        if "bytes" in kw and "ms" in kw:
            kw["GBps"] = round(kw["bytes"] / kw["ms"] / 1e6, 1)
            kw["bw_frac"] = round(kw["GBps"] / self.copy_gbps, 3) if self.copy_gbps else None
        self.rows.append(kw)
        print("  " + "  ".join(f"{k}={v}" for k, v in kw.items() if k not in ("bytes",)),
              flush=True)
        return kw

    def rand(self, *shape) -> torch.Tensor:
        return torch.randn(shape, device=self.device, dtype=self.dtype)

    # ---- ceiling -----------------------------------------------------------------------------
    def copy_ceiling(self) -> float:
        n = self.s.copy_ceiling_bytes // self.elem
        a, b = self.rand(n), torch.empty(n, device=self.device, dtype=self.dtype)
        ms = time_ms(lambda: b.copy_(a), self.cuda)
        self.copy_gbps = 2 * n * self.elem / ms / 1e6
        self.row(op="copy_ceiling", bytes=2 * n * self.elem, ms=round(ms, 4))
        if self.cuda:  # the same copy at the byte count of one 32K-token decode (K+V, 128 MiB)
            m = (64 << 20) // self.elem
            for flush in ("read", "write"):
                ms = time_graph_ms(lambda: b[:m].copy_(a[:m]), flush=flush)
                self.row(op="copy_128MiB_moved", timing=graph_timing(flush),
                         bytes=2 * m * self.elem, ms=round(ms, 4))
        return self.copy_gbps

    # ---- paged cache of one layer ------------------------------------------------------------
    def paged(self, seq_lens: list[int]):
        s = self.s
        blocks = [math.ceil(L / s.block_size) for L in seq_lens]
        num_blocks = sum(blocks) + 8
        cache = self.rand(num_blocks, 2, 2, s.block_size, s.num_kv_heads, s.head_dim)
        kv_layer = cache[:, 1]                                  # strided like the engine's view
        perm = torch.randperm(num_blocks, device=self.device).int()
        table = torch.zeros((len(seq_lens), max(blocks)), dtype=torch.int32, device=self.device)
        used = 0
        for i, nb in enumerate(blocks):
            table[i, :nb] = perm[used:used + nb]
            used += nb
        lens = torch.tensor(seq_lens, dtype=torch.int32, device=self.device)
        return kv_layer, table, lens

    def dense_kv(self, kv_layer, table, seq_lens):
        """Contiguous [B, Hkv, L, D] K and V for SDPA (equal lengths only)."""
        L = seq_lens[0]
        nb = math.ceil(L / self.s.block_size)
        kv = kv_layer[table[:, :nb].long()]                     # [B, nb, 2, bs, Hkv, D]
        k = kv[:, :, 0].flatten(1, 2)[:, :L].transpose(1, 2).contiguous()
        v = kv[:, :, 1].flatten(1, 2)[:, :L].transpose(1, 2).contiguous()
        return k, v

    # ---- decode ------------------------------------------------------------------------------
    def decode(self, name: str, batch: int, ctx: int) -> float:
        s = self.s
        kv_layer, table, lens = self.paged([ctx] * batch)
        q = self.rand(batch, s.num_q_heads, s.head_dim)
        scale = s.head_dim ** -0.5
        ref = paged_decode_attention_ref(q, kv_layer, lens, table, scale)
        nbytes = (batch * ctx * s.num_kv_heads * s.head_dim * 2 + 2 * q.numel()) * self.elem

        def run(cfg=None, splits=None, timed=True):
            out = torch.full_like(q, float("nan"))
            paged_decode_attention(q, kv_layer, lens, table, scale, num_splits=splits, out=out,
                                   config=cfg)
            err = rel_err(out, ref)
            assert err < 2e-2, f"decode {name} cfg={cfg} splits={splits}: rel err {err:.2e}"
            if not timed:
                return None, err
            ms = time_ms(lambda: paged_decode_attention(q, kv_layer, lens, table, scale,
                                                        num_splits=splits, out=out, config=cfg),
                         self.cuda)
            return ms, err

        cfg = default_decode_config(s.head_dim, self.dtype, q.device, batch * s.num_kv_heads)
        ms, err = run()
        main = self.row(op="decode", case=name, variant="default", timing="eager",
                        config=str(cfg), rel_err=f"{err:.1e}", bytes=nbytes, ms=round(ms, 4))
        if self.cuda:
            out = torch.empty_like(q)
            for flush in ("write", "read"):  # the metric: the read flush (the last row)
                ms = time_graph_ms(lambda: paged_decode_attention(q, kv_layer, lens, table,
                                                                  scale, out=out), flush=flush)
                main = self.row(op="decode", case=name, variant="default",
                                timing=graph_timing(flush), config=str(cfg), bytes=nbytes,
                                ms=round(ms, 4))
        if self.cuda and batch == 1:
            # the separate merge kernel alone at the default's split count: what the fused merge
            # (the default at batch 1) saves, less the merging program's own time
            num_splits = dec.choose_num_splits(batch, s.num_kv_heads, table.shape[1] * s.block_size,
                                               cfg, dec._num_sms(q.device))
            if num_splits > 1:
                mid_o = torch.randn((batch, s.num_q_heads, num_splits, s.head_dim),
                                    device=self.device)
                mid_lse = torch.randn((batch, s.num_q_heads, num_splits), device=self.device)
                out = torch.empty_like(q)

                def reduce_only():
                    dec._decode_reduce_kernel[(batch, s.num_q_heads)](
                        mid_o, mid_lse, out, num_splits, out.stride(0), out.stride(1),
                        NUM_Q_HEADS=s.num_q_heads, HEAD_DIM=s.head_dim,
                        BLOCK_S=next_power_of_2(num_splits), num_warps=4)

                self.row(op="decode", case=name,
                         variant=f"merge_kernel_only splits={num_splits}",
                         timing="cuda_graph", ms=round(time_graph_ms(reduce_only), 4))
        if self.variants and self.cuda:
            for c, splits in decode_variants(s, batch, ctx):
                run(c, splits, timed=False)                     # checks the result
                out = torch.empty_like(q)
                ms = time_graph_ms(lambda: paged_decode_attention(
                    q, kv_layer, lens, table, scale, num_splits=splits, out=out, config=c))
                self.row(op="decode", case=name, variant=f"splits={splits}",
                         timing="cuda_graph", config=str(c), bytes=nbytes, ms=round(ms, 4))
        if self.cuda:
            k, v = self.dense_kv(kv_layer, table, [ctx] * batch)
            q4 = q[:, :, None, :]                               # [B, Hq, 1, D]

            def sdpa():
                return F.scaled_dot_product_attention(q4, k, v, scale=scale, enable_gqa=True)

            self.row(op="decode", case=name, variant="torch_sdpa_dense", timing="eager",
                     bytes=nbytes, ms=round(time_ms(sdpa, self.cuda), 4))
            for flush in ("read", "write"):
                self.row(op="decode", case=name, variant="torch_sdpa_dense",
                         timing=graph_timing(flush), bytes=nbytes,
                         ms=round(time_graph_ms(sdpa, flush=flush), 4))
            del k, v
        return main["bw_frac"]

    # ---- prefill -----------------------------------------------------------------------------
    def prefill(self, name: str, batch: int, length: int) -> float:
        s = self.s
        kv_layer, table, lens = self.paged([length] * batch)
        q = self.rand(batch * length, s.num_q_heads, s.head_dim)
        qsl = torch.arange(0, batch * length + 1, length, dtype=torch.int32, device=self.device)
        scale = s.head_dim ** -0.5
        ref = paged_prefill_attention_ref(q, kv_layer, qsl, lens, table, scale, length)
        flops = 4 * batch * s.num_q_heads * s.head_dim * length * (length + 1) // 2

        def run(cfg=None):
            out = torch.full_like(q, float("nan"))
            paged_prefill_attention(q, kv_layer, qsl, lens, table, scale, length, out=out,
                                    config=cfg)
            err = rel_err(out, ref)
            assert err < 2e-2, f"prefill {name} cfg={cfg}: rel err {err:.2e}"
            ms = time_ms(lambda: paged_prefill_attention(q, kv_layer, qsl, lens, table, scale,
                                                         length, out=out, config=cfg),
                         self.cuda)
            return ms, err

        cfg = default_prefill_config(s.head_dim, self.dtype, q.device, length,
                                     s.num_q_heads // s.num_kv_heads, scale, s.block_size)
        ours, err = run()
        sdpa = None
        if self.cuda:
            k, v = self.dense_kv(kv_layer, table, [length] * batch)
            q4 = q.view(batch, length, s.num_q_heads, s.head_dim).transpose(1, 2).contiguous()
            sdpa = time_ms(lambda: F.scaled_dot_product_attention(
                q4, k, v, is_causal=True, scale=scale, enable_gqa=True), self.cuda)
            self.row(op="prefill", case=name, variant="torch_sdpa_dense", ms=round(sdpa, 4),
                     TFLOPs=round(flops / sdpa / 1e9, 1))
            del k, v
        self.row(op="prefill", case=name, variant="default", config=str(cfg),
                 rel_err=f"{err:.1e}", ms=round(ours, 4), TFLOPs=round(flops / ours / 1e9, 1),
                 speedup_vs_sdpa=round(sdpa / ours, 3) if sdpa else None)
        if self.variants:
            for c in prefill_variants(s, self.device, self.dtype):
                if c == cfg:
                    continue  # the default row above
                try:
                    ms, err = run(c)
                except Exception as e:  # noqa: BLE001 - one variant failing keeps the others
                    self.row(op="prefill", case=name, variant="config", config=str(c),
                             error=f"{type(e).__name__}: {e}"[:300])
                    continue
                self.row(op="prefill", case=name, variant="config", config=str(c),
                         rel_err=f"{err:.1e}", ms=round(ms, 4),
                         TFLOPs=round(flops / ms / 1e9, 1),
                         speedup_vs_sdpa=round(sdpa / ms, 3) if sdpa else None)
        if self.cuda:  # SDPA once more after the variants: its run-to-run spread (not the metric)
            k, v = self.dense_kv(kv_layer, table, [length] * batch)
            again = time_ms(lambda: F.scaled_dot_product_attention(
                q4, k, v, is_causal=True, scale=scale, enable_gqa=True), self.cuda)
            self.row(op="prefill", case=name, variant="torch_sdpa_dense_again",
                     ms=round(again, 4), TFLOPs=round(flops / again / 1e9, 1))
            del k, v
        return sdpa / ours if sdpa else float("nan")

    # ---- block pack / unpack -----------------------------------------------------------------
    def block_copy(self) -> tuple[float, float]:
        s = self.s
        kv = self.rand(s.pool_blocks, s.num_layers, 2, s.block_size, s.num_kv_heads, s.head_dim)
        ids = torch.randperm(s.pool_blocks, device=self.device)[:s.copy_blocks]
        nbytes = 2 * s.copy_blocks * kv[0].numel() * self.elem     # read + write
        out = torch.full((s.copy_blocks, *kv.shape[1:]), float("nan"), device=self.device,
                         dtype=self.dtype)
        configs = [None] + ([CopyConfig(1024, 4), CopyConfig(2048, 8), CopyConfig(4096, 4),
                             CopyConfig(1024, 2)] if self.variants else [])
        fracs = {}
        for cfg in configs:
            label = "default" if cfg is None else str(cfg)
            out.fill_(float("nan"))
            pack_blocks(kv, ids, out=out, config=cfg)
            assert torch.equal(out, pack_blocks_ref(kv, ids)), f"pack {label} wrong"
            ms = time_ms(lambda: pack_blocks(kv, ids, out=out, config=cfg), self.cuda)
            r = self.row(op="block_pack", variant=label, bytes=nbytes, ms=round(ms, 4))
            fracs.setdefault("pack", r["bw_frac"])
            src = self.rand(*out.shape)
            got, want = kv.clone(), kv.clone()
            unpack_blocks(got, ids, src, config=cfg)
            unpack_blocks_ref(want, ids, src)
            assert torch.equal(got, want), f"unpack {label} wrong"
            del got, want
            ms = time_ms(lambda: unpack_blocks(kv, ids, src, config=cfg), self.cuda)
            r = self.row(op="block_unpack", variant=label, bytes=nbytes, ms=round(ms, 4))
            fracs.setdefault("unpack", r["bw_frac"])
        ms = time_ms(lambda: torch.index_select(kv, 0, ids, out=out), self.cuda)
        self.row(op="block_pack", variant="torch_index_select", bytes=nbytes, ms=round(ms, 4))
        return fracs["pack"], fracs["unpack"]

    # ---- the small per-layer ops (rows only) -------------------------------------------------
    def small_ops(self, tokens: int) -> None:
        s = self.s
        hidden = s.num_q_heads * s.head_dim
        x, res, w = self.rand(tokens, hidden), self.rand(tokens, hidden), self.rand(hidden)
        out, new_res = rms_norm(x, w, 1e-5, res)
        ro, rr = rms_norm_ref(x, w, 1e-5, res)
        err = max(rel_err(out, ro), rel_err(new_res, rr))
        assert err < 1e-2, f"rms_norm rel err {err:.2e}"
        ms = time_ms(lambda: rms_norm(x, w, 1e-5, res), self.cuda)
        self.row(op="rms_norm_residual", tokens=tokens, rel_err=f"{err:.1e}",
                 bytes=5 * x.numel() * self.elem, ms=round(ms, 4))

        cache = build_cos_sin_cache(llama3_inv_freq(5e5, s.head_dim, 8.0, 1.0, 4.0, 8192),
                                    8192).to(self.device)
        q = self.rand(tokens, s.num_q_heads, s.head_dim)
        k = self.rand(tokens, s.num_kv_heads, s.head_dim)
        pos = torch.randint(0, 8192, (tokens,), device=self.device)
        rq, rk = apply_rotary_ref(q, k, pos, cache)
        gq, gk = apply_rotary(q.clone(), k.clone(), pos, cache)
        err = max(rel_err(gq, rq), rel_err(gk, rk))
        assert err < 1e-2, f"rotary rel err {err:.2e}"
        ms = time_ms(lambda: apply_rotary(q, k, pos, cache), self.cuda)
        self.row(op="rotary", tokens=tokens, rel_err=f"{err:.1e}",
                 bytes=2 * (q.numel() + k.numel()) * self.elem, ms=round(ms, 4))

        nb = math.ceil(tokens / s.block_size) + 4
        kvc = self.rand(nb, 2, 2, s.block_size, s.num_kv_heads, s.head_dim)
        slots = torch.randperm(nb * s.block_size, device=self.device)[:tokens]
        a, b = kvc.clone(), kvc.clone()
        write_kv(k, k, a[:, 0], slots)
        write_kv_ref(k, k, b[:, 0], slots)
        assert torch.equal(a, b), "write_kv wrong"
        ms = time_ms(lambda: write_kv(k, k, a[:, 0], slots), self.cuda)
        self.row(op="write_kv", tokens=tokens, bytes=4 * k.numel() * self.elem, ms=round(ms, 4))
