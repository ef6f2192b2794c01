"""The tool-call parser interface shared by every model format.

A parser turns the text a model generated into OpenAI tool calls, in one go (`parse`) or
as the text streams (`StreamingToolParser.push`).  Both run the same character-driven
state machine, so the streamed deltas always add up to the non-streamed message for
well-formed output.  The one place they can differ: once a stream has sent a call's
name it cannot take it back, so a call that breaks *after* its name was streamed (e.g.
cut by max_tokens) stays a (truncated) call in the stream, while `parse` of the same
text treats the broken call as plain content.

Each format also has a `ToolCallFormat`: the exact text a call is rendered as.  The
grammar layer builds constrained-decoding grammars from it, so forced tool calls are
the model's native markup, byte for byte what the chat template renders back.
"""

from __future__ import annotations

import abc
import json
import re
import secrets
import string
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import attrs

from .json_stream import JsonError, JsonStream

_ALNUM = string.ascii_letters + string.digits
WHITESPACE = " \t\n\r"
TOOL_NAME_RE = re.compile(r"[a-zA-Z0-9_.-]{1,64}\Z")


def random_call_id(prefix: str = "call_", length: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ALNUM) for _ in range(length))


# ---------------------------------------------------------------------------- results
@attrs.frozen
class ToolCall:
    """One call, OpenAI-shaped: `arguments` is a JSON *string* (json.dumps, ensure_ascii=False)."""

    id: str
    name: str
    arguments: str
    type: str = "function"

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "function": {"name": self.name, "arguments": self.arguments}}


@attrs.frozen
class ParsedToolCalls:
    """`content`: the text outside the calls (None when calls leave no text)."""

    content: str | None
    tool_calls: list[ToolCall]


@attrs.frozen
class DeltaEvent:
    """One streamed delta: content text, a call header (index, id, name), or an
    argument fragment (index, arguments)."""

    content: str | None = None
    index: int | None = None
    id: str | None = None
    name: str | None = None
    arguments: str | None = None

    @property
    def is_content(self) -> bool:
        return self.content is not None

    def to_openai(self) -> dict[str, Any]:
        """The `delta` object of a chat.completion.chunk."""
        if self.content is not None:
            return {"content": self.content}
        call: dict[str, Any] = {"index": self.index}
        function: dict[str, Any] = {}
        if self.id is not None:
            call["id"] = self.id
            call["type"] = "function"
        if self.name is not None:
            function["name"] = self.name
        if self.arguments is not None:
            function["arguments"] = self.arguments
        call["function"] = function
        return {"tool_calls": [call]}


def aggregate(events: Iterable[DeltaEvent]) -> ParsedToolCalls:
    """Fold streamed deltas into the non-streamed message."""
    content: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    for ev in events:
        if ev.content is not None:
            content.append(ev.content)
            continue
        c = calls.setdefault(ev.index, {"id": None, "name": None, "arguments": []})
        if ev.id is not None:
            c["id"] = ev.id
        if ev.name is not None:
            c["name"] = ev.name
        if ev.arguments:
            c["arguments"].append(ev.arguments)
    tool_calls = [
        ToolCall(id=c["id"], name=c["name"], arguments="".join(c["arguments"]))
        for _, c in sorted(calls.items())
    ]
    text = "".join(content)
    return ParsedToolCalls(content=(text or None) if tool_calls else text, tool_calls=tool_calls)


# ----------------------------------------------------------------- rendering / grammar
@attrs.frozen
class Lit:
    """Literal text; a `ToolCallFormat.markers` string may be one special token."""

    text: str


@attrs.frozen
class Name:
    """The function name."""


@attrs.frozen
class Args:
    """The arguments object, as json.dumps(args, ensure_ascii=False)."""


@attrs.frozen
class Slot:
    """Text the model chooses within `regex`; rendered from the call's `field`
    (e.g. the id) or as `default`."""

    regex: str
    field: str | None = None
    default: str = ""


@attrs.frozen
class Opt:
    """Literal text the model may write or leave out; rendered as nothing."""

    text: str


Piece = Lit | Name | Args | Slot | Opt


