"""Tool calls in responses: parse the finished text, or stream OpenAI tool-call deltas."""

from __future__ import annotations

from triolm.prompting.tool_parsers import get_tool_parser


def parse_tool_calls(parser_name: str, text: str, tool_names=None,
                     cut_short: bool = False) -> tuple[str | None, list[dict]]:
    """(content outside the calls, OpenAI tool_calls). Malformed markup stays content;
    `cut_short` (max_tokens): an unfinished call or marker at the end is dropped."""
    parsed = get_tool_parser(parser_name, tool_names).parse(text, cut_short=cut_short)
    return parsed.content, [call.to_openai() for call in parsed.tool_calls]


class ToolCallStreamer:
    """Turns text deltas into OpenAI `delta` dicts: content, then per call its header
    (index, id, type, name) and argument fragments."""

    def __init__(self, parser_name: str, tool_names=None):
        self.parser = get_tool_parser(parser_name, tool_names).streaming()
        self.saw_tool_call = False

    def _convert(self, events) -> list[dict]:
        out = []
        for event in events:
            if not event.is_content:
                self.saw_tool_call = True
            elif not event.content:
                continue
            out.append(event.to_openai())
        return out

    def push(self, text: str) -> list[dict]:
        return self._convert(self.parser.push(text)) if text else []

    def finish(self, cut_short: bool = False) -> list[dict]:
        return self._convert(self.parser.finish(cut_short=cut_short))

