"""HTTP calls to one backend: a token-id completion (whole or streamed), and its probes.

Failures are sorted by what the router may still do about them:
- `BackendUnreachable`: the request never got an answer (refused, reset, timed out
  before the response began, or a 5xx): nothing reached the client, another backend
  may take it.
- `BackendRejected`: the backend answered with an error the client should see (4xx,
  e.g. a context-length 400) — passed through as it is; a 429 may go elsewhere.
- `BackendBroke`: the stream began and then failed (the backend died mid-request).

Streams are read as raw bytes and split into SSE events here: httpx's `iter_lines()`
splits on U+2028/U+2029/U+0085 inside JSON strings and closes the connection when the
loop is left early.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx

from triolm.router.backends import Backend


class BackendUnreachable(Exception):
    def __init__(self, backend: Backend, message: str, refused: bool = False):
        super().__init__(f"backend {backend.url}: {message}")
        self.refused = refused


class BackendRejected(Exception):
    def __init__(self, status: int, body: dict):
        super().__init__(f"backend answered {status}")
        self.status = status
        self.body = body


class BackendBroke(Exception):
    pass


_TRANSPORT_ERRORS = (httpx.TransportError,)
_KEEPALIVE_SECONDS = 2.0  # connect/read/write errors, timeouts, protocol errors


def make_client(connect_timeout: float, request_timeout: float, api_key: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.AsyncClient(
        timeout=httpx.Timeout(request_timeout, connect=connect_timeout, pool=connect_timeout),
        # An idle keep-alive connection is dropped before the backend's own idle timeout
        # (hypercorn's and uvicorn's: 5 s) can close it under a request being sent.
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=256,
                            keepalive_expiry=_KEEPALIVE_SECONDS),
        headers=headers)


async def post_completion(client: httpx.AsyncClient, backend: Backend, payload: dict) -> dict:
    """A whole (non-streamed) /v1/completions answer."""
    try:
        response = await client.post(backend.url + "/v1/completions", json=payload)
    except httpx.ConnectError as exc:
        raise BackendUnreachable(backend, f"cannot connect: {exc}", refused=True) from None
    except _TRANSPORT_ERRORS as exc:
        raise BackendUnreachable(backend, f"{type(exc).__name__}: {exc}") from None
    _check_status(backend, response.status_code, response.content)
    try:
        return response.json()
    except ValueError:
        raise BackendUnreachable(backend, "answered with a body that is not JSON") from None


async def stream_completion(client: httpx.AsyncClient, backend: Backend, payload: dict,
                            started: list[bool]) -> AsyncIterator[dict]:
    """The SSE events of a streamed /v1/completions, parsed, up to [DONE]. `started[0]`
    turns true once the backend answered 200 (from then on a failure is BackendBroke)."""
    try:
        async with client.stream("POST", backend.url + "/v1/completions", json=payload) as response:
            if response.status_code != 200:
                _check_status(backend, response.status_code, await response.aread())
            started[0] = True
            async for event in _sse_events(response):
                if event == "[DONE]":
                    return
                try:
                    yield json.loads(event)
                except ValueError:
                    raise BackendBroke(f"backend {backend.url} sent an event that is not JSON") from None
            raise BackendBroke(f"backend {backend.url} ended the stream without [DONE]")
    except httpx.ConnectError as exc:
        raise BackendUnreachable(backend, f"cannot connect: {exc}", refused=True) from None
    except _TRANSPORT_ERRORS as exc:
        if started[0]:
            raise BackendBroke(f"backend {backend.url} failed mid-stream: {type(exc).__name__}: {exc}") from None
        raise BackendUnreachable(backend, f"{type(exc).__name__}: {exc}") from None


async def _sse_events(response: httpx.Response) -> AsyncIterator[str]:
    """The `data:` payload of each event (comments such as keep-alives skipped)."""
    buffer = b""
    async for chunk in response.aiter_bytes():
        buffer += chunk
        while True:
            end = _event_end(buffer)
            if end is None:
                break
            raw, buffer = buffer[:end[0]], buffer[end[1]:]
            data = [line[5:].lstrip(b" ") for line in raw.replace(b"\r\n", b"\n").split(b"\n")
                    if line.startswith(b"data:")]
            if data:
                yield b"\n".join(data).decode("utf-8")


def _event_end(buffer: bytes) -> tuple[int, int] | None:
    """(end of the event, start of the next) at the first blank line, if any."""
    found = [(i, i + len(sep)) for sep in (b"\n\n", b"\r\n\r\n") if (i := buffer.find(sep)) != -1]
    return min(found) if found else None


def _check_status(backend: Backend, status: int, content: bytes) -> None:
    if status == 200:
        return
    try:
        body = json.loads(content)
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        text = content[:200].decode("utf-8", errors="replace")
        body = {"error": {"message": f"backend answered {status}: {text}", "type": "upstream_error",
                          "param": None, "code": None}}
    if status >= 500:
        raise BackendUnreachable(backend, f"answered {status}: {body['error'].get('message')}")
    raise BackendRejected(status, body)


async def probe(client: httpx.AsyncClient, backend: Backend, timeout: float) -> tuple[str | None, str]:
    """(the backend's model id, its /metrics text) — raises httpx errors or ValueError
    when it is not healthy."""
    health = await client.get(backend.url + "/health", timeout=timeout)
    if health.status_code != 200:
        raise ValueError(f"/health answered {health.status_code}")
    models = await client.get(backend.url + "/v1/models", timeout=timeout)
    data = models.json().get("data") if models.status_code == 200 else None
    model_id = data[0].get("id") if isinstance(data, list) and data and isinstance(data[0], dict) else None
    metrics = await client.get(backend.url + "/metrics", timeout=timeout)
    return model_id, metrics.text if metrics.status_code == 200 else ""
