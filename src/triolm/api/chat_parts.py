"""One chat generation as typed parts (thinking, answer text, tool-call headers and
argument fragments, the finish), for the protocols that shape a reply their own way
(the Responses and Messages APIs). The chat pipeline does the work: the request is a
`ChatPlan`, and the text is split by the same reasoning splitter and tool-call parser
that shape `/v1/chat/completions` deltas."""

from __future__ import annotations

from typing import AsyncIterator, Literal

import attrs

from triolm.api.chat import ChatRun
from triolm.api.chat_output import OutputStreamer
from triolm.api.tool_calls import tool_calls_finish_reason
from triolm.serving.fanout import Tick, TimedOut, merged_deltas


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


Part = TextPart | ToolCallStart | ToolCallArguments | Finished | Tick


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


class ChatPartsRun(ChatRun):
    """A one-generation chat run whose stream is `parts()`."""

    async def parts(self) -> AsyncIterator[Part]:
        """Parts in order, `Tick` while idle, and one `Finished` last. Errors of the
        generation (overload, a failed grammar) propagate: the caller tells them in its
        own protocol's error event."""
        p = self.plan
        gen = self.gens[0]
        streamer = OutputStreamer(tool_parser=p.tool_parser, tool_names=self.tool_names,
                                  reasoning=p.served.reasoning, prompt_text=p.prompt.text)
        finish: str | None = None
        stop_reason = None
        try:
            async with merged_deltas(self.gens, self.state.settings.request_timeout) as events:
                async for event in events:
                    if isinstance(event, Tick):
                        yield event
                        continue
                    if isinstance(event, TimedOut):
                        finish = "length"
                        for delta in streamer.finish(cut_short=True):
                            for part in parts_of_delta(delta):
                                yield part
                        break
                    _, delta = event
                    deltas = streamer.push(delta.text)
                    if delta.finish_reason is not None:
                        deltas += streamer.finish(cut_short=delta.finish_reason == "length")
                    for d in deltas:
                        for part in parts_of_delta(d):
                            yield part
                    if delta.finish_reason is not None:
                        finish, stop_reason = delta.finish_reason, delta.stop_reason
                        if streamer.saw_tool_call:
                            finish = tool_calls_finish_reason(finish)
        finally:
            self._observe()
        r = gen.result
        yield Finished(finish or "length", stop_reason, len(p.prompt.token_ids), len(r.tokens),
                       r.num_cached_prompt_tokens)
