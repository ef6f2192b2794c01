"""Shapes of OpenAI response objects: ids, usage, logprobs (chat and completions formats)."""

from __future__ import annotations

import secrets
import time

from triolm.engine.prompt_logprobs import PromptTokenLogprob
from triolm.engine.sampler import SampledToken
from triolm.tokenizers.base import Tokenizer


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def now() -> int:
    return int(time.time())


def chunk(request_id: str, obj: str, created: int, model: str, choices: list[dict],
          usage: dict | None = None, **extra: object) -> dict:
    """One streamed chunk: the envelope every chat and text completion chunk shares."""
    data: dict[str, object] = {"id": request_id, "object": obj, "created": created, "model": model,
                               "choices": choices}
    if usage is not None:
        data["usage"] = usage
    data.update(extra)
    return data


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int | None = None) -> dict:
    out: dict[str, object] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
           "total_tokens": prompt_tokens + completion_tokens}
    if cached_tokens is not None:
        out["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return out


class TokenNamer:
    """How a token is named in logprobs: its text, or `token_id:N` when asked (vLLM's
    return_tokens_as_token_ids, unambiguous for byte tokens)."""

    def __init__(self, tokenizer: Tokenizer, as_ids: bool):
        self.tokenizer = tokenizer
        self.as_ids = as_ids

    def name(self, token_id: int) -> str:
        if self.as_ids:
            return f"token_id:{token_id}"
        return self.text(token_id)

    def text(self, token_id: int) -> str:
        """The text the token contributes (what `text_offset` advances by)."""
        return self.tokenizer.token_bytes(token_id).decode("utf-8", errors="replace")

    def bytes(self, token_id: int) -> list[int]:
        return list(self.tokenizer.token_bytes(token_id))


def chat_logprobs(tokens: tuple[SampledToken, ...] | list[SampledToken], namer: TokenNamer) -> dict:
    content = []
    for t in tokens:
        content.append({
            "token": namer.name(t.token_id),
            "logprob": max(t.logprob, -9999.0),
            "bytes": namer.bytes(t.token_id),
            "top_logprobs": [
                {"token": namer.name(i), "logprob": max(lp, -9999.0), "bytes": namer.bytes(i)}
                for i, lp in (t.top_logprobs or ())
            ],
        })
    return {"content": content}


def completion_logprobs(tokens, namer: TokenNamer, text_offset_start: int = 0) -> dict:
    out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    offset = text_offset_start
    for t in tokens:
        name = namer.name(t.token_id)
        out["tokens"].append(name)
        out["token_logprobs"].append(None if t.logprob is None else max(t.logprob, -9999.0))
        out["top_logprobs"].append(
            None if t.top_logprobs is None else {namer.name(i): max(lp, -9999.0) for i, lp in t.top_logprobs})
        out["text_offset"].append(offset)
        offset += len(namer.text(t.token_id))
    return out


def _clamped(logprob: float) -> float:
    return max(logprob, -9999.0)


def vllm_prompt_logprobs(prompt_ids: list[int], infos: tuple[PromptTokenLogprob, ...],
                         namer: TokenNamer) -> list[dict | None]:
    """vLLM's `prompt_logprobs`: None for the first token (it follows nothing), then per
    prompt token a dict keyed by token id (a JSON string) holding that token and the top
    entries, each with its logprob, rank (1 = most likely) and decoded_token."""
    out: list[dict | None] = [None]
    for info in infos:
        entries = {str(info.token_id): {"logprob": _clamped(info.logprob), "rank": info.rank,
                                        "decoded_token": namer.name(info.token_id)}}
        for rank, (token_id, logprob) in enumerate(info.top_logprobs, 1):
            entries.setdefault(str(token_id), {"logprob": _clamped(logprob), "rank": rank,
                                               "decoded_token": namer.name(token_id)})
        out.append(entries)
    return out


def echoed_prompt_logprobs(prompt_ids: list[int], infos: tuple[PromptTokenLogprob, ...],
                           namer: TokenNamer) -> dict:
    """The prompt's part of a completions `logprobs` object with `echo`: its tokens, their
    log-probabilities (the first null) and top entries (the token itself among them, as
    vLLM gives them), offsets counting the prompt's token texts from 0."""
    tokens: list[str] = []
    offsets: list[int] = []
    offset = 0
    for token_id in prompt_ids:
        tokens.append(namer.name(token_id))
        offsets.append(offset)
        offset += len(namer.text(token_id))
    token_logprobs: list[float | None] = [None]
    top_logprobs: list[dict[str, float] | None] = [None]
    for info in infos:
        token_logprobs.append(_clamped(info.logprob))
        top = {namer.name(i): _clamped(lp) for i, lp in info.top_logprobs}
        top.setdefault(namer.name(info.token_id), _clamped(info.logprob))
        top_logprobs.append(top)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs,
            "text_offset": offsets}


def joined_logprobs(first: dict, second: dict) -> dict:
    return {key: first[key] + second[key] for key in first}
