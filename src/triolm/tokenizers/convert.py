"""Build Hugging Face `tokenizers.Tokenizer` objects from other tokenizer formats.

Sources: SentencePiece model files (Llama-2 / Mistral style `tokenizer.model`) and
Mistral's tekken JSON (tiktoken-style byte-level BPE given by ranks). The builders
in the middle (`build_spm_tokenizer`, `build_byte_level_bpe`) are shared with the
GGUF vocabulary reader, so a vocabulary means the same thing whichever file it came
from.

Nothing here needs `transformers` or `protobuf`: the SentencePiece model file is a
small protobuf message that `read_spm_vocab` decodes by hand.

SentencePiece semantics reproduced (checked against the sentencepiece library):
a "▁" is prepended to every run of text between special tokens (add_dummy_prefix),
spaces become "▁", BPE merges are taken by the score of the piece they form
(highest first), characters outside the vocabulary fall back to <0xNN> byte pieces.
"""

from __future__ import annotations

import base64
import enum
import json
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from triolm.errors import ModelLoadError

SPIECE_UNDERLINE = "▁"


class TokenType(enum.IntEnum):
    """Piece kinds. SentencePiece's ModelProto and llama.cpp's GGUF token_type share
    this numbering, so values pass between the two unchanged."""

    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


# ---------------------------------------------------------------------------
# SentencePiece
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SpmVocab:
    """Everything needed to rebuild a SentencePiece tokenizer (from a .model file or GGUF)."""

    pieces: list[str]
    scores: list[float]
    types: list[int]
    model_type: str = "bpe"  # "bpe" | "unigram"
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = False
    precompiled_charsmap: bytes = b""
    byte_fallback: bool = True
    unk_id: int | None = 0
    bos_id: int | None = 1
    eos_id: int | None = 2
    pad_id: int | None = None

    def piece(self, i: int | None) -> str | None:
        return None if i is None or not 0 <= i < len(self.pieces) else self.pieces[i]


