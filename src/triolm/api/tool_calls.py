"""Tool calls in responses: parse the finished text, or stream OpenAI tool-call deltas."""

from __future__ import annotations


def parse_tool_calls(parser_name: str, text: str) -> tuple[str | None, list[dict]]:
    return text, []


class ToolCallStreamer:
    def __init__(self, parser_name: str):
        self.saw_tool_call = False

    def push(self, text: str) -> list[dict]:
        return [{"content": text}] if text else []

    def finish(self) -> list[dict]:
        return []
