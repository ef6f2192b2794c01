"""The grammar of a reply in the generic JSON tool format (chat/tool_parsers/generic_json.py):
`{"tool_calls": [...]}` with calls to the offered tools, or `{"response": "..."}`.

tool_choice 'auto' allows both forms, 'required' and a named function only calls (one
call for a named function or parallel_tool_calls false), 'none' only a response. The
format is plain text for every tokenizer (no special tokens), spelled as json.dumps
spells it, so the history renders back byte for byte.

For a reasoning model the object may follow its thinking: `thinking="optional"` allows a
`<think>…</think>` block first, `thinking="inside"` (the prompt opened the block) requires
the rest of it. The thinking is free text up to the closing marker.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from triolm.prompting.reasoning import ReasoningFormat
from triolm.prompting.tool_parsers.generic_json import GENERIC_FORMAT

from .build import LarkBuilder, json_rule, lark_string, parse_tools, tool_calls_rule, tool_choice_mode
from .compiler import GrammarCompiler
from .limits import GrammarLimits
from .llg import CompiledGrammar


def generic_tools_lark(tools: Sequence[Mapping[str, Any]], tool_choice: Any, *, parallel_tool_calls: bool = True,
                       reasoning: ReasoningFormat | None = None, thinking: str | None = None) -> str:
    specs = parse_tools(tools)
    mode, named = tool_choice_mode(tool_choice, specs)
    b = LarkBuilder(lambda text: None)
    response = b.add("response", " ".join((lark_string('{"response": '),
                                           json_rule({"type": "string"}, lenient=False), lark_string("}"))))
    if mode == "none":
        body = response
    else:
        calls = tool_calls_rule(b, GENERIC_FORMAT, specs, only=named, parallel=parallel_tool_calls)
        body = b.add("reply", f"{calls} | {response}" if mode == "auto" else calls)
    if reasoning is None or thinking is None:
        return b.text(body)
    # Free text, ended lazily by the first closing marker (which is part of the output).
    b.add(f"thinking[stop={lark_string(reasoning.end)}]", "/(.|\\n)*/")
    block = "thinking /[ \\t\\r\\n]*/"
    if thinking == "inside":
        return b.text(f"{block} {body}")
    return b.text(f"({lark_string(reasoning.start)} {block})? {body}")


def thinking_mode(reasoning: ReasoningFormat | None, prompt_text: str) -> str | None:
    """How a reply may think before its JSON object: None (not at all: no reasoning format,
    or the prompt closed the block, e.g. enable_thinking false), "inside" (the prompt
    opened the block) or "optional"."""
    if reasoning is None:
        return None
    tail = prompt_text.rstrip(" \t\r\n")
    if tail.endswith(reasoning.start):
        return "inside"
    if tail.endswith(reasoning.end):
        return None
    return "optional"


def generic_tools_grammar(compiler: GrammarCompiler, tools: Sequence[Mapping[str, Any]], tool_choice: Any,
                          *, parallel_tool_calls: bool = True, reasoning: ReasoningFormat | None = None,
                          prompt_text: str = "", limits: GrammarLimits | None = None) -> CompiledGrammar:
    """Compiled (and cached by the compiler) for the model's tokenizer."""
    lark = generic_tools_lark(tools, tool_choice, parallel_tool_calls=parallel_tool_calls, reasoning=reasoning,
                              thinking=thinking_mode(reasoning, prompt_text))
    return compiler.compile_lark(lark, param="tools", limits=limits)
