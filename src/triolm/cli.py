"""`triolm serve [MODEL]`: hypercorn's trio worker around create_app(), with graceful shutdown."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

import trio

from triolm.serving.settings import ServerSettings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="triolm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve a model over the OpenAI-compatible HTTP API")
    s.add_argument("model", nargs="?", default=None,
                   help=".gguf file or Hugging Face model directory (default: the embedded random-weight model)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--served-model-name", default=None, help="model id clients use (default: file/dir name)")
    s.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/*")
    s.add_argument("--max-num-seqs", type=int, default=16, help="sequences decoded together")
    s.add_argument("--max-model-len", type=int, default=None,
                   help="context length (default: the model's, capped at 8192; above it: warning)")
    s.add_argument("--max-queue", type=int, default=64, help="waiting requests before answering 429")
    s.add_argument("--request-timeout", type=float, default=600.0, help="seconds per request (504 after)")
    s.add_argument("--tokenizer-mode", choices=["auto", "hf", "mistral"], default="auto")
    s.add_argument("--tokenizer-threads", type=int, default=1,
                   help="worker threads for chat templates and tokenization (measured: 1 is best here)")
    s.add_argument("--chat-template", default=None, help="jinja file overriding the model's chat template")
    s.add_argument("--tool-call-parser", default=None, help="hermes | mistral | llama3_json (default: detected)")
    s.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    s.add_argument("--kv-cache-memory", type=int, default=2 << 30, help="KV cache budget in bytes")
    s.add_argument("--kv-cache-dtype", choices=["float32", "float16"], default=None,
                   help="KV cache element type (default: the --dtype's); float16 halves the cache's "
                        "memory and long-context decode traffic, see docs/kv-cache.md")
    s.add_argument("--max-body-size", type=int, default=16 * 1024 * 1024, help="bytes; larger bodies get 413")
    s.add_argument("--graceful-timeout", type=float, default=5.0,
                   help="seconds in-flight requests get to finish on SIGINT/SIGTERM")
    s.add_argument("--shutdown-delay", type=float, default=1.0,
                   help="seconds between SIGTERM and closing the listener, /readyz answering 503 "
                        "meanwhile so load balancers stop routing (SIGINT skips it)")
    s.add_argument("--max-sessions", type=int, default=1024)
    s.add_argument("--session-idle-timeout", type=float, default=3600.0)
    s.add_argument("--seed", type=int, default=None, help="seed of the default sampler (unseeded requests)")
    s.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    return parser


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    values = {k: v for k, v in vars(args).items() if k != "command"}
    return ServerSettings.from_env(**values)


async def serve(settings: ServerSettings) -> int:
    from hypercorn.config import Config
    from hypercorn.trio import serve as hypercorn_serve

    from triolm import fast_send
    from triolm.server import create_app

    fast_send.install()
    app = create_app(settings)
    state = app.config["TRIOLM_STATE"]
    state.fatal = trio.Event()
    config = Config()
    config.bind = [f"{settings.host}:{settings.port}"]
    config.graceful_timeout = settings.graceful_timeout
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
                        state.shutting_down = True
                        if signum == signal.SIGTERM:
                            with trio.move_on_after(settings.shutdown_delay):
                                async for _ in signals:  # a second signal skips the delay
                                    break
                        break
                nursery.cancel_scope.cancel()

            async def on_fatal() -> None:
                await state.fatal.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(on_signal)
            nursery.start_soon(on_fatal)
        state.shutting_down = True

    await hypercorn_serve(app, config, shutdown_trigger=shutdown_trigger)
    return 1 if state.load_error else 0


def main(argv: list[str] | None = None) -> int:
    # Before torch loads: idle OpenMP threads (torch/MKL ops, e.g. prefill GEMMs) sleep
    # instead of spinning. On a machine shared with other processes, spinning barriers
    # made steps 10x slower; the decode kernels use their own pool (kernels/triolm_kernels.cpp).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    if args.command == "serve" and args.model is not None and not Path(args.model).exists():
        # Fail before binding a port, with the reason on stderr.
        print(f"triolm serve: error: model {args.model!r}: no such file or directory", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "serve":
        return trio.run(serve, settings_from_args(args))
    return 2


if __name__ == "__main__":
    sys.exit(main())
