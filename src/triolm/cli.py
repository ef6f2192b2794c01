"""`triolm serve [MODEL]`: hypercorn's trio worker around create_app(), with graceful shutdown."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from triolm.http import framework_patches
from triolm.http.auth import KeySettings, api_keys_of
from triolm.http.server import create_app
from triolm.loading.random_tiny import RANDOM_TINY_NAME
from triolm.prompting.reasoning import REASONING_PARSERS
from triolm.runtime import shutdown
from triolm.settings import API_KEY_FIELDS, ServerSettings, env_values

_DEFAULTS = ServerSettings()


def _setting(parser: argparse.ArgumentParser, flag: str, **kwargs) -> None:
    """A flag for one ServerSettings field. Its default is None, so a flag left out leaves
    the setting to TRIOLM_<FIELD> or to ServerSettings' own default, which the help shows."""
    default = getattr(_DEFAULTS, flag.lstrip("-").replace("-", "_"))
    if default not in (None, ()):
        text = kwargs.get("help")
        kwargs["help"] = f"{text} (default: {default})" if text else f"default: {default}"
    parser.add_argument(flag, default=None, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="triolm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve a model over the OpenAI-compatible HTTP API")
    s.add_argument("model", nargs="?", default=None,
                   help=".gguf file, Hugging Face model directory or 'random-tiny' (a tiny random-weight "
                        "model); default: SmolLM2-135M-Instruct, downloaded once into the user cache")
    s.add_argument("--model", dest="model_option", default=None, metavar="MODEL", help="the same as MODEL")
    _setting(s, "--host")
    _setting(s, "--port", type=int)
    _setting(s, "--served-model-name", help="model id clients use (default: file/dir name)")
    add_api_key_flags(s, "/v1/*, /tokenize, /detokenize, the session and the trainer routes")
    _setting(s, "--allowed-origins", action="append",
                help="CORS: an origin (https://app.example, or *) whose pages may call the API; repeat it "
                     "or separate by commas (default: no CORS)")
    _setting(s, "--max-num-seqs", type=int, help="sequences decoded together")
    _setting(s, "--max-model-len", type=int,
                help="context length (default: the model's, capped at 8192; above it: warning)")
    _setting(s, "--max-queue", type=int, help="waiting requests before answering 429")
    _setting(s, "--request-timeout", type=float, help="seconds per request (504 after)")
    _setting(s, "--tokenizer-mode", choices=["auto", "hf", "mistral"])
    _setting(s, "--tokenizer-threads", type=int,
                help="worker threads for chat templates and tokenization (measured: 1 is best here)")
    _setting(s, "--chat-template", help="jinja file overriding the model's chat template")
    _setting(s, "--tool-call-parser",
                help="hermes | mistral | llama3_json | generic (default: detected; generic when the "
                     "chat template has no tool support)")
    _setting(s, "--reasoning-parser", choices=REASONING_PARSERS,
                help="split thinking into reasoning_content (default: detected from the chat template; "
                     "'none' keeps it in content)")
    _setting(s, "--template-timeout", type=float,
                help="seconds one chat-template render may take (then 400; its worker process is killed)")
    _setting(s, "--template-max-output", type=int,
                help="characters one chat-template render may produce")
    _setting(s, "--template-memory", type=int,
                help="bytes of memory a chat-template worker process may add to its start-up size")
    _setting(s, "--dtype", choices=["float32", "float16", "bfloat16"])
    _setting(s, "--kv-cache-memory", type=int, help="KV cache budget in bytes")
    _setting(s, "--kv-cache-dtype", choices=["float32", "float16"],
                help="KV cache element type (default: the --dtype's); float16 halves the cache's "
                     "memory and long-context decode traffic, see docs/kv-cache.md")
    _setting(s, "--prefill-precision", choices=["float32", "bfloat16"],
                help="element type of prompt-processing GEMMs on GGUF F16/BF16/Q* weights: float32 is "
                     "exact; bfloat16 is faster and lossy (see docs/quantized-weights.md)")
    _setting(s, "--weight-version",
                help="name of the served weights in responses until POST /update_weights_from_disk")
    _setting(s, "--max-body-size", type=int, help="bytes; larger bodies get 413")
    _setting(s, "--graceful-timeout", type=float,
                help="seconds in-flight requests get to finish on SIGINT/SIGTERM")
    _setting(s, "--shutdown-delay", type=float,
                help="seconds between SIGTERM and closing the listener, /readyz answering 503 "
                     "meanwhile so load balancers stop routing (SIGINT skips it)")
    _setting(s, "--max-sessions", type=int)
    _setting(s, "--session-idle-timeout", type=float)
    _setting(s, "--seed", type=int, help="seed of the default sampler (unseeded requests)")
    _setting(s, "--grammar-compile-timeout", type=float,
                help="seconds a new structured-output grammar may take to compile (400 after)")
    _setting(s, "--grammar-compile-memory", type=int,
                help="bytes a grammar compile may use (400 past it)")
    _setting(s, "--grammar-max-size", type=int,
                help="symbols a structured-output grammar may have (400 past it)")
    _setting(s, "--task", choices=["auto", "generate", "embed"],
                help="embed: serve /v1/embeddings (last-token pooling, normalized, unless the model's "
                     "sentence-transformers or GGUF pooling metadata say otherwise); auto: embed when "
                     "that metadata is present, else generate")
    _setting(s, "--responses-store-entries", type=int,
                help="Responses API: responses kept for previous_response_id and GET (0: none)")
    _setting(s, "--responses-store-bytes", type=int,
                help="Responses API: bytes of stored conversations kept (oldest evicted first)")
    _setting(s, "--responses-store-ttl", type=float,
                help="Responses API: seconds a stored response is kept")
    _setting(s, "--log-level", choices=["debug", "info", "warning", "error"])
    add_router_parser(sub)
    return parser


