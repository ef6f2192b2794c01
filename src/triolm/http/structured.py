"""Compiling a plan's output constraint (protocol.plan.ConstraintSpec) for the served model.

Grammars are compiled (and cached) by the model's GrammarCompiler off the event loop, in
a lane of their own (`state.grammar_limiter`): a first compile is CPU work bounded by the
server's grammar limits, and must never queue prompts behind it."""

from __future__ import annotations

import functools
from collections.abc import Callable

import attrs
import trio

from triolm.engine.constraint import GrammarSpec
from triolm.errors import InvalidRequestError
from triolm.http.state import AppState
from triolm.loading.served_model import ServedModel
from triolm.prompting.grammar.generic_tools import generic_tools_grammar
from triolm.prompting.grammar.limits import GrammarLimits
from triolm.protocol.errors import bad_request
from triolm.protocol.plan import ConstraintSpec
from triolm.settings import ServerSettings


def grammar_limits(settings: ServerSettings) -> GrammarLimits:
    return attrs.evolve(GrammarLimits(), compile_timeout=settings.grammar_compile_timeout,
                        compile_memory=settings.grammar_compile_memory,
                        max_grammar_size=settings.grammar_max_size)


async def compile_constraint(state: AppState, served: ServedModel, spec: ConstraintSpec | None,
                             prompt_text: str = "") -> GrammarSpec | None:
    """The compiled constraint of `spec` (None for none). The generic tool format's
    grammar lets a reasoning model think first when its prompt (`prompt_text`) lets it."""
    if spec is None:
        return None
    limits = grammar_limits(state.settings)
    compile_: Callable[[], GrammarSpec | None]
    if spec.generic_tools:
        compile_ = functools.partial(
            generic_tools_grammar, served.grammar, spec.tools, spec.tool_choice,
            parallel_tool_calls=spec.parallel_tool_calls, reasoning=served.reasoning,
            prompt_text=prompt_text, limits=limits)
    else:
        compile_ = functools.partial(
            served.grammar.from_request, limits=limits, **spec.answer, tools=spec.tools,
            tool_choice=spec.tool_choice, tool_parser=spec.tool_parser,
            parallel_tool_calls=spec.parallel_tool_calls)
    try:
        # Abandoned on cancel (client gone, shutdown): the compile is bounded by its
        # budget and keeps the lane's token until it ends, so nothing waits for it.
        return await trio.to_thread.run_sync(compile_, limiter=state.grammar_limiter, abandon_on_cancel=True)
    except InvalidRequestError as exc:
        raise bad_request(exc.message, param=exc.param, code=exc.code) from None
