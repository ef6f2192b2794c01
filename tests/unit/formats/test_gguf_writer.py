"""write_gguf: llama.cpp's names, metadata keys and value types, per-tensor encodings
(1-D tensors F32, K-quant fallbacks, mixes), quantizer accuracy, refusals."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V

from support.model_factory import random_weights
from triolm.formats import gguf_layout as layout
from triolm.formats import gguf_quants
from triolm.formats.gguf_reader import read_gguf
from triolm.formats.gguf_writer import FILE_TYPES, tensor_type, write_gguf
from triolm.model.config import ModelConfig, RopeScaling

torch.set_num_threads(1)


def config_for(arch: str, **kw) -> ModelConfig:
    base = dict(architecture=arch, vocab_size=256, hidden_size=64, intermediate_size=128,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=500000.0,
                attention_bias=arch == "qwen2", qk_norm=arch == "qwen3")
    base.update(kw)
    return ModelConfig(**base)


def fields(path) -> dict[str, tuple[object, list]]:
    """key -> (value, GGUF value types) as gguf's own reader sees them."""
    r = gguf.GGUFReader(path)
    return {k: (f.contents(), f.types) for k, f in r.fields.items() if not k.startswith("GGUF.")}


def tensor_table(path) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {t.name: (t.tensor_type.name, tuple(int(d) for d in t.shape))
            for t in gguf.GGUFReader(path).tensors}


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3"])
def test_llama_cpp_tensor_names(tmp_path, arch):
    config = config_for(arch, tie_word_embeddings=arch == "qwen2")
    path = write_gguf(tmp_path / "m.gguf", config, random_weights(config, 0), {}, "F32", name="m")
    names = set(tensor_table(path))
    want = {"token_embd.weight", "output_norm.weight"}
    if arch != "qwen2":
        want.add("output.weight")
    for i in range(2):
        want |= {f"blk.{i}.{n}.weight" for n in (
            "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
            "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")}
        if arch == "qwen2":
            want |= {f"blk.{i}.attn_{n}.bias" for n in "qkv"}
        if arch == "qwen3":
            want |= {f"blk.{i}.attn_q_norm.weight", f"blk.{i}.attn_k_norm.weight"}
    assert names == want
    # ggml lists dims innermost first: (in_features, out_features)
    table = tensor_table(path)
    assert table["blk.0.ffn_down.weight"][1] == (128, 64)
    assert table["blk.0.attn_k.weight"][1] == (64, 32)


def test_llama_metadata_keys_and_types(tmp_path):
    config = config_for("llama", rope_scaling=RopeScaling("llama3", 8.0, 1.0, 4.0, 512),
                        bos_token_id=1, eos_token_ids=(2,))
    tok = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": [f"t{i}" for i in range(256)],
           "tokenizer.ggml.scores": [float(-i) for i in range(256)],
           "tokenizer.ggml.token_type": [1] * 256, "tokenizer.ggml.bos_token_id": 1,
           "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.add_bos_token": True,
           "tokenizer.chat_template": "{{ messages }}"}
    path = write_gguf(tmp_path / "m.gguf", config, random_weights(config, 0), tok, "Q8_0", name="tiny")
    f = fields(path)
    expect = {
        "general.architecture": ("llama", [V.STRING]),
        "general.name": ("tiny", [V.STRING]),
        "general.file_type": (int(gguf.LlamaFileType.MOSTLY_Q8_0), [V.UINT32]),
        "general.quantization_version": (2, [V.UINT32]),
        "llama.vocab_size": (256, [V.UINT32]),
        "llama.context_length": (4096, [V.UINT32]),
        "llama.embedding_length": (64, [V.UINT32]),
        "llama.block_count": (2, [V.UINT32]),
        "llama.feed_forward_length": (128, [V.UINT32]),
        "llama.attention.head_count": (4, [V.UINT32]),
        "llama.attention.head_count_kv": (2, [V.UINT32]),
        "llama.attention.key_length": (16, [V.UINT32]),
        "llama.attention.value_length": (16, [V.UINT32]),
        "llama.rope.dimension_count": (16, [V.UINT32]),
        "llama.rope.freq_base": (500000.0, [V.FLOAT32]),
        "tokenizer.ggml.model": ("llama", [V.STRING]),
        "tokenizer.ggml.bos_token_id": (1, [V.UINT32]),
        "tokenizer.ggml.eos_token_id": (2, [V.UINT32]),
        "tokenizer.ggml.add_bos_token": (True, [V.BOOL]),
        "tokenizer.chat_template": ("{{ messages }}", [V.STRING]),
    }
    for key, (value, types) in expect.items():
        assert f[key] == (value, types), key
    eps, eps_types = f["llama.attention.layer_norm_rms_epsilon"]
    assert eps_types == [V.FLOAT32] and eps == pytest.approx(1e-5)
    assert f["tokenizer.ggml.tokens"] == (tok["tokenizer.ggml.tokens"], [V.ARRAY, V.STRING])
    assert f["tokenizer.ggml.scores"][1] == [V.ARRAY, V.FLOAT32]
    assert f["tokenizer.ggml.token_type"][1] == [V.ARRAY, V.INT32]
    # llama3 rope scaling: llama.cpp has no metadata key for it, only the factors tensor;
    # a rope.scaling.* key would make llama.cpp apply (or assert on) another scaling.
    assert not any(".rope.scaling" in k for k in f)
    table = tensor_table(path)
    assert table["rope_freqs.weight"] == ("F32", (8,))
    want = layout.llama3_rope_factors(16, 500000.0, config.rope_scaling).numpy()
    got = next(np.array(t.data) for t in gguf.GGUFReader(path).tensors if t.name == "rope_freqs.weight")
    assert np.array_equal(got, want)
    assert read_gguf(path).config.rope_scaling == config.rope_scaling


