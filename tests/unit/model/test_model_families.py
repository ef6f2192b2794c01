"""Phi-3 (Phi-4-mini's features), Granite 3.x and SmolLM3 on tiny random models.

Our engine's logits equal Hugging Face transformers' (the outside oracle) through the
paged KV cache (a 70- and a 90-token prompt, 16 batched decode steps), from the HF
directory and from GGUF F32/F16/Q8_0 files written with llama.cpp's conventions. The
tiny configs exercise every feature: phi3's fused q|k|v and gate|up, 3/4 partial
rotation and longrope switching at 64 positions (the prompts run past it); granite's
four multipliers; smollm3's RoPE-less fourth layer. `test_each_feature_changes_the_logits`
shows each one matters for these prompts. Clauses: contracts/model-families.md.
"""

import json

import attrs
import gguf
import openai
import pytest
import torch

from support import transformers_oracle as oracle
from support.server_thread import ServerThread
from support.transformers_oracle import TOLERANCE, engine_run, hf_model, random_prompts
from triolm.errors import ModelLoadError
from triolm.formats import gguf_layout as layout
from triolm.formats.gguf_reader import read_gguf
from triolm.formats.gguf_weights import read_gguf_for_engine
from triolm.formats.gguf_writer import write_gguf
from triolm.formats.hf_config import config_from_hf_dict, read_hf_config
from triolm.formats.safetensors_loader import read_safetensors
from triolm.loading.served_model import load_served_model
from triolm.model.build import build_model
from triolm.prompting.prompts import render_chat_prompt
from triolm.prompting.template import ChatTemplate
from triolm.settings import ServerSettings

ARCHS = ["phi3", "granite", "smollm3"]
GGUF_TYPES = ("F32", "F16", "Q8_0")
PROMPT_LENGTHS = (70, 90)  # both past phi3's longrope switch at 64 positions


@pytest.fixture(scope="module")
def family(tiny_model):
    return lambda arch: tiny_model(arch, gguf_types=GGUF_TYPES)


def prompts_for(vocab, lengths=PROMPT_LENGTHS):
    return random_prompts(vocab, lengths)


def assert_matches_transformers(model, hf, vocab, label, lengths=PROMPT_LENGTHS, max_model_len=256):
    oracle.assert_matches_transformers(model, hf, vocab, label, lengths, max_model_len)


# ------------------------------------------------------------------ FAMILY-1, -2


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_transformers_from_hf_directory(family, arch):
    paths = family(arch)
    config = read_hf_config(paths.hf_dir)
    assert config == paths.config
    model = build_model(config, read_safetensors(paths.hf_dir))
    assert_matches_transformers(model, hf_model(paths.hf_dir), config.vocab_size, arch)


@pytest.mark.parametrize("file_type", GGUF_TYPES)
@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_transformers_from_gguf(family, arch, file_type):
    """The reference runs transformers on the file's weights as read back (F16/Q8_0 are
    lossy); our engine keeps them compact (float16, Q8_0 blocks)."""
    paths = family(arch)
    path = paths.gguf_path(file_type)
    parsed, tensors = read_gguf_for_engine(path)
    assert parsed.config == paths.config
    model = build_model(parsed.config, tensors)
    kind = {"F32": "dense", "F16": "f16", "Q8_0": "q8_0"}[file_type]
    kinds = model.weight_kinds()
    assert kinds.pop("lm_head:" + kind) == 1 and set(kinds) <= {kind, "stacked"}, kinds
    hf_state = read_gguf(path).tensors
    hf = hf_model(paths.hf_dir, hf_state)
    assert_matches_transformers(model, hf, parsed.config.vocab_size, f"{arch} {file_type}")


# ------------------------------------------------------------------ FAMILY-3


def test_phi3_longrope_uses_short_factors_within_the_original_context(family):
    """Built for a context of at most original_max_position_embeddings (64), the model
    rotates by the short factors, as transformers does for a sequence that short."""
    paths = family("phi3")
    model = build_model(paths.config, read_safetensors(paths.hf_dir), max_positions=64)
    assert_matches_transformers(model, hf_model(paths.hf_dir), paths.config.vocab_size, "phi3 short",
                                lengths=(40, 47), max_model_len=64)


def _mutations(config):
    """Configs that each drop one feature the tiny model exercises."""
    if config.architecture == "phi3":
        s = config.rope_scaling
        return {"full rotation": attrs.evolve(config, partial_rotary_factor=1.0, rope_scaling=None),
                "short factors past the switch": attrs.evolve(
                    config, rope_scaling=attrs.evolve(s, long_factor=s.short_factor)),
                "no attention factor": attrs.evolve(config, rope_scaling=attrs.evolve(s, attention_factor=1.0))}
    if config.architecture == "granite":
        return {name: attrs.evolve(config, **{name: value}) for name, value in (
            ("embedding_multiplier", 1.0), ("residual_multiplier", 1.0),
            ("attention_multiplier", None), ("logits_scaling", 1.0))}
    return {"RoPE on every layer": attrs.evolve(config, rope_layers=())}


