"""`HFTokenizer`: the `Tokenizer` protocol over a Hugging Face `tokenizers.Tokenizer`.

triolm adds BOS/EOS itself (from `add_bos`/`add_eos`) and always calls the Rust
tokenizer with `add_special_tokens=False`, so a tokenizer.json post-processor never
adds a second BOS. Decoding is the Rust decoder's (no transformers-style
`clean_up_tokenization_spaces`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from triolm.errors import ModelLoadError
from triolm.tokenizers.convert import (
    AddedSpec,
    build_byte_level_bpe,
    build_spm_tokenizer,
    bytes_to_piece,
    merges_from_ranks,
    read_spm_vocab,
    read_tekken,
    unicode_to_byte,
)

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _token_content(value: Any) -> str | None:
    """tokenizer_config.json stores tokens as a string or as an AddedToken dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: cannot read JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return data


def _ids(value: Any) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def _pick_chat_template(value: Any) -> str | None:
    """`chat_template` is a string, or a list of {"name", "template"} (use "default")."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        chosen = named.get("default") or next(iter(named.values()), None)
        return chosen if isinstance(chosen, str) else None
    return None


def _decoder_style(tok: Tokenizer) -> str:
    """How token strings map to bytes, read off the decoder: "byte_level" (GPT-2 'Ġ'
    alphabet), "spm" ('▁' is a space, <0xNN> is a byte) or "plain" (UTF-8 of the piece)."""
    dec = tok.decoder
    if dec is None:
        return "plain"
    state = dec.__getstate__()
    text = state.decode("utf-8", "replace") if isinstance(state, bytes) else str(state)
    if '"ByteLevel"' in text:
        return "byte_level"
    if '"ByteFallback"' in text or '"Metaspace"' in text or "\u2581" in text:
        return "spm"
    return "plain"


class HFTokenizer:
    """A Hugging Face fast tokenizer with the bits a server needs around it: which ids
    start and end sequences, the chat template, and exact per-token bytes."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        bos_token_id: int | None = None,
        eos_token_ids: Sequence[int] = (),
        add_bos: bool = False,
        add_eos: bool = False,
        chat_template: str | None = None,
        unk_token_id: int | None = None,
        pad_token_id: int | None = None,
        scores: Sequence[float] | None = None,
    ):
        self.hf_tokenizer = tokenizer
        self._bos = bos_token_id
        self._eos = tuple(dict.fromkeys(int(i) for i in eos_token_ids))
        self.add_bos = bool(add_bos) and bos_token_id is not None
        self.add_eos = bool(add_eos) and bool(self._eos)
        self.chat_template = chat_template
        self.unk_token_id = unk_token_id
        self.pad_token_id = pad_token_id
        #: SentencePiece piece scores when known (converted from .model / GGUF); used
        #: to write GGUF "llama" vocabularies faithfully.
        self.scores = list(scores) if scores is not None else None
        added = tokenizer.get_added_tokens_decoder()
        self._special = frozenset(i for i, t in added.items() if t.special)
        self._added = {i: t.content for i, t in added.items()}
        self._vocab_size = max(tokenizer.get_vocab_size(with_added_tokens=True),
                               max(added, default=-1) + 1)
        self._style = _decoder_style(tokenizer)
        for name, i in (("bos_token_id", bos_token_id), ("unk_token_id", unk_token_id),
                        ("pad_token_id", pad_token_id), *(("eos_token_ids", e) for e in self._eos)):
            if i is not None and tokenizer.id_to_token(i) is None:
                raise ModelLoadError(f"{name} {i} is not in the vocabulary ({self._vocab_size} ids)")

    # -- construction -------------------------------------------------------------

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> HFTokenizer:
        """Load a Hugging Face model directory: tokenizer.json (else tokenizer.model,
        converted), tokenizer_config.json (bos/eos/add_bos_token/chat_template),
        chat_template.jinja, and the eos ids of generation_config.json / config.json."""
        d = Path(model_dir)
        if not d.is_dir():
            raise ModelLoadError(f"{d}: not a directory")
        cfg = _read_json(d / "tokenizer_config.json") if (d / "tokenizer_config.json").exists() else {}
        scores = None
        spm_defaults: dict[str, Any] = {}
        if (d / "tokenizer.json").exists():
            try:
                tok = Tokenizer.from_file(str(d / "tokenizer.json"))
            except Exception as exc:  # the Rust error names what is wrong
                raise ModelLoadError(f"{d / 'tokenizer.json'}: cannot load: {exc}") from exc
        elif (d / "tokenizer.model").exists():
            vocab = read_spm_vocab(d / "tokenizer.model")
            tok = build_spm_tokenizer(vocab, add_bos=cfg.get("add_bos_token", True) is not False,
                                      add_eos=bool(cfg.get("add_eos_token", False)))
            scores = vocab.scores if vocab.model_type == "bpe" else None
            spm_defaults = {"bos": vocab.bos_id, "eos": vocab.eos_id, "unk": vocab.unk_id,
                            "pad": vocab.pad_id, "add_bos": True}
        else:
            raise ModelLoadError(f"{d}: no tokenizer.json or tokenizer.model")

        def token_id(key: str) -> int | None:
            content = _token_content(cfg.get(key))
            if content is None:
                return None
            i = tok.token_to_id(content)
            if i is None:
                raise ModelLoadError(f"{d / 'tokenizer_config.json'}: {key} {content!r} is not in the vocabulary")
            return i

        model_cfg = _read_json(d / "config.json") if (d / "config.json").exists() else {}
        gen_cfg = _read_json(d / "generation_config.json") if (d / "generation_config.json").exists() else {}

        bos = token_id("bos_token")
        if bos is None:
            bos = spm_defaults.get("bos")
        if bos is None and _ids(model_cfg.get("bos_token_id")):
            bos = _ids(model_cfg.get("bos_token_id"))[0]
        eos = []
        if (e := token_id("eos_token")) is not None:
            eos.append(e)
        elif spm_defaults.get("eos") is not None:
            eos.append(spm_defaults["eos"])
        eos += _ids(gen_cfg.get("eos_token_id"))
        if not eos:
            eos += _ids(model_cfg.get("eos_token_id"))
        vocab_n = tok.get_vocab_size(with_added_tokens=True)
        eos = [e for e in eos if 0 <= e < vocab_n]

        probe = _probe_post_processor(tok)
        add_bos = cfg.get("add_bos_token")
        if not isinstance(add_bos, bool):
            add_bos = spm_defaults.get("add_bos", bos is not None and probe[0] == [bos])
        add_eos = cfg.get("add_eos_token")
        if not isinstance(add_eos, bool):
            add_eos = bool(eos) and probe[1] == [eos[0]]

        template = _pick_chat_template(cfg.get("chat_template"))
        if (d / "chat_template.jinja").exists():
            template = (d / "chat_template.jinja").read_text(encoding="utf-8")
        elif template is None and (d / "chat_template.json").exists():
            template = _pick_chat_template(_read_json(d / "chat_template.json").get("chat_template"))

        unk = token_id("unk_token")
        pad = token_id("pad_token")
        return cls(
            tok,
            bos_token_id=bos,
            eos_token_ids=eos,
            add_bos=add_bos,
            add_eos=add_eos,
            chat_template=template,
            unk_token_id=unk if unk is not None else spm_defaults.get("unk"),
            pad_token_id=pad if pad is not None else spm_defaults.get("pad"),
            scores=scores,
        )

    def save(self, model_dir: str | Path) -> None:
        """Write tokenizer.json and tokenizer_config.json (readable by `from_dir` and by
        transformers' AutoTokenizer). Extra eos ids belong in generation_config.json,
        which the model writer owns."""
        d = Path(model_dir)
        d.mkdir(parents=True, exist_ok=True)
        self.hf_tokenizer.save(str(d / "tokenizer.json"))
        tokens = {name: (self.id_to_token(i) if i is not None else None) for name, i in (
            ("bos_token", self._bos), ("eos_token", self.eos_token_id),
            ("unk_token", self.unk_token_id), ("pad_token", self.pad_token_id))}
        cfg: dict[str, Any] = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **tokens,
            "add_bos_token": self.add_bos,
            "add_eos_token": self.add_eos,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 1 << 30,
        }
        if self.chat_template is not None:
            cfg["chat_template"] = self.chat_template
        (d / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n",
                                                 encoding="utf-8")

    # -- the Tokenizer protocol ---------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def bos_token_id(self) -> int | None:
        return self._bos

    @property
    def eos_token_id(self) -> int | None:
        """The primary end-of-sequence id (the tokenizer's eos token)."""
        return self._eos[0] if self._eos else None

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return self._eos

    @property
    def special_token_ids(self) -> frozenset[int]:
        return self._special

    @property
    def bos_token(self) -> str | None:
        """The bos token's text, for chat templates."""
        return None if self._bos is None else self.id_to_token(self._bos)

    @property
    def eos_token(self) -> str | None:
        """The primary eos token's text, for chat templates."""
        return None if not self._eos else self.id_to_token(self._eos[0])

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        # encode_batch releases the GIL while the Rust tokenizer works (encode holds it for
        # the whole text: ~0.3 s at 500 KB, a frozen event loop even from a worker thread).
        ids = self.hf_tokenizer.encode_batch([text], add_special_tokens=False)[0].ids
        if add_special_tokens:
            if self.add_bos and self._bos is not None:  # add_bos implies a BOS id
                ids.insert(0, self._bos)
            if self.add_eos:
                ids.append(self._eos[0])
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.hf_tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> str:
        piece = self.hf_tokenizer.id_to_token(token_id)
        if piece is None:
            raise IndexError(f"token id {token_id} is out of range (vocabulary of {self._vocab_size})")
        return piece

    def token_to_id(self, token: str) -> int | None:
        return self.hf_tokenizer.token_to_id(token)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes this token adds to decoded text mid-sequence, by the decoder's own
        rules ('Ġ' alphabet for byte-level BPE; '▁' -> space and <0xNN> -> that byte for
        SentencePiece; special tokens -> their text). A SentencePiece decoder also drops
        the one leading space of a whole text: that is a property of the text, not of
        the token, and not reflected here."""
        piece = self.id_to_token(token_id)
        if self._style == "byte_level":
            table = unicode_to_byte()
            try:
                return bytes(table[c] for c in piece)
            except KeyError:  # e.g. an added token with characters outside the alphabet
                return piece.encode("utf-8")
        if self._style == "spm":
            m = _BYTE_PIECE.fullmatch(piece)  # the ByteFallback decoder's rule, for any token
            if m:
                return bytes([int(m.group(1), 16)])
            return piece.replace("\u2581", " ").encode("utf-8")
        return piece.encode("utf-8")

    def __repr__(self) -> str:
        return (f"HFTokenizer(vocab_size={self._vocab_size}, bos={self.bos_token!r}, "
                f"eos={[self.id_to_token(i) for i in self._eos]!r}, add_bos={self.add_bos})")


def _probe_post_processor(tok: Tokenizer) -> tuple[list[int], list[int]]:
    """The ids a tokenizer.json post-processor puts before and after a text."""
    if tok.post_processor is None:
        return [], []
    plain = tok.encode("a", add_special_tokens=False).ids
    full = tok.encode("a", add_special_tokens=True).ids
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return full[:start], full[start + len(plain):]
    return [], []


# -- converted from SentencePiece and tekken files ----------------------------------------


def spm_to_hf(model_file: str | Path, *, add_bos: bool = True, add_eos: bool = False,
              chat_template: str | None = None) -> HFTokenizer:
    """Convert a SentencePiece model file; the piece scores are kept (for GGUF export)."""
    vocab = read_spm_vocab(model_file)
    tok = build_spm_tokenizer(vocab, add_bos=add_bos, add_eos=add_eos)
    return HFTokenizer(
        tok,
        bos_token_id=vocab.bos_id,
        eos_token_ids=() if vocab.eos_id is None else (vocab.eos_id,),
        add_bos=add_bos,
        add_eos=add_eos,
        chat_template=chat_template,
        unk_token_id=vocab.unk_id,
        pad_token_id=vocab.pad_id,
        scores=vocab.scores if vocab.model_type == "bpe" else None,
    )



def tekken_to_hf(path: str | Path, *, add_bos: bool = True, chat_template: str | None = None) -> HFTokenizer:
    """Convert a tekken JSON file: ids 0..n_special-1 are the special tokens, the byte-level
    BPE tokens follow (id = rank + n_special); merges are derived from the ranks."""
    tv = read_tekken(path)
    n_special = tv.num_special
    vocab = {bytes_to_piece(b): r + n_special for b, r in tv.ranks.items()}
    for i, name in enumerate(tv.specials):
        if name in vocab:
            raise ModelLoadError(f"{path}: special token {name!r} collides with a byte-level token")
        vocab[name] = i
    merges = [(bytes_to_piece(a), bytes_to_piece(b)) for a, b in merges_from_ranks(tv.ranks)]
    tok = build_byte_level_bpe(
        vocab, merges, [tv.pattern], [AddedSpec(i, s, True) for i, s in enumerate(tv.specials)],
        ignore_merges=True, bos="<s>", eos="</s>", add_bos=add_bos)
    eos = tok.token_to_id("</s>")
    assert eos is not None, "build_byte_level_bpe adds </s>"
    return HFTokenizer(
        tok,
        bos_token_id=tok.token_to_id("<s>"),
        eos_token_ids=(eos,),
        add_bos=add_bos,
        chat_template=chat_template,
        unk_token_id=tok.token_to_id("<unk>"),
        pad_token_id=tok.token_to_id("<pad>"),
    )


def convert_tokenizer_file(src: str | Path, *, chat_template: str | None = None) -> HFTokenizer:
    """Convert a tokenizer file by its kind: tekken JSON or SentencePiece model."""
    src = Path(src)
    if src.suffix == ".json" or "tekken" in src.name:
        return tekken_to_hf(src, chat_template=chat_template)
    return spm_to_hf(src, chat_template=chat_template)


def convert_to_hf_dir(src: str | Path, out_dir: str | Path, *, chat_template: str | None = None) -> HFTokenizer:
    """Convert `src` and write tokenizer.json + tokenizer_config.json into `out_dir`."""
    tok = convert_tokenizer_file(src, chat_template=chat_template)
    tok.save(out_dir)
    return tok
