"""One chat reply as typed parts — thinking, answer text, tool-call headers and argument
fragments, the finish — for the protocols that shape a reply their own way (the
Responses and Messages APIs). They come from the same `OutputStreamer` deltas that shape
`/v1/chat/completions` chunks."""

from __future__ import annotations

from typing import Literal

import attrs


@attrs.frozen
class TextPart:
    kind: Literal["reasoning", "text"]
    text: str


@attrs.frozen
class ToolCallStart:
    index: int
    call_id: str
    name: str


@attrs.frozen
class ToolCallArguments:
    index: int
    fragment: str


@attrs.frozen
class Finished:
    """`finish_reason` as chat completions say it ("stop", "length", "tool_calls");
    `stop_reason` the matched stop string or stop token id."""

    finish_reason: str
    stop_reason: str | int | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


Part = TextPart | ToolCallStart | ToolCallArguments | Finished


def parts_of_delta(delta: dict) -> list[Part]:
    """A chat `delta` dict (`OutputStreamer` output) as parts."""
    if delta.get("reasoning_content"):
        return [TextPart("reasoning", delta["reasoning_content"])]
    if delta.get("content"):
        return [TextPart("text", delta["content"])]
    out: list[Part] = []
    for call in delta.get("tool_calls") or ():
        function = call.get("function") or {}
        if call.get("id") is not None:
            out.append(ToolCallStart(call["index"], call["id"], function.get("name") or ""))
        if function.get("arguments"):
            out.append(ToolCallArguments(call["index"], function["arguments"]))
    return out
