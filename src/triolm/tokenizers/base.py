"""The one interface the engine and serving layers use for every tokenizer kind."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable


@runtime_checkable
class Tokenizer(Protocol):
    """Text <-> token ids. Implementations: HF `tokenizers` (from tokenizer.json or
    built from GGUF metadata) and mistral-common."""

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce (≤ the model's embedding rows)."""

    @property
    def bos_token_id(self) -> int | None: ...

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Every id that ends generation (eos, eot, <|im_end|> …)."""

    @property
    def special_token_ids(self) -> frozenset[int]:
        """Control/special ids, removed by `decode(..., skip_special_tokens=True)`."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Tokenize text; special-token strings in `text` map to their ids."""

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...

    def id_to_token(self, token_id: int) -> str:
        """The vocabulary entry (piece) for an id, as stored (e.g. '▁the', 'Ġthe', '<0x0A>')."""

    def token_to_id(self, token: str) -> int | None: ...

    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes this token contributes to decoded text (for logprob `bytes`)."""
