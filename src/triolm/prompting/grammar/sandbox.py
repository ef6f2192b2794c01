"""`CompileSandbox`: compiles a grammar first in a child process with a wall-clock and
memory budget (the child is compile_worker.py; why, is said there).

One child per tokenizer, started with the compiler (it builds its own copy of the
llguidance tokenizer, 1-3 s for a 131k vocabulary, while the server goes on loading)
and kept.  A check past its
budget kills the child; the next check starts a fresh one.  Checks are serialized: the
child compiles one grammar at a time.  The child ends when the server process does (its
stdin closes) or when the sandbox is closed or collected.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import struct
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import attrs

from triolm.errors import InvalidRequestError

from . import compile_worker
from .limits import GrammarLimits

_WORKER = Path(compile_worker.__file__)
_START_TIMEOUT = 120.0  # building the child's tokenizer (seconds; generous for slow machines)


class GrammarLimitError(InvalidRequestError):
    """A grammar needs more than a limit allows; names the limit."""


@attrs.frozen
class TokenTable:
    """What the child needs to rebuild the llguidance tokenizer."""

    tokens: list[bytes]
    eos: list[int]
    bos: int | None
    special: list[int]


@attrs.frozen
class CheckResult:
    error: str | None
    warnings: list[str]
    seconds: float


class CompileSandbox:
    def __init__(self, table: TokenTable):
        self._table = table
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._memory: int | None = None
        self._ready = False
        self._finalizer = None

    def check(self, grammar: str, limits: GrammarLimits, *, param: str | None) -> CheckResult:
        """Compile `grammar` in the child under `limits`. Raises GrammarLimitError when the
        compile runs past limits.compile_timeout or limits.compile_memory."""
        request = json.dumps({"grammar": grammar, "limits": limits.parser_kwargs()}).encode()
        with self._lock:
            proc = self._ensure(limits.compile_memory)
            start = time.monotonic()
            try:
                compile_worker.write_frame(proc.stdin, request)
                reply = _read_frame(proc.stdout, start + limits.compile_timeout)
            except TimeoutError:  # before OSError, its base class
                self._restart(limits.compile_memory)
                raise GrammarLimitError(
                    f"grammar compile exceeded the time limit (grammar_compile_timeout = "
                    f"{limits.compile_timeout:g} s)", param=param, code="grammar_too_complex") from None
            except OSError:  # BrokenPipeError: the child is gone
                reply = None
            if reply is None:  # the child died: past its memory cap (llguidance aborts)
                self._restart(limits.compile_memory)
                raise GrammarLimitError(
                    f"grammar compile exceeded the memory limit (grammar_compile_memory = "
                    f"{limits.compile_memory >> 20} MiB)", param=param, code="grammar_too_complex")
            data = json.loads(reply)
            return CheckResult(data["error"], data["warnings"], time.monotonic() - start)

    def close(self) -> None:
        with self._lock:
            self._kill()

    def start(self, memory: int) -> None:
        """Start the child now without waiting for it: it builds its tokenizer while the
        caller goes on (the first check then finds it ready)."""
        with self._lock:
            if self._proc is None:
                self._spawn(memory)

    # -- the child -------------------------------------------------------------------------
    def _ensure(self, memory: int) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None or self._memory != memory:
            self._kill()
            self._spawn(memory)
        if not self._ready:
            try:
                ready = _read_frame(self._proc.stdout, time.monotonic() + _START_TIMEOUT)
            except OSError:  # TimeoutError included
                ready = None
            if ready is None:
                self._kill()
                raise RuntimeError("the grammar compile sandbox did not start")
            self._ready = True
        return self._proc

    def _spawn(self, memory: int) -> None:
        proc = subprocess.Popen([sys.executable, "-I", str(_WORKER)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, close_fds=True)
        self._finalizer = weakref.finalize(self, _kill_process, proc)
        self._proc, self._memory, self._ready = proc, memory, False
        t = self._table
        header = {"n_vocab": len(t.tokens), "eos": t.eos, "bos": t.bos, "special": t.special,
                  "memory_bytes": memory}
        try:
            compile_worker.write_frame(proc.stdin, json.dumps(header).encode())
            compile_worker.write_frame(proc.stdin, compile_worker.pack_tokens(t.tokens))
        except OSError:
            pass  # the child died at once: _ensure reports it

    def _restart(self, memory: int) -> None:
        """Replace a killed child at once (it builds while the failed request answers), so
        the next grammar, likely a legitimate one, does not pay the whole start-up."""
        self._kill()
        self._spawn(memory)

    def _kill(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # kills and reaps the child once
        self._proc = self._finalizer = None
        self._ready = False


def _kill_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    for stream in (proc.stdin, proc.stdout):
        try:
            stream.close()
        except OSError:
            pass


def _read_frame(stream, deadline: float) -> bytes | None:
    """One frame from the child's stdout by `deadline` (TimeoutError), or None at EOF."""
    fd = stream.fileno()
    head = _read_exactly(fd, 4, deadline)
    if head is None:
        return None
    (size,) = struct.unpack(">I", head)
    return _read_exactly(fd, size, deadline)


def _read_exactly(fd: int, size: int, deadline: float) -> bytes | None:
    chunks, left = [], size
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while left:
            timeout = deadline - time.monotonic()
            if timeout <= 0 or not sel.select(timeout):
                raise TimeoutError
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                return None
            chunks.append(chunk)
            left -= len(chunk)
    return b"".join(chunks)
