"""HFTokenizer: loading model directories, the Tokenizer protocol, exact token bytes."""

from __future__ import annotations

import json
import random
import shutil

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

from support.tokenizer_files import (
    SAMPLE_TEXTS,
    TEST_TOKENIZER_KINDS,
    converted_dir,
    load_test_tokenizer,
    source_file,
    write_test_tokenizer,
)
from triolm.errors import ModelLoadError
from triolm.tokenizers.base import Tokenizer as TokenizerProtocol
from triolm.tokenizers.hf import HFTokenizer


@pytest.mark.parametrize("kind", TEST_TOKENIZER_KINDS)
def test_implements_protocol(kind):
    tok = load_test_tokenizer(kind)
    assert isinstance(tok, TokenizerProtocol)
    assert tok.bos_token == "<s>" and tok.eos_token == "</s>"
    assert tok.id_to_token(tok.bos_token_id) == "<s>"
    assert tok.token_to_id("</s>") == tok.eos_token_ids[0] == tok.eos_token_id
    assert tok.token_to_id("definitely-not-a-token-\u2603\u2603") is None
    assert tok.bos_token_id in tok.special_token_ids
    with pytest.raises(IndexError, match="out of range"):
        tok.id_to_token(tok.vocab_size + 10)


@pytest.mark.parametrize("kind", TEST_TOKENIZER_KINDS)
def test_encode_adds_bos_once_and_specials_map_to_ids(kind):
    tok = load_test_tokenizer(kind)
    plain = tok.encode("Hello there", add_special_tokens=False)
    assert tok.encode("Hello there") == [tok.bos_token_id, *plain]
    # a bos already in the text is kept as text's own token (no magic dedup), never added twice by us
    ids = tok.encode("<s>Hi</s>", add_special_tokens=False)
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and len(ids) >= 3
    assert tok.decode(ids) == "Hi"
    assert tok.decode(ids, skip_special_tokens=False).startswith("<s>")


@pytest.mark.parametrize("kind", TEST_TOKENIZER_KINDS)
def test_token_bytes_concatenate_to_text(kind):
    """Joined token bytes are the UTF-8 of the text (plus the SentencePiece dummy-prefix space)."""
    tok = load_test_tokenizer(kind)
    for text in SAMPLE_TEXTS:
        ids = tok.encode(text, add_special_tokens=False)
        joined = b"".join(tok.token_bytes(i) for i in ids)
        expected = text.encode()
        if kind.startswith("spm") and text:
            expected = b" " + expected
        assert joined == expected, text


def test_token_bytes_of_special_kinds_of_piece():
    llama = load_test_tokenizer("spm-llama2")
    assert llama.token_bytes(llama.token_to_id("<0xF0>")) == b"\xf0"
    assert llama.token_bytes(llama.token_to_id("<0x0A>")) == b"\n"
    assert llama.token_bytes(llama.token_to_id("▁the")) == b" the"
    assert llama.token_bytes(llama.token_to_id("▁▁▁▁")) == b"    "
    assert llama.token_bytes(1) == b"<s>"
    tekken = load_test_tokenizer("bpe-tekken")
    world = tekken.encode(" world", add_special_tokens=False)
    assert len(world) == 1 and tekken.id_to_token(world[0]) == "Ġworld"
    assert tekken.token_bytes(world[0]) == b" world"
    assert tekken.token_bytes(tekken.token_to_id("[TOOL_CALLS]")) == b"[TOOL_CALLS]"
    # a token holding part of a character
    emoji = tekken.encode("😀", add_special_tokens=False)
    assert len(emoji) > 1 and b"".join(tekken.token_bytes(i) for i in emoji) == "😀".encode()


def test_token_bytes_random_ids_match_decode():
    """For any ids, joined token bytes decode like the tokenizer does (byte-level BPE)."""
    tok = load_test_tokenizer("bpe-tekken")
    rng = random.Random(0)
    for _ in range(200):
        ids = [rng.randrange(1000, tok.vocab_size) for _ in range(rng.randint(1, 20))]
        assert b"".join(tok.token_bytes(i) for i in ids).decode("utf-8", "replace") == tok.decode(ids)


