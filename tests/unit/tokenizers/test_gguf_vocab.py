"""GGUF tokenizer metadata: HF tokenizer -> llama.cpp keys -> tokenizer gives the same ids."""

from __future__ import annotations

import io
import logging
import random

import gguf
import numpy as np
import pytest
import sentencepiece as spm
from mistral_common.tokens.tokenizers.tekken import Tekkenizer
from tokenizers import Regex, pre_tokenizers

from support.tokenizer_files import SAMPLE_TEXTS, load_test_tokenizer, source_file
from triolm.errors import ModelLoadError
from triolm.tokenizers.convert import AddedSpec
from triolm.tokenizers.gguf_vocab import (
    PRE_TOKENIZERS,
    gguf_metadata_from_tokenizer,
    read_tokenizer_metadata,
    tokenizer_from_gguf_metadata,
    write_tokenizer_metadata,
)
from triolm.tokenizers.hf import spm_to_hf

CASES = [("spm-llama2", "llama"), ("spm-mistral-v3", "llama"), ("bpe-tekken", "gpt2")]
SPECIAL_TEXTS = ["<s>[INST] What is 2+2? [/INST] 4</s>", "[TOOL_CALLS][{\"name\": \"f\"}]</s>", "a<unk>b"]


def random_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    alphabet = list(" \n\t abcXYZ0189.,:;!?'\"()[]{}/<>#") + ["  ", "\r\n", "日", "語", "😀", "é", "ж", "👍🏽"]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 25))) for _ in range(n)]


CORPUS = list(SAMPLE_TEXTS) + SPECIAL_TEXTS + random_texts(300, seed=7)


@pytest.fixture(scope="module")
def round_trips() -> dict[str, tuple]:
    """kind -> (original HFTokenizer, metadata, rebuilt tokenizer); built once (tekken ~2 s)."""
    out = {}
    for kind, model in CASES:
        tok = load_test_tokenizer(kind)
        meta = gguf_metadata_from_tokenizer(tok, model)
        out[kind] = (tok, meta, tokenizer_from_gguf_metadata(meta))
    return out