def test_mistral_is_llama_arch_named_mistral(tmp_path):
    config = config_for("mistral")
    path = write_gguf(tmp_path / "m.gguf", config, random_weights(config, 0), {}, "F16", name="tiny")
    f = fields(path)
    assert f["general.architecture"][0] == "llama"
    assert "mistral" in f["general.name"][0].lower()
    assert read_gguf(path).config.architecture == "mistral"


@pytest.mark.parametrize("file_type", ["F16", "Q8_0", "Q4_0", "Q4_K", "Q6_K"])
def test_one_dimensional_tensors_stay_f32(tmp_path, file_type):
    config = config_for("qwen2")
    path = write_gguf(tmp_path / "m.gguf", config, random_weights(config, 0), {}, file_type, name="m")
    for name, (qtype, shape) in tensor_table(path).items():
        if len(shape) == 1:
            assert qtype == "F32", name


def test_k_quant_fallback_and_mixes(tmp_path):
    # rows of 64 cannot hold 256-value K blocks: llama-quantize's fallbacks apply
    small = config_for("llama")
    assert tensor_type(small, "model.layers.0.mlp.up_proj.weight", (128, 64), "Q4_K") == T.Q5_0
    assert tensor_type(small, "model.layers.0.mlp.up_proj.weight", (128, 64), "Q6_K") == T.Q8_0
    assert tensor_type(small, "model.layers.0.mlp.up_proj.weight", (128, 64), "Q2_K") == T.Q4_0
    assert tensor_type(small, "model.layers.0.mlp.down_proj.weight", (64, 128), "Q8_0") == T.Q8_0
    assert tensor_type(small, "model.layers.0.mlp.up_proj.weight", (128, 48), "Q8_0") == T.F16
    with pytest.raises(ValueError, match="cannot be stored as Q4_K"):
        tensor_type(small, "model.layers.0.mlp.up_proj.weight", (128, 64), "F16",
                    {"model.layers.0.mlp.up_proj.weight": "Q4_K"})

    config = config_for("llama", hidden_size=256, intermediate_size=512, head_dim=64)
    path = write_gguf(tmp_path / "m.gguf", config, random_weights(config, 0), {}, "Q4_K_M", name="m")
    table = tensor_table(path)
    assert table["blk.0.attn_q.weight"][0] == "Q4_K"
    assert table["blk.0.attn_v.weight"][0] == "Q6_K"
    assert table["blk.1.ffn_down.weight"][0] == "Q6_K"
    assert table["output.weight"][0] == "Q6_K"
    assert table["token_embd.weight"][0] == "Q4_K"
    assert fields(path)["general.file_type"][0] == int(gguf.LlamaFileType.MOSTLY_Q4_K_M)


# Relative RMS error ceilings for N(0,1) data. A b-bit uniform quantizer over a block's
# range has RMS error ~ step/sqrt(12) = range/(2^b·sqrt(12)); for Gaussian blocks of
# 16-32 values (range ~ 4-5 sigma) that is ~1.3·2^-b sigma, plus the cost of 4-8-bit
# sub-block scales. The ceilings leave ~1.5x headroom over that estimate.
_REL_RMS = {"Q8_0": 0.01, "Q6_K": 0.03, "Q5_K": 0.06, "Q5_0": 0.06, "Q5_1": 0.06,
            "Q4_K": 0.12, "Q4_0": 0.13, "Q4_1": 0.12, "Q3_K": 0.25, "Q2_K": 0.45}


