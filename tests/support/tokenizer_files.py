"""Real tokenizers for test models, converted from the files mistral-common ships.

Kinds:
- "spm-llama2": tokenizer.model.v1, Llama-2 style SentencePiece BPE, 32,000 pieces.
- "spm-mistral-v3": Mistral-7B-v0.3 SentencePiece BPE, 32,768 pieces with control
  tokens ([INST], [TOOL_CALLS], …); the original is copied as tokenizer.model.v3 so
  mistral-common can load the directory too.
- "bpe-tekken": tekken_240911.json, tiktoken-style byte-level BPE, 131,072 ids
  (1,000 special); the original is copied as tekken.json.

Conversions are cached on disk under $TRIOLM_CACHE (default ~/.cache/triolm), keyed by
the source file and the converter's source, and in memory per process.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from functools import cache
from pathlib import Path

import mistral_common

from triolm.tokenizers.hf import HFTokenizer

TEST_TOKENIZER_KINDS = ("spm-llama2", "spm-mistral-v3", "bpe-tekken")

# kind -> (file in mistral_common/data, name of the copy written next to tokenizer.json)
_SOURCES = {
    "spm-llama2": ("tokenizer.model.v1", "tokenizer.model"),
    "spm-mistral-v3": ("mistral_instruct_tokenizer_240323.model.v3", "tokenizer.model.v3"),
    "bpe-tekken": ("tekken_240911.json", "tekken.json"),
}


#: Texts that stress tokenizers: whitespace runs, leading/trailing spaces, newlines and
#: tabs, code, many scripts, emoji (ZWJ sequences, flags, skin tones), astral-plane
#: characters, control characters, digits and long repeats. No special-token strings.
SAMPLE_TEXTS: tuple[str, ...] = (
    "Hello world",
    "Hello, world! How are you doing today?",
    " leading space",
    "  two leading spaces",
    "trailing spaces   ",
    "a    b     c      d",
    " " * 17 + "x",
    " ",
    "   ",
    "",
    "a",
    "\n",
    "\n\n\tTabs\t\tand\nnewlines\r\n  indented\n",
    "def f(x: int) -> int:\n    return x ** 2  # square\n\n\nclass A:\n\tpass\n",
    'for (int i = 0; i < n; ++i) { sum += a[i]; }  /* C */\n#include <stdio.h>',
    '{"key": [1, 2.5, -3e10], "nested": {"ok": true, "none": null}}',
    "path/to/file.txt\n/usr/local/bin\r\nC:\\Windows\\System32",
    "日本語のテキストと漢字、ひらがな、カタカナ。",
    "中文文本：你好，世界！繁體中文也可以。",
    "한국어 텍스트입니다. 안녕하세요!",
    "Привет, мир! Ёжик в тумане.",
    "مرحبا بالعالم — النص العربي",
    "שלום עולם",
    "नमस्ते दुनिया, हिन्दी पाठ",
    "สวัสดีชาวโลก ภาษาไทย",
    "Ελληνικά: Γειά σου Κόσμε",
    "Ünïcödé naïve café façade Øresund straße",
    "emoji 😀🎉 family 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵 skin 👍🏽 keycap 1️⃣",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕄𝕒𝕥𝕙 𓀀 🀄 🜁",
    "﷽ ﾊﾝｶｸ ＦＵＬＬ ﬁ ½ Å",
    "\u0000 nul \u0007 bell \u001b[0m escape \u200b zwsp \ufeff bom",
    "1234567890 3.14159 -42 1e-9 0x1F 1,000,000",
    "x" * 300,
    "ab" * 150 + " " + "🙂" * 40,
    "The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX. CamelCaseWord HTTPServer iPhone",
    "It's don't we'll they're I'm you've he'd",
    "Mixed: English, français, 日本語, русский, and emoji 🚀 in one line.\n\nNew paragraph.",
)


def mistral_common_data_dir() -> Path:
    return Path(mistral_common.__file__).parent / "data"


def source_file(kind: str) -> Path:
    """The mistral-common file a test tokenizer kind is converted from."""
    try:
        name = _SOURCES[kind][0]
    except KeyError:
        raise ValueError(f"unknown test tokenizer kind {kind!r} (have: {', '.join(TEST_TOKENIZER_KINDS)})") from None
    return mistral_common_data_dir() / name


def cache_root() -> Path:
    return Path(os.environ.get("TRIOLM_CACHE") or Path.home() / ".cache" / "triolm")


def _converter_digest() -> str:
    """Changes when the conversion code changes, invalidating cached conversions."""
    from triolm.tokenizers import convert, hf

    h = hashlib.sha256()
    for mod in (convert, hf):
        h.update(Path(mod.__file__).read_bytes())
    return h.hexdigest()[:16]


def _source_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def converted_dir(kind: str) -> Path:
    """A cache directory holding the converted tokenizer.json + tokenizer_config.json
    (no chat template) for `kind`; converts on first use."""
    src = source_file(kind)
    target = cache_root() / "tokenizers" / f"{kind}-{_source_digest(src)}-{_converter_digest()}"
    if (target / "tokenizer.json").exists() and (target / "tokenizer_config.json").exists():
        return target
    from triolm.tokenizers.hf import convert_tokenizer_file

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=target.parent))
    try:
        convert_tokenizer_file(src).save(tmp)
        try:
            tmp.rename(target)  # atomic; another process may have won the race
        except OSError:
            if not (target / "tokenizer.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def write_test_tokenizer(kind: str, out_dir: str | Path, chat_template: str | None = None) -> Path:
    """Write tokenizer.json + tokenizer_config.json (with `chat_template`, if given) and a
    copy of the original tokenizer file into `out_dir` (created if needed)."""
    import json

    src = source_file(kind)
    cached = converted_dir(kind)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cached / "tokenizer.json", out / "tokenizer.json")
    cfg = json.loads((cached / "tokenizer_config.json").read_text(encoding="utf-8"))
    if chat_template is not None:
        cfg["chat_template"] = chat_template
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n",
                                               encoding="utf-8")
    shutil.copyfile(src, out / _SOURCES[kind][1])
    return out


@cache
def load_test_tokenizer(kind: str) -> HFTokenizer:
    """The converted tokenizer of `kind` (no chat template), cached per process."""
    return HFTokenizer.from_dir(converted_dir(kind))
