"""Which grammar constraint and which tool-call parsing a request asks for.

Grammars are compiled (and cached) by the model's GrammarCompiler off the event loop, in
a lane of their own (`state.grammar_limiter`): a first compile is CPU work bounded by the
server's grammar limits, and must never queue prompts behind it."""

from __future__ import annotations

import functools

import attrs
import trio

from triolm.errors import InvalidRequestError
from triolm.loading.served_model import ServedModel
from triolm.prompting.grammar.generic_tools import generic_tools_grammar
from triolm.prompting.grammar.limits import GrammarLimits
from triolm.prompting.tool_parsers import GENERIC_TOOL_PARSER
from triolm.protocol.errors import bad_request
from triolm.protocol.schemas import ChatCompletionRequest, SamplingFields
from triolm.settings import ServerSettings


def tool_parsing_mode(served: ServedModel, body: ChatCompletionRequest) -> str | None:
    """The parser to run on the output, or None to return raw text."""
    if not body.tools:
        return None
    if served.tool_parser == GENERIC_TOOL_PARSER:  # every reply is a generic JSON object
        return GENERIC_TOOL_PARSER
    if body.tool_choice == "none":
        return None
    return served.tool_parser


# structured_outputs' fields -> the compiler's arguments
_STRUCTURED_OUTPUTS = (("json_", "guided_json"), ("regex", "guided_regex"), ("choice", "guided_choice"),
                       ("grammar", "grammar"), ("structural_tag", "structural_tag"))


def answer_constraint(body: SamplingFields) -> dict:
    """The compiler's arguments for the one output constraint a request gives — by
    vLLM's `structured_outputs`, its older `guided_*` names, llama.cpp's `grammar` or
    OpenAI's `response_format` — with `param` naming the field it came from; {} for
    none. Empty values (`{}`, `""`, `[]`) are constraints the compiler refuses with a
    400 naming the field, never silently ignored."""
    given: list[tuple[str, str, object]] = []  # (request field, compiler argument, value)
    rf = body.response_format
    if rf is not None and rf.get("type") == "structural_tag":
        given.append(("response_format", "structural_tag", rf))
    elif rf is not None and rf.get("type") != "text":
        given.append(("response_format", "response_format", rf))
    for field in ("guided_json", "guided_regex", "guided_choice"):
        if getattr(body, field) is not None:
            given.append((field, field, getattr(body, field)))
    for field in ("guided_grammar", "grammar"):
        if getattr(body, field) is not None:
            given.append((field, "grammar", getattr(body, field)))
    so = body.structured_outputs
    if so is not None:
        given += [("structured_outputs", arg, getattr(so, attr)) for attr, arg in _STRUCTURED_OUTPUTS
                  if getattr(so, attr) is not None]
        if so.json_object:
            given.append(("structured_outputs", "response_format", {"type": "json_object"}))
    if not given:
        return {}
    if len(given) > 1:
        named = [f"{field}" + (f".{arg}" if field == "structured_outputs" else "") for field, arg, _ in given]
        raise bad_request(f"give one structured-output constraint, not {' and '.join(named)}",
                          param=given[1][0])
    field, arg, value = given[0]
    return {arg: value, "param": field}


def grammar_limits(settings: ServerSettings) -> GrammarLimits:
    return attrs.evolve(GrammarLimits(), compile_timeout=settings.grammar_compile_timeout,
                        compile_memory=settings.grammar_compile_memory,
                        max_grammar_size=settings.grammar_max_size)


async def _compile(state, served: ServedModel, **request):
    compile_ = functools.partial(served.grammar.from_request, limits=grammar_limits(state.settings), **request)
    try:
        # Abandoned on cancel (client gone, shutdown): the compile is bounded by its
        # budget and keeps the lane's token until it ends, so nothing waits for it.
        return await trio.to_thread.run_sync(compile_, limiter=state.grammar_limiter, abandon_on_cancel=True)
    except InvalidRequestError as exc:
        raise bad_request(exc.message, param=exc.param, code=exc.code) from None


async def constraint_for_chat(state, served: ServedModel, body: ChatCompletionRequest, prompt_text: str = ""):
    if body.tools and served.tool_parser == GENERIC_TOOL_PARSER:
        return await generic_tools_constraint(state, served, body, prompt_text)
    forced_tools = bool(body.tools) and (body.tool_choice == "required" or isinstance(body.tool_choice, dict))
    answer = answer_constraint(body)
    if not forced_tools and not answer:
        return None
    if isinstance(body.tool_choice, (str, dict)) and body.tool_choice not in ("none", "auto") and not body.tools:
        raise bad_request("tool_choice requires tools", param="tool_choice")
    tools = body.tools if body.tool_choice != "none" else None
    return await _compile(
        state, served, **answer, tools=tools,
        tool_choice=body.tool_choice if tools else None,
        tool_parser=served.tool_parser if tools else None,
        parallel_tool_calls=body.parallel_tool_calls is not False)


async def constraint_for_completion(state, served: ServedModel, body: SamplingFields):
    answer = answer_constraint(body)
    if not answer:
        return None
    return await _compile(state, served, **answer)


async def generic_tools_constraint(state, served: ServedModel, body: ChatCompletionRequest, prompt_text: str):
    """The reply in the generic JSON tool format (the template has no tool support), after
    the thinking of a reasoning model (the prompt tells whether it may think)."""
    if answer_constraint(body):
        raise bad_request("response_format, structured_outputs, guided_* and grammar cannot be combined with "
                          "tools on this model: its chat template has no tool-call format, so replies use the "
                          "generic JSON tool format (docs/tool-calling.md)", param="tools")
    compile_ = functools.partial(
        generic_tools_grammar, served.grammar, body.tools, body.tool_choice,
        parallel_tool_calls=body.parallel_tool_calls is not False, reasoning=served.reasoning,
        prompt_text=prompt_text, limits=grammar_limits(state.settings))
    try:
        return await trio.to_thread.run_sync(compile_, limiter=state.grammar_limiter, abandon_on_cancel=True)
    except InvalidRequestError as exc:
        raise bad_request(exc.message, param=exc.param, code=exc.code) from None
