"""triolm.prompting.mistral beyond the event-loop contract: OpenAI -> mistral-common
conversion, the prompt result, the server's error mapping, the tool-call parser and
tokenizer discovery. Oracle: mistral-common itself (its own message classes and
its own encoding of assistant tool calls)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import mistral_common
import pytest
from mistral_common.exceptions import InvalidMessageStructureException, InvalidRequestException
from mistral_common.protocol.instruct.chunk import TextChunk
from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, ToolMessage, UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.protocol.instruct.tool_calls import Function, FunctionCall, Tool, ToolCall
from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy, TokenizerVersion
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
from mistral_common.tokens.tokenizers.tekken import Tekkenizer

from triolm.errors import InvalidRequestError, ModelLoadError
from triolm.prompting.mistral import (
    MistralPrompt,
    apply_mistral_chat_template,
    async_render_mistral_prompt,
    invalid_request_from_mistral_error,
    mistral_request_errors,
    render_mistral_prompt,
)
from triolm.prompting.tool_parsers.mistral import mistral_call_id
from triolm.protocol.tool_calls import parse_tool_calls
from triolm.tokenizers.mistral_tokenizer import find_mistral_tokenizer_file, load_mistral_tokenizer

DATA = Path(mistral_common.__file__).parent / "data"
ID_RE = re.compile(r"^[a-zA-Z0-9]{9}$")

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CALLS = [
    {"id": "abcDEF123", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
    {"id": "Xyz987uvw", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Köln"}'}},
]
TOOL_CHAT = [
    {"role": "system", "content": "Use tools."},
    {"role": "user", "content": "Weather in Paris and Köln?"},
    {"role": "assistant", "content": None, "tool_calls": CALLS},
    {"role": "tool", "tool_call_id": "abcDEF123", "content": "sunny"},
    {"role": "tool", "tool_call_id": "Xyz987uvw", "content": "rain"},
]


@pytest.fixture(scope="module")
def v3() -> MistralTokenizer:
    return MistralTokenizer.v3()


@pytest.fixture(scope="module")
def tekken() -> MistralTokenizer:
    return MistralTokenizer.from_file(str(DATA / "tekken_240911.json"))


@pytest.fixture(scope="module", params=["v3", "tekken"])
def tokenizer(request, v3, tekken) -> MistralTokenizer:
    return {"v3": v3, "tekken": tekken}[request.param]


# ------------------------------------------------------------------ conversion


def test_tool_conversation_matches_mistral_common_objects(tokenizer):
    native = ChatCompletionRequest(
        messages=[
            SystemMessage(content="Use tools."),
            UserMessage(content="Weather in Paris and Köln?"),
            AssistantMessage(
                tool_calls=[
                    ToolCall(id="abcDEF123", function=FunctionCall(name="get_weather", arguments='{"city": "Paris"}')),
                    ToolCall(id="Xyz987uvw", function=FunctionCall(name="get_weather", arguments='{"city": "Köln"}')),
                ]
            ),
            ToolMessage(tool_call_id="abcDEF123", content="sunny"),
            ToolMessage(tool_call_id="Xyz987uvw", content="rain"),
        ],
        tools=[Tool(function=Function(**WEATHER["function"]))],
    )
    expected = tokenizer.encode_chat_completion(native).tokens

    assert apply_mistral_chat_template(tokenizer, TOOL_CHAT, tools=[WEATHER]) == expected


def test_user_text_parts_are_mistral_text_chunks(tokenizer):
    parts = [{"type": "text", "text": "Part one."}, {"type": "text", "text": "Part two."}]
    native = ChatCompletionRequest(messages=[UserMessage(content=[TextChunk(text="Part one."), TextChunk(text="Part two.")])])

    assert apply_mistral_chat_template(tokenizer, [{"role": "user", "content": parts}]) == (
        tokenizer.encode_chat_completion(native).tokens
    )


def test_assistant_text_parts_are_joined(tokenizer):
    def chat(content):
        return [{"role": "user", "content": "a"}, {"role": "assistant", "content": content}, {"role": "user", "content": "b"}]

    parts = [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world."}]
    assert apply_mistral_chat_template(tokenizer, chat(parts)) == apply_mistral_chat_template(tokenizer, chat("Hello, world."))


def test_developer_role_is_system(v3):
    user = {"role": "user", "content": "hi"}
    assert apply_mistral_chat_template(v3, [{"role": "developer", "content": "Be brief."}, user]) == (
        apply_mistral_chat_template(v3, [{"role": "system", "content": "Be brief."}, user])
    )


def test_caller_messages_are_not_mutated(v3):
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "tool_calls": CALLS[:1]}, {"role": "tool", "content": "x"}]
    snapshot = json.loads(json.dumps(messages))
    with pytest.raises(InvalidRequestException):
        apply_mistral_chat_template(v3, messages)
    assert messages == snapshot


def test_continue_final_message_leaves_the_assistant_turn_open(v3):
    chat = [{"role": "user", "content": "Count to three."}, {"role": "assistant", "content": "One, two,"}]
    ids = apply_mistral_chat_template(v3, chat, continue_final_message=True)
    raw = v3.instruct_tokenizer.tokenizer

    assert ids[-1] != raw.eos_id
    assert ids[-3:] == raw.encode("One, two,", bos=False, eos=False)[-3:]
    assert render_mistral_prompt(v3, chat, continue_final_message=True).text.endswith("[/INST] One, two,")


def test_template_kwargs_without_meaning_for_mistral_are_ignored(v3):
    chat = [{"role": "user", "content": "hi"}]
    assert apply_mistral_chat_template(v3, chat, add_generation_prompt=True, enable_thinking=False) == (
        apply_mistral_chat_template(v3, chat)
    )


def test_image_parts_are_refused_without_touching_the_network(tekken):
    chat = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://192.0.2.1/cat.png"}}]}]
    with pytest.raises(InvalidRequestException, match=r"messages\[0\]\.content\[0\].*'image_url'"):
        apply_mistral_chat_template(tekken, chat)


# ------------------------------------------------------------------ prompt result and error mapping


def test_render_gives_ids_and_text_with_special_tokens(tokenizer):
    prompt = render_mistral_prompt(tokenizer, TOOL_CHAT, tools=[WEATHER])

    assert isinstance(prompt, MistralPrompt)
    assert prompt.token_ids == apply_mistral_chat_template(tokenizer, TOOL_CHAT, tools=[WEATHER])
    assert prompt.text.startswith("<s>[AVAILABLE_TOOLS]")
    assert "[TOOL_CALLS]" in prompt.text and "[TOOL_RESULTS]" in prompt.text
    assert "Use tools.\n\nWeather in Paris and Köln?[/INST]" in prompt.text
    assert "▁" not in prompt.text  # no raw sentencepiece pieces


def test_render_text_tekken_is_mistral_commons_decode(tekken):
    prompt = render_mistral_prompt(tekken, TOOL_CHAT, tools=[WEATHER])
    assert prompt.text == tekken.decode(prompt.token_ids, special_token_policy=SpecialTokenPolicy.KEEP)


def test_render_text_sentencepiece_is_surface_text(v3):
    chat = [{"role": "user", "content": "Count to three.\n\nNew line é 🙂"}, {"role": "assistant", "content": "One, two,"}]
    prompt = render_mistral_prompt(v3, chat, continue_final_message=True)
    # the spaces are real: v3 encodes '▁Count' and '▁One' after the control tokens
    assert prompt.text == "<s>[INST] Count to three.\n\nNew line é 🙂[/INST] One, two,"


async def test_async_render_maps_request_errors_to_invalid_request(v3):
    with pytest.raises(InvalidRequestError) as info:
        await async_render_mistral_prompt(v3, [{"role": "user", "content": "a"}, {"role": "tool", "content": "x"}])

    assert info.value.param == "messages"
    assert isinstance(info.value.__cause__, InvalidMessageStructureException)
    assert info.value.message == str(info.value.__cause__) == "Unexpected role 'tool' after role 'user'"


async def test_async_render_result(v3):
    prompt = await async_render_mistral_prompt(v3, [{"role": "user", "content": "hi"}])
    assert prompt == render_mistral_prompt(v3, [{"role": "user", "content": "hi"}])


@pytest.mark.parametrize(
    ("messages", "tools", "param", "fragment"),
    [
        ([{"role": "invalid_role", "content": "x"}], None, "messages", "Unknown message role: invalid_role"),
        ([], None, "messages", "at least one message"),
        ([{"role": "user"}], None, "messages", "Invalid UserMessage: content"),
        ([{"role": "user", "content": "x"}], [{"type": "function", "function": {"name": "a b"}}], "tools", "Function name was a b"),
        ([{"role": "user", "content": "x"}], [{"type": "function"}], "tools", "Invalid Tool: function: Field required"),
    ],
)
def test_mistral_request_errors_become_400s(v3, messages, tools, param, fragment):
    with pytest.raises(InvalidRequestError) as info:
        with mistral_request_errors():
            apply_mistral_chat_template(v3, messages, tools=tools)
    assert info.value.param == param
    assert fragment in info.value.message
    assert info.value.__cause__ is not None


def test_unrelated_errors_are_not_400s():
    assert invalid_request_from_mistral_error(RuntimeError("bug")) is None
    with pytest.raises(KeyError):
        with mistral_request_errors():
            raise KeyError("bug")


# ------------------------------------------------------------------ tool-call parsing


def _assistant_text(tokenizer: MistralTokenizer, calls: list[dict]) -> str:
    """What the model is trained to emit for `calls`: mistral-common's own encoding
    of the assistant turn, as text with special tokens kept."""
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": None, "tool_calls": calls}]
    for call in calls:
        chat.append({"role": "tool", "tool_call_id": call["id"], "content": "r"})
    text = render_mistral_prompt(tokenizer, chat).text
    return text.split("[/INST]", 1)[1].split("</s>", 1)[0]


def _synthetic_tekken(tmp_dir: Path, version: str) -> MistralTokenizer:
    """A tekken tokenizer of a newer version (no such file ships with mistral-common),
    built from the shipped vocabulary plus the [ARGS]/[CALL_ID] control tokens."""
    spec = json.loads((DATA / "tekken_240718.json").read_text())
    specials = [
        {"rank": t["rank"], "token_str": str(t["token_str"].value), "is_control": True}
        for t in Tekkenizer.DEPRECATED_SPECIAL_TOKENS
    ]
    for name in ("[ARGS]", "[CALL_ID]"):
        specials.append({"rank": len(specials), "token_str": name, "is_control": True})
    spec["config"]["version"] = version
    spec["special_tokens"] = specials
    path = tmp_dir / f"tekken_{version}.json"
    path.write_text(json.dumps(spec))
    return MistralTokenizer.from_file(str(path))


@pytest.fixture(scope="module")
def newer_tekkens(tmp_path_factory) -> dict[str, MistralTokenizer]:
    tmp = tmp_path_factory.mktemp("tekken")
    return {v: _synthetic_tekken(tmp, v) for v in ("v11", "v13")}


def _expected(calls: list[dict]) -> list[tuple[str, dict]]:
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]


def _got(tool_calls: list[dict]) -> list[tuple[str, dict]]:
    for call in tool_calls:
        assert call["type"] == "function"
        assert ID_RE.match(call["id"])
        assert isinstance(call["function"]["arguments"], str)
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in tool_calls]


@pytest.mark.parametrize("name", ["v3", "tekken", "v7"])
def test_parse_json_list_format_round_trip(name, v3, tekken):
    tokenizer = {"v3": v3, "tekken": tekken, "v7": MistralTokenizer.v7()}[name]
    text = _assistant_text(tokenizer, CALLS)
    assert text.lstrip().startswith("[TOOL_CALLS]")

    content, tool_calls = parse_tool_calls("mistral", text)

    assert content is None
    assert _got(tool_calls) == _expected(CALLS)
    assert [c["id"] for c in tool_calls] == ["abcDEF123", "Xyz987uvw"]  # v3+ writes the ids; kept


@pytest.mark.parametrize("version", ["v11", "v13"])
def test_parse_name_args_format_round_trip(newer_tekkens, version):
    tokenizer = newer_tekkens[version]
    assert tokenizer.version == TokenizerVersion(version)
    text = _assistant_text(tokenizer, CALLS)
    assert "[ARGS]" in text and text.count("[TOOL_CALLS]") == 2
    assert ("[CALL_ID]" in text) == (version == "v11")

    content, tool_calls = parse_tool_calls("mistral", text)

    assert content is None
    assert _got(tool_calls) == _expected(CALLS)
    if version == "v11":
        assert [c["id"] for c in tool_calls] == ["abcDEF123", "Xyz987uvw"]


def test_parse_keeps_content_before_the_calls_and_makes_ids():
    text = 'Let me check.[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]'
    content, tool_calls = parse_tool_calls("mistral", text)

    assert content == "Let me check."
    assert _got(tool_calls) == [("get_weather", {"city": "Paris"})]


def test_parse_replaces_ids_not_in_mistral_format():
    _, calls = parse_tool_calls("mistral", '[TOOL_CALLS][{"name": "f", "arguments": {}, "id": "call_0"}]')
    assert calls[0]["id"] != "call_0" and ID_RE.match(calls[0]["id"])


def test_plain_text_has_no_tool_calls():
    assert parse_tool_calls("mistral", "Just an answer [with brackets].") == ("Just an answer [with brackets].", [])


@pytest.mark.parametrize(
    "text",
    [
        '[TOOL_CALLS][{"name": "f", "arguments": {"x": 1}',  # truncated (max_tokens)
        '[TOOL_CALLS][{"arguments": {}}]',
        '[TOOL_CALLS][{"name": "not a name", "arguments": {}}]',
        '[TOOL_CALLS][{"name": "f", "arguments": [1, 2]}]',
        "[TOOL_CALLS][]",
        "[TOOL_CALLS]",
        "[TOOL_CALLS]f{}",
        "[TOOL_CALLS]f[ARGS]{broken",
        "[TOOL_CALLS]" + "[" * 5000,  # deeply nested garbage does not crash the parser
    ],
)
def test_malformed_tool_calls_stay_plain_content(text):
    assert parse_tool_calls("mistral", text) == (text, [])


def test_tool_call_ids_are_mistral_format_and_distinct():
    ids = {mistral_call_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(ID_RE.match(i) for i in ids)


# ------------------------------------------------------------------ loading


def _place(directory: Path, source: Path, name: str) -> None:
    os.symlink(source, directory / name)


def test_find_prefers_tekken_json(tmp_path):
    _place(tmp_path, DATA / "mistral_instruct_tokenizer_241114.model.v7", "tokenizer.model.v7")
    _place(tmp_path, DATA / "tekken_240911.json", "tekken.json")
    assert find_mistral_tokenizer_file(tmp_path) == tmp_path / "tekken.json"


def test_find_takes_the_newest_versioned_sentencepiece(tmp_path):
    _place(tmp_path, DATA / "tokenizer.model.v1", "tokenizer.model")  # Hugging Face's: never chosen
    _place(tmp_path, DATA / "mistral_instruct_tokenizer_240323.model.v3", "tokenizer.model.v3")
    _place(tmp_path, DATA / "mistral_instruct_tokenizer_241114.model.v7", "tokenizer.model.v7")
    assert find_mistral_tokenizer_file(tmp_path) == tmp_path / "tokenizer.model.v7"
    assert load_mistral_tokenizer(tmp_path).version == TokenizerVersion.v7


def test_hf_only_directory_has_no_mistral_tokenizer(tmp_path):
    _place(tmp_path, DATA / "tokenizer.model.v1", "tokenizer.model")
    (tmp_path / "tokenizer.json").write_text("{}")
    assert find_mistral_tokenizer_file(tmp_path) is None
    with pytest.raises(ModelLoadError, match="no mistral-common tokenizer file"):
        load_mistral_tokenizer(tmp_path)


def test_load_from_a_model_directory_matches_v3(tmp_path, v3):
    _place(tmp_path, DATA / "mistral_instruct_tokenizer_240323.model.v3", "tokenizer.model.v3")
    loaded = load_mistral_tokenizer(tmp_path)
    chat = [{"role": "user", "content": "Hello"}]
    assert apply_mistral_chat_template(loaded, chat) == apply_mistral_chat_template(v3, chat)


def test_load_a_tokenizer_file_directly():
    assert load_mistral_tokenizer(DATA / "tekken_240911.json").version == TokenizerVersion.v3


def test_load_errors_name_the_path(tmp_path):
    with pytest.raises(ModelLoadError, match="no such tokenizer file"):
        load_mistral_tokenizer(tmp_path / "missing")
    (tmp_path / "tekken.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"tekken\.json: not a loadable mistral-common tokenizer"):
        load_mistral_tokenizer(tmp_path)


def test_tool_message_ids_from_parsed_calls_are_accepted_back(v3):
    """Round trip of a whole tool turn: ids we mint are valid for Mistral's validator."""
    _, calls = parse_tool_calls("mistral", '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]')
    chat = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": "sunny"},
    ]
    assert apply_mistral_chat_template(v3, chat, tools=[WEATHER])


def test_symlinked_files_copy_equivalent(tmp_path):
    """Directories may hold real copies rather than links."""
    shutil.copy(DATA / "mistral_instruct_tokenizer_240323.model.v3", tmp_path / "tokenizer.model.v3")
    assert load_mistral_tokenizer(tmp_path).version == TokenizerVersion.v3
