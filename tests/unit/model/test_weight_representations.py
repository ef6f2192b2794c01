"""Compact weight representations (GGUF F16 kept as float16, Q8_0 kept as int8 codes +
scales) and the native kernels give the same results as the dequantized float32 model.

Tolerance: these paths hold exactly the values the file stores and never round
activations (float16 -> float32 and code * scale are exact in float32; every product
and sum is float32). So the only difference from a float32 model built from the
dequantized weights is summation order — the same source of difference as between our
float32 forward pass and transformers' — and the same bound applies: 1e-4 on logits.
"""

import pytest
import torch
import torch.nn.functional as F

from support.engine_run import greedy_with_logits
from triolm.formats.gguf_reader import read_gguf
from triolm.formats.gguf_weights import read_gguf_for_engine
from triolm.kernels import native
from triolm.model import linear as lin
from triolm.model.llama import LlamaModel

TOLERANCE = 1e-4


@pytest.fixture
def no_native(monkeypatch):
    """Force the pure-torch paths (as on a machine without a compiler)."""
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_tried", True)


def _weight(rows, cols, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g) / cols ** 0.5


@pytest.mark.parametrize("rows", [1, 3, 4, 5, 8, 9, 16, 17, 20, 24, 40, 80])  # Q8_0: 24 expands first
@pytest.mark.parametrize("kind", ["f16", "q8_0"])
def test_linear_matches_dequantized_float32(kind, rows):
    cols = 96 if kind == "q8_0" else 72  # 72: a float16 row tail that is not a multiple of 16
    w = _weight(70, cols, 1)
    layer = lin.Float16Linear(w) if kind == "f16" else lin.Q8Linear.quantize(w)
    ref_w = layer.dense()
    x = torch.randn(rows, cols, generator=torch.Generator().manual_seed(2))
    expected = F.linear(x, ref_w)
    assert torch.allclose(layer(x), expected, atol=1e-5, rtol=1e-5)
    acc = torch.randn(rows, 70)
    start = acc.clone()
    layer(x, out=acc)
    assert torch.allclose(acc, start + expected, atol=1e-5, rtol=1e-5)


def test_q8_dense_equals_gguf_dequantization():
    """Our Q8_0 codes/scales decode to what the GGUF reference dequantizer gives."""
    from gguf import GGMLQuantizationType

    from triolm.formats import gguf_quants

    w = _weight(8, 64, 3)
    blocks = gguf_quants.quantize(w.numpy(), GGMLQuantizationType.Q8_0)
    layer = lin.Q8Linear.from_blocks(torch.from_numpy(blocks.view("uint8")).reshape(8, -1), 8, 64)
    ref = gguf_quants.dequantize(blocks, GGMLQuantizationType.Q8_0, 8, 64)
    assert torch.equal(layer.dense(), ref)


@pytest.mark.parametrize("file_type", ["F16", "Q8_0"])
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_compact_gguf_model_matches_dequantized_float32(tiny_model, arch, file_type):
    path = tiny_model(arch, gguf_types=("F32", "F16", "Q8_0")).gguf_path(file_type)
    gguf, tensors = read_gguf_for_engine(path)
    compact = LlamaModel(gguf.config, tensors)
    expected_kind = {"F16": "f16", "Q8_0": "q8_0"}[file_type]
    assert compact.weight_kinds().get(expected_kind) == 4 * gguf.config.num_hidden_layers
    reference = LlamaModel(gguf.config, read_gguf(path).tensors)  # every weight float32
    assert set(reference.weight_kinds()) == {"dense", "lm_head:dense"}
    assert compact.weights_bytes < reference.weights_bytes

    g = torch.Generator().manual_seed(7)
    prompts = [torch.randint(3, gguf.config.vocab_size, (n,), generator=g).tolist() for n in (70, 33, 5)]
    ours, our_tokens = greedy_with_logits(compact, prompts, 12)
    ref, ref_tokens = greedy_with_logits(reference, prompts, 12)
    assert (ours - ref).abs().max().item() <= TOLERANCE
    assert our_tokens == ref_tokens


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "llama3"])
def test_native_decode_matches_torch_path(tiny_model, arch, monkeypatch):
    """The native decode attention (RoPE + KV write + paged attention over block tables)
    equals the torch gather + SDPA path, for a batch of different lengths."""
    if native._compiler() is None:
        pytest.skip("no C++ compiler on this machine: the native kernels cannot exist here")
    assert native.available(), "a C++ compiler is present but the native kernels did not build"
    from triolm.formats.hf_config import read_hf_config
    from triolm.formats.safetensors_loader import read_safetensors

    paths = tiny_model(arch)
    model = LlamaModel(read_hf_config(paths.hf_dir), read_safetensors(paths.hf_dir))
    g = torch.Generator().manual_seed(11)
    # 600 tokens: the native kernel splits that context into chunks and merges them
    prompts = [torch.randint(3, model.config.vocab_size, (n,), generator=g).tolist() for n in (40, 600, 17, 64)]
    fast, fast_tokens = greedy_with_logits(model, prompts, 20)
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_tried", True)
    slow, slow_tokens = greedy_with_logits(model, prompts, 20)
    assert (fast - slow).abs().max().item() <= TOLERANCE
    assert fast_tokens == slow_tokens


def test_pure_torch_fallback_still_computes_compact_weights(tiny_model, no_native):
    path = tiny_model("llama", gguf_types=("F32", "F16", "Q8_0")).gguf_path("Q8_0")
    gguf, tensors = read_gguf_for_engine(path)
    model = LlamaModel(gguf.config, tensors)
    reference = LlamaModel(gguf.config, read_gguf(path).tensors)
    prompts = [[5, 6, 7, 8, 9, 10, 11, 12]]
    ours, _ = greedy_with_logits(model, prompts, 4)
    ref, _ = greedy_with_logits(reference, prompts, 4)
    assert (ours - ref).abs().max().item() <= TOLERANCE