@pytest.mark.parametrize("qtype", sorted(_REL_RMS))
def test_quantizers_decode_close_to_input(qtype):
    x = np.random.default_rng(1).standard_normal((16, 512)).astype(np.float32)
    blocks = gguf_quants.quantize(x, T[qtype])
    assert blocks.dtype == np.uint8
    assert blocks.shape == (16, gguf_quants.row_bytes(T[qtype], 512))
    y = gguf.quants.dequantize(blocks, T[qtype])  # the reference decoder (= ggml's)
    rel = np.sqrt(((y - x) ** 2).mean() / (x ** 2).mean())
    assert rel < _REL_RMS[qtype], rel
    assert rel > _REL_RMS[qtype] / 20  # and it really is lossy at about that level


def test_k_quantizers_handle_flat_and_zero_blocks():
    x = np.zeros((2, 256), dtype=np.float32)
    x[1] = 0.5  # constant block: a zero range
    for q in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"):
        y = gguf.quants.dequantize(gguf_quants.quantize(x, T[q]), T[q])
        assert np.isfinite(y).all(), q
        assert np.array_equal(y[0], x[0]), q
        assert np.abs(y[1] - 0.5).max() < 0.02, q


def test_permutation_round_trip_and_heads():
    w = torch.arange(4 * 16 * 3, dtype=torch.float32).reshape(64, 3)
    p = layout.permute_rows(w, 4)
    assert torch.equal(layout.unpermute_rows(p, 4), w)
    # head 0 rows become 0, 8, 1, 9, ... (first half interleaved with second half)
    assert p[:4, 0].tolist() == [0.0, 24.0, 3.0, 27.0]
    config = config_for("llama")
    assert layout.permuted_heads(config, "model.layers.0.self_attn.q_proj.weight") == 4
    assert layout.permuted_heads(config, "model.layers.0.self_attn.k_proj.weight") == 2
    assert layout.permuted_heads(config, "model.layers.0.self_attn.v_proj.weight") is None
    assert layout.permuted_heads(config_for("qwen2"), "model.layers.0.self_attn.q_proj.weight") is None


def test_refusals_leave_no_file(tmp_path):
    config = config_for("llama")
    weights = random_weights(config, 0)
    target = tmp_path / "m.gguf"
    with pytest.raises(ValueError, match="unknown file_type"):
        write_gguf(target, config, weights, {}, "Q9_9")
    with pytest.raises(ValueError, match="missing tensors: model.layers.1.mlp.up_proj.weight"):
        write_gguf(target, config, {k: v for k, v in weights.items() if "1.mlp.up" not in k}, {}, "F32")
    bad = dict(weights)
    bad["model.norm.weight"] = torch.ones(65)
    with pytest.raises(ValueError, match="model.norm.weight: shape"):
        write_gguf(target, config, bad, {}, "F32")
    qwen = config_for("qwen2", rope_scaling=RopeScaling())
    with pytest.raises(ValueError, match="no llama3 rope scaling"):
        write_gguf(target, qwen, random_weights(qwen, 0), {}, "F32")
    with pytest.raises(ValueError, match="tokenizer.weird"):
        write_gguf(target, config, weights, {"tokenizer.weird": object()}, "F32")
    assert list(tmp_path.iterdir()) == []


def test_every_file_type_reads_back(tmp_path):
    config = config_for("llama", hidden_size=256, intermediate_size=256, head_dim=64, vocab_size=64,
                        num_hidden_layers=1)
    weights = random_weights(config, 0)
    for ft in FILE_TYPES:
        model = read_gguf(write_gguf(tmp_path / f"{ft}.gguf", config, weights, {}, ft, name="m"))
        for name, w in weights.items():
            rel = float((model.tensors[name] - w).norm() / w.norm())
            assert rel < 0.45, (ft, name, rel)
            if ft == "F32":
                assert rel == 0.0


