"""IncrementalDetokenizer: streamed deltas are exactly the full decode, never partial."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from support.tokenizer_files import SAMPLE_TEXTS, TEST_TOKENIZER_KINDS, load_test_tokenizer
from triolm.tokenizers.detokenizer import IncrementalDetokenizer


def stream(tok, ids: Sequence[int], skip: bool = True) -> tuple[list[str], str]:
    """Push ids one by one, checking after every push that the text sent so far is a
    prefix of the full decode; return the deltas and the flushed tail."""
    full = tok.decode(list(ids), skip_special_tokens=skip)
    detok = IncrementalDetokenizer(tok, skip_special_tokens=skip)
    deltas = []
    for i in ids:
        deltas.append(detok.push(i))
        sent = "".join(deltas)
        assert full.startswith(sent), (ids, sent, full)
    tail = detok.flush()
    assert "".join(deltas) + tail == full == detok.text
    assert detok.flush() == ""
    return deltas, tail


def byte_piece_ids(tok) -> list[int]:
    return [i for i in range(tok.vocab_size) if tok.id_to_token(i).startswith("<0x")]


@pytest.mark.parametrize("kind", TEST_TOKENIZER_KINDS)
@pytest.mark.parametrize("skip", [True, False])
def test_random_id_sequences(kind, skip):
    """Property test: random ids biased towards byte pieces / partial characters and
    special tokens; both invariants hold for every prefix."""
    tok = load_test_tokenizer(kind)
    rng = random.Random(hash((kind, skip)) & 0xFFFF)
    if kind.startswith("spm"):
        partial = byte_piece_ids(tok)
    else:  # byte-level tokens that are single non-ASCII bytes or start/end mid-character
        partial = [i for i in range(1000, 1256)] + [
            i for i in rng.sample(range(1256, tok.vocab_size), 4000)
            if tok.decode([i]).endswith("\ufffd") or tok.decode([i]).startswith("\ufffd")]
    specials = sorted(tok.special_token_ids)[:40]
    for _ in range(250):
        ids = []
        for _ in range(rng.randint(0, 50)):
            r = rng.random()
            if r < 0.45:
                ids.append(rng.choice(partial))
            elif r < 0.55:
                ids.append(rng.choice(specials))
            else:
                ids.append(rng.randrange(tok.vocab_size))
        stream(tok, ids, skip)


@pytest.mark.parametrize("kind", TEST_TOKENIZER_KINDS)
def test_real_text_streams_without_replacement_chars(kind):
    """Emoji and CJK split across byte-fallback / byte-level tokens never surface as U+FFFD."""
    tok = load_test_tokenizer(kind)
    for text in SAMPLE_TEXTS:
        if "\ufffd" in text:
            continue
        ids = tok.encode(text, add_special_tokens=False)
        deltas, tail = stream(tok, ids)
        assert all("\ufffd" not in d for d in deltas), text
        # nothing is held back at the end, except a trailing <0xNN> run (a later byte
        # piece could still turn the run into U+FFFD, so it waits for the next token)
        if not (ids and tok.id_to_token(ids[-1]).startswith("<0x")):
            assert tail == "", text


@pytest.mark.parametrize("kind", TEST_TOKENIZER_KINDS)
def test_multibyte_characters_are_split_across_tokens_and_held(kind):
    tok = load_test_tokenizer(kind)
    text = "a 𓀀 b 🜁 c 𝔘"  # rare astral-plane characters: bytes in every vocabulary here
    ids = tok.encode(text, add_special_tokens=False)
    pieces = [tok.token_bytes(i) for i in ids]
    assert any(len(p) == 1 and p[0] >= 0x80 for p in pieces), "test needs byte-split characters"
    detok = IncrementalDetokenizer(tok)
    out = []
    for i in ids:
        delta = detok.push(i)
        out.append(delta)
        delta.encode("utf-8")  # a str delta is always whole characters
        assert "\ufffd" not in delta
    assert "".join(out) + detok.flush() == text


def test_invalid_byte_run_is_not_sent_early():
    """HF's ByteFallback turns a whole run of byte pieces into U+FFFD if any byte is bad:
    '€' (E2 82 AC) must not be sent while a following 0x80 can still invalidate it."""
    tok = load_test_tokenizer("spm-llama2")
    byte = lambda b: tok.token_to_id(f"<0x{b:02X}>")  # noqa: E731
    hello = tok.encode("Hello", add_special_tokens=False)
    ids = [byte(0xE2), byte(0x82), byte(0xAC), byte(0x80), *hello, byte(0xE2), byte(0x82), byte(0xAC)]
    deltas, tail = stream(tok, ids)
    assert tok.decode(ids) == "\ufffd" * 4 + " Hello€"
    assert deltas[:4] == ["", "", "", ""]
    assert tail == "€"  # the last run is complete only at the end of the sequence


def test_incomplete_character_at_end_is_flushed_as_replacement():
    tok = load_test_tokenizer("bpe-tekken")
    ids = tok.encode("ok 😀", add_special_tokens=False)[:-1]  # drop the last byte of the emoji
    deltas, tail = stream(tok, ids)
    assert "".join(deltas) == "ok"
    assert tail == tok.decode(ids)[2:] and tail.endswith("\ufffd")


def test_special_tokens_skipped_or_kept():
    tok = load_test_tokenizer("spm-mistral-v3")
    ids = [*tok.encode("Hi", add_special_tokens=False), tok.token_to_id("[TOOL_CALLS]"),
           *tok.encode("there", add_special_tokens=False), tok.eos_token_id]
    skipped = IncrementalDetokenizer(tok)
    assert "".join(skipped.push(i) for i in ids) + skipped.flush() == tok.decode(ids) == "Hi there"
    assert skipped.token_ids == [i for i in ids if i not in tok.special_token_ids]
    kept = IncrementalDetokenizer(tok, skip_special_tokens=False)
    text = "".join(kept.push(i) for i in ids) + kept.flush()
    assert text == tok.decode(ids, skip_special_tokens=False) and "[TOOL_CALLS]" in text and text.endswith("</s>")


def test_leading_space_of_sentencepiece_output():
    """The first token's dummy-prefix space is dropped (as decode does); later ones kept."""
    tok = load_test_tokenizer("spm-llama2")
    ids = tok.encode("Hello big world", add_special_tokens=False)
    deltas, _ = stream(tok, ids)
    assert deltas == ["Hello", " big", " world"]