@pytest.mark.parametrize("kind,model", CASES)
def test_metadata_keys_and_types(round_trips, kind, model):
    tok, meta, _ = round_trips[kind]
    n = tok.vocab_size
    assert meta["tokenizer.ggml.model"] == model
    tokens = meta["tokenizer.ggml.tokens"]
    types = meta["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == n and len(set(tokens)) == n
    assert tokens[:3] == ["<unk>", "<s>", "</s>"]
    assert types[:3] == [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    assert set(types) <= {t.value for t in gguf.TokenType}
    assert meta["tokenizer.ggml.bos_token_id"] == 1 and meta["tokenizer.ggml.eos_token_id"] == 2
    assert meta["tokenizer.ggml.unknown_token_id"] == 0
    assert meta["tokenizer.ggml.add_bos_token"] is True and meta["tokenizer.ggml.add_eos_token"] is False
    if model == "llama":
        assert len(meta["tokenizer.ggml.scores"]) == n
        assert all(isinstance(s, float) for s in meta["tokenizer.ggml.scores"])
        byte_ids = [i for i, t in enumerate(tokens) if t.startswith("<0x")]
        assert len(byte_ids) == 256 and all(types[i] == gguf.TokenType.BYTE for i in byte_ids)
        assert meta["tokenizer.ggml.add_space_prefix"] is True
        assert "tokenizer.ggml.merges" not in meta
    else:
        assert meta["tokenizer.ggml.pre"] == "tekken"
        assert tokens[1000 + 32] == "Ġ" and types[1000 + 32] == gguf.TokenType.NORMAL
        assert types[:1000] == [gguf.TokenType.UNKNOWN] + [gguf.TokenType.CONTROL] * 999
        merges = meta["tokenizer.ggml.merges"]
        assert len(merges) > 100_000 and all(m.count(" ") == 1 for m in merges[:1000])
        assert "tokenizer.ggml.scores" not in meta


@pytest.mark.parametrize("kind,model", CASES)
def test_round_trip_gives_same_ids_and_text(round_trips, kind, model):
    tok, meta, rebuilt = round_trips[kind]
    assert rebuilt.vocab_size == tok.vocab_size
    assert (rebuilt.bos_token_id, rebuilt.eos_token_ids, rebuilt.add_bos, rebuilt.add_eos) == (
        tok.bos_token_id, tok.eos_token_ids, tok.add_bos, tok.add_eos)
    assert rebuilt.special_token_ids == tok.special_token_ids
    for text in CORPUS:
        ids = tok.encode(text)
        assert rebuilt.encode(text) == ids, text
        assert rebuilt.decode(ids) == tok.decode(ids)
        assert rebuilt.decode(ids, skip_special_tokens=False) == tok.decode(ids, skip_special_tokens=False)
    rng = random.Random(1)
    for i in rng.sample(range(tok.vocab_size), 300):
        assert rebuilt.token_bytes(i) == tok.token_bytes(i)


@pytest.mark.parametrize("kind", ["spm-llama2", "spm-mistral-v3"])
def test_gguf_llama_vocab_matches_sentencepiece(kind):
    """Independent oracle: the tokenizer built from GGUF keys (scores from the .model
    file) tokenizes like the sentencepiece library."""
    meta = gguf_metadata_from_tokenizer(spm_to_hf(source_file(kind)), "llama")
    sp = spm.SentencePieceProcessor(model_file=str(source_file(kind)))
    assert meta["tokenizer.ggml.scores"] == [pytest.approx(sp.get_score(i)) for i in range(sp.get_piece_size())]
    rebuilt = tokenizer_from_gguf_metadata(meta)
    for text in list(SAMPLE_TEXTS) + random_texts(300, seed=11):
        assert rebuilt.encode(text, add_special_tokens=False) == sp.encode(text), text


def test_gguf_gpt2_vocab_matches_mistral_common(round_trips):
    _, _, rebuilt = round_trips["bpe-tekken"]
    tk = Tekkenizer.from_file(source_file("bpe-tekken"))
    for text in list(SAMPLE_TEXTS) + random_texts(300, seed=12):
        assert rebuilt.encode(text, add_special_tokens=False) == tk.encode(text, bos=False, eos=False), text


def test_kind_aliases_and_errors():
    tok = load_test_tokenizer("spm-llama2")
    assert gguf_metadata_from_tokenizer(tok, "spm-llama2")["tokenizer.ggml.model"] == "llama"
    assert gguf_metadata_from_tokenizer(tok, "auto")["tokenizer.ggml.model"] == "llama"
    with pytest.raises(ValueError, match="unknown GGUF tokenizer kind"):
        gguf_metadata_from_tokenizer(tok, "wordpiece")
    with pytest.raises(ValueError, match="byte-level"):
        gguf_metadata_from_tokenizer(tok, "gpt2")
    with pytest.raises(ValueError, match="SentencePiece"):
        gguf_metadata_from_tokenizer(load_test_tokenizer("bpe-tekken"), "llama")


def test_unknown_pre_tokenizer_regex_is_refused_on_write():
    from triolm.tokenizers.convert import build_byte_level_bpe, bytes_to_piece
    from triolm.tokenizers.hf import HFTokenizer

    vocab = {bytes_to_piece(bytes([b])): b for b in range(256)}
    vocab["ab"] = 256
    tk = build_byte_level_bpe(vocab, [("a", "b")], [r"\w+|\W"])
    odd = HFTokenizer(tk)
    with pytest.raises(ValueError, match="pass pre="):
        gguf_metadata_from_tokenizer(odd, "gpt2")
    meta = gguf_metadata_from_tokenizer(odd, "gpt2", pre="tekken")
    assert meta["tokenizer.ggml.pre"] == "tekken" and meta["tokenizer.ggml.merges"] == ["a b"]
    # a plain GPT-2 style ByteLevel(use_regex=True) pre-tokenizer is recognised
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    assert gguf_metadata_from_tokenizer(odd, "gpt2")["tokenizer.ggml.pre"] == "gpt-2"
    assert tokenizer_from_gguf_metadata(meta).encode("abc") == [256, ord("c")]


def tiny_byte_level_meta() -> dict:
    from triolm.tokenizers.convert import build_byte_level_bpe, bytes_to_piece
    from triolm.tokenizers.hf import HFTokenizer

    vocab = {bytes_to_piece(bytes([b])): b for b in range(256)}
    vocab.update({"He": 256, "ll": 257, "Hell": 258, "<|end|>": 259})
    tk = build_byte_level_bpe(vocab, [("H", "e"), ("l", "l"), ("He", "ll")], [PRE_TOKENIZERS["gpt-2"].patterns[0]],
                              [AddedSpec(259, "<|end|>")])
    return gguf_metadata_from_tokenizer(HFTokenizer(tk, eos_token_ids=[259]), "gpt2")


@pytest.mark.parametrize("pre", [None, "some-future-model"])
def test_missing_or_unknown_pre_falls_back_with_warning(caplog, pre):
    meta = tiny_byte_level_meta()
    assert meta["tokenizer.ggml.pre"] == "gpt-2"
    if pre is None:
        del meta["tokenizer.ggml.pre"]
    else:
        meta["tokenizer.ggml.pre"] = pre
    with caplog.at_level(logging.WARNING, logger="triolm.tokenizers.gguf_vocab"):
        tok = tokenizer_from_gguf_metadata(meta)
    assert "'default'" in caplog.text
    ids = tok.encode("Hello world<|end|>", add_special_tokens=False)
    assert ids[0] == 258 and ids[-1] == 259 and tok.decode(ids) == "Hello world"


@pytest.mark.parametrize("name", sorted(PRE_TOKENIZERS))
def test_pre_tokenizer_regexes_compile_and_keep_all_text(name):
    text = "Hello World 12345  you're\n\n日本 😀!"
    pieces = [p for p, _ in _splitter(name).pre_tokenize_str(text)]
    assert "".join(pieces) == text and len(pieces) > 3


def _splitter(name: str):
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(p), behavior="isolated")
                                    for p in PRE_TOKENIZERS[name].patterns])


