"""A real server subprocess (`triolm serve …`, `hypercorn …`) for end-to-end tests,
its output in a file (a full pipe would block it)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx

from support.server_thread import free_port


class ServerProcess:
    """`argv` may hold "{port}", replaced by `port` (default: a free one)."""

    def __init__(self, argv: list[str], log_path: Path, env: dict | None = None, port: int | None = None):
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.log = open(log_path, "a")
        self.popen = subprocess.Popen([a.replace("{port}", str(self.port)) for a in argv],
                                      stdout=self.log, stderr=subprocess.STDOUT,
                                      env={**os.environ, **(env or {})})

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.popen.poll() is None, f"server exited early:\n{self.output()}"
            try:
                if httpx.get(self.base_url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"not ready after {timeout} s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)
        self.log.close()
