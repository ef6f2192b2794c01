"""Mixture-of-experts models (qwen3_moe, mixtral) on tiny random models: our engine's logits
equal Hugging Face transformers' (the outside oracle) through the paged KV cache, from
the HF directory and from GGUF F32/F16/Q8_0 files, and a K-quant file computes its
dequantized model; the GGUF files follow llama.cpp's conventions (checked against
llama.cpp's own numbers on them, recorded in tests/data/moe_tiny_llamacpp.json).

The tiny configs have 8 experts and route every token to 3 of them; prompts of 70 and
41 tokens are decoded together for 16 steps, so each step groups several tokens by
expert. Clause ids refer to contracts/moe.md.
"""

import json
import shutil

import attrs
import pytest
import torch
from safetensors.torch import save_file

from support.engine_run import greedy_with_logits
from support.hostile_gguf import rewrite_gguf
from support.paths import DATA_DIR
from support.transformers_oracle import (
    TOLERANCE,
    assert_matches_transformers,
    engine_run,
    hf_model,
    random_prompts,
)
from triolm.errors import ModelLoadError
from triolm.formats.gguf_reader import read_gguf
from triolm.formats.gguf_weights import read_gguf_for_engine
from triolm.formats.gguf_writer import write_gguf
from triolm.formats.hf_config import read_hf_config
from triolm.formats.safetensors_loader import read_safetensors
from triolm.kernels import native
from triolm.model import linear as lin
from triolm.model.build import build_model
from triolm.model.config import ModelConfig
from triolm.model.feed_forward import DenseMlp
from triolm.model.llama import LlamaModel
from triolm.model.moe import SparseMoe
from triolm.model.random_init import random_weights

ARCHS = ["mixtral", "qwen3_moe"]
GGUF_TYPES = ("F32", "F16", "Q8_0")
STEPS = 16
LLAMA_CPP_TINY = json.loads((DATA_DIR / "moe_tiny_llamacpp.json").read_text())


@pytest.fixture(scope="module")
def moe(tiny_model):
    return lambda arch: tiny_model(arch, gguf_types=GGUF_TYPES)


def prompts_for(vocab):
    return random_prompts(vocab, (70, 41))


def hf_model_on(tensors, config_dir, tmp_path):
    """transformers on other weights (as read back from a GGUF file): a model directory
    with `tensors` under the HF names, so transformers' own loader maps the experts."""
    model_dir = tmp_path / "reference"
    model_dir.mkdir(exist_ok=True)
    shutil.copy(config_dir / "config.json", model_dir / "config.json")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(model_dir / "model.safetensors"))
    return hf_model(model_dir)


@pytest.mark.parametrize("arch", ARCHS)
def test_moe_001_logits_match_transformers_from_hf_directory(moe, arch):
    paths = moe(arch)
    config = read_hf_config(paths.hf_dir)
    assert config == paths.config and config.num_experts_per_tok == 3
    model = build_model(config, read_safetensors(paths.hf_dir))
    assert isinstance(model, LlamaModel) and model.native_decode == native.available()
    assert all(isinstance(layer.feed_forward, SparseMoe) for layer in model.layers)
    assert_matches_transformers(model, hf_model(paths.hf_dir), config.vocab_size, arch)


@pytest.mark.parametrize("file_type", GGUF_TYPES)
@pytest.mark.parametrize("arch", ARCHS)
def test_moe_001_logits_match_transformers_from_gguf(moe, arch, file_type, tmp_path):
    """The reference runs transformers on the file's weights as read back (F16/Q8_0 are
    lossy); our engine keeps them compact (float16, Q8_0 blocks), experts included."""
    paths = moe(arch)
    path = paths.gguf_path(file_type)
    parsed, tensors = read_gguf_for_engine(path)
    assert parsed.config == paths.config
    model = build_model(parsed.config, tensors)
    kind = {"F32": "dense", "F16": "f16", "Q8_0": "q8_0"}[file_type]
    layers, experts = parsed.config.num_hidden_layers, parsed.config.num_experts
    assert model.weight_kinds() == {kind: 2 * layers, "router:dense": layers,
                                    "expert:" + kind: 2 * experts * layers, "lm_head:" + kind: 1}
    hf = hf_model_on(read_gguf(path).tensors, paths.hf_dir, tmp_path)
    assert_matches_transformers(model, hf, parsed.config.vocab_size, f"{arch} {file_type}")


