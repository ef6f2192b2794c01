"""Sane limits on what a model file may ask of the loader, beyond what its tensors back.

Counts and shapes are checked against the tensors a file holds (`gguf_reader`); these
limits cover what no tensor bounds: the length of one vocabulary token and of the chat
template, both parsed by code whose cost grows faster than their length.
"""

from __future__ import annotations

from collections.abc import Sequence

from triolm.errors import ModelLoadError

#: llguidance's token trie holds tokens up to 1024 bytes and panics past that; real
#: vocabularies stay under 200 (SmolLM2: 162, Gemma 3: 48). UTF-8 bytes of the stored
#: piece bound the bytes it decodes to for both SentencePiece and byte-level BPE pieces.
MAX_TOKEN_BYTES = 1024

#: Parsing a template costs ~25 µs per byte here (a 64 KiB template ~1.5 s, 1 MiB ~25 s);
#: real chat templates are 0.3-16 KiB.
MAX_CHAT_TEMPLATE_BYTES = 64 * 1024


def check_tokens(tokens: Sequence[str], key: str) -> None:
    """Every token at most MAX_TOKEN_BYTES, else a ModelLoadError naming `key[i]`."""
    for i, token in enumerate(tokens):
        if len(token) > MAX_TOKEN_BYTES // 4 and len(token.encode("utf-8", "surrogatepass")) > MAX_TOKEN_BYTES:
            raise ModelLoadError(f"metadata {key}[{i}] is {len(token.encode('utf-8', 'surrogatepass'))} "
                                 f"bytes long; the limit is {MAX_TOKEN_BYTES}")


def check_chat_template(template: str | None, where: str) -> None:
    """A chat template at most MAX_CHAT_TEMPLATE_BYTES, else a ModelLoadError naming `where`."""
    if template is None or len(template) <= MAX_CHAT_TEMPLATE_BYTES // 4:
        return
    size = len(template.encode("utf-8", "surrogatepass"))
    if size > MAX_CHAT_TEMPLATE_BYTES:
        raise ModelLoadError(f"{where}: chat template of {size} bytes; the limit is {MAX_CHAT_TEMPLATE_BYTES}")