@pytest.mark.parametrize("name,digits", [("llama3", ["123", "45"]), ("qwen2", ["1", "2", "3", "4", "5"]),
                                         ("gpt-2", [" 12345"]), ("tekken", ["1", "2", "3", "4", "5"])])
def test_pre_tokenizer_digit_rules(name, digits):
    pieces = [p for p, _ in _splitter(name).pre_tokenize_str("a 12345")]
    assert pieces[-len(digits):] == digits


def test_through_a_real_gguf_file(tmp_path):
    """write_tokenizer_metadata / read_tokenizer_metadata with gguf-py, typed as llama.cpp
    reads them; the vocabulary is a small freshly trained SentencePiece BPE (fast to
    parse with gguf-py), checked against the sentencepiece library after the trip."""
    rng = random.Random(5)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda 日本 😀".split()
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 9))) for _ in range(300)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, vocab_size=360,
                                   model_type="bpe", byte_fallback=True, character_coverage=1.0,
                                   normalization_rule_name="identity", remove_extra_whitespaces=False,
                                   minloglevel=2)
    (tmp_path / "t.model").write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "t.model"))
    meta = dict(gguf_metadata_from_tokenizer(spm_to_hf(tmp_path / "t.model"), "llama"),
                **{"tokenizer.chat_template": "{{ messages }}"})
    path = tmp_path / "vocab.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    write_tokenizer_metadata(writer, meta)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    reader = gguf.GGUFReader(str(path))
    types = {k: f.types for k, f in reader.fields.items()}
    assert types["tokenizer.ggml.tokens"] == [gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING]
    assert types["tokenizer.ggml.scores"] == [gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.FLOAT32]
    assert types["tokenizer.ggml.token_type"] == [gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.INT32]
    assert types["tokenizer.ggml.bos_token_id"] == [gguf.GGUFValueType.UINT32]
    assert types["tokenizer.ggml.add_bos_token"] == [gguf.GGUFValueType.BOOL]
    assert types["tokenizer.chat_template"] == [gguf.GGUFValueType.STRING]
    fields = read_tokenizer_metadata(reader)
    assert fields == {k: (pytest.approx(v) if k.endswith("scores") else v) for k, v in meta.items()}
    rebuilt = tokenizer_from_gguf_metadata(fields)
    assert rebuilt.chat_template == "{{ messages }}"
    for text in lines[:50] + list(SAMPLE_TEXTS):
        assert rebuilt.encode(text) == [sp.bos_id(), *sp.encode(text)], text


