"""Converted tokenizers give exactly the ids of the originals (sentencepiece, mistral-common)."""

from __future__ import annotations

import io
import json
import random

import pytest
import sentencepiece as spm
from mistral_common.tokens.tokenizers.sentencepiece import SentencePieceTokenizer
from mistral_common.tokens.tokenizers.tekken import Tekkenizer

from support.tokenizer_files import SAMPLE_TEXTS, load_test_tokenizer, source_file
from triolm.errors import ModelLoadError
from triolm.tokenizers.convert import (
    SpmVocab,
    build_spm_tokenizer,
    byte_to_unicode,
    bytes_to_piece,
    merges_from_ranks,
    read_spm_vocab,
    read_tekken,
)
from triolm.tokenizers.hf import HFTokenizer, convert_to_hf_dir, spm_to_hf

SPM_KINDS = ("spm-llama2", "spm-mistral-v3")


def random_texts(n: int, seed: int) -> list[str]:
    """Random strings over an alphabet heavy in spaces, newlines, punctuation, CJK and emoji."""
    rng = random.Random(seed)
    alphabet = list(" \n\t abcdefghijklmnopqrstuvwxyzABCXYZ0123456789.,;:!?-_'\"()[]{}/\\<>#@") + [
        "  ", "    ", "\r\n", "日", "本", "語", "😀", "é", "ß", "ж", "🇫🇷", "\u200d", "ﬁ", "𝔘", "\x00"]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(n)]


CORPUS = list(SAMPLE_TEXTS) + random_texts(600, seed=1)


@pytest.fixture(scope="module")
def tekkenizer() -> Tekkenizer:
    return Tekkenizer.from_file(source_file("bpe-tekken"))


# ---------------------------------------------------------------- SentencePiece


