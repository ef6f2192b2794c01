"""`create_app()`: the Quart-Trio app, its lifespan tasks and its error handling.

`hypercorn --worker-class trio 'triolm.http.server:create_app()'` serves it directly (settings
from TRIOLM_* variables); `triolm serve` does the same with flags.
"""

from __future__ import annotations

import logging
import secrets

import trio
from quart import request
from quart_cors import cors
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from triolm.http.auth import ApiKeys, api_key_error, api_keys_of
from triolm.http.embeddings import embeddings_bp
from triolm.http.errors import error_response
from triolm.http.framework_patches import ShieldedLastSendConnection, install_body_drain
from triolm.http.messages_routes import messages_bp
from triolm.http.responses_routes import responses_bp
from triolm.http.routes import bp
from triolm.http.sessions_routes import register_sessions
from triolm.http.state import AppState
from triolm.http.trainer_routes import make_trainer_blueprint
from triolm.loading.served_model import ServedModel
from triolm.protocol.errors import APIError
from triolm.protocol.responses_store import ResponseStore
from triolm.runtime.lifecycle import Lifecycle
from triolm.runtime.loop_core import LoopBusyInstrument
from triolm.runtime.loop_lag import monitor_loop_lag
from triolm.runtime.metrics import Metrics
from triolm.runtime.runtime import RuntimeFailed, run_runtime
from triolm.sessions.registry import SessionRegistry
from triolm.settings import ServerSettings

log = logging.getLogger("triolm")


def create_app(settings: ServerSettings | None = None, *, served: ServedModel | None = None) -> QuartTrio:
    """Build the app. `served` injects an already-loaded model (tests share one)."""
    settings = settings or ServerSettings.from_env()
    app = QuartTrio("triolm")
    app.asgi_http_class = ShieldedLastSendConnection
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_size
    app.config["RESPONSE_TIMEOUT"] = None  # streams may be long; deadlines are our cancel scopes
    app.config["BODY_TIMEOUT"] = 60
    app.config["BACKGROUND_TASK_SHUTDOWN_TIMEOUT"] = settings.graceful_timeout
    state = AppState(settings=settings, metrics=Metrics(lambda: None), lifecycle=Lifecycle(),
                     sessions=SessionRegistry(settings.max_sessions, settings.session_idle_timeout),
                     responses=ResponseStore(settings.responses_store_entries, settings.responses_store_bytes,
                                             settings.responses_store_ttl))
    loop_busy = LoopBusyInstrument()  # lends the loop a kernel core while it has work
    app.config["TRIOLM_STATE"] = state
    app.register_blueprint(bp)
    app.register_blueprint(make_trainer_blueprint(state))
    app.register_blueprint(responses_bp)
    app.register_blueprint(messages_bp)
    app.register_blueprint(embeddings_bp)
    _install_error_handlers(app)
    _install_auth(app, api_keys_of(settings))
    if settings.allowed_origins:
        # after every response (errors and 401s included); preflights are answered by
        # Quart's automatic OPTIONS, which the key check lets through
        cors(app, allow_origin=list(settings.allowed_origins),
             allow_headers=["Authorization", "Content-Type", "x-api-key", "anthropic-version"],
             allow_methods=["GET", "POST", "DELETE", "OPTIONS"], max_age=600)
    install_body_drain(app)
    register_sessions(app, state)

    @app.before_serving
    async def start_background() -> None:
        # Trio objects are made here, inside the running loop, never at import time.
        app.nursery.start_soon(monitor_loop_lag, state.metrics)
        app.nursery.start_soon(_hold_runtime, state, served)
        trio.lowlevel.add_instrument(loop_busy)

    @app.after_serving
    async def stop_background() -> None:
        state.lifecycle.shut_down()
        loop_busy.remove()

    return app


async def _hold_runtime(state: AppState, served: ServedModel | None) -> None:
    """Start the runtime (the app answers probes meanwhile) and hold it while the app
    serves. A runtime that fails — at start or later — is recorded in the lifecycle, so
    /readyz says why and `triolm serve` exits non-zero."""
    try:
        async with trio.open_nursery() as nursery:
            state.runtime = await nursery.start(run_runtime, state.settings, state.lifecycle, served)
            state.sessions.attach(state.runtime.driver)
    except* RuntimeFailed as failed:
        state.runtime = None
        state.lifecycle.fail(_first_leaf(failed))


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


def _install_error_handlers(app: QuartTrio) -> None:
    @app.errorhandler(APIError)
    async def handle_api_error(err: APIError):
        return error_response(err)

    @app.errorhandler(HTTPException)
    async def handle_http(err: HTTPException):
        code = err.code or 500
        allowed = set(getattr(err, "valid_methods", None) or ())
        if code == 405 and allowed and allowed <= {"DELETE", "OPTIONS"} and request.path.count("/") == 1:
            code = 404  # only the session route DELETE /<uuid> matched: for GET /nope that is "no route"
        messages = {404: f"no route for {request.method} {request.path}",
                    405: f"method {request.method} not allowed on {request.path}",
                    413: f"request body larger than the limit of {app.config['MAX_CONTENT_LENGTH']} bytes"}
        return error_response(APIError(code, messages.get(code, err.description or err.name)))

    @app.errorhandler(Exception)
    async def handle_unexpected(err: Exception):
        incident = secrets.token_hex(4)
        log.exception("unhandled error (incident %s)", incident)
        return error_response(APIError(500, f"internal error (incident {incident}); see server log",
                                       error_type="internal_server_error"))


def install_http_basics(app: QuartTrio, keys: ApiKeys) -> None:
    """What `triolm router` shares with this app: OpenAI error objects, the API-key
    check, draining request bodies, the shielded last send."""
    app.asgi_http_class = ShieldedLastSendConnection
    _install_error_handlers(app)
    _install_auth(app, keys)
    install_body_drain(app)


def _install_auth(app: QuartTrio, keys: ApiKeys) -> None:
    @app.before_request
    async def check_api_key():
        err = api_key_error(keys, request)
        if err is None:
            return None
        await request.get_data()  # drain the body: keep the keep-alive connection usable
        return error_response(err)
