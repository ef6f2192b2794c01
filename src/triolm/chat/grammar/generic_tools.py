"""The grammar of a reply in the generic JSON tool format (chat/tool_parsers/generic_json.py):
`{"tool_calls": [...]}` with calls to the offered tools, or `{"response": "..."}`.

tool_choice 'auto' allows both forms, 'required' and a named function only calls (one
call for a named function or parallel_tool_calls false), 'none' only a response. The
format is plain text for every tokenizer (no special tokens), spelled as json.dumps
spells it, so the history renders back byte for byte.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from triolm.chat.tool_parsers.generic_json import GENERIC_FORMAT

from .build import LarkBuilder, json_rule, lark_string, parse_tools, tool_calls_rule, tool_choice_mode
from .compiler import GrammarCompiler
from .llg import CompiledGrammar


def generic_tools_lark(tools: Sequence[Mapping[str, Any]], tool_choice: Any, *, parallel_tool_calls: bool = True) -> str:
    specs = parse_tools(tools)
    mode, named = tool_choice_mode(tool_choice, specs)
    b = LarkBuilder(lambda text: None)
    response = b.add("response", " ".join((lark_string('{"response": '),
                                           json_rule({"type": "string"}, lenient=False), lark_string("}"))))
    if mode == "none":
        return b.text(response)
    calls = tool_calls_rule(b, GENERIC_FORMAT, specs, only=named, parallel=parallel_tool_calls)
    return b.text(f"{calls} | {response}" if mode == "auto" else calls)


def generic_tools_grammar(compiler: GrammarCompiler, tools: Sequence[Mapping[str, Any]], tool_choice: Any,
                          *, parallel_tool_calls: bool = True) -> CompiledGrammar:
    """Compiled (and cached by the compiler) for the model's tokenizer."""
    return compiler.compile_lark(generic_tools_lark(tools, tool_choice, parallel_tool_calls=parallel_tool_calls),
                                 param="tools")
