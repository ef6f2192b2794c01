"""Real tokenizers for grammar tests and benchmarks, built offline from the files that
mistral-common ships: a 32,768-piece SentencePiece vocabulary (Mistral v3) and the
131,072-token Tekken byte-level BPE.  Both become HF `tokenizers.Tokenizer` objects
wrapped in a minimal implementation of `triolm.tokenizers.base.Tokenizer`, so the
grammar layer sees exactly what it sees in production.

Used by tests/test_grammar.py and scripts/bench_grammar.py (not a shipping module).
"""

from __future__ import annotations

import base64
import functools
import json
from pathlib import Path
from typing import Sequence

import mistral_common
import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers

DATA = Path(mistral_common.__file__).parent / "data"
SPM_V3 = DATA / "mistral_instruct_tokenizer_240323.model.v3"
TEKKEN = DATA / "tekken_240911.json"


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-char table used by byte-level BPE."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTE_TO_UNICODE = _byte_to_unicode()
UNICODE_TO_BYTE = {c: b for b, c in BYTE_TO_UNICODE.items()}


def _merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """BPE merges implied by tiktoken ranks: every split of a token into two tokens that
    both rank lower, ordered by the rank of the token they form."""
    out = []
    for tok, rank in ranks.items():
        for i in range(1, len(tok)):
            left, right = tok[:i], tok[i:]
            if left in ranks and right in ranks:
                out.append((rank, ranks[left], ranks[right], left, right))
    out.sort()
    return [(left, right) for _, _, _, left, right in out]


@functools.lru_cache(maxsize=None)
def tekken_hf() -> tuple[tokenizers.Tokenizer, tuple[str, ...]]:
    """131,072 ids: 1,000 special tokens then 130,072 byte-level BPE tokens."""
    data = json.loads(TEKKEN.read_text())
    n_vocab = data["config"]["default_vocab_size"]
    n_special = data["config"]["default_num_special_tokens"]
    inner = data["vocab"][: n_vocab - n_special]
    ranks = {base64.b64decode(t["token_bytes"]): t["rank"] for t in inner}
    enc = lambda b: "".join(BYTE_TO_UNICODE[x] for x in b)  # noqa: E731
    specials = [t["token_str"] for t in data.get("special_tokens", [])]
    if not specials:  # older files: mistral-common knows the names
        from mistral_common.tokens.tokenizers.tekken import Tekkenizer

        specials = [t["token_str"] for t in Tekkenizer.from_file(TEKKEN)._all_special_tokens]
    specials += [f"<SPECIAL_{i}>" for i in range(len(specials), n_special)]
    # special tokens occupy ids [0, n_special); shift every BPE id by n_special
    vocab = {enc(b): r + n_special for b, r in ranks.items()}
    for i, s in enumerate(specials):
        vocab[s] = i
    merges = [(enc(a), enc(b)) for a, b in _merges_from_ranks(ranks)]
    tok = tokenizers.Tokenizer(models.BPE(vocab, merges, ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(data["config"]["pattern"]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return tok, tuple(specials)


@functools.lru_cache(maxsize=None)
def spm_v3_hf() -> tuple[tokenizers.Tokenizer, tuple[str, ...]]:
    """32,768 ids: SentencePiece BPE with byte fallback (Mistral v3 instruct)."""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(SPM_V3))
    n = sp.get_piece_size()
    vocab = {sp.id_to_piece(i): i for i in range(n)}
    scores = {sp.id_to_piece(i): sp.get_score(i) for i in range(n)}
    specials = tuple(sp.id_to_piece(i) for i in range(n) if sp.is_control(i) or sp.is_unknown(i))
    normal = [p for p in vocab if p not in specials and not (p.startswith("<0x") and len(p) == 6)]
    pairs = []
    for piece in normal:
        for i in range(1, len(piece)):
            left, right = piece[:i], piece[i:]
            if left in vocab and right in vocab:
                pairs.append((-scores[piece], vocab[left], vocab[right], left, right))
    pairs.sort()
    merges = [(left, right) for *_, left, right in pairs]
    tok = tokenizers.Tokenizer(
        models.BPE(vocab, merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True)
    )
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return tok, specials


class HFTestTokenizer:
    """Minimal `triolm.tokenizers.base.Tokenizer` over a `tokenizers.Tokenizer`;
    exposes the wrapped object as `.hf_tokenizer` like the production HFTokenizer."""

    def __init__(self, tok: tokenizers.Tokenizer, specials: Sequence[str], eos: str, bos: str | None):
        self.hf_tokenizer = tok
        self._n = tok.get_vocab_size(with_added_tokens=True)
        self._special = frozenset(tok.token_to_id(s) for s in specials)
        self._eos = (tok.token_to_id(eos),)
        self._bos = tok.token_to_id(bos) if bos else None
        self._byte_level = isinstance(tok.decoder, decoders.ByteLevel)

    @property
    def vocab_size(self) -> int:
        return self._n

    @property
    def bos_token_id(self) -> int | None:
        return self._bos

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return self._eos

    @property
    def special_token_ids(self) -> frozenset[int]:
        return self._special

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = self.hf_tokenizer.encode(text, add_special_tokens=False).ids
        return ([self._bos] if add_special_tokens and self._bos is not None else []) + ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.hf_tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> str:
        return self.hf_tokenizer.id_to_token(token_id)

    def token_to_id(self, token: str) -> int | None:
        return self.hf_tokenizer.token_to_id(token)

    def token_bytes(self, token_id: int) -> bytes:
        piece = self.hf_tokenizer.id_to_token(token_id)
        if token_id in self._special:
            return piece.encode()
        if self._byte_level:
            return bytes(UNICODE_TO_BYTE[c] for c in piece)
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            return bytes([int(piece[3:5], 16)])
        return piece.replace("▁", " ").encode()


@functools.lru_cache(maxsize=None)
def tekken_tokenizer() -> HFTestTokenizer:
    tok, specials = tekken_hf()
    return HFTestTokenizer(tok, specials, eos="</s>", bos="<s>")


@functools.lru_cache(maxsize=None)
def spm_v3_tokenizer() -> HFTestTokenizer:
    tok, specials = spm_v3_hf()
    return HFTestTokenizer(tok, specials, eos="</s>", bos="<s>")


class BareTokenizer:
    """The same tokenizer with no `.hf_tokenizer`: forces the generic (byte-table) path."""

    def __init__(self, inner: HFTestTokenizer):
        self._inner = inner

    def __getattr__(self, name):
        if name == "hf_tokenizer":
            raise AttributeError(name)
        return getattr(self._inner, name)

    vocab_size = property(lambda self: self._inner.vocab_size)
    bos_token_id = property(lambda self: self._inner.bos_token_id)
    eos_token_ids = property(lambda self: self._inner.eos_token_ids)
    special_token_ids = property(lambda self: self._inner.special_token_ids)