@attrs.frozen
class ToolCallFormat:
    """How a turn of tool calls is spelled: begin, call (repeated, joined by separator),
    end.  `render_calls` and the grammar layer both read these pieces, so constrained
    output and chat-template rendering cannot drift apart."""

    parser: str
    begin: tuple[Piece, ...]
    call: tuple[Piece, ...]
    separator: tuple[Piece, ...]
    end: tuple[Piece, ...]
    markers: tuple[str, ...] = ()
    max_calls: int | None = None  # the chat template accepts at most this many per turn
    json_separators: tuple[str, str] = (", ", ": ")  # json.dumps default, as tojson renders

    def _render(self, pieces: Sequence[Piece], name: str = "", arguments: Any = None, fields=None) -> str:
        out = []
        for p in pieces:
            if isinstance(p, Lit):
                out.append(p.text)
            elif isinstance(p, Name):
                out.append(name)
            elif isinstance(p, Args):
                out.append(json.dumps(arguments, ensure_ascii=False))
            elif isinstance(p, Slot):
                out.append((fields or {}).get(p.field) or p.default)
        return "".join(out)

    def render_call(self, name: str, arguments: Mapping[str, Any], call_id: str | None = None) -> str:
        return self._render(self.call, name, dict(arguments), {"id": call_id})

    def render_calls(self, calls: Sequence[ToolCall | tuple]) -> str:
        """The assistant turn's text for `calls`: ToolCall objects, or (name, arguments)
        / (name, arguments, call_id) tuples."""
        parts = []
        for c in calls:
            if isinstance(c, ToolCall):
                parts.append(self.render_call(c.name, json.loads(c.arguments), c.id))
            else:
                parts.append(self.render_call(*c))
        return self._render(self.begin) + self._render(self.separator).join(parts) + self._render(self.end)


# ------------------------------------------------------------------------ parsers
class ToolParser(abc.ABC):
    """Parses one model format.  `tool_names`, when given, makes calls to other names
    plain content."""

    name: ClassVar[str]
    format: ClassVar[ToolCallFormat]
    stream_class: ClassVar[type[StreamingToolParser]]  # the format's state machine

    def __init__(self, tool_names: Iterable[str] | None = None):
        self.tool_names = frozenset(tool_names) if tool_names is not None else None

    def streaming(self) -> StreamingToolParser:
        """A fresh incremental parser for one response."""
        return self.stream_class(self)

    def parse(self, text: str, cut_short: bool = False) -> ParsedToolCalls:
        """`cut_short`: the generation stopped mid-text (max_tokens); complete calls are
        kept, an unfinished call or marker at the end is dropped, never made content."""
        stream = self.streaming()
        if cut_short:  # no incremental commit: only complete calls become calls
            stream._pending = text
            stream._run(final=False)
            return aggregate(stream._take() + stream.finish(cut_short=True))
        events = stream._consume(text, final=True) + stream.finish()
        return aggregate(events)


class _Call:
    """A call being read: its raw text (for the malformed fallback) and JSON reader."""

    def __init__(self, ws_before: str, raw: str, stream: JsonStream, name: str | None = None):
        self.ws_before = ws_before
        self.raw = [raw]
        self.stream = stream
        self.fixed_name = name  # known before the JSON (e.g. mistral v11 `NAME[ARGS]{...}`)
        self.fixed_id: str | None = None
        self.committed = False
        self.incremental = True
        self.index = -1
        self.emitted = 0  # canonical argument characters already sent


