"""Chat templates rendered in worker processes that can be killed.

A template from a model file is untrusted code, and a thread running Python cannot be
stopped: a template that loops would hold its worker, and the server's shutdown, for
ever. So the server renders in `trio_parallel` worker processes. Each worker limits its
own address space (RLIMIT_AS: what the interpreter maps at start plus the memory budget)
and CPU time (RLIMIT_CPU, a backstop should the server die mid-render); the server
kills a worker whose render outlives the time budget (the sandbox's own deadline
normally stops it first, with a clearer message) or whose request is cancelled, so
shutdown never waits for a template. A worker that hit a budget is retired and a fresh
one takes its place.

Only the template source, the messages and the variables cross the process boundary;
tokenization stays in the server process.

A daemonic process (hypercorn's own worker processes, `hypercorn --worker-class trio
'triolm.http.server:create_app()'`) may not start processes; there templates render in a
thread, bounded by the sandbox's guards alone (a render stuck inside one C call then
cannot be stopped), and a warning says so. `triolm serve` always has worker processes.
"""

from __future__ import annotations

import functools
import logging
import math
import multiprocessing
import resource
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
import trio_parallel

from triolm.errors import InvalidRequestError
from triolm.prompting.template import BUDGET_EXCEEDED, ChatTemplate
from triolm.prompting.template_sandbox import RenderBudget

log = logging.getLogger(__name__)

#: A worker (re)started for a render spends this long importing Jinja before it renders;
#: the server's kill deadline is the time budget plus this.
SPAWN_ALLOWANCE_SECONDS = 5.0
#: A warm worker's render is killed this long after its budget (its own deadline is the budget).
_KILL_SLACK_SECONDS = 1.0
#: A worker retires after this much CPU time; RLIMIT_CPU sits a minute above it, so it
#: only ever stops a worker left rendering by a server that is gone.
_RETIRE_AFTER_CPU_SECONDS = 600.0


@attrs.frozen
class TemplateJob:
    """One render, as sent to a worker."""

    source: str
    bos_token: str
    eos_token: str
    budget: RenderBudget
    messages: Sequence[Mapping[str, Any]]
    tools: Sequence[Mapping[str, Any]] | None
    add_generation_prompt: bool
    variables: Mapping[str, Any]


@attrs.frozen
class RenderOutcome:
    """What a worker sends back: the text, or the error the render raised."""

    text: str = ""
    error: str | None = None
    param: str | None = None
    code: str | None = None


# -- in the worker process ------------------------------------------------------------------
_hit_budget = False  # this worker hit a budget: retire it after the job


def _limit_resources(memory_bytes: int) -> None:
    """Worker init: cap the address space at what is mapped now plus `memory_bytes`."""
    with open("/proc/self/statm") as statm:
        mapped = int(statm.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (mapped + memory_bytes, mapped + memory_bytes))
    cpu = int(_RETIRE_AFTER_CPU_SECONDS + 60)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))


def _should_retire() -> bool:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return _hit_budget or usage.ru_utime + usage.ru_stime > _RETIRE_AFTER_CPU_SECONDS


@functools.lru_cache(maxsize=4)
def _compiled(source: str, bos_token: str, eos_token: str, budget: RenderBudget) -> ChatTemplate:
    return ChatTemplate(source, bos_token, eos_token, budget)


def render_job(job: TemplateJob) -> RenderOutcome:
    """Runs in the worker. Errors come back as values: an exception crossing the process
    boundary would lose the attributes its constructor does not take."""
    global _hit_budget
    try:
        template = _compiled(job.source, job.bos_token, job.eos_token, job.budget)
        text = template.render(job.messages, tools=job.tools,
                               add_generation_prompt=job.add_generation_prompt, **job.variables)
        return RenderOutcome(text)
    except InvalidRequestError as exc:
        _hit_budget = _hit_budget or exc.code == BUDGET_EXCEEDED
        return RenderOutcome(error=exc.message, param=exc.param, code=exc.code)


