"""TokenStream: the engine thread's outputs reach the request's task in order, a cancelled
wait loses nothing, and a closed stream is unregistered before its descriptor goes."""

from __future__ import annotations

import os
import threading

import pytest
import trio

from triolm.runtime.token_stream import TokenStream


async def _receive_all(stream: TokenStream) -> list:
    """Every item until the stream ends."""
    got = []
    with trio.fail_after(10):
        while True:
            try:
                got.append(await stream.receive())
            except trio.EndOfChannel:
                return got


async def test_items_put_from_another_thread_arrive_in_order():
    stream = TokenStream(on_close=lambda: None)

    def producer():
        for i in range(200):
            stream.put(i, last=i == 199)

    async with stream:
        thread = threading.Thread(target=producer)
        thread.start()
        got = await _receive_all(stream)
        thread.join()
    assert got == list(range(200))


async def test_a_cancelled_wait_loses_no_item():
    stream = TokenStream(on_close=lambda: None)
    async with stream:
        with trio.move_on_after(0.05) as waited:
            await stream.receive()
        assert waited.cancelled_caught
        thread = threading.Thread(target=stream.put, args=("token",))
        thread.start()
        with trio.fail_after(5):
            assert await stream.receive() == "token"
        thread.join()  # (the driver's lock orders put and close; here the test does)


async def test_end_is_seen_after_the_items_before_it():
    stream = TokenStream(on_close=lambda: None)
    async with stream:
        stream.put("a")
        stream.put("b")
        stream.end()
        assert [await stream.receive(), await stream.receive()] == ["a", "b"]
        with pytest.raises(trio.EndOfChannel):
            await stream.receive()


async def test_end_wakes_a_waiting_reader():
    stream = TokenStream(on_close=lambda: None)
    async with stream:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_end_soon, stream)
            with trio.fail_after(5), pytest.raises(trio.EndOfChannel):
                await stream.receive()


async def _end_soon(stream: TokenStream) -> None:
    await trio.sleep(0.05)
    thread = threading.Thread(target=stream.end)
    thread.start()
    await trio.to_thread.run_sync(thread.join)


async def test_close_unregisters_once_then_receive_refuses():
    calls = []
    stream = TokenStream(on_close=lambda: calls.append("unregistered"))
    fd = stream._bell.fd
    await stream.aclose()
    await stream.aclose()
    assert calls == ["unregistered"]
    with pytest.raises(OSError):
        os.fstat(fd)  # the eventfd is closed, not leaked
    with pytest.raises(trio.ClosedResourceError):
        await stream.receive()


async def test_the_socket_pair_doorbell_works_where_there_is_no_eventfd(monkeypatch):
    monkeypatch.delattr(os, "eventfd")
    stream = TokenStream(on_close=lambda: None)
    assert stream._bell._pair is not None
    async with stream:
        thread = threading.Thread(target=lambda: [stream.put(i, last=i == 2) for i in range(3)])
        thread.start()
        got = await _receive_all(stream)
        thread.join()
    assert got == [0, 1, 2]


async def test_reader_waiting_is_true_only_while_a_task_sleeps_in_receive():
    """The engine thread reads it to lend the loop a core before a wake-up (loop_core)."""
    stream = TokenStream(on_close=lambda: None)
    async with stream, trio.open_nursery() as nursery:
        assert not stream.reader_waiting
        got = []

        async def reader():
            got.append(await stream.receive())

        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert stream.reader_waiting
        stream.put("token")
        await trio.testing.wait_all_tasks_blocked()
        assert got == ["token"] and not stream.reader_waiting
        stream.put("ready")  # an item already there: no wait at all
        assert await stream.receive() == "ready" and not stream.reader_waiting
