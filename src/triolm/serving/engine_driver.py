"""The one task that owns the engine.

Requests never touch the engine directly: `submit` and `abort` queue their wish and wake
the driver, which applies them between steps (so the engine only ever runs in one thread
at a time) and runs each `engine.step()` in a worker thread. Every new token goes to the
owning request over its own memory channel.
"""

from __future__ import annotations

import logging
import math
import time

import attrs
import trio

from triolm.engine.llm_engine import LLMEngine, StepOutput
from triolm.engine.sampling_params import SamplingParams

log = logging.getLogger(__name__)


class OverloadedError(Exception):
    """The waiting queue is full: answer 429 now rather than wait without bound."""


class EngineFailure(RuntimeError):
    """The engine raised while stepping; the requests in flight were aborted with this."""


@attrs.define
class _Pending:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    channel: trio.MemorySendChannel


@attrs.define
class StepStats:
    steps: int = 0
    busy_seconds: float = 0.0
    last_step_seconds: float = 0.0


class EngineDriver:
    def __init__(self, engine: LLMEngine, max_queue: int):
        self.engine = engine
        self.max_queue = max_queue
        self._limiter = trio.CapacityLimiter(1)
        self._adds: list[_Pending] = []
        self._aborts: set[str] = set()
        self._channels: dict[str, trio.MemorySendChannel] = {}
        self._calls: list = []
        self._wakeup = trio.Event()
        self.stats = StepStats()

    # -- called by requests (on the event loop) ----------------------------------------
    @property
    def num_waiting(self) -> int:
        return self.engine.num_waiting + len(self._adds)

    @property
    def num_running(self) -> int:
        return self.engine.num_running

    def check_room(self, count: int = 1) -> None:
        """Raise OverloadedError unless `count` more requests fit in the waiting queue, so a
        request can be refused before its response (e.g. an SSE stream) has started."""
        if self.num_waiting + count > self.max_queue:
            raise OverloadedError(f"server overloaded: {self.num_waiting} requests waiting "
                                  f"(limit {self.max_queue})")

    def submit(self, request_id: str, prompt_ids: list[int], params: SamplingParams
               ) -> trio.MemoryReceiveChannel:
        """Queue a request; its StepOutputs (or one exception) arrive on the returned channel."""
        if self.num_waiting >= self.max_queue:
            raise OverloadedError(f"server overloaded: {self.num_waiting} requests waiting")
        # Unbounded per request: the engine never waits for a slow client; the stream is
        # bounded anyway by max_tokens.
        send, recv = trio.open_memory_channel(math.inf)
        self._adds.append(_Pending(request_id, prompt_ids, params, send))
        self._channels[request_id] = send
        self._wakeup.set()
        return recv

    def abort(self, request_id: str) -> None:
        """Forget a request (client gone, stop string, timeout). Cheap and synchronous."""
        channel = self._channels.pop(request_id, None)
        if channel is None:
            return
        channel.close()
        pending = [p for p in self._adds if p.request_id == request_id]
        if pending:
            self._adds.remove(pending[0])
        else:
            self._aborts.add(request_id)
        self._wakeup.set()

    def call_soon(self, fn) -> None:
        """Run `fn(engine)` on the engine between two steps (e.g. forgetting cached prefixes)."""
        self._calls.append(fn)
        self._wakeup.set()

    # -- the driver task ---------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            self._apply_pending()
            if not self.engine.has_unfinished():
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                continue
            start = time.perf_counter()
            try:
                outputs = await trio.to_thread.run_sync(self.engine.step, limiter=self._limiter)
            except Exception as exc:
                # Which sequence caused it is unknown: fail every request in flight (each
                # gets an error, not a hang) and keep serving the next ones.
                log.exception("engine step failed; aborting %d requests", len(self._channels))
                self._fail_all(EngineFailure(f"engine step failed: {type(exc).__name__}: {exc}"))
                continue
            elapsed = time.perf_counter() - start
            self.stats.steps += 1
            self.stats.busy_seconds += elapsed
            self.stats.last_step_seconds = elapsed
            self._deliver(outputs)
            await trio.lowlevel.checkpoint()

    def _apply_pending(self) -> None:
        for request_id in self._aborts:
            self.engine.abort(request_id)
        self._aborts.clear()
        for fn in self._calls:
            fn(self.engine)
        self._calls.clear()
        adds, self._adds = self._adds, []
        for p in adds:
            try:
                self.engine.add_request(p.request_id, p.prompt_ids, p.params)
            except Exception as exc:  # ValueError: refused (e.g. too long); else a bug: this request only
                if not isinstance(exc, ValueError):
                    log.exception("engine refused request %s", p.request_id)
                    self.engine.abort(p.request_id)
                    exc = EngineFailure(f"engine refused the request: {type(exc).__name__}: {exc}")
                self._channels.pop(p.request_id, None)
                _send_last(p.channel, exc)

    def _fail_all(self, exc: Exception) -> None:
        for request_id, channel in list(self._channels.items()):
            self.engine.abort(request_id)
            _send_last(channel, exc)
        self._channels.clear()
        self._adds.clear()

    def _deliver(self, outputs: list[StepOutput]) -> None:
        for out in outputs:
            channel = self._channels.get(out.request_id)
            if channel is None:
                continue  # aborted while the step ran; the engine abort is queued
            try:
                channel.send_nowait(out)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                # The request stopped listening and its abort has not arrived yet (it
                # closes its end at a checkpoint): forget it now; never die of it.
                self.abort(out.request_id)
                continue
            if out.finish_reason is not None:
                del self._channels[out.request_id]
                channel.close()


def _send_last(channel: trio.MemorySendChannel, item) -> None:
    """Send a request its final item (an exception) and close; it may be gone already."""
    try:
        channel.send_nowait(item)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    channel.close()
