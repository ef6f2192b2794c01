"""Prompt rendering and tokenization, always run off the event loop.

Chat templates over large conversations and tokenizers over large prompts are CPU work
measured in hundreds of milliseconds; on the loop they would freeze every other request
(the origin of contract event-loop-001). `run_off_loop` is the one way in for threads;
the server renders Jinja chat templates, untrusted code from the model file, in killable
worker processes (`render_chat_text_in_worker`, triolm.prompting.template_workers). The
synchronous `render_chat_*` functions render in-process, for library use and tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import attrs
import trio

from triolm.errors import InvalidRequestError
from triolm.loading.served_model import ServedModel
from triolm.prompting.generic_tool_prompt import generic_tool_messages
from triolm.prompting.mistral import render_mistral_prompt
from triolm.prompting.template_workers import TemplateWorkers
from triolm.prompting.tool_parsers import GENERIC_TOOL_PARSER
from triolm.protocol.chat_messages import content_text

T = TypeVar("T")


@attrs.frozen
class RenderedPrompt:
    text: str
    token_ids: list[int]


async def run_off_loop(limiter: trio.CapacityLimiter, fn: Callable[..., T], *args: Any) -> T:
    return await trio.to_thread.run_sync(fn, *args, limiter=limiter)


def _template_messages(messages: list[dict]) -> list[dict]:
    """Normalized messages (protocol.chat_messages) as HF chat templates take them: every
    content a string (text parts joined), an assistant's with tool calls "" rather than
    None (as clients send calls back; templates such as Qwen3's call string methods on it)."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            m = {**m, "content": content_text(content)}
        elif content is None and m.get("role") == "assistant" and m.get("tool_calls"):
            m = {**m, "content": ""}
        out.append(m)
    return out


def render_chat_prompt(served: ServedModel, messages: list[dict], tools: list[dict] | None = None,
                       add_generation_prompt: bool = True, continue_final_message: bool = False,
                       template_kwargs: dict | None = None) -> RenderedPrompt:
    if served.mistral_tokenizer is not None:
        encoded = render_mistral_prompt(served.mistral_tokenizer, messages, tools,
                                        continue_final_message=continue_final_message)
        return RenderedPrompt(encoded.text, encoded.token_ids)
    text = render_chat_text(served, messages, tools, add_generation_prompt, continue_final_message,
                            template_kwargs)
    # The template already contains bos and other special tokens as text.
    return RenderedPrompt(text, served.tokenizer.encode(text, add_special_tokens=False))


def render_chat_text(served: ServedModel, messages: list[dict], tools: list[dict] | None = None,
                     add_generation_prompt: bool = True, continue_final_message: bool = False,
                     template_kwargs: dict | None = None) -> str:
    """The prompt text of a Jinja chat template, not tokenized (sessions tokenize only the
    part that is new since their last turn). Not for mistral-common mode, which renders tokens."""
    messages, tools = _template_inputs(served, messages, tools)
    text = served.chat_template.render(
        messages, tools=tools,
        add_generation_prompt=add_generation_prompt and not continue_final_message,
        **(template_kwargs or {}))
    return _end_at_final_message(text, messages) if continue_final_message else text


async def render_chat_text_in_worker(workers: TemplateWorkers, limiter: trio.CapacityLimiter,
                                     served: ServedModel, messages: list[dict], tools: list[dict] | None = None,
                                     add_generation_prompt: bool = True, continue_final_message: bool = False,
                                     template_kwargs: dict | None = None) -> str:
    """`render_chat_text` in a killable worker process, within the template's budget."""
    messages, tools = _template_inputs(served, messages, tools)
    text = await workers.render(
        served.chat_template, messages, tools,
        add_generation_prompt and not continue_final_message, template_kwargs or {}, limiter)
    return _end_at_final_message(text, messages) if continue_final_message else text


def _template_inputs(served: ServedModel, messages: list[dict], tools: list[dict] | None
                     ) -> tuple[list[dict], list[dict] | None]:
    """Messages and tools as the template sees them: contents as text, and for a template
    with no tool support, the tools described in the system message (generic format)."""
    messages = _template_messages(messages)
    if served.tool_parser == GENERIC_TOOL_PARSER:
        return generic_tool_messages(messages, tools), None
    return messages, tools


def _end_at_final_message(text: str, messages: list[dict]) -> str:
    last = content_text(messages[-1].get("content"))
    idx = text.rfind(last)
    if last and idx != -1:
        text = text[: idx + len(last)]
    return text


#: Up to this many characters a prompt beyond the context is tokenized anyway, so its
#: error names the exact token count; past it the size alone decides (a megabyte of text
#: is seconds of tokenizer work).
EXACT_COUNT_CHARS = 1 << 20


def check_prompt_chars(served: ServedModel, chars: int, param: str) -> None:
    """Refuse, before any tokenizing, a prompt of more than EXACT_COUNT_CHARS characters
    that cannot fit the context: no token is longer than `served.max_token_chars`, so it
    has at least chars / max_token_chars tokens."""
    least_tokens = -(-chars // served.max_token_chars)
    if chars > EXACT_COUNT_CHARS and least_tokens > served.max_model_len:
        raise InvalidRequestError(
            f"This model's maximum context length is {served.max_model_len} tokens; the prompt's "
            f"{chars} characters are at least {least_tokens} tokens (no token of this model is longer "
            f"than {served.max_token_chars} characters)", param=param, code="context_length_exceeded")


def encode_text(served: ServedModel, text: str, add_special_tokens: bool = True) -> list[int]:
    return served.tokenizer.encode(text, add_special_tokens=add_special_tokens)