def add_api_key_flags(parser: argparse.ArgumentParser, guarded: str) -> None:
    """The key flags `serve` and `router` share; `split_api_keys` reads them for both."""
    parser.add_argument("--api-key", action="append", default=None,
                        help=f"require 'Authorization: Bearer KEY' (or 'x-api-key: KEY') on {guarded}; "
                             "repeat it for several valid keys (env: TRIOLM_API_KEY, and "
                             "TRIOLM_EXTRA_API_KEYS, comma-separated)")
    parser.add_argument("--api-key-file", default=None,
                        help="a file of valid API keys, one a line (# comments); with or instead of "
                             "--api-key (env: TRIOLM_API_KEY_FILE)")


def split_api_keys(values: dict) -> None:
    """`--api-key` given n times: the first is `api_key`, the others `extra_api_keys`. A flag
    left out stays None, so its TRIOLM_* variable applies."""
    keys = values.pop("api_key") or []
    values["api_key"] = keys[0] if keys else None
    values["extra_api_keys"] = tuple(keys[1:]) or None


def refuse_bad_key_file(command: str, settings: KeySettings) -> bool:
    """A key file that cannot be read or holds no key would leave the routes open: say why
    and refuse to start."""
    try:
        api_keys_of(settings)
    except ValueError as exc:
        print(f"triolm {command}: error: {exc}", file=sys.stderr)
        return True
    return False


def add_router_parser(sub) -> None:
    r = sub.add_parser("router", help="serve the OpenAI API and sessions over a fleet of triolm, vLLM or "
                                      "SGLang servers (docs/router.md)")
    r.add_argument("--tokenizer", required=True,
                   help="the model's .gguf file or Hugging Face directory: only its tokenizer and chat "
                        "template are loaded (never the weights)")
    r.add_argument("--backend", action="append", default=[], metavar="URL", dest="backends",
                   help="a backend's base URL (http://host:port); repeat for each")
    r.add_argument("--backends-file", default=None,
                   help="a file of backend URLs, one a line; re-read on SIGHUP and POST /admin/backends/reload")
    r.add_argument("--host", default="127.0.0.1")
    r.add_argument("--port", type=int, default=8100)
    r.add_argument("--served-model-name", default=None)
    add_api_key_flags(r, "/v1/*, /tokenize, /detokenize, the session and the admin routes")
    r.add_argument("--backend-api-key", default=None, help="sent to the backends as 'Bearer KEY'")
    r.add_argument("--max-model-len", type=int, default=None)
    r.add_argument("--chat-template", default=None)
    r.add_argument("--tool-call-parser", default=None)
    r.add_argument("--reasoning-parser", default=None, choices=REASONING_PARSERS)
    r.add_argument("--health-interval", type=float, default=2.0, help="seconds between health checks")
    r.add_argument("--health-timeout", type=float, default=2.0)
    r.add_argument("--health-failures", type=int, default=2, help="failed checks in a row that take a backend out")
    r.add_argument("--backend-max-inflight", type=int, default=64,
                   help="requests in flight to one backend; with every backend there: 429")
    r.add_argument("--affinity-min-tokens", type=int, default=32,
                   help="shared leading tokens that send a prompt to the backend that served them")
    r.add_argument("--affinity-slack", type=int, default=4,
                   help="extra load (requests) the prefix's backend may have over the least loaded one")
    r.add_argument("--connect-timeout", type=float, default=3.0)
    r.add_argument("--request-timeout", type=float, default=600.0)
    r.add_argument("--max-body-size", type=int, default=16 * 1024 * 1024)
    r.add_argument("--max-sessions", type=int, default=1024)
    r.add_argument("--session-idle-timeout", type=float, default=3600.0)
    r.add_argument("--template-timeout", type=float, default=10.0)
    r.add_argument("--graceful-timeout", type=float, default=5.0)
    r.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")


