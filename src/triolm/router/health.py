"""Health checks: every interval, each backend's /health, /v1/models and /metrics (its
load). A backend is out after `health_failures` failed checks in a row (at once when a
request finds its port closed) and back after one check that passes."""

from __future__ import annotations

import logging

import httpx
import trio

from triolm.router.backend_client import probe
from triolm.router.backend_load import running_plus_waiting
from triolm.router.backends import Backend
from triolm.router.state import RouterState

log = logging.getLogger("triolm.router")


async def check_backend(state: RouterState, backend: Backend) -> None:
    was = backend.healthy
    timeout = state.settings.health_timeout
    try:
        with trio.fail_after(timeout * 3 + 1):  # three probes, each bounded by httpx too
            model_id, metrics_text = await probe(state.client, backend, timeout)
        load = running_plus_waiting(metrics_text)
    except (httpx.HTTPError, ValueError, trio.TooSlowError) as exc:
        state.pool.check_failed(backend, f"health check: {type(exc).__name__}: {exc}")
        if was and not backend.healthy:
            log.warning("backend %s is out: %s", backend.url, backend.last_error)
        return
    state.pool.check_passed(backend, model_id, load)
    if not was:
        log.info("backend %s admitted (model %s)", backend.url, backend.model_id)


async def watch_backends(state: RouterState, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Check every backend now, then every interval, for as long as the router serves."""
    first = True
    while True:
        async with trio.open_nursery() as nursery:
            for backend in list(state.pool.backends.values()):
                nursery.start_soon(check_backend, state, backend)
        if first:
            task_status.started()
            first = False
        await trio.sleep(state.settings.health_interval)
