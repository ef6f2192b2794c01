"""Paged attention over a block KV cache, written with torch's SDPA.

The cache of one layer is a flat tensor of slots `[num_slots, kv_heads, head_dim]`
(slot = block * block_size + offset), in the model's dtype or a narrower one
(`--kv-cache-dtype float16`): values are rounded on write and widened on read. A step
writes its new keys/values into their slots, then each sequence attends over the slots its block table names.

This module is the torch path (prefill with a cached prefix, and everything when the
native kernels are not built). A prompt with no cached context runs natively
(`tl_prefill_attention`, kernels/prefill_attention.cpp: two float32 GEMMs per head and
block of queries, ~2x torch's CPU attention here). Native decode
(`tl_decode_attention` in kernels/triolm_kernels.cpp) walks the block tables in place
instead of gathering each context every layer.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F

from triolm.kernels import native


@attrs.define
class PrefillSeq:
    """One sequence's share of a prefill step: tokens [start, end) of the flat batch."""

    start: int
    end: int
    num_cached: int  # tokens of this sequence already in the cache (prefix hit)
    context_slots: torch.Tensor | None  # [num_cached + new] slots, needed only when num_cached > 0


@attrs.define
class AttentionMetadata:
    """Everything attention needs for one forward step, shared by all layers."""

    is_prefill: bool
    slot_mapping: torch.Tensor  # [T] where each new token's k/v goes
    prefill_seqs: list[PrefillSeq] = attrs.Factory(list)
    # decode: one token per sequence
    decode_slots: torch.Tensor | None = None  # [B, Lmax] slots of each context (padded)
    decode_mask: torch.Tensor | None = None  # [B, 1, 1, Lmax] True where attended
    # decode through the native kernel: the block tables themselves, no gathered slots
    block_tables: torch.Tensor | None = None  # [B, max_blocks] int32 (padded with 0)
    seq_lens: torch.Tensor | None = None  # [B] int32, context length including the new token
    block_size: int = 16
    # the sliding-window layers' own slots, when they have their own cache (window_blocks)
    window: AttentionMetadata | None = None


def write_kv(cache_k: torch.Tensor, cache_v: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    cache_k.index_copy_(0, slot_mapping, k.to(cache_k.dtype))
    cache_v.index_copy_(0, slot_mapping, v.to(cache_v.dtype))


def as_stored(x: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
    """x as the cache holds it. Attention always sees keys/values rounded to the cache's
    dtype, so a token's output does not depend on whether its context came from this
    step or from the cache (a prefix hit, a decode step)."""
    if cache.dtype == x.dtype:
        return x
    return x.to(cache.dtype).to(x.dtype)


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    cache_k: torch.Tensor, cache_v: torch.Tensor,
                    meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """q: [T, H, D]; k, v: [T, KVH, D] for the step's tokens. Returns [T, H, D]."""
    write_kv(cache_k, cache_v, k, v, meta.slot_mapping)
    if meta.is_prefill:
        return _prefill_attention(q, k, v, cache_k, cache_v, meta, scale)
    return _decode_attention(q, cache_k, cache_v, meta, scale)


def _prefill_attention(q, k, v, cache_k, cache_v, meta: AttentionMetadata, scale: float):
    out = torch.empty_like(q)
    for seq in meta.prefill_seqs:
        qs = q[seq.start:seq.end].transpose(0, 1).unsqueeze(0)  # [1, H, n, D]
        if seq.num_cached == 0 and _native_causal(q[seq.start:seq.end], as_stored(k[seq.start:seq.end], cache_k),
                                                  as_stored(v[seq.start:seq.end], cache_v), out[seq.start:seq.end],
                                                  scale):
            continue
        if seq.num_cached == 0:
            ks = as_stored(k[seq.start:seq.end], cache_k).transpose(0, 1).unsqueeze(0)
            vs = as_stored(v[seq.start:seq.end], cache_v).transpose(0, 1).unsqueeze(0)
            o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale,
                                               enable_gqa=True)
        else:
            ks = cache_k[seq.context_slots].to(q.dtype).transpose(0, 1).unsqueeze(0)  # [1, KVH, L, D]
            vs = cache_v[seq.context_slots].to(q.dtype).transpose(0, 1).unsqueeze(0)
            n, total = seq.end - seq.start, seq.context_slots.shape[0]
            rows = torch.arange(n).unsqueeze(1) + seq.num_cached
            mask = torch.arange(total).unsqueeze(0) <= rows  # causal with an offset
            o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=scale,
                                               enable_gqa=True)
        out[seq.start:seq.end] = o.squeeze(0).transpose(0, 1)
    return out


def _native_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, scale: float) -> bool:
    """Causal attention of one prompt into `out` [n, H, D] by the native kernel; False
    (nothing written) where it cannot run: no library or no AVX-512, other dtypes, or
    heads not laid out contiguously."""
    lib = native.lib()
    if lib is None or not all(t.dtype == torch.float32 and t.stride(2) == 1 and t.stride(1) == t.shape[2]
                              for t in (q, k, v, out)):
        return False
    n, heads, dim = q.shape
    return bool(lib.tl_prefill_attention(q.data_ptr(), q.stride(0), k.data_ptr(), k.stride(0), v.data_ptr(),
                                         v.stride(0), out.data_ptr(), out.stride(0), n, heads, k.shape[1], dim,
                                         scale, native.num_threads()))


def _decode_attention(q, cache_k, cache_v, meta: AttentionMetadata, scale: float):
    ks = cache_k[meta.decode_slots].to(q.dtype).transpose(1, 2)  # [B, KVH, L, D]
    vs = cache_v[meta.decode_slots].to(q.dtype).transpose(1, 2)
    qs = q.unsqueeze(2)  # [B, H, 1, D]
    o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=meta.decode_mask, scale=scale,
                                       enable_gqa=True)
    return o.squeeze(2)