@pytest.mark.parametrize("arch", ARCHS)
def test_moe_002_gguf_runs_as_in_llama_cpp(moe, arch):
    """llama.cpp itself, run on our F32 file (recorded), predicts what we predict: so the
    stacked expert tensors, the router, the expert keys and (mixtral) the llama
    architecture with permuted Q/K mean the same model to both."""
    ref = LLAMA_CPP_TINY[arch]
    parsed, tensors = read_gguf_for_engine(moe(arch).gguf_path("F32"))
    model = build_model(parsed.config, tensors)
    (ours, tokens), = engine_run(model, [ref["prompt_ids"]], steps=15)
    assert tokens == ref["tokens"]
    logprobs = ours.log_softmax(-1)
    worst = max(abs(logprobs[step, token].item() - lp)
                for step, top in enumerate(ref["top5"]) for token, lp in top)
    assert worst < 0.01, f"max |logprob - llama.cpp's| {worst}"


def test_moe_003_quantized_experts_are_views_of_the_stacked_tensor(moe):
    """Each expert of a Q8_0 file computes on its slice of the file's stacked tensor:
    expert e's blocks start e slices after expert 0's, in the mapped file."""
    parsed, tensors = read_gguf_for_engine(moe("qwen3_moe").gguf_path("Q8_0"))
    model = build_model(parsed.config, tensors)
    sparse = model.layers[1].feed_forward
    assert isinstance(sparse, SparseMoe)
    gates = [gate_up.parts[0] for gate_up, _ in sparse.experts]
    downs = [down for _, down in sparse.experts]
    for group in (gates, downs):
        assert all(isinstance(p, lin.BlockLinear) for p in group)
        stride = group[0].blocks.numel()
        assert [p.blocks.data_ptr() - group[0].blocks.data_ptr() for p in group] == \
            [e * stride for e in range(len(group))]
    assert not gates[0].blocks.is_inference()  # still the reader's view, not a copy


def _wide_config(arch: str) -> ModelConfig:
    """Rows of 256: every matrix, experts included, can be K-quantized."""
    return ModelConfig(architecture=arch, vocab_size=512, hidden_size=256, intermediate_size=256,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                       max_position_embeddings=512, rms_norm_eps=1e-6, rope_theta=1e6,
                       qk_norm=arch == "qwen3_moe", num_experts=8, num_experts_per_tok=3,
                       moe_intermediate_size=256)


@pytest.mark.parametrize("arch", ARCHS)
def test_moe_003_k_quant_experts_compute_the_dequantized_model(arch, tmp_path):
    """Q4_K_M: experts stay Q4_K blocks and give the logits of the file's weights
    dequantized by the gguf package's reference code, up to summation order."""
    config = _wide_config(arch)
    path = write_gguf(tmp_path / "moe-Q4_K_M.gguf", config, random_weights(config, seed=3), file_type="Q4_K_M")
    parsed, tensors = read_gguf_for_engine(path)
    model = build_model(parsed.config, tensors)
    assert model.weight_kinds()["expert:q4_k"] == 2 * 8 * 2
    reference = build_model(parsed.config, read_gguf(path).tensors)
    prompts = [list(range(5, 75)), list(range(100, 141))]
    ours, ours_tokens = greedy_with_logits(model, prompts, STEPS)
    ref, ref_tokens = greedy_with_logits(reference, prompts, STEPS)
    assert ours_tokens == ref_tokens
    assert (ours - ref).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("arch", ARCHS)
def test_moe_004_native_and_torch_expert_paths_agree(moe, arch):
    """The grouped native kernel and the torch reference loop compute the same MoE
    output for batches of 1, 5 and 70 tokens, on float32 and Q8_0 experts."""
    paths = moe(arch)
    if not native.available():
        pytest.skip("no native kernels on this machine")
    for weights in (read_safetensors(paths.hf_dir), read_gguf_for_engine(paths.gguf_path("Q8_0"))[1]):
        sparse = build_model(paths.config, weights).layers[0].feed_forward
        assert isinstance(sparse, SparseMoe)
        assert sparse.table is not None
        gen = torch.Generator().manual_seed(2)
        for rows in (1, 5, 70):
            h = torch.randn(rows, paths.config.hidden_size, generator=gen)
            residual = torch.randn(rows, paths.config.hidden_size, generator=gen)
            fast, slow = residual.clone(), residual.clone()
            sparse.add_into(h, fast)
            sparse._torch_add_into(h, slow)
            assert not torch.equal(fast, residual)
            assert (fast - slow).abs().max().item() <= 1e-5


