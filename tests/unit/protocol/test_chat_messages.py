"""Chat messages are checked and normalized once (triolm.protocol.chat_messages), by the
request schema, for every path that renders them."""

from __future__ import annotations

import pytest

from triolm.protocol.chat_messages import content_text, normalize_messages, tool_call_arguments
from triolm.protocol.errors import APIError, RequestError
from triolm.protocol.schemas import ChatCompletionRequest
from triolm.protocol.validation import parse_request


def test_roles_and_contents_are_normalized_and_the_callers_dicts_kept():
    given = [{"role": "developer", "content": "Be brief."},
             {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
             {"role": "assistant", "content": [{"type": "text", "text": "c"}]},
             {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function",
                                                                    "function": {"name": "f", "arguments": "{}"}}]},
             {"role": "tool", "tool_call_id": "1", "content": "ok"}]
    out = normalize_messages(given)
    assert [m["role"] for m in out] == ["system", "user", "assistant", "assistant", "tool"]
    assert out[1]["content"] == given[1]["content"]  # user parts stay chunks (mistral-common encodes each)
    assert out[2]["content"] == "c"
    assert out[3]["content"] is None and out[3]["tool_calls"] == given[3]["tool_calls"]
    assert given[0]["role"] == "developer" and given[2]["content"] == [{"type": "text", "text": "c"}]


@pytest.mark.parametrize(("messages", "fragment"), [
    ([], "must not be empty"),
    ([{"role": "bot", "content": "x"}], "messages[0].role"),
    ([{"role": "user", "content": 5}], "messages[0].content must be"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "only text parts"),
    ([{"role": "tool", "tool_call_id": 3, "content": "x"}], "tool_call_id"),
    ([{"role": "user", "content": None}], "content is required"),
])
def test_bad_messages_are_refused_naming_messages(messages, fragment):
    with pytest.raises(RequestError) as caught:
        normalize_messages(messages)
    assert caught.value.param == "messages" and fragment in caught.value.message


def test_the_request_schema_holds_the_normalized_messages():
    body = parse_request(ChatCompletionRequest, {"messages": [{"role": "developer", "content": "x"},
                                                              {"role": "user", "content": "y"}]})
    assert body.messages[0]["role"] == "system"
    with pytest.raises(APIError) as caught:
        parse_request(ChatCompletionRequest, {"messages": [{"role": "bot", "content": "x"}]})
    assert caught.value.param == "messages" and "messages[0].role" in caught.value.message


def test_content_text_and_tool_call_arguments():
    assert content_text([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]) == "ab"
    assert content_text(None) == ""
    assert tool_call_arguments('{"city": "Paris"}') == {"city": "Paris"}
    assert tool_call_arguments("not json") == "not json"
    assert tool_call_arguments(None) == {}