class StreamingToolParser(abc.ABC):
    """Incremental parser: `push(delta)` returns the deltas that are final so far;
    `finish()` flushes at end of generation.

    Content rules (the same for streamed and non-streamed): with no calls, content is
    the text unchanged; whitespace touching a call is dropped, and the text segments
    around calls are joined with a newline.
    """

    require_args_key = False  # a call object without "arguments"/"parameters" is not a call
    args_keys = ("arguments", "parameters")
    initial_state: ClassVar[str] = "out"  # where the format's state machine (`_run`) starts

    def __init__(self, parser: ToolParser):
        self._parser = parser
        self._state = self.initial_state
        self._pending = ""
        self._events: list[DeltaEvent] = []
        self._ws = ""
        self._after_call = False
        self._any_content = False
        self._n_calls = 0
        self._call: _Call | None = None

    # -- public -----------------------------------------------------------------------
    def push(self, delta_text: str) -> list[DeltaEvent]:
        return self._consume(delta_text, final=False)

    def finish(self, cut_short: bool = False) -> list[DeltaEvent]:
        """`cut_short`: the text stopped mid-way (max_tokens); what is still undecided at
        its end (a marker's first characters, an unfinished call) is markup cut off, and
        dropped rather than sent as content."""
        self._run(final=not cut_short)
        self._end_of_text(cut_short)
        if self._ws and not self._after_call:
            self._emit_content(self._ws)
        self._ws = ""
        return self._take()

    # -- subclass hooks -----------------------------------------------------------------
    @abc.abstractmethod
    def _run(self, final: bool) -> None:
        """Consume as much of self._pending as can be decided."""

    def _end_of_text(self, cut_short: bool = False) -> None:
        """The text ended: a call still open is truncated."""
        call = self._call
        if call is None:
            if cut_short:
                self._pending = ""  # the first characters of a marker
            return
        if self._complete_at_end(call):
            if not self._complete_call(call):
                self._abandon_call(call, self._pending)
        elif cut_short and not call.committed:  # an unfinished call: dropped
            self._call = None
            self._ws = call.ws_before + self._ws
        elif not call.committed:
            self._abandon_call(call, self._pending)
        else:  # a streamed call cut short: it stays as sent
            self._call = None
            self._after_call = True
        self._pending = ""

    def _complete_at_end(self, call: _Call) -> bool:
        return False

    # -- plumbing ----------------------------------------------------------------------
    def _consume(self, text: str, final: bool) -> list[DeltaEvent]:
        self._pending += text
        self._run(final)
        if not final and self._call is not None and not self._call.committed and self._call.incremental:
            self._try_commit(self._call, complete=False)
        elif not final and self._call is not None and self._call.committed:
            self._flush_args(self._call)
        return self._take()

    def _take(self) -> list[DeltaEvent]:
        out, self._events = self._events, []
        merged: list[DeltaEvent] = []
        for ev in out:
            if ev.content is not None and merged and merged[-1].content is not None:
                merged[-1] = DeltaEvent(content=merged[-1].content + ev.content)
            else:
                merged.append(ev)
        return merged

    def _emit_content(self, s: str) -> None:
        if s:
            self._events.append(DeltaEvent(content=s))
            self._any_content = True

    def _content(self, s: str) -> None:
        """Text outside calls, applying the whitespace rules."""
        if not s:
            return
        body = s.lstrip(WHITESPACE)
        if not body:
            self._ws += s
            return
        lead = s[: len(s) - len(body)]
        if self._after_call:
            if self._any_content:
                self._emit_content("\n")
            self._after_call = False
        else:
            self._emit_content(self._ws + lead)
        self._ws = ""
        core = body.rstrip(WHITESPACE)
        self._emit_content(core)
        self._ws = body[len(core):]

    def _open_call(
        self, raw: str, stream: JsonStream, name: str | None = None, incremental: bool = True
    ) -> _Call:
        """A call starts; the whitespace before it is kept aside until it proves valid.
        `incremental`: stream its arguments before the call is complete."""
        self._call = _Call(self._ws, raw, stream, name)
        self._call.incremental = incremental
        self._ws = ""
        return self._call

    def _feed_call(self, call: _Call) -> bool:
        """Feed pending text to the call's JSON; True when the JSON value is complete.
        Raises JsonError, leaving the offending character first in self._pending."""
        try:
            pos = call.stream.feed(self._pending)
        except JsonError as exc:
            call.raw.append(self._pending[: exc.pos])
            self._pending = self._pending[exc.pos :]
            raise
        call.raw.append(self._pending[:pos])
        self._pending = self._pending[pos:]
        return call.stream.done

    # call fields ----------------------------------------------------------------------
    def _name(self, call: _Call) -> str | None:
        if call.fixed_name is not None:
            return call.fixed_name
        span = call.stream.spans.get("name")
        if span is None or span[1] is None:
            return None
        return call.stream.strings.get("name")

    def _args_span(self, call: _Call) -> tuple[int, int | None] | None:
        if call.fixed_name is not None:  # the stream *is* the arguments
            return (0, call.stream.out_len if call.stream.done else None)
        best = None
        for key in self.args_keys:
            span = call.stream.spans.get(key)
            if span is not None and (best is None or span[0] < best[0]):
                best = span
        return None if best is None else (best[0], best[1])

    def _name_ok(self, name: str | None) -> bool:
        if name is None or not TOOL_NAME_RE.match(name):
            return False
        return self._parser.tool_names is None or name in self._parser.tool_names

    def _call_id(self, call: _Call) -> str:
        return random_call_id()

    def _try_commit(self, call: _Call, complete: bool) -> bool:
        """Send the call header once name and arguments are known (and valid so far)."""
        name = self._name(call)
        span = self._args_span(call)
        if not self._name_ok(name):
            return False
        if span is None:
            if not complete or self.require_args_key:
                return False
        elif call.stream.out_len <= span[0] or call.stream.text(span[0], span[0] + 1) != "{":
            return False
        if not call.committed:
            call.committed = True
            call.index = self._n_calls
            self._n_calls += 1
            self._events.append(DeltaEvent(index=call.index, id=self._call_id(call), name=name, arguments=""))
        self._flush_args(call)
        return True

    def _flush_args(self, call: _Call) -> None:
        span = self._args_span(call)
        if span is None:
            return
        end = span[1] if span[1] is not None else call.stream.out_len
        start = span[0] + call.emitted
        if end > start:
            self._events.append(DeltaEvent(index=call.index, arguments=call.stream.text(start, end)))
            call.emitted = end - span[0]

    def _complete_call(self, call: _Call) -> bool:
        """The call's markup is complete: emit what is left; False if it is not a call."""
        ok = self._try_commit(call, complete=True)
        if ok and self._args_span(call) is None:
            self._events.append(DeltaEvent(index=call.index, arguments="{}"))
        self._call = None
        if ok:
            self._after_call = True
            self._ws = ""
        return ok

    def _abandon_call(self, call: _Call, rest: str = "") -> None:
        """The markup turned out malformed: uncommitted, its text is plain content."""
        self._call = None
        if not call.committed:
            self._ws = call.ws_before + self._ws
            self._content("".join(call.raw) + rest)
        else:
            self._after_call = True

    # marker scanning --------------------------------------------------------------------

    def _content_until(self, marker: str, final: bool) -> bool:
        """Emit pending text up to `marker` as content and consume the marker: True.
        Without the marker: emit what cannot start it, keep the rest, False (wait)."""
        i = self._pending.find(marker)
        if i == -1:
            cut = len(self._pending) - self._hold(self._pending, (marker,), final)
            self._content(self._pending[:cut])
            self._pending = self._pending[cut:]
            return False
        self._content(self._pending[:i])
        self._pending = self._pending[i + len(marker):]
        return True

    @staticmethod
    def _hold(buf: str, markers: Sequence[str], final: bool) -> int:
        """Length of buf's suffix that could start a marker (kept back unless final)."""
        if final:
            return 0
        for k in range(min(len(buf), max(len(m) for m in markers) - 1), 0, -1):
            tail = buf[-k:]
            if any(m.startswith(tail) for m in markers):
                return k
        return 0


