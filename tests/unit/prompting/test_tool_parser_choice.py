"""The tool-call parser is chosen in one place: per model (`model_tool_parser`, at load)
and per reply (`reply_tool_parser`, by the request resolver, the router and sessions)."""

from __future__ import annotations

import pytest

from triolm.prompting.tool_parsers import GENERIC_TOOL_PARSER, model_tool_parser, reply_tool_parser

TOOLS = [{"type": "function", "function": {"name": "f"}}]


@pytest.mark.parametrize(("flag", "template", "architecture", "mistral", "expected"), [
    ("llama3_json", "<tool_call>", "qwen2", False, "llama3_json"),  # the flag wins
    (None, "{{ messages }}", "llama", True, "mistral"),  # mistral-common renders it
    (None, "{% if tools %}<tool_call>{% endif %}", "qwen2", False, "hermes"),
    (None, "[TOOL_CALLS]", "llama", False, "mistral"),
    (None, None, "mistral", False, "mistral"),  # template-less Mistral family
    (None, "{{ messages }}", "llama", False, GENERIC_TOOL_PARSER),  # no tool support: the generic format
])
def test_model_tool_parser(flag, template, architecture, mistral, expected):
    assert model_tool_parser(flag, template, architecture, mistral_tokenizer=mistral) == expected


@pytest.mark.parametrize(("parser", "tools", "tool_choice", "expected"), [
    ("hermes", None, None, None),  # no tools: the reply is text
    ("hermes", [], "auto", None),
    ("hermes", TOOLS, None, "hermes"),
    ("hermes", TOOLS, "required", "hermes"),
    ("hermes", TOOLS, "none", None),
    (GENERIC_TOOL_PARSER, TOOLS, "none", GENERIC_TOOL_PARSER),  # its replies are JSON objects even then
    (GENERIC_TOOL_PARSER, None, "none", None),
])
def test_reply_tool_parser(parser, tools, tool_choice, expected):
    assert reply_tool_parser(parser, tools, tool_choice) == expected
