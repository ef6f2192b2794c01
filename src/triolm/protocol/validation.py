"""The two checking stages of the request resolver (protocol.plan), a 400 naming the
field and the limit otherwise:
- `parse_request` — shape, ranges and field combinations (pydantic, `schemas`), before
  anything of the model is known (so a bad body is a 400 even while the model loads);
- `check_against_model` — what needs the model's numbers but not the prompt: n, the
  vocabulary, max/min_tokens against the context, the generations the server can queue.
The prompt-length check (`GenerationPlan.max_tokens_for`) follows rendering/tokenization.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

import attrs

from triolm.protocol.errors import bad_request
from triolm.protocol.schemas import ChatCompletionRequest, CompletionRequest, SamplingFields, parse_body

Request = TypeVar("Request", ChatCompletionRequest, CompletionRequest)


@attrs.frozen
class ModelInfo:
    """What a request is checked and resolved against: the served model's numbers and
    formats, and the server's limits."""

    vocab_size: int
    max_model_len: int
    max_n: int
    max_queue: int
    tool_parser: str | None = None  # the model's tool-call format (prompting.tool_parsers)
    reasoning: bool = False  # the model has a reasoning parser (its thinking markup may be special tokens)
    renders_tokens: bool = False  # mistral-common renders its chats, special tokens included


def parse_request(kind: type[Request], data: Any) -> Request:
    body = parse_body(kind, data)
    if isinstance(body, ChatCompletionRequest):
        body.check_one_prompt()
    return body


def _max_tokens_field(body: SamplingFields) -> str:
    """The field that sets the length: chat's max_completion_tokens wins over max_tokens."""
    if isinstance(body, ChatCompletionRequest) and body.max_completion_tokens is not None:
        return "max_completion_tokens"
    return "max_tokens"


def requested_max_tokens(body: SamplingFields) -> int | None:
    if isinstance(body, ChatCompletionRequest) and body.max_completion_tokens is not None:
        return body.max_completion_tokens
    return body.max_tokens


def num_prompts(body: SamplingFields) -> int:
    """How many prompts a request holds (a chat, a string or a list of ids is one)."""
    if not isinstance(body, CompletionRequest):
        return 1
    prompt = body.prompt
    if isinstance(prompt, list) and prompt and not all(isinstance(p, int) for p in prompt):
        return len(prompt)
    return 1


def check_against_model(body: SamplingFields, limits: ModelInfo) -> None:
    """The checks that need the model's and server's numbers but not the prompt."""
    if body.n < 1 or body.n > limits.max_n:
        raise bad_request(f"n must be between 1 and {limits.max_n}, got {body.n}", param="n")
    generations = num_prompts(body) * body.n
    if generations > limits.max_queue:
        raise bad_request(f"this request asks for {generations} generations, more than the server "
                          f"ever queues at once (--max-queue {limits.max_queue})", param="n",
                          code="request_too_large")
    max_tokens = requested_max_tokens(body)
    max_param = _max_tokens_field(body)
    echo_only = isinstance(body, CompletionRequest) and body.echo and max_tokens == 0  # the prompt alone
    if max_tokens is not None and max_tokens < 1 and not echo_only:
        raise bad_request(f"{max_param} must be at least 1, got {max_tokens}", param=max_param)
    if body.min_tokens >= limits.max_model_len:
        raise bad_request(f"min_tokens is {body.min_tokens}, but this model's maximum context length "
                          f"is {limits.max_model_len} tokens (prompt included)", param="min_tokens",
                          code="context_length_exceeded")
    if max_tokens is not None and body.min_tokens > max_tokens:
        raise bad_request(f"min_tokens ({body.min_tokens}) must not exceed {max_param} ({max_tokens})",
                          param="min_tokens")
    vocab_size = limits.vocab_size
    for key in body.logit_bias or ():
        try:
            token_id = int(key)
        except ValueError:
            raise bad_request(f"logit_bias key {key!r} is not a token id", param="logit_bias") from None
        check_token_ids([token_id], vocab_size, "logit_bias")
    check_token_ids(body.stop_token_ids or (), vocab_size, "stop_token_ids")
    check_token_ids(body.allowed_token_ids or (), vocab_size, "allowed_token_ids")
    if body.prompt_logprobs is not None and body.stream:
        raise bad_request("prompt_logprobs are not available when stream is true", param="prompt_logprobs")
    if isinstance(body, ChatCompletionRequest) and body.logprobs is False and body.top_logprobs:
        raise bad_request("top_logprobs requires logprobs: true", param="top_logprobs")


def check_token_ids(token_ids: Iterable[int], vocab_size: int, param: str) -> None:
    """Every id names a token of the vocabulary, or a 400 naming `param` and the first
    that does not."""
    bad = next((t for t in token_ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise bad_request(f"{param}: token id {bad} is outside the vocabulary (0..{vocab_size - 1})", param=param)