def _edited_copy(paths, tmp_path, **changes):
    model_dir = tmp_path / "edited"
    shutil.copytree(paths.hf_dir, model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg.update(changes)
    (model_dir / "config.json").write_text(json.dumps(cfg))
    return model_dir


def test_moe_006_qwen3_moe_unnormalised_routing_and_dense_layers(moe, tmp_path):
    """norm_topk_prob false (transformers' default) and a dense layer named by
    mlp_only_layers: both as transformers computes them; the dense layer's MLP tensors
    come from the same random init."""
    paths = moe("qwen3_moe")
    model_dir = _edited_copy(paths, tmp_path, norm_topk_prob=False, mlp_only_layers=[1])
    config = read_hf_config(model_dir)
    assert not config.norm_topk_prob and config.dense_mlp_layers == (1,)
    weights = read_safetensors(model_dir)
    dense = random_weights(attrs.evolve(config, num_experts=0, architecture="qwen3"), seed=5)
    for name, t in dense.items():
        if name.startswith("model.layers.1.mlp."):
            weights[name] = t
    weights = {k: v for k, v in weights.items() if not k.startswith("model.layers.1.mlp.experts.")
               and k != "model.layers.1.mlp.gate.weight"}
    save_file(weights, str(model_dir / "model.safetensors"))
    model = build_model(config, read_safetensors(model_dir))
    assert isinstance(model.layers[1].feed_forward, DenseMlp) and isinstance(model.layers[0].feed_forward, SparseMoe)
    assert_matches_transformers(model, hf_model(model_dir), config.vocab_size, "unnormalised, dense layer 1")
    with pytest.raises(ValueError, match="norm_topk_prob"):
        write_gguf(tmp_path / "x.gguf", config, weights, file_type="F32")


@pytest.mark.parametrize("arch", ARCHS)
def test_moe_006_routing_features_change_the_logits(moe, arch):
    """Routing to fewer experts, or not renormalising, moves the logits far beyond
    TOLERANCE: the comparisons above would catch a router that ignored either."""
    paths = moe(arch)
    weights = read_safetensors(paths.hf_dir)
    prompt = prompts_for(paths.config.vocab_size)[:1]
    right, _ = greedy_with_logits(build_model(paths.config, weights), prompt, 1)
    for change in ({"num_experts_per_tok": 1}, {"norm_topk_prob": False}):
        wrong, _ = greedy_with_logits(build_model(attrs.evolve(paths.config, **change), weights), prompt, 1)
        assert (wrong - right).abs().max().item() > 100 * TOLERANCE, change


@pytest.mark.parametrize("changes, message", [
    ({"num_experts_per_tok": 9}, "num_experts_per_tok must be between 1 and the 8 experts"),
    ({"num_experts": 100000}, "num_experts must be between 1 and 4096"),
    ({"shared_expert_intermediate_size": 64}, "shared experts"),
    ({"use_sliding_window": True, "sliding_window": 16}, "sliding-window attention"),
    ({"decoder_sparse_step": 0}, "decoder_sparse_step must be at least 1"),
    ({"hidden_act": "gelu"}, "unsupported hidden_act 'gelu'"),
])
def test_moe_007_bad_hf_configs_fail_the_load_by_name(moe, tmp_path, changes, message):
    model_dir = _edited_copy(moe("qwen3_moe"), tmp_path, **changes)
    with pytest.raises(ModelLoadError, match=message):
        read_hf_config(model_dir)


def test_moe_007_missing_expert_is_named(moe, tmp_path):
    """A checkpoint without one expert's tensor, and a GGUF file without one stacked
    tensor, name what is missing."""
    paths = moe("mixtral")
    weights = read_safetensors(paths.hf_dir)
    del weights["model.layers.1.block_sparse_moe.experts.5.w3.weight"]
    with pytest.raises(ModelLoadError, match=r"block_sparse_moe\.experts\.5\.w3\.weight"):
        build_model(paths.config, weights)
    with pytest.raises(ModelLoadError, match=r"blk\.1\.ffn_up_exps\.weight"):
        read_gguf(rewrite_gguf(paths.gguf_path("F32"), tmp_path / "cut.gguf",
                               drop_tensors=("blk.1.ffn_up_exps.weight",)))


@pytest.mark.parametrize("changes, drop, message", [
    ({"qwen3moe.expert_count": 0}, (), "metadata qwen3moe.expert_count must be between 1 and 4096"),
    ({"qwen3moe.expert_count": 1 << 31}, (), "metadata qwen3moe.expert_count must be between 1 and 4096"),
    ({"qwen3moe.expert_used_count": 9}, (), "metadata qwen3moe.expert_used_count must be between 1 and the 8"),
    ({"qwen3moe.expert_feed_forward_length": 48}, (), r"tensor blk.0.ffn_gate_exps.weight has shape \[8, 32, 64\]"),
    ({}, ("qwen3moe.expert_count",), "missing metadata key qwen3moe.expert_count"),
])
def test_moe_007_bad_gguf_metadata_fails_the_load_by_name(moe, tmp_path, changes, drop, message):
    path = rewrite_gguf(moe("qwen3_moe").gguf_path("F32"), tmp_path / "bad.gguf", changes, drop=drop)
    with pytest.raises(ModelLoadError, match=message):
        read_gguf(path)
