"""Server-sent events on the wire: how one event is framed, the OpenAI end sentinel and
the keep-alive comment. Every streaming endpoint frames through `frame`."""

from __future__ import annotations

import json

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"


def frame(data: dict, event: str | None = None) -> bytes:
    """One SSE event: an `event:` line when named, then a `data:` line no line splitter
    can break. Python's str.splitlines (so httpx `iter_lines`, and many hand-written SSE
    readers) also splits on U+2028, U+2029 and U+0085, which JSON may hold raw inside a
    string; written as \\u escapes the line stays whole and decodes to the same JSON
    (json.dumps escapes the rest)."""
    payload = json.dumps(data, ensure_ascii=False)
    if not payload.isascii():
        payload = payload.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").replace("\x85", "\\u0085")
    head = f"event: {event}\n" if event is not None else ""
    return f"{head}data: {payload}\n\n".encode()