def test_tiny_model_tokenizer_metadata_round_trips(tiny_model_every_type):
    """The factory's GGUF carries the tokenizer: rebuilt from the file's metadata it
    tokenizes like the HF directory's tokenizer."""
    from triolm.tokenizers.gguf_vocab import tokenizer_from_gguf_metadata
    from triolm.tokenizers.hf import HFTokenizer

    paths = tiny_model_every_type("llama")
    meta = read_gguf(paths.gguf_path("Q8_0")).metadata
    from_gguf = tokenizer_from_gguf_metadata(meta)
    from_dir = HFTokenizer.from_dir(paths.hf_dir)
    text = "Hello world! Ünïcödé and 1234 tokens\n  spaced"
    assert from_gguf.encode(text) == from_dir.encode(text)
    assert meta["tokenizer.chat_template"] == from_dir.chat_template


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3", "llama3"])
def test_llama_cpp_computes_the_logits_transformers_does(tiny_model_every_type, arch):
    """The files are for llama.cpp too: loaded by llama-cpp-python, the F32 GGUF gives the
    logits transformers computes from the HF directory (names, permutation, biases,
    q/k norms, tied output and rope_freqs all have to be right for that)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    transformers = pytest.importorskip("transformers")
    paths = tiny_model_every_type(arch)
    ids = [1] + [(7919 * i) % 31000 + 100 for i in range(1, 40)]
    hf = transformers.AutoModelForCausalLM.from_pretrained(paths.hf_dir, dtype=torch.float32)
    with torch.no_grad():
        want = hf(torch.tensor([ids])).logits[0].numpy()
    got = _llama_cpp_logits(llama_cpp, paths.gguf_path("F32"), ids)
    # Measured: max |diff| ~1e-5 on logits of magnitude ~10 (an F16 KV cache: ~1e-2).
    # Skipping the Q/K permutation gives ~6, dropping rope_freqs ~2.
    assert np.abs(got - want).max() < 1e-4 * max(1.0, float(np.abs(want).max()))


def _llama_cpp_logits(llama_cpp, path, ids) -> np.ndarray:
    # No "extra buffer types": on CPUs that report Intel AMX inside a VM, llama.cpp's AMX
    # matmul for quantized weights segfaults (seen with llama-cpp-python 0.3.36 built
    # with GGML_NATIVE); the plain CPU kernels are what we want to compare against anyway.
    from llama_cpp import llama as llama_module

    default_params = llama_cpp.llama_model_default_params

    def params():
        p = default_params()
        p.use_extra_bufts = False
        return p

    llama_module.llama_cpp.llama_model_default_params = params
    try:
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_batch=64, logits_all=True,
                              verbose=False, n_threads=1,
                              type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    finally:
        llama_module.llama_cpp.llama_model_default_params = default_params
    llm.eval(ids)
    return np.asarray(llm.scores[:len(ids)]).copy()


def test_llama_cpp_decodes_our_quantized_blocks_as_we_do(tiny_model_every_type, tmp_path):
    """Each encoding we write, run by llama.cpp, gives the logits transformers computes
    from *our* dequantization of the same file. llama.cpp rounds activations to 8 bits
    for quantized matmuls: measured ~1-2% max relative difference; against the original
    (unquantized) weights the same files differ by 5% (Q6_K) to 80% (Q2_K), and a wrong
    block layout would decode to unrelated weights."""
    llama_cpp = pytest.importorskip("llama_cpp")
    transformers = pytest.importorskip("transformers")
    from support.model_factory import hf_config_dict

    meta = {k: v for k, v in read_gguf(tiny_model_every_type("llama").gguf_path("F32")).metadata.items()
            if k.startswith("tokenizer.")}
    config = config_for("llama", vocab_size=32000, hidden_size=256, intermediate_size=512, head_dim=64,
                        rope_theta=10000.0, bos_token_id=1, eos_token_ids=(2,))
    weights = random_weights(config, 3)
    hf_cfg = transformers.LlamaConfig(**{k: v for k, v in hf_config_dict(config, "llama").items()
                                         if k not in ("architectures", "model_type")})
    ids = [1] + [(7919 * i) % 31000 + 100 for i in range(1, 40)]
    model = transformers.LlamaForCausalLM(hf_cfg)
    big = {"token_embd.weight": "F16", "output.weight": "F16"}  # 32k rows: keep them quick
    for ft in ("Q4_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"):  # the K packers are ours
        path = write_gguf(tmp_path / f"{ft}.gguf", config, weights, meta, ft, name="k",
                          type_overrides=big)
        model.load_state_dict(read_gguf(path).tensors, strict=True)
        with torch.no_grad():
            want = model(torch.tensor([ids])).logits[0].numpy()
        got = _llama_cpp_logits(llama_cpp, path, ids)
        rel = float(np.abs(got - want).max() / np.abs(want).max())
        assert rel < 0.04, (ft, rel)
