"""Mistral tool calls, after the `[TOOL_CALLS]` control token.

v3 tokenizers (Mistral 7B v0.3, Mixtral 8x22B, Nemo, Small 2409 …) emit a JSON list:

    [TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]

(SentencePiece tokenizers decode a space after the token: `[TOOL_CALLS] [{…}]`).
mistral-common renders a call in history as `{"name", "arguments", "id"}` with the
9-character alphanumeric call id last, so `MISTRAL_FORMAT` (used for constrained
decoding) makes the model write that id too: the forced text is then exactly what the
next turn renders.  A model-written id of that shape is reused, otherwise one is made.
Because the id may come last, a list-form call is streamed once its object is complete.

v11+ tokenizers (Magistral, Devstral, Small 3.2, …) emit one block per call:

    [TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}
    [TOOL_CALLS]get_weather[CALL_ID]a1b2c3d4e[ARGS]{"city": "Paris"}

and those arguments stream as they are generated.

The serving layer must decode with special tokens kept (at least `[TOOL_CALLS]`,
`[ARGS]`, `[CALL_ID]`) for this parser to see the markers.
"""

from __future__ import annotations

import re

from .base import (
    TOOL_NAME_RE,
    WHITESPACE,
    Args,
    JsonError,
    JsonStream,
    Lit,
    Name,
    Opt,
    Slot,
    StreamingToolParser,
    ToolCallFormat,
    ToolParser,
    _Call,
    random_call_id,
)

TOOL_CALLS = "[TOOL_CALLS]"
ARGS = "[ARGS]"
CALL_ID = "[CALL_ID]"
MISTRAL_ID_RE = re.compile(r"[a-zA-Z0-9]{9}\Z")

MISTRAL_FORMAT = ToolCallFormat(
    parser="mistral",
    begin=(Lit(TOOL_CALLS), Opt(" "), Lit("[")),  # SentencePiece decodes a space here
    call=(
        Lit('{"name": "'),
        Name(),
        Lit('", "arguments": '),
        Args(),
        Lit(', "id": "'),
        Slot("[a-zA-Z0-9]{9}", field="id"),
        Lit('"}'),
    ),
    separator=(Lit(", "),),
    end=(Lit("]"),),
    markers=(TOOL_CALLS,),
)


def mistral_call_id() -> str:
    return random_call_id(prefix="", length=9)


class MistralStream(StreamingToolParser):
    def __init__(self, parser: ToolParser):
        super().__init__(parser)
        self._block = ""  # raw text of the block before the current call (for fallback)
        self._block_ws = ""  # whitespace before the [TOOL_CALLS] marker

    def _call_id(self, call: _Call) -> str:
        for cand in (call.fixed_id, call.stream.strings.get("id") if call.fixed_name is None else None):
            if cand and MISTRAL_ID_RE.match(cand):
                return cand
        return mistral_call_id()

    def _run(self, final: bool) -> None:
        while True:
            st = self._state
            if st == "out":
                if not self._content_until(TOOL_CALLS, final):
                    return
                self._block = TOOL_CALLS
                self._block_ws = self._ws
                self._ws = ""
                self._state = "marker"
            elif st == "marker":
                rest = self._pending.lstrip(WHITESPACE)
                if not rest:
                    if final:
                        self._rest_is_content()
                    return
                self._block += self._pending[: len(self._pending) - len(rest)]
                self._pending = rest
                if rest[0] == "[":
                    self._block += "["
                    self._pending = rest[1:]
                    self._state = "item"
                elif TOOL_NAME_RE.match(rest[0]):
                    self._state = "name"
                else:
                    self._rest_is_content()
            elif st == "item":
                rest = self._pending.lstrip(WHITESPACE)
                if not rest:
                    if final:
                        self._rest_is_content()
                    return
                if rest[0] != "{":
                    self._rest_is_content()
                    continue
                raw = self._block + self._pending[: len(self._pending) - len(rest)]
                self._pending = rest
                self._open_block_call(raw, JsonStream(require_object=True), incremental=False)
                self._state = "json"
            elif st in ("json", "args"):
                call = self._call
                try:
                    if not self._feed_call(call):
                        return
                except JsonError:
                    self._broken(call)
                    continue
                if not self._complete_call(call):
                    self._broken(call)
                    continue
                self._block = ""
                self._state = "after" if st == "json" else "out"
            elif st == "after":  # after a list item: "," or "]"
                rest = self._pending.lstrip(WHITESPACE)
                if not rest:
                    return
                if rest[0] == ",":
                    self._block = self._pending[: len(self._pending) - len(rest) + 1]
                    self._pending = rest[1:]
                    self._state = "item"
                elif rest[0] == "]":
                    self._pending = rest[1:]
                    self._state = "out"
                else:
                    self._state = "out"
            elif st in ("name", "id"):
                if not self._read_v11_header(final):
                    return
            else:  # "rest": everything left is content; "skip": dropped
                if st == "rest":
                    self._content(self._pending)
                self._pending = ""
                return

    def _open_block_call(self, raw: str, stream: JsonStream, name=None, incremental=True) -> _Call:
        self._ws, self._block_ws = self._block_ws, ""
        return self._open_call(raw, stream, name, incremental)

    def _read_v11_header(self, final: bool) -> bool:
        """NAME[ARGS] or NAME[CALL_ID]ID[ARGS]; returns False to wait for more text."""
        buf = self._pending
        marks = (ARGS, CALL_ID) if self._state == "name" else (ARGS,)
        for j, ch in enumerate(buf):
            if ch == "[":
                tail = buf[j:]
                hit = next((m for m in marks if tail.startswith(m)), None)
                if hit is None:
                    if not final and any(m.startswith(tail) for m in marks):
                        return False
                    self._rest_is_content()
                    return True
                value = buf[:j]
                ok = TOOL_NAME_RE.match(value) if self._state == "name" else MISTRAL_ID_RE.match(value)
                if not ok:
                    self._rest_is_content()
                    return True
                self._block += buf[: j + len(hit)]
                self._pending = buf[j + len(hit) :]
                if self._state == "name":
                    self._v11_name = value
                    self._v11_id = None
                else:
                    self._v11_id = value
                if hit == CALL_ID:
                    self._state = "id"
                    return True
                call = self._open_block_call(self._block, JsonStream(require_object=True), name=self._v11_name)
                call.fixed_id = self._v11_id
                self._state = "args"
                return True
            if self._state == "name" and not TOOL_NAME_RE.match(ch):
                self._rest_is_content()
                return True
        if final:
            self._rest_is_content()
            return True
        return False

    def _rest_is_content(self) -> None:
        self._ws, self._block_ws = self._block_ws + self._ws, ""
        self._content(self._block)
        self._block = ""
        self._state = "rest"

    def _broken(self, call: _Call) -> None:
        committed = call.committed
        self._block = ""
        self._abandon_call(call)
        self._state = "skip" if committed else "rest"


class MistralToolParser(ToolParser):
    name = "mistral"
    format = MISTRAL_FORMAT
    stream_class = MistralStream
