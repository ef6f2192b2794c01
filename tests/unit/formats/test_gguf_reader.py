"""read_gguf: exact round trips against the safetensors weights, quantization bounds,
config from metadata, an outside oracle for the Q/K de-permutation, every failure mode."""

from __future__ import annotations

import time

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T

from support.model_factory import ARCHS, random_weights
from triolm.errors import ModelLoadError
from triolm.formats import gguf_layout as layout
from triolm.formats import gguf_quants
from triolm.formats.gguf_reader import read_gguf
from triolm.formats.gguf_writer import write_gguf
from triolm.formats.hf_config import read_hf_config
from triolm.formats.safetensors_loader import read_safetensors
from triolm.model.config import ModelConfig, RopeScaling

torch.set_num_threads(1)


def small_config(arch: str = "llama", **kw) -> ModelConfig:
    base = dict(architecture=arch, vocab_size=256, hidden_size=64, intermediate_size=128,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                max_position_embeddings=512, rms_norm_eps=1e-5,
                attention_bias=arch == "qwen2", qk_norm=arch == "qwen3")
    base.update(kw)
    return ModelConfig(**base)


def write_small(tmp_path, config=None, file_type="F32", name="m.gguf", extra_metadata=None, **kw):
    config = config or small_config()
    weights = random_weights(config, seed=1)
    path = write_gguf(tmp_path / name, config, weights, extra_metadata or {}, file_type, name="test", **kw)
    return path, config, weights


# ------------------------------------------------------------------ exact round trips


@pytest.mark.parametrize("arch", ARCHS)
def test_f32_gguf_equals_safetensors_exactly(tiny_model_every_type, arch):
    paths = tiny_model_every_type(arch)
    st = read_safetensors(paths.hf_dir)
    model = read_gguf(paths.gguf_path("F32"))
    assert set(model.tensors) == set(st)
    for name, want in st.items():
        if layout.norm_offset(paths.config, name):
            # gemma's file holds fl(w + 1): exact is the (1 + w) the model multiplies by
            assert torch.equal(1 + model.tensors[name], 1 + want), name
        else:
            assert torch.equal(model.tensors[name], want), name
        assert model.tensor_types[name] == "F32"


@pytest.mark.parametrize("arch", ARCHS)
def test_config_from_metadata_equals_hf_config(tiny_model_every_type, arch):
    paths = tiny_model_every_type(arch)
    model = read_gguf(paths.gguf_path("F32"))
    assert model.config == read_hf_config(paths.hf_dir)
    assert model.config == paths.config
    # the features each arch exercises really are on
    c = model.config
    if arch in ("qwen2", "llama3"):
        assert c.tie_word_embeddings and "lm_head.weight" not in model.tensors
    if arch == "qwen2":
        assert c.attention_bias
    if arch == "qwen3":
        assert c.qk_norm and c.head_dim == 32 != c.hidden_size // c.num_attention_heads
    if arch == "llama3":
        assert c.rope_scaling == RopeScaling("llama3", 8.0, 1.0, 4.0, 256)
    if arch == "mistral":
        assert c.architecture == "mistral" and model.metadata["general.architecture"] == "llama"


def _block_bound(x: torch.Tensor, qtype: str) -> torch.Tensor:
    """Largest error the encoding may make on each element of x (rows of 32-blocks).

    F16: round-to-nearest, relative error <= 2^-11 (plus 2^-25 absolute near subnormals).
    Q8_0: d = amax/127, q = round(x/d): |x - q·d| <= d/2; d is then stored as float16
          (relative error <= 2^-11) and |q| <= 127, adding <= 127·d·2^-11.
    Q4_0: d = signed max/-8, q = trunc(x/d + 8.5) clipped to [0, 15]: half a step from
          rounding, but the value opposite the max would need q = 16 and is clipped to
          15, a full step |d|; the float16 d adds <= 8·|d|·2^-11."""
    if qtype == "F16":
        return x.abs() * 2.0 ** -11 + 2.0 ** -25
    blocks = x.reshape(-1, 32)
    amax = blocks.abs().amax(dim=1, keepdim=True)
    if qtype == "Q8_0":
        d = amax / 127
        bound = d * (0.5 + 127 * 2.0 ** -11)
    elif qtype == "Q4_0":
        d = amax / 8
        bound = d * (1.0 + 8 * 2.0 ** -11)
    else:
        raise AssertionError(qtype)
    return (bound * 1.0001 + 1e-12).expand_as(blocks).reshape(x.shape)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("qtype", ["F16", "Q8_0", "Q4_0"])
