"""Where Hypercorn and Quart-Trio, as this server runs them, need a patch: all of them here.

- `ShieldedLastSendConnection`: the last body message of a response is sent shielded, so
  Hypercorn's keep-alive recycling inside that send is never cancelled half-way.
- `install_body_drain`: every request body is read before its response goes out, so an
  early answer to a POST does not hang the next request on that connection.
- `install_fast_send_server`: Hypercorn's trio TCP server with one fast path in its send,
  and a send that cannot hold a shutdown forever (below).

Hypercorn's trio TCP server with one fast path in its send, and a send that cannot
hold a shutdown forever.

Fast path: every chunk Hypercorn writes goes through a trio Lock and
`SocketStream.send_all`, two checkpoints — two more scheduler passes per streamed token,
paid in event-loop CPU that on a 2-core machine comes out of the decode step (measured:
streamed inter-token latency 3.9 % lower without them, Q8_0, ten paired rounds). When no
other send is in progress, the chunk goes out in one non-blocking write.

Bounded shield: Hypercorn shields every send from cancellation so a chunk is never half
written, with no deadline — one client that stops reading then keeps the process alive
after SIGTERM for as long as it likes. Here a chunk the socket does not take at once is
still finished shielded, but only until the server's hard stop: the deadline Hypercorn
puts on the nursery of all connections when its graceful period starts. Past it the
socket is closed and the send gives up.
"""

from __future__ import annotations

import os

import trio
from hypercorn.events import Closed, Event, RawData
from hypercorn.trio import run as hypercorn_run
from hypercorn.trio.tcp_server import TCPServer
from quart import request
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIHTTPConnection
from werkzeug.exceptions import HTTPException

#: How often a send blocked on a client that does not read looks at the server's
#: deadline (it is set once, when shutdown starts, and nobody wakes the send then).
_DEADLINE_POLL_SECONDS = 0.25


class FastSendTCPServer(TCPServer):
    async def run(self) -> None:  # noqa: D102
        # This task runs in the nursery of all connections; its deadline is the hard stop.
        self._server_scope = trio.lowlevel.current_task().parent_nursery.cancel_scope
        await super().run()

    async def protocol_send(self, event: Event) -> None:  # noqa: D102
        if not (isinstance(event, RawData) and isinstance(self.stream, trio.SocketStream)):
            await super().protocol_send(event)
            return
        data = memoryview(event.data)
        sent = 0
        if not self.send_lock.locked():
            try:
                sent = os.write(self.stream.socket.fileno(), data)
            except OSError:  # would block, or closed/reset: the slow path waits or reports it
                sent = 0
            if sent == len(data):
                return
        # Part of the chunk on the wire already: finish it whatever happens (until the hard stop).
        with trio.CancelScope(shield=sent > 0):
            async with self.send_lock:
                await self._send_whole(data[sent:])

    async def _send_whole(self, data: memoryview) -> None:
        """Write all of `data`, shielded from cancellation until the server's hard stop."""
        sock = self.stream.socket
        while data:
            try:
                data = data[os.write(sock.fileno(), data):]
                continue
            except BlockingIOError:
                pass
            except OSError:  # reset by the peer, or closed
                await self.protocol.handle(Closed())
                return
            hard_stop = self._server_scope.deadline
            if self._server_scope.cancel_called or trio.current_time() >= hard_stop:
                sock.close()  # a half-written chunk: this connection is over
                await trio.lowlevel.checkpoint()  # raises Cancelled where not shielded
                return
            try:
                with trio.CancelScope(shield=True, deadline=min(
                        hard_stop, trio.current_time() + _DEADLINE_POLL_SECONDS)):
                    await trio.lowlevel.wait_writable(sock)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                await self.protocol.handle(Closed())
                return


def install_fast_send_server() -> None:
    """Make Hypercorn's trio worker (`hypercorn.trio.serve`) build FastSendTCPServer
    connections. Idempotent; leaves a server class someone else installed alone."""
    if hypercorn_run.TCPServer is TCPServer:
        hypercorn_run.TCPServer = FastSendTCPServer


class ShieldedLastSendConnection(TrioASGIHTTPConnection):
    """Quart-Trio's HTTP connection, with the last body message sent shielded.

    Hypercorn recycles the keep-alive connection *inside* that send (restarts its idle
    timer, or closes the socket), and the client's end-of-request `http.disconnect`
    that the same call delivers makes Quart-Trio cancel this task at its next
    checkpoint — half-way through the recycling. Unshielded, idle keep-alive connections
    never time out (and hold a graceful shutdown for its whole grace period) and a
    connection that should close stays open.
    """

    async def handle_request(self, nursery, request, send):  # noqa: D102
        async def send_last_shielded(message):
            if message.get("type") == "http.response.body" and not message.get("more_body", False):
                with trio.CancelScope(shield=True, deadline=trio.current_time() + _DRAIN_SECONDS):
                    await send(message)
            else:
                await send(message)

        await super().handle_request(nursery, request, send_last_shielded)


_DRAIN_SECONDS = 5.0


def install_body_drain(app: QuartTrio) -> None:
    """Read the rest of every request body before its response goes out.

    With hypercorn's h11 protocol and Quart-Trio, answering before the body is fully
    received (a 404/405 on a POST, an early 4xx) leaves the connection half-way through
    the request; the close that should follow is cancelled with the handler's nursery,
    so the next request on the same keep-alive connection hangs. Draining fixes that;
    when the body cannot be drained (over --max-body-size, or a stalled client) the
    response says `Connection: close` so the client does not reuse the connection.
    """

    @app.after_request
    async def drain_request_body(response):
        drained = False
        try:
            with trio.move_on_after(_DRAIN_SECONDS):
                await request.body
                drained = True
        except HTTPException:  # RequestEntityTooLarge: the rest is not worth reading
            pass
        if not drained:
            response.headers["Connection"] = "close"
        return response
