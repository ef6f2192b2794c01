"""The one task that owns the engine.

Requests never touch the engine directly: `submit`, `abort` and `call_soon` queue their
wish, which the engine thread applies between steps (so the engine only ever runs in one
thread). The driver task runs that thread for exactly its own lifetime: one
`trio.to_thread.run_sync` call that steps the engine back to back while there is work and
sleeps when there is none, so the engine never waits for the loop: handing every step to
a fresh worker call and back cost ~0.55 ms per step (5 % of a decode step) here. The
engine thread puts each new token straight into the owning request's `TokenStream`,
which wakes the request's task without a hop through the loop's system task.
"""

from __future__ import annotations

import logging
import threading
import time

import attrs
import trio

from triolm.engine.llm_engine import LLMEngine, StepOutput
from triolm.engine.sampling_params import SamplingParams
from triolm.serving.token_stream import TokenStream

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
        # Shared with the engine thread, guarded by _work's lock.
        self._work = threading.Condition()
        self._adds: list[_Pending] = []
        self._aborts: set[str] = set()
        self._calls: list = []
        self._stopping = False
        self._streams: dict[str, TokenStream] = {}  # requests still listening
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

    def submit(self, request_id: str, prompt_ids: list[int], params: SamplingParams) -> TokenStream:
        """Queue a request; its StepOutputs (or one exception) arrive on the returned stream.
        Closing the stream before its last output aborts the request."""
        if self.num_waiting >= self.max_queue:
            raise OverloadedError(f"server overloaded: {self.num_waiting} requests waiting")
        # Unbounded per request: the engine never waits for a slow client; the stream is
        # bounded anyway by max_tokens.
        stream = TokenStream(on_close=lambda: self.abort(request_id))
        with self._work:
            self._streams[request_id] = stream
            self._adds.append(_Pending(request_id, prompt_ids, params))
            self._work.notify()
        return stream

    def abort(self, request_id: str) -> None:
        """Forget a request (client gone, stop string, timeout). Cheap and synchronous."""
        with self._work:
            stream = self._streams.pop(request_id, None)
            if stream is None:
                return  # finished, failed or already aborted
            stream.end()  # a reader still waiting gets EndOfChannel
            self._forget_locked([request_id])

    def call_soon(self, fn) -> None:
        """Run `fn(engine)` on the engine between two steps (e.g. forgetting cached prefixes)."""
        with self._work:
            self._calls.append(fn)
            self._work.notify()

    def _forget_locked(self, request_ids: list[str]) -> None:
        """Drop requests not yet added; queue an engine abort for the others."""
        for request_id in request_ids:
            pending = [p for p in self._adds if p.request_id == request_id]
            if pending:
                self._adds.remove(pending[0])
            else:
                self._aborts.add(request_id)
        self._work.notify()

    # -- the driver task ---------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Run the engine thread until cancelled; cancellation stops it after its current
        step and returns only once it has."""
        with self._work:
            self._stopping = False
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._run_thread)
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                with self._work:
                    self._stopping = True
                    self._work.notify()

    async def _run_thread(self) -> None:
        # Not abandoned on cancel: the nursery waits for the thread to see _stopping.
        await trio.to_thread.run_sync(self._engine_thread, limiter=self._limiter)

    # -- the engine thread ---------------------------------------------------------------
    def _engine_thread(self) -> None:
        while True:
            with self._work:
                while not (self._stopping or self._adds or self._aborts or self._calls
                           or self.engine.has_unfinished()):
                    self._work.wait()
                if self._stopping:
                    return
                adds, self._adds = self._adds, []
                aborts, self._aborts = self._aborts, set()
                calls, self._calls = self._calls, []
            self._apply(adds, aborts, calls)
            if not self.engine.has_unfinished():
                continue
            start = time.perf_counter()
            try:
                outputs = self.engine.step()
            except Exception as exc:
                # Which sequence caused it is unknown: fail every request in flight (each
                # gets an error, not a hang) and keep serving the next ones.
                log.exception("engine step failed; aborting the requests in flight")
                self._fail_all(EngineFailure(f"engine step failed: {type(exc).__name__}: {exc}"))
                continue
            elapsed = time.perf_counter() - start
            self.stats.steps += 1
            self.stats.busy_seconds += elapsed
            self.stats.last_step_seconds = elapsed
            self._deliver(outputs)

    def _apply(self, adds: list[_Pending], aborts: set[str], calls: list) -> None:
        for request_id in aborts:
            self.engine.abort(request_id)
        for fn in calls:
            try:
                fn(self.engine)
            except Exception:
                log.exception("engine call failed")
        refused = []
        for p in adds:
            try:
                self.engine.add_request(p.request_id, p.prompt_ids, p.params)
            except Exception as exc:  # ValueError: refused (e.g. too long); else a bug: this request only
                if not isinstance(exc, ValueError):
                    log.exception("engine refused request %s", p.request_id)
                    self.engine.abort(p.request_id)
                    exc = EngineFailure(f"engine refused the request: {type(exc).__name__}: {exc}")
                refused.append((p.request_id, exc))
        if refused:
            with self._work:
                for request_id, exc in refused:
                    stream = self._streams.pop(request_id, None)
                    if stream is not None:
                        stream.put(exc, last=True)

    def _fail_all(self, exc: Exception) -> None:
        with self._work:
            streams, self._streams = self._streams, {}
            self._forget_locked(list(streams))
            for stream in streams.values():  # last: whoever wakes sees the driver settled
                stream.put(exc, last=True)

    def _deliver(self, outputs: list[StepOutput]) -> None:
        with self._work:
            for out in outputs:
                stream = self._streams.get(out.request_id)
                if stream is None:
                    continue  # aborted while the step ran; the engine abort is queued
                last = out.finish_reason is not None
                if last:
                    del self._streams[out.request_id]
                stream.put(out, last=last)
