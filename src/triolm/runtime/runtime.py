"""The composition root of serving: one `Runtime` holds the served model, its running
engine driver and the lanes that keep prompt work off the event loop.

`run_runtime` is started with `nursery.start(...)`: it loads the model, builds the engine,
starts the driver and hands back a ready `Runtime` — every field real, nothing to poll.
It then keeps them for as long as its task lives; cancelling the task stops them. A model
that cannot serve, or a driver that dies, ends it with `RuntimeFailed`.
"""

from __future__ import annotations

import gc
import logging
import sys

import attrs
import trio
from tqdm import tqdm

from triolm.engine.llm_engine import EngineConfig, LLMEngine
from triolm.errors import ModelLoadError
from triolm.loading.served_model import ServedModel, load_served_model
from triolm.prompting.template_workers import open_template_workers
from triolm.runtime.engine_driver import EngineDriver
from triolm.runtime.lanes import PromptLanes
from triolm.runtime.lifecycle import Lifecycle
from triolm.runtime.trainer_control import TrainerControl
from triolm.settings import ServerSettings

log = logging.getLogger("triolm")


class RuntimeFailed(Exception):
    """The model cannot serve: it did not load, its engine could not be built, or its
    driver died. The message is what /readyz and the log say."""


@attrs.define(eq=False)
class Runtime:
    served: ServedModel  # replaced by the trainer's weight swaps, releases and resumes
    driver: EngineDriver
    lanes: PromptLanes
    grammar_limiter: trio.CapacityLimiter  # grammar compiles: a lane of their own
    trainer: TrainerControl


async def run_runtime(settings: ServerSettings, lifecycle: Lifecycle, served: ServedModel | None = None,
                      *, task_status: trio.TaskStatus[Runtime] = trio.TASK_STATUS_IGNORED) -> None:
    """Start the runtime (loading the model unless `served` is given), report it ready
    through `task_status`, and run it until cancelled."""
    async with open_template_workers(settings.template_memory) as workers:
        lanes = PromptLanes(small=trio.CapacityLimiter(1), large=trio.CapacityLimiter(settings.tokenizer_threads),
                            templates=workers, small_work_chars=settings.small_work_chars)
        if served is None:
            served = await _load(settings, lifecycle)
        driver = await _build_driver(settings, served, lanes)

        def install(new: ServedModel) -> None:
            runtime.served = new

        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(driver.run)
                # What is alive now (torch, the weights' modules, imports) lives as long as the
                # server: freeze it out of the garbage collector, whose full collections would
                # otherwise walk it again and again with the event loop stopped (~150 ms each).
                gc.collect()
                gc.freeze()
                lifecycle.stage = "ready"
                log.info("model %s ready (max_model_len %d, %d KV blocks)", served.name,
                         served.max_model_len, driver.engine.block_manager.num_blocks)
                trainer = TrainerControl(driver, settings, served=lambda: runtime.served, install=install)
                runtime = Runtime(served, driver, lanes, trio.CapacityLimiter(1), trainer)
                task_status.started(runtime)
        except Exception as exc:
            # Without its driver the server cannot generate: fail (/readyz 503, `triolm serve`
            # exits non-zero) rather than keep answering probes while hanging.
            raise _logged(RuntimeFailed(f"engine driver crashed: {exc!r}"), exc) from exc


async def _load(settings: ServerSettings, lifecycle: Lifecycle) -> ServedModel:
    try:
        return await trio.to_thread.run_sync(_load_with_progress, settings, lifecycle)
    except (ModelLoadError, OSError) as exc:
        raise _logged(RuntimeFailed(f"model load failed: {exc}")) from exc
    except Exception as exc:  # a loader bug: report it, don't take the loop down silently
        raise _logged(RuntimeFailed(f"model load failed: {type(exc).__name__}: {exc}"), exc) from exc


async def _build_driver(settings: ServerSettings, served: ServedModel, lanes: PromptLanes) -> EngineDriver:
    try:
        if served.mistral_tokenizer is None:  # start a template worker before the first request needs one
            await lanes.templates.warm_up(served.chat_template, lanes.small)
        engine = LLMEngine(served.model, served.eos_token_ids, EngineConfig(
            max_num_seqs=settings.max_num_seqs, max_model_len=served.max_model_len,
            kv_cache_bytes=settings.kv_cache_memory, kv_cache_dtype=settings.kv_cache_dtype,
            seed=settings.seed), weight_version=settings.weight_version)
        return EngineDriver(engine, settings.max_queue)
    except Exception as exc:
        raise _logged(RuntimeFailed(f"model load failed: cannot build the engine: {type(exc).__name__}: {exc}"),
                      exc) from exc


def _logged(failure: RuntimeFailed, cause: BaseException | None = None) -> RuntimeFailed:
    """Log a failure where it happens (with the traceback of an unexpected cause)."""
    log.error("%s", failure, exc_info=cause)
    return failure


def _load_with_progress(settings: ServerSettings, lifecycle: Lifecycle) -> ServedModel:
    with tqdm(total=100, desc="loading model", unit="%", file=sys.stderr,
              disable=not sys.stderr.isatty() and settings.log_level == "warning") as bar:
        def progress(stage: str, fraction: float) -> None:
            lifecycle.stage = stage
            bar.set_postfix_str(stage)
            bar.update(max(0, int(fraction * 100) - bar.n))

        try:
            return load_served_model(settings, progress)
        except (ModelLoadError, OSError):
            raise
        except BaseException as exc:
            # Native libraries report a broken input by panicking: PyO3's PanicException
            # (llguidance, tokenizers) is a BaseException. In this worker thread it can only
            # mean the model cannot be served.
            raise ModelLoadError(f"{settings.model or 'default model'}: "
                                 f"{type(exc).__name__}: {exc}") from exc
