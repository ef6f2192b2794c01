"""Fuzzing the GGUF reader (HOSTILE-LOAD-006): whatever a file holds, reading it and
building its tokenizer either works or raises ModelLoadError — never another exception,
a hang or an unbounded allocation. Bounded for CI: a few hundred examples, ~20 s.

Two kinds of hostile files, both derived from one small valid model with a
SentencePiece vocabulary: bytes of the header, metadata and tensor table overwritten,
inserted or cut off; and one metadata value replaced by a value of any type (huge,
negative, NaN, empty, long).
"""

from __future__ import annotations

import math
import resource
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.hostile_gguf import rewrite_gguf
from support.model_factory import random_weights
from triolm.errors import ModelLoadError
from triolm.formats.gguf_reader import read_gguf
from triolm.formats.gguf_writer import write_gguf
from triolm.model.config import ModelConfig
from triolm.tokenizers.convert import TokenType
from triolm.tokenizers.gguf_vocab import tokenizer_from_gguf_metadata

FUZZ = settings(max_examples=400, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _vocab() -> dict:
    specials = ["<unk>", "<s>", "</s>"]
    byte_pieces = [f"<0x{b:02X}>" for b in range(256)]
    normal = ["▁", "a", "b", "c", "▁a", "ab", "bc", "▁ab", "abc", "▁abc"]
    tokens = specials + byte_pieces + normal
    types = ([TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256
             + [TokenType.NORMAL] * len(normal))
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.scores": [0.0] * 259 + [-float(i) for i in range(len(normal))],
            "tokenizer.ggml.token_type": [int(t) for t in types],
            "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
            "tokenizer.chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"}


@pytest.fixture(scope="module")
def seed_file(tmp_path_factory) -> Path:
    vocab = _vocab()
    config = ModelConfig(architecture="llama", vocab_size=len(vocab["tokenizer.ggml.tokens"]), hidden_size=32,
                         intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=8, max_position_embeddings=128)
    path = write_gguf(tmp_path_factory.mktemp("fuzz") / "seed.gguf", config, random_weights(config, 0),
                      vocab, "F32", name="fuzz-seed")
    load(path)  # the seed itself loads
    return path


def load(path: Path) -> None:
    model = read_gguf(path)
    tokenizer_from_gguf_metadata(model.metadata)


def loads_or_refuses(path: Path) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        load(path)
    except ModelLoadError:
        pass
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 256, f"loading a {path.stat().st_size}-byte file grew the peak RSS by {grown_mb:.0f} MB"


def _header_end(data: bytes) -> int:
    """Where the tensor data starts, roughly: mutations aim at what the reader parses."""
    return min(len(data), 24 + 16 * 1024)


@FUZZ
@given(data=st.data())
def test_HOSTILE_LOAD_006_mutated_bytes_load_or_raise_ModelLoadError(seed_file, tmp_path, data):
    raw = bytearray(seed_file.read_bytes())
    end = _header_end(raw)
    for _ in range(data.draw(st.integers(1, 8), label="edits")):
        kind = data.draw(st.sampled_from(["overwrite", "insert", "truncate", "extreme"]), label="kind")
        at = data.draw(st.integers(0, end - 1), label="at")
        if kind == "overwrite":
            raw[at:at + 4] = data.draw(st.binary(min_size=1, max_size=4), label="bytes")
        elif kind == "insert":
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=16), label="bytes")
        elif kind == "truncate":
            del raw[data.draw(st.integers(0, len(raw) - 1), label="cut"):]
            break
        else:  # a length or count field set to an extreme (counts/lengths are u64, dims u64/u32)
            raw[at:at + 8] = data.draw(st.sampled_from([b"\xff" * 8, b"\x00" * 8, b"\xff\xff\xff\x7f\x00\x00\x00\x00",
                                                        b"\x00\x00\x00\x80\x00\x00\x00\x00"]), label="extreme")
    path = tmp_path / "mutated.gguf"
    path.write_bytes(bytes(raw))
    loads_or_refuses(path)


KEYS = ["llama.block_count", "llama.embedding_length", "llama.feed_forward_length", "llama.attention.head_count",
        "llama.attention.head_count_kv", "llama.attention.key_length", "llama.context_length",
        "llama.attention.layer_norm_rms_epsilon", "llama.rope.freq_base", "llama.vocab_size",
        "llama.rope.scaling.type", "llama.rope.scaling.factor", "general.alignment",
        "tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
        "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.add_bos_token",
        "tokenizer.ggml.merges", "tokenizer.ggml.pre", "tokenizer.chat_template"]
NUMBERS = st.one_of(st.integers(-2**31, 2**32 - 1), st.sampled_from([0, 1, -1, 2**31 - 1, 2**32 - 1]),
                    st.floats(allow_nan=True, allow_infinity=True, width=32),
                    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-45]))
VALUES = st.one_of(NUMBERS, st.booleans(), st.text(max_size=40), st.sampled_from(["", "x" * 5000, "gpt2", "llama"]),
                   st.lists(st.text(max_size=8), max_size=30), st.lists(st.integers(-10, 400), max_size=30),
                   st.lists(st.floats(width=32), max_size=30))


@FUZZ
@given(key=st.sampled_from(KEYS), value=VALUES)
def test_HOSTILE_LOAD_006_any_metadata_value_loads_or_raises_ModelLoadError(seed_file, tmp_path, key, value):
    try:
        path = rewrite_gguf(seed_file, tmp_path / "changed.gguf", {key: value})
    except (ValueError, OverflowError, TypeError, struct.error):  # gguf-py cannot write this value with this key's type
        return
    loads_or_refuses(path)
