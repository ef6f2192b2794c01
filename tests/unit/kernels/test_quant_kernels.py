"""Every GGUF block type the loader accepts, computed from the file's own bytes, equals the
`gguf` package's dequantization (gguf.quants.dequantize) up to summation order.

Per type, per row count (1 to 16 rows, K-quants 1 to 8: weights decoded in registers;
more: chunks expanded into L2 and the packed-x GEMM of gemm_f32.h), per kernel
path: AVX-512, the portable decoders (the library built a second time with
-mno-avx512f, in a subprocess), and pure torch (no library).

Bound: |ours - reference| <= 1e-5 * sum_k |x_k * w_k| (float32 summation of 512
products stays two orders below it; a wrongly decoded code or scale is far above it).
Expanded weights must be bit-equal to the reference.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf import quants as gguf_reference

from support.engine_run import greedy_with_logits
from support.model_factory import random_weights
from support.paths import env_with_tests_on_path
from support.random_blocks import random_blocks
from triolm.formats.gguf_reader import read_gguf
from triolm.formats.gguf_weights import read_gguf_for_engine
from triolm.formats.gguf_writer import write_gguf
from triolm.kernels import native
from triolm.model import linear as lin
from triolm.model.config import ModelConfig
from triolm.model.feed_forward import DenseMlp
from triolm.model.llama import LlamaModel
from triolm.settings import ServerSettings

TYPES = tuple(native.BLOCK_KINDS)
ROWS = (1, 2, 4, 8, 13, 16, 20, 24, 64)
OUT, COLS = 70, 512  # 70 output rows: chunk and register-tile tails; 512: two K-quant blocks
BOUND = 1e-5
LOGITS_TOLERANCE = 1e-4


def _case(qtype: str, seed: int = 0) -> tuple[np.ndarray, torch.Tensor]:
    """(blocks, their reference float32 values [OUT, COLS])."""
    blocks = random_blocks(qtype, OUT, COLS, np.random.default_rng(seed))
    ref = gguf_reference.dequantize(blocks, GGMLQuantizationType[qtype]).reshape(OUT, COLS)
    return blocks, torch.from_numpy(np.ascontiguousarray(ref, dtype=np.float32))


def _relative_error(y: torch.Tensor, x: torch.Tensor, ref: torch.Tensor, acc: torch.Tensor | None = None) -> float:
    expected = x.double() @ ref.double().T
    size = x.abs().double() @ ref.abs().double().T
    if acc is not None:
        expected += acc.double()
        size += acc.abs().double()
    return ((y.double() - expected).abs() / (size + 1e-30)).max().item()


def _native_errors(qtype: str) -> dict[str, float]:
    """Errors of the library's own entry points for every row count: `tl_linear` (in
    registers up to 16 rows, chunk expansion beyond), accumulating into y, and
    `tl_dequant_blocks` (0.0 when bit-equal)."""
    blocks, ref = _case(qtype)
    layer = lin.BlockLinear(qtype, torch.from_numpy(blocks), OUT, COLS)
    lib = native.lib()
    out = {"expand": (layer.dense() - ref).abs().max().item()}
    g = torch.Generator().manual_seed(1)
    for rows in ROWS:
        x = torch.randn(rows, COLS, generator=g)
        y = torch.randn(rows, OUT, generator=g)
        start = y.clone()
        lib.tl_linear(layer.code, layer.blocks.data_ptr(), None, x.data_ptr(), COLS, y.data_ptr(), OUT,
                      rows, OUT, COLS, 1, 2)
        out[str(rows)] = _relative_error(y, x, ref, start)
    return out


# ------------------------------------------------------------------ AVX-512 and portable


@pytest.fixture(scope="module")
def avx512():
    if native._compiler() is None:
        pytest.skip("no C++ compiler on this machine: the native kernels cannot exist here")
    assert native.available(), "a C++ compiler is present but the native kernels did not build"
    if not native.lib().tl_has_avx512():
        pytest.skip("this CPU has no AVX-512: the portable path is the native one")
    return native.lib()


@pytest.fixture(scope="module")
def portable_errors():
    """The same checks against a library built without AVX-512 (its portable decoders)."""
    if native._compiler() is None:
        pytest.skip("no C++ compiler on this machine: the native kernels cannot exist here")
    env = env_with_tests_on_path(dict(os.environ, TRIOLM_NATIVE_FLAGS="-mno-avx512f"))
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["has_avx512"] == 0
    return result["errors"]


@pytest.mark.parametrize("qtype", TYPES)
def test_avx512_block_kernels_match_gguf_dequantize(avx512, qtype):
    errors = _native_errors(qtype)
    assert errors.pop("expand") == 0.0
    assert errors.keys() == {str(r) for r in ROWS}
    assert max(errors.values()) <= BOUND, errors


@pytest.mark.parametrize("qtype", TYPES)
def test_portable_block_kernels_match_gguf_dequantize(portable_errors, qtype):
    errors = dict(portable_errors[qtype])
    assert errors.pop("expand") == 0.0
    assert errors.keys() == {str(r) for r in ROWS}
    assert max(errors.values()) <= BOUND, errors


# ------------------------------------------------------------------ through the layer


@pytest.mark.parametrize("rows", ROWS + (80,))
@pytest.mark.parametrize("qtype", TYPES)
def test_block_linear_matches_gguf_dequantize(qtype, rows):
    """The layer's own choice of path (in registers up to 16 rows, chunk expansion
    beyond: 80 rows is a prompt), with and without accumulating into `out`."""
    blocks, ref = _case(qtype, seed=rows)
    layer = lin.BlockLinear(qtype, torch.from_numpy(blocks), OUT, COLS)
    x = torch.randn(rows, COLS, generator=torch.Generator().manual_seed(rows))
    assert _relative_error(layer(x), x, ref) <= BOUND
    acc = torch.randn(rows, OUT)
    start = acc.clone()
    layer(x, out=acc)
    assert _relative_error(acc, x, ref, start) <= BOUND


#: Above the column slices of the packed GEMM (2048: slices of 2048 + 256) and of the
#: portable path (1024: slices of 512).
LONG_COLS = 2304


@pytest.mark.parametrize("qtype", TYPES + ("F16", "Q8_0-repacked"))
def test_prompt_rows_over_long_columns_match_gguf_dequantize(qtype):
    """Prompts over rows longer than one column slice: each expanded chunk is multiplied
    slice by slice with partial sums added in y (the block kinds, float16 and the
    repacked Q8_0 alike), accumulating or not."""
    rng = np.random.default_rng(5)
    if qtype == "F16":
        ref = torch.from_numpy(rng.standard_normal((OUT, LONG_COLS)).astype(np.float16)).float()
        layer = lin.Float16Linear(ref)
    elif qtype == "Q8_0-repacked":
        layer = lin.Q8Linear.quantize(torch.randn(OUT, LONG_COLS, generator=torch.Generator().manual_seed(5)))
        ref = layer.dense()
    else:
        blocks = random_blocks(qtype, OUT, LONG_COLS, rng)
        ref = torch.from_numpy(np.ascontiguousarray(gguf_reference.dequantize(
            blocks, GGMLQuantizationType[qtype]).reshape(OUT, LONG_COLS), dtype=np.float32))
        layer = lin.BlockLinear(qtype, torch.from_numpy(blocks), OUT, LONG_COLS)
    x = torch.randn(80, LONG_COLS, generator=torch.Generator().manual_seed(6))
    assert _relative_error(layer(x), x, ref) <= BOUND
    acc = torch.randn(80, OUT)
    start = acc.clone()
    layer(x, out=acc)
    assert _relative_error(acc, x, ref, start) <= BOUND


#: bfloat16 keeps 8 significant bits: inputs, weights and outputs each round by <= 2^-9.
BF16_BOUND = 2e-2


@pytest.mark.parametrize("qtype", ["Q4_K", "Q8_0", "BF16"])
def test_prefill_precision_float32_is_default_and_bfloat16_is_opt_in(qtype, monkeypatch):
    """Prefill (80 rows: expansion + GEMM) is exact unless bfloat16 is asked for; then it
    is close (within bfloat16's rounding) but no longer exact, and float32 is exact again."""
    assert ServerSettings().prefill_precision == "float32"
    assert lin.PrefillPrecision.dtype == torch.float32
    blocks, ref = _case(qtype, seed=3)
    layer = lin.BlockLinear(qtype, torch.from_numpy(blocks), OUT, COLS)
    stacked = lin.StackedLinear([layer, lin.BlockLinear(qtype, torch.from_numpy(blocks), OUT, COLS)])
    x = torch.randn(80, COLS, generator=torch.Generator().manual_seed(3))
    monkeypatch.setattr(lin.PrefillPrecision, "dtype", torch.float32)
    lin.PrefillPrecision.set("bfloat16")
    lossy = _relative_error(layer(x), x, ref)
    acc = torch.randn(80, OUT)
    start = acc.clone()
    layer(x, out=acc)
    lossy_acc = _relative_error(acc, x, ref, start)
    lossy_stacked = _relative_error(stacked(x), x, torch.cat([ref, ref]))
    assert 1e-4 < lossy <= BF16_BOUND and lossy_acc <= BF16_BOUND and 1e-4 < lossy_stacked <= BF16_BOUND
    lin.PrefillPrecision.set("float32")
    assert _relative_error(layer(x), x, ref) <= BOUND
    with pytest.raises(ValueError, match="prefill precision"):
        lin.PrefillPrecision.set("float16")
    with pytest.raises(ValueError):
        ServerSettings(prefill_precision="int8")


@pytest.mark.parametrize("qtype", TYPES)
def test_torch_fallback_matches_gguf_dequantize(qtype, monkeypatch):
    """Without the library (TRIOLM_NATIVE=0 or no compiler) each matrix is expanded by
    the torch/`gguf` decoders into scratch: bit-equal weights, GEMM results."""
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_tried", True)
    blocks, ref = _case(qtype, seed=5)
    layer = lin.BlockLinear(qtype, torch.from_numpy(blocks), OUT, COLS)
    assert torch.equal(layer.dense(), ref)
    for rows in ROWS:
        x = torch.randn(rows, COLS)
        assert _relative_error(layer(x), x, ref) <= BOUND
    ids = torch.tensor([[3, 0, 69], [5, 5, 1]])
    assert torch.equal(layer.rows(ids), ref[ids])


@pytest.mark.parametrize("qtype", TYPES)
def test_embedding_rows_equal_gguf_dequantize(qtype):
    blocks, ref = _case(qtype, seed=9)
    layer = lin.BlockLinear(qtype, torch.from_numpy(blocks), OUT, COLS)
    ids = torch.tensor([[3, 0, 69], [5, 5, 1]])
    assert torch.equal(layer.rows(ids), ref[ids])


@pytest.mark.parametrize("use_native", [True, False])
def test_stacked_mixed_parts_equal_their_concatenation(use_native, monkeypatch):
    """q|k|v of a Q4_K_M file mixes types: the parts stay as they are (no copy) and
    compute like one concatenated float32 matrix."""
    if not use_native:
        monkeypatch.setattr(native, "_lib", None)
        monkeypatch.setattr(native, "_tried", True)
    (b1, r1), (b2, r2), (b3, r3) = _case("Q4_K", 1), _case("Q6_K", 2), _case("Q5_0", 3)
    w4 = torch.randn(32, COLS) / COLS ** 0.5
    parts = [lin.BlockLinear("Q4_K", torch.from_numpy(b1), OUT, COLS),
             lin.BlockLinear("Q6_K", torch.from_numpy(b2), OUT, COLS),
             lin.BlockLinear("Q5_0", torch.from_numpy(b3), OUT, COLS),
             lin.Q8Linear.quantize(w4), lin.Float16Linear(w4.half())]
    stacked = lin.concat(parts)
    assert isinstance(stacked, lin.StackedLinear)
    assert stacked.parts[0].blocks.data_ptr() == parts[0].blocks.data_ptr()  # not copied
    ref = torch.cat([r1, r2, r3, parts[3].dense(), parts[4].dense()])
    assert torch.equal(stacked.dense(), ref)
    for rows in ROWS:
        x = torch.randn(rows, COLS)
        assert _relative_error(stacked(x), x, ref) <= BOUND
        if use_native and rows <= 24:  # the whole-step kernel's entry: one call, every part
            y = torch.empty(rows, stacked.out_features)
            code, table, _ = stacked.native_ref()
            native.lib().tl_linear(code, table, None, x.data_ptr(), COLS, y.data_ptr(),
                                   stacked.out_features, rows, stacked.out_features, COLS, 0, 2)
            assert _relative_error(y, x, ref) <= BOUND


# ------------------------------------------------------------------ a whole model


@pytest.fixture(scope="module")
def q4_k_m_file(tmp_path_factory):
    """A tiny llama written like a real Q4_K_M: Q4_K, Q6_K for v/down/output, Q5_0 and
    Q8_0 elsewhere (the K-quants need rows of 256: hidden 256, intermediate 512)."""
    config = ModelConfig(architecture="llama", vocab_size=300, hidden_size=256, intermediate_size=512,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                         rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=1024,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_ids=(2,))
    weights = random_weights(config, 3)
    path = tmp_path_factory.mktemp("q4km") / "tiny-q4_k_m.gguf"
    write_gguf(path, config, weights, file_type="Q4_K_M",
               type_overrides={"blk.0.attn_output.weight": "Q5_0", "blk.1.ffn_gate.weight": "Q5_0",
                               "blk.1.attn_k.weight": "Q8_0", "token_embd.weight": "Q8_0"})
    return path


def test_q4_k_m_model_matches_dequantized_float32(q4_k_m_file):
    gguf, tensors = read_gguf_for_engine(q4_k_m_file)
    assert set(gguf.tensor_types.values()) >= {"Q4_K", "Q6_K", "Q5_0", "Q8_0"}
    compact = LlamaModel(gguf.config, tensors)
    assert compact.native_decode == native.available()
    kinds = compact.weight_kinds()
    assert "dense" not in kinds and kinds["lm_head:q6_k"] == 1, kinds
    reference = LlamaModel(gguf.config, read_gguf(q4_k_m_file).tensors)  # every weight float32
    assert set(reference.weight_kinds()) == {"dense", "lm_head:dense"}
    assert compact.weights_bytes * 4 < reference.weights_bytes

    g = torch.Generator().manual_seed(7)
    prompts = [torch.randint(3, gguf.config.vocab_size, (n,), generator=g).tolist() for n in (70, 33, 5)]
    ours, our_tokens = greedy_with_logits(compact, prompts, 12)
    ref, ref_tokens = greedy_with_logits(reference, prompts, 12)
    assert (ours - ref).abs().max().item() <= LOGITS_TOLERANCE
    assert our_tokens == ref_tokens


@pytest.mark.parametrize("file_fixture", ["q4_k_m_file", "iq4_file"])
def test_block_matrices_are_mapped_from_the_file(file_fixture, request):
    """Matrices whose rows need no reordering are read-only views of the mapped file, not
    copies (llama's Q/K rows are reordered, so those two are copies)."""
    q4_k_m_file = request.getfixturevalue(file_fixture)
    gguf, tensors = read_gguf_for_engine(q4_k_m_file)
    model = LlamaModel(gguf.config, tensors)
    maps = {}
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 6 and fields[5] == str(q4_k_m_file):
                lo, hi = (int(v, 16) for v in fields[0].split("-"))
                maps[lo] = hi
    mapped = lambda ptr: any(lo <= ptr < hi for lo, hi in maps.items())  # noqa: E731
    layer = model.layers[1]
    mlp = layer.feed_forward
    assert isinstance(mlp, DenseMlp) and isinstance(mlp.gate_up, lin.StackedLinear)
    assert all(mapped(p.blocks.data_ptr()) for p in mlp.gate_up.parts)
    assert mapped(mlp.down.blocks.data_ptr()) and mapped(model.lm_head.blocks.data_ptr())
    assert mapped(layer.qkv.parts[2].blocks.data_ptr())  # v
    assert not mapped(layer.qkv.parts[0].blocks.data_ptr())  # q: rows reordered


@pytest.fixture(scope="module")
def iq4_file(tmp_path_factory):
    """A tiny llama of IQ4_XS matrices with IQ4_NL ones mixed in (IQ4_XS needs rows of
    256: hidden 256, intermediate 512)."""
    config = ModelConfig(architecture="llama", vocab_size=300, hidden_size=256, intermediate_size=512,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                         rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=1024,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_ids=(2,))
    weights = random_weights(config, 4)
    path = tmp_path_factory.mktemp("iq4") / "tiny-iq4.gguf"
    write_gguf(path, config, weights, file_type="IQ4_XS",
               type_overrides={"blk.0.attn_v.weight": "IQ4_NL", "blk.1.ffn_up.weight": "IQ4_NL",
                               "blk.1.ffn_down.weight": "IQ4_NL", "token_embd.weight": "IQ4_NL"})
    return path


def test_iq4_model_matches_dequantized_float32(iq4_file):
    """IQ4_NL and IQ4_XS matrices stay in their blocks (q|k|v and gate|up mix both
    types) and the engine's logits are the dequantized float32 model's."""
    gguf, tensors = read_gguf_for_engine(iq4_file)
    assert set(gguf.tensor_types.values()) >= {"IQ4_XS", "IQ4_NL"}
    compact = LlamaModel(gguf.config, tensors)
    assert compact.native_decode == native.available()
    kinds = compact.weight_kinds()
    assert "dense" not in kinds and kinds["lm_head:iq4_xs"] == 1, kinds
    assert any("iq4_nl" in k and "iq4_xs" in k for k in kinds), kinds  # stacked mixed parts
    reference = LlamaModel(gguf.config, read_gguf(iq4_file).tensors)
    assert compact.weights_bytes * 6 < reference.weights_bytes  # 4.25-4.5 bits vs 32

    g = torch.Generator().manual_seed(8)
    prompts = [torch.randint(3, gguf.config.vocab_size, (n,), generator=g).tolist() for n in (70, 33, 5)]
    ours, our_tokens = greedy_with_logits(compact, prompts, 12)
    ref, ref_tokens = greedy_with_logits(reference, prompts, 12)
    assert (ours - ref).abs().max().item() <= LOGITS_TOLERANCE
    assert our_tokens == ref_tokens


if __name__ == "__main__":  # the portable-path subprocess (see `portable_errors`)
    print(json.dumps({"has_avx512": native.lib().tl_has_avx512(),
                      "errors": {q: _native_errors(q) for q in TYPES}}))
