"""Which constraint (grammar) and which tool-call parsing a chat request asks for."""

from __future__ import annotations

from triolm.api.errors import bad_request
from triolm.api.schemas import ChatCompletionRequest, SamplingFields
from triolm.serving.served_model import ServedModel


def tool_parsing_mode(served: ServedModel, body: ChatCompletionRequest) -> str | None:
    """The parser to run on the output, or None to return raw text."""
    if not body.tools or body.tool_choice == "none":
        return None
    return served.tool_parser


async def constraint_for_chat(state, served: ServedModel, body: ChatCompletionRequest):
    forced_tools = body.tools and (body.tool_choice == "required" or isinstance(body.tool_choice, dict))
    if not forced_tools and not _wants_structure(body):
        return None
    raise bad_request("structured output is not available yet", param="response_format")


def _wants_structure(body: SamplingFields) -> bool:
    rf = body.response_format
    return bool((rf and rf.get("type") not in (None, "text")) or body.guided_choice
                or body.guided_regex or body.guided_json)


async def constraint_for_completion(state, served: ServedModel, body: SamplingFields):
    if not _wants_structure(body):
        return None
    raise bad_request("structured output is not available yet", param="response_format")
