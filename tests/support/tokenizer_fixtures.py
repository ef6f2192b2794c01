"""Real tokenizers for the grammar tests and benchmark, converted offline from files that
mistral-common ships: a 32,768-piece SentencePiece vocabulary (Mistral v3 instruct) and
the 131,072-token Tekken byte-level BPE, both as triolm `HFTokenizer`s.

Shared by tests/unit/prompting/test_grammar.py and scripts/bench_grammar.py.
"""

from __future__ import annotations

import functools
from pathlib import Path

import mistral_common

from triolm.tokenizers.hf import HFTokenizer, spm_to_hf, tekken_to_hf

DATA = Path(mistral_common.__file__).parent / "data"
SPM_V3 = DATA / "mistral_instruct_tokenizer_240323.model.v3"
TEKKEN = DATA / "tekken_240911.json"


@functools.cache
def spm_v3_tokenizer() -> HFTokenizer:
    """32,768 ids; SentencePiece BPE with byte fallback; `[TOOL_CALLS]` is a control token."""
    return spm_to_hf(SPM_V3)


@functools.cache
def tekken_tokenizer() -> HFTokenizer:
    """131,072 ids: 1,000 special tokens then byte-level BPE."""
    return tekken_to_hf(TEKKEN)
