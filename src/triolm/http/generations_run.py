"""What chat and text completions share: running a request's generations to the end
(errors mapped to their HTTP statuses), metrics, and the chunk envelope."""

from __future__ import annotations

import trio

from triolm.engine.constraint import ConstraintFailure
from triolm.http.state import AppState
from triolm.prompting.grammar.compiler import limit_hit
from triolm.protocol import openai_format as fmt
from triolm.protocol.errors import APIError, bad_request
from triolm.runtime.engine_driver import EngineDriver, EngineFailure, GenerationCut, OverloadedError
from triolm.runtime.fanout import run_all
from triolm.runtime.generation import Generation
from triolm.runtime.generation_control import GenerationPaused


class GenerationsRun:
    """Subclasses set `gens`, `request_id`, `created`, `model_name` and `chunk_object`."""

    state: AppState
    gens: list[Generation]
    request_id: str
    created: int
    model_name: str
    chunk_object: str

    def _observe(self) -> None:
        end = trio.current_time()
        for g in self.gens:
            if g.result.finish is not None:
                self.state.metrics.observe_generation(g.result, self.start, end)

    async def _run_to_end(self) -> None:
        try:
            await run_all(self.gens, self.state.settings.request_timeout)
        except trio.TooSlowError:
            raise APIError(504, f"request timed out after {self.state.settings.request_timeout} s",
                           code="timeout") from None
        except OverloadedError as exc:
            raise APIError(429, str(exc), code="overloaded") from None
        except ConstraintFailure as exc:
            raise constraint_error(exc) from None
        except GenerationCut as exc:
            raise APIError(503, str(exc), code="shutting_down") from None
        except ValueError as exc:
            raise bad_request(str(exc)) from None
        finally:
            self._observe()

    def _chunk(self, choices: list[dict], usage: dict | None = None, extra: dict | None = None,
               weight_version: str | None = None) -> dict:
        versions = {"weight_version": weight_version} if weight_version is not None else {}
        return fmt.chunk(self.request_id, self.chunk_object, self.created, self.model_name, choices, usage,
                         **(extra or {}), **versions)

    @property
    def weight_version(self) -> str:
        """The weights of the response: those of the newest token of its choices (the
        served ones when no token was generated)."""
        versions = [g.result.weight_version for g in self.gens if g.result.weight_version is not None]
        if not versions:
            return self.gens[0].driver.control.weight_version if self.gens else ""
        current = self.gens[0].driver.control.weight_version
        return current if current in versions else versions[-1]


def constraint_error(exc: ConstraintFailure) -> APIError:
    """A grammar that failed mid-generation: 400 when it ran past a grammar limit (the
    request's grammar is too complex for this output), 500 otherwise (a token the mask
    allowed was refused: a server fault)."""
    first = exc.message.strip().splitlines()[0] if exc.message.strip() else "grammar failed"
    limit = limit_hit(exc.message)
    if limit is not None:
        return APIError(400, f"the grammar ran past a limit while generating: {first} (limit: {limit})",
                        code="grammar_too_complex")
    return APIError(500, f"the grammar failed while generating: {first}", code="grammar_failed")


# Failures that can surface after a stream's 200 has been sent: told as an SSE error event.
STREAM_ERRORS = (OverloadedError, ValueError, EngineFailure, ConstraintFailure)


def stream_error(exc: Exception) -> APIError:
    """The API error a failure after a stream's 200 maps to (one of STREAM_ERRORS)."""
    if isinstance(exc, OverloadedError):
        err = APIError(429, str(exc), code="overloaded")
    elif isinstance(exc, ConstraintFailure):
        err = constraint_error(exc)
    elif isinstance(exc, GenerationCut):
        err = APIError(503, str(exc), code="shutting_down")
    elif isinstance(exc, EngineFailure):
        err = APIError(500, str(exc))
    else:
        err = bad_request(str(exc))
    return err


def admit(driver: EngineDriver, count: int) -> None:
    """Queue room for `count` generations now, or a retryable 429 (503 while generation is
    paused in "reject" mode). (A request that can never fit was refused as a 400 by
    `validation.check_against_model`.)"""
    try:
        driver.control.check_accepting()
    except GenerationPaused as exc:
        raise APIError(503, str(exc), code="generation_paused") from None
    try:
        driver.check_room(count)
    except OverloadedError as exc:
        raise APIError(429, str(exc), code="overloaded") from None
