"""Incremental, UTF-8-safe detokenization for streaming.

Decoding one token at a time is wrong (a character may span tokens; SentencePiece
decoders drop a leading space only at the start of a text) and decoding everything
each step is O(n²). Instead each step decodes a short window: `ids[prefix:read]`
is text already sent, `ids[prefix:]` is that plus the new tokens, and the
difference is the delta. The window start moves forward each time text is sent.

Text is held back while it could still change:
- the window decodes to something ending in U+FFFD: a character is incomplete;
- the newest token is a <0xNN> byte piece: HF's ByteFallback decoder turns a
  whole run of byte pieces into U+FFFD if any part of it is invalid, so a later
  byte can rewrite the run.

Invariants (tested): the deltas concatenated, plus `flush()`, equal
`tokenizer.decode(all ids)`; and at every step the text sent so far is a prefix
of the final decode, so no delta carries a U+FFFD or a partial character that the
full decode does not have at that position.
"""

from __future__ import annotations

import re

from triolm.tokenizers.base import Tokenizer

_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")
_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Feed generated ids with `push`; call `flush` once when the sequence ends."""

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._skip = tokenizer.special_token_ids if skip_special_tokens else frozenset()
        self._ids: list[int] = []  # visible ids (skipped specials never enter)
        self._prefix = 0
        self._read = 0
        self._prefix_text: str | None = ""  # decode(ids[prefix:read]) when known
        self._byte_piece: dict[int, bool] = {}
        self.text = ""  # everything sent so far

    @property
    def token_ids(self) -> list[int]:
        """The ids that contribute to the text (skipped special tokens excluded)."""
        return list(self._ids)

    def push(self, token_id: int) -> str:
        """Add one generated id; return the text it makes final (often "", never partial)."""
        if token_id in self._skip:
            return ""
        self._ids.append(token_id)
        if self._is_byte_piece(token_id):
            return ""
        return self._advance(final=False)

    def push_many(self, token_ids) -> str:
        return "".join(self.push(t) for t in token_ids)

    def flush(self) -> str:
        """The sequence has ended: return whatever was held back (incomplete
        characters become U+FFFD exactly as the full decode has them)."""
        if self._read == len(self._ids):
            return ""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        ids = self._ids
        if self._prefix_text is None:
            self._prefix_text = self.tokenizer.decode(ids[self._prefix:self._read],
                                                      skip_special_tokens=self.skip_special_tokens)
        prefix_text = self._prefix_text
        new_text = self.tokenizer.decode(ids[self._prefix:], skip_special_tokens=self.skip_special_tokens)
        if not final and (len(new_text) <= len(prefix_text) or new_text.endswith(_REPLACEMENT)):
            return ""
        if new_text.startswith(prefix_text):
            delta = new_text[len(prefix_text):]
        else:  # a decoder whose output is not prefix-stable over this window; best effort
            delta = new_text[len(prefix_text):] if len(new_text) > len(prefix_text) else ""
        self._prefix, self._read = self._read, len(ids)
        self._prefix_text = None
        self.text += delta
        return delta

    def _is_byte_piece(self, token_id: int) -> bool:
        known = self._byte_piece.get(token_id)
        if known is None:
            try:
                piece = self.tokenizer.id_to_token(token_id)
            except Exception:  # an id the vocabulary cannot name is simply not a byte piece
                piece = None
            known = isinstance(piece, str) and _BYTE_PIECE.fullmatch(piece) is not None
            self._byte_piece[token_id] = known
        return known
