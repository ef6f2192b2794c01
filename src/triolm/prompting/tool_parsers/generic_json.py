"""The generic JSON tool-call format, for models whose chat template has no tool support.

The tools are described in the system prompt (triolm.prompting.generic_tool_prompt) and the
reply is constrained (triolm.prompting.grammar.generic_tools) to one JSON object, spelled as
`json.dumps` spells it, in one of two forms:

    {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}
    {"response": "The capital of France is Paris."}

A `tool_calls` object becomes OpenAI `tool_calls` (content null); a `response` object
becomes the content, the decoded string. Text that is neither form (an unconstrained
reply) is content, unchanged. The history renders earlier calls back in the same
spelling (`GENERIC_FORMAT`), so a conversation re-renders to the text it generated.
"""

from __future__ import annotations

import json

from .base import WHITESPACE, Args, JsonCallStream, Lit, Name, ToolCallFormat, ToolParser

CALLS_KEY = "tool_calls"
RESPONSE_KEY = "response"
CALLS_OPEN = '{"tool_calls": ['
RESPONSE_OPEN = '{"response": "'

GENERIC_FORMAT = ToolCallFormat(
    parser="generic",
    begin=(Lit(CALLS_OPEN),),
    call=(Lit('{"name": "'), Name(), Lit('", "arguments": '), Args(), Lit("}")),
    separator=(Lit(", "),),
    end=(Lit("]}"),),
)


def render_response(text: str) -> str:
    """A plain answer in the generic format."""
    return '{"response": ' + json.dumps(text, ensure_ascii=False) + "}"


class GenericJsonStream(JsonCallStream):
    require_args_key = True
    initial_state = "start"

    def __init__(self, parser: ToolParser):
        super().__init__(parser)
        self._escape = ""  # an unfinished escape sequence of the response string

    def _run(self, final: bool) -> None:
        while True:
            st = self._state
            if st == "start":
                rest = self._pending.lstrip(WHITESPACE)
                if rest.startswith(CALLS_OPEN):
                    self._pending = rest[len(CALLS_OPEN):]
                    self._state = "calls"
                elif rest.startswith(RESPONSE_OPEN):
                    self._pending = rest[len(RESPONSE_OPEN):]
                    self._state = "response"
                elif not final and (CALLS_OPEN.startswith(rest) or RESPONSE_OPEN.startswith(rest)):
                    return  # may still become one of the two forms
                else:
                    self._state = "text"
            elif st == "text":
                self._content(self._pending)
                self._pending = ""
                return
            elif st == "response":
                if not self._response_chars(final):
                    return
                self._state = "tail"
            elif st == "calls":
                rest = self._pending.lstrip(WHITESPACE)
                if not rest:
                    self._pending = ""
                    return
                if rest[0] == "{":
                    self._pending = rest
                    self._open_json_call("")
                    self._state = "call"
                else:  # "]" ends the list; anything else is past repair
                    self._state = "tail"
            elif st == "call":
                call = self._call
                done = self._read_call()
                if done is None:
                    self._abandon_call(call)
                    self._state = "tail"
                    continue
                if not done:
                    return
                if not self._complete_call(call):
                    self._abandon_call(call)
                self._state = "separator"
            elif st == "separator":
                rest = self._pending.lstrip(WHITESPACE)
                if not rest:
                    self._pending = ""
                    return
                self._pending = rest[1:]
                self._state = "calls" if rest[0] == "," else "tail"
            else:  # "tail": the closing brackets (or junk after the object)
                self._pending = ""
                return

    def _response_chars(self, final: bool) -> bool:
        """Emit the decoded characters of the response string; True at its closing quote."""
        out = []
        text = self._escape + self._pending
        i = 0
        done = False
        while i < len(text):
            ch = text[i]
            if ch == '"':
                done = True
                i += 1
                break
            if ch != "\\":
                j = i
                while j < len(text) and text[j] not in '"\\':
                    j += 1
                out.append(text[i:j])
                i = j
                continue
            length = _escape_length(text, i)
            if length is None:  # the escape is not complete yet
                break
            try:
                out.append(json.loads('"' + text[i:i + length] + '"'))
            except ValueError:
                out.append(text[i:i + length])
            i += length
        self._escape = "" if done else text[i:]
        self._pending = text[i:] if done else ""
        if final and not done:
            self._escape = ""
        decoded = "".join(out)
        if decoded:
            self._emit_content(decoded)
        return done


def _escape_length(text: str, i: int) -> int | None:
    """Length of the escape sequence at text[i] ('\\'), or None if it is cut off."""
    if i + 1 >= len(text):
        return None
    if text[i + 1] != "u":
        return 2
    if i + 6 > len(text):
        return None
    high = text[i + 2:i + 6]
    try:
        code = int(high, 16)
    except ValueError:
        return 2
    if 0xD800 <= code < 0xDC00:  # a surrogate pair takes two escapes
        if i + 12 > len(text):
            return None
        return 12 if text[i + 6:i + 8] == "\\u" else 6
    return 6


class GenericJsonToolParser(ToolParser):
    name = "generic"
    format = GENERIC_FORMAT
    stream_class = GenericJsonStream