@pytest.mark.parametrize("arch", ARCHS)
def test_each_feature_changes_the_logits(family, arch):
    """Leaving out any one feature moves the logits far beyond TOLERANCE, so the
    comparisons above would catch an implementation without it."""
    paths = family(arch)
    weights = read_safetensors(paths.hf_dir)
    prompt = prompts_for(paths.config.vocab_size)[:1]
    (right, _), = engine_run(build_model(paths.config, weights), prompt, steps=2)
    for name, config in _mutations(paths.config).items():
        (wrong, _), = engine_run(build_model(config, weights), prompt, steps=2)
        assert (wrong - right).abs().max().item() > 100 * TOLERANCE, name


# ------------------------------------------------------------------ FAMILY-4


def _raw_gguf(path):
    reader = gguf.GGUFReader(path)
    tensors = {t.name: torch.from_numpy(t.data.copy()) for t in reader.tensors}
    fields = {name: field.contents() for name, field in reader.fields.items()}
    return tensors, fields


def test_phi3_gguf_keeps_fused_tensors_and_longrope_as_llama_cpp_does(family):
    paths = family("phi3")
    hf = read_safetensors(paths.hf_dir)
    raw, meta = _raw_gguf(paths.gguf_path("F32"))
    c = paths.config
    assert meta["general.architecture"] == "phi3"
    # fused, unpermuted (llama.cpp runs phi3's RoPE in NEOX mode, HF's rotate-half)
    assert torch.equal(raw["blk.1.attn_qkv.weight"], hf["model.layers.1.self_attn.qkv_proj.weight"])
    assert torch.equal(raw["blk.1.ffn_up.weight"], hf["model.layers.1.mlp.gate_up_proj.weight"])
    assert not any(name.endswith(("attn_q.weight", "ffn_gate.weight")) for name in raw)
    assert meta["phi3.rope.dimension_count"] == c.rotary_dim == 12
    assert meta["phi3.rope.scaling.original_context_length"] == 64
    assert meta["phi3.rope.scaling.attn_factor"] == 1.125
    assert meta["phi3.context_length"] == 256
    assert raw["rope_factors_long.weight"].tolist() == list(c.rope_scaling.long_factor)
    assert raw["rope_factors_short.weight"].tolist() == list(c.rope_scaling.short_factor)


@pytest.mark.parametrize("arch", ["granite", "smollm3"])
def test_llama_style_gguf_permutes_q_and_k_and_stores_the_family_keys(family, arch):
    paths = family(arch)
    hf = read_safetensors(paths.hf_dir)
    raw, meta = _raw_gguf(paths.gguf_path("F32"))
    c = paths.config
    assert meta["general.architecture"] == arch
    q = hf["model.layers.0.self_attn.q_proj.weight"]
    assert torch.equal(raw["blk.0.attn_q.weight"], layout.permute_rows(q, c.num_attention_heads))
    assert not torch.equal(raw["blk.0.attn_q.weight"], q)
    if arch == "granite":
        assert (meta["granite.embedding_scale"], meta["granite.attention.scale"],
                meta["granite.logit_scale"]) == (12.0, 0.125, 8.0)
        assert abs(meta["granite.residual_scale"] - 0.22) < 1e-7
    else:
        assert not any("rope" in key for key in meta if key.startswith("smollm3.") and "freq_base" not in key
                       and "dimension" not in key)


def test_smollm3_gguf_refuses_rope_layers_llama_cpp_cannot_express(family, tmp_path):
    paths = family("smollm3")
    odd = attrs.evolve(paths.config, rope_layers=(True, False, True, True))
    with pytest.raises(ValueError, match="every fourth layer"):
        write_gguf(tmp_path / "x.gguf", odd, read_safetensors(paths.hf_dir), file_type="F32")


# ------------------------------------------------------------------ FAMILY-5


