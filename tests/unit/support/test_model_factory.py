"""make_test_model: the HF directory transformers and triolm read, determinism,
caching, the sharded variant, the smollm-135m benchmark shape, informative weights."""

from __future__ import annotations

import json
import time

import pytest
import torch

from support.model_factory import ARCHS, make_test_model, model_config, random_weights
from triolm.formats.gguf_reader import read_gguf
from triolm.formats.hf_config import read_hf_config
from triolm.formats.safetensors_loader import read_safetensors

torch.set_num_threads(1)

HF_CLASS = {"llama": ("LlamaForCausalLM", "llama"), "mistral": ("MistralForCausalLM", "mistral"),
            "qwen2": ("Qwen2ForCausalLM", "qwen2"), "qwen3": ("Qwen3ForCausalLM", "qwen3"),
            "llama3": ("LlamaForCausalLM", "llama"), "gemma2": ("Gemma2ForCausalLM", "gemma2"),
            "gemma3": ("Gemma3ForCausalLM", "gemma3_text"),
            "mixtral": ("MixtralForCausalLM", "mixtral"), "qwen3_moe": ("Qwen3MoeForCausalLM", "qwen3_moe")}
VOCAB = {"llama": 32000, "mistral": 32768, "qwen2": 131072, "qwen3": 131072, "llama3": 131072,
         "gemma2": 32000, "gemma3": 32000, "mixtral": 32000, "qwen3_moe": 131072}
HF_CLASS.update(phi3=("Phi3ForCausalLM", "phi3"), granite=("GraniteForCausalLM", "granite"),
                smollm3=("SmolLM3ForCausalLM", "smollm3"))
VOCAB.update(phi3=32000, granite=131072, smollm3=131072)


@pytest.mark.parametrize("arch", ARCHS)
def test_hf_directory_contents(tiny_model_every_type, arch):
    paths = tiny_model_every_type(arch)
    d = paths.hf_dir
    cfg = json.loads((d / "config.json").read_text())
    assert (cfg["architectures"][0], cfg["model_type"]) == HF_CLASS[arch]
    assert cfg["vocab_size"] == VOCAB[arch] == paths.config.vocab_size
    assert read_hf_config(d) == paths.config
    gen = json.loads((d / "generation_config.json").read_text())
    assert gen["bos_token_id"] == paths.config.bos_token_id
    assert (d / "tokenizer.json").exists() and (d / "tokenizer_config.json").exists()
    tok_cfg = json.loads((d / "tokenizer_config.json").read_text())
    if arch == "mistral":
        assert (d / "tokenizer.model.v3").exists()  # for mistral-common
    else:
        assert "chat_template" in tok_cfg
    tensors = read_safetensors(d)
    assert all(t.dtype == torch.float32 for t in tensors.values())
    assert ("lm_head.weight" in tensors) == (not paths.config.tie_word_embeddings)
    assert set(paths.gguf) >= {"F32", "F16", "Q8_0", "Q4_0"}


def test_mistral_dir_loads_in_mistral_common(tiny_model_every_type):
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    paths = tiny_model_every_type("mistral")
    tok = MistralTokenizer.from_file(str(paths.hf_dir / "tokenizer.model.v3"))
    assert tok.instruct_tokenizer.tokenizer.n_words == paths.config.vocab_size