def test_from_dir_reads_config_files(tmp_path):
    d = write_test_tokenizer("spm-mistral-v3", tmp_path / "m", chat_template="{{ messages }}")
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 4]}))
    tok = HFTokenizer.from_dir(d)
    assert tok.chat_template == "{{ messages }}"
    assert tok.eos_token_ids == (2, 4)  # config eos first, then generation_config's extra ids
    assert (tok.bos_token_id, tok.add_bos, tok.add_eos) == (1, True, False)
    assert (d / "tokenizer.model.v3").read_bytes() == source_file("spm-mistral-v3").read_bytes()
    # chat_template.jinja (newer transformers) wins over the config's
    (d / "chat_template.jinja").write_text("JINJA")
    assert HFTokenizer.from_dir(d).chat_template == "JINJA"


def test_from_dir_template_list_and_dict_tokens(tmp_path):
    d = write_test_tokenizer("spm-llama2", tmp_path / "m", None)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["chat_template"] = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]
    cfg["eos_token"] = {"content": "</s>", "lstrip": False, "__type": "AddedToken"}
    cfg["add_bos_token"] = False
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = HFTokenizer.from_dir(d)
    assert tok.chat_template == "D"
    assert tok.eos_token_ids == (2,)
    assert not tok.add_bos and tok.encode("hi")[0] != 1


def test_from_dir_sentencepiece_only(tmp_path):
    """No tokenizer.json: tokenizer.model is converted on the fly."""
    d = tmp_path / "m"
    d.mkdir()
    shutil.copyfile(source_file("spm-llama2"), d / "tokenizer.model")
    tok = HFTokenizer.from_dir(d)
    ref = load_test_tokenizer("spm-llama2")
    assert tok.scores is not None and len(tok.scores) == 32000
    assert (tok.bos_token_id, tok.eos_token_ids, tok.add_bos) == (1, (2,), True)
    for text in SAMPLE_TEXTS:
        assert tok.encode(text) == ref.encode(text)


def test_from_dir_probes_post_processor_when_config_is_silent(tmp_path):
    """A tokenizer.json whose post-processor adds BOS, with no add_bos_token in the config
    and bos ids from config.json: BOS is added once."""
    d = tmp_path / "m"
    d.mkdir()
    shutil.copyfile(converted_dir("spm-llama2") / "tokenizer.json", d / "tokenizer.json")
    (d / "config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    tok = HFTokenizer.from_dir(d)
    assert tok.add_bos and tok.bos_token_id == 1 and tok.eos_token_ids == (2,)
    assert tok.encode("hi") == [1, *tok.encode("hi", add_special_tokens=False)]


def test_constructor_over_a_tokenizer_object():
    vocab = {"<s>": 0, "</s>": 1, **{c: i + 2 for i, c in enumerate("abcdefghijklmnopqrstuvwxyzĠ")}}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tk.add_special_tokens(["<s>", "</s>"])
    tok = HFTokenizer(tk, bos_token_id=0, eos_token_ids=[1, 1], add_bos=True, chat_template="x")
    assert tok.eos_token_ids == (1,)
    assert tok.encode("ab c") == [0, 2, 3, 28, 4]  # our BOS only, never the post-processor's too
    assert tok.decode(tok.encode("ab c")) == "ab c"
    assert tok.token_bytes(28) == b" "
    assert tok.special_token_ids == {0, 1}
    assert tok.chat_template == "x" and tok.vocab_size == 29
    with pytest.raises(ModelLoadError, match="bos_token_id 99"):
        HFTokenizer(tk, bos_token_id=99)


def test_from_dir_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="not a directory"):
        HFTokenizer.from_dir(tmp_path / "missing")
    with pytest.raises(ModelLoadError, match="no tokenizer.json or tokenizer.model"):
        HFTokenizer.from_dir(tmp_path)
    d = write_test_tokenizer("spm-llama2", tmp_path / "m", None)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["bos_token"] = "<nope>"
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="bos_token '<nope>' is not in the vocabulary"):
        HFTokenizer.from_dir(d)
    (d / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="tokenizer_config.json"):
        HFTokenizer.from_dir(d)
    (d / "tokenizer_config.json").unlink()
    (d / "tokenizer.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="tokenizer.json: cannot load"):
        HFTokenizer.from_dir(d)


def test_save_round_trip(tmp_path):
    tok = load_test_tokenizer("spm-mistral-v3")
    tok.save(tmp_path / "t")
    again = HFTokenizer.from_dir(tmp_path / "t")
    assert (again.bos_token_id, again.eos_token_ids, again.add_bos, again.special_token_ids) == (
        tok.bos_token_id, tok.eos_token_ids, tok.add_bos, tok.special_token_ids)
    assert again.encode(SAMPLE_TEXTS[-1]) == tok.encode(SAMPLE_TEXTS[-1])
