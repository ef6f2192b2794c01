"""A chat choice's generated text -> the OpenAI message (or stream deltas): the reasoning
is split off first, then tool calls are parsed out of the answer that follows it.

The raw text (thinking and tool-call markup included) is what sessions record; only the
response is shaped.
"""

from __future__ import annotations

from triolm.prompting.reasoning import ReasoningFormat, ReasoningSplitter, prompt_opens_thinking
from triolm.prompting.tool_parsers import GENERIC_TOOL_PARSER
from triolm.protocol.tool_calls import ToolCallStreamer, parse_tool_calls


def _splitter(reasoning: ReasoningFormat | None, prompt_text: str) -> ReasoningSplitter | None:
    if reasoning is None:
        return None
    return ReasoningSplitter(reasoning, starts_inside=prompt_opens_thinking(prompt_text, reasoning))


def shape_message(text: str, *, tool_parser: str | None, tool_names, reasoning: ReasoningFormat | None,
                  prompt_text: str, cut_short: bool = False) -> tuple[dict, bool]:
    """(the assistant message, whether it holds tool calls). `cut_short` (max_tokens):
    complete calls are kept, an unfinished one dropped."""
    message: dict = {"role": "assistant", "content": text}
    splitter = _splitter(reasoning, prompt_text)
    if splitter is not None:
        thinking, text = splitter.split(text)
        message = {"role": "assistant", "content": text if text or not thinking else None,
                   "reasoning_content": thinking or None}
    if tool_parser is not None:
        content, calls = parse_tool_calls(tool_parser, text, tool_names, cut_short=cut_short)
        if calls:
            message.update(content=content, tool_calls=calls)
            return message, True
        if tool_parser == GENERIC_TOOL_PARSER or cut_short:
            # the generic answer is the envelope's decoded string; a cut reply loses its
            # unfinished markup
            message["content"] = content
    return message, False


class OutputStreamer:
    """Text deltas -> OpenAI `delta` dicts: reasoning_content, content, tool calls."""

    def __init__(self, *, tool_parser: str | None, tool_names, reasoning: ReasoningFormat | None,
                 prompt_text: str):
        self.splitter = _splitter(reasoning, prompt_text)
        self.tools = ToolCallStreamer(tool_parser, tool_names) if tool_parser else None

    @property
    def saw_tool_call(self) -> bool:
        return self.tools is not None and self.tools.saw_tool_call

    def push(self, text: str) -> list[dict]:
        if not text:
            return []
        if self.splitter is None:
            return self._answer(text)
        return self._parts(self.splitter.push(text))

    def finish(self, cut_short: bool = False) -> list[dict]:
        out = self._parts(self.splitter.finish()) if self.splitter is not None else []
        if self.tools is not None:
            out += self.tools.finish(cut_short=cut_short)
        return out

    def _parts(self, parts) -> list[dict]:
        out: list[dict] = []
        for kind, text in parts:
            if kind == "reasoning":
                out.append({"reasoning_content": text})
            else:
                out += self._answer(text)
        return out

    def _answer(self, text: str) -> list[dict]:
        return self.tools.push(text) if self.tools is not None else [{"content": text}]


def make_streamer(*, tool_parser: str | None, tool_names, reasoning: ReasoningFormat | None,
                  prompt_text: str) -> OutputStreamer | None:
    """None when the text needs no shaping (it streams as content, unchanged)."""
    if tool_parser is None and reasoning is None:
        return None
    return OutputStreamer(tool_parser=tool_parser, tool_names=tool_names, reasoning=reasoning,
                          prompt_text=prompt_text)
