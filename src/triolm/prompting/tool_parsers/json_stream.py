"""An incremental JSON reader that re-emits what it reads in canonical form.

Why: a streamed tool call must send argument fragments whose concatenation equals the
non-streamed `arguments` string, which is `json.dumps(obj, ensure_ascii=False)`.  The
model's own spelling may differ (`{"a":1}` vs `{"a": 1}`), so fragments cannot be slices
of the raw text.  This reader takes characters as they arrive and appends the canonical
spelling of everything that is already final: strings character by character, numbers
once they end, separators as `", "` and `": "`.  After the last character its output is
exactly `json.dumps(json.loads(raw), ensure_ascii=False)`, or it has raised JsonError
for text `json.loads` would reject, or whose dumps would not round-trip (duplicate keys,
NaN/Infinity, lone surrogates).
"""

from __future__ import annotations

import json
import re

_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?\Z")
_NUMBER_CHARS = frozenset("0123456789+-.eE")
_WS = frozenset(" \t\n\r")
_SIMPLE_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_HEX = frozenset("0123456789abcdefABCDEF")


def _canonical_char(ch: str) -> str:
    return json.dumps(ch, ensure_ascii=False)[1:-1]


_CANON = {chr(c): _canonical_char(chr(c)) for c in range(0x20)} | {'"': '\\"', "\\": "\\\\"}


class JsonError(ValueError):
    """The text is not (the start of) one canonicalizable JSON value."""


# parser states
_VALUE, _AFTER_VALUE, _OBJ_KEY_OR_END, _OBJ_KEY, _OBJ_COLON, _ARR_FIRST = range(6)
_STRING, _ESCAPE, _UNICODE, _NUMBER_ST, _LITERAL, _DONE = range(6, 12)


