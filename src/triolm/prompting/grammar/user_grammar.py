"""A request's own grammar -> llguidance's Lark dialect.

Clients send grammars in two notations: Lark (llguidance's dialect; vLLM's guidance
backend and its docs use it), and GBNF (llama.cpp's server `grammar`; vLLM's xgrammar
"EBNF" is the same notation, `root ::= ...`). llguidance converts GBNF to Lark itself.
vLLM's legacy structural tags (`structures` + `triggers`) map onto llguidance's
StructTag. Whatever comes out is compiled like any other grammar: in the sandbox,
under the server's grammar limits.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import llguidance
from llguidance.gbnf_to_lark import gbnf_to_lark

from triolm.errors import InvalidRequestError

from .build import JSON_OPTIONS

# The GBNF converter is Python: its work (holding the GIL) grows with the text, so the
# text is bounded before it runs. Real grammars are a few kB.
MAX_GRAMMAR_CHARS = 100_000

_LARK = re.compile(r"(?m)^\s*(%llguidance\b|\??start\s*:)")
_GBNF = re.compile(r"(?m)^\s*root\s*::=")


def user_grammar_lark(grammar: Any, param: str) -> str:
    """Lark text for a user grammar in Lark or GBNF; a 400 for anything else."""
    if not isinstance(grammar, str) or not grammar.strip():
        raise InvalidRequestError(f"{param}: the grammar must be a non-empty string", param=param)
    if len(grammar) > MAX_GRAMMAR_CHARS:
        raise InvalidRequestError(f"{param}: the grammar has {len(grammar)} characters, more than "
                                  f"{MAX_GRAMMAR_CHARS}", param=param, code="grammar_too_complex")
    if _LARK.search(grammar):
        return grammar
    if _GBNF.search(grammar):
        try:
            return gbnf_to_lark(grammar)
        except Exception as exc:  # the converter raises bare Exceptions (and RecursionError)
            raise InvalidRequestError(f"{param}: not a GBNF grammar this server can read: {exc}",
                                      param=param) from None
    raise InvalidRequestError(
        f"{param}: the grammar must be Lark (llguidance's dialect, with a 'start:' rule) or GBNF "
        "(llama.cpp's, with a 'root ::=' rule)", param=param)


def structural_tag_lark(tag: Any, param: str) -> str:
    """vLLM's structural tag — `{"structures": [{"begin", "schema", "end"}], "triggers": [...]}`,
    as an object or a JSON string — as Lark: free text in which each structure, once its
    trigger appears, is forced to `begin`, JSON matching `schema`, then `end`."""
    if isinstance(tag, str):
        try:
            tag = json.loads(tag)
        except ValueError as exc:
            raise InvalidRequestError(f"{param}: the structural tag is not JSON: {exc}", param=param) from None
    if not isinstance(tag, Mapping):
        raise InvalidRequestError(f"{param}: the structural tag must be an object", param=param)
    if "format" in tag:
        raise InvalidRequestError(f"{param}: only the structural tag form with 'structures' and "
                                  "'triggers' is supported", param=param)
    structures, triggers = tag.get("structures"), tag.get("triggers")
    if not isinstance(structures, list) or not structures or not isinstance(triggers, list) or not all(
            isinstance(t, str) and t for t in triggers):
        raise InvalidRequestError(f"{param}: a structural tag needs a non-empty 'structures' list and a "
                                  "'triggers' list of non-empty strings", param=param)
    tags = []
    for i, s in enumerate(structures):
        where = f"{param}: structures[{i}]"
        if not isinstance(s, Mapping) or not isinstance(s.get("begin"), str) or not isinstance(s.get("end"), str):
            raise InvalidRequestError(f"{where} needs string 'begin' and 'end'", param=param)
        schema = s.get("schema", {})
        if schema is True:
            schema = {}
        if not isinstance(schema, Mapping):
            raise InvalidRequestError(f"{where}.schema must be a JSON schema object", param=param)
        trigger = next((t for t in triggers if s["begin"].startswith(t)), None)
        if trigger is None:
            raise InvalidRequestError(f"{where}.begin starts with none of the triggers", param=param)
        # as a JSON string, so the JSON is spelled as everywhere else (build.JSON_OPTIONS)
        spelled = json.dumps({**schema, "x-guidance": {**JSON_OPTIONS, "lenient": True}}, ensure_ascii=False)
        tags.append(llguidance.StructTag(trigger=trigger, begin=s["begin"], grammar=spelled, end=s["end"]))
    return llguidance.StructTag.to_grammar(tags, assume_special=False)
