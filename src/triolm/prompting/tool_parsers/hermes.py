"""Hermes-style calls (Qwen 2.5/3, NousResearch Hermes, many fine-tunes):

    Let me check.
    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>
    <tool_call>
    {"name": "get_time", "arguments": {"tz": "CET"}}
    </tool_call>

Each `<tool_call>` holds one JSON object with "name" and "arguments" (missing
arguments mean `{}`).  Qwen's chat template renders a call back as
`<tool_call>\\n{"name": NAME, "arguments": tojson(args)}\\n</tool_call>`, several calls
separated by a newline; `HERMES_FORMAT` is that spelling.  A missing closing tag at the
very end of the text is tolerated (generation stopped on it).
"""

from __future__ import annotations

from .base import WHITESPACE, Args, JsonCallStream, Lit, Name, ToolCallFormat, ToolParser

OPEN = "<tool_call>"
CLOSE = "</tool_call>"

HERMES_FORMAT = ToolCallFormat(
    parser="hermes",
    begin=(),
    call=(Lit(OPEN), Lit('\n{"name": "'), Name(), Lit('", "arguments": '), Args(), Lit("}\n"), Lit(CLOSE)),
    separator=(Lit("\n"),),
    end=(),
    markers=(OPEN, CLOSE),
)


class HermesStream(JsonCallStream):
    def _run(self, final: bool) -> None:
        while True:
            st = self._state
            if st == "out":
                if not self._content_until(OPEN, final):
                    return
                self._open_json_call(OPEN)
                self._state = "json"
            elif st == "json":
                done = self._read_call()
                if done is None:
                    self._malformed()
                    continue
                if not done:
                    return
                self._state = "close"
            elif st == "close":
                call = self._call
                rest = self._pending.lstrip(WHITESPACE)
                if rest.startswith(CLOSE) or (final and rest and CLOSE.startswith(rest)):
                    used = len(self._pending) - len(rest) + min(len(CLOSE), len(rest))
                    call.raw.append(self._pending[:used])
                    self._pending = self._pending[used:]
                    if not self._complete_call(call):
                        self._abandon_call(call)
                    self._state = "out"
                elif not rest or (not final and CLOSE.startswith(rest)):
                    return  # wait for more text (or the end, which accepts the call)
                else:
                    self._malformed()
            else:  # "malformed" (text until the closing tag is content) / "broken" (skipped)
                i = self._pending.find(CLOSE)
                if i == -1:
                    keep = self._hold(self._pending, (CLOSE,), final)
                    cut = len(self._pending) - keep
                    if st == "malformed":
                        self._content(self._pending[:cut])
                    self._pending = self._pending[cut:]
                    return
                if st == "malformed":
                    self._content(self._pending[: i + len(CLOSE)])
                self._pending = self._pending[i + len(CLOSE) :]
                self._state = "out"

    def _malformed(self) -> None:
        call = self._call
        self._state = "broken" if call.committed else "malformed"
        self._abandon_call(call)

    def _complete_at_end(self, call) -> bool:
        return self._state == "close"


class HermesToolParser(ToolParser):
    name = "hermes"
    format = HERMES_FORMAT
    stream_class = HermesStream
