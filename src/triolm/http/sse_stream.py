"""The one streaming loop: every endpoint's SSE response is an `EventStream` (its own
event formatter's dicts) sent through `sse_response`.

The loop owns what all streams share: framing (`protocol.sse.frame`, which escapes the
line separators everywhere), the keep-alive while the generation is idle, the error
event when a generation fails after the 200 was sent, the tail that follows either (the
usage chunk), the OpenAI `[DONE]` sentinel, and closing the event source at once when
the client goes away (the engine sequences it feeds on are aborted then, not when a
garbage collector gets to it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import aclosing

import attrs
from quart import Response

from triolm.http.generations_run import STREAM_ERRORS, stream_error
from triolm.protocol import sse
from triolm.protocol.errors import APIError
from triolm.runtime.fanout import Tick


@attrs.frozen
class Dialect:
    """How an API's streams differ on the wire."""

    named: bool  # each event has an `event:` line: its "type"
    keepalive: bytes  # what an idle interval sends
    done: bool  # the `data: [DONE]` sentinel ends the stream


OPENAI = Dialect(named=False, keepalive=sse.KEEPALIVE, done=True)
RESPONSES = Dialect(named=True, keepalive=sse.KEEPALIVE, done=False)
ANTHROPIC = Dialect(named=True, keepalive=sse.frame({"type": "ping"}, "ping"), done=False)


def openai_error_events(err: APIError) -> list[dict]:
    return [{"error": err.body()["error"]}]


def no_events() -> list[dict]:
    return []


@attrs.frozen
class EventStream:
    """One response's stream: its events (Tick while idle), the events telling an error
    that ended them early, and those that follow them either way."""

    events: AsyncIterator[dict | Tick]
    dialect: Dialect = OPENAI
    on_error: Callable[[APIError], Iterable[dict]] = openai_error_events
    tail: Callable[[], Iterable[dict]] = no_events


def _frame(event: dict, dialect: Dialect) -> bytes:
    return sse.frame(event, event["type"] if dialect.named else None)


async def sse_body(stream: EventStream) -> AsyncIterator[bytes]:
    dialect = stream.dialect
    async with aclosing(stream.events) as events:
        try:
            async for event in events:
                yield dialect.keepalive if isinstance(event, Tick) else _frame(event, dialect)
        except STREAM_ERRORS as exc:
            for error_event in stream.on_error(stream_error(exc)):
                yield _frame(error_event, dialect)
    for event in stream.tail():
        yield _frame(event, dialect)
    if dialect.done:
        yield sse.DONE


def sse_response(stream: EventStream) -> Response:
    response = Response(sse_body(stream), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    response.timeout = None
    return response
