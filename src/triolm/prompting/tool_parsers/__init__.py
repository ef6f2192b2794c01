"""Tool-call parsers, one per model output format, and how to pick one for a model.

    parser = get_tool_parser("hermes", tool_names={"get_weather"})
    parsed = parser.parse(text)                      # ParsedToolCalls(content, tool_calls)
    stream = parser.streaming()
    for delta in deltas: events = stream.push(delta)  # list[DeltaEvent]
    events = stream.finish()
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .base import (
    DeltaEvent,
    ParsedToolCalls,
    StreamingToolParser,
    ToolCall,
    ToolCallFormat,
    ToolParser,
    aggregate,
)
from .generic_json import GENERIC_FORMAT, GenericJsonToolParser
from .hermes import HERMES_FORMAT, HermesToolParser
from .llama3_json import LLAMA3_JSON_FORMAT, Llama3JsonToolParser
from .mistral import MISTRAL_FORMAT, MistralToolParser

_PARSERS: dict[str, type[ToolParser]] = {
    "hermes": HermesToolParser,
    "llama3_json": Llama3JsonToolParser,
    "mistral": MistralToolParser,
    "generic": GenericJsonToolParser,  # templates without tool support (see generic_json.py)
}
GENERIC_TOOL_PARSER = "generic"
TOOL_PARSERS: tuple[str, ...] = tuple(_PARSERS)


def get_tool_parser(name: str, tool_names: Iterable[str] | None = None) -> ToolParser:
    """A parser by name (see TOOL_PARSERS); `tool_names` restricts calls to those tools."""
    try:
        cls = _PARSERS[name]
    except KeyError:
        raise ValueError(f"unknown tool-call parser {name!r}; choose one of {', '.join(TOOL_PARSERS)}") from None
    return cls(tool_names)


def get_tool_call_format(name: str) -> ToolCallFormat:
    """The exact spelling of calls for parser `name` (what grammars force)."""
    return get_tool_parser(name).format


def model_tool_parser(flag: str | None, chat_template: str | None, architecture: str | None,
                      mistral_tokenizer: bool = False) -> str:
    """The tool-call format of a served model: the `--tool-call-parser` flag, else
    mistral-common's for a model it renders, else the one its chat template shows, else
    the generic JSON format (a template with no tool support)."""
    if flag:
        return flag
    if mistral_tokenizer:
        return "mistral"
    return detect_tool_parser(chat_template, architecture) or GENERIC_TOOL_PARSER


def reply_tool_parser(parser: str | None, tools: Sequence[Any] | None, tool_choice: Any) -> str | None:
    """The parser to run on one reply, or None to return its text as it is: `parser`
    (the model's, or a session's) when the request offers tools and does not turn them
    off — and the generic format's even then, since its replies are JSON objects."""
    if not tools:
        return None
    if parser == GENERIC_TOOL_PARSER:
        return GENERIC_TOOL_PARSER
    if tool_choice == "none":
        return None
    return parser


def detect_tool_parser(chat_template: str | None, architecture: str | None = None) -> str | None:
    """Choose a parser from the markup a chat template renders tool calls with; fall
    back on the architecture for template-less Mistral models (mistral-common renders
    them).  None when the model shows no known tool-call format."""
    t = chat_template or ""
    if "<tool_call>" in t:
        return "hermes"
    if "[TOOL_CALLS]" in t:
        return "mistral"
    if "<|python_tag|>" in t or ("<|start_header_id|>" in t and '"parameters"' in t):
        return "llama3_json"
    arch = (architecture or "").lower()
    if not t and arch.startswith(("mistral", "mixtral", "ministral", "magistral", "devstral")):
        return "mistral"
    return None


__all__ = [
    "DeltaEvent",
    "GENERIC_FORMAT",
    "GENERIC_TOOL_PARSER",
    "HERMES_FORMAT",
    "LLAMA3_JSON_FORMAT",
    "MISTRAL_FORMAT",
    "ParsedToolCalls",
    "StreamingToolParser",
    "TOOL_PARSERS",
    "ToolCall",
    "ToolCallFormat",
    "ToolParser",
    "aggregate",
    "detect_tool_parser",
    "get_tool_call_format",
    "get_tool_parser",
    "model_tool_parser",
    "reply_tool_parser",
]