def test_config_json_variants_of_the_hub(family):
    """Phi's longrope without an attention factor takes transformers' default; transformers
    5's `rope_parameters` form reads the same; granite without multipliers is llama."""
    cfg = json.loads((family("phi3").hf_dir / "config.json").read_text())
    del cfg["rope_scaling"]["attention_factor"]
    scaling = config_from_hf_dict(cfg).rope_scaling
    assert scaling.attention_factor == pytest.approx((1 + torch.log(torch.tensor(4.0)).item()
                                                      / torch.log(torch.tensor(64.0)).item()) ** 0.5)
    cfg = json.loads((family("phi3").hf_dir / "config.json").read_text())
    rope = dict(cfg.pop("rope_scaling"), rope_type="longrope", rope_theta=cfg.pop("rope_theta"),
                partial_rotary_factor=cfg.pop("partial_rotary_factor"))
    del rope["type"]
    assert config_from_hf_dict({**cfg, "rope_parameters": rope}) == family("phi3").config
    cfg = json.loads((family("granite").hf_dir / "config.json").read_text())
    for key in ("embedding_multiplier", "residual_multiplier", "attention_multiplier", "logits_scaling"):
        del cfg[key]
    plain = config_from_hf_dict(cfg)
    assert (plain.embedding_multiplier, plain.residual_multiplier, plain.logits_scaling) == (1.0, 1.0, 1.0)


def test_bad_family_values_fail_the_load_naming_the_key(family):
    cfg = json.loads((family("phi3").hf_dir / "config.json").read_text())
    cfg["rope_scaling"]["long_factor"] = cfg["rope_scaling"]["long_factor"][:-1]
    with pytest.raises(ModelLoadError, match="long_factor"):
        config_from_hf_dict(cfg)
    cfg = json.loads((family("granite").hf_dir / "config.json").read_text())
    cfg["logits_scaling"] = 0
    with pytest.raises(ModelLoadError, match="logits_scaling"):
        config_from_hf_dict(cfg)
    cfg = json.loads((family("smollm3").hf_dir / "config.json").read_text())
    cfg["no_rope_layers"] = [1, 1]
    with pytest.raises(ModelLoadError, match="no_rope_layers"):
        config_from_hf_dict(cfg)


# ------------------------------------------------------------------ FAMILY-6: templates

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Name a colour."}]
EXPECTED_TURNS = {
    "phi3": "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n"
            "<|user|>\nName a colour.<|end|>\n<|assistant|>\n",
    "granite": "<|start_of_role|>system<|end_of_role|>Be brief.<|end_of_text|>\n"
               "<|start_of_role|>user<|end_of_role|>Hi<|end_of_text|>\n"
               "<|start_of_role|>assistant<|end_of_role|>Hello!<|end_of_text|>\n"
               "<|start_of_role|>user<|end_of_role|>Name a colour.<|end_of_text|>\n"
               "<|start_of_role|>assistant<|end_of_role|>",
}


def _templates(paths):
    """The chat template as the HF directory and as the GGUF file carry it."""
    hf_text = json.loads((paths.hf_dir / "tokenizer_config.json").read_text())["chat_template"]
    _, meta = _raw_gguf(paths.gguf_path("F32"))
    return {"hf": hf_text, "gguf": meta["tokenizer.chat_template"]}


@pytest.mark.parametrize("arch", ["phi3", "granite"])
def test_chat_template_renders_the_family_turns_from_hf_and_gguf(family, arch):
    for source, text in _templates(family(arch)).items():
        rendered = ChatTemplate(text, bos_token="<s>", eos_token="</s>").render(CHAT)
        assert rendered == EXPECTED_TURNS[arch], source


def test_smollm3_template_thinking_flags(family):
    """enable_thinking picks the mode; "/think" and "/no_think" in the system message
    override it and are removed from the instructions; without thinking the assistant
    turn opens with an empty think block."""
    for source, text in _templates(family("smollm3")).items():
        template = ChatTemplate(text, bos_token="", eos_token="<|im_end|>")
        user = [{"role": "user", "content": "Hi"}]
        thinking = template.render(user)
        assert "Reasoning Mode: /think\n" in thinking and thinking.endswith("<|im_start|>assistant\n"), source
        plain = template.render(user, enable_thinking=False)
        assert "Reasoning Mode: /no_think\n" in plain
        assert plain.endswith("<|im_start|>assistant\n<think>\n\n</think>\n")
        flagged = template.render([{"role": "system", "content": "Be brief. /no_think"}] + user)
        assert "Reasoning Mode: /no_think\n" in flagged and "Be brief.\n\n" in flagged
        assert "/no_think\n\n" not in flagged.split("## Custom Instructions")[1]
        forced = template.render([{"role": "system", "content": "/think"}] + user, enable_thinking=False)
        assert "Reasoning Mode: /think\n" in forced and forced.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("arch", ARCHS)
def test_tokenizer_from_gguf_equals_the_hf_one(family, arch):
    paths = family(arch)
    from_hf = load_served_model(ServerSettings(model=str(paths.hf_dir))).tokenizer
    from_gguf = load_served_model(ServerSettings(model=str(paths.gguf_path("Q8_0")))).tokenizer
    text = EXPECTED_TURNS.get(arch, "<|im_start|>user\nHi<|im_end|>\n") + " naïve café 🙂 x = 1\n"
    assert from_gguf.encode(text) == from_hf.encode(text)
    assert from_gguf.vocab_size == from_hf.vocab_size


