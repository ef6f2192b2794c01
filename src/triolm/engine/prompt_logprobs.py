"""Log-probabilities of a prompt's own tokens, from the prefill's hidden states.

Evaluation harnesses score a text by the probability the model gives each of its tokens
after the ones before it. The prefill computes the hidden state of every prompt position
anyway; only the last one is normally turned into logits. For a request that asks, the
others are too — a slice of rows at a time, so a long prompt never holds a
[prompt, vocab] tensor at once.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import torch

ROWS_PER_SLICE = 128  # 128 x a 150k vocabulary in float32 is ~77 MB at a time


@attrs.frozen
class PromptTokenLogprob:
    """How likely the model found one prompt token after the tokens before it."""

    token_id: int
    logprob: float
    rank: int  # 1 for the model's most likely token
    top_logprobs: tuple[tuple[int, float], ...]  # best-first (id, logprob), `top_n` of them


def prompt_token_logprobs(logits_of: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor,
                          token_ids: list[int], top_n: int) -> tuple[PromptTokenLogprob, ...]:
    """For tokens 1..n-1 of the prompt: `hidden[i]` is the hidden state at position i,
    which predicts token i+1. (Token 0 follows nothing and has no log-probability.)"""
    targets = torch.tensor(token_ids[1:], dtype=torch.long)
    out: list[PromptTokenLogprob] = []
    for start in range(0, len(targets), ROWS_PER_SLICE):
        rows = torch.log_softmax(logits_of(hidden[start:start + ROWS_PER_SLICE]).float(), dim=-1)
        wanted = targets[start:start + len(rows)]
        chosen = rows.gather(1, wanted.unsqueeze(1)).squeeze(1)
        ranks = (rows > chosen.unsqueeze(1)).sum(dim=1) + 1
        if top_n > 0:
            top_vals, top_ids = torch.topk(rows, top_n, dim=-1)
            tops = [tuple(zip(i, v, strict=True)) for i, v in zip(top_ids.tolist(), top_vals.tolist(), strict=True)]
        else:
            tops = [()] * len(rows)
        out.extend(PromptTokenLogprob(t, lp, r, top)
                   for t, lp, r, top in zip(wanted.tolist(), chosen.tolist(), ranks.tolist(), tops, strict=True))
    return tuple(out)
