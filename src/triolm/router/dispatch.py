"""Sending one token-id completion to the fleet: choose a backend, send, and retry once
on another backend when the first could not be reached (nothing was sent to the client
yet). A stream that broke after it began is not retried: the client already has part
of it (the caller ends it with an error event)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import trio

from triolm.protocol.errors import APIError
from triolm.router.backend_client import (
    BackendBroke,
    BackendRejected,
    BackendUnreachable,
    post_completion,
    stream_completion,
)
from triolm.router.backends import Backend, Choice, NoBackend
from triolm.router.state import RouterState

_ATTEMPTS = 2  # the first backend, and one other


def choose(state: RouterState, prompt_ids: list[int], pinned: Backend | None = None,
           exclude: Backend | None = None) -> Choice:
    try:
        choice = state.pool.choose(prompt_ids, pinned, exclude)
    except NoBackend as exc:
        reason = "saturated" if exc.saturated else "no_backend"
        state.metrics.rejected.labels(reason).inc()
        if exc.saturated:
            raise APIError(429, str(exc), code="overloaded") from None
        raise APIError(503, str(exc), code="no_backend") from None
    state.metrics.requests.labels(choice.backend.url, choice.reason).inc()
    return choice


def _with_model(payload: dict, backend: Backend) -> dict:
    """The backend's own name for the model (a vLLM fleet may serve it under another)."""
    return {**payload, "model": backend.model_id} if backend.model_id else payload


def _unreachable(state: RouterState, backend: Backend, exc: BackendUnreachable) -> None:
    state.pool.check_failed(backend, str(exc), eject_now=exc.refused)
    state.metrics.backend_failures.labels(backend.url, "unreachable").inc()


def rejected_error(exc: BackendRejected) -> APIError:
    """The backend's own 4xx, as its error object says."""
    err = exc.body["error"]
    return APIError(exc.status, str(err.get("message", "")), param=err.get("param"), code=err.get("code"),
                    error_type=err.get("type"))


def _retryable(exc: Exception) -> bool:
    return isinstance(exc, BackendUnreachable) or (isinstance(exc, BackendRejected) and exc.status == 429)


def _give_up(exc: Exception) -> APIError:
    if isinstance(exc, BackendRejected):
        return rejected_error(exc)
    return APIError(502, f"{exc} (tried {_ATTEMPTS} backends)", code="backend_unavailable",
                    error_type="upstream_error")


async def complete(state: RouterState, payload: dict, choice: Choice,
                   prompt_ids: list[int]) -> tuple[dict, Choice]:
    """The backend's whole answer, and the choice that produced it."""
    for attempt in range(_ATTEMPTS):
        try:
            with state.pool.lease(choice) as backend:
                return await post_completion(state.client, backend, _with_model(payload, backend)), choice
        except (BackendUnreachable, BackendRejected) as exc:
            if isinstance(exc, BackendUnreachable):
                _unreachable(state, choice.backend, exc)
            if not _retryable(exc) or attempt == _ATTEMPTS - 1:
                raise _give_up(exc) from None
            state.pool.stats.retries += 1
            state.metrics.retries.inc()
            choice = choose(state, prompt_ids, exclude=choice.backend)
    raise AssertionError("unreachable")


async def open_stream(state: RouterState, payload: dict, choice: Choice,
                      prompt_ids: list[int]) -> tuple[AsyncIterator[dict], Choice]:
    """The backend's events once it has answered 200 and sent the first one, and the
    choice that produced them. The backend is counted in flight until the events end."""
    for attempt in range(_ATTEMPTS):
        started = [False]
        backend = state.pool.start(choice)
        events = stream_completion(state.client, backend, _with_model(payload, backend), started)
        try:
            first = await events.__anext__()
        except StopAsyncIteration:
            state.pool.finish(choice, True)
            return _empty(), choice
        except (BackendUnreachable, BackendRejected, BackendBroke) as exc:
            # nothing of it reached the client yet: another backend may take it
            state.pool.finish(choice, False)
            await _close(events)
            if isinstance(exc, BackendBroke):
                exc = BackendUnreachable(backend, str(exc))
            if isinstance(exc, BackendUnreachable):
                _unreachable(state, backend, exc)
            if not _retryable(exc) or attempt == _ATTEMPTS - 1:
                raise _give_up(exc) from None
            state.pool.stats.retries += 1
            state.metrics.retries.inc()
            choice = choose(state, prompt_ids, exclude=backend)
            continue
        except BaseException:
            state.pool.finish(choice, False)
            await _close(events)
            raise
        return _rest(state, choice, first, events), choice
    raise AssertionError("unreachable")


async def _rest(state: RouterState, choice: Choice, first: dict, events: AsyncIterator[dict]):
    succeeded = False
    try:
        yield first
        async for event in events:
            yield event
        succeeded = True
    except BackendBroke as exc:
        state.pool.check_failed(choice.backend, str(exc))
        state.metrics.backend_failures.labels(choice.backend.url, "broke_mid_stream").inc()
        raise
    finally:
        state.pool.finish(choice, succeeded)
        await _close(events)


async def _close(events) -> None:
    """Close the backend stream even when cancelled (the client left): the connection
    closes, and the backend sees it and stops generating."""
    with trio.CancelScope(shield=True, deadline=trio.current_time() + _CLOSE_SECONDS):
        await events.aclose()


_CLOSE_SECONDS = 2.0


async def _empty():
    return
    yield  # an async generator with nothing in it
