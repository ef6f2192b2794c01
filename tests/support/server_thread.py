"""A real hypercorn server on 127.0.0.1, in a thread with its own Trio loop, for tests
and benchmarks. Several servers can share one loaded model (each has its own engine)."""

from __future__ import annotations

import logging
import socket
import threading
import time

import attrs
import httpx
import trio

from triolm.loading.served_model import ServedModel
from triolm.settings import ServerSettings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    def __init__(self, settings: ServerSettings, served: ServedModel | None = None):
        self.port = free_port()
        self.settings = attrs.evolve(settings, host="127.0.0.1", port=self.port)
        self.served = served
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.app = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=self._run, name=f"triolm-server-{self.port}", daemon=True)
        self.error: BaseException | None = None

    @property
    def state(self):
        return self.app.config["TRIOLM_STATE"]

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # surfaced by start()/stop()
            self.error = exc

    async def _main(self) -> None:
        from hypercorn.config import Config
        from hypercorn.trio import serve

        from triolm.http import framework_patches
        from triolm.http.server import create_app

        framework_patches.install_fast_send_server()  # as `triolm serve` does

        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        self.app = create_app(self.settings, served=self.served)
        config = Config()
        config.bind = [f"127.0.0.1:{self.port}"]
        config.graceful_timeout = self.settings.graceful_timeout
        config.accesslog = None
        # Through Python logging (WARNING and up), so a test sees "Error in ASGI Framework"
        # — e.g. a response stream that crashed — in its captured logs and caplog.
        errorlog = logging.getLogger("support.hypercorn")
        errorlog.setLevel(logging.WARNING)
        config.errorlog = errorlog
        await serve(self.app, config, shutdown_trigger=self._stop.wait)

    def start(self, timeout: float = 120.0) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.error is not None:
                raise RuntimeError(f"server failed to start: {self.error!r}")
            try:
                if httpx.get(self.base_url + "/readyz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError("server did not become ready")

    def stop(self) -> None:
        if self._token is not None and self._stop is not None:
            try:
                self._token.run_sync_soon(self._stop.set)
            except trio.RunFinishedError:
                pass
        self._thread.join(timeout=30)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
