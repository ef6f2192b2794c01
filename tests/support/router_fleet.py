"""Real processes for the router tests: `triolm serve` backends on the tiny model and
`triolm router` processes in front of them, all on 127.0.0.1."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx

from support.server_process import ServerProcess

BIN = Path(sys.executable).parent
BACKEND_FLAGS = ["--max-num-seqs", "8", "--max-queue", "64", "--kv-cache-memory", str(64 << 20),
                 "--template-timeout", "120", "--log-level", "warning"]


def start_backend(model_dir: str, log_path: Path, port: int | None = None) -> ServerProcess:
    return ServerProcess([str(BIN / "triolm"), "serve", model_dir, "--port", "{port}", *BACKEND_FLAGS],
                         log_path, port=port)


def start_router(tokenizer: str, backends: list[str], log_path: Path, *flags: str,
                 env: dict | None = None) -> ServerProcess:
    # a generous template budget: the first renders share a busy 2-core machine
    argv = [str(BIN / "triolm"), "router", "--tokenizer", tokenizer, "--port", "{port}",
            "--template-timeout", "120", *flags]
    for url in backends:
        argv += ["--backend", url]
    return ServerProcess(argv, log_path, env=env)


def wait_admitted(router: ServerProcess, count: int, timeout: float = 120.0, headers: dict | None = None) -> dict:
    """Wait until `count` backends are admitted (healthy, not draining); the pool summary."""
    deadline = time.monotonic() + timeout
    while True:
        assert router.popen.poll() is None, f"router exited:\n{router.output()}"
        try:
            data = httpx.get(router.base_url + "/admin/backends", timeout=5, headers=headers or {}).json()
            if sum(b["healthy"] and not b["draining"] for b in data["backends"]) == count:
                return data
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{count} backends not admitted:\n{router.output()}"
        time.sleep(0.2)


class Fleet:
    """Three backends and a router (health checks every 0.5 s, out after 2 failures)."""

    def __init__(self, model_dir: str, log_dir: Path, n: int = 3):
        self.model_dir, self.log_dir = model_dir, log_dir
        self.backends = [start_backend(model_dir, log_dir / f"backend-{i}.log") for i in range(n)]
        self.router = start_router(model_dir, self.urls, log_dir / "router.log",
                                   "--health-interval", "0.5", "--health-failures", "2",
                                   "--affinity-min-tokens", "16")
        for b in self.backends:
            b.wait_ready(180)
        wait_admitted(self.router, n)

    @property
    def urls(self) -> list[str]:
        return [b.base_url for b in self.backends]

    def index_of(self, url: str) -> int:
        return self.urls.index(url)

    def kill_backend(self, i: int) -> None:
        self.backends[i].popen.kill()
        self.backends[i].popen.wait(10)

    def restart_backend(self, i: int) -> None:
        old = self.backends[i]
        old.log.close()
        self.backends[i] = start_backend(self.model_dir, old.log_path, port=old.port)
        self.backends[i].wait_ready(180)

    def stop(self) -> None:
        self.router.stop()
        for b in self.backends:
            b.stop()
