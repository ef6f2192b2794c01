"""The prompt side of the generic JSON tool format (see tool_parsers/generic_json.py):
the messages a tool-less chat template is given instead of `tools` and tool turns.

- The tools and the reply format are described in the system message (appended to the
  first system message, or a new one at the start).
- An assistant turn with tool calls becomes the text the model generated for it,
  `{"tool_calls": [...]}`; with `tools` in the request, a plain assistant answer becomes
  `{"response": "..."}` — the reply the model generated — so a conversation re-renders
  to its own text and a session extends one node.
- Tool results become user turns holding `{"tool_response": {"name": ..., "content": ...}}`
  lines (consecutive results share one turn), which templates that only know
  system/user/assistant accept.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from triolm.prompting.tool_parsers.generic_json import GENERIC_FORMAT, render_response
from triolm.protocol.chat_messages import tool_call_arguments

INSTRUCTIONS = (
    "You can call tools. Each tool is described by its name, what it does, and the JSON schema "
    "of its arguments:\n{tools}\n\n"
    "Reply with exactly one JSON object, in one of two forms. To call one or more tools:\n"
    '{{"tool_calls": [{{"name": "<tool name>", "arguments": {{<the arguments>}}}}]}}\n'
    "To answer the user directly:\n"
    '{{"response": "<your answer>"}}')


def describe_tools(tools: Sequence[dict]) -> str:
    lines = []
    for tool in tools:
        fn = tool.get("function") or {}
        entry: dict[str, Any] = {"name": fn.get("name")}
        if fn.get("description"):
            entry["description"] = fn["description"]
        entry["parameters"] = fn.get("parameters") or {"type": "object", "properties": {}}
        lines.append(json.dumps(entry, ensure_ascii=False))
    return INSTRUCTIONS.format(tools="\n".join(lines))


def _calls_text(calls: list) -> str:
    rendered = []
    for call in calls:
        fn = (call.get("function") if isinstance(call, dict) else None) or {}
        rendered.append((fn.get("name") or "", tool_call_arguments(fn.get("arguments"))))
    return GENERIC_FORMAT.render_calls(rendered)


def generic_tool_messages(messages: list[dict], tools: Sequence[dict] | None) -> list[dict]:
    """`messages` (normalized: string contents) rewritten for the generic format."""
    names: dict[str, str] = {}  # tool_call_id -> function name, for the results
    out: list[dict] = []
    results_turn: dict | None = None  # the user turn collecting consecutive tool results
    for m in messages:
        role = m.get("role")
        if role == "tool":
            line = json.dumps({"tool_response": {
                "name": m.get("name") or names.get(m.get("tool_call_id") or "", ""),
                "content": m.get("content") or ""}}, ensure_ascii=False)
            if results_turn is None:
                results_turn = {"role": "user", "content": line}
                out.append(results_turn)
            else:
                results_turn["content"] += "\n" + line
            continue
        results_turn = None
        if role == "assistant" and m.get("tool_calls"):
            for call in m["tool_calls"]:
                if isinstance(call, dict) and call.get("id"):
                    names[call["id"]] = ((call.get("function") or {}).get("name")) or ""
            out.append({"role": "assistant", "content": _calls_text(m["tool_calls"])})
        elif role == "assistant" and tools and isinstance(m.get("content"), str):
            out.append({**m, "content": render_response(m["content"])})
        else:
            out.append(dict(m))
    if tools:
        block = describe_tools(tools)
        if out and out[0].get("role") == "system" and isinstance(out[0].get("content"), str):
            out[0] = {**out[0], "content": out[0]["content"] + "\n\n" + block}
        else:
            out.insert(0, {"role": "system", "content": block})
    return out
