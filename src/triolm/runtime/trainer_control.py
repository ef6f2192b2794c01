"""The operations an RL trainer runs on a live server between training steps: swap the
weights, pause and continue generation, release and resume memory.

Each takes effect on the engine thread between two steps. Weight updates, memory
releases and resumes run one at a time (a lock); pause and continue are flag
flips that apply in the order they arrive, so a continue is never stuck behind a weight
swap that waits for paused requests. Every operation is idempotent: pausing a paused
server or releasing released memory changes nothing. Once started, an operation
completes even if its HTTP client goes away (shielded), so the served model, the engine
and the reported state never disagree.
"""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Callable
from pathlib import Path

import attrs
import trio

from triolm.engine.llm_engine import LLMEngine
from triolm.loading.served_model import ServedModel
from triolm.loading.weight_update import LoadedWeights, load_weights
from triolm.runtime.engine_driver import EngineDriver
from triolm.runtime.generation_control import GenerationControl
from triolm.settings import ServerSettings

#: What a policy does with the requests in flight when the weights change.
#: wait: they finish under the old weights (new ones queue meanwhile), then the swap.
#: abort: they end now with finish_reason "abort", then the swap.
#: recompute: they continue under the new weights from their tokens so far (prompt and
#: generated tokens prefilled again by the new weights).
IN_FLIGHT_POLICIES = ("wait", "abort", "recompute")
DEFAULT_IN_FLIGHT_POLICY = "wait"


@attrs.frozen
class WeightUpdate:
    served: ServedModel  # the served model with the new weights
    weight_version: str
    requests_affected: int  # aborted or recomputed (0 under "wait")


class TrainerControl:
    """`served()` gives the served model now; `install(served)` replaces it (the app's
    state and whoever else holds it), called right after the engine changed."""

    def __init__(self, driver: EngineDriver, settings: ServerSettings,
                 served: Callable[[], ServedModel], install: Callable[[ServedModel], None]):
        self.driver = driver
        self.settings = settings
        self.served = served
        self.install = install
        self._lock = trio.Lock()  # weight updates, memory releases and resumes: one at a time
        self._load_limiter = trio.CapacityLimiter(1)

    @property
    def state(self) -> GenerationControl:
        return self.driver.control

    async def update_weights(self, path: Path, weight_version: str, policy: str) -> WeightUpdate:
        """Load the weights at `path` off the event loop, then swap them in between two
        steps under `policy`, and `install` the new served model right then (no
        checkpoint between). WeightMismatch / ModelLoadError leave the old weights serving."""
        async with self._lock:
            served = self.served()
            loaded: LoadedWeights = await trio.to_thread.run_sync(
                load_weights, served, path, weight_version, self.settings, limiter=self._load_limiter)
            swap = swap_for_policy(loaded, policy, self.driver.abort_all_now)

            def swap_and_record(engine: LLMEngine) -> int:
                affected = swap(engine)
                # new weights are resident weights, whatever a release said
                self.driver.set_control(weight_version=weight_version, pending_weight_version=None,
                                        released=self.state.released - {"weights"})
                return affected

            with trio.CancelScope(shield=True):
                self.driver.set_control(pending_weight_version=weight_version)
                try:
                    affected = await self.driver.run_on_engine(swap_and_record, when_idle=policy == "wait")
                finally:
                    self.driver.set_control(pending_weight_version=None)
                new_served = attrs.evolve(self.served(), model=loaded.model, path=str(path),
                                          weights_bytes=loaded.model.weights_bytes)
                self.install(new_served)
            return WeightUpdate(new_served, weight_version, affected)

    async def pause(self, mode: str) -> GenerationControl:
        """Stop stepping (what happens to the sequences in flight: see PAUSE_MODES);
        returns once the engine has stopped."""
        new_requests = "reject" if mode == "reject" else "queue"
        with trio.CancelScope(shield=True):
            if mode == "wait":  # in flight run to their end; new ones queue meanwhile
                return await self.driver.run_on_engine(
                    lambda engine: self.driver.set_control(paused=True, pause_mode=new_requests),
                    when_idle=True)
            control = self.driver.set_control(paused=True, pause_mode=new_requests)

            def at_step_boundary(engine: LLMEngine) -> None:
                if mode == "abort":
                    self.driver.abort_all_now(engine, "generation paused (mode 'abort')")
                elif mode == "retract":
                    engine.preempt_all()

            await self.driver.run_on_engine(at_step_boundary)
        return control

    async def continue_generation(self) -> GenerationControl:
        return self.driver.set_control(paused=False)

    async def release_memory(self, tags: frozenset[str]) -> GenerationControl:
        """Give back the KV cache (requests in flight go back to waiting and are
        recomputed once it is resumed) and, with tag "weights", the weights (reloaded
        from their file on resume; requests in flight keep their cache)."""
        async with self._lock:
            def release(engine: LLMEngine) -> GenerationControl:
                if "kv_cache" in tags and engine.kv_cache_resident:
                    engine.release_kv_cache()
                if "weights" in tags and engine.weights_resident:
                    engine.release_weights()
                return self.driver.set_control(released=self.state.released | tags)

            with trio.CancelScope(shield=True):
                control = await self.driver.run_on_engine(release)
                if "weights" in tags:
                    self.install(attrs.evolve(self.served(), model=None))
                return_freed_memory()
            return control

    async def resume_memory(self, tags: frozenset[str]) -> GenerationControl:
        """WeightMismatch / ModelLoadError / OSError if the released weights' file changed
        under the server (the weights stay released)."""
        async with self._lock:
            served = self.served()
            model = None
            if "weights" in tags and "weights" in self.state.released:
                loaded = await trio.to_thread.run_sync(
                    load_weights, served, Path(served.path), self.state.weight_version, self.settings,
                    limiter=self._load_limiter)
                model = loaded.model
                del loaded

            def resume(engine: LLMEngine) -> GenerationControl:
                if "kv_cache" in tags:
                    engine.restore_kv_cache()
                if model is not None:
                    engine.restore_weights(model)
                return self.driver.set_control(released=self.state.released - tags)

            with trio.CancelScope(shield=True):
                control = await self.driver.run_on_engine(resume)
                if model is not None:
                    self.install(attrs.evolve(self.served(), model=model))
                return_freed_memory()  # what the loader read besides the weights
            return control


def return_freed_memory() -> None:
    """Hand the heap pages freed by a release back to the OS (glibc keeps them for reuse
    otherwise, and the process's RSS would not drop). Collects first: the loader's
    tokenizer and file readers may sit in reference cycles."""
    gc.collect()
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return
    trim(0)


def swap_for_policy(loaded: LoadedWeights, policy: str,
                    abort_all: Callable[[LLMEngine, str], int]) -> Callable[[LLMEngine], int]:
    """The engine-thread function that installs `loaded` under `policy`; it returns how
    many requests in flight it aborted or sent back to be recomputed.
    `abort_all(engine, reason)` ends every request in the engine (the driver's)."""
    def swap(engine: LLMEngine) -> int:
        if policy == "abort":
            touched = abort_all(engine, f"weights updated to {loaded.weight_version!r}")
        elif policy == "recompute":
            touched = engine.num_running + engine.num_waiting
            engine.preempt_all()
        else:  # "wait": called once the engine is idle
            touched = 0
        engine.swap_model(loaded.model, loaded.weight_version)
        return touched

    return swap