class JsonStream:
    """Reads one JSON value incrementally.

    `feed(text, pos)` consumes characters from `text[pos:]` until the value is complete
    or the text ends and returns the index after the last consumed character.  Canonical
    output accumulates in `out` (a list of str; `out_len` is its total length).  For the
    members of a top-level object it records, by output offset, where each value starts
    and ends (`spans`) and the decoded value of string members (`strings`), which is how
    a tool-call object's name and arguments are located without a second parse.
    """

    def __init__(self, require_object: bool = False):
        self.require_object = require_object
        self.out: list[str] = []
        self.out_len = 0
        self.spans: dict[str, list[int | None]] = {}
        self.strings: dict[str, str] = {}
        self.current_key: str | None = None
        self._state = _VALUE
        self._stack: list[tuple[str, set[str]]] = []  # ("{"|"[", keys seen)
        self._tok: list[str] = []  # current string / number / literal characters
        self._is_key = False
        self._hex = ""
        self._high_surrogate: int | None = None
        self._started = False
        self._pos = 0

    @property
    def done(self) -> bool:
        return self._state == _DONE

    @property
    def started(self) -> bool:
        """True once the first non-whitespace character was read."""
        return self._started

    def text(self, start: int = 0, end: int | None = None) -> str:
        return "".join(self.out)[start:end]

    # -- output ---------------------------------------------------------------------
    def _emit(self, s: str) -> None:
        self.out.append(s)
        self.out_len += len(s)

    def _depth1(self) -> bool:
        return len(self._stack) == 1 and self._stack[0][0] == "{"

    def _value_started(self) -> None:
        if self._depth1() and self.current_key is not None:
            self.spans[self.current_key] = [self.out_len, None]

    def _value_ended(self) -> None:
        if self._stack:
            if self._depth1() and self.current_key is not None:
                self.spans[self.current_key][1] = self.out_len
            self._state = _AFTER_VALUE
        else:
            self._state = _DONE

    # -- main loop ------------------------------------------------------------------
    def feed(self, text: str, pos: int = 0) -> int:
        """Raises JsonError with `.pos` = index of the offending character."""
        try:
            return self._feed(text, pos)
        except JsonError as exc:
            exc.pos = self._pos
            raise

    def _feed(self, text: str, pos: int) -> int:
        n = len(text)
        while pos < n and self._state != _DONE:
            self._pos = pos
            ch = text[pos]
            st = self._state
            if st == _STRING:
                # fast path: copy a run of plain characters
                j = pos
                while j < n and text[j] not in '"\\' and text[j] >= " ":
                    j += 1
                if j > pos:
                    if self._high_surrogate is not None:
                        raise JsonError("lone surrogate in string")
                    run = text[pos:j]
                    self._tok.append(run)
                    if not self._is_key:
                        self._emit(run)
                    pos = j
                    continue
                if ch == '"':
                    self._end_string()
                elif ch == "\\":
                    self._state = _ESCAPE
                else:
                    raise JsonError(f"control character {ch!r} inside a string")
            elif st == _ESCAPE:
                if ch == "u":
                    self._state, self._hex = _UNICODE, ""
                elif ch in _SIMPLE_ESCAPES:
                    self._string_char(_SIMPLE_ESCAPES[ch])
                    self._state = _STRING
                else:
                    raise JsonError(f"invalid escape \\{ch}")
            elif st == _UNICODE:
                if ch not in _HEX:
                    raise JsonError("invalid \\u escape")
                self._hex += ch
                if len(self._hex) == 4:
                    self._state = _STRING
                    self._code_unit(int(self._hex, 16))
            elif st == _NUMBER_ST:
                if ch in _NUMBER_CHARS:
                    self._tok.append(ch)
                else:
                    self._end_number()
                    continue  # re-read ch in the next state
            elif st == _LITERAL:
                if "a" <= ch <= "z":
                    self._tok.append(ch)
                    if len(self._tok) > 5:
                        raise JsonError("invalid literal")
                else:
                    self._end_literal()
                    continue
            elif ch in _WS:
                pass
            else:
                self._structural(ch)
            pos += 1
        return pos

    def finish(self) -> None:
        """End of input: completes a top-level number/literal; raises if incomplete."""
        if self._state == _NUMBER_ST and not self._stack:
            self._end_number()
        elif self._state == _LITERAL and not self._stack:
            self._end_literal()
        if self._state != _DONE:
            raise JsonError("incomplete JSON value")

    def _structural(self, ch: str) -> None:
        st = self._state
        if not self._started:
            self._started = True
            if self.require_object and ch != "{":
                raise JsonError("expected a JSON object")
        if st == _VALUE or st == _ARR_FIRST:
            if st == _ARR_FIRST and ch == "]":
                self._emit("]")
                self._stack.pop()
                self._value_ended()
                return
            self._value_started()
            if ch == "{":
                self._stack.append(("{", set()))
                self._emit("{")
                self._state = _OBJ_KEY_OR_END
            elif ch == "[":
                self._stack.append(("[", set()))
                self._emit("[")
                self._state = _ARR_FIRST
            elif ch == '"':
                self._begin_string(is_key=False)
            elif ch == "-" or "0" <= ch <= "9":
                self._state, self._tok = _NUMBER_ST, [ch]
            elif ch in "tfn":
                self._state, self._tok = _LITERAL, [ch]
            else:
                raise JsonError(f"unexpected {ch!r}")
        elif st == _OBJ_KEY_OR_END or st == _OBJ_KEY:
            if ch == '"':
                self._begin_string(is_key=True)
            elif ch == "}" and st == _OBJ_KEY_OR_END:
                self._emit("}")
                self._stack.pop()
                self._value_ended()
            else:
                raise JsonError(f"expected a key, got {ch!r}")
        elif st == _OBJ_COLON:
            if ch != ":":
                raise JsonError(f"expected ':', got {ch!r}")
            self._emit(": ")
            self._state = _VALUE
        elif st == _AFTER_VALUE:
            kind = self._stack[-1][0]
            if ch == ",":
                self._emit(", ")
                self._state = _OBJ_KEY if kind == "{" else _VALUE
            elif (ch == "}" and kind == "{") or (ch == "]" and kind == "["):
                self._emit(ch)
                self._stack.pop()
                self._value_ended()
            else:
                raise JsonError(f"unexpected {ch!r} after a value")
        else:  # pragma: no cover - states handled in feed()
            raise JsonError("internal state error")

    # -- strings ----------------------------------------------------------------------
    def _begin_string(self, is_key: bool) -> None:
        self._state, self._tok, self._is_key = _STRING, [], is_key
        if not is_key:
            self._emit('"')

    def _string_char(self, ch: str) -> None:
        if self._high_surrogate is not None:
            raise JsonError("lone surrogate in string")
        self._tok.append(ch)
        if not self._is_key:
            self._emit(_CANON.get(ch, ch))

    def _code_unit(self, cu: int) -> None:
        if self._high_surrogate is not None:
            if not 0xDC00 <= cu <= 0xDFFF:
                raise JsonError("lone surrogate in string")
            cp = 0x10000 + ((self._high_surrogate - 0xD800) << 10) + (cu - 0xDC00)
            self._high_surrogate = None
            self._string_char(chr(cp))
        elif 0xD800 <= cu <= 0xDBFF:
            self._high_surrogate = cu
        elif 0xDC00 <= cu <= 0xDFFF:
            raise JsonError("lone surrogate in string")
        else:
            self._string_char(chr(cu))

    def _end_string(self) -> None:
        if self._high_surrogate is not None:
            raise JsonError("lone surrogate in string")
        s = "".join(self._tok)
        if self._is_key:
            keys = self._stack[-1][1]
            if s in keys:
                raise JsonError(f"duplicate key {s!r}")
            keys.add(s)
            self._emit(json.dumps(s, ensure_ascii=False))
            if self._depth1():
                self.current_key = s
            self._state = _OBJ_COLON
            return
        self._emit('"')
        if self._depth1() and self.current_key is not None:
            self.strings[self.current_key] = s
        self._value_ended()

    # -- scalars ----------------------------------------------------------------------
    def _end_number(self) -> None:
        raw = "".join(self._tok)
        if not _NUMBER.match(raw):
            raise JsonError(f"invalid number {raw!r}")
        try:
            canon = json.dumps(json.loads(raw))
        except ValueError as exc:  # e.g. int too long to convert
            raise JsonError(str(exc)) from None
        if canon in ("Infinity", "-Infinity", "NaN"):
            raise JsonError(f"number out of range {raw!r}")
        self._emit(canon)
        self._value_ended()

    def _end_literal(self) -> None:
        raw = "".join(self._tok)
        if raw not in ("true", "false", "null"):
            raise JsonError(f"invalid literal {raw!r}")
        self._emit(raw)
        self._value_ended()