def test_quantized_within_known_error_bound(tiny_model_every_type, arch, qtype):
    paths = tiny_model_every_type(arch)
    st = read_safetensors(paths.hf_dir)
    model = read_gguf(paths.gguf_path(qtype))
    for name, want in st.items():
        got = model.tensors[name]
        if want.ndim == 1:  # norms and biases stay F32, exactly
            assert model.tensor_types[name] == "F32" and torch.equal(got, want), name
            continue
        assert model.tensor_types[name] == qtype, name
        err = (got - want).abs()
        bound = _block_bound(want, qtype)
        assert bool((err <= bound).all()), (name, float((err - bound).max()))
        assert float(err.max()) > 0  # really quantized, not a copy


# ---------------------------------------------------------------- permutation oracle


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's converter formula, restated independently: within each head the
    rows of the first and second rotary halves are interleaved."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3"])
def test_file_holds_llama_cpp_layout(tmp_path, arch):
    config = small_config(arch)
    path, _, weights = write_small(tmp_path, config)
    raw = {t.name: np.array(t.data) for t in gguf.GGUFReader(path).tensors}
    for hf, n_head in (("model.layers.1.self_attn.q_proj.weight", 4),
                       ("model.layers.1.self_attn.k_proj.weight", 2)):
        w = weights[hf].numpy()
        stored = raw[layout.gguf_name(hf)]
        if arch in ("llama", "mistral"):
            assert np.array_equal(stored, _llama_cpp_permute(w, n_head))
            assert not np.array_equal(stored, w)
        else:  # llama.cpp runs qwen2/qwen3 RoPE in NEOX mode: rows unpermuted
            assert np.array_equal(stored, w)
    if arch == "qwen2":
        b = weights["model.layers.0.self_attn.k_proj.bias"].numpy()
        assert np.array_equal(raw["blk.0.attn_k.bias"], b)
    model = read_gguf(path)
    for name, w in weights.items():
        assert torch.equal(model.tensors[name], w), name


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_transformers_gguf_loader_agrees(tmp_path, arch):
    """Outside oracle: transformers' own GGUF loader (its de-permutation, name map)
    must give back the HF tensors from our file."""
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = small_config(arch)
    path, _, weights = write_small(tmp_path, config)
    hf_cfg = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config}[arch](
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    model = transformers.AutoModelForCausalLM.from_config(hf_cfg)
    parsed = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
    for name, w in weights.items():
        assert torch.equal(parsed[name], w), name


# ----------------------------------------------------------------- types and options


ALL_TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
             "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"]


