"""Run one blocking call in a fresh thread at low CPU priority.

Big prompt work (a 15 MB `/tokenize`) takes a core for seconds. With two cores, that
core is one the event loop and the engine thread need for a small request's first
token; at a lower priority the scheduler gives them the core first. The thread is made
for the call, so no thread Trio later reuses (for the engine, say) keeps the lower
priority: Linux's nice value belongs to the thread.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import outcome
import trio

T = TypeVar("T")

#: nice value of the thread: below every other thread of the server, above nothing.
LOW_PRIORITY_NICE = 10


def _lower_own_priority() -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOW_PRIORITY_NICE)
    except (OSError, AttributeError):  # not Linux, or not allowed: run at normal priority
        pass


async def run_at_low_priority(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in a new low-priority thread. Like `trio.to_thread.run_sync`, the call
    is waited for even when the caller is cancelled (its work is bounded by the lane's
    size limits), so whatever limiter the caller holds stays held until it ends."""
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()
    result: list[outcome.Outcome] = []

    def work() -> None:
        _lower_own_priority()
        result.append(outcome.capture(fn, *args))
        try:
            token.run_sync_soon(done.set)
        except trio.RunFinishedError:
            pass

    threading.Thread(target=work, name="triolm-large-lane", daemon=True).start()
    with trio.CancelScope(shield=True):
        await done.wait()
    return result[0].unwrap()
