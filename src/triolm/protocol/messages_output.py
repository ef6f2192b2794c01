"""A chat reply -> Anthropic Messages API objects: the message with its content blocks
(thinking, text, tool_use), stop reasons, usage, and the stream events (message_start,
content_block_start/delta/stop, message_delta, message_stop, ping)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

from triolm.protocol.reply_parts import Finished, Part, TextPart, ToolCallArguments, ToolCallStart


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def stop_reason(finish_reason: str, matched: str | int | None) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) for a chat finish_reason and its matched stop."""
    if finish_reason == "tool_calls":
        return "tool_use", None
    if finish_reason == "length":
        return "max_tokens", None
    if isinstance(matched, str):
        return "stop_sequence", matched
    return "end_turn", None


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    """Anthropic counts cached prompt tokens apart from `input_tokens`."""
    return {"input_tokens": prompt_tokens - cached_tokens, "output_tokens": completion_tokens,
            "cache_read_input_tokens": cached_tokens, "cache_creation_input_tokens": 0}


def tool_input(arguments: str) -> dict:
    """A call's arguments as the `input` object (the parsers emit JSON objects)."""
    try:
        value = json.loads(arguments) if arguments else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def content_blocks(message: dict) -> list[dict]:
    blocks = []
    if message.get("reasoning_content"):
        blocks.append({"type": "thinking", "thinking": message["reasoning_content"], "signature": ""})
    if message.get("content"):
        blocks.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or ():
        blocks.append({"type": "tool_use", "id": call["id"], "name": call["function"]["name"],
                       "input": tool_input(call["function"]["arguments"])})
    return blocks


def message_object(message_id: str, model: str, content: list[dict], stop: str | None,
                   stop_sequence: str | None, usage_: dict) -> dict:
    return {"id": message_id, "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": stop, "stop_sequence": stop_sequence, "usage": usage_}


def from_chat_completion(message_id: str, chat: dict) -> dict:
    choice = chat["choices"][0]
    u = chat["usage"]
    stop, sequence = stop_reason(choice["finish_reason"], choice.get("stop_reason"))
    return message_object(message_id, chat["model"], content_blocks(choice["message"]), stop, sequence,
                          usage(u["prompt_tokens"], u["completion_tokens"],
                                u["prompt_tokens_details"]["cached_tokens"]))


class MessageEvents:
    """Parts of a chat reply -> Messages stream events (dicts). Each run of one kind of
    part is one content block, started and stopped around its deltas."""

    def __init__(self, message_id: str, model: str):
        self.message_id = message_id
        self.model = model
        self.index = -1  # the current block's index
        self.open: str | None = None  # "thinking" | "text" | "tool_use"
        self.open_call: int | None = None

    def start(self, prompt_tokens: int) -> Iterator[dict]:
        yield {"type": "message_start", "message": message_object(
            self.message_id, self.model, [], None, None, usage(prompt_tokens, 0, 0))}
        yield {"type": "ping"}

    def push(self, part: Part) -> Iterator[dict]:
        if isinstance(part, TextPart):
            kind = "thinking" if part.kind == "reasoning" else "text"
            if self.open != kind:
                yield from self._stop()
                block = {"type": "thinking", "thinking": "", "signature": ""} if kind == "thinking" else \
                    {"type": "text", "text": ""}
                yield from self._start(kind, block)
            delta = {"type": "thinking_delta", "thinking": part.text} if kind == "thinking" else \
                {"type": "text_delta", "text": part.text}
            yield {"type": "content_block_delta", "index": self.index, "delta": delta}
        elif isinstance(part, ToolCallStart):
            yield from self._stop()
            yield from self._start("tool_use", {"type": "tool_use", "id": part.call_id, "name": part.name,
                                                "input": {}})
            self.open_call = part.index
        elif isinstance(part, ToolCallArguments) and self.open == "tool_use" and self.open_call == part.index:
            yield {"type": "content_block_delta", "index": self.index,
                   "delta": {"type": "input_json_delta", "partial_json": part.fragment}}

    def finish(self, finished: Finished) -> Iterator[dict]:
        yield from self._stop()
        stop, sequence = stop_reason(finished.finish_reason, finished.stop_reason)
        u = usage(finished.prompt_tokens, finished.completion_tokens, finished.cached_tokens)
        yield {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": sequence}, "usage": u}
        yield {"type": "message_stop"}

    def _start(self, kind: str, block: dict[str, Any]) -> Iterator[dict]:
        self.index += 1
        self.open = kind
        yield {"type": "content_block_start", "index": self.index, "content_block": block}

    def _stop(self) -> Iterator[dict]:
        if self.open is not None:
            yield {"type": "content_block_stop", "index": self.index}
        self.open, self.open_call = None, None