def test_every_supported_type_in_one_mixed_file(tmp_path):
    """A file mixing all 15 encodings: each tensor reads back bit-equal to gguf's
    reference dequantization of its stored blocks (then de-permuted)."""
    config = small_config("llama", hidden_size=256, intermediate_size=256, head_dim=64, vocab_size=64)
    names = [n for n, s in layout.expected_shapes(config).items() if len(s) == 2]
    overrides = {n: ALL_TYPES[i % len(ALL_TYPES)] for i, n in enumerate(names)}
    assert set(overrides.values()) == set(ALL_TYPES)
    path, _, weights = write_small(tmp_path, config, "F16", type_overrides=overrides)
    model = read_gguf(path)
    stored = {t.name: t for t in gguf.GGUFReader(path).tensors}
    for name in names:
        assert model.tensor_types[name] == overrides[name]
        t = stored[layout.gguf_name(name)]
        ref = torch.from_numpy(gguf.quants.dequantize(np.array(t.data), t.tensor_type).copy())
        heads = layout.permuted_heads(config, name)
        if heads:
            ref = layout.unpermute_rows(ref, heads)
        assert torch.equal(model.tensors[name].view(torch.int32), ref.view(torch.int32)), name
        rel = (model.tensors[name] - weights[name]).norm() / weights[name].norm()
        assert float(rel) < 0.45, (name, overrides[name], float(rel))


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q5_0", "Q4_K", "Q6_K"])
def test_torch_kernels_bit_equal_to_reference_on_random_blocks(qtype):
    """Any bytes (NaN/inf scales included) decode exactly as gguf.quants does."""
    t = T[qtype]
    block, size = gguf.GGML_QUANT_SIZES[t]
    raw = np.random.default_rng(0).integers(0, 256, size=(37, size * 3), dtype=np.uint8)
    with np.errstate(all="ignore"):
        ref = gguf.quants.dequantize(raw, t)
    got = gguf_quants.dequantize(raw, t, 37, block * 3).numpy()
    assert np.array_equal(ref.view(np.uint32), got.view(np.uint32))


def test_dtype_option(tmp_path):
    path, _, weights = write_small(tmp_path, file_type="Q8_0")
    f32 = read_gguf(path)
    bf16 = read_gguf(path, dtype=torch.bfloat16)
    for name, t in bf16.tensors.items():
        assert t.dtype == torch.bfloat16
        assert torch.equal(t, f32.tensors[name].to(torch.bfloat16)), name


def test_keep_float16(tmp_path):
    path, _, weights = write_small(tmp_path, file_type="F16")
    model = read_gguf(path, keep_float16=True)
    for name, w in weights.items():
        t = model.tensors[name]
        if w.ndim == 2:
            assert t.dtype == torch.float16 and torch.equal(t, w.half()), name
        else:
            assert t.dtype == torch.float32 and torch.equal(t, w), name


