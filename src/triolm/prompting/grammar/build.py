"""Request fields -> Lark grammar text (llguidance dialect), with request validation.

Every JSON value the grammar allows is spelled the way `json.dumps` spells it by
default — item separator ", ", key separator ": ", no other whitespace — because that
is what chat templates render back (`tojson`), and because a grammar with free
whitespace lets a weak model emit blanks until max_tokens.  Strings may use only the
escapes json.dumps writes (no `\\/`, `\\u` only for control characters).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import llguidance

from triolm.errors import InvalidRequestError
from triolm.prompting.tool_parsers.base import TOOL_NAME_RE, Args, Lit, Name, Opt, Piece, Slot, ToolCallFormat

JSON_OPTIONS = {
    "item_separator": ", ",
    "key_separator": ": ",
    "whitespace_flexible": False,
    "json_allowed_escapes": 'nrbtf\\"',  # no \u: json.dumps never writes one for these
    "json_allow_general_unicode_escapes": False,
}
NO_PARAMETERS = {"type": "object", "properties": {}, "additionalProperties": False}


def lark_string(text: str) -> str:
    """A Lark string literal (JSON escaping, which the llguidance dialect reads)."""
    return json.dumps(text, ensure_ascii=False)


def json_rule(schema: Any, *, lenient: bool) -> str:
    """`%json {...}` for a schema, with triolm's JSON spelling options."""
    if schema is True:
        schema = {}
    body = {k: v for k, v in schema.items() if k != "x-guidance"}
    body["x-guidance"] = {**JSON_OPTIONS, "lenient": bool(lenient)}
    return "%json " + json.dumps(body, ensure_ascii=False)


@attrs.frozen
class ToolSpec:
    name: str
    parameters: Mapping[str, Any]
    strict: bool = False


def _schema_object(value: Any, param: str, what: str) -> dict | bool:
    if value is True or isinstance(value, dict):
        return value
    raise InvalidRequestError(f"{what} must be a JSON schema object, got {type(value).__name__}", param=param)


def parse_tools(tools: Any) -> list[ToolSpec]:
    """Validate an OpenAI `tools` list (function tools only)."""
    if not isinstance(tools, list) or not tools:
        raise InvalidRequestError("tools must be a non-empty list", param="tools")
    out: list[ToolSpec] = []
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, Mapping) or tool.get("type", "function") != "function":
            raise InvalidRequestError(f"{where}: only tools of type 'function' are supported", param="tools")
        fn = tool.get("function")
        if not isinstance(fn, Mapping):
            raise InvalidRequestError(f"{where}.function must be an object", param="tools")
        name = fn.get("name")
        if not isinstance(name, str) or not TOOL_NAME_RE.match(name):
            raise InvalidRequestError(
                f"{where}.function.name must match ^[a-zA-Z0-9_.-]{{1,64}}$, got {name!r}", param="tools"
            )
        if name in seen:
            raise InvalidRequestError(f"{where}: duplicate function name {name!r}", param="tools")
        seen.add(name)
        params = fn.get("parameters")
        if params is None:
            params = NO_PARAMETERS
        params = _schema_object(params, "tools", f"{where}.function.parameters")
        if params is True:
            params = {"type": "object"}
        ptype = params.get("type")
        if ptype is None:
            params = {**params, "type": "object"}
        elif ptype != "object" and not (isinstance(ptype, list) and "object" in ptype):
            raise InvalidRequestError(
                f"{where}.function.parameters must describe an object (type {ptype!r})", param="tools"
            )
        out.append(ToolSpec(name=name, parameters=params, strict=bool(fn.get("strict", False))))
    return out


def tool_choice_mode(tool_choice: Any, tools: Sequence[ToolSpec] | None) -> tuple[str, str | None]:
    """("none"|"auto"|"required"|"named", function name) from an OpenAI tool_choice."""
    if tool_choice is None:
        return ("auto" if tools else "none"), None
    if isinstance(tool_choice, str):
        if tool_choice not in ("none", "auto", "required"):
            raise InvalidRequestError(
                f"tool_choice must be 'none', 'auto', 'required' or a function, got {tool_choice!r}",
                param="tool_choice",
            )
        if tool_choice == "required" and not tools:
            raise InvalidRequestError("tool_choice 'required' needs a non-empty tools list", param="tool_choice")
        return tool_choice, None
    if isinstance(tool_choice, Mapping):
        fn = tool_choice.get("function")
        name = fn.get("name") if isinstance(fn, Mapping) else None
        if tool_choice.get("type", "function") != "function" or not isinstance(name, str):
            raise InvalidRequestError(
                "tool_choice must look like {'type': 'function', 'function': {'name': ...}}", param="tool_choice"
            )
        if not tools or name not in {t.name for t in tools}:
            raise InvalidRequestError(f"tool_choice names function {name!r}, which is not in tools",
                                      param="tool_choice")
        return "named", name
    raise InvalidRequestError("tool_choice must be a string or an object", param="tool_choice")


class LarkBuilder:
    """Accumulates rules; `special_id(text)` tells which markup strings are one special
    token for this tokenizer (those must be written as `<[id]>`)."""

    def __init__(self, special_id):
        self._special_id = special_id
        self.rules: list[str] = []
        self._n = 0

    def fresh(self, stem: str) -> str:
        self._n += 1
        return f"{stem}_{self._n}"

    def add(self, name: str, body: str) -> str:
        self.rules.append(f"{name}: {body}")
        return name

    def literal(self, text: str) -> str:
        tid = self._special_id(text)
        return f"<[{tid}]>" if tid is not None else lark_string(text)

    def pieces(self, pieces: Sequence[Piece], name: str = "", args_rule: str = "") -> str:
        out = []
        for p in pieces:
            if isinstance(p, Lit):
                out.append(self.literal(p.text))
            elif isinstance(p, Name):
                out.append(lark_string(name))
            elif isinstance(p, Args):
                out.append(args_rule)
            elif isinstance(p, Slot):
                out.append(self.add(self.fresh("SLOT"), "/" + llguidance.regex_to_lark(p.regex) + "/"))
            elif isinstance(p, Opt):
                out.append(f"({self.literal(p.text)})?")
        return " ".join(o for o in out if o) or '""'

    def text(self, start_body: str) -> str:
        return "\n".join([f"start: {start_body}", *self.rules]) + "\n"


def tool_calls_rule(
    b: LarkBuilder,
    fmt: ToolCallFormat,
    tools: Sequence[ToolSpec],
    *,
    only: str | None = None,
    parallel: bool = True,
) -> str:
    """A rule for one turn of tool calls in `fmt`: calls to `tools` (or just `only`),
    one call when `only` is set or not `parallel`, else one or more."""
    chosen = [t for t in tools if only is None or t.name == only]
    alts = []
    for t in chosen:
        args = b.add(b.fresh("args"), json_rule(t.parameters, lenient=not t.strict))
        alts.append(b.add(b.fresh("call"), b.pieces(fmt.call, t.name, args)))
    call = b.add(b.fresh("call_any"), " | ".join(alts))
    limit = 1 if (only is not None or not parallel) else fmt.max_calls
    sep = b.pieces(fmt.separator)
    if limit == 1:
        calls = call
    elif limit is None:
        calls = f"{call} ({sep} {call})*"
    else:
        calls = f"{call} ({sep} {call}){{0,{limit - 1}}}"
    begin = b.pieces(fmt.begin) if fmt.begin else ""
    end = b.pieces(fmt.end) if fmt.end else ""
    body = " ".join(x for x in (begin, calls, end) if x)
    return b.add(b.fresh("tool_calls"), body)
