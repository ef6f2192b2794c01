"""loop_core: the kernels' "event loop busy" flag follows the loop (down while it sleeps,
up while it runs), and kernels run with it up give exactly the same numbers."""

from __future__ import annotations

import time

import pytest
import torch
import trio

from triolm.kernels import native
from triolm.model import linear as lin
from triolm.runtime import loop_core

pytestmark = pytest.mark.skipif(native._compiler() is None, reason="no C++ compiler: the native kernels cannot exist here")


def _flag():
    assert native.lib() is not None  # a compiler is here: the kernels must build
    flag = native.loop_busy_flag()
    assert flag is not None
    return flag


def test_the_flag_is_down_while_the_loop_sleeps_and_up_while_it_runs():
    flag = _flag()
    seen = {}

    async def main():
        instrument = loop_core.LoopBusyInstrument()
        trio.lowlevel.add_instrument(instrument)
        await trio.sleep(0.01)  # one real wait and wake-up
        seen["running"] = flag.value
        # While a worker thread runs, the loop has nothing to do and sleeps in epoll.
        seen["sleeping"] = await trio.to_thread.run_sync(lambda: (time.sleep(0.1), flag.value)[1])
        seen["running again"] = flag.value
        loop_core.mark_busy()  # what the engine thread does before waking a reader
        seen["marked"] = flag.value
        instrument.remove()
        seen["removed"] = flag.value

    trio.run(main)
    assert seen == {"running": 1, "sleeping": 0, "running again": 1, "marked": 1, "removed": 0}


@pytest.mark.parametrize("kind", ["f16", "q8_0"])
def test_kernels_give_the_same_numbers_with_the_flag_up(kind):
    """With the flag up a parallel kernel runs every chunk on the calling thread: the
    result must not change by a bit (chunks never depend on the thread count)."""
    flag = _flag()
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1536, 576, generator=g) / 24
    layer = lin.Float16Linear(w.half()) if kind == "f16" else lin.Q8Linear.quantize(w)
    x = torch.randn(3, 576, generator=g)
    try:
        flag.value = 0
        both_cores = layer(x)
        flag.value = 1
        one_core = layer(x)
    finally:
        flag.value = 0
    assert torch.equal(both_cores, one_core)
