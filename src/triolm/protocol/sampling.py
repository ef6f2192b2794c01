"""A checked request -> the engine's SamplingParams; stop strings; the prompt-length check of the context."""

from __future__ import annotations

from triolm.engine.sampling_params import SamplingParams
from triolm.protocol.errors import bad_request
from triolm.protocol.schemas import ChatCompletionRequest, CompletionRequest, SamplingFields


def check_context(num_prompt_tokens: int, max_tokens: int | None, max_model_len: int,
                  prompt_param: str = "messages", min_tokens: int = 0) -> int:
    """The effective max_tokens; 400 when the prompt (plus max_tokens, or plus min_tokens)
    exceeds the context."""
    if num_prompt_tokens >= max_model_len:
        raise bad_request(
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"prompt has {num_prompt_tokens} tokens, which leaves no room for a completion.",
            param=prompt_param, code="context_length_exceeded")
    room = max_model_len - num_prompt_tokens
    if min_tokens > room:
        raise bad_request(
            f"min_tokens is {min_tokens}, but this model's maximum context length of {max_model_len} "
            f"tokens leaves room for {room} after the {num_prompt_tokens}-token prompt.",
            param="min_tokens", code="context_length_exceeded")
    if max_tokens is None:
        return room
    if max_tokens > room:
        raise bad_request(
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {num_prompt_tokens + max_tokens} tokens ({num_prompt_tokens} in the "
            f"prompt, {max_tokens} in the completion). Reduce the prompt or max_tokens.",
            param="max_tokens", code="context_length_exceeded")
    if min_tokens > max_tokens:
        raise bad_request(f"min_tokens ({min_tokens}) must not exceed max_tokens ({max_tokens})",
                          param="min_tokens")
    return max_tokens


def stop_strings(body: SamplingFields) -> list[str]:
    if body.stop is None:
        return []
    return [body.stop] if isinstance(body.stop, str) else list(body.stop)


_GREEDY_BELOW = 1e-5  # smaller temperatures are greedy (dividing logits by them overflows)


def sampling_params(body: SamplingFields) -> SamplingParams:
    """The engine's parameters a request's generations share (the plan sets each one's
    max_tokens, seed offset and constraint)."""
    temperature = 1.0 if body.temperature is None else body.temperature
    logprobs = _logprobs(body)
    return SamplingParams(
        temperature=0.0 if temperature < _GREEDY_BELOW else temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=0 if body.top_k in (None, -1) else body.top_k,
        min_p=body.min_p or 0.0,
        repetition_penalty=body.repetition_penalty or 1.0,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        logit_bias=tuple((int(k), float(v)) for k, v in (body.logit_bias or {}).items()),
        allowed_token_ids=tuple(sorted(set(body.allowed_token_ids or ()))),
        seed=body.seed,
        min_tokens=body.min_tokens,
        stop_token_ids=tuple(body.stop_token_ids or ()),
        ignore_eos=body.ignore_eos,
        logprobs=logprobs,
        cache_salt=body.cache_salt,
    )


def _logprobs(body: SamplingFields) -> int | None:
    """Top-N logprobs per generated token: chat's `logprobs: true` + `top_logprobs`, a
    completion's `logprobs: N`; None for none."""
    if isinstance(body, ChatCompletionRequest):
        return (body.top_logprobs or 0) if body.logprobs else None
    if isinstance(body, CompletionRequest):
        return body.logprobs
    return None
