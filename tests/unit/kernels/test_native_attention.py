"""The native paged decode attention equals a plain torch reference for every head size
it vectorizes (16, 32, 64, 128), one it does not (80: the scalar loop), every group size
up to 8 query heads per KV head, contexts that span several 256-position chunks, and
block tables whose blocks are scattered through the cache."""

from __future__ import annotations

import ctypes

import pytest
import torch

from triolm.kernels import native
from triolm.model.attention import _native_causal

pytestmark = pytest.mark.skipif(native._compiler() is None,
                                reason="no C++ compiler on this machine: the native kernels cannot exist here")


def _reference(q, k_cache, v_cache, tables, lens, block_size, kv_heads, scale):
    """Attention of each sequence's last query over its slots (no RoPE)."""
    out = []
    for b, length in enumerate(lens):
        pos = torch.arange(length)
        slots = tables[b][pos // block_size].long() * block_size + pos % block_size
        k = k_cache[slots]  # [L, KVH, D]
        v = v_cache[slots]
        qb = q[b].view(kv_heads, -1, k.shape[-1])  # [KVH, G, D]
        scores = torch.einsum("kgd,lkd->kgl", qb.double(), k.double()) * scale
        probs = scores.softmax(-1)
        out.append(torch.einsum("kgl,lkd->kgd", probs, v.double()).reshape(-1))
    return torch.stack(out).float()


@pytest.mark.parametrize("head_dim", [16, 32, 64, 128, 80])
@pytest.mark.parametrize("group", [1, 3, 4, 7, 8])
def test_decode_attention_matches_reference(head_dim, group):
    assert native.available(), "a C++ compiler is present but the native kernels did not build"
    g = torch.Generator().manual_seed(head_dim * 10 + group)
    kv_heads, block_size, num_blocks = 2, 16, 96
    heads = kv_heads * group
    lens = [1, 17, 300, 700]  # 700: three 256-position chunks merged
    # Scatter each sequence's blocks through the cache.
    perm = torch.randperm(num_blocks, generator=g).to(torch.int32)
    width = max(-(-n // block_size) for n in lens)
    tables, used = torch.zeros(len(lens), width, dtype=torch.int32), 0
    for b, n in enumerate(lens):
        nb = -(-n // block_size)
        tables[b, :nb] = perm[used:used + nb]
        used += nb
    slots = num_blocks * block_size
    k_cache = torch.randn(slots, kv_heads, head_dim, generator=g)
    v_cache = torch.randn(slots, kv_heads, head_dim, generator=g)
    q = torch.randn(len(lens), heads * head_dim, generator=g)
    k_new = torch.randn(len(lens), kv_heads * head_dim, generator=g)
    v_new = torch.randn(len(lens), kv_heads * head_dim, generator=g)
    seq_lens = torch.tensor(lens, dtype=torch.int32)
    out = torch.empty(len(lens), heads * head_dim)
    scale = head_dim ** -0.5
    dummy = torch.zeros(1)

    native.lib().tl_decode_attention(
        q.data_ptr(), q.stride(0), k_new.data_ptr(), k_new.stride(0), v_new.data_ptr(), v_new.stride(0),
        k_cache.data_ptr(), v_cache.data_ptr(), 0, tables.data_ptr(), width, seq_lens.data_ptr(),
        dummy.data_ptr(), dummy.data_ptr(), 0, out.data_ptr(), len(lens), heads, kv_heads, head_dim,
        block_size, ctypes.c_float(scale), 2)

    # The kernel wrote each new key/value into the sequence's last slot.
    for b, n in enumerate(lens):
        pos = n - 1
        slot = int(tables[b, pos // block_size]) * block_size + pos % block_size
        assert torch.equal(k_cache[slot].reshape(-1), k_new[b])
        assert torch.equal(v_cache[slot].reshape(-1), v_new[b])
    expected = _reference(q, k_cache, v_cache, tables, lens, block_size, kv_heads, scale)
    assert (out - expected).abs().max().item() <= 1e-5


def _causal_reference(q, k, v, scale):
    """Causal attention of one prompt in float64: q [n, H, D], k/v [n, KVH, D]."""
    group = q.shape[1] // k.shape[1]
    kk = k.double().repeat_interleave(group, 1)
    vv = v.double().repeat_interleave(group, 1)
    scores = torch.einsum("nhd,lhd->hnl", q.double(), kk) * scale
    n = q.shape[0]
    scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    return torch.einsum("hnl,lhd->nhd", scores.softmax(-1), vv).float()


@pytest.mark.parametrize("n", [1, 37, 64, 130])  # one token; one partial, one whole, three query blocks
@pytest.mark.parametrize(("heads", "kv_heads", "head_dim"), [(4, 2, 16), (9, 3, 64), (6, 6, 80)])
def test_prefill_attention_matches_causal_reference(n, heads, kv_heads, head_dim):
    """`tl_prefill_attention` on q/k/v laid out as the model's fused qkv rows (row stride
    larger than a head block), grouped-query heads, head sizes inside and outside the
    16-lane vectors."""
    assert native.available(), "a C++ compiler is present but the native kernels did not build"
    g = torch.Generator().manual_seed(n * 100 + heads)
    qkv = torch.randn(n, (heads + 2 * kv_heads) * head_dim, generator=g) * 2
    q = qkv[:, :heads * head_dim].view(n, heads, head_dim)
    k = qkv[:, heads * head_dim:(heads + kv_heads) * head_dim].view(n, kv_heads, head_dim)
    v = qkv[:, (heads + kv_heads) * head_dim:].view(n, kv_heads, head_dim)
    out = torch.full((n, heads, head_dim), float("nan"))
    scale = head_dim ** -0.5
    assert _native_causal(q, k, v, out, scale)
    torch.testing.assert_close(out, _causal_reference(q, k, v, scale), rtol=1e-5, atol=1e-5)
