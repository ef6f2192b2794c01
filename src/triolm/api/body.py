"""The one JSON body parser of every route: UTF-8, JSON, an object, a bounded nesting
depth, and text that is Unicode (no lone surrogates).

Each check turns what a tokenizer, a template or pydantic would fail on deep inside
(a 500) into a 400 naming the problem, before anything else looks at the body.
"""

from __future__ import annotations

import json
import re
from typing import Any

import trio

from triolm.api.errors import bad_request

MAX_NESTING = 64  # OpenAI bodies nest a handful of levels; JSON schemas a few dozen
_PARSE_OFF_LOOP_BYTES = 1 << 20  # parsing a few MB of JSON takes tens of ms: not on the loop
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # only such escapes can make a lone surrogate


def parse_json_object(raw: bytes, allow_empty: bool = False) -> dict[str, Any]:
    """The body's JSON object, or a 400 naming what is wrong with it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request("request body is not valid UTF-8") from None
    if not text.strip():
        if allow_empty:
            return {}
        raise bad_request("request body must be a JSON object")
    # More brackets than the bound is the only way to nest deeper than it: a deep body is
    # refused before the parser recurses into it.
    if text.count("[") + text.count("{") > MAX_NESTING and _bracket_depth(text) > MAX_NESTING:
        raise bad_request(f"request body is nested deeper than {MAX_NESTING} levels")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise bad_request(f"request body is not valid JSON: {exc.msg} at position {exc.pos}") from None
    except RecursionError:
        raise bad_request(f"request body is nested deeper than {MAX_NESTING} levels") from None
    if not isinstance(data, dict):
        raise bad_request("request body must be a JSON object")
    if _SURROGATE_ESCAPE.search(text):
        _reject_lone_surrogates(data)
    return data


async def read_json_object(raw: bytes, allow_empty: bool = False) -> dict[str, Any]:
    """`parse_json_object`, in a worker thread for a body large enough to hold the loop."""
    if len(raw) > _PARSE_OFF_LOOP_BYTES:
        return await trio.to_thread.run_sync(parse_json_object, raw, allow_empty)
    return parse_json_object(raw, allow_empty)


_STRUCTURE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')  # strings are skipped whole


def _bracket_depth(text: str) -> int:
    """The deepest nesting of brackets outside JSON strings (an upper bound on the parsed
    depth for any text json.loads accepts)."""
    depth = deepest = 0
    for match in _STRUCTURE.finditer(text):
        token = match.group()
        if token == "[" or token == "{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_NESTING:
                    return deepest
        elif token == "]" or token == "}":
            depth -= 1
    return deepest


def _reject_lone_surrogates(data: dict) -> None:
    """JSON may spell a lone UTF-16 surrogate (\\udc80); it is not text any tokenizer
    can take. Say which field holds one instead of failing deep inside a tokenizer."""
    stack: list[tuple[object, str]] = [(data, "")]
    while stack:
        value, where = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                param = where.split(".")[0].split("[")[0] or None
                raise bad_request(f"'{where}' contains a lone UTF-16 surrogate, which is not valid "
                                  "Unicode text", param=param) from None
        elif isinstance(value, dict):
            for key, item in value.items():
                stack.append((key, where))
                stack.append((item, f"{where}.{key}" if where else str(key)))
        elif isinstance(value, list):
            stack.extend((item, f"{where}[{i}]") for i, item in enumerate(value))
