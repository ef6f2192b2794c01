"""How `triolm serve` stops on SIGTERM/SIGINT: every stage has a deadline.

    signal ── shutdown_delay ──▶ listener closed ── graceful_timeout ──▶ generations cut
           ── CUT_GRACE ──▶ every connection cancelled ── EXIT_GRACE ──▶ process gone

During the graceful period requests finish normally. At its end every generation still
running is cut: a stream gets a final error chunk (`shutting_down`) and `[DONE]` if its
socket still takes writes, a non-streaming request a 503. CUT_GRACE later Hypercorn
cancels every connection (`framework_patches` makes even a send to a client that stopped reading
give up then). What cannot be cancelled at all — a worker thread busy in a chat template
or a grammar compile — cannot hold the process: EXIT_GRACE later `LastResortExit` ends it.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import sys
import threading

log = logging.getLogger("triolm")

#: Between cutting the generations and cancelling the connections: time for the final
#: chunks and [DONE] to reach clients that still read.
CUT_GRACE = 0.5
#: Between cancelling everything and ending the process regardless.
EXIT_GRACE = 0.75


class LastResortExit:
    """Ends the process if the event loop has not finished `seconds` after `arm()`.

    Trio can cancel anything that awaits, but not a worker thread that never returns: a
    task waiting for one keeps the loop, and so the process, alive. A plain thread (it
    needs no event loop) exits the process then, with code 0 — the shutdown that was asked
    for did happen, late — after logging it. If even that thread cannot run (a native call
    holding the GIL), faulthandler's own C thread dumps every thread's stack and exits 1
    one second later."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._wait, args=(seconds,), name="triolm-last-resort-exit",
                                        daemon=True)
        self._thread.start()
        faulthandler.dump_traceback_later(seconds + 1.0, exit=True, file=sys.stderr)

    def disarm(self) -> None:
        self._done.set()
        if self._thread is not None:
            faulthandler.cancel_dump_traceback_later()

    def _wait(self, seconds: float) -> None:
        if self._done.wait(seconds):
            return
        log.warning("shutdown: work still running %.1f s after the graceful timeout could not be "
                    "cancelled (a worker thread); exiting anyway", CUT_GRACE + EXIT_GRACE)
        for handler in logging.getLogger().handlers + log.handlers:
            handler.flush()
        sys.stderr.flush()
        os._exit(0)
