"""The one task that owns the engine.

Requests never touch the engine directly: `submit`, `abort` and `call_soon` queue their
wish, which the engine thread applies between steps (so the engine only ever runs in one
thread). The driver task runs that thread for exactly its own lifetime: one
`trio.to_thread.run_sync` call that steps the engine back to back while there is work and
sleeps when there is none, so the engine never waits for the loop: handing every step to
a fresh worker call and back cost ~0.55 ms per step (5 % of a decode step) here. The
engine thread puts each step's tokens straight into the owning requests' `TokenStream`s,
which wake the requests' tasks without a hop through the loop's system task; it does so
early in the next step (`_HeldOutputs`), so those tasks run while it is in the kernels.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import attrs
import trio

from triolm.engine import finish as finishes
from triolm.engine.finish import Finish
from triolm.engine.llm_engine import LLMEngine, StepOutput
from triolm.engine.sampling_params import SamplingParams
from triolm.runtime import loop_core
from triolm.runtime.generation_control import GenerationControl
from triolm.runtime.token_stream import TokenStream

log = logging.getLogger(__name__)


class OverloadedError(Exception):
    """The waiting queue is full: answer 429 now rather than wait without bound."""


class EngineFailure(RuntimeError):
    """The engine raised while stepping; the requests it hit were aborted with this."""


class GenerationCut(EngineFailure):
    """The server is shutting down and its grace period is over: generation stopped here."""


@attrs.frozen
class Ended:
    """The last item of a request the server stopped between two of its tokens (weights
    swapped under the "abort" policy): how the engine ended it."""

    finish: Finish


class EngineCall:
    """A function run on the engine thread between two steps; its caller awaits `wait()`.

    The engine thread wakes the waiting task through the loop's token (thread-safe)."""

    def __init__(self, fn: Callable[[LLMEngine], Any]):
        self.fn = fn
        self._token = trio.lowlevel.current_trio_token()
        self._done = trio.Event()
        self._result: Any = None
        self._error: BaseException | None = None

    def run(self, engine: LLMEngine) -> None:
        try:
            self._result = self.fn(engine)
        except Exception as exc:
            self._error = exc
        self._finish()

    def fail(self, exc: BaseException) -> None:
        self._error = exc
        self._finish()

    def _finish(self) -> None:
        try:
            self._token.run_sync_soon(self._done.set)
        except trio.RunFinishedError:
            pass

    async def wait(self) -> Any:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        return self._result


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
        # Pause, memory and weight version: written under _work's lock, read by the
        # engine thread between steps.
        self.control = GenerationControl(weight_version=engine.weight_version)
        self._limiter = trio.CapacityLimiter(1)
        # Shared with the engine thread, guarded by _work's lock.
        self._work = threading.Condition()
        self._adds: list[_Pending] = []
        self._ends: dict[str, Finish] = {}  # requests to end, and why
        self._calls: list = []
        # Calls that wait for the engine to run dry; while any waits, new requests stay
        # queued in _adds (so it does run dry).
        self._idle_calls: list[EngineCall] = []
        self._stopping = False
        self._cut: GenerationCut | None = None  # set once shutdown cut the generations
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
            if self._cut is not None:  # too late: the grace period is over
                stream.put(self._cut, last=True)
                return stream
            self._streams[request_id] = stream
            self._adds.append(_Pending(request_id, prompt_ids, params))
            self._work.notify()
        return stream

    def abort(self, request_id: str) -> None:
        """Forget a request (client gone, timeout). Cheap and synchronous."""
        self.finish(request_id, finishes.aborted("its client stopped it"))

    def finish(self, request_id: str, finish: Finish) -> None:
        """End a request for a reason its reader found (a stop string in the text): the
        engine ends the sequence with `finish` before its next step. Cheap and synchronous."""
        with self._work:
            stream = self._streams.pop(request_id, None)
            if stream is None:
                return  # finished, failed or already aborted
            stream.end()  # a reader still waiting gets EndOfChannel
            self._forget_locked({request_id: finish})

    def cut_all(self, reason: str) -> None:
        """End every generation now, each with a GenerationCut (its client gets an error
        chunk and [DONE]); later submissions get the same. For the end of a graceful
        shutdown: nothing runs on after it."""
        with self._work:
            self._cut = GenerationCut(reason)
        self._fail_all(self._cut)

    def call_soon(self, fn) -> None:
        """Run `fn(engine)` on the engine between two steps (e.g. forgetting cached prefixes)."""
        with self._work:
            self._calls.append(fn)
            self._work.notify()

    async def run_on_engine(self, fn: Callable[[LLMEngine], Any], *, when_idle: bool = False) -> Any:
        """Run `fn(engine)` on the engine thread between two steps and return its result.
        `when_idle`: only once every request in the engine has finished; requests
        submitted meanwhile wait for it, then run. The call runs even if the waiting
        task is cancelled."""
        call = EngineCall(fn)
        with self._work:
            if self._cut is not None:
                raise self._cut
            if self._stopping:  # the engine thread is gone or going: nothing would run it
                raise GenerationCut("the server is shutting down")
            (self._idle_calls if when_idle else self._calls).append(call)
            self._work.notify()
        return await call.wait()

    def set_control(self, **changes) -> GenerationControl:
        """Change the pause state (paused, pause_mode); the engine thread sees it at its
        next step boundary. Returns the control state after the change."""
        with self._work:
            self.control = attrs.evolve(self.control, **changes)
            self._work.notify()
            return self.control

    def abort_all_now(self, engine: LLMEngine, reason: str) -> int:
        """On the engine thread: stop every request in the engine, each ending with the
        engine's `Ended` finish. How many there were."""
        ended = engine.abort_all(reason)
        with self._work:
            for request_id, finish in ended.items():
                stream = self._streams.pop(request_id, None)
                if stream is not None:
                    stream.put(Ended(finish), last=True)
        return len(ended)

    def _forget_locked(self, ends: dict[str, Finish]) -> None:
        """Drop requests not yet added; queue the engine's end of the others."""
        for request_id, finish in ends.items():
            pending = [p for p in self._adds if p.request_id == request_id]
            if pending:
                self._adds.remove(pending[0])
            else:
                self._ends[request_id] = finish
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
        held = _HeldOutputs(self._deliver)
        self.engine.call_before_layers(held.hand_out)
        try:
            while (work := self._wait_for_work(held)) is not None:
                self._apply(*work)
                if self.control.may_step and self.engine.has_unfinished():
                    held.hold(self._step(held))
        finally:
            held.hand_out()
            self.engine.call_before_layers(None)
            with self._work:
                left = [c for c in self._calls + self._idle_calls if isinstance(c, EngineCall)]
                self._calls = [c for c in self._calls if not isinstance(c, EngineCall)]
                self._idle_calls = []
            for call in left:
                call.fail(GenerationCut("the engine stopped before this call ran"))

    def _wait_for_work(self, held: _HeldOutputs) -> tuple | None:
        """(adds, ends, calls) to apply before the next step; None once stopping.
        Calls waiting for an idle engine come last in `calls`, once it is idle."""
        with self._work:
            while not (self._stopping or self._ends or self._calls
                       or (self._adds and not self._idle_calls)
                       or (self._idle_calls and not self.engine.has_unfinished())
                       or (self.control.may_step and self.engine.has_unfinished())):
                held.hand_out()  # no step follows to hand them out in
                self._work.wait()
            if self._stopping:
                return None
            adds = []
            if not self._idle_calls:  # else they wait until the idle calls ran
                adds, self._adds = self._adds, []
            ends, self._ends = self._ends, {}
            calls, self._calls = self._calls, []
            if self._idle_calls and not self.engine.has_unfinished():
                calls, self._idle_calls = calls + self._idle_calls, []
            return adds, ends, calls

    def _step(self, held: _HeldOutputs) -> list[StepOutput]:
        start = time.perf_counter()
        try:
            outputs = self.engine.step()
        except Exception as exc:
            # Which sequence caused it is unknown (the model's forward pass runs them all
            # at once): fail every request in flight (each gets an error, not a hang) and
            # keep serving the next ones.
            log.exception("engine step failed; aborting the requests in flight")
            held.hand_out()
            self._fail_all(EngineFailure(f"engine step failed: {type(exc).__name__}: {exc}"))
            return []
        failures = self.engine.pop_failures()
        if failures:  # sequences that failed alone (their sampling): only they end
            with self._work:
                for request_id, exc in failures:
                    stream = self._streams.pop(request_id, None)
                    if stream is not None:
                        stream.put(EngineFailure(f"generation failed: {type(exc).__name__}: {exc}"), last=True)
        elapsed = time.perf_counter() - start
        self.stats.steps += 1
        self.stats.busy_seconds += elapsed
        self.stats.last_step_seconds = elapsed
        return outputs

    def _apply(self, adds: list[_Pending], ends: dict[str, Finish], calls: list) -> None:
        for request_id, finish in ends.items():
            self.engine.finish(request_id, finish)
        for fn in calls:
            if isinstance(fn, EngineCall):
                fn.run(self.engine)  # its caller gets the exception
                continue
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
                    self.engine.finish(p.request_id, finishes.failed(f"{type(exc).__name__}: {exc}"))
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
            self._forget_locked(dict.fromkeys(streams, finishes.failed(str(exc))))
            for stream in streams.values():  # last: whoever wakes sees the driver settled
                stream.put(exc, last=True)

    def _deliver(self, outputs: list[StepOutput]) -> None:
        marked = False
        with self._work:
            for out in outputs:
                stream = self._streams.get(out.request_id)
                if stream is None:
                    continue  # aborted while the step ran; the engine abort is queued
                last = out.finish is not None
                if last:
                    del self._streams[out.request_id]
                if not marked and stream.reader_waiting:
                    loop_core.mark_busy()  # before the first wake-up: the worker makes room
                    marked = True
                stream.put(out, last=last)


