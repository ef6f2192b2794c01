"""Paged attention with a sliding window and tanh soft-capping of the scores (Gemma).

Same cache layout and metadata as `attention.py`. A window of w lets the token at
position p see positions p-w+1 .. p (Hugging Face's and llama.cpp's convention).
Soft-capping replaces each score s by cap * tanh(s / cap) before the softmax, which
SDPA cannot do, so capped layers compute the scores explicitly (in float32).

A decode step of a windowed layer reads only the last w slots of each context, so
its cost does not grow with the context.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from triolm.model.attention import AttentionMetadata, as_stored, write_kv


def windowed_paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             cache_k: torch.Tensor, cache_v: torch.Tensor, meta: AttentionMetadata,
                             scale: float, window: int | None, softcap: float | None,
                             positions: torch.Tensor) -> torch.Tensor:
    """q: [T, H, D]; k, v: [T, KVH, D] for the step's tokens; positions: [T]. Returns [T, H, D]."""
    write_kv(cache_k, cache_v, k.to(cache_k.dtype), v.to(cache_v.dtype), meta.slot_mapping)
    if meta.is_prefill:
        return _prefill(q, k, v, cache_k, cache_v, meta, scale, window, softcap)
    return _decode(q, cache_k, cache_v, meta, scale, window, softcap, positions)


def _attend(qs: torch.Tensor, ks: torch.Tensor, vs: torch.Tensor, mask: torch.Tensor,
            scale: float, softcap: float | None) -> torch.Tensor:
    """qs [B, H, n, D], ks/vs [B, KVH, L, D], mask broadcastable to [B, H, n, L] (True = attend)."""
    ks, vs = ks.to(qs.dtype), vs.to(qs.dtype)
    if softcap is None:
        return F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=scale, enable_gqa=True)
    groups = qs.shape[1] // ks.shape[1]
    if groups > 1:
        ks = ks.repeat_interleave(groups, dim=1)
        vs = vs.repeat_interleave(groups, dim=1)
    scores = torch.matmul(qs, ks.transpose(-1, -2)) * scale
    scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(qs.dtype)
    return torch.matmul(probs, vs)


def _prefill(q, k, v, cache_k, cache_v, meta: AttentionMetadata, scale: float,
             window: int | None, softcap: float | None) -> torch.Tensor:
    out = torch.empty_like(q)
    for seq in meta.prefill_seqs:
        n = seq.end - seq.start
        qs = q[seq.start:seq.end].transpose(0, 1).unsqueeze(0)  # [1, H, n, D]
        ks, vs = as_stored(k[seq.start:seq.end], cache_k), as_stored(v[seq.start:seq.end], cache_v)
        if seq.num_cached > 0:
            # cached keys before this step's; the step's own come from k/v: in a
            # sliding-window pool the slots of early new positions may hold no block
            old = seq.context_slots[:seq.num_cached]
            ks = torch.cat([cache_k[old].to(q.dtype), ks])
            vs = torch.cat([cache_v[old].to(q.dtype), vs])
        ks, vs = ks.transpose(0, 1).unsqueeze(0), vs.transpose(0, 1).unsqueeze(0)  # [1, KVH, L, D]
        total = ks.shape[2]
        rows = torch.arange(n).unsqueeze(1) + seq.num_cached  # query positions
        cols = torch.arange(total).unsqueeze(0)  # key positions
        mask = cols <= rows
        if window is not None:
            mask &= cols > rows - window
        o = _attend(qs, ks, vs, mask, scale, softcap)
        out[seq.start:seq.end] = o.squeeze(0).transpose(0, 1)
    return out


def _decode(q, cache_k, cache_v, meta: AttentionMetadata, scale: float, window: int | None,
            softcap: float | None, positions: torch.Tensor) -> torch.Tensor:
    slots, mask = meta.decode_slots, meta.decode_mask  # [B, L], [B, 1, 1, L]
    if window is not None:
        first = max(0, int(positions.min()) - window + 1)  # no row sees a column before it
        slots, mask = slots[:, first:], mask[..., first:]
        cols = torch.arange(first, first + slots.shape[1])
        mask = mask & (cols > (positions - window).view(-1, 1, 1, 1))
    ks = cache_k[slots].transpose(1, 2)  # [B, KVH, L, D]
    vs = cache_v[slots].transpose(1, 2)
    o = _attend(q.unsqueeze(2), ks, vs, mask, scale, softcap)
    return o.squeeze(2)