def test_numpy_values_are_accepted(round_trips):
    _, meta, _ = round_trips["spm-llama2"]
    meta = dict(meta)
    meta["tokenizer.ggml.scores"] = np.asarray(meta["tokenizer.ggml.scores"], dtype=np.float32)
    meta["tokenizer.ggml.token_type"] = np.asarray(meta["tokenizer.ggml.token_type"], dtype=np.int32)
    meta["tokenizer.ggml.bos_token_id"] = np.uint32(1)
    tok = tokenizer_from_gguf_metadata(meta)
    assert tok.bos_token_id == 1 and tok.encode("hi")[0] == 1


def test_malformed_metadata_errors(round_trips):
    _, meta, _ = round_trips["spm-llama2"]
    with pytest.raises(ModelLoadError, match="tokenizer.ggml.model"):
        tokenizer_from_gguf_metadata({})
    with pytest.raises(ModelLoadError, match="tokenizer.ggml.tokens"):
        tokenizer_from_gguf_metadata({"tokenizer.ggml.model": "llama"})
    with pytest.raises(ModelLoadError, match="'bert' is not supported"):
        tokenizer_from_gguf_metadata({**meta, "tokenizer.ggml.model": "bert"})
    dup = list(meta["tokenizer.ggml.tokens"])
    dup[5] = dup[4]
    with pytest.raises(ModelLoadError, match="duplicate token"):
        tokenizer_from_gguf_metadata({**meta, "tokenizer.ggml.tokens": dup})
    with pytest.raises(ModelLoadError, match="scores"):
        tokenizer_from_gguf_metadata({**meta, "tokenizer.ggml.scores": [0.0]})
    with pytest.raises(ModelLoadError, match="token id"):
        tokenizer_from_gguf_metadata({**meta, "tokenizer.ggml.bos_token_id": "1"})
    bad_merges = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
                  "tokenizer.ggml.tokens": ["a", "b", "ab"], "tokenizer.ggml.merges": ["ab"]}
    with pytest.raises(ModelLoadError, match=r"merges\[0\]"):
        tokenizer_from_gguf_metadata(bad_merges)


def test_out_of_range_special_id_is_ignored_with_warning(round_trips, caplog):
    _, meta, _ = round_trips["spm-llama2"]
    with caplog.at_level(logging.WARNING, logger="triolm.tokenizers.gguf_vocab"):
        tok = tokenizer_from_gguf_metadata({**meta, "tokenizer.ggml.padding_token_id": 10**6})
    assert tok.pad_token_id is None and "outside the vocabulary" in caplog.text


def test_extra_eos_ids_use_eot_and_eom(round_trips):
    tok, meta, _ = round_trips["spm-mistral-v3"]
    from triolm.tokenizers.hf import HFTokenizer

    multi = HFTokenizer(tok.hf_tokenizer, bos_token_id=1, eos_token_ids=[2, 4, 5], add_bos=True)
    m = gguf_metadata_from_tokenizer(multi, "llama")
    assert (m["tokenizer.ggml.eos_token_id"], m["tokenizer.ggml.eot_token_id"],
            m["tokenizer.ggml.eom_token_id"]) == (2, 4, 5)
    assert tokenizer_from_gguf_metadata(m).eos_token_ids == (2, 4, 5)
