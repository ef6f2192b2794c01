"""Gemma 2 / Gemma 3 on tiny random models: our engine's logits equal Hugging Face
transformers' (the outside oracle) through the paged KV cache, from the HF directory and
from GGUF F32/F16/Q8_0 files; the GGUF files follow llama.cpp's conventions (checked
against llama.cpp's own numbers on them, recorded in tests/data/gemma_tiny_llamacpp.json).

The tiny configs exercise every feature: a sliding window of 8 (prompts are longer),
local and global layers, two RoPE bases and linear scaling (gemma3), q/k norms (gemma3),
attention and final-logit soft-capping (gemma2); `test_each_feature_changes_the_logits`
shows each one matters for these prompts.
"""

import json
import shutil

import attrs
import gguf
import pytest
import torch

from support.paths import DATA_DIR
from support.transformers_oracle import (
    TOLERANCE,
    LogitRecorder,
    assert_matches_transformers,
    engine_run,
    hf_model,
    random_prompts,
)
from triolm.engine.llm_engine import EngineConfig, LLMEngine
from triolm.engine.sampling_params import SamplingParams
from triolm.formats import gguf_layout as layout
from triolm.formats.gguf_reader import read_gguf
from triolm.formats.gguf_weights import read_gguf_for_engine
from triolm.formats.hf_config import read_hf_config
from triolm.formats.safetensors_loader import read_safetensors
from triolm.model.build import build_model
from triolm.model.config import FULL
from triolm.model.gemma import GemmaModel

ARCHS = ["gemma2", "gemma3"]
GGUF_TYPES = ("F32", "F16", "Q8_0")
LLAMA_CPP_TINY = json.loads((DATA_DIR / "gemma_tiny_llamacpp.json").read_text())


@pytest.fixture(scope="module")
def gemma(tiny_model):
    return lambda arch: tiny_model(arch, gguf_types=GGUF_TYPES)


def prompts_for(vocab):
    return random_prompts(vocab, (70, 41))


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_transformers_from_hf_directory(gemma, arch):
    paths = gemma(arch)
    config = read_hf_config(paths.hf_dir)
    assert config == paths.config
    model = build_model(config, read_safetensors(paths.hf_dir))
    assert isinstance(model, GemmaModel)
    assert_matches_transformers(model, hf_model(paths.hf_dir), config.vocab_size, arch)


@pytest.mark.parametrize("file_type", GGUF_TYPES)
@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_transformers_from_gguf(gemma, arch, file_type):
    """The reference runs transformers on the file's weights as read back (F16/Q8_0 are
    lossy); our engine keeps them compact (float16, Q8_0 blocks)."""
    paths = gemma(arch)
    path = paths.gguf_path(file_type)
    parsed, tensors = read_gguf_for_engine(path)
    assert parsed.config == paths.config
    model = build_model(parsed.config, tensors)
    expected_kind = {"F32": "dense", "F16": "f16", "Q8_0": "q8_0"}[file_type]
    assert model.weight_kinds() == {expected_kind: 4 * parsed.config.num_hidden_layers,
                                    "lm_head:" + expected_kind: 1}
    hf = hf_model(paths.hf_dir, read_gguf(path).tensors)
    assert_matches_transformers(model, hf, parsed.config.vocab_size, f"{arch} {file_type}")


@pytest.mark.parametrize("arch", ARCHS)
def test_gguf_stores_norms_plus_one_under_llama_cpp_names(gemma, arch):
    """llama.cpp's converter stores every gemma `*norm.weight` as w + 1 and names the four
    layer norms attn_norm / post_attention_norm / ffn_norm / post_ffw_norm."""
    paths = gemma(arch)
    hf = read_safetensors(paths.hf_dir)
    raw = {t.name: torch.from_numpy(t.data.copy()) for t in gguf.GGUFReader(paths.gguf_path("F32")).tensors}
    pairs = {"input_layernorm": "attn_norm", "post_attention_layernorm": "post_attention_norm",
             "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm"}
    if arch == "gemma3":
        pairs.update({"self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm"})
    for hf_name, gguf_name in pairs.items():
        stored = raw[f"blk.1.{gguf_name}.weight"].reshape(-1)
        assert torch.equal(stored, hf[f"model.layers.1.{hf_name}.weight"] + 1), gguf_name
    assert torch.equal(raw["output_norm.weight"].reshape(-1), hf["model.norm.weight"] + 1)
    assert "output.weight" not in raw  # the output matrix is the embedding
    # and reading gives HF's values back: the same (1 + w) multipliers
    read = read_gguf(paths.gguf_path("F32")).tensors
    for name in hf:
        if name.endswith("norm.weight"):
            assert torch.equal(1 + read[name], 1 + hf[name]), name


