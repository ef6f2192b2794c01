"""Run n generations of one request together and merge their deltas into one stream.

With several generations the producer is a `trio.as_safe_channel` generator: its
nursery, its deadline (the request timeout) and its keep-alive ticks live in its own
task, so the consumer — an HTTP response body — can stop at any point (client gone) and
everything is cancelled and cleaned up in order. One generation needs none of that: the
consumer waits on it directly.
"""

from __future__ import annotations

import math
from contextlib import aclosing, asynccontextmanager

import attrs
import trio

from triolm.engine import finish as finishes
from triolm.engine.finish import Finish
from triolm.runtime.generation import Generation


@attrs.frozen
class Tick:
    """Nothing happened for `keepalive` seconds (an SSE comment keeps proxies patient)."""


@attrs.frozen
class TimedOut:
    """The request deadline passed; the generations were cancelled (their sequences
    aborted): the ones still running end with `finish`."""

    finish: Finish = finishes.DEADLINE


def first_error(group: BaseExceptionGroup) -> BaseException | None:
    """The first exception in a (nested) group that is not a cancellation, if any."""
    for exc in group.exceptions:
        found = first_error(exc) if isinstance(exc, BaseExceptionGroup) else (
            None if isinstance(exc, trio.Cancelled) else exc)
        if found is not None:
            return found
    return None


def first_cancelled(group: BaseExceptionGroup) -> trio.Cancelled:
    """The first Cancelled in a (nested) group of cancellations."""
    for exc in group.exceptions:
        found = first_cancelled(exc) if isinstance(exc, BaseExceptionGroup) else exc
        if isinstance(found, trio.Cancelled):
            return found
    raise AssertionError("no Cancelled in the group")


async def _pump(index: int, gen: Generation, send: trio.MemorySendChannel) -> None:
    # aclosing: cancelled while sending, the generation is closed (and its sequence
    # aborted) now, not whenever the abandoned generator gets finalized.
    async with send, aclosing(gen.deltas()) as deltas:
        async for delta in deltas:
            await send.send((index, delta))


def merged_deltas(gens: list[Generation], timeout: float | None, keepalive: float = 15.0):
    """An async context manager giving an async iterator of (index, Delta) pairs, Tick()
    while idle, and TimedOut() once at a deadline. Leaving it early (client gone) aborts
    every generation still running."""
    # The deadline is checked around each receive, never a cancel scope around a
    # `yield`: a deadline firing while a generator waits at a yield would be delivered
    # outside it (PEP 789) and lose the TimedOut event.
    deadline = trio.current_time() + timeout if timeout else math.inf
    if len(gens) == 1:
        return _one_generation(gens[0], deadline, keepalive)
    return _merged(gens, deadline, keepalive)


@asynccontextmanager
async def _one_generation(gen: Generation, deadline: float, keepalive: float):
    """One generation (n=1, the common case) needs no task of its own: the consumer's task
    waits on it directly, with no channel between — three task steps less per token."""
    events = _one_generation_events(gen, deadline, keepalive)
    async with aclosing(events):
        yield events


async def _one_generation_events(gen: Generation, deadline: float, keepalive: float):
    # No cancel scope or nursery spans a yield here, so a plain async generator is safe.
    async with gen.stream() as next_delta:
        while True:
            with trio.move_on_at(min(deadline, trio.current_time() + keepalive)) as waited:
                delta = await next_delta()
            if waited.cancelled_caught:
                if trio.current_time() >= deadline:
                    break  # leaving the block aborts the sequence
                yield Tick()
                continue
            if delta is None:
                return
            yield 0, delta
    yield TimedOut()


@trio.as_safe_channel
async def _merged(gens: list[Generation], deadline: float, keepalive: float):
    """n > 1: one pump task per generation feeds a channel; the deadline and keep-alive
    ticks live in this producer task (as_safe_channel), never around the consumer."""
    timed_out = False
    send, recv = trio.open_memory_channel(math.inf)
    try:
        async with trio.open_nursery() as nursery:
            async with send:
                for i, gen in enumerate(gens):
                    nursery.start_soon(_pump, i, gen, send.clone())
            async with recv:
                while True:
                    item = None
                    with trio.move_on_at(min(deadline, trio.current_time() + keepalive)):
                        try:
                            item = await recv.receive()
                        except trio.EndOfChannel:
                            break
                    if item is None and trio.current_time() >= deadline:
                        timed_out = True
                        nursery.cancel_scope.cancel()  # the generations abort their sequences
                        break
                    yield Tick() if item is None else item
    except BaseExceptionGroup as group:  # one generation failed (e.g. overloaded): say which
        error = first_error(group)
        if error is None:
            # Only cancellations: re-raise one, unwrapped. A group here would count as a
            # second error next to the consumer's own GeneratorExit (client gone) and
            # as_safe_channel would raise both to the ASGI server.
            raise first_cancelled(group) from None
        raise error from group
    if timed_out:
        yield TimedOut()


async def run_all(gens: list[Generation], timeout: float | None) -> None:
    """Run generations to their end; raises trio.TooSlowError past the deadline."""
    with trio.fail_after(timeout if timeout else math.inf):
        try:
            async with trio.open_nursery() as nursery:
                for gen in gens:
                    nursery.start_soon(gen.run_to_end)
        except BaseExceptionGroup as group:
            # Callers catch OverloadedError / ValueError, not a group holding one.
            error = first_error(group)
            if error is None:
                raise
            raise error from group
