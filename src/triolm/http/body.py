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

from triolm.protocol.errors import bad_request

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
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise bad_request(f"request body is not valid JSON: {exc.msg} at position {exc.pos}") from None
    except RecursionError:  # the C parser stops at the interpreter's recursion limit
        raise bad_request(f"request body is nested deeper than {MAX_NESTING} levels") from None
    if not isinstance(data, dict):
        raise bad_request("request body must be a JSON object")
    # Only more brackets than the bound can nest deeper than it (a cheap count first).
    if text.count("[") + text.count("{") > MAX_NESTING and _depth(data) > MAX_NESTING:
        raise bad_request(f"request body is nested deeper than {MAX_NESTING} levels")
    if _SURROGATE_ESCAPE.search(text):
        _reject_lone_surrogates(data)
    return data


async def read_json_object(raw: bytes, allow_empty: bool = False) -> dict[str, Any]:
    """`parse_json_object`, in a worker thread for a body large enough to hold the loop."""
    if len(raw) > _PARSE_OFF_LOOP_BYTES:
        return await trio.to_thread.run_sync(parse_json_object, raw, allow_empty)
    return parse_json_object(raw, allow_empty)


def _depth(data: dict) -> int:
    """How deep the parsed body nests (an object alone is 1); stops once past the bound.
    A list of scalars (token ids) is passed over at C speed."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > deepest:
            deepest = depth
            if deepest > MAX_NESTING:
                break
        items = value.values() if isinstance(value, dict) else value
        kinds = set(map(type, items))
        if list in kinds or dict in kinds:
            stack.extend((item, depth + 1) for item in items if type(item) is list or type(item) is dict)
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
