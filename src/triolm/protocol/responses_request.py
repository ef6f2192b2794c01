"""A Responses API request (`POST /v1/responses`) -> the chat request the chat pipeline
runs: input items become chat messages, function tools chat tools, `text.format` a
`response_format`, `max_output_tokens` the completion limit.

Fields that would change the answer but that this server cannot honour are refused with
a 400 naming them; only fields that change nothing here are accepted and ignored
(`IGNORED_FIELDS`, listed in docs/responses-api.md).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from triolm.protocol.errors import bad_request
from triolm.protocol.schemas import parse_body

IGNORED_FIELDS = ("store", "metadata", "user", "service_tier", "safety_identifier", "prompt_cache_key",
                  "stream_options", "background", "truncation", "include", "prompt_cache_retention")


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str | None = None
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = None
    previous_response_id: str | None = None
    stream: bool = False
    # accepted, change nothing here (IGNORED_FIELDS)
    store: bool | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    stream_options: dict[str, Any] | None = None
    background: Literal[False] | None = None
    truncation: Literal["disabled"] | None = None
    include: list[str] | None = Field(default=None, max_length=0)


# Fields of OpenAI's API this server cannot honour: a clear 400 when set, never a silent default.
UNSUPPORTED_FIELDS = ("reasoning", "top_logprobs", "max_tool_calls", "prompt", "conversation")


def parse_responses_request(data: dict[str, Any]) -> ResponsesRequest:
    for name in UNSUPPORTED_FIELDS:
        if data.get(name) is not None:
            raise bad_request(f"'{name}' is not supported by this server", param=name, code="unsupported_field")
    unknown = sorted(set(data) - set(ResponsesRequest.model_fields))
    if unknown:
        raise bad_request(f"unknown field '{unknown[0]}'", param=unknown[0], code="unknown_field")
    return parse_body(ResponsesRequest, data)


def _text_of(content: Any, where: str) -> str:
    """A message's content: a string, or a list of input_text/output_text parts joined."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(f"{where}.content must be a string or a list of content parts", param="input")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in ("input_text", "output_text") or not isinstance(part.get("text"), str):
            raise bad_request(f"{where}.content[{j}]: only input_text and output_text parts are supported, "
                              f"got {kind!r}", param="input")
        texts.append(part["text"])
    return "".join(texts)


def input_messages(items: str | list[dict[str, Any]]) -> list[dict]:
    """The request's input as chat messages. Function calls join the assistant message
    before them (one turn's parallel calls); reasoning items are dropped, as chat
    templates drop earlier turns' thinking."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    messages: list[dict] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise bad_request(f"{where} must be an object", param="input")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise bad_request(f"{where}.role must be user, assistant, system or developer, got {role!r}",
                                  param="input")
            messages.append({"role": role,
                             "content": _text_of(item.get("content"), where)})
        elif kind == "function_call":
            call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments")
            if not all(isinstance(v, str) for v in (call_id, name, arguments)):
                raise bad_request(f"{where}: a function_call needs string call_id, name and arguments",
                                  param="input")
            call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(call_id, str):
                raise bad_request(f"{where}: a function_call_output needs a string call_id", param="input")
            messages.append({"role": "tool", "tool_call_id": call_id, "content": _text_of(output, where)})
        elif kind == "reasoning":
            continue
        else:
            raise bad_request(f"{where}.type {kind!r} is not supported (message, function_call, "
                              "function_call_output, reasoning)", param="input")
    return messages


def chat_tools(tools: list[dict[str, Any]] | None) -> list[dict] | None:
    if tools is None:
        return None
    out = []
    for i, tool in enumerate(tools):
        if tool.get("type") != "function":
            raise bad_request(f"tools[{i}].type {tool.get('type')!r} is not supported: only function tools",
                              param="tools")
        function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
        out.append({"type": "function", "function": function})
    return out


def chat_tool_choice(choice: str | dict | None) -> str | dict | None:
    if choice is None or isinstance(choice, str):
        return choice
    if choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise bad_request("tool_choice must be none, auto, required or {\"type\": \"function\", \"name\": …}",
                      param="tool_choice")


def response_format(text: dict[str, Any] | None) -> dict | None:
    """`text.format` as chat's response_format (json_schema, json_object), None for text."""
    if text is None:
        return None
    unknown = sorted(set(text) - {"format"})
    if unknown:
        raise bad_request(f"text.{unknown[0]} is not supported", param="text")
    fmt = text.get("format")
    if fmt is None or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema":
        if not isinstance(fmt.get("schema"), dict):
            raise bad_request("text.format.schema must be a JSON schema object", param="text")
        return {"type": "json_schema", "json_schema": {"name": fmt.get("name", "response"),
                                                        "schema": fmt["schema"],
                                                        "strict": fmt.get("strict", True)}}
    raise bad_request(f"text.format.type {fmt.get('type')!r} is not supported (text, json_schema, json_object)",
                      param="text")


def chat_request(body: ResponsesRequest, history: list[dict]) -> dict:
    """The chat completion request this Responses request runs as. `history`: the chat
    messages of the previous response's conversation (`previous_response_id`); earlier
    instructions are not carried over, as in OpenAI's API."""
    messages = list(history)
    if body.instructions:
        messages.insert(0, {"role": "system", "content": body.instructions})
    messages += input_messages(body.input)
    chat: dict[str, Any] = {"model": body.model, "messages": messages, "temperature": body.temperature,
                            "top_p": body.top_p, "max_completion_tokens": body.max_output_tokens}
    tools = chat_tools(body.tools)
    if tools:
        chat["tools"] = tools
        chat["tool_choice"] = chat_tool_choice(body.tool_choice)
        chat["parallel_tool_calls"] = body.parallel_tool_calls
    elif body.tool_choice not in (None, "none", "auto"):
        raise bad_request("tool_choice requires tools", param="tool_choice")
    fmt = response_format(body.text)
    if fmt is not None:
        chat["response_format"] = fmt
    return {k: v for k, v in chat.items() if v is not None}


def output_messages(output: list[dict]) -> list[dict]:
    """A response's output items as the chat messages that continue its conversation."""
    content: list[str] = []
    calls: list[dict] = []
    for item in output:
        if item["type"] == "message":
            content += [part["text"] for part in item["content"]]
        elif item["type"] == "function_call":
            calls.append({"id": item["call_id"], "type": "function",
                          "function": {"name": item["name"], "arguments": item["arguments"]}})
    message: dict[str, Any] = {"role": "assistant", "content": "".join(content) if content or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return [message]


def conversation_size(messages: list[dict]) -> int:
    """Bytes a stored conversation holds, near enough (its JSON)."""
    return len(json.dumps(messages, ensure_ascii=False))
