"""`create_router_app()`: the router's Quart-Trio app — the same error shapes, API key,
body handling and session routes as `triolm serve`, with the fleet behind it."""

from __future__ import annotations

import trio
from quart_trio import QuartTrio

from triolm.http.auth import api_keys_of
from triolm.http.router_routes import admin, bp
from triolm.http.router_session_turns import FleetTurns
from triolm.http.server import install_http_basics
from triolm.http.sessions_routes import register_session_routes
from triolm.prompting.template_workers import open_template_workers
from triolm.router.backend_client import make_client
from triolm.router.backends import BackendPool, read_backends_file
from triolm.router.frontend import PromptFrontend
from triolm.router.health import watch_backends
from triolm.router.router_metrics import RouterMetrics
from triolm.router.settings import RouterSettings
from triolm.router.state import RouterState
from triolm.runtime.lanes import PromptLanes
from triolm.sessions.registry import SessionRegistry


def initial_backends(settings: RouterSettings) -> list[str]:
    urls = list(settings.backends)
    if settings.backends_file:
        urls += read_backends_file(settings.backends_file)
    return urls


def create_router_app(settings: RouterSettings, frontend: PromptFrontend) -> QuartTrio:
    app = QuartTrio("triolm-router")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_size
    app.config["RESPONSE_TIMEOUT"] = None  # streams may be long; deadlines are httpx's and ours
    app.config["BODY_TIMEOUT"] = 60
    app.config["BACKGROUND_TASK_SHUTDOWN_TIMEOUT"] = settings.graceful_timeout
    pool = BackendPool(initial_backends(settings), max_inflight=settings.backend_max_inflight,
                       failures_to_eject=settings.health_failures,
                       affinity_min_tokens=settings.affinity_min_tokens, affinity_slack=settings.affinity_slack,
                       affinity_entries=settings.affinity_entries)
    state = RouterState(settings=settings, frontend=frontend, pool=pool,
                        sessions=SessionRegistry(settings.max_sessions, settings.session_idle_timeout),
                        metrics=RouterMetrics())
    app.config["TRIOLM_ROUTER_STATE"] = state
    app.register_blueprint(bp)
    app.register_blueprint(admin)
    install_http_basics(app, api_keys_of(settings))
    register_session_routes(app, FleetTurns(state))

    @app.before_serving
    async def start_background() -> None:
        state.client = make_client(settings.connect_timeout, settings.request_timeout, settings.backend_api_key)
        await app.nursery.start(_run_prompt_lanes, state)
        await app.nursery.start(watch_backends, state)

    @app.after_serving
    async def stop_background() -> None:
        state.shutting_down = True
        if state.client is not None:
            with trio.CancelScope(shield=True):
                await state.client.aclose()

    return app


async def _run_prompt_lanes(state: RouterState, task_status=trio.TASK_STATUS_IGNORED) -> None:
    settings = state.settings
    async with open_template_workers(settings.template_memory) as workers:
        state.lanes = PromptLanes(small=trio.CapacityLimiter(1),
                                  large=trio.CapacityLimiter(settings.tokenizer_threads),
                                  templates=workers, small_work_chars=settings.small_work_chars)
        await workers.warm_up(state.frontend.chat_template, state.lanes.small)
        task_status.started()
        await trio.sleep_forever()
