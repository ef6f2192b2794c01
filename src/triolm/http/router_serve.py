"""`triolm router`: hypercorn's trio worker around the router app. SIGHUP re-reads the
backends file; SIGINT/SIGTERM stop accepting and give in-flight requests the graceful
timeout."""

from __future__ import annotations

import logging
import signal

import trio

from triolm.http.router_app import create_router_app
from triolm.http.router_routes import reload_backends
from triolm.router.frontend import PromptFrontend
from triolm.router.settings import RouterSettings

log = logging.getLogger("triolm.router")


async def serve_router(settings: RouterSettings, frontend: PromptFrontend) -> int:
    from hypercorn.config import Config
    from hypercorn.trio import serve as hypercorn_serve

    from triolm.http import framework_patches

    framework_patches.install_fast_send_server()
    app = create_router_app(settings, frontend)
    state = app.config["TRIOLM_ROUTER_STATE"]
    config = Config()
    config.bind = [f"{settings.host}:{settings.port}"]
    config.graceful_timeout = settings.graceful_timeout
    config.loglevel = settings.log_level.upper()
    config.accesslog = None

    async def shutdown_trigger() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("signal %s: shutting down", signum)
                state.shutting_down = True
                return

    async def reload_on_sighup() -> None:
        with trio.open_signal_receiver(signal.SIGHUP) as signals:
            async for _ in signals:
                try:
                    log.info("SIGHUP: backends %s", reload_backends(state))
                except Exception as exc:  # an unreadable file keeps the fleet as it is
                    log.error("SIGHUP: cannot reload the backends: %s", exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reload_on_sighup)
        await hypercorn_serve(app, config, shutdown_trigger=shutdown_trigger)
        nursery.cancel_scope.cancel()
    return 0