class CountingTokenizer:
    """Wraps a tokenizer and records how many ids each decode call sees."""

    def __init__(self, inner):
        self.inner = inner
        self.windows: list[int] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def decode(self, ids, skip_special_tokens=True):
        self.windows.append(len(ids))
        return self.inner.decode(ids, skip_special_tokens=skip_special_tokens)


@pytest.mark.parametrize("kind", TEST_TOKENIZER_KINDS)
def test_work_per_token_is_bounded(kind):
    """Each push decodes a short window, not the whole sequence (no O(n²))."""
    tok = load_test_tokenizer(kind)
    ids = tok.encode(" ".join(SAMPLE_TEXTS) * 4, add_special_tokens=False)
    assert len(ids) > 2000
    counting = CountingTokenizer(tok)
    detok = IncrementalDetokenizer(counting)
    text = "".join(detok.push(i) for i in ids) + detok.flush()
    assert text == tok.decode(ids)
    # a window spans the last two sends; a send can be as long as a run of <0xNN> pieces (Thai or
    # Hindi text in Llama-2's vocabulary is all byte pieces) it had to wait for
    longest_run = run = 0
    for i in ids:
        run = run + 1 if tok.id_to_token(i).startswith("<0x") else 0
        longest_run = max(longest_run, run)
    assert max(counting.windows) <= 2 * (longest_run + 1) + 8
    assert sum(counting.windows) <= 8 * len(ids)
