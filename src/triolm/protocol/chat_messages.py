"""Chat messages, checked and normalized once (by the request schema) for every path that
renders them: Jinja templates, mistral-common, the generic tool format, sessions, echo.

A normalized message has a known role (`developer` is `system`: every template and
mistral-common read it so), and its `content` is a string, None (an assistant turn
with tool calls) or a list of text parts (`{"type": "text", "text": ...}`) on a user,
system or tool turn. The parts are kept because mistral-common encodes each as a chunk
of its own; `content_text` is the one way to read them as text. Assistant text parts
are joined (mistral-common's older encoders take only strings, templates only text).
Tool-call arguments stay as the client sent them (a JSON string, usually): mistral-common
hashes the exact string into its tokens; `tool_call_arguments` parses them for templates.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from triolm.protocol.errors import RequestError

ROLES = ("system", "developer", "user", "assistant", "tool")


def normalize_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The checked, normalized copy of a request's messages; a `RequestError` naming
    `messages` and the message at fault otherwise. The caller's dicts are not changed."""
    if not messages:
        raise RequestError("messages must not be empty", param="messages")
    return [_normalized(i, m) for i, m in enumerate(messages)]


def _normalized(i: int, message: dict[str, Any]) -> dict[str, Any]:
    role = message.get("role")
    if role not in ROLES:
        raise RequestError(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}", param="messages")
    content = message.get("content")
    if content is not None and not isinstance(content, (str, list)):
        raise RequestError(f"messages[{i}].content must be a string or a list of content parts", param="messages")
    if isinstance(content, list):
        for part in content:
            if not is_text_part(part):
                raise RequestError(f"messages[{i}].content: only text parts are supported", param="messages")
    if role == "tool" and not isinstance(message.get("tool_call_id", ""), str):
        raise RequestError(f"messages[{i}].tool_call_id must be a string", param="messages")
    if content is None and role != "assistant":
        raise RequestError(f"messages[{i}].content is required for role {role!r}", param="messages")
    out = dict(message)
    if role == "developer":
        out["role"] = "system"
    if role == "assistant" and isinstance(content, list):
        out["content"] = content_text(content)
    return out


def is_text_part(part: Any) -> bool:
    """A content part this server takes: `{"type": "text", "text": "..."}` (text models:
    images and audio are refused, never fetched)."""
    return isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str)


def content_text(content: str | list[dict[str, Any]] | None) -> str:
    """A normalized message's content as text (its text parts joined)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part["text"] for part in content)


def tool_call_arguments(arguments: Any) -> Any:
    """A tool call's arguments as templates read them: a JSON string parsed (text that is
    not JSON is left as it is), `{}` for none."""
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments if arguments is not None else {}
