"""`create_app()`: the Quart-Trio app, its lifespan tasks and its error handling.

`hypercorn --worker-class trio 'triolm.http.server:create_app()'` serves it directly (settings
from TRIOLM_* variables); `triolm serve` does the same with flags.
"""

from __future__ import annotations

import gc
import logging
import secrets
import sys

import trio
from quart import jsonify, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from triolm.engine.llm_engine import EngineConfig, LLMEngine
from triolm.errors import ModelLoadError
from triolm.http.auth import api_key_error
from triolm.http.embeddings import embeddings_bp
from triolm.http.errors import error_response
from triolm.http.framework_patches import ShieldedLastSendConnection, install_body_drain
from triolm.http.messages_routes import messages_bp
from triolm.http.responses_routes import responses_bp
from triolm.http.routes import bp
from triolm.http.state import AppState
from triolm.loading.served_model import ServedModel, load_served_model
from triolm.prompting.template_workers import open_template_workers
from triolm.protocol.errors import APIError
from triolm.protocol.responses_store import ResponseStore
from triolm.runtime.engine_driver import EngineDriver
from triolm.runtime.lanes import PromptLanes
from triolm.runtime.loop_core import LoopBusyInstrument
from triolm.runtime.loop_lag import monitor_loop_lag
from triolm.runtime.metrics import Metrics
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
    state = AppState(settings=settings, metrics=Metrics(lambda: None),
                     responses=ResponseStore(settings.responses_store_entries, settings.responses_store_bytes,
                                             settings.responses_store_ttl))
    loop_busy = LoopBusyInstrument()  # lends the loop a kernel core while it has work
    app.config["TRIOLM_STATE"] = state
    app.register_blueprint(bp)
    app.register_blueprint(responses_bp)
    app.register_blueprint(messages_bp)
    app.register_blueprint(embeddings_bp)
    _install_error_handlers(app)
    _install_auth(app, state)
    install_body_drain(app)
    _install_sessions(app, state)

    @app.before_serving
    async def start_background() -> None:
        # Trio objects are made here, inside the running loop, never at import time.
        await app.nursery.start(_run_prompt_lanes, state)
        state.grammar_limiter = trio.CapacityLimiter(1)
        if state.fatal is None:  # `triolm serve` made it already (a trio.Event has no truth value)
            state.fatal = trio.Event()
        app.nursery.start_soon(monitor_loop_lag, state.metrics)
        app.nursery.start_soon(_load_and_drive, state, served)
        trio.lowlevel.add_instrument(loop_busy)

    @app.after_serving
    async def stop_background() -> None:
        state.shutting_down = True
        loop_busy.remove()

    return app


async def _run_prompt_lanes(state: AppState, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """The app's prompt lanes and chat-template worker processes, for as long as it serves."""
    settings = state.settings
    async with open_template_workers(settings.template_memory) as workers:
        state.lanes = PromptLanes(small=trio.CapacityLimiter(1),
                                  large=trio.CapacityLimiter(settings.tokenizer_threads),
                                  templates=workers, small_work_chars=settings.small_work_chars)
        state.tokenize_limiter = state.lanes.large
        task_status.started()
        await trio.sleep_forever()


async def _load_and_drive(state: AppState, served: ServedModel | None) -> None:
    """Load the model, then run its engine for the server's lifetime.

    Whatever ends this task early — a file that cannot be loaded, an engine that cannot
    be built, a crashed driver — is logged and sets `state.fatal`, so `triolm serve` exits
    non-zero instead of answering probes with nothing behind them."""
    settings = state.settings
    if served is None:
        try:
            served = await trio.to_thread.run_sync(_load_with_progress, settings, state)
        except (ModelLoadError, OSError) as exc:
            _fail(state, f"model load failed: {exc}")
            return
        except Exception as exc:  # a loader bug: report it, don't take the loop down silently
            _fail(state, f"model load failed: {type(exc).__name__}: {exc}", exc)
            return
    try:
        if served.mistral_tokenizer is None:  # start a template worker before the first request needs one
            await state.lanes.templates.warm_up(served.chat_template, state.lanes.small)
        engine = LLMEngine(served.model, served.eos_token_ids, EngineConfig(
            max_num_seqs=settings.max_num_seqs, max_model_len=served.max_model_len,
            kv_cache_bytes=settings.kv_cache_memory, kv_cache_dtype=settings.kv_cache_dtype,
            seed=settings.seed))
        driver = EngineDriver(engine, settings.max_queue)
        if state.sessions is not None:
            state.sessions.attach(served, driver)
    except Exception as exc:
        _fail(state, f"model load failed: cannot build the engine: {type(exc).__name__}: {exc}", exc)
        return
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(driver.run)
            # What is alive now (torch, the weights' modules, imports) lives as long as the
            # server: freeze it out of the garbage collector, whose full collections would
            # otherwise walk it again and again with the event loop stopped (~150 ms each).
            gc.collect()
            gc.freeze()
            state.served, state.driver = served, driver
            state.loading = "ready"
            log.info("model %s ready (max_model_len %d, %d KV blocks)", served.name,
                     served.max_model_len, engine.block_manager.num_blocks)
    except Exception as exc:
        # Without its driver the server cannot generate: say so (/readyz 503) and let
        # `triolm serve` exit non-zero, rather than keep answering probes while hanging.
        state.driver = None
        _fail(state, f"engine driver crashed: {exc!r}", exc)


def _fail(state: AppState, message: str, exc: BaseException | None = None) -> None:
    log.error("%s", message, exc_info=exc)
    state.load_error = message
    state.fatal.set()


def _load_with_progress(settings: ServerSettings, state: AppState) -> ServedModel:
    from tqdm import tqdm

    with tqdm(total=100, desc="loading model", unit="%", file=sys.stderr,
              disable=not sys.stderr.isatty() and settings.log_level == "warning") as bar:
        def progress(stage: str, fraction: float) -> None:
            state.loading = stage
            bar.set_postfix_str(stage)
            bar.update(max(0, int(fraction * 100) - bar.n))

        try:
            return load_served_model(settings, progress)
        except (ModelLoadError, OSError):
            raise
        except BaseException as exc:
            # Native libraries report a broken input by panicking: PyO3's PanicException
            # (llguidance, tokenizers) is a BaseException. In this worker thread it can only
            # mean the model cannot be served.
            raise ModelLoadError(f"{settings.model or 'default model'}: "
                                 f"{type(exc).__name__}: {exc}") from exc


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


def _install_auth(app: QuartTrio, state: AppState) -> None:
    @app.before_request
    async def check_api_key():
        err = api_key_error(state.settings.api_key, request)
        if err is None:
            return None
        await request.get_data()  # drain the body: keep the keep-alive connection usable
        return error_response(err)


def _install_sessions(app: QuartTrio, state: AppState) -> None:
    try:
        from triolm.http.sessions_routes import register_sessions
    except ImportError:
        return
    register_sessions(app, state)


__all__ = ["create_app", "jsonify"]