@pytest.mark.parametrize("arch", ARCHS)
def test_gguf_runs_as_in_llama_cpp(gemma, arch):
    """llama.cpp itself, run on our F32 file (recorded), predicts what we predict: so the
    names, +1 norms and metadata keys mean the same model to both."""
    ref = LLAMA_CPP_TINY[arch]
    parsed, tensors = read_gguf_for_engine(gemma(arch).gguf_path("F32"))
    model = build_model(parsed.config, tensors)
    (ours, tokens), = engine_run(model, [ref["prompt_ids"]], steps=15)
    assert tokens == ref["tokens"]
    logprobs = ours.log_softmax(-1)
    worst = max(abs(logprobs[step, token].item() - lp)
                for step, top in enumerate(ref["top5"]) for token, lp in top)
    assert worst < 0.01, f"max |logprob - llama.cpp's| {worst}"


def _mutations(config):
    """Configs that each drop one feature the tiny model exercises."""
    out = {"no sliding window": attrs.evolve(config, layer_types=(FULL,) * config.num_hidden_layers),
           "another attention scale": attrs.evolve(config, query_pre_attn_scalar=config.head_dim * 2.0)}
    if config.architecture == "gemma3":
        out["one RoPE base"] = attrs.evolve(config, rope_local_theta=config.rope_theta)
        out["no rope scaling"] = attrs.evolve(config, rope_scaling=None)
    else:
        out["no attention soft-cap"] = attrs.evolve(config, attn_logit_softcapping=None)
        out["no final soft-cap"] = attrs.evolve(config, final_logit_softcapping=None)
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_each_feature_changes_the_logits(gemma, arch):
    """Leaving out any one feature moves the logits far beyond TOLERANCE, so the
    comparisons above would catch an implementation without it."""
    paths = gemma(arch)
    weights = read_safetensors(paths.hf_dir)
    prompt = prompts_for(paths.config.vocab_size)[:1]
    (right, _), = engine_run(build_model(paths.config, weights), prompt, steps=0)
    for name, config in _mutations(paths.config).items():
        (wrong, _), = engine_run(build_model(config, weights), prompt, steps=0)
        assert (wrong - right).abs().max().item() > 100 * TOLERANCE, name


def test_prefix_cache_hit_keeps_the_window(gemma):
    """A prompt whose first blocks are already cached attends over cached slots with the
    same window as a cold prefill."""
    paths = gemma("gemma3")
    model = build_model(paths.config, read_safetensors(paths.hf_dir))
    prompt = prompts_for(paths.config.vocab_size)[0]
    engine = LLMEngine(model, (), EngineConfig(max_num_seqs=1, max_model_len=256))
    recorder = LogitRecorder(engine.runner)
    engine.runner = recorder
    engine.add_request("first", prompt[:64] + [5, 6, 7], SamplingParams(temperature=0, max_tokens=1))
    engine.add_request("second", prompt, SamplingParams(temperature=0, max_tokens=1))
    while engine.has_unfinished():
        engine.step()
    assert recorder.cached_at_prefill["second"] == 64
    second = [step["second"] for step in recorder.logits if "second" in step][0]
    with torch.no_grad():
        ref = hf_model(paths.hf_dir)(torch.tensor([prompt])).logits[0, -1]
    assert (second - ref).abs().max().item() <= TOLERANCE


def test_query_pre_attn_scalar_other_than_head_dim(gemma, tmp_path):
    """Gemma 2 27B scales attention by (hidden/heads)^-1/2, not head_dim's: config.json says so."""
    paths = gemma("gemma2")
    model_dir = tmp_path / "gemma2"
    shutil.copytree(paths.hf_dir, model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["query_pre_attn_scalar"] = 24
    (model_dir / "config.json").write_text(json.dumps(cfg))
    config = read_hf_config(model_dir)
    assert config.query_pre_attn_scalar == 24
    model = build_model(config, read_safetensors(model_dir))
    assert_matches_transformers(model, hf_model(model_dir), config.vocab_size, "gemma2 scalar 24")


def test_gemma_gguf_refuses_what_llama_cpp_cannot_express(gemma, tmp_path):
    from triolm.formats.gguf_writer import write_gguf

    paths = gemma("gemma3")
    weights = read_safetensors(paths.hf_dir)
    odd = attrs.evolve(paths.config, query_pre_attn_scalar=24.0)
    with pytest.raises(ValueError, match="query_pre_attn_scalar"):
        write_gguf(tmp_path / "x.gguf", odd, weights, file_type="F32")
    assert layout.gguf_name("model.layers.0.post_attention_layernorm.weight", "gemma3") == \
        "blk.0.post_attention_norm.weight"
    assert layout.gguf_name("model.layers.0.post_attention_layernorm.weight") == "blk.0.ffn_norm.weight"