def test_weights_are_deterministic_per_seed():
    config = model_config("qwen3", "tiny", 512, 1, (2,))
    a, b, c = random_weights(config, 0), random_weights(config, 0), random_weights(config, 1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.layers.0.mlp.up_proj.weight"], c["model.layers.0.mlp.up_proj.weight"])


def test_cache_is_reused_and_extended(tmp_path):
    start = time.perf_counter()
    first = make_test_model(tmp_path, arch="llama", gguf_types=("F32",))
    build = time.perf_counter() - start
    stamp = first.gguf_path("F32").stat().st_mtime_ns
    start = time.perf_counter()
    again = make_test_model(tmp_path, arch="llama", gguf_types=("F32",))
    assert time.perf_counter() - start < max(0.5, build / 2)
    assert again == first and again.gguf_path("F32").stat().st_mtime_ns == stamp
    more = make_test_model(tmp_path, arch="llama", gguf_types=("F32", "Q4_K_M"), sharded=True)
    assert more.gguf_path("F32") == first.gguf_path("F32")
    assert more.gguf_path("F32").stat().st_mtime_ns == stamp
    assert more.gguf_path("Q4_K_M").exists()
    with pytest.raises(KeyError, match="no Q6_K GGUF"):
        first.gguf_path("Q6_K")
    # a different seed is a different model
    other = make_test_model(tmp_path, arch="llama", seed=1, gguf_types=())
    assert other.root != first.root
    st0, st1 = read_safetensors(first.hf_dir), read_safetensors(other.hf_dir)
    assert not torch.equal(st0["model.norm.weight"], st1["model.norm.weight"])
    # the sharded variant holds the same tensors, indexed
    sdir = more.hf_sharded_dir
    index = json.loads((sdir / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 2
    assert not (sdir / "model.safetensors").exists()
    sharded = read_safetensors(sdir)
    assert set(sharded) == set(st0) and all(torch.equal(sharded[k], st0[k]) for k in st0)
    assert read_hf_config(sdir) == first.config


def test_unknown_arch_and_size(tmp_path):
    with pytest.raises(ValueError, match="unknown arch"):
        make_test_model(tmp_path, arch="gpt2")
    with pytest.raises(ValueError, match="use arch='llama'"):
        make_test_model(tmp_path, arch="qwen2", size="smollm-135m")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="unknown size"):
        model_config("llama", "huge", 32000, 1, (2,))
    with pytest.raises(ValueError, match="use arch='llama'"):
        model_config("qwen2", "smollm-135m", 32000, 1, (2,))


def test_smollm_135m_shape():
    c = model_config("llama", "smollm-135m", 32000, 1, (2,))
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads,
            c.intermediate_size, c.head_dim, c.vocab_size, c.max_position_embeddings) == (
        576, 30, 9, 3, 1536, 64, 32000, 2048)
    assert c.tie_word_embeddings and c.architecture == "llama"
    from triolm.formats.gguf_layout import expected_shapes

    n = sum(torch.Size(s).numel() for s in expected_shapes(c).values())
    assert 120e6 < n < 130e6  # SmolLM-135M's layers with a 32k (not 49k) vocabulary


def test_transformers_reads_the_directory_and_logits_are_informative(tiny_model_every_type):
    """transformers loads the directory as the named class, and the random weights give
    peaked, context-dependent next-token distributions (so wrong math is visible)."""
    transformers = pytest.importorskip("transformers")
    paths = tiny_model_every_type("llama")
    model = transformers.AutoModelForCausalLM.from_pretrained(paths.hf_dir, dtype=torch.float32)
    assert type(model).__name__ == "LlamaForCausalLM"
    ids = torch.tensor([[1, 450, 4996, 17354, 1701, 432, 17204, 975]])
    with torch.no_grad():
        logits = model(ids).logits[0]
        other = model(torch.tensor([[1, 3444, 4996, 17354, 1701, 432, 17204, 975]])).logits[0]
    assert float(logits.std(dim=-1).mean()) > 1.0
    top = logits.softmax(-1).max(-1).values
    assert float(top.mean()) > 20 / paths.config.vocab_size  # far from uniform
    # changing the 2nd token changes the last position's prediction: attention matters
    assert float((logits[-1] - other[-1]).abs().max()) > 0.1


def test_gguf_config_matches_for_every_built_type(tiny_model_every_type):
    paths = tiny_model_every_type("qwen3")
    for ft, path in paths.gguf.items():
        assert read_gguf(path).config == paths.config, ft
