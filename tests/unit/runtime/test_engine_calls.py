"""`EngineDriver.run_on_engine`: functions run on the engine thread between steps, with
the real engine of the tiny model (the trainer routes are built on it)."""

from __future__ import annotations

import threading

import pytest
import trio
import trio.testing

from triolm.engine.llm_engine import EngineConfig, LLMEngine
from triolm.engine.sampling_params import SamplingParams
from triolm.runtime.engine_driver import EngineDriver, GenerationCut

GREEDY = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
LONG = SamplingParams(temperature=0, max_tokens=150, ignore_eos=True)


def make_driver(served_model) -> EngineDriver:
    engine = LLMEngine(served_model.model, (), EngineConfig(max_num_seqs=4, max_model_len=256))
    return EngineDriver(engine, max_queue=8)


async def test_a_call_runs_on_the_engine_thread_and_returns_its_result(served_model):
    driver = make_driver(served_model)
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run)
        thread = await driver.run_on_engine(lambda engine: threading.current_thread())
        assert thread is not threading.current_thread()
        with pytest.raises(ZeroDivisionError):  # its exception reaches the caller
            await driver.run_on_engine(lambda engine: 1 / 0)
        assert await driver.run_on_engine(lambda engine: engine.num_running) == 0  # the driver lives on
        nursery.cancel_scope.cancel()


async def test_an_idle_call_waits_for_the_requests_in_flight_and_holds_new_ones(served_model):
    driver = make_driver(served_model)
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run)
        first = driver.submit("first", [1, 2, 3], LONG)
        seen: dict = {}

        def when_idle(engine: LLMEngine) -> None:
            seen["unfinished"] = engine.has_unfinished()
            seen["later_admitted"] = "later" in engine.sequences
            seen["steps"] = driver.stats.steps  # first's alone (a prefill, then decodes) if later was held

        async def idle_call() -> None:
            await driver.run_on_engine(when_idle, when_idle=True)

        outputs = [await first.receive()]  # in flight
        nursery.start_soon(idle_call)
        await trio.testing.wait_all_tasks_blocked()
        later = driver.submit("later", [4, 5], GREEDY)  # arrives while the call waits
        outputs += [await first.receive() for _ in range(LONG.max_tokens - 1)]
        assert outputs[-1].finish.kind == "length"
        assert (await later.receive()).request_id == "later"
        assert seen == {"unfinished": False, "later_admitted": False, "steps": LONG.max_tokens}
        nursery.cancel_scope.cancel()


async def test_a_call_after_the_driver_stopped_is_refused(served_model):
    driver = make_driver(served_model)
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run)
        nursery.cancel_scope.cancel()
    with pytest.raises(GenerationCut):
        with trio.fail_after(5):
            await driver.run_on_engine(lambda engine: None)
