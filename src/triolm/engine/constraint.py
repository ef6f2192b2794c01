"""What the engine needs from a structured-output grammar: a per-sequence matcher that
masks the logits before sampling and advances on each sampled token."""

from __future__ import annotations

from typing import Protocol

import torch


class TokenMatcher(Protocol):
    """State of one sequence inside one grammar."""

    def allowed_tokens_mask(self) -> torch.Tensor:
        """Bool tensor [vocab_size]: True where the token may come next."""

    def accept_token(self, token_id: int) -> None:
        """Advance the grammar; raise ValueError when the token is not allowed."""

    def is_terminated(self) -> bool:
        """True when the grammar is complete and only EOS may follow."""


class GrammarSpec(Protocol):
    """A compiled grammar (cached); makes a fresh matcher for each sequence."""

    def new_matcher(self) -> TokenMatcher: ...