class _HeldOutputs:
    """A small step's outputs, held until the next step is about to run its layers.

    Handed out then (`LLMEngine.call_before_layers`), the request tasks they wake run
    their Python while the engine thread is in the kernels with the GIL released; handed
    out at step end, they contend for the GIL with the next step's own Python and stall
    the engine thread while they run. That pays while the readers' work is short next to
    a step; a big batch's readers run longer than the next step's Python phase, and
    starting them with the layers would keep the kernels on one core (loop_core) for
    longer, so its outputs go out at once. Measured here (Q8_0, paired server rounds,
    early vs at once): 1 stream -4 % inter-token latency; 4 and 8 streams +3 % aggregate
    tok/s; 16 streams -12 %. When no step follows, held outputs go out at once."""

    MAX_HELD = 8

    def __init__(self, deliver) -> None:
        self._deliver = deliver
        self._outputs: list[StepOutput] = []

    def hold(self, outputs: list[StepOutput]) -> None:
        self.hand_out()  # a step that ran no layers did not hand out the previous one
        if len(outputs) > self.MAX_HELD:
            self._deliver(outputs)
        else:
            self._outputs = outputs

    def hand_out(self) -> None:
        if self._outputs:
            outputs, self._outputs = self._outputs, []
            self._deliver(outputs)