def router_main(args: argparse.Namespace) -> int:
    from triolm.errors import ModelLoadError
    from triolm.http.router_serve import serve_router
    from triolm.router.frontend import FrontendOptions, load_prompt_frontend
    from triolm.router.settings import RouterSettings

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per backend call otherwise
    values = {k: v for k, v in vars(args).items() if k != "command"}
    split_api_keys(values)
    given_keys = {name: values.pop(name) for name in API_KEY_FIELDS}
    keys = {**env_values(RouterSettings, names=API_KEY_FIELDS),
            **{name: v for name, v in given_keys.items() if v is not None}}
    settings = RouterSettings(**{**values, **keys, "backends": tuple(values["backends"])})
    if not settings.backends and not settings.backends_file:
        print("triolm router: error: give at least one --backend URL or a --backends-file", file=sys.stderr)
        return 2
    if refuse_bad_key_file("router", settings):
        return 2
    try:
        frontend = load_prompt_frontend(settings.tokenizer, FrontendOptions(
            served_model_name=settings.served_model_name, max_model_len=settings.max_model_len,
            chat_template=settings.chat_template, tool_call_parser=settings.tool_call_parser,
            reasoning_parser=settings.reasoning_parser, template_timeout=settings.template_timeout))
    except (ModelLoadError, OSError) as exc:
        print(f"triolm router: error: {exc}", file=sys.stderr)
        return 2
    return trio.run(serve_router, settings, frontend)


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    values = {k: v for k, v in vars(args).items() if k not in ("command", "model_option")}
    values["model"] = args.model or args.model_option
    split_api_keys(values)
    origins = [o for given in values.pop("allowed_origins") or [] for o in given.split(",") if o.strip()]
    values["allowed_origins"] = tuple(o.strip() for o in origins) or None
    return ServerSettings.from_env(**values)


async def serve(settings: ServerSettings) -> int:
    """Serve until a signal (or a model that cannot serve); the stages of the shutdown and
    their deadlines are in `triolm.runtime.shutdown`."""


    framework_patches.install_fast_send_server()
    app = create_app(settings)
    state = app.config["TRIOLM_STATE"]
    lifecycle = state.lifecycle
    draining = trio.Event()  # the listener is closed: the graceful period runs
    last_resort = shutdown.LastResortExit()
    config = Config()
    config.bind = [f"{settings.host}:{settings.port}"]
    # Hypercorn cancels every connection at the end of its graceful timeout; ours cuts the
    # generations CUT_GRACE before, so their streams can still end properly.
    config.graceful_timeout = settings.graceful_timeout + shutdown.CUT_GRACE
    config.loglevel = settings.log_level.upper()
    config.accesslog = None

    async def shutdown_trigger() -> None:
        async with trio.open_nursery() as nursery:
            async def on_signal() -> None:
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for signum in signals:
                        logging.getLogger("triolm").info("signal %s: shutting down", signum)
                        # Readiness off first; keep accepting (new work gets 503) for a
                        # moment so /readyz can tell load balancers, then stop accepting.
                        lifecycle.shut_down()
                        if signum == signal.SIGTERM:
                            with trio.move_on_after(settings.shutdown_delay):
                                async for _ in signals:  # a second signal skips the delay
                                    break
                        break
                nursery.cancel_scope.cancel()

            async def on_fatal() -> None:
                await lifecycle.failed.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(on_signal)
            nursery.start_soon(on_fatal)
        lifecycle.shut_down()
        last_resort.arm(config.graceful_timeout + shutdown.EXIT_GRACE)
        draining.set()

    async def cut_generations_when_grace_ends() -> None:
        await draining.wait()
        await trio.sleep(settings.graceful_timeout)
        if state.runtime is not None:
            driver = state.runtime.driver
            log = logging.getLogger("triolm")
            log.warning("graceful timeout (%.1f s) over: cutting %d running and %d waiting generations",
                        settings.graceful_timeout, driver.num_running, driver.num_waiting)
            driver.cut_all(f"server shutting down: generation cut at the graceful timeout "
                                 f"({settings.graceful_timeout} s)")

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cut_generations_when_grace_ends)
            await hypercorn_serve(app, config, shutdown_trigger=shutdown_trigger)
            nursery.cancel_scope.cancel()
    finally:
        last_resort.disarm()
    return 1 if lifecycle.failure is not None else 0


def main(argv: list[str] | None = None) -> int:
    # Before torch loads: idle OpenMP threads (torch/MKL ops, e.g. prefill GEMMs) sleep
    # instead of spinning. On a machine shared with other processes, spinning barriers
    # made steps 10x slower; the decode kernels use their own pool (kernels/triolm_kernels.cpp).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    model = (args.model or args.model_option) if args.command == "serve" else None
    if model is not None and model != RANDOM_TINY_NAME and not Path(model).exists():
        # Fail before binding a port, with the reason on stderr.
        print(f"triolm serve: error: model {model!r}: no such file or directory", file=sys.stderr)
        return 2
    settings = settings_from_args(args) if args.command == "serve" else None
    log_level = settings.log_level if settings is not None else args.log_level
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings is not None:
        if refuse_bad_key_file("serve", settings):
            return 2
        return trio.run(serve, settings)
    if args.command == "router":
        return router_main(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