def test_keep_quantized_returns_raw_blocks_in_hf_row_order(tmp_path):
    path, config, _ = write_small(tmp_path, file_type="Q4_0")
    full = read_gguf(path)
    raw = read_gguf(path, keep_quantized=True)
    assert set(raw.quantized) == {n for n, t in full.tensor_types.items() if t == "Q4_0"}
    assert set(raw.tensors) == {n for n, t in full.tensor_types.items() if t == "F32"}
    q = raw.quantized["model.layers.0.self_attn.q_proj.weight"]
    assert q.qtype == "Q4_0" and q.shape == (64, 64) and q.data.dtype == torch.uint8
    assert q.data.shape == (64, 64 // 32 * 18)
    for name, qt in raw.quantized.items():
        assert torch.equal(qt.dequantize(), full.tensors[name]), name


def test_gguf_v2_is_read(tmp_path):
    path, _, weights = write_small(tmp_path)
    data = bytearray(path.read_bytes())
    assert data[4:8] == (3).to_bytes(4, "little")
    data[4:8] = (2).to_bytes(4, "little")  # v2 and v3 differ only for big-endian files
    v2 = tmp_path / "v2.gguf"
    v2.write_bytes(bytes(data))
    model = read_gguf(v2)
    assert all(torch.equal(model.tensors[n], w) for n, w in weights.items())


def test_rope_scaling_recovered_from_factors_for_real_llama3_shapes():
    for scaling, head_dim in ((RopeScaling("llama3", 8.0, 1.0, 4.0, 8192), 128),
                              (RopeScaling("llama3", 32.0, 1.0, 4.0, 8192), 64),
                              (RopeScaling("llama3", 16.0, 2.0, 8.0, 4096), 128)):
        factors = layout.llama3_rope_factors(head_dim, 500000.0, scaling)
        got = layout.rope_scaling_from_factors(factors, head_dim, 500000.0)
        # equivalent parameters: the same factors (hence the same engine frequencies)
        again = layout.llama3_rope_factors(head_dim, 500000.0, got)
        assert torch.allclose(again, factors, rtol=1e-5), (scaling, got)
        if scaling.low_freq_factor == 1.0:
            assert got == scaling
    assert layout.rope_scaling_from_factors(torch.ones(32), 64, 10000.0) is None


def test_smollm_shaped_load_is_fast(tmp_path):
    """Loading cost scales with bytes: a tenth of the smollm-135m shape (3 of 30 layers)
    must load well within the < 5 s budget of the full model."""
    config = ModelConfig(architecture="llama", vocab_size=32000, hidden_size=576,
                         intermediate_size=1536, num_hidden_layers=3, num_attention_heads=9,
                         num_key_value_heads=3, head_dim=64, max_position_embeddings=2048,
                         tie_word_embeddings=True)
    weights = random_weights(config, seed=0)
    path = write_gguf(tmp_path / "s.gguf", config, weights, {}, "Q8_0", name="s")
    start = time.perf_counter()
    read_gguf(path)
    assert time.perf_counter() - start < 2.0


# -------------------------------------------------------------------- failure modes


def _expect_error(path, *fragments):
    with pytest.raises(ModelLoadError) as info:
        read_gguf(path)
    msg = str(info.value)
    assert str(path) in msg, msg
    for f in fragments:
        assert f in msg, msg
    return msg


def test_not_a_gguf_file(tmp_path):
    p = tmp_path / "model.safetensors"
    p.write_bytes(b'{"__metadata__": {}}' + b"\0" * 100)
    _expect_error(p, "not a GGUF file")
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    _expect_error(empty, "not a GGUF file")
    _expect_error(tmp_path / "absent.gguf", "cannot open")


def test_unsupported_version(tmp_path):
    path, _, _ = write_small(tmp_path)
    data = bytearray(path.read_bytes())
    data[4:8] = (1).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    _expect_error(path, "unsupported GGUF version 1")


@pytest.mark.parametrize("keep", [10, 30, 200, 0.3, 0.7, -1])
def test_truncated_file(tiny_model_every_type, tmp_path, keep):
    src = tiny_model_every_type("llama").gguf_path("F32").read_bytes()  # 32k-token vocab in the header
    n = keep if isinstance(keep, int) and keep > 0 else int(len(src) * keep) if keep > 0 else len(src) - 1
    p = tmp_path / "cut.gguf"
    p.write_bytes(src[:n])
    _expect_error(p, "truncated")


def test_corrupt_array_length_fails_fast(tmp_path, tiny_model_every_type):
    """A garbage element count must not make the reader loop or allocate for ages."""
    src = bytearray(tiny_model_every_type("llama").gguf_path("F32").read_bytes())
    key = b"tokenizer.ggml.tokens"
    at = src.index(key) + len(key) + 4 + 4  # value type (array), item type (string)
    src[at:at + 8] = (1 << 60).to_bytes(8, "little")
    p = tmp_path / "corrupt.gguf"
    p.write_bytes(bytes(src))
    start = time.perf_counter()
    _expect_error(p, "array of 1152921504606846976 items")
    assert time.perf_counter() - start < 1.0


def test_unsupported_architecture(tmp_path):
    p = tmp_path / "gpt2.gguf"
    w = gguf.GGUFWriter(p, "gpt2")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    _expect_error(p, "unsupported architecture 'gpt2'", "llama, qwen2, qwen3")


def _patch_tensor_info(path, name, *, new_name=None, dims=None, type_id=None):
    """Edit one tensor's entry of the tensor table in place (same byte length)."""
    reader = gguf.GGUFReader(path, "r+")
    t = next(t for t in reader.tensors if t.name == name)
    _, name_data, _, dims_part, dtype_part, _ = t.field.parts
    if new_name is not None:
        assert len(new_name) == len(name)
        name_data[:] = np.frombuffer(new_name.encode(), dtype=np.uint8)
    if dims is not None:
        dims_part[:] = dims
    if type_id is not None:
        dtype_part[0] = type_id
    reader.data.flush()
    del reader


def test_unsupported_tensor_type(tmp_path):
    path, _, _ = write_small(tmp_path, file_type="Q4_0")
    # MXFP4 blocks hold Q4_0's 32 values in one byte less: the data stays inside the file
    _patch_tensor_info(path, "blk.1.ffn_up.weight", type_id=int(T.MXFP4))
    msg = _expect_error(path, "blk.1.ffn_up.weight", "unsupported type MXFP4")
    for name in ALL_TYPES:
        assert name in msg


def test_unknown_tensor_type_id(tmp_path):
    path, _, _ = write_small(tmp_path)
    _patch_tensor_info(path, "blk.0.ffn_up.weight", type_id=250)
    _expect_error(path, "blk.0.ffn_up.weight", "unknown GGML type id 250")


def test_missing_tensor(tmp_path):
    path, _, _ = write_small(tmp_path)
    _patch_tensor_info(path, "blk.1.ffn_down.weight", new_name="blk.1.ffn_dowX.weight")
    _expect_error(path, "missing tensor blk.1.ffn_down.weight")


def test_shape_mismatch(tmp_path):
    path, _, _ = write_small(tmp_path)
    # ffn_down is HF (64, 128), stored as ggml dims [128, 64]; swap them (same size)
    _patch_tensor_info(path, "blk.0.ffn_down.weight", dims=[64, 128])
    _expect_error(path, "blk.0.ffn_down.weight", "shape [128, 64]", "expected [64, 128]")


def test_tensor_past_end_of_file_detected_before_reading(tmp_path):
    path, _, _ = write_small(tmp_path)
    # claim the last tensor is much larger than the bytes that follow it
    _patch_tensor_info(path, "blk.1.ffn_norm.weight", dims=[64 * 1024])
    _expect_error(path, "truncated", "blk.1.ffn_norm.weight")


def test_missing_metadata_key(tmp_path):
    p = tmp_path / "nokeys.gguf"
    w = gguf.GGUFWriter(p, "llama")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    _expect_error(p, "missing metadata key llama.")


def test_unsupported_rope_scaling_type(tmp_path):
    path, _, _ = write_small(tmp_path, extra_metadata={"llama.rope.scaling.type": "yarn",
                                                       "llama.rope.scaling.factor": 4.0})
    _expect_error(path, "unsupported rope scaling 'yarn'")
    ok, _, _ = write_small(tmp_path, name="ok.gguf", extra_metadata={"llama.rope.scaling.type": "linear",
                                                                    "llama.rope.scaling.factor": 1.0})
    assert read_gguf(ok).config.rope_scaling is None
    keys, _, _ = write_small(tmp_path, name="keys.gguf", extra_metadata={
        "llama.rope.scaling.type": "llama3", "llama.rope.scaling.factor": 32.0,
        "llama.rope.scaling.original_context_length": 4096})
    assert read_gguf(keys).config.rope_scaling == RopeScaling("llama3", 32.0, 1.0, 4.0, 4096)


def test_vocab_size_from_embedding_when_key_absent(tmp_path):
    path, config, _ = write_small(tmp_path)
    data = bytearray(path.read_bytes())
    at = data.index(b"llama.vocab_size")
    data[at:at + 16] = b"llama.vocab_sizX"  # same length: the key is simply gone
    path.write_bytes(bytes(data))
    assert read_gguf(path).config == config