def first_marker(buf: str, markers: Sequence[str]) -> tuple[int, str | None]:
    """Earliest occurrence of any marker: (index, marker) or (-1, None)."""
    best, which = -1, None
    for m in markers:
        i = buf.find(m)
        if i != -1 and (best == -1 or i < best):
            best, which = i, m
    return best, which


__all__ = [
    "Args",
    "DeltaEvent",
    "JsonError",
    "JsonStream",
    "Lit",
    "Name",
    "Opt",
    "ParsedToolCalls",
    "Slot",
    "StreamingToolParser",
    "ToolCall",
    "ToolCallFormat",
    "ToolParser",
    "aggregate",
    "first_marker",
    "random_call_id",
]


class JsonCallStream(StreamingToolParser):
    """A format whose calls are JSON objects, `{"name": ..., "arguments": ...}` (hermes,
    llama3_json, generic)."""

    def _open_json_call(self, raw: str) -> None:
        """A call object starts (`raw`: the markup before it)."""
        self._open_call(raw, JsonStream(require_object=True))

    def _read_call(self) -> bool | None:
        """Feed pending text to the open call: True once its object is complete, False
        while it needs more text, None when the text is not JSON (the call broke)."""
        assert self._call is not None
        try:
            return self._feed_call(self._call)
        except JsonError:
            return None