# ------------------------------------------------------------------ FAMILY-7: server


@pytest.mark.parametrize("arch", ARCHS)
def test_chat_completion_through_the_server(family, arch):
    """A real server on the tiny model answers /v1/chat/completions with the family's
    template applied and the engine's greedy tokens."""
    paths = family(arch)
    settings = ServerSettings(model=str(paths.hf_dir), max_num_seqs=2, max_model_len=256)
    served = load_served_model(settings)
    kwargs = {"enable_thinking": False} if arch == "smollm3" else None
    messages = [{"role": "user", "content": "Name a colour, please."}]
    prompt = render_chat_prompt(served, messages, template_kwargs=kwargs)
    ids = list(prompt.token_ids)
    assert ("<|user|>" if arch == "phi3" else "<|start_of_role|>user" if arch == "granite"
            else "Reasoning Mode: /no_think") in prompt.text
    (_, expected), = engine_run(served.model, [ids], steps=7)
    with ServerThread(settings, served) as srv:
        client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="unused", max_retries=0)
        extra = {"ignore_eos": True, **({"chat_template_kwargs": kwargs} if kwargs else {})}
        reply = client.chat.completions.create(model=served.name, messages=messages, max_tokens=8,
                                               temperature=0, extra_body=extra)
    assert reply.usage.prompt_tokens == len(ids)
    assert reply.usage.completion_tokens == 8
    assert reply.choices[0].message.content == served.tokenizer.decode(expected[:8])


def test_phi3_gguf_ends_turns_at_its_end_token(family):
    """FAMILY-6: a Phi-3 vocabulary's <|end|> ends generation, as in llama.cpp."""
    from triolm.formats.family_gguf import config_from_metadata

    base = family("phi3").config
    tokens = ["<unk>", "<s>", "</s>", "<|user|>", "<|end|>", "<|assistant|>"]
    config = config_from_metadata(base, "phi3", lambda name, default=None: default, {}, tokens)
    assert config.eos_token_ids == base.eos_token_ids + (4,)
    assert config_from_metadata(base, "phi3", lambda name, default=None: default, {},
                                tokens[:3]).eos_token_ids == base.eos_token_ids


def test_unsupported_architecture_names_it_and_the_families(family, tmp_path):
    """FAMILY-8: an unknown architecture fails with a ModelLoadError naming it and the
    supported list, the new families included, from config.json and from GGUF."""
    cfg = json.loads((family("granite").hf_dir / "config.json").read_text())
    with pytest.raises(ModelLoadError, match=r"'gpt_neox'.*phi3, granite, smollm3"):
        config_from_hf_dict({**cfg, "model_type": "gpt_neox"})
    src = family("smollm3").gguf_path("F32")
    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(tmp_path / "x.gguf", "falcon")
    for name, field in reader.fields.items():
        if name.startswith("smollm3.") and field.types and field.types[0] != gguf.GGUFValueType.ARRAY:
            writer.add_key_value(name.replace("smollm3.", "falcon.", 1), field.contents(), field.types[0])
    for t in reader.tensors[:2]:
        writer.add_tensor(t.name, t.data.copy(), raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelLoadError, match=r"'falcon'.*phi3, granite, smollm3"):
        read_gguf(tmp_path / "x.gguf")


def test_bad_gguf_family_values_fail_the_load_naming_the_key(family, tmp_path):
    """FAMILY-5: a phi3 file whose long factors do not cover the rotated dims, or a
    granite file without its logit scale, fails to load naming the tensor or key."""
    paths = family("phi3")
    s = paths.config.rope_scaling
    odd = attrs.evolve(paths.config, rope_scaling=attrs.evolve(s, long_factor=s.long_factor[:-1]))
    write_gguf(tmp_path / "phi3.gguf", odd, read_safetensors(paths.hf_dir), file_type="F32")
    with pytest.raises(ModelLoadError, match="rope_factors_long"):
        read_gguf(tmp_path / "phi3.gguf")
    granite = family("granite")
    reader = gguf.GGUFReader(granite.gguf_path("F32"))
    writer = gguf.GGUFWriter(tmp_path / "granite.gguf", "granite")
    for name, field in reader.fields.items():
        if name.startswith("granite.") and name != "granite.logit_scale" and field.types[0] != gguf.GGUFValueType.ARRAY:
            writer.add_key_value(name, field.contents(), field.types[0])
    for t in reader.tensors:
        writer.add_tensor(t.name, t.data.copy(), raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelLoadError, match="granite.logit_scale"):
        read_gguf(tmp_path / "granite.gguf")