_SPM_MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _proto_fields(buf: bytes) -> Iterable[tuple[int, int, Any]]:
    """Yield (field_number, wire_type, value) of one protobuf message (proto2 wire format)."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def _int32(v: int) -> int:
    v &= 0xFFFFFFFFFFFFFFFF
    return v - (1 << 64) if v >= 1 << 63 else v


def read_spm_vocab(model_file: str | Path) -> SpmVocab:
    """Decode a SentencePiece ModelProto file: pieces, scores, types and the trainer /
    normalizer flags that change tokenization."""
    path = Path(model_file)
    try:
        buf = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read SentencePiece model: {exc}") from exc
    pieces: list[str] = []
    scores: list[float] = []
    types: list[int] = []
    trainer: dict[int, Any] = {}
    normalizer: dict[int, Any] = {}
    try:
        for number, _, value in _proto_fields(buf):
            if number == 1:  # repeated SentencePiece {piece=1, score=2, type=3}
                piece, score, typ = "", 0.0, 1
                for n, _, v in _proto_fields(value):
                    if n == 1:
                        piece = v.decode("utf-8")
                    elif n == 2:
                        score = struct.unpack("<f", v)[0]
                    elif n == 3:
                        typ = v
                pieces.append(piece)
                scores.append(score)
                types.append(typ)
            elif number == 2:  # TrainerSpec
                trainer = {n: v for n, _, v in _proto_fields(value)}
            elif number == 3:  # NormalizerSpec
                normalizer = {n: v for n, _, v in _proto_fields(value)}
    except (IndexError, ValueError, UnicodeDecodeError, struct.error) as exc:
        raise ModelLoadError(f"{path}: not a SentencePiece model file ({exc})") from exc
    if not pieces:
        raise ModelLoadError(f"{path}: not a SentencePiece model file (no pieces)")
    model_type = _SPM_MODEL_TYPES.get(int(trainer.get(3, 1)), "?")
    if model_type not in ("bpe", "unigram"):
        raise ModelLoadError(f"{path}: SentencePiece model type {model_type!r} is not supported (bpe, unigram)")
    if trainer.get(24, 0):
        raise ModelLoadError(f"{path}: treat_whitespace_as_suffix SentencePiece models are not supported")
    if not normalizer.get(5, 1):
        raise ModelLoadError(f"{path}: SentencePiece models without escape_whitespaces are not supported")

    def special_id(number: int, default: int) -> int | None:
        i = _int32(int(trainer.get(number, default)))
        return i if 0 <= i < len(pieces) else None

    return SpmVocab(
        pieces=pieces,
        scores=scores,
        types=types,
        model_type=model_type,
        add_dummy_prefix=bool(normalizer.get(3, 1)),
        remove_extra_whitespaces=bool(normalizer.get(4, 1)),
        precompiled_charsmap=bytes(normalizer.get(2, b"")),
        byte_fallback=bool(trainer.get(35, 0)),
        unk_id=special_id(40, 0),
        bos_id=special_id(41, 1),
        eos_id=special_id(42, 2),
        pad_id=special_id(43, -1),
    )


def spm_merges(pieces: Sequence[str], scores: Sequence[float], types: Sequence[int]) -> list[tuple[str, str]]:
    """BPE merges equivalent to score-driven merging (SentencePiece BPE, llama.cpp SPM):
    every split of a normal piece into two normal pieces, best score of the formed
    piece first; ties broken by the ids of the formed piece and of its parts.

    Only split points where both halves have the length of some normal piece are
    looked up: a vocabulary has a few dozen distinct lengths, so a piece costs that
    many lookups at most, not one per character (a 1 MB piece would cost 10^12)."""
    normal = {p: i for i, p in enumerate(pieces) if types[i] == TokenType.NORMAL}
    lengths = sorted({len(p) for p in normal})
    has_length = set(lengths)
    found = []
    for piece, i in normal.items():
        n = len(piece)
        for k in lengths:
            if k >= n:
                break
            if n - k not in has_length:
                continue
            a = normal.get(piece[:k])
            if a is None:
                continue
            b = normal.get(piece[k:])
            if b is not None:
                found.append((-scores[i], i, a, b))
    found.sort()
    return [(pieces[a], pieces[b]) for _, _, a, b in found]


def _spm_normalizer(vocab: SpmVocab) -> normalizers.Normalizer | None:
    steps: list[normalizers.Normalizer] = []
    if vocab.precompiled_charsmap:
        steps.append(normalizers.Precompiled(vocab.precompiled_charsmap))
    if vocab.remove_extra_whitespaces:
        steps.append(normalizers.Replace(Regex(" {2,}"), " "))
        steps.append(normalizers.Replace(Regex("^ +| +$"), ""))
    if vocab.add_dummy_prefix:
        steps.append(normalizers.Prepend(SPIECE_UNDERLINE))
    steps.append(normalizers.Replace(" ", SPIECE_UNDERLINE))
    return normalizers.Sequence(steps)


def _special_processor(tok: Tokenizer, bos: str | None, eos: str | None,
                       add_bos: bool, add_eos: bool) -> processors.PostProcessor | None:
    """A post-processor adding bos/eos, so that `transformers` loading the written
    tokenizer.json adds the same special tokens triolm adds itself."""
    pre = [bos] if add_bos and bos is not None else []
    post = [eos] if add_eos and eos is not None else []
    if not pre and not post:
        return None
    single = " ".join([f"{t}:0" for t in pre] + ["$A:0"] + [f"{t}:0" for t in post])
    pair = " ".join([single] + [f"{t}:1" for t in pre] + ["$B:1"] + [f"{t}:1" for t in post])
    specials = [(t, tok.token_to_id(t)) for t in dict.fromkeys(pre + post)]
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)


def build_spm_tokenizer(vocab: SpmVocab, *, add_bos: bool = True, add_eos: bool = False) -> Tokenizer:
    """An HF tokenizer with SentencePiece (Llama "legacy") semantics for `vocab`.

    Control and user-defined pieces are matched in text before normalization, and each
    run of text between them gets its own "▁" prefix -- what llama.cpp does, and what
    mistral-common gets by encoding each chunk separately. (sentencepiece itself does
    not prefix text that follows a user-defined piece; no Llama/Mistral vocabulary has
    such pieces.)"""
    n = len(vocab.pieces)
    if not (len(vocab.scores) == len(vocab.types) == n):
        raise ValueError(f"SentencePiece vocabulary: {n} pieces, {len(vocab.scores)} scores, "
                         f"{len(vocab.types)} types")
    unk = vocab.piece(vocab.unk_id)
    model: models.Model
    if vocab.model_type == "bpe":
        ids = {p: i for i, p in enumerate(vocab.pieces)}
        if len(ids) != n:
            raise ValueError("SentencePiece vocabulary has duplicate pieces")
        model = models.BPE(vocab=ids, merges=spm_merges(vocab.pieces, vocab.scores, vocab.types),
                           unk_token=unk, fuse_unk=True, byte_fallback=vocab.byte_fallback)
    elif vocab.model_type == "unigram":
        model = models.Unigram([(p, s) for p, s in zip(vocab.pieces, vocab.scores, strict=False)],
                               unk_id=vocab.unk_id, byte_fallback=vocab.byte_fallback)
    else:
        raise ValueError(f"unsupported SentencePiece model type {vocab.model_type!r}")
    tok = Tokenizer(model)
    tok.normalizer = _spm_normalizer(vocab)
    steps = [decoders.Replace(SPIECE_UNDERLINE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if vocab.add_dummy_prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(steps)
    added = []
    for p, t in zip(vocab.pieces, vocab.types, strict=False):
        if t in (TokenType.CONTROL, TokenType.UNKNOWN):
            added.append(AddedToken(p, special=True, normalized=False))
        elif t == TokenType.USER_DEFINED:
            added.append(AddedToken(p, special=False, normalized=False))
    tok.add_tokens([a for a in added if not a.special])
    tok.add_special_tokens([a for a in added if a.special])
    post = _special_processor(tok, vocab.piece(vocab.bos_id), vocab.piece(vocab.eos_id), add_bos, add_eos)
    if post is not None:
        tok.post_processor = post
    return tok


# ---------------------------------------------------------------------------
# Byte-level BPE (GPT-2 family, tiktoken, tekken)
# ---------------------------------------------------------------------------


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible table mapping each byte to a printable character: printable
    Latin-1 bytes map to themselves, the rest to U+0100 onwards (space -> 'Ġ')."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table: dict[int, str] = {}
    extra = 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(0x100 + extra)
            extra += 1
    return table


@lru_cache(maxsize=1)
def unicode_to_byte() -> dict[str, int]:
    return {c: b for b, c in byte_to_unicode().items()}


def bytes_to_piece(data: bytes) -> str:
    table = byte_to_unicode()
    return "".join(table[b] for b in data)


def merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """BPE merges equivalent to tiktoken's rank-driven merging: every split of a token
    into two tokens, ordered by the rank of the token they form."""
    found = []
    for token, rank in ranks.items():
        for k in range(1, len(token)):
            a = ranks.get(token[:k])
            if a is None:
                continue
            b = ranks.get(token[k:])
            if b is not None:
                found.append((rank, a, b, k, token))
    found.sort()
    return [(token[:k], token[k:]) for _, _, _, k, token in found]


@dataclass(frozen=True)
class AddedSpec:
    """A token matched verbatim in text before the model runs."""

    id: int
    content: str
    special: bool = True


def build_byte_level_bpe(
    vocab: dict[str, int],
    merges: Sequence[tuple[str, str]],
    patterns: Sequence[str],
    added: Sequence[AddedSpec] = (),
    *,
    ignore_merges: bool = False,
    bos: str | None = None,
    eos: str | None = None,
    add_bos: bool = False,
    add_eos: bool = False,
) -> Tokenizer:
    """An HF byte-level BPE: text is split by each regex in `patterns` in turn (matches
    and the text between them both kept, as llama.cpp and tiktoken do), bytes are
    mapped through `byte_to_unicode`, then merged. `vocab` maps byte-level pieces
    (and added-token contents) to ids."""
    model = models.BPE(vocab=dict(vocab), merges=list(merges), ignore_merges=ignore_merges)
    tok = Tokenizer(model)
    splits = [pre_tokenizers.Split(Regex(p), behavior="isolated", invert=False) for p in patterns]
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    added = sorted(added, key=lambda a: a.id)
    tok.add_tokens([AddedToken(a.content, special=False, normalized=False) for a in added if not a.special])
    tok.add_special_tokens([AddedToken(a.content, special=True, normalized=False) for a in added if a.special])
    for a in added:
        got = tok.token_to_id(a.content)
        if got != a.id:
            raise ValueError(f"added token {a.content!r} should have id {a.id}, got {got}")
    post = _special_processor(tok, bos, eos, add_bos, add_eos)
    if post is not None:
        tok.post_processor = post
    return tok


# ---------------------------------------------------------------------------
# tekken
# ---------------------------------------------------------------------------

# The special tokens of tekken files that predate an explicit "special_tokens" list
# (mistral-common's defaults for v3/v7 tekken). The rest up to the file's
# default_num_special_tokens are fillers named <SPECIAL_{id}>.
TEKKEN_DEFAULT_SPECIALS = (
    "<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]",
    "[IMG_END]", "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]",
    "[TOOL_CONTENT]",
)


@dataclass(frozen=True)
class TekkenVocab:
    ranks: dict[bytes, int]  # byte string -> rank (id = rank + num_special)
    specials: list[str]  # index = id
    pattern: str
    extra: dict = field(default_factory=dict)

    @property
    def num_special(self) -> int:
        return len(self.specials)


def read_tekken(path: str | Path) -> TekkenVocab:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        config = data["config"]
        num_special = int(config["default_num_special_tokens"])
        inner = int(config["default_vocab_size"]) - num_special
        pattern = config["pattern"]
        entries = data["vocab"][:inner]
        ranks = {base64.b64decode(e["token_bytes"]): int(e["rank"]) for e in entries}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{path}: not a readable tekken tokenizer file ({exc!r})") from exc
    if sorted(ranks.values()) != list(range(inner)):
        raise ModelLoadError(f"{path}: tekken ranks are not 0..{inner - 1}")
    listed = data.get("special_tokens")
    if listed is None:
        names = list(TEKKEN_DEFAULT_SPECIALS)
    else:
        names = [t["token_str"] for t in sorted(listed, key=lambda t: t["rank"])]
        if [t["rank"] for t in sorted(listed, key=lambda t: t["rank"])] != list(range(len(names))):
            raise ModelLoadError(f"{path}: tekken special token ranks are not contiguous from 0")
    if len(names) > num_special:
        raise ModelLoadError(f"{path}: {len(names)} special tokens but only {num_special} slots")
    names += [f"<SPECIAL_{i}>" for i in range(len(names), num_special)]
    return TekkenVocab(ranks=ranks, specials=names, pattern=pattern,
                       extra={"version": config.get("version")})
