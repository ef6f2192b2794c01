"""Which grammar constraint and which tool-call parsing a request asks for.

Grammars are compiled (and cached) by the model's GrammarCompiler off the event loop:
a first compile of a large schema is CPU work."""

from __future__ import annotations

import functools

from triolm.api.errors import bad_request
from triolm.api.schemas import ChatCompletionRequest, SamplingFields
from triolm.chat.grammar.generic_tools import generic_tools_grammar
from triolm.chat.tool_parsers import GENERIC_TOOL_PARSER
from triolm.errors import InvalidRequestError
from triolm.serving.prompts import run_off_loop
from triolm.serving.served_model import ServedModel


def tool_parsing_mode(served: ServedModel, body: ChatCompletionRequest) -> str | None:
    """The parser to run on the output, or None to return raw text."""
    if not body.tools:
        return None
    if served.tool_parser == GENERIC_TOOL_PARSER:  # every reply is a generic JSON object
        return GENERIC_TOOL_PARSER
    if body.tool_choice == "none":
        return None
    return served.tool_parser


def _wants_structure(body: SamplingFields) -> bool:
    rf = body.response_format
    return bool((rf and rf.get("type") not in (None, "text")) or body.guided_choice
                or body.guided_regex or body.guided_json)


async def _compile(state, served: ServedModel, **request):
    try:
        return await run_off_loop(state.tokenize_limiter,
                                  functools.partial(served.grammar.from_request, **request))
    except InvalidRequestError as exc:
        raise bad_request(exc.message, param=exc.param) from None


async def constraint_for_chat(state, served: ServedModel, body: ChatCompletionRequest, prompt_text: str = ""):
    if body.tools and served.tool_parser == GENERIC_TOOL_PARSER:
        return await generic_tools_constraint(state, served, body, prompt_text)
    forced_tools = bool(body.tools) and (body.tool_choice == "required" or isinstance(body.tool_choice, dict))
    if not forced_tools and not _wants_structure(body):
        return None
    if isinstance(body.tool_choice, (str, dict)) and body.tool_choice not in ("none", "auto") and not body.tools:
        raise bad_request("tool_choice requires tools", param="tool_choice")
    tools = body.tools if body.tool_choice != "none" else None
    return await _compile(
        state, served, response_format=body.response_format, guided_choice=body.guided_choice,
        guided_regex=body.guided_regex, guided_json=body.guided_json, tools=tools,
        tool_choice=body.tool_choice if tools else None,
        tool_parser=served.tool_parser if tools else None,
        parallel_tool_calls=body.parallel_tool_calls is not False)


async def constraint_for_completion(state, served: ServedModel, body: SamplingFields):
    if not _wants_structure(body):
        return None
    return await _compile(state, served, response_format=body.response_format,
                          guided_choice=body.guided_choice, guided_regex=body.guided_regex,
                          guided_json=body.guided_json)


async def generic_tools_constraint(state, served: ServedModel, body: ChatCompletionRequest, prompt_text: str):
    """The reply in the generic JSON tool format (the template has no tool support), after
    the thinking of a reasoning model (the prompt tells whether it may think)."""
    if _wants_structure(body):
        raise bad_request("response_format and guided_* cannot be combined with tools on this model: its "
                          "chat template has no tool-call format, so replies use the generic JSON tool "
                          "format (docs/tool-calling.md)", param="tools")
    try:
        return await run_off_loop(state.tokenize_limiter, functools.partial(
            generic_tools_grammar, served.grammar, body.tools, body.tool_choice,
            parallel_tool_calls=body.parallel_tool_calls is not False, reasoning=served.reasoning,
            prompt_text=prompt_text))
    except InvalidRequestError as exc:
        raise bad_request(exc.message, param=exc.param) from None