@pytest.mark.parametrize("kind", SPM_KINDS)
def test_read_spm_vocab_matches_protobuf(kind):
    """The hand-written protobuf reader agrees with sentencepiece's own ModelProto."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(source_file(kind).read_bytes())
    vocab = read_spm_vocab(source_file(kind))
    assert vocab.pieces == [p.piece for p in proto.pieces]
    assert vocab.scores == [pytest.approx(p.score) for p in proto.pieces]
    assert vocab.types == [p.type for p in proto.pieces]
    assert vocab.model_type == "bpe"
    assert vocab.add_dummy_prefix is proto.normalizer_spec.add_dummy_prefix is True
    assert vocab.remove_extra_whitespaces is proto.normalizer_spec.remove_extra_whitespaces is False
    assert vocab.byte_fallback is proto.trainer_spec.byte_fallback is True
    assert (vocab.unk_id, vocab.bos_id, vocab.eos_id) == (0, 1, 2)
    assert vocab.pad_id is None  # pad_id = -1 in the file


@pytest.mark.parametrize("kind", SPM_KINDS)
def test_spm_conversion_matches_sentencepiece(kind):
    sp = spm.SentencePieceProcessor(model_file=str(source_file(kind)))
    tok = spm_to_hf(source_file(kind))
    assert tok.vocab_size == sp.get_piece_size()
    mismatches = []
    for text in CORPUS:
        ids = tok.encode(text, add_special_tokens=False)
        if ids != sp.encode(text):
            mismatches.append((text, ids, sp.encode(text)))
        elif tok.decode(ids) != sp.decode(ids):
            mismatches.append((text, tok.decode(ids), sp.decode(ids)))
    assert not mismatches, mismatches[:5]


def test_spm_v3_matches_mistral_common():
    mc = SentencePieceTokenizer(source_file("spm-mistral-v3"))
    tok = load_test_tokenizer("spm-mistral-v3")
    for text in CORPUS:
        assert tok.encode(text, add_special_tokens=False) == mc.encode(text, bos=False, eos=False), text
        assert tok.encode(text) == mc.encode(text, bos=True, eos=False), text
    # control tokens are special tokens with the same ids
    for name in ("[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[TOOL_RESULTS]"):
        assert tok.token_to_id(name) == mc.get_special_token(name)
        assert tok.token_to_id(name) in tok.special_token_ids


def test_spm_special_tokens_and_flags():
    tok = load_test_tokenizer("spm-llama2")
    assert (tok.bos_token_id, tok.eos_token_ids, tok.unk_token_id) == (1, (2,), 0)
    assert tok.special_token_ids == {0, 1, 2}
    assert tok.add_bos and not tok.add_eos
    # text between special tokens gets its own "▁" prefix (llama.cpp / mistral-common chunks)
    ids = tok.encode("<s>Hello</s>", add_special_tokens=False)
    assert ids[0] == 1 and ids[-1] == 2
    assert ids[1:-1] == tok.encode("Hello", add_special_tokens=False)


def test_spm_unigram_with_normalization_matches_sentencepiece(tmp_path):
    """A freshly trained Unigram model with NFKC and whitespace collapsing (the
    sentencepiece defaults) converts exactly too."""
    rng = random.Random(0)
    words = "the quick brown fox jumps over lazy dog café naïve 日本語 テスト über straße ½ ﬁne".split()
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(300)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, vocab_size=300,
                                   model_type="unigram", byte_fallback=True, character_coverage=1.0,
                                   minloglevel=2)
    path = tmp_path / "uni.model"
    path.write_bytes(model.getvalue())
    vocab = read_spm_vocab(path)
    assert vocab.model_type == "unigram" and vocab.remove_extra_whitespaces and vocab.precompiled_charsmap
    tok = HFTokenizer(build_spm_tokenizer(vocab), bos_token_id=1, eos_token_ids=[2])
    sp = spm.SentencePieceProcessor(model_file=str(path))
    texts = lines[:40] + ["  extra   spaces  here ", "ｆｕｌｌｗｉｄｔｈ ＡＢＣ", "😀 emoji ﬁ ½", "", "   ", "new\nline"]
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False)
        assert ids == sp.encode(text), text
        assert tok.decode(ids) == sp.decode(ids), text


def test_read_spm_vocab_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="cannot read"):
        read_spm_vocab(tmp_path / "missing.model")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"\xff\xff\xff")
    with pytest.raises(ModelLoadError, match="not a SentencePiece model"):
        read_spm_vocab(bad)


def test_build_spm_rejects_inconsistent_vocab():
    with pytest.raises(ValueError, match="scores"):
        build_spm_tokenizer(SpmVocab(pieces=["a", "b"], scores=[0.0], types=[1, 1]))
    with pytest.raises(ValueError, match="duplicate"):
        build_spm_tokenizer(SpmVocab(pieces=["a", "a"], scores=[0.0, 0.0], types=[1, 1], unk_id=None))


# ---------------------------------------------------------------- tekken


def test_byte_to_unicode_is_gpt2_table():
    table = byte_to_unicode()
    assert len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("A")] == "A"
    assert bytes_to_piece(" héllo".encode()) == "ĠhÃ©llo"


def test_merges_from_ranks_follow_rank_order():
    ranks = {b"a": 0, b"b": 1, b"c": 2, b"ab": 3, b"bc": 4, b"abc": 5}
    assert merges_from_ranks(ranks) == [(b"a", b"b"), (b"b", b"c"), (b"a", b"bc"), (b"ab", b"c")]


def test_read_tekken_uses_default_special_tokens(tekkenizer):
    tv = read_tekken(source_file("bpe-tekken"))
    assert tv.num_special == tekkenizer.num_special_tokens == 1000
    assert tv.specials == [tekkenizer.id_to_piece(i) for i in range(1000)]
    assert len(tv.ranks) == tekkenizer.n_words - 1000


def test_tekken_matches_mistral_common(tekkenizer):
    tok = load_test_tokenizer("bpe-tekken")
    assert tok.vocab_size == tekkenizer.n_words
    for text in CORPUS:
        ids = tok.encode(text, add_special_tokens=False)
        assert ids == tekkenizer.encode(text, bos=False, eos=False), text
        assert tok.decode(ids) == text  # byte-level BPE is lossless
    assert tok.encode("hi") == tekkenizer.encode("hi", bos=True, eos=False)
    for name in ("<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "<SPECIAL_999>"):
        assert tok.token_to_id(name) == tekkenizer.get_special_token(name)
    assert tok.special_token_ids == frozenset(range(1000))
    # special-token strings in text become their ids
    assert tok.encode("[INST]hi[/INST]", add_special_tokens=False) == [
        3, *tekkenizer.encode("hi", bos=False, eos=False), 4]


def test_tekken_token_pieces_match_ranks(tekkenizer):
    tok = load_test_tokenizer("bpe-tekken")
    rng = random.Random(3)
    for i in rng.sample(range(1000, tok.vocab_size), 500):
        assert tok.token_bytes(i) == tekkenizer.id_to_byte_piece(i)
    assert tok.token_bytes(3) == b"[INST]"


def test_read_tekken_errors(tmp_path):
    bad = tmp_path / "tekken.json"
    bad.write_text(json.dumps({"config": {}}))
    with pytest.raises(ModelLoadError, match="not a readable tekken"):
        read_tekken(bad)


# ---------------------------------------------------------------- files


def test_convert_to_hf_dir_is_loadable_by_triolm_and_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "tok"
    converted = convert_to_hf_dir(source_file("spm-llama2"), out, chat_template="{{ bos_token }}")
    assert (out / "tokenizer.json").exists()
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert cfg["bos_token"] == "<s>" and cfg["eos_token"] == "</s>" and cfg["add_bos_token"] is True
    assert cfg["chat_template"] == "{{ bos_token }}"
    loaded = HFTokenizer.from_dir(out)
    auto = transformers.AutoTokenizer.from_pretrained(str(out))
    for text in SAMPLE_TEXTS:
        ids = converted.encode(text)
        assert loaded.encode(text) == ids
        assert auto(text)["input_ids"] == ids, text  # transformers adds the same BOS
        assert auto.decode(ids, skip_special_tokens=True) == converted.decode(ids)
