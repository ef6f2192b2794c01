"""Per-sequence sampling settings, validated where they are built (the API layer)."""

from __future__ import annotations

import attrs

from triolm.engine.constraint import GrammarSpec

MAX_TOP_LOGPROBS = 20


@attrs.frozen
class SamplingParams:
    """How one sequence picks its next tokens and when it stops (token-level stops only;
    stop *strings* are matched on text by the serving layer)."""

    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: disabled
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    allowed_token_ids: tuple[int, ...] = ()  # empty: all; else only these may be sampled
    seed: int | None = None
    max_tokens: int = 16
    min_tokens: int = 0
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # None: no logprobs; N: sampled token's logprob + top-N
    # None: none; N: every prompt token's logprob (after the first) + top-N. Such a
    # prompt is prefilled whole, never from the prefix cache (block_manager).
    prompt_logprobs: int | None = None
    # vLLM's cache_salt: a salted prompt shares prefix-cache blocks only with prompts of
    # the same salt, so a tenant cannot learn by timing what another one's prompts were
    cache_salt: str | None = None
    constraint: GrammarSpec | None = None  # compiled per sequence into a TokenMatcher

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0