def warm_up(source: str, bos_token: str, eos_token: str, budget: RenderBudget) -> None:
    """Starts a worker and compiles the template before the first request needs it."""
    _compiled(source, bos_token, eos_token, budget)


# -- in the server -----------------------------------------------------------------------------
@attrs.define
class TemplateWorkers:
    """Renders `ChatTemplate`s in killable worker processes (see module docstring)."""

    _context: Any  # trio_parallel.WorkerContext, or None: render in a thread (daemonic process)
    _unlimited: trio.CapacityLimiter  # callers hold their lane's limiter before the deadline starts
    _in_flight: int = 0

    async def render(self, template: ChatTemplate, messages: Sequence[Mapping[str, Any]],
                     tools: Sequence[Mapping[str, Any]] | None, add_generation_prompt: bool,
                     variables: Mapping[str, Any], limiter: trio.CapacityLimiter) -> str:
        """`template.render(...)` in a worker; `InvalidRequestError` for what fails,
        code BUDGET_EXCEEDED when a budget was exceeded (the worker then killed or retired)."""
        budget = template.budget
        job = TemplateJob(template.source, template.bos_token, template.eos_token, budget,
                          messages, tools, add_generation_prompt, dict(variables))
        if self._context is None:
            return _unwrap(await trio.to_thread.run_sync(render_job, job, limiter=limiter))
        try:
            async with limiter:
                # Every render in flight may be about to take an idle worker; if more are
                # idle than that, this one gets a started worker and no start-up allowance.
                warm = self._context.statistics().idle_workers > self._in_flight
                self._in_flight += 1
                try:
                    with trio.fail_after(budget.seconds + (_KILL_SLACK_SECONDS if warm else SPAWN_ALLOWANCE_SECONDS)):
                        outcome = await self._context.run_sync(render_job, job, kill_on_cancel=True,
                                                               limiter=self._unlimited)
                finally:
                    self._in_flight -= 1
        except trio.TooSlowError:
            raise InvalidRequestError(f"chat template rendering took longer than its budget of "
                                      f"{budget.seconds:g} s", param="messages", code=BUDGET_EXCEEDED) from None
        except trio_parallel.BrokenWorkerError:
            raise InvalidRequestError("chat template rendering exhausted its worker process (memory budget)",
                                      param="messages", code=BUDGET_EXCEEDED) from None
        return _unwrap(outcome)

    async def warm_up(self, template: ChatTemplate, limiter: trio.CapacityLimiter) -> None:
        """Start a worker with `template` compiled; a start slower than the spawn allowance
        is left to the first request."""
        if self._context is None:
            return
        with trio.move_on_after(SPAWN_ALLOWANCE_SECONDS + template.budget.seconds):
            await self._context.run_sync(warm_up, template.source, template.bos_token, template.eos_token,
                                         template.budget, kill_on_cancel=True, limiter=limiter)


def _unwrap(outcome: RenderOutcome) -> str:
    if outcome.error is not None:
        raise InvalidRequestError(outcome.error, param=outcome.param, code=outcome.code)
    return outcome.text


@asynccontextmanager
async def open_template_workers(memory_bytes: int) -> AsyncIterator[TemplateWorkers]:
    """Workers for the lifetime of the block; on exit they are stopped (a render still
    running was cancelled with its request, which killed its worker)."""
    if multiprocessing.current_process().daemon:
        log.warning("this is a daemonic process (e.g. a hypercorn worker), which cannot start processes: "
                    "chat templates render in a thread, bounded by the sandbox only; `triolm serve` "
                    "renders them in worker processes that can be killed")
        yield TemplateWorkers(None, trio.CapacityLimiter(math.inf))
        return
    async with trio_parallel.open_worker_context(
            idle_timeout=math.inf, init=functools.partial(_limit_resources, memory_bytes),
            retire=_should_retire, grace_period=2.0) as context:
        yield TemplateWorkers(context, trio.CapacityLimiter(math.inf))
