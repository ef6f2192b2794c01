"""Every family's decode step is one native call for all layers (FAMILY-9,
contracts/model-families.md): it computes what the per-layer torch path computes, and no
layer of a decode step runs in Python, so the step's Python cost does not grow with the
layer count or (MoE) the expert count.

The transformers comparisons of each family (test_model_families.py, test_moe.py,
test_gemma.py, test_engine_vs_transformers.py) run through this same native step."""

import pytest
import torch

from support.engine_run import greedy_with_logits
from triolm.formats.hf_config import read_hf_config
from triolm.formats.safetensors_loader import read_safetensors
from triolm.kernels import native
from triolm.model.build import build_model
from triolm.model.gemma import GemmaLayer, GemmaModel
from triolm.model.llama import DecoderLayer

FAMILIES = ("llama", "qwen2", "qwen3", "phi3", "granite", "smollm3", "mixtral", "qwen3_moe", "gemma2", "gemma3")
TOLERANCE = 1e-4  # float32 both ways; differences come only from summation order


@pytest.fixture(autouse=True)
def kernels_built():
    if native._compiler() is None:
        pytest.skip("no C++ compiler on this machine: the native kernels cannot exist here")
    assert native.available(), "a C++ compiler is present but the native kernels did not build"


def family_model(tiny_model, arch):
    paths = tiny_model(arch)
    return build_model(read_hf_config(paths.hf_dir), read_safetensors(paths.hf_dir))


def prompts_for(vocab, lengths=(70, 23, 41)):
    gen = torch.Generator().manual_seed(3)
    return [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in lengths]


@pytest.mark.parametrize("arch", FAMILIES)
def test_family_9_native_step_equals_the_torch_path(tiny_model, arch, monkeypatch):
    """Three sequences of different lengths decoded together for 16 steps through the
    paged KV cache: the native step's logits and greedy tokens are the torch path's."""
    model = family_model(tiny_model, arch)
    assert model.native_decode
    prompts = prompts_for(model.config.vocab_size)
    fast, fast_tokens = greedy_with_logits(model, prompts, 17)
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_tried", True)
    assert not model.native_decode
    slow, slow_tokens = greedy_with_logits(model, prompts, 17)
    assert (fast - slow).abs().max().item() <= TOLERANCE
    assert fast_tokens == slow_tokens


@pytest.mark.parametrize("arch", FAMILIES)
def test_family_9_decode_step_is_one_native_call(tiny_model, arch, monkeypatch):
    """One prefill step runs each layer once in Python; each of the four decode steps
    after it is exactly one native call and runs no layer in Python."""
    model = family_model(tiny_model, arch)
    gemma = isinstance(model, GemmaModel)
    step_name = "tl_gemma_decode_step" if gemma else "tl_decode_step"
    layer_class = GemmaLayer if gemma else DecoderLayer
    lib = native.lib()
    step, forward = getattr(lib, step_name), layer_class.forward
    calls = {"native steps": 0, "python layers": 0}

    def counting_step(*args):
        calls["native steps"] += 1
        return step(*args)

    def counting_forward(self, *args):
        calls["python layers"] += 1
        return forward(self, *args)

    monkeypatch.setattr(lib, step_name, counting_step)
    monkeypatch.setattr(layer_class, "forward", counting_forward)
    greedy_with_logits(model, prompts_for(model.config.vocab_size, (30, 12)), 5)
    assert calls == {"native steps": 4, "python layers": model.config.num_hidden_layers}


def test_family_9_plan_slots_are_taken_by_name():
    """A plan is packed by the slot names decode_plan.h gives: one missing or unknown
    fails, so the Python side cannot drift from the C++ layout unnoticed."""
    layout = native.DECODE_PLAN
    header, row = dict.fromkeys(layout.header, 7), dict.fromkeys(layout.row, 1)
    plan = layout.pack(header, [row, row])
    assert plan.dtype == torch.int64 and plan.tolist() == [7] * len(header) + [1] * 2 * len(row)
    assert {"rotate", "moe", "qkv_bias", "k_cache"} <= set(layout.row)
    with pytest.raises(ValueError, match="rotate"):
        layout.pack(header, [{k: v for k, v in row.items() if k != "rotate"}])
    with pytest.raises(ValueError, match="window"):
        layout.pack({**header, "window": 4}, [])
