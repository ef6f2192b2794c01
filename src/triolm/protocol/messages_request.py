"""An Anthropic Messages API request (`POST /v1/messages`) -> the chat request the chat
pipeline runs: `system` and content blocks become chat messages (`tool_use` blocks
assistant tool calls, `tool_result` blocks tool messages), tools chat tools.

Fields that would change the answer but that this server cannot honour are refused with
a 400 naming them; only fields that change nothing here are accepted and ignored
(listed in docs/messages-api.md).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from triolm.protocol.errors import bad_request
from triolm.protocol.schemas import parse_body

UNSUPPORTED_FIELDS = ("container", "mcp_servers", "context_management")


class CountTokensRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str | None = None
    messages: list[dict[str, Any]] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = Field(default=None, max_length=16)
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    stream: bool = False
    output_config: dict[str, Any] | None = None  # its `format` (json_schema) constrains the reply
    # accepted, change nothing here (prefix caching is automatic; one speed, one place)
    metadata: dict[str, Any] | None = None
    service_tier: Literal["auto", "standard_only"] | None = None
    cache_control: dict[str, Any] | None = None
    inference_geo: str | None = None
    speed: Literal["standard", "fast"] | None = None
    diagnostics: dict[str, Any] | None = None
    user_profile_id: str | None = None
    workspace_id: str | None = None


def parse_messages_request(kind: type[CountTokensRequest], data: dict[str, Any]) -> CountTokensRequest:
    for name in UNSUPPORTED_FIELDS:
        if data.get(name) is not None:
            raise bad_request(f"'{name}' is not supported by this server", param=name, code="unsupported_field")
    unknown = sorted(set(data) - set(kind.model_fields))
    if unknown:
        raise bad_request(f"unknown field '{unknown[0]}'", param=unknown[0], code="unknown_field")
    return parse_body(kind, data)


def _block_text(block: Any, where: str) -> str:
    if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
        kind = block.get("type") if isinstance(block, dict) else type(block).__name__
        raise bad_request(f"{where}: only text blocks are supported here, got {kind!r}", param="messages")
    return block["text"]


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(f"{where} must be a string or a list of content blocks", param="messages")
    return "".join(_block_text(block, f"{where}[{j}]") for j, block in enumerate(content))


def system_text(system: str | list[dict] | None) -> str | None:
    if system is None or isinstance(system, str):
        return system or None
    return "".join(_block_text(block, f"system[{j}]") for j, block in enumerate(system)) or None


def chat_messages(body: CountTokensRequest) -> list[dict]:
    """`system` and `messages` as chat messages. In a user turn, tool results come first
    (as tool messages, in their order), then its text; in an assistant turn, text then
    tool calls. Earlier thinking blocks are dropped, as chat templates drop them."""
    out: list[dict] = []
    system = system_text(body.system)
    if system:
        out.append({"role": "system", "content": system})
    for i, message in enumerate(body.messages):
        where = f"messages[{i}]"
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise bad_request(f"{where}.role must be user or assistant, got {role!r}", param="messages")
        content = message.get("content")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise bad_request(f"{where}.content must be a string or a list of content blocks", param="messages")
        texts: list[str] = []
        calls: list[dict] = []
        for j, block in enumerate(content):
            at = f"{where}.content[{j}]"
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                texts.append(_block_text(block, at))
            elif kind == "tool_use" and role == "assistant":
                if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str) \
                        or not isinstance(block.get("input"), dict):
                    raise bad_request(f"{at}: a tool_use block needs a string id and name and an object input",
                                      param="messages")
                calls.append({"id": block["id"], "type": "function",
                              "function": {"name": block["name"], "arguments": json.dumps(block["input"])}})
            elif kind == "tool_result" and role == "user":
                if not isinstance(block.get("tool_use_id"), str):
                    raise bad_request(f"{at}: a tool_result block needs a string tool_use_id", param="messages")
                out.append({"role": "tool", "tool_call_id": block["tool_use_id"],
                            "content": _text_of(block.get("content", ""), f"{at}.content")})
            elif kind in ("thinking", "redacted_thinking") and role == "assistant":
                continue
            else:
                raise bad_request(f"{at}: a {kind!r} block is not supported in a {role} message",
                                  param="messages")
        if texts or calls or not content:
            message_out: dict[str, Any] = {"role": role, "content": "".join(texts) if texts or not calls else None}
            if calls:
                message_out["tool_calls"] = calls
            out.append(message_out)
    return out


def chat_tools(tools: list[dict] | None) -> list[dict] | None:
    if tools is None:
        return None
    out = []
    for i, tool in enumerate(tools):
        if tool.get("type") not in (None, "custom") or not isinstance(tool.get("name"), str):
            raise bad_request(f"tools[{i}]: only custom tools (name, description, input_schema) are supported, "
                              f"got type {tool.get('type')!r}", param="tools")
        function = {"name": tool["name"], "parameters": tool.get("input_schema") or {"type": "object"}}
        if tool.get("description") is not None:
            function["description"] = tool["description"]
        out.append({"type": "function", "function": function})
    return out


def chat_tool_choice(choice: dict | None) -> tuple[str | dict | None, bool | None]:
    """(chat tool_choice, parallel_tool_calls)."""
    if choice is None:
        return None, None
    kind = choice.get("type")
    parallel = False if choice.get("disable_parallel_tool_use") else None
    if kind in ("auto", "none"):
        return kind, parallel
    if kind == "any":
        return "required", parallel
    if kind == "tool" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}, parallel
    raise bad_request("tool_choice.type must be auto, any, tool (with a name) or none", param="tool_choice")


def check_thinking(thinking: dict | None, model_thinks: bool) -> None:
    """`thinking` enabled needs a model whose thinking the server can return as thinking
    blocks; `budget_tokens` then bounds nothing beyond max_tokens."""
    if thinking is None or thinking.get("type") == "disabled":
        return
    if thinking.get("type") in ("enabled", "adaptive") and model_thinks:
        return
    raise bad_request("thinking is only available on a model with a reasoning parser (see --reasoning-parser)",
                      param="thinking")


def response_format(output_config: dict | None) -> dict | None:
    """`output_config.format` (json_schema) as chat's response_format; `effort` cannot be
    honoured by a model without effort levels."""
    if not output_config:
        return None
    unknown = sorted(k for k, v in output_config.items() if k != "format" and v is not None)
    if unknown:
        raise bad_request(f"output_config.{unknown[0]} is not supported by this server", param="output_config")
    fmt = output_config.get("format")
    if fmt is None:
        return None
    if fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
        raise bad_request("output_config.format must be {\"type\": \"json_schema\", \"schema\": {…}}",
                          param="output_config")
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt["schema"], "strict": True}}


def chat_request(body: CountTokensRequest) -> dict:
    """The chat completion request a Messages (or count_tokens) request runs as."""
    messages = chat_messages(body)
    chat: dict[str, Any] = {"model": body.model, "messages": messages}
    if messages[-1]["role"] == "assistant" and not messages[-1].get("tool_calls"):
        chat["continue_final_message"] = True  # a prefill: the reply continues that text
        chat["add_generation_prompt"] = False
    tools = chat_tools(body.tools)
    choice, parallel = chat_tool_choice(body.tool_choice)
    if tools:
        chat.update(tools=tools, tool_choice=choice, parallel_tool_calls=parallel)
    elif choice not in (None, "none", "auto"):
        raise bad_request("tool_choice requires tools", param="tool_choice")
    if isinstance(body, MessagesRequest):
        chat.update(max_completion_tokens=body.max_tokens, stop=body.stop_sequences,
                    temperature=body.temperature, top_p=body.top_p, top_k=body.top_k,
                    response_format=response_format(body.output_config))
    return {k: v for k, v in chat.items() if v is not None}
