"""`MistralTokenizerAdapter`: triolm's `Tokenizer` protocol over mistral-common.

In Mistral tokenizer mode the server encodes chats with mistral-common
(`triolm.prompting.mistral`), and everything else — `/tokenize` of a raw prompt,
streaming detokenization, logprob bytes, the grammar's token table — must see the
very same vocabulary. This adapter gives them that vocabulary through the one small
interface they already use, for both tokenizer kinds mistral-common ships:

- SentencePiece (`tokenizer.model.v1…v7`): ids are sentencepiece's. Control tokens
  (`<s>`, `[INST]`, `[TOOL_CALLS]`, …) are the special ids, plus `<unk>` (which
  sentencepiece would otherwise decode as " ⁇ " and a grammar could then pick as
  ordinary text). Byte-fallback pieces `<0xNN>` stand for one byte, `▁` for a space.
- Tekken (`tekken.json`): the first `num_special_tokens` ids are special; the others
  are tiktoken ranks shifted by that number, each exactly one byte string. Their
  `id_to_token` spelling uses the GPT-2 byte alphabet (as the HF conversion does),
  so every id has a distinct printable name and `token_to_id` inverts it.

`encode` takes raw text: control-token spellings in it stay text (mistral-common
never parses them — a user cannot smuggle `[INST]` into a prompt), with `<s>` in
front when `add_special_tokens`. `decode(..., skip_special_tokens=False)` spells
control tokens by name and keeps the space a run of text starts with after one
(`[TOOL_CALLS] [{…`), which is what tool-call parsers read.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from mistral_common.protocol.instruct.validator import ValidationMode
from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
from mistral_common.tokens.tokenizers.sentencepiece import SentencePieceTokenizer
from mistral_common.tokens.tokenizers.tekken import Tekkenizer

from triolm.errors import ModelLoadError
from triolm.tokenizers.convert import bytes_to_piece, unicode_to_byte

__all__ = ["MistralTokenizerAdapter", "load_mistral_tokenizer_adapter"]

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_SPACE = "\u2581"


class MistralTokenizerAdapter:
    """A mistral-common `MistralTokenizer` seen as a triolm `Tokenizer`.

    `mistral_tokenizer` is the wrapped object (the chat encoder needs it)."""

    chat_template = None  # chats are encoded by mistral-common, never by a Jinja template

    def __init__(self, mistral: MistralTokenizer):
        raw = mistral.instruct_tokenizer.tokenizer
        if not isinstance(raw, (SentencePieceTokenizer, Tekkenizer)):
            raise TypeError(f"unsupported mistral-common tokenizer {type(raw).__name__}")
        self.mistral_tokenizer = mistral
        self._raw = raw
        self._tekken = isinstance(raw, Tekkenizer)
        self._vocab_size = int(raw.n_words)
        self._bos = int(raw.bos_id)
        self._eos = (int(raw.eos_id),)
        special = {int(i) for i in raw.special_ids}
        if self._tekken:
            self._num_special = int(raw.num_special_tokens)
            self._special_names = {i: raw.id_to_piece(i) for i in range(self._num_special)}
            self._special_by_name = {name: i for i, name in self._special_names.items()}
            self._pieces: list[str] | None = None
            self._piece_ids: dict[str, int] | None = None
        else:
            unk = int(raw.unk_id)
            if 0 <= unk < self._vocab_size:
                special.add(unk)
            self._pieces = list(raw.vocab())
            self._piece_ids = {piece: i for i, piece in enumerate(self._pieces)}
        self._special = frozenset(special)

    # -- the Tokenizer protocol -------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def bos_token_id(self) -> int | None:
        return self._bos

    @property
    def eos_token_id(self) -> int | None:
        return self._eos[0]

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return self._eos

    @property
    def special_token_ids(self) -> frozenset[int]:
        return self._special

    @property
    def bos_token(self) -> str:
        return self.id_to_token(self._bos)

    @property
    def eos_token(self) -> str:
        return self.id_to_token(self._eos[0])

    @property
    def is_tekken(self) -> bool:
        return self._tekken

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """mistral-common's encoding of raw `text` (control-token spellings stay text),
        `<s>` first when `add_special_tokens`."""
        return self._raw.encode(text, bos=add_special_tokens, eos=False)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            text_ids = [i for i in ids if i not in self._special]
            if self._tekken:
                return self._raw.decode(text_ids, special_token_policy=SpecialTokenPolicy.IGNORE)
            return self._raw._model.decode(text_ids)
        if self._tekken:
            return self._raw.decode(ids, special_token_policy=SpecialTokenPolicy.KEEP)
        return self._spm_decode_keep(ids)

    def id_to_token(self, token_id: int) -> str:
        self._check(token_id)
        if self._pieces is not None:
            return self._pieces[token_id]
        if token_id < self._num_special:
            return self._special_names[token_id]
        return bytes_to_piece(self._tekken_bytes(token_id))

    def token_to_id(self, token: str) -> int | None:
        if self._piece_ids is not None:
            return self._piece_ids.get(token)
        if token in self._special_by_name:
            return self._special_by_name[token]
        table = unicode_to_byte()
        try:
            data = bytes(table[c] for c in token)
            return self._tekkenizer()._model.encode_single_token(data) + self._num_special
        except KeyError:
            return None

    def token_bytes(self, token_id: int) -> bytes:
        """Bytes the token adds to decoded text mid-sequence; special tokens give their
        name. (SentencePiece drops the one leading space of a whole text: a property of
        the text, not of the token, not reflected here.)"""
        self._check(token_id)
        if self._pieces is not None:
            piece = self._pieces[token_id]
            if token_id not in self._special:
                match = _BYTE_PIECE.fullmatch(piece)
                if match:
                    return bytes([int(match.group(1), 16)])
                return piece.replace(_SPACE, " ").encode("utf-8")
            return piece.encode("utf-8")
        if token_id < self._num_special:
            return self._special_names[token_id].encode("utf-8")
        return self._tekken_bytes(token_id)

    # -- helpers ---------------------------------------------------------------------

    def _check(self, token_id: int) -> None:
        if not 0 <= token_id < self._vocab_size:
            raise IndexError(f"token id {token_id} is out of range (vocabulary of {self._vocab_size})")

    def _tekkenizer(self) -> Tekkenizer:
        assert isinstance(self._raw, Tekkenizer), "a tekken-only path on a SentencePiece tokenizer"
        return self._raw

    def _spm_pieces(self) -> list[str]:
        assert self._pieces is not None, "a SentencePiece-only path on a tekken tokenizer"
        return self._pieces

    def _tekken_bytes(self, token_id: int) -> bytes:
        return self._tekkenizer()._model.decode_single_token_bytes(token_id - self._num_special)

    def _spm_decode_keep(self, ids: list[int]) -> str:
        """Special tokens by name; each run of text between them decoded by sentencepiece,
        with the leading space it drops put back when a special token precedes the run."""
        model = self._raw._model
        pieces = self._spm_pieces()
        parts: list[str] = []
        run: list[int] = []

        def flush(after_special: bool) -> None:
            text = model.decode(run)
            if after_special and pieces[run[0]].startswith(_SPACE):
                text = " " + text
            parts.append(text)

        after_special = False
        run_after_special = False
        for token in ids:
            if token in self._special:
                if run:
                    flush(run_after_special)
                    run = []
                parts.append(pieces[token])
                after_special = True
            else:
                if not run:
                    run_after_special = after_special
                run.append(token)
        if run:
            flush(run_after_special)
        return "".join(parts)

    def __repr__(self) -> str:
        kind = "tekken" if self._tekken else "sentencepiece"
        return (f"MistralTokenizerAdapter({kind}, vocab_size={self._vocab_size}, "
                f"version={self.mistral_tokenizer.instruct_tokenizer.tokenizer.version.value})")


def load_mistral_tokenizer_adapter(path: str | Path) -> MistralTokenizerAdapter:
    """The adapter over the mistral-common tokenizer in `path` (a tokenizer file or a
    model directory holding one); ModelLoadError when there is none or it is broken."""
    return MistralTokenizerAdapter(load_mistral_tokenizer(path))


_SPM_FILE_RE = re.compile(r"^tokenizer(?:\.mm)?\.model\.v(\d+)(m\d+)?$")


def find_mistral_tokenizer_file(model_dir: str | Path) -> Path | None:
    """The mistral-common tokenizer file shipped in a model directory, or None.

    Preference: `tekken.json`, then another `*tekken*.json`, then the newest
    versioned sentencepiece file (`tokenizer.model.v7` over `.v3`; text-only over
    multimodal of the same version). A bare `tokenizer.model` is Hugging Face's
    and does not count: such models keep their HF tokenizer.
    """
    directory = Path(model_dir)
    if not directory.is_dir():
        return None
    if (directory / "tekken.json").is_file():
        return directory / "tekken.json"
    tekkens = sorted(p for p in directory.glob("*tekken*.json") if p.is_file())
    if tekkens:
        return tekkens[-1]
    ranked = []
    for path in directory.iterdir():
        match = _SPM_FILE_RE.match(path.name)
        if match and path.is_file():
            ranked.append((int(match.group(1)), match.group(2) is None and ".mm." not in path.name, path.name, path))
    return max(ranked)[3] if ranked else None


def load_mistral_tokenizer(
    path: str | Path, mode: ValidationMode = ValidationMode.test
) -> MistralTokenizer:
    """Load a mistral-common tokenizer from its file or from a model directory.

    `mode` is mistral-common's validation mode; the default (`test`) checks
    message structure but does not require a model name in each request.
    Raises ModelLoadError naming the path and the problem.
    """
    source = Path(path)
    if source.is_dir():
        found = find_mistral_tokenizer_file(source)
        if found is None:
            raise ModelLoadError(
                f"{source}: no mistral-common tokenizer file (expected tekken.json or "
                "tokenizer.model.v<N>, e.g. tokenizer.model.v3)"
            )
        source = found
    elif not source.is_file():
        raise ModelLoadError(f"{source}: no such tokenizer file or model directory")
    try:
        return MistralTokenizer.from_file(str(source), mode=mode)
    except Exception as exc:  # corrupt JSON, unknown version, not a tokenizer…
        raise ModelLoadError(f"{source}: not a loadable mistral-common tokenizer: {exc}") from exc
