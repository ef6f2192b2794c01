"""Request body -> SamplingParams, checked against the served model (vocab, context)."""

from __future__ import annotations

from triolm.api.errors import bad_request
from triolm.api.schemas import SamplingFields
from triolm.engine.sampling_params import SamplingParams


def requested_max_tokens(body: SamplingFields) -> int | None:
    value = getattr(body, "max_completion_tokens", None)
    if value is None:
        value = body.max_tokens
    return value


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


def validate_common(body: SamplingFields, vocab_size: int, max_n: int) -> None:
    """Checks that do not need the prompt: n, max_tokens sign, ids inside the vocabulary."""
    if body.n < 1 or body.n > max_n:
        raise bad_request(f"n must be between 1 and {max_n}, got {body.n}", param="n")
    max_tokens = requested_max_tokens(body)
    if max_tokens is not None and max_tokens < 1:
        param = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) is not None else "max_tokens"
        raise bad_request(f"{param} must be at least 1, got {max_tokens}", param=param)
    if body.logit_bias:
        for key in body.logit_bias:
            try:
                token_id = int(key)
            except ValueError:
                raise bad_request(f"logit_bias key {key!r} is not a token id", param="logit_bias") from None
            if not 0 <= token_id < vocab_size:
                raise bad_request(f"logit_bias token id {token_id} is outside the vocabulary "
                                  f"(0..{vocab_size - 1})", param="logit_bias")
    for token_id in body.stop_token_ids or ():
        if not 0 <= token_id < vocab_size:
            raise bad_request(f"stop_token_ids: {token_id} is outside the vocabulary", param="stop_token_ids")
    if body.min_tokens and (requested_max_tokens(body) or 1 << 30) < body.min_tokens:
        raise bad_request("min_tokens must not exceed max_tokens", param="min_tokens")


def stop_strings(body: SamplingFields) -> list[str]:
    if body.stop is None:
        return []
    return [body.stop] if isinstance(body.stop, str) else list(body.stop)


_GREEDY_BELOW = 1e-5  # smaller temperatures are greedy (dividing logits by them overflows)


def build_sampling_params(body: SamplingFields, max_tokens: int, logprobs: int | None,
                          seed_offset: int = 0, constraint=None) -> SamplingParams:
    seed = None if body.seed is None else body.seed + seed_offset
    temperature = 1.0 if body.temperature is None else body.temperature
    return SamplingParams(
        temperature=0.0 if temperature < _GREEDY_BELOW else temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=0 if body.top_k in (None, -1) else body.top_k,
        min_p=body.min_p or 0.0,
        repetition_penalty=body.repetition_penalty or 1.0,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        logit_bias=tuple((int(k), float(v)) for k, v in (body.logit_bias or {}).items()),
        seed=seed,
        max_tokens=max_tokens,
        min_tokens=body.min_tokens,
        stop_token_ids=tuple(body.stop_token_ids or ()),
        ignore_eos=body.ignore_eos,
        logprobs=logprobs,
        constraint=constraint,
    )
