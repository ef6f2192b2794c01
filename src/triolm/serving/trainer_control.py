"""The operations an RL trainer runs on a live server between training steps: swap the
weights, pause and continue generation, release and resume memory.

Each takes effect on the engine thread between two steps. Weight updates run one at a
time, and so do memory releases and resumes (a lock each); pause and continue are flag
flips that apply in the order they arrive, so a continue is never stuck behind a weight
swap that waits for paused requests. Every operation is idempotent: pausing a paused
server or releasing released memory changes nothing. Once started, an operation
completes even if its HTTP client goes away (shielded), so the served model, the engine
and the reported state never disagree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import attrs
import trio

from triolm.engine.llm_engine import LLMEngine
from triolm.serving.engine_driver import EngineDriver
from triolm.serving.generation_control import GenerationControl
from triolm.serving.served_model import ServedModel
from triolm.serving.settings import ServerSettings
from triolm.serving.weight_update import LoadedWeights, load_weights, swap_for_policy


@attrs.frozen
class WeightUpdate:
    served: ServedModel  # the served model with the new weights
    weight_version: str
    requests_affected: int  # aborted or recomputed (0 under "wait")


class TrainerControl:
    def __init__(self, driver: EngineDriver, settings: ServerSettings):
        self.driver = driver
        self.settings = settings
        self._weights_lock = trio.Lock()
        self._memory_lock = trio.Lock()
        self._load_limiter = trio.CapacityLimiter(1)

    @property
    def state(self) -> GenerationControl:
        return self.driver.control

    async def update_weights(self, served: ServedModel, path: Path, weight_version: str, policy: str,
                             install: Callable[[ServedModel], None]) -> WeightUpdate:
        """Load the weights at `path` off the event loop, then swap them in between two
        steps under `policy`, and `install` the new served model right then (no
        checkpoint between). WeightMismatch / ModelLoadError leave the old weights serving."""
        async with self._weights_lock:
            loaded: LoadedWeights = await trio.to_thread.run_sync(
                load_weights, served, path, weight_version, self.settings, limiter=self._load_limiter)
            swap = swap_for_policy(loaded, policy, self.driver.abort_all_now)

            def swap_and_record(engine: LLMEngine) -> int:
                affected = swap(engine)
                self.driver.set_control(weight_version=weight_version, pending_weight_version=None)
                return affected

            with trio.CancelScope(shield=True):
                self.driver.set_control(pending_weight_version=weight_version)
                try:
                    affected = await self.driver.run_on_engine(swap_and_record, when_idle=policy == "wait")
                finally:
                    self.driver.set_control(pending_weight_version=None)
                new_served = attrs.evolve(served, model=loaded.model, path=str(path),
                                          weights_bytes=loaded.model.weights_bytes)
                install(new_served)
            return WeightUpdate(new_served, weight_version, affected)

    async def pause(self, mode: str) -> GenerationControl:
        """Stop stepping; returns once the step in progress (if any) has ended."""
        control = self.driver.set_control(paused=True, pause_mode=mode)
        with trio.CancelScope(shield=True):
            await self.driver.run_on_engine(lambda engine: None)  # the step boundary
        return control

    async def continue_generation(self) -> GenerationControl:
        return self.driver.set_control(paused=False)

    async def release_memory(self, tags: frozenset[str]) -> GenerationControl:
        """Give back the KV cache: requests in flight go back to waiting and are
        recomputed once it is resumed."""
        async with self._memory_lock:
            def release(engine: LLMEngine) -> GenerationControl:
                if "kv_cache" in tags and engine.kv_cache_resident:
                    engine.release_kv_cache()
                return self.driver.set_control(released=self.state.released | tags)

            with trio.CancelScope(shield=True):
                return await self.driver.run_on_engine(release)

    async def resume_memory(self, tags: frozenset[str]) -> GenerationControl:
        async with self._memory_lock:
            def resume(engine: LLMEngine) -> GenerationControl:
                if "kv_cache" in tags:
                    engine.restore_kv_cache()
                return self.driver.set_control(released=self.state.released - tags)

            with trio.CancelScope(shield=True):
                return await self.driver.run_on_engine(resume)
