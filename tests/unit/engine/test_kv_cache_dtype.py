"""A float16 KV cache (`--kv-cache-dtype float16`): half the memory, logits close to a
float32 cache on every path that writes or reads it (prefill, native decode, torch
decode), and the flag works end to end on a real server.

Tolerances. Each cached key/value is rounded to float16 once, a relative error of at
most 2^-11 (11 significant bits). Attention outputs are convex combinations of values
and scores are dot products with keys, so every layer's output moves by about that
relative amount; through L layers and the residual stream the logits move by a small
multiple of L * 2^-11 of their scale. KV_TOLERANCE allows 4 * L * 2^-11 * max|logit|
(a factor 2 of margin over 2 * L); the tiny models measure ~10x below it. Where both
sides read the same float16 cache, the only difference is summation order plus RoPE's:
native and torch rotate a key in different order, and a one-ulp float32 difference
can round that key to the neighbouring float16 — a step of 2^-11 in one element.
SAME_CACHE_TOLERANCE is 1e-3 for that (measured: 1.3e-4).
"""

from __future__ import annotations

import ctypes

import httpx
import pytest
import torch

from support.forced_decode import forced_logits
from support.server_thread import ServerThread
from triolm.cli import build_parser, settings_from_args
from triolm.engine.llm_engine import EngineConfig, LLMEngine
from triolm.engine.sampling_params import SamplingParams
from triolm.engine.sequence import Sequence
from triolm.formats.hf_config import read_hf_config
from triolm.formats.safetensors_loader import read_safetensors
from triolm.kernels import native
from triolm.model.llama import LlamaModel
from triolm.settings import ServerSettings

SAME_CACHE_TOLERANCE = 1e-3
needs_compiler = pytest.mark.skipif(native._compiler() is None,
                                    reason="no C++ compiler on this machine: the native kernels cannot exist here")


def kv_tolerance(model: LlamaModel, reference: torch.Tensor) -> float:
    return 4 * model.config.num_hidden_layers * 2.0 ** -11 * reference.abs().max().item()


@pytest.fixture
def no_native(monkeypatch):
    """Force the pure-torch paths (as on a machine without a compiler)."""
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_tried", True)


def _model(tiny_model, arch: str) -> LlamaModel:
    paths = tiny_model(arch)
    return LlamaModel(read_hf_config(paths.hf_dir), read_safetensors(paths.hf_dir))


def _inputs(model: LlamaModel, seed: int = 3):
    """Prompts of several lengths (300: more than one 256-position attention chunk) and
    a forced continuation each."""
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    prompts = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in (40, 300, 17)]
    conts = [torch.randint(3, vocab, (24,), generator=g).tolist() for _ in prompts]
    return prompts, conts


def _logits(model: LlamaModel, dtype: str, prompts, conts) -> torch.Tensor:
    engine = LLMEngine(model, (), EngineConfig(max_num_seqs=4, max_model_len=1024, kv_cache_dtype=dtype))
    assert engine.runner.kv_cache.dtype == getattr(torch, dtype)
    return torch.stack(forced_logits(engine, prompts, conts))  # [seqs, 1 + steps, vocab]


# --------------------------------------------------------------------- the kernel

