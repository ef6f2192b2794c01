"""Large prompt work runs in a fresh thread at low CPU priority (HOSTILE-LANE-004's
mechanism); no thread Trio reuses is left at that priority."""

from __future__ import annotations

import os
import threading

import pytest
import trio

from triolm.runtime.low_priority_thread import LOW_PRIORITY_NICE, run_at_low_priority


def _own_nice() -> tuple[int, int]:
    return threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


async def test_the_call_runs_off_the_loop_at_low_priority_and_trio_threads_stay_normal():
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    tid, nice = await run_at_low_priority(_own_nice)
    assert tid != threading.get_native_id()
    assert nice == base + LOW_PRIORITY_NICE
    _, reused = await trio.to_thread.run_sync(_own_nice)
    assert reused == base


async def test_an_exception_reaches_the_caller():
    def boom():
        raise ValueError("from the thread")

    with pytest.raises(ValueError, match="from the thread"):
        await run_at_low_priority(boom)


async def test_a_cancelled_caller_still_waits_for_the_call():
    finished = threading.Event()

    def slow():
        threading.Event().wait(0.3)
        finished.set()

    with trio.move_on_after(0.05):
        await run_at_low_priority(slow)
    assert finished.is_set()
