"""One request's engine outputs, handed from the engine thread to the task that reads them.

Why not a Trio memory channel fed through `TrioToken.run_sync_soon`: every token then
hops through Trio's system task before the reader is even scheduled — one more task step
and one more scheduler pass per streamed token, ~15 % of the event loop's work per token
measured here. Instead the engine thread appends to a deque and rings a doorbell (an
eventfd; a socket pair where there is none); the reading task waits on it with
`trio.lowlevel.wait_readable`, so epoll wakes it directly.

Thread rules: `put` and `end` run under the driver's lock and only while the stream is
registered with the driver (`put` on the engine thread); everything else runs on the
event loop. The driver unregisters a stream (under the same lock) before it is closed,
so the engine thread never rings a closed (possibly reused) file descriptor.
"""

from __future__ import annotations

import collections
import ctypes
import os
import socket
from collections.abc import Callable

import trio


def _eventfd_write_holding_gil() -> Callable[[int, int], int] | None:
    """glibc's eventfd_write called through ctypes.PyDLL, which keeps the GIL.

    `os.eventfd_write` releases the GIL for its syscall; on the engine thread that is an
    opening for the reader it just woke to take the GIL and make the engine thread wait
    for the reader's whole task step."""
    try:
        fn = ctypes.PyDLL(None).eventfd_write
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_uint64], ctypes.c_int
    return fn


_ring_eventfd = _eventfd_write_holding_gil()


class _Doorbell:
    """A file descriptor that becomes readable when rung from any thread: an eventfd
    on Linux, a socket pair elsewhere."""

    def __init__(self) -> None:
        if hasattr(os, "eventfd"):
            self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._pair = None
        else:
            self._pair = socket.socketpair()
            for sock in self._pair:
                sock.setblocking(False)
            self.fd = self._pair[0].fileno()

    def ring(self) -> None:
        if self._pair is None:
            if _ring_eventfd is None or _ring_eventfd(self.fd, 1) != 0:
                os.eventfd_write(self.fd, 1)  # (and raises what the first one hit)
            return
        try:
            self._pair[1].send(b"\0")
        except BlockingIOError:
            pass  # the buffer is full of rings already: the reader will wake

    def reset(self) -> None:
        try:
            if self._pair is None:
                os.eventfd_read(self.fd)
            else:
                while self._pair[0].recv(4096):
                    pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        if self._pair is None:
            os.close(self.fd)
        else:
            for sock in self._pair:
                sock.close()


class TokenStream:
    """Receive with `receive()` (raises trio.EndOfChannel once ended and drained); close
    with `aclose()` or `async with`."""

    def __init__(self, on_close: Callable[[], None]):
        self._items: collections.deque = collections.deque()
        self._ended = False  # set by the engine thread after the last item
        self._on_close = on_close
        self._bell: _Doorbell | None = _Doorbell()
        self.reader_waiting = False  # a task sleeps in receive() (read by the engine thread)

    # -- engine thread (under the driver's lock) ------------------------------------------
    def put(self, item, last: bool = False) -> None:
        self._items.append(item)
        if last:
            self._ended = True  # after the append: a reader that sees it also sees the item
        self._bell.ring()

    def end(self) -> None:
        """No more items (the request was aborted)."""
        self._ended = True
        self._bell.ring()

    # -- event loop ------------------------------------------------------------------------
    async def receive(self):
        """The next item, waiting for it. Cancel-safe: a cancelled wait loses no item.

        An item already there is returned at a cancel point without a schedule point
        (the reader sends each item to a socket, which yields anyway)."""
        while True:
            if self._bell is None:
                raise trio.ClosedResourceError("the token stream was closed")
            ended = self._ended  # read before the deque (see put)
            if self._items:
                await trio.lowlevel.checkpoint_if_cancelled()
                return self._items.popleft()
            if ended:
                await trio.lowlevel.checkpoint()
                raise trio.EndOfChannel
            self.reader_waiting = True
            try:
                await trio.lowlevel.wait_readable(self._bell.fd)
            finally:
                self.reader_waiting = False
            self._bell.reset()  # the deque holds the items

    def close(self) -> None:
        if self._bell is None:
            return
        self._on_close()  # the driver unregisters it: the engine thread stops ringing
        bell, self._bell = self._bell, None
        trio.lowlevel.notify_closing(bell.fd)
        bell.close()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> TokenStream:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
