"""Tokenizers <-> GGUF tokenizer metadata (the `tokenizer.*` keys llama.cpp reads).

Two vocabulary kinds:

- "llama": SentencePiece-style. tokens + scores + token types; llama.cpp merges
  adjacent symbols by the score of the piece they form (highest first, leftmost on
  ties) and falls back to <0xNN> byte tokens. We build the equivalent HF BPE by
  deriving merges from the scores (`convert.spm_merges`). A "▁" is prepended to each
  run of text between special tokens (tokenizer.ggml.add_space_prefix, default
  true), as llama.cpp does.
- "gpt2": byte-level BPE. tokens (in GPT-2's byte alphabet) + merges; the text is
  first split by the regexes that `tokenizer.ggml.pre` names (`PRE_TOKENIZERS`).

`fields` dicts hold plain Python values (str, int, bool, float, lists of those)
under the exact llama.cpp key names; `write_tokenizer_metadata` and
`read_tokenizer_metadata` move them in and out of gguf-py writers/readers with the
value types llama.cpp expects.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import gguf

from triolm.errors import ModelLoadError
from triolm.formats.load_limits import check_tokens
from triolm.tokenizers.convert import (
    AddedSpec,
    SpmVocab,
    TokenType,
    build_byte_level_bpe,
    build_spm_tokenizer,
)
from triolm.tokenizers.hf import HFTokenizer

log = logging.getLogger(__name__)

K_MODEL = "tokenizer.ggml.model"
K_PRE = "tokenizer.ggml.pre"
K_TOKENS = "tokenizer.ggml.tokens"
K_SCORES = "tokenizer.ggml.scores"
K_TOKEN_TYPE = "tokenizer.ggml.token_type"
K_MERGES = "tokenizer.ggml.merges"
K_BOS = "tokenizer.ggml.bos_token_id"
K_EOS = "tokenizer.ggml.eos_token_id"
K_EOT = "tokenizer.ggml.eot_token_id"
K_EOM = "tokenizer.ggml.eom_token_id"
K_UNK = "tokenizer.ggml.unknown_token_id"
K_PAD = "tokenizer.ggml.padding_token_id"
K_ADD_BOS = "tokenizer.ggml.add_bos_token"
K_ADD_EOS = "tokenizer.ggml.add_eos_token"
K_ADD_SPACE_PREFIX = "tokenizer.ggml.add_space_prefix"
K_REMOVE_EXTRA_WS = "tokenizer.ggml.remove_extra_whitespaces"
K_CHAT_TEMPLATE = "tokenizer.chat_template"

# ---------------------------------------------------------------------------
# Pre-tokenizers of byte-level BPE vocabularies, by tokenizer.ggml.pre name. The
# patterns are the ones the models' own tokenizer.json files use (Oniguruma
# syntax, which HF tokenizers runs); each regex splits the pieces the previous one
# produced, keeping both matches and the text between them.
# ---------------------------------------------------------------------------

_CONTRACTIONS_CI = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_PATTERN = (_CONTRACTIONS_CI + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (_CONTRACTIONS_CI + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_UPPER = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]"
_LOWER = r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"
TEKKEN_PATTERN = (rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*"
                  r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
GPT4O_PATTERN = (rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+{_CONTRACTIONS_CI}?"
                 rf"|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*{_CONTRACTIONS_CI}?"
                 r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# llama.cpp's "default": what it uses when a GGUF names no pre-tokenizer.
DEFAULT_PATTERNS = (
    r"[\p{P}\$\+<=>\^~\|]+",
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
    r"\p{N}+",
    r"[0-9][0-9][0-9]",
)


@dataclass(frozen=True)
class PreTokenizer:
    patterns: tuple[str, ...]
    ignore_merges: bool = False  # a piece that is itself a token is taken whole
    add_bos: bool = False  # llama.cpp's default when the GGUF has no add_bos_token


_LLAMA3 = PreTokenizer((LLAMA3_PATTERN,), ignore_merges=True, add_bos=True)
_QWEN2 = PreTokenizer((QWEN2_PATTERN,))
_GPT2 = PreTokenizer((GPT2_PATTERN,))
_SMOLLM = PreTokenizer((r"\p{N}", GPT2_PATTERN))

PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    "default": PreTokenizer(DEFAULT_PATTERNS),
    "gpt-2": _GPT2,
    "llama3": _LLAMA3,
    "llama-bpe": _LLAMA3,
    "llama-v3": _LLAMA3,
    "qwen2": _QWEN2,
    "deepseek-r1-qwen": _QWEN2,
    "tekken": PreTokenizer((TEKKEN_PATTERN,), ignore_merges=True, add_bos=True),
    "gpt-4o": PreTokenizer((GPT4O_PATTERN,)),
    "starcoder": _SMOLLM,
    "smollm": _SMOLLM,
}
# Fallback for a missing or unknown tokenizer.ggml.pre (llama.cpp also uses "default"
# for a missing one; it refuses unknown names, we warn and carry on).
FALLBACK_PRE = "default"


def _pre_name_for(patterns: tuple[str, ...]) -> str | None:
    """The tokenizer.ggml.pre name whose regexes are exactly `patterns` (first name wins)."""
    for name, pre in PRE_TOKENIZERS.items():
        if pre.patterns == patterns:
            return name
    return None


# ---------------------------------------------------------------------------
# HFTokenizer -> metadata
# ---------------------------------------------------------------------------


class _Parts:
    """The tokenizer.json sections of an HF tokenizer, parsed on demand (the model
    section of a 131k vocabulary takes ~1 s to serialize and parse)."""

    def __init__(self, hf: HFTokenizer):
        self._tok = hf.hf_tokenizer
        self._model: dict | None = None

    def _component(self, name: str) -> dict | None:
        obj = getattr(self._tok, name)
        return None if obj is None else json.loads(obj.__getstate__())

    @property
    def decoder(self) -> dict | None:
        return self._component("decoder")

    @property
    def normalizer(self) -> dict | None:
        return self._component("normalizer")

    @property
    def pre_tokenizer(self) -> dict | None:
        return self._component("pre_tokenizer")

    @property
    def model_type(self) -> str:
        return type(self._tok.model).__name__  # "BPE", "Unigram", "WordPiece", …

    @property
    def model(self) -> dict:
        if self._model is None:
            self._model = json.loads(self._tok.model.__getstate__())
        return self._model


def _split_patterns(pre: dict | None) -> tuple[str, ...] | None:
    """The regexes of a byte-level pre-tokenizer, or None if it is not of that shape."""
    if pre is None:
        return None
    items = pre["pretokenizers"] if pre.get("type") == "Sequence" else [pre]
    patterns: list[str] = []
    for item in items:
        kind = item.get("type")
        if kind == "Split":
            pat = item.get("pattern", {})
            if "Regex" in pat:
                patterns.append(pat["Regex"])
            else:
                return None
        elif kind == "ByteLevel":
            if item.get("use_regex", True):
                patterns.append(GPT2_PATTERN)
        else:
            return None
    return tuple(patterns)


def _token_list(hf: HFTokenizer) -> list[str]:
    out = []
    for i in range(hf.vocab_size):
        piece = hf.hf_tokenizer.id_to_token(i)
        out.append(piece if piece is not None else f"[triolm_unused_{i}]")
    return out


def _common_fields(hf: HFTokenizer, model: str) -> dict[str, Any]:
    fields: dict[str, Any] = {K_MODEL: model}
    if hf.bos_token_id is not None:
        fields[K_BOS] = hf.bos_token_id
    if hf.eos_token_ids:
        fields[K_EOS] = hf.eos_token_ids[0]
        if len(hf.eos_token_ids) > 1:
            # GGUF has one eos; llama.cpp also ends generation at eot/eom.
            fields[K_EOT] = hf.eos_token_ids[1]
        if len(hf.eos_token_ids) > 2:
            fields[K_EOM] = hf.eos_token_ids[2]
        if len(hf.eos_token_ids) > 3:
            log.warning("GGUF keeps at most 3 end-of-generation ids; dropping %s", hf.eos_token_ids[3:])
    if hf.unk_token_id is not None:
        fields[K_UNK] = hf.unk_token_id
    if hf.pad_token_id is not None:
        fields[K_PAD] = hf.pad_token_id
    fields[K_ADD_BOS] = hf.add_bos
    fields[K_ADD_EOS] = hf.add_eos
    if hf.chat_template is not None:
        fields[K_CHAT_TEMPLATE] = hf.chat_template
    return fields


def _added_types(hf: HFTokenizer, types: list[int]) -> None:
    for i, tok in hf.hf_tokenizer.get_added_tokens_decoder().items():
        if i < len(types):
            types[i] = TokenType.CONTROL if tok.special else TokenType.USER_DEFINED
    if hf.unk_token_id is not None and hf.unk_token_id < len(types):
        types[hf.unk_token_id] = TokenType.UNKNOWN


def _merge_pairs(model: dict) -> list[tuple[str, str]]:
    out = []
    for m in model.get("merges", []):
        if isinstance(m, str):
            a, _, b = m.partition(" ")
        else:
            a, b = m
        out.append((a, b))
    return out


def _spm_scores_from_merges(tokens: list[str], types: list[int], merges: list[tuple[str, str]]) -> list[float]:
    """Scores that make llama.cpp's score-driven merging follow `merges`: a piece scores
    minus the rank of the first merge forming it; normal pieces no merge forms rank
    below all of those; special/byte pieces score 0 as in SentencePiece files."""
    first: dict[str, int] = {}
    for rank, (a, b) in enumerate(merges):
        first.setdefault(a + b, rank)
    n_merges = len(merges)
    scores = []
    for i, (tok, typ) in enumerate(zip(tokens, types, strict=False)):
        if typ != TokenType.NORMAL:
            scores.append(0.0)
        elif tok in first:
            scores.append(-float(first[tok]))
        else:
            scores.append(-float(n_merges + i))
    return scores


def gguf_metadata_from_tokenizer(hf_tokenizer: HFTokenizer, kind: str, *, pre: str | None = None) -> dict[str, Any]:
    """GGUF `tokenizer.*` fields describing `hf_tokenizer`.

    kind: "llama" (SentencePiece-style: tokens, scores, types) or "gpt2" (byte-level
    BPE: tokens, types, merges, pre); also accepted: "spm"/"spm-…" (= "llama"),
    "bpe"/"bpe-…" (= "gpt2"), and "auto" (byte-level decoder -> "gpt2", else "llama").
    `pre` names the pre-tokenizer for "gpt2"; by default it is recognised from the
    tokenizer's regexes, and a tokenizer whose regexes match no known name is refused
    (llama.cpp could not reproduce it).
    """
    doc = _Parts(hf_tokenizer)
    byte_level = '"ByteLevel"' in json.dumps(doc.decoder)
    kind = _model_kind(kind, byte_level)
    model_type = doc.model_type
    tokens = _token_list(hf_tokenizer)
    types = [int(TokenType.NORMAL)] * len(tokens)
    for i, piece in enumerate(tokens):
        if piece.startswith("[triolm_unused_") and hf_tokenizer.hf_tokenizer.id_to_token(i) is None:
            types[i] = TokenType.UNUSED

    if kind == "llama":
        if byte_level:
            raise ValueError("a byte-level BPE tokenizer cannot be written as a GGUF 'llama' "
                             "(SentencePiece) vocabulary; use kind='gpt2'")
        if model_type == "Unigram":
            log.warning("writing a Unigram SentencePiece vocabulary as GGUF 'llama': llama.cpp merges "
                        "by score, which only approximates Unigram segmentation")
        elif model_type != "BPE":
            raise ValueError(f"GGUF 'llama' vocabularies need a SentencePiece-style BPE or Unigram model, "
                             f"not {model_type!r}")
        for i, piece in enumerate(tokens):
            if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                types[i] = TokenType.BYTE
        _added_types(hf_tokenizer, types)
        if hf_tokenizer.scores is not None and len(hf_tokenizer.scores) == len(tokens):
            scores = [float(s) for s in hf_tokenizer.scores]
        elif model_type == "Unigram":
            unigram = doc.model["vocab"]
            scores = [float(s) for _, s in unigram] + [0.0] * (len(tokens) - len(unigram))
        else:
            scores = _spm_scores_from_merges(tokens, types, _merge_pairs(doc.model))
        normalizer = json.dumps(doc.normalizer)
        pre_tok = json.dumps(doc.pre_tokenizer)
        add_space_prefix = '"Prepend"' in normalizer or ('"Metaspace"' in pre_tok and '"never"' not in pre_tok)
        fields = _common_fields(hf_tokenizer, "llama")
        fields.update({
            K_PRE: "default",
            K_TOKENS: tokens,
            K_SCORES: scores,
            K_TOKEN_TYPE: [int(t) for t in types],
            K_ADD_SPACE_PREFIX: add_space_prefix,
        })
        return _ordered(fields)

    if kind == "gpt2":
        if model_type != "BPE" or not byte_level:
            raise ValueError("GGUF 'gpt2' vocabularies need a byte-level BPE tokenizer; this one is "
                             f"{model_type!r}{'' if byte_level else ' without a ByteLevel decoder'}")
        if pre is None:
            patterns = _split_patterns(doc.pre_tokenizer)
            pre = _pre_name_for(patterns) if patterns is not None else None
            if pre is None:
                raise ValueError(
                    "cannot name this tokenizer's pre-tokenizer for GGUF (tokenizer.ggml.pre): its regexes "
                    f"{patterns!r} match none of {sorted(PRE_TOKENIZERS)}; pass pre=... explicitly")
        elif pre not in PRE_TOKENIZERS:
            log.warning("tokenizer.ggml.pre %r is not one triolm knows; readers may fall back to %r",
                        pre, FALLBACK_PRE)
        _added_types(hf_tokenizer, types)
        fields = _common_fields(hf_tokenizer, "gpt2")
        fields.update({
            K_PRE: pre,
            K_TOKENS: tokens,
            K_TOKEN_TYPE: [int(t) for t in types],
            K_MERGES: [f"{a} {b}" for a, b in _merge_pairs(doc.model)],
        })
        return _ordered(fields)

    raise AssertionError(kind)


def _model_kind(kind: str, byte_level: bool) -> str:
    if kind in ("llama", "gpt2"):
        return kind
    if kind == "spm" or kind.startswith("spm-"):
        return "llama"
    if kind == "bpe" or kind.startswith("bpe-"):
        return "gpt2"
    if kind == "auto":
        return "gpt2" if byte_level else "llama"
    raise ValueError(f"unknown GGUF tokenizer kind {kind!r} (expected 'llama', 'gpt2', 'spm…', 'bpe…' or 'auto')")


_KEY_ORDER = [K_MODEL, K_PRE, K_TOKENS, K_SCORES, K_TOKEN_TYPE, K_MERGES, K_BOS, K_EOS, K_EOT, K_EOM,
              K_UNK, K_PAD, K_ADD_BOS, K_ADD_EOS, K_ADD_SPACE_PREFIX, K_REMOVE_EXTRA_WS, K_CHAT_TEMPLATE]


def _ordered(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: fields[k] for k in sorted(fields, key=lambda k: _KEY_ORDER.index(k) if k in _KEY_ORDER else 99)}


# ---------------------------------------------------------------------------
# metadata -> HFTokenizer
# ---------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """numpy scalars/arrays (as some GGUF readers return) -> Python values."""
    return value.tolist() if hasattr(value, "tolist") else value


def _get(fields: Mapping[str, Any], key: str, typ: type | tuple[type, ...], default: Any = None) -> Any:
    value = _plain(fields.get(key, default))
    if value is None:
        return default
    if typ is int and isinstance(value, bool):
        raise ModelLoadError(f"GGUF metadata {key}: expected an integer, got {value!r}")
    if not isinstance(value, typ):
        raise ModelLoadError(f"GGUF metadata {key}: expected {typ}, got {type(value).__name__}")
    return value


def _check_items(values: list | tuple, key: str, typ: type | tuple[type, ...]) -> None:
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, typ):
            raise ModelLoadError(f"GGUF metadata {key}[{i}]: expected {typ}, got {type(v).__name__}")


def _token_id(fields: Mapping[str, Any], key: str, n: int) -> int | None:
    value = _plain(fields.get(key))
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelLoadError(f"GGUF metadata {key}: expected a token id, got {value!r}")
    if not 0 <= value < n:
        log.warning("GGUF metadata %s = %d is outside the vocabulary of %d tokens; ignored", key, value, n)
        return None
    return int(value)


def tokenizer_from_gguf_metadata(fields: Mapping[str, Any]) -> HFTokenizer:
    """Build the tokenizer a GGUF file describes (`fields`: its metadata, plain values).
    Raises ModelLoadError naming the key when the vocabulary is missing or malformed."""
    model = _get(fields, K_MODEL, str)
    if model is None:
        raise ModelLoadError(f"GGUF metadata has no {K_MODEL}: the file carries no tokenizer")
    tokens = _get(fields, K_TOKENS, (list, tuple))
    if not tokens:
        raise ModelLoadError(f"GGUF metadata has no {K_TOKENS}")
    _check_items(tokens, K_TOKENS, str)
    tokens = [str(t) for t in tokens]
    check_tokens(tokens, K_TOKENS)
    n = len(tokens)
    types = list(_get(fields, K_TOKEN_TYPE, (list, tuple), [int(TokenType.NORMAL)] * n))
    if len(types) < n:
        raise ModelLoadError(f"GGUF metadata {K_TOKEN_TYPE}: {len(types)} entries for {n} tokens")
    _check_items(types, K_TOKEN_TYPE, int)
    types = [int(t) for t in types[:n]]
    seen: dict[str, int] = {}
    for i, t in enumerate(tokens):
        if t in seen:
            raise ModelLoadError(f"GGUF metadata {K_TOKENS}: duplicate token {t!r} at ids {seen[t]} and {i}")
        seen[t] = i

    bos = _token_id(fields, K_BOS, n)
    eos_ids = [i for i in (_token_id(fields, k, n) for k in (K_EOS, K_EOT, K_EOM)) if i is not None]
    unk = _token_id(fields, K_UNK, n)
    pad = _token_id(fields, K_PAD, n)
    template = _get(fields, K_CHAT_TEMPLATE, str)

    if model == "llama":
        scores = list(_get(fields, K_SCORES, (list, tuple), [0.0] * n))
        if len(scores) < n:
            raise ModelLoadError(f"GGUF metadata {K_SCORES}: {len(scores)} entries for {n} tokens")
        _check_items(scores, K_SCORES, (int, float))
        scores = [float(s) for s in scores[:n]]
        nan = [i for i, s in enumerate(scores) if s != s]
        if nan:
            raise ModelLoadError(f"GGUF metadata {K_SCORES}[{nan[0]}] is NaN")
        if unk is None and TokenType.UNKNOWN in types:
            unk = types.index(TokenType.UNKNOWN)
        add_bos = bool(_get(fields, K_ADD_BOS, bool, True))
        add_eos = bool(_get(fields, K_ADD_EOS, bool, False))
        vocab = SpmVocab(
            pieces=tokens, scores=scores, types=types, model_type="bpe",
            add_dummy_prefix=bool(_get(fields, K_ADD_SPACE_PREFIX, bool, True)),
            remove_extra_whitespaces=bool(_get(fields, K_REMOVE_EXTRA_WS, bool, False)),
            byte_fallback=TokenType.BYTE in types,
            unk_id=unk, bos_id=bos, eos_id=eos_ids[0] if eos_ids else None, pad_id=pad,
        )
        try:
            tok = build_spm_tokenizer(vocab, add_bos=add_bos, add_eos=add_eos)
        except Exception as exc:
            raise ModelLoadError(f"GGUF 'llama' vocabulary: cannot build the tokenizer: {exc}") from exc
        return HFTokenizer(tok, bos_token_id=bos, eos_token_ids=eos_ids, add_bos=add_bos, add_eos=add_eos,
                           chat_template=template, unk_token_id=unk, pad_token_id=pad, scores=scores)

    if model == "gpt2":
        pre_name = _get(fields, K_PRE, str)
        pre = PRE_TOKENIZERS.get(pre_name) if pre_name is not None else None
        if pre is None:
            if pre_name is None:
                log.warning("GGUF metadata has no %s; using %r regexes (tokenization may differ "
                            "from the model's own)", K_PRE, FALLBACK_PRE)
            else:
                log.warning("GGUF %s %r is unknown to triolm; using %r regexes (tokenization may "
                            "differ from the model's own). Known: %s", K_PRE, pre_name, FALLBACK_PRE,
                            ", ".join(sorted(PRE_TOKENIZERS)))
            pre = PRE_TOKENIZERS[FALLBACK_PRE]
        merges = []
        for j, m in enumerate(_get(fields, K_MERGES, (list, tuple), [])):
            a, sep, b = str(m).partition(" ")
            if not sep or not a or not b:
                raise ModelLoadError(f"GGUF metadata {K_MERGES}[{j}]: {m!r} is not 'left right'")
            merges.append((a, b))
        added = [AddedSpec(i, t, typ != TokenType.USER_DEFINED)
                 for i, (t, typ) in enumerate(zip(tokens, types, strict=False))
                 if typ in (TokenType.CONTROL, TokenType.USER_DEFINED, TokenType.UNKNOWN)]
        add_bos = bool(_get(fields, K_ADD_BOS, bool, pre.add_bos))
        add_eos = bool(_get(fields, K_ADD_EOS, bool, False))
        try:
            tok = build_byte_level_bpe(
                {t: i for i, t in enumerate(tokens)}, merges, pre.patterns, added,
                ignore_merges=pre.ignore_merges,
                bos=tokens[bos] if bos is not None else None,
                eos=tokens[eos_ids[0]] if eos_ids else None, add_bos=add_bos, add_eos=add_eos)
        except Exception as exc:
            raise ModelLoadError(f"GGUF 'gpt2' vocabulary: cannot build the tokenizer: {exc}") from exc
        return HFTokenizer(tok, bos_token_id=bos, eos_token_ids=eos_ids, add_bos=add_bos, add_eos=add_eos,
                           chat_template=template, unk_token_id=unk, pad_token_id=pad)

    raise ModelLoadError(f"GGUF {K_MODEL} {model!r} is not supported (supported: 'llama', 'gpt2')")


# ---------------------------------------------------------------------------
# gguf-py glue
# ---------------------------------------------------------------------------


def write_tokenizer_metadata(writer, fields: Mapping[str, Any]) -> None:
    """Add `fields` to a `gguf.GGUFWriter` with llama.cpp's value types (uint32 ids,
    float32 scores, int32 token types, string arrays)."""

    T = gguf.GGUFValueType
    for key, value in fields.items():
        if key in (K_TOKENS, K_MERGES):
            writer.add_array(key, list(value))
        elif key == K_SCORES:
            writer.add_key_value(key, [float(v) for v in value], T.ARRAY, sub_type=T.FLOAT32)
        elif key == K_TOKEN_TYPE:
            writer.add_key_value(key, [int(v) for v in value], T.ARRAY, sub_type=T.INT32)
        elif isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        else:
            raise TypeError(f"GGUF tokenizer field {key}: unsupported value {type(value).__name__}")


def read_tokenizer_metadata(reader) -> dict[str, Any]:
    """The `tokenizer.*` fields of a `gguf.GGUFReader`, as plain Python values."""
    out: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("tokenizer."):
            out[key] = field.contents()
    return out