@needs_compiler
@pytest.mark.parametrize("head_dim", [16, 64, 128, 80])  # 80: the scalar (unvectorized) loop
@pytest.mark.parametrize("group", [1, 3, 8])
def test_native_decode_attention_reads_and_writes_float16_cache(head_dim, group):
    """The kernel stores the new key/value rounded exactly as torch rounds to float16 and
    attends over the float16 entries as their float32 values (up to summation order)."""
    assert native.available(), "a C++ compiler is present but the native kernels did not build"
    g = torch.Generator().manual_seed(head_dim + group)
    kv_heads, block_size, num_blocks = 2, 16, 64
    heads = kv_heads * group
    lens = [1, 29, 300, 520]
    perm = torch.randperm(num_blocks, generator=g).to(torch.int32)
    width = max(-(-n // block_size) for n in lens)
    tables, used = torch.zeros(len(lens), width, dtype=torch.int32), 0
    for b, n in enumerate(lens):
        nb = -(-n // block_size)
        tables[b, :nb] = perm[used:used + nb]
        used += nb
    slots = num_blocks * block_size
    k_cache = torch.randn(slots, kv_heads, head_dim, generator=g).half()
    v_cache = torch.randn(slots, kv_heads, head_dim, generator=g).half()
    q = torch.randn(len(lens), heads * head_dim, generator=g)
    k_new = torch.randn(len(lens), kv_heads * head_dim, generator=g)
    v_new = torch.randn(len(lens), kv_heads * head_dim, generator=g)
    out = torch.empty(len(lens), heads * head_dim)
    scale = head_dim ** -0.5
    dummy = torch.zeros(1)
    seq_lens = torch.tensor(lens, dtype=torch.int32)
    native.lib().tl_decode_attention(
        q.data_ptr(), q.stride(0), k_new.data_ptr(), k_new.stride(0), v_new.data_ptr(), v_new.stride(0),
        k_cache.data_ptr(), v_cache.data_ptr(), native.KV_KINDS[torch.float16], tables.data_ptr(), width,
        seq_lens.data_ptr(), dummy.data_ptr(), dummy.data_ptr(), 0,
        out.data_ptr(), len(lens), heads, kv_heads, head_dim, block_size, ctypes.c_float(scale), 2)

    for b, n in enumerate(lens):
        slot = int(tables[b, (n - 1) // block_size]) * block_size + (n - 1) % block_size
        assert torch.equal(k_cache[slot].reshape(-1), k_new[b].half())
        assert torch.equal(v_cache[slot].reshape(-1), v_new[b].half())
    expected = []
    for b, n in enumerate(lens):
        pos = torch.arange(n)
        idx = tables[b][pos // block_size].long() * block_size + pos % block_size
        k, v = k_cache[idx].double(), v_cache[idx].double()  # [L, KVH, D]
        qb = q[b].view(kv_heads, group, head_dim).double()
        probs = (torch.einsum("kgd,lkd->kgl", qb, k) * scale).softmax(-1)
        expected.append(torch.einsum("kgl,lkd->kgd", probs, v).reshape(-1))
    assert (out - torch.stack(expected).float()).abs().max().item() <= 1e-5


# ------------------------------------------------------------ the model's paths

@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_float16_cache_logits_close_to_float32_native_path(tiny_model, arch):
    """Prefill (torch, writes the cache) and native decode (reads and writes it)."""
    if native._compiler() is not None:
        assert native.available()
    model = _model(tiny_model, arch)
    prompts, conts = _inputs(model)
    ref = _logits(model, "float32", prompts, conts)
    half = _logits(model, "float16", prompts, conts)
    tol = kv_tolerance(model, ref)
    prefill_diff = (half[:, 0] - ref[:, 0]).abs().max().item()
    decode_diff = (half[:, 1:] - ref[:, 1:]).abs().max().item()
    assert 0 < prefill_diff <= tol  # > 0: the cache really holds float16
    assert 0 < decode_diff <= tol


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_float16_cache_logits_close_to_float32_torch_path(tiny_model, arch, no_native):
    model = _model(tiny_model, arch)
    assert not model.native_decode
    prompts, conts = _inputs(model)
    ref = _logits(model, "float32", prompts, conts)
    half = _logits(model, "float16", prompts, conts)
    tol = kv_tolerance(model, ref)
    assert 0 < (half[:, 0] - ref[:, 0]).abs().max().item() <= tol
    assert 0 < (half[:, 1:] - ref[:, 1:]).abs().max().item() <= tol


@needs_compiler
def test_native_and_torch_decode_agree_on_a_float16_cache(tiny_model, monkeypatch):
    model = _model(tiny_model, "llama")
    prompts, conts = _inputs(model, seed=5)
    fast = _logits(model, "float16", prompts, conts)
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_tried", True)
    slow = _logits(model, "float16", prompts, conts)
    assert (fast - slow).abs().max().item() <= SAME_CACHE_TOLERANCE


def test_prefix_hit_sees_the_same_float16_values_as_a_fresh_prefill(tiny_model):
    """A prompt's logits do not depend on whether its prefix came from the cache: a
    fresh prefill attends over its keys/values rounded as the cache stores them."""
    model = _model(tiny_model, "llama")
    engine = LLMEngine(model, (), EngineConfig(max_num_seqs=2, max_model_len=1024, kv_cache_dtype="float16"))
    g = torch.Generator().manual_seed(9)
    prompt = torch.randint(3, model.config.vocab_size, (70,), generator=g).tolist()
    cont = torch.randint(3, model.config.vocab_size, (4,), generator=g).tolist()
    fresh = forced_logits(engine, [prompt], [cont])[0]
    probe = Sequence("probe", prompt, SamplingParams())
    assert engine.block_manager.can_allocate(probe)
    engine.block_manager.allocate(probe)
    assert probe.num_cached_tokens == 64  # the second run takes 64 of 70 tokens from the cache
    engine.block_manager.deallocate(probe)
    cached = forced_logits(engine, [prompt], [cont])[0]
    assert (fresh - cached).abs().max().item() <= 1e-4


# ---------------------------------------------------------------------- memory

def test_float16_cache_halves_memory_for_the_same_blocks(tiny_model):
    model = _model(tiny_model, "llama")
    config = dict(max_num_seqs=4, max_model_len=512)  # the budget is ample: blocks fixed by the request
    full = LLMEngine(model, (), EngineConfig(**config, kv_cache_dtype="float32"))
    half = LLMEngine(model, (), EngineConfig(**config, kv_cache_dtype="float16"))
    assert half.block_manager.num_blocks == full.block_manager.num_blocks
    assert half.runner.kv_cache.shape == full.runner.kv_cache.shape
    assert half.runner.kv_cache.dtype == torch.float16
    assert half.runner.kv_cache_bytes * 2 == full.runner.kv_cache_bytes


def test_float16_cache_holds_twice_the_blocks_in_a_fixed_budget(tiny_model):
    model = _model(tiny_model, "llama")
    c = model.config
    per_block_f32 = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 4 * 16
    config = dict(max_num_seqs=16, max_model_len=1024, block_size=16, kv_cache_bytes=per_block_f32 * 100)
    full = LLMEngine(model, (), EngineConfig(**config, kv_cache_dtype="float32"))
    half = LLMEngine(model, (), EngineConfig(**config, kv_cache_dtype="float16"))
    assert full.block_manager.num_blocks == 100
    assert half.block_manager.num_blocks == 200
    assert half.runner.kv_cache_bytes == full.runner.kv_cache_bytes == per_block_f32 * 100


def test_default_cache_dtype_follows_the_model_dtype(tiny_model):
    model = _model(tiny_model, "llama")
    engine = LLMEngine(model, (), EngineConfig(max_num_seqs=1, max_model_len=64))
    assert engine.runner.kv_cache.dtype == torch.float32


def test_unknown_cache_dtype_is_refused():
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        ServerSettings(kv_cache_dtype="int8")
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        ServerSettings.from_env({"TRIOLM_KV_CACHE_DTYPE": "bfloat16"})
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--kv-cache-dtype", "int8"])


# ------------------------------------------------------------------- end to end

def test_server_with_float16_kv_cache_flag_generates(served_model, base_settings):
    """`--kv-cache-dtype float16` reaches the engine of a real server, whose greedy
    completion matches a float32-cache server's tokens with logprobs within tolerance."""
    args = build_parser().parse_args(["serve", served_model.path, "--kv-cache-dtype", "float16",
                                      "--max-num-seqs", "4"])
    settings = settings_from_args(args)
    assert settings.kv_cache_dtype == "float16"
    body = {"model": served_model.name, "prompt": "The quick brown fox jumps over the lazy dog. " * 20,
            "max_tokens": 16, "temperature": 0, "logprobs": 1}
    outs = {}
    for name, s in (("float16", settings), ("float32", base_settings)):
        with ServerThread(s, served_model) as srv:
            assert srv.state.serving().driver.engine.runner.kv_cache.dtype == getattr(torch, name)
            r = httpx.post(srv.base_url + "/v1/completions", json=body, timeout=60)
            assert r.status_code == 200, r.text
            outs[name] = r.json()["choices"][0]
    half, full = outs["float16"], outs["float32"]
    assert half["finish_reason"] == "length"
    assert half["logprobs"]["tokens"] == full["logprobs"]["tokens"]
    diffs = [abs(a - b) for a, b in zip(half["logprobs"]["token_logprobs"], full["logprobs"]["token_logprobs"], strict=False)]
    assert len(diffs) == 16 and max(diffs) <= 0.05
