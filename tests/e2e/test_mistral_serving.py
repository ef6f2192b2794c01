"""Serving Mistral models with mistral-common (issue 4, server half).

The tiny Mistral-architecture test model ships the v3 tokenizer of mistral-common
(`tokenizer.model.v3`) next to its HF files; it is served from its Hugging Face
directory (auto mode picks mistral-common), from Mistral's native layout
(params.json + consolidated.safetensors), and with `--tokenizer-mode hf`. The
oracle throughout is mistral-common itself, called directly in the test.
Weights are random: tool calls only come out right through constrained decoding.
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

from support.mistral_models import make_native_mistral_model
from support.model_factory import make_test_model
from support.server_thread import ServerThread
from support.tokenizer_files import SAMPLE_TEXTS, load_test_tokenizer, source_file
from triolm.errors import ModelLoadError
from triolm.loading.served_model import load_served_model
from triolm.prompting.mistral import (
    apply_mistral_chat_template,
    invalid_request_from_mistral_error,
    render_mistral_prompt,
)
from triolm.settings import ServerSettings
from triolm.tokenizers.hf import HFTokenizer
from triolm.tokenizers.mistral_tokenizer import MistralTokenizerAdapter, load_mistral_tokenizer_adapter

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "enum": ["Paris", "Tokyo", "Lima"]},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}
SEARCH = {"type": "function", "function": {
    "name": "search", "parameters": {"type": "object", "properties": {
        "q": {"type": "string", "maxLength": 8}, "limit": {"type": "integer", "minimum": 1, "maximum": 9}},
        "required": ["q", "limit"], "additionalProperties": False}}}
MESSAGES = [{"role": "user", "content": "What's the weather in Paris?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}
MISTRAL_ID = re.compile(r"[a-zA-Z0-9]{9}")


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def mistral_paths():
    return make_test_model(arch="mistral", gguf_types=())


def _serve(path, **overrides):
    settings = ServerSettings(model=str(path), max_num_seqs=4, **overrides)
    return ServerThread(settings, load_served_model(settings))


@pytest.fixture(scope="module")
def server(mistral_paths):
    """The HF-layout directory in auto mode."""
    with _serve(mistral_paths.hf_dir) as srv:
        yield srv


@pytest.fixture(scope="module")
def native_server(mistral_paths):
    with _serve(make_native_mistral_model(mistral_paths)) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def mistral(server) -> MistralTokenizer:
    return server.served.mistral_tokenizer


def tokenize(srv, **body) -> list[int]:
    response = httpx.post(srv.base_url + "/tokenize", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["tokens"]


def detokenize(srv, tokens: list[int]) -> str:
    response = httpx.post(srv.base_url + "/detokenize", json={"tokens": tokens}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["prompt"]


# ------------------------------------------------------------------ the adapter


@pytest.fixture(scope="module")
def v3_adapter() -> MistralTokenizerAdapter:
    return MistralTokenizerAdapter(MistralTokenizer.v3())


def test_adapter_vocabulary_matches_mistral_common_and_the_hf_conversion(v3_adapter):
    """Every id: the same piece, bytes and special-ness as the independently converted
    HF tokenizer of the same file; names invert; control tokens (+ <unk>) are special."""
    tok, raw = v3_adapter, v3_adapter.mistral_tokenizer.instruct_tokenizer.tokenizer
    hf = load_test_tokenizer("spm-mistral-v3")
    assert tok.vocab_size == raw.n_words == 32768
    assert (tok.bos_token_id, tok.eos_token_ids, tok.bos_token, tok.eos_token) == (1, (2,), "<s>", "</s>")
    assert tok.special_token_ids == frozenset(raw.special_ids) | {raw.unk_id} == hf.special_token_ids
    assert tok.chat_template is None
    for i in range(tok.vocab_size):
        assert tok.id_to_token(i) == hf.id_to_token(i)
        assert tok.token_bytes(i) == hf.token_bytes(i), i
        assert tok.token_to_id(tok.id_to_token(i)) == i
    assert tok.token_bytes(tok.token_to_id("<0x0A>")) == b"\n"
    assert tok.token_bytes(tok.token_to_id("\u2581the")) == b" the"
    assert tok.token_to_id("no such piece") is None
    with pytest.raises(IndexError):
        tok.id_to_token(tok.vocab_size)


def test_adapter_encode_decode_agree_with_mistral_common(v3_adapter):
    tok, raw = v3_adapter, v3_adapter.mistral_tokenizer.instruct_tokenizer.tokenizer
    for text in SAMPLE_TEXTS:
        ids = tok.encode(text)
        assert ids == raw.encode(text, bos=True, eos=False)
        assert tok.encode(text, add_special_tokens=False) == ids[1:]
        assert tok.decode(ids) == raw.decode(ids)
        if text:  # SentencePiece's dummy prefix: the token bytes spell " " + text
            assert b"".join(tok.token_bytes(i) for i in ids[1:]) == b" " + text.encode()
    # raw text: a control token's spelling is text, never the control id
    assert 3 not in tok.encode("[INST] hi [/INST]")
    # decode with specials: names spelled out, the text between them as mistral-common renders it
    prompt = render_mistral_prompt(tok.mistral_tokenizer, MESSAGES + [
        {"role": "assistant", "tool_calls": [{"id": "abcDEF123", "type": "function",
                                              "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "abcDEF123", "content": "22 C"}], [WEATHER])
    assert tok.decode(prompt.token_ids, skip_special_tokens=False) == prompt.text
    skipped = tok.decode(prompt.token_ids)  # specials skipped: only the text between them
    assert skipped.startswith('[{"type": "function"') and "[INST]" not in skipped and "</s>" not in skipped


def test_adapter_decode_matches_hf_on_random_ids(v3_adapter):
    hf = load_test_tokenizer("spm-mistral-v3")
    rng = random.Random(0)
    for _ in range(300):
        ids = [rng.randrange(v3_adapter.vocab_size) if rng.random() > 0.25 else rng.randrange(0, 12)
               for _ in range(rng.randrange(1, 12))]
        for skip in (True, False):
            assert v3_adapter.decode(ids, skip) == hf.decode(ids, skip), (ids, skip)


def test_adapter_over_tekken_spells_exact_bytes():
    tok = load_mistral_tokenizer_adapter(source_file("bpe-tekken"))
    hf = load_test_tokenizer("bpe-tekken")
    assert tok.is_tekken and tok.vocab_size == hf.vocab_size == 131072
    assert tok.special_token_ids == hf.special_token_ids
    for i in range(0, tok.vocab_size, 7):
        assert tok.token_bytes(i) == hf.token_bytes(i)
        assert tok.id_to_token(i) == hf.id_to_token(i)
        assert tok.token_to_id(tok.id_to_token(i)) == i
    for text in SAMPLE_TEXTS:
        ids = tok.encode(text, add_special_tokens=False)
        assert b"".join(tok.token_bytes(i) for i in ids) == text.encode()
        assert tok.decode(ids) == text
    assert tok.decode([1, *tok.encode("hi", False), 2], skip_special_tokens=False) == "<s>hi</s>"


def test_adapter_load_errors_name_the_path(tmp_path):
    with pytest.raises(ModelLoadError, match=str(tmp_path)):
        load_mistral_tokenizer_adapter(tmp_path)


# ------------------------------------------------------------------ loading


def test_auto_mode_picks_mistral_common_for_both_layouts(server, native_server):
    for srv in (server, native_server):
        served = srv.served
        assert isinstance(served.tokenizer, MistralTokenizerAdapter)
        assert served.mistral_tokenizer is not None and served.tool_parser == "mistral"
    assert (native_server.served.path.endswith("native")
            and set(os.listdir(native_server.served.path))
            == {"params.json", "consolidated.safetensors", "tokenizer.model.v3"})


def test_auto_mode_keeps_hf_for_a_non_mistral_model_with_tekken_json(served_model):
    """The qwen2 test model ships tekken.json too; it is not a Mistral model."""
    assert (Path(served_model.path) / "tekken.json").exists()
    assert served_model.mistral_tokenizer is None and isinstance(served_model.tokenizer, HFTokenizer)


def test_native_layout_generates_exactly_what_the_hf_layout_does(server, native_server):
    """Same weights, other names and rotary row order: greedy tokens and logprobs agree."""
    outputs = []
    for srv in (server, native_server):
        response = httpx.post(srv.base_url + "/v1/chat/completions", timeout=60, json={
            "messages": MESSAGES, "max_tokens": 12, "temperature": 0, "logprobs": True,
            "return_tokens_as_token_ids": True}).json()
        content = response["choices"][0]["logprobs"]["content"]
        outputs.append(([t["token"] for t in content], [t["logprob"] for t in content],
                        response["usage"]["prompt_tokens"]))
    (ids_hf, lp_hf, n_hf), (ids_native, lp_native, n_native) = outputs
    assert len(ids_hf) == 12 and ids_hf == ids_native and n_hf == n_native
    assert lp_hf == pytest.approx(lp_native, abs=1e-4)


def test_hf_tokenizer_mode_uses_the_hf_tokenizer_and_template(mistral_paths, mistral):
    with _serve(mistral_paths.hf_dir, tokenizer_mode="hf") as srv:
        assert isinstance(srv.served.tokenizer, HFTokenizer) and srv.served.mistral_tokenizer is None
        tokens = tokenize(srv, messages=MESSAGES)
        assert tokens != apply_mistral_chat_template(mistral, MESSAGES)
        assert 3 not in tokens  # no [INST]: the Jinja (ChatML) template rendered it
        assert "<|im_start|>user" in detokenize(srv, tokens)
        client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="unused", max_retries=0)
        r = client.chat.completions.create(model=srv.served.name, messages=MESSAGES, max_tokens=3)
        assert r.usage.prompt_tokens == len(tokens)


def test_mistral_tokenizer_mode_without_a_tokenizer_file_fails_to_load(tmp_path, mistral_paths):
    model_dir = tmp_path / "no-tokenizer"
    model_dir.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (model_dir / name).symlink_to(mistral_paths.hf_dir / name)
    with pytest.raises(ModelLoadError, match="no mistral-common tokenizer"):
        load_served_model(ServerSettings(model=str(model_dir), tokenizer_mode="mistral"))
    # auto mode falls back on the HF tokenizer for it
    served = load_served_model(ServerSettings(model=str(model_dir)))
    assert served.mistral_tokenizer is None


def test_native_layout_refuses_hf_tokenizer_mode_and_needs_its_tokenizer_file(tmp_path, mistral_paths):
    """A native-layout model has no HF tokenizer: `hf` mode must not fall back on a
    Jinja template encoded as raw text by mistral-common (a silently wrong prompt)."""
    native = make_native_mistral_model(mistral_paths)
    with pytest.raises(ModelLoadError, match="native layout"):
        load_served_model(ServerSettings(model=str(native), tokenizer_mode="hf"))
    bare = tmp_path / "native-without-tokenizer"
    bare.mkdir()
    for name in ("params.json", "consolidated.safetensors"):
        (bare / name).symlink_to(native / name)
    with pytest.raises(ModelLoadError, match="no mistral-common tokenizer file"):
        load_served_model(ServerSettings(model=str(bare)))


# ------------------------------------------------------------------ chat and /tokenize


def test_chat_prompt_is_mistral_commons_encoding(client, server, mistral):
    r = client.chat.completions.create(model=server.served.name, messages=MESSAGES, max_tokens=4)
    assert r.choices[0].finish_reason == "length" and r.choices[0].message.content
    assert r.usage.prompt_tokens == len(apply_mistral_chat_template(mistral, MESSAGES))
    with_tools = client.chat.completions.create(model=server.served.name, messages=MESSAGES, max_tokens=1,
                                                tools=[WEATHER], tool_choice="none")
    assert with_tools.usage.prompt_tokens == len(apply_mistral_chat_template(mistral, MESSAGES, [WEATHER]))


def test_streamed_text_equals_the_full_decode(client, server):
    """The incremental detokenizer over the adapter: byte-fallback pieces and the
    SentencePiece leading space come out the same streamed and whole."""
    kwargs = dict(model=server.served.name, messages=MESSAGES, max_tokens=40, seed=11, temperature=1.0)
    full = client.chat.completions.create(logprobs=True, extra_body={"return_tokens_as_token_ids": True},
                                          **kwargs).choices[0]
    ids = [int(t.token.split(":")[1]) for t in full.logprobs.content]
    assert full.message.content == server.served.tokenizer.decode(ids)
    streamed = "".join(c.choices[0].delta.content or "" for c in
                       client.chat.completions.create(stream=True, **kwargs) if c.choices)
    assert streamed == full.message.content


def test_tokenize_returns_mistral_commons_tokens(server, mistral):
    raw = mistral.instruct_tokenizer.tokenizer
    for text in ("Hello world", "[INST] not a control token", "日本語 🙂\n\ttabs", " "):
        assert tokenize(server, prompt=text) == raw.encode(text, bos=True, eos=False)
        assert tokenize(server, prompt=text, add_special_tokens=False) == raw.encode(text, bos=False, eos=False)
    conversation = [{"role": "system", "content": "Be brief."}, *MESSAGES,
                    {"role": "assistant", "content": "Sunny."}, {"role": "user", "content": "And Tokyo?"}]
    assert tokenize(server, messages=conversation) == apply_mistral_chat_template(mistral, conversation)


def test_tools_become_available_tools(server, mistral):
    tokens = tokenize(server, messages=MESSAGES, tools=[WEATHER, SEARCH])
    assert tokens == apply_mistral_chat_template(mistral, MESSAGES, [WEATHER, SEARCH])
    raw = mistral.instruct_tokenizer.tokenizer
    assert raw.get_special_token("[AVAILABLE_TOOLS]") in tokens
    text = detokenize(server, tokens)
    assert text.startswith("<s>[AVAILABLE_TOOLS] [{") and '"name": "get_weather"' in text
    assert text.endswith("[/AVAILABLE_TOOLS][INST] What's the weather in Paris?[/INST]")


# ------------------------------------------------------------------ tool calls


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_named_tool_choice_gives_a_mistral_tool_call(client, server, seed):
    r = client.chat.completions.create(
        model=server.served.name, messages=MESSAGES, tools=[WEATHER, SEARCH], tool_choice=NAMED,
        seed=seed, temperature=1.0, max_tokens=80, logprobs=True,
        extra_body={"return_tokens_as_token_ids": True})
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert MISTRAL_ID.fullmatch(call.id), call.id
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, WEATHER["function"]["parameters"])
    generated = detokenize(server, [int(t.token.split(":")[1]) for t in choice.logprobs.content])
    assert generated.startswith("[TOOL_CALLS]")
    assert json.loads(generated[len("[TOOL_CALLS]"):]) == [
        {"name": "get_weather", "arguments": arguments, "id": call.id}]


def test_required_tool_choice_calls_an_offered_tool(client, server):
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, SEARCH)}
    r = client.chat.completions.create(model=server.served.name, messages=MESSAGES, tools=[WEATHER, SEARCH],
                                       tool_choice="required", seed=4, max_tokens=150)
    assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.tool_calls
    for call in r.choices[0].message.tool_calls:
        assert MISTRAL_ID.fullmatch(call.id)
        jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])


def test_streamed_tool_call_deltas_concatenate_to_the_non_streamed_call(client, server):
    kwargs = dict(model=server.served.name, messages=MESSAGES, tools=[WEATHER], tool_choice=NAMED,
                  seed=7, temperature=1.0, max_tokens=80)
    full = client.chat.completions.create(**kwargs).choices[0].message.tool_calls[0]
    name, arguments, ids, finish, content = None, "", [], None, ""
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for tc in delta.tool_calls or ():
            assert tc.index == 0
            if tc.id:
                ids.append(tc.id)
            if tc.function and tc.function.name:
                name = tc.function.name
            if tc.function and tc.function.arguments:
                arguments += tc.function.arguments
        finish = chunk.choices[0].finish_reason or finish
    assert (name, arguments) == (full.function.name, full.function.arguments)
    assert ids == [full.id] and finish == "tool_calls" and content == ""


def test_tool_call_round_trip_is_accepted_and_renders(client, server, mistral):
    """The returned call, sent back with its tool result, is valid for mistral-common and
    renders the very text the model generated, followed by the tool result."""
    r = client.chat.completions.create(
        model=server.served.name, messages=MESSAGES, tools=[WEATHER], tool_choice=NAMED, seed=3,
        max_tokens=80, logprobs=True, extra_body={"return_tokens_as_token_ids": True})
    choice = r.choices[0]
    call = choice.message.tool_calls[0]
    generated = detokenize(server, [int(t.token.split(":")[1]) for t in choice.logprobs.content])
    history = MESSAGES + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "22 degrees"}]
    tokens = tokenize(server, messages=history, tools=[WEATHER])
    assert tokens == apply_mistral_chat_template(mistral, history, [WEATHER])
    text = detokenize(server, tokens)
    first_turn = detokenize(server, tokenize(server, messages=MESSAGES, tools=[WEATHER]))
    assert text.startswith(first_turn + generated + "</s>[TOOL_RESULTS] ")
    assert text.endswith(f'{{"content": "22 degrees", "call_id": "{call.id}"}}[/TOOL_RESULTS]')
    follow_up = client.chat.completions.create(model=server.served.name, messages=history, tools=[WEATHER],
                                               max_tokens=3, tool_choice="none")
    assert follow_up.usage.prompt_tokens == len(tokens)


# ------------------------------------------------------------------ validation errors

_CALL = {"id": "abcDEF123", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
INVALID = {
    "wrong_alternation": [MESSAGES[0], {"role": "tool", "tool_call_id": "abcDEF123", "content": "x"}],
    "tool_message_without_id": [MESSAGES[0], {"role": "assistant", "tool_calls": [_CALL]},
                                {"role": "tool", "content": "x"}],
    "openai_style_call_id": [MESSAGES[0], {"role": "assistant", "tool_calls": [{**_CALL, "id": "call_1"}]},
                             {"role": "tool", "tool_call_id": "call_1", "content": "x"}],
    "ends_with_assistant": [MESSAGES[0], {"role": "assistant", "content": "Sunny."}],
    "only_an_assistant_message": [{"role": "assistant", "content": "Hi"}],
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_mistral_common_validation_errors_are_400s_with_its_message(client, server, mistral, case):
    messages = INVALID[case]
    with pytest.raises(Exception) as raised:
        apply_mistral_chat_template(mistral, messages)
    expected = invalid_request_from_mistral_error(raised.value)
    assert expected is not None and expected.message == str(raised.value)
    for path, body in (("/v1/chat/completions", {"messages": messages, "max_tokens": 2}),
                       ("/v1/chat/completions", {"messages": messages, "max_tokens": 2, "stream": True}),
                       ("/tokenize", {"messages": messages})):
        response = httpx.post(server.base_url + path, json=body, timeout=30)
        assert response.status_code == 400, (path, response.text)
        error = response.json()["error"]
        assert error["message"] == expected.message and error["type"] == "invalid_request_error"
        assert error["param"] == "messages"
    # and the server keeps serving
    ok = client.chat.completions.create(model=server.served.name, messages=MESSAGES, max_tokens=2)
    assert ok.choices[0].finish_reason == "length"
