"""What the engine needs from a structured-output grammar: a per-sequence matcher that
masks the logits before sampling and advances on each sampled token.

Masks travel as *bitmasks*: int32 words, bit j of word i allowing token 32*i + j
(little-endian, the layout llguidance, xgrammar and outlines-core all write).  A
[batch, ceil(vocab/32)] bitmask is 32x smaller than a bool mask and is filled in place,
so the engine allocates one per step (or once) and masks the whole batch in one op.

Per decode step, for the rows whose sequence has a matcher:
    fill_token_bitmasks(matchers, bitmask)      # None rows -> all tokens allowed
    apply_token_bitmask_(logits, bitmask)       # after penalties/bias, before temperature
    ... sample ...
    matcher.accept_token(token); if matcher.is_terminated(): finish the sequence ("stop")

A matcher that fails (a mask step past the grammar's limits, a rejected token) reports
it in `error`; the engine then ends that sequence alone with the error, never with
"stop" over text the grammar did not allow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch


class ConstraintFailure(Exception):
    """A sequence's grammar failed while generating; `message` is the matcher's error."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class TokenMatcher(Protocol):
    """State of one sequence inside one grammar."""

    @property
    def error(self) -> str | None:
        """Why the matcher failed (it then allows nothing but EOS), or None."""

    def allowed_tokens_mask(self) -> torch.Tensor:
        """Bool tensor [vocab_size]: True where the token may come next."""

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the allowed-token bits into row `row` of an int32 [batch, words] CPU tensor."""

    def accept_token(self, token_id: int) -> None:
        """Advance the grammar; raise ValueError when the token is not allowed."""

    def is_terminated(self) -> bool:
        """True when the grammar is complete and only EOS may follow (or EOS was taken):
        the engine stops the sequence without sampling again."""

    def rollback(self, num_tokens: int) -> None:
        """Undo the last `num_tokens` accepted tokens (speculative decoding, stop strings)."""


class GrammarSpec(Protocol):
    """A compiled grammar (cached); makes a fresh matcher for each sequence."""

    def new_matcher(self) -> TokenMatcher: ...


def bitmask_words(vocab_size: int) -> int:
    return (vocab_size + 31) // 32


def allocate_token_bitmask(batch_size: int, vocab_size: int) -> torch.Tensor:
    """An all-allowed int32 bitmask [batch_size, ceil(vocab_size/32)] on the CPU."""
    return torch.full((batch_size, bitmask_words(vocab_size)), -1, dtype=torch.int32)


def fill_token_bitmasks(matchers: Sequence[TokenMatcher | None], bitmask: torch.Tensor) -> None:
    """Fill row i of `bitmask` from matchers[i]; rows whose matcher is None allow all.

    Matchers whose class offers `fill_bitmask_batch(pairs, bitmask)` (a staticmethod taking
    [(matcher, row)]) are filled with one call per class, so an implementation can spread
    the rows over threads without holding the GIL.
    """
    batched: dict[Callable, list[tuple[TokenMatcher, int]]] = {}
    for row, m in enumerate(matchers):
        if m is None:
            bitmask[row].fill_(-1)
            continue
        batch_fill = getattr(type(m), "fill_bitmask_batch", None)
        if batch_fill is None:
            m.fill_bitmask(bitmask, row)
        else:
            batched.setdefault(batch_fill, []).append((m, row))
    for batch_fill, pairs in batched.items():
        batch_fill(pairs, bitmask)


_SHIFTS: dict[torch.device, torch.Tensor] = {}
# _BYTE_BIAS[b, j] = 0.0 if bit j of byte b is set (token allowed) else -inf
_BYTE_BIAS = np.where((np.arange(256)[:, None] >> np.arange(8)) & 1, 0.0, -np.inf).astype(np.float32)


def bitmask_to_bool(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Unpack int32 words [..., words] into a bool tensor [..., vocab_size]."""
    if bitmask.device.type == "cpu":
        unpacked = np.unpackbits(bitmask.contiguous().numpy().view(np.uint8), axis=-1, bitorder="little")
        return torch.from_numpy(unpacked[..., :vocab_size]).view(torch.bool)
    shifts = _SHIFTS.get(bitmask.device)
    if shifts is None:
        shifts = _SHIFTS[bitmask.device] = torch.arange(32, dtype=torch.int32, device=bitmask.device)
    bits = (bitmask.unsqueeze(-1) >> shifts) & 1
    return bits.flatten(-2)[..., :vocab_size].bool()


def apply_token_bitmask_(
    logits: torch.Tensor, bitmask: torch.Tensor, rows: Sequence[int] | None = None
) -> torch.Tensor:
    """Set disallowed logits to -inf in place and return logits.

    logits [batch, n] (or [n]); bitmask [batch, words] int32.  Columns past 32*words
    (a padded vocabulary) are disallowed.  `rows`: mask only these rows (the sequences
    that have a matcher); the others are left untouched.

    On the CPU each mask byte is looked up in a 256x8 table of 0/-inf biases and the
    bias is added: a few times faster than unpacking to bool and `masked_fill_`.
    """
    if logits.dim() == 1:
        apply_token_bitmask_(logits.unsqueeze(0), bitmask.view(1, -1))
        return logits
    if rows is not None:
        rows = list(rows)
        if not rows:
            return logits
        if rows != list(range(logits.shape[0])):
            index = torch.tensor(rows, dtype=torch.long)
            sub = logits.index_select(0, index.to(logits.device))
            apply_token_bitmask_(sub, bitmask.index_select(0, index.to(bitmask.device)))
            logits.index_copy_(0, index.to(logits.device), sub)
            return logits
    n = logits.shape[-1]
    covered = min(n, 32 * bitmask.shape[-1])
    if covered < n:
        logits[:, covered:] = float("-inf")
    if logits.device.type == "cpu" and bitmask.device.type == "cpu":
        # one table lookup per mask byte gives the 8 biases (0 or -inf) of its 8 tokens
        bias = np.take(_BYTE_BIAS, bitmask.contiguous().numpy().view(np.uint8), axis=0)
        logits[:, :covered].add_(torch.from_numpy(bias.reshape(bias.shape[0], -1)[:, :covered]))
    else:
        allowed = bitmask_to_bool(bitmask.to(logits.device, non_blocking=True), covered)
        logits[:, :covered].masked_fill_(~allowed, float("-inf"))
    return logits
