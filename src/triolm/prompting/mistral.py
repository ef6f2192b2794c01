"""Mistral chat encoding with mistral-common — on the caller's thread or off the event loop.

Models that ship a mistral-common tokenizer (`tekken.json`, `tokenizer.model.v3`, …)
are prompted with mistral-common's own encoder rather than a Jinja template: it is
the reference for their token layout ([INST], [AVAILABLE_TOOLS], [TOOL_CALLS]…).

Encoding a large chat is CPU work measured in hundreds of milliseconds, so the
server never runs it on the event loop: `async_apply_mistral_chat_template` (and
`async_render_mistral_prompt`) hand it to a worker thread under a
`CapacityLimiter` (contract event-loop-001, see contracts/event-loop-001.md).
The thread offload goes through anyio, so the same coroutine works under Trio
(the server) and asyncio (the contract's own tests, library users).

What a thread buys, measured (scripts/bench_tokenization.py): the long native
calls (sentencepiece's and tiktoken's encoders) release the GIL, and the Python
parts around them (pydantic validation, mistral-common's per-token decode) hand
it back every `sys.getswitchinterval()` (5 ms), so for prompts up to ~1 MB the
loop loses only a few ms per tick. What it cannot buy: mistral-common also makes a
few single C calls that hold the GIL for time proportional to the prompt
(validating the `Tokenized` id list, joining/decoding the whole prompt text) —
~5 ms at 500 KB, ~50 ms each at 5 MB — and a GIL holder preempted by the OS
stalls the loop too. Huge prompts therefore belong in a worker process (see the
benchmark's `process` strategy) or should be refused by a request-size cap.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread
import attrs
import pydantic
from mistral_common.exceptions import (
    InvalidMessageStructureException,
    InvalidRequestException,
    InvalidToolException,
    InvalidToolSchemaException,
    MistralCommonException,
)
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
from mistral_common.tokens.tokenizers.sentencepiece import SentencePieceTokenizer

from triolm.errors import InvalidRequestError
from triolm.protocol.chat_messages import content_text, is_text_part

__all__ = [
    "DEFAULT_TOKENIZATION_THREADS",
    "MistralPrompt",
    "apply_mistral_chat_template",
    "async_apply_mistral_chat_template",
    "async_render_mistral_prompt",
    "build_mistral_chat_request",
    "invalid_request_from_mistral_error",
    "mistral_request_errors",
    "render_mistral_prompt",
    "tokenization_limiter",
]

T = TypeVar("T")

# --------------------------------------------------------------------------------------
# OpenAI messages -> mistral-common request -> tokens
# --------------------------------------------------------------------------------------

# Request-level options mistral-common understands and we pass through. Anything
# else in **kwargs (e.g. Jinja `chat_template_kwargs` such as add_generation_prompt)
# has no meaning for mistral-common's encoder and is ignored.
_REQUEST_OPTIONS = ("tool_choice", "parallel_tool_calls", "reasoning_effort", "response_format")


def build_mistral_chat_request(
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None = None,
    **kwargs: Any,
) -> ChatCompletionRequest:
    """OpenAI-format `messages`/`tools` -> mistral-common `ChatCompletionRequest`.

    The server passes messages already normalized (triolm.protocol.chat_messages);
    for direct callers the same rules hold here: content parts other than
    `{"type": "text"}` are refused (InvalidRequestException) — mistral-common would
    otherwise fetch image URLs from the network — and assistant text parts are joined
    (pre-v7 encoders accept only str). Gaps OpenAI clients leave (a missing
    `tool_call_id` or `content`) become None so that mistral-common's own validators
    report them with their own exception types.
    A non-list `messages` or a non-object message raises
    InvalidMessageStructureException.
    Recognised kwargs: continue_final_message, tool_choice, parallel_tool_calls,
    reasoning_effort, response_format.
    """
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)):
        raise InvalidMessageStructureException(
            f"messages must be a list of message objects, got {type(messages).__name__}"
        )
    normalized = [_normalize_message(index, message) for index, message in enumerate(messages)]
    options = {key: kwargs[key] for key in _REQUEST_OPTIONS if kwargs.get(key) is not None}
    return ChatCompletionRequest.from_openai(
        normalized,
        tools=list(tools) if tools else None,
        continue_final_message=bool(kwargs.get("continue_final_message", False)),
        **options,
    )


def _normalize_message(index: int, message: Any) -> dict[str, Any]:
    if not isinstance(message, Mapping):
        raise InvalidMessageStructureException(
            f"messages[{index}] must be an object with a 'role', got {type(message).__name__}"
        )
    out = dict(message)  # never mutate the caller's dict: it may be shared across threads
    role = out.get("role")
    content = out.get("content")
    if isinstance(content, list):
        for part_index, part in enumerate(content):
            kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
            if kind != "text":
                raise InvalidRequestException(
                    f"messages[{index}].content[{part_index}]: only 'text' content parts are "
                    f"supported, got {kind!r}"
                )
    if role in ("user", "system", "developer", "tool"):
        out.setdefault("content", None)
    if role == "tool":
        out.setdefault("tool_call_id", None)
    if role == "assistant" and isinstance(content, list) and content and all(map(is_text_part, content)):
        out["content"] = content_text(content)
    return out


def _encode(tokenizer: MistralTokenizer, messages: Any, tools: Any, kwargs: dict[str, Any]) -> Any:
    request = build_mistral_chat_request(messages, tools, **kwargs)
    return tokenizer.encode_chat_completion(request)


def apply_mistral_chat_template(
    tokenizer: MistralTokenizer,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None = None,
    **kwargs: Any,
) -> list[int]:
    """Token ids of an OpenAI-format chat, encoded by mistral-common. Synchronous.

    Raises mistral-common's own exceptions (MistralCommonException subclasses,
    pydantic.ValidationError, ValueError for an unknown role) unchanged; the
    server maps them with `mistral_request_errors()`.
    """
    return _encode(tokenizer, messages, tools, kwargs).tokens


# --------------------------------------------------------------------------------------
# Off the event loop
# --------------------------------------------------------------------------------------

DEFAULT_TOKENIZATION_THREADS = 1
"""Worker threads per event loop for chat encoding when no limiter is given. One,
because mistral-common's encoding is mostly GIL-bound Python: with two threads the
benchmark measured lower throughput and 2-5x larger loop gaps under 8 concurrent
requests (the loop competes with two GIL waiters instead of one)."""

# One limiter per running event loop (anyio keys RunVars by the loop's native
# token), created on first use inside that loop: a limiter made at import time
# would bind to whichever loop touched it first and break asyncio.run -> trio.run.
_LIMITER: anyio.lowlevel.RunVar[anyio.CapacityLimiter] = anyio.lowlevel.RunVar(
    "triolm.prompting.mistral.tokenization_limiter"
)


def tokenization_limiter() -> anyio.CapacityLimiter:
    """The default limiter of the current event loop (created on first call)."""
    limiter = _LIMITER.get(None)
    if limiter is None:
        limiter = anyio.CapacityLimiter(DEFAULT_TOKENIZATION_THREADS)
        _LIMITER.set(limiter)
    return limiter


async def _run_in_thread(func: Callable[[], T], limiter: Any) -> T:
    # The worker's exception object itself is re-raised here: same type, same
    # message, and its traceback still holds the frames inside mistral-common.
    return await anyio.to_thread.run_sync(func, limiter=limiter if limiter is not None else tokenization_limiter())


async def async_apply_mistral_chat_template(
    tokenizer: MistralTokenizer,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None = None,
    *,
    limiter: anyio.CapacityLimiter | None = None,
    **kwargs: Any,
) -> list[int]:
    """`apply_mistral_chat_template` in a worker thread; awaitable under Trio and asyncio.

    `limiter`: an `anyio.CapacityLimiter` (under Trio a `trio.CapacityLimiter`
    works too); by default one per event loop with DEFAULT_TOKENIZATION_THREADS.
    Exceptions are the sync path's, unchanged. Cancellation waits for the thread
    to finish (structured: no tokenization outlives its caller).
    """
    call = functools.partial(apply_mistral_chat_template, tokenizer, messages, tools, **kwargs)
    return await _run_in_thread(call, limiter)


# --------------------------------------------------------------------------------------
# Prompt result and the server's error mapping
# --------------------------------------------------------------------------------------


@attrs.frozen
class MistralPrompt:
    """An encoded chat: the ids the engine runs and the same prompt as readable text
    with the special tokens spelled out ('<s>[INST] Hi[/INST]'), for echo,
    `/tokenize` and session rendering."""

    token_ids: list[int]
    text: str


def render_mistral_prompt(
    tokenizer: MistralTokenizer,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None = None,
    **kwargs: Any,
) -> MistralPrompt:
    """Encode a chat and return ids plus text. Synchronous; raises like
    `apply_mistral_chat_template`."""
    tokenized = _encode(tokenizer, messages, tools, kwargs)
    return MistralPrompt(token_ids=tokenized.tokens, text=_tokenized_text(tokenizer, tokenized))


def _tokenized_text(tokenizer: MistralTokenizer, tokenized: Any) -> str:
    raw = tokenizer.instruct_tokenizer.tokenizer
    if isinstance(raw, SentencePieceTokenizer):
        # mistral-common's "keep special tokens" decode yields raw sentencepiece
        # pieces for these ('▁Hello', '<0x0A>'); build the surface text instead.
        return _sentencepiece_text(raw, tokenized.tokens)
    # Tekken decodes bytes exactly, and mistral-common already did so while encoding
    # (kept privately since the public `.text` was deprecated): reuse it rather than
    # decode the whole prompt again; decode once that attribute disappears.
    text = getattr(tokenized, "_text", None)
    if isinstance(text, str):
        return text
    return tokenizer.decode(tokenized.tokens, special_token_policy=SpecialTokenPolicy.KEEP)


def _sentencepiece_text(raw: SentencePieceTokenizer, ids: list[int]) -> str:
    """Special tokens as their names, the runs between them decoded to text."""
    special = raw.special_ids
    parts: list[str] = []
    start = 0
    for index, token in enumerate(ids):
        if token in special:
            if start < index:
                parts.append(_sentencepiece_run(raw, ids[start:index]))
            parts.append(raw.id_to_piece(token))
            start = index + 1
    if start < len(ids):
        parts.append(_sentencepiece_run(raw, ids[start:]))
    return "".join(parts)


def _sentencepiece_run(raw: SentencePieceTokenizer, run: list[int]) -> str:
    # sentencepiece drops a run's leading '▁' (it takes it for the dummy prefix);
    # after a control token that space is real prompt text: put it back.
    text = raw.decode(run)
    return " " + text if raw.id_to_piece(run[0]).startswith("▁") else text


def invalid_request_from_mistral_error(exc: BaseException) -> InvalidRequestError | None:
    """The 400 for an exception raised while encoding a chat, or None if `exc` is
    not a request problem (then it is a bug and should stay a 500)."""
    if isinstance(exc, (InvalidToolException, InvalidToolSchemaException)):
        return InvalidRequestError(str(exc) or exc.message, param="tools")
    if isinstance(exc, MistralCommonException):
        return InvalidRequestError(str(exc) or exc.message, param="messages")
    if isinstance(exc, pydantic.ValidationError):
        return InvalidRequestError(_describe_validation_error(exc), param=_validation_param(exc))
    if isinstance(exc, ValueError):  # mistral-common's converters: unknown role, bad content type
        return InvalidRequestError(str(exc), param="messages")
    return None


def _describe_validation_error(exc: pydantic.ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(item) for item in error.get("loc", ()))
        parts.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
    return f"Invalid {exc.title}: " + "; ".join(parts)


def _validation_param(exc: pydantic.ValidationError) -> str:
    return "tools" if exc.title in ("Tool", "Function") else "messages"


@contextmanager
def mistral_request_errors() -> Iterator[None]:
    """Turn request errors from mistral-common into `InvalidRequestError` (HTTP 400),
    chained to the original; anything else propagates untouched."""
    try:
        yield
    except InvalidRequestError:
        raise
    except Exception as exc:
        mapped = invalid_request_from_mistral_error(exc)
        if mapped is None:
            raise
        raise mapped from exc


async def async_render_mistral_prompt(
    tokenizer: MistralTokenizer,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None = None,
    *,
    limiter: anyio.CapacityLimiter | None = None,
    **kwargs: Any,
) -> MistralPrompt:
    """What the server calls: encode in a worker thread, invalid input -> InvalidRequestError."""
    call = functools.partial(render_mistral_prompt, tokenizer, messages, tools, **kwargs)
    with mistral_request_errors():
        return await _run_in_thread(call, limiter)
