"""llguidance behind triolm's engine contract (`engine.constraint`).

The llguidance tokenizer is built from the triolm `Tokenizer` protocol alone (every
token's bytes, special tokens marked with the 0xFF prefix llguidance expects), so any
tokenizer kind works: HF tokenizer.json, GGUF-built, mistral-common.  It is the
expensive object (0.1 s for 32k tokens, 0.7 s for 131k) and is cached per (tokenizer, vocab size).

A compiled grammar keeps one pristine `LLMatcher`; each sequence gets a `deep_copy`,
which is far cheaper than re-compiling.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence

import llguidance
import torch

from triolm.engine.constraint import allocate_token_bitmask, bitmask_to_bool, bitmask_words
from triolm.tokenizers.base import Tokenizer

from .sandbox import TokenTable

SPECIAL_MARKER = b"\xff"  # llguidance: token bytes starting with 0xFF are special tokens


class _TokenTable:
    """What `llguidance.TokenizerWrapper` reads: token bytes, eos/bos, and an encoder
    whose output spells exactly the bytes it was given."""

    def __init__(self, tokenizer: Tokenizer, n_vocab: int):
        self._tok = tokenizer
        special = set(tokenizer.special_token_ids)
        tokens: list[bytes] = []
        for i in range(n_vocab):
            if i >= tokenizer.vocab_size:
                b = SPECIAL_MARKER + f"<[padding {i}]>".encode()
            elif i in special:
                b = SPECIAL_MARKER + tokenizer.id_to_token(i).encode("utf-8")
            else:
                b = tokenizer.token_bytes(i)
                if not b:
                    b = SPECIAL_MARKER + f"<[empty {i}]>".encode()
                    special.add(i)
            tokens.append(b)
        self.tokens = tokens
        self.special_token_ids = sorted(special)
        eos = tokenizer.eos_token_ids
        self.eos_token_id = eos[0] if eos else None
        self.bos_token_id = tokenizer.bos_token_id
        self._by_bytes: dict[bytes, int] = {}
        for i, b in enumerate(tokens):
            if not b.startswith(SPECIAL_MARKER):
                self._by_bytes.setdefault(b, i)
        self._max_len = max((len(b) for b in self._by_bytes), default=1)

    def __call__(self, data: bytes) -> list[int]:
        text = data.decode("utf-8", errors="replace")
        ids = list(self._tok.encode(text, add_special_tokens=False))
        if self._spells(ids, data):
            return ids
        # SentencePiece-style encoders prepend a space to the text: drop it from token 0
        if ids and self.tokens[ids[0]].startswith(b" "):
            rest = self.tokens[ids[0]][1:]
            fixed = ids[1:] if not rest else ([self._by_bytes[rest]] + ids[1:] if rest in self._by_bytes else None)
            if fixed is not None and self._spells(fixed, data):
                return fixed
        return self._greedy(data)

    def _spells(self, ids: Sequence[int], data: bytes) -> bool:
        try:
            return b"".join(self.tokens[i] for i in ids) == data
        except IndexError:
            return False

    def _greedy(self, data: bytes) -> list[int]:
        out, pos, n = [], 0, len(data)
        while pos < n:
            for ln in range(min(self._max_len, n - pos), 0, -1):
                i = self._by_bytes.get(data[pos : pos + ln])
                if i is not None:
                    out.append(i)
                    pos += ln
                    break
            else:
                pos += 1  # a byte no token spells: cannot happen with byte fallback
        return out


_CACHE: weakref.WeakKeyDictionary[object, dict[int, llguidance.LLTokenizer]] = weakref.WeakKeyDictionary()
_TABLES: weakref.WeakKeyDictionary[object, dict[int, _TokenTable]] = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def llg_tokenizer(tokenizer: Tokenizer, vocab_size: int | None = None) -> llguidance.LLTokenizer:
    """The llguidance tokenizer for `tokenizer` with `vocab_size` ids (the model's logits
    width, ≥ tokenizer.vocab_size; ids past the tokenizer's are never allowed)."""
    n = max(vocab_size or 0, tokenizer.vocab_size)
    try:
        with _CACHE_LOCK:
            hit = _CACHE.get(tokenizer, {}).get(n)
    except TypeError:  # not weak-referenceable / hashable: build every time
        hit = None
    if hit is not None:
        return hit
    table = _token_table(tokenizer, n)
    eos = list(tokenizer.eos_token_ids) or None
    lt = llguidance.LLTokenizer(llguidance.TokenizerWrapper(table), n_vocab=n, eos_token=eos)
    try:
        with _CACHE_LOCK:
            _CACHE.setdefault(tokenizer, {})[n] = lt
    except TypeError:
        pass
    return lt


def _token_table(tokenizer: Tokenizer, n: int) -> _TokenTable:
    """One table per (tokenizer, n): building it walks the whole vocabulary (~1 s for 131k)."""
    try:
        with _CACHE_LOCK:
            hit = _TABLES.get(tokenizer, {}).get(n)
    except TypeError:
        hit = None
    if hit is None:
        hit = _TokenTable(tokenizer, n)
        try:
            with _CACHE_LOCK:
                _TABLES.setdefault(tokenizer, {})[n] = hit
        except TypeError:
            pass
    return hit


def sandbox_table(tokenizer: Tokenizer, vocab_size: int) -> TokenTable:
    """The same token bytes llg_tokenizer gives llguidance, for the compile sandbox."""
    table = _token_table(tokenizer, max(vocab_size, tokenizer.vocab_size))
    return TokenTable(tokens=table.tokens, eos=list(tokenizer.eos_token_ids), bos=table.bos_token_id,
                      special=table.special_token_ids)


class LLGuidanceMatcher:
    """One sequence's state in a compiled grammar (implements engine.constraint.TokenMatcher)."""

    __slots__ = ("_m", "vocab_size")

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int):
        self._m = matcher
        self.vocab_size = vocab_size

    def _row_ptr(self, bitmask: torch.Tensor, row: int) -> tuple[int, int]:
        words = bitmask_words(self.vocab_size)
        if bitmask.dtype != torch.int32 or bitmask.device.type != "cpu" or not bitmask.is_contiguous():
            raise ValueError("bitmask must be a contiguous int32 CPU tensor")
        if bitmask.shape[-1] < words:
            raise ValueError(f"bitmask has {bitmask.shape[-1]} words; the grammar needs {words}")
        if bitmask.shape[-1] > words:
            bitmask[row, words:] = 0  # ids past the grammar's vocabulary are never allowed
        return bitmask.data_ptr() + row * bitmask.shape[-1] * 4, words * 4

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        ptr, size = self._row_ptr(bitmask, row)
        self._m.unsafe_compute_mask_ptr(ptr, size)

    def allowed_tokens_mask(self) -> torch.Tensor:
        bm = allocate_token_bitmask(1, self.vocab_size)
        self.fill_bitmask(bm, 0)
        return bitmask_to_bool(bm[0], self.vocab_size)

    def accept_token(self, token_id: int) -> None:
        if not self._m.consume_token(int(token_id)):
            raise ValueError(f"token {token_id} rejected by the grammar: {self._m.get_error()}")

    def is_terminated(self) -> bool:
        return self._m.is_stopped()

    def is_accepting(self) -> bool:
        """The output so far is complete (EOS is allowed), though it may still grow."""
        return self._m.is_accepting()

    def rollback(self, num_tokens: int) -> None:
        if num_tokens and not self._m.rollback(num_tokens):
            raise ValueError(f"cannot roll back {num_tokens} tokens: {self._m.get_error()}")

    def forced_tokens(self) -> list[int]:
        """Tokens the grammar forces next (fast-forward); empty when there is a choice."""
        return self._m.compute_ff_tokens()

    @property
    def error(self) -> str | None:
        return self._m.get_error() or None


class CompiledGrammar:
    """A validated grammar for one tokenizer (implements engine.constraint.GrammarSpec)."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int, source: str):
        self._template = matcher
        self.vocab_size = vocab_size
        self.source = source  # the Lark text, for debugging and logs

    def new_matcher(self) -> LLGuidanceMatcher:
        return LLGuidanceMatcher(self._template.deep_copy(), self.vocab_size)

    def __repr__(self) -> str:
        head = self.source if len(self.source) < 120 else self.source[:117] + "..."
        return f"CompiledGrammar(vocab_size={self.vocab_size}, source={head!r})"
