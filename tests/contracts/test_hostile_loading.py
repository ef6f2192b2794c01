"""A model that cannot serve makes a server that exits; loading is bounded by the file;
a failing sequence fails alone (contracts/hostile-input.md, HOSTILE-LOAD-*).

Hostile files are the tiny generated models copied with one metadata value changed
(`support.hostile_gguf.rewrite_gguf`): tensors byte for byte, types kept.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
import torch

from support.hostile_gguf import rewrite_gguf
from support.server_thread import free_port
from triolm.engine.llm_engine import EngineConfig, LLMEngine
from triolm.engine.sampling_params import SamplingParams
from triolm.errors import ModelLoadError
from triolm.formats.gguf_reader import read_gguf
from triolm.formats.load_limits import MAX_CHAT_TEMPLATE_BYTES, MAX_TOKEN_BYTES
from triolm.loading.served_model import load_served_model
from triolm.settings import ServerSettings
from triolm.tokenizers.convert import TokenType, spm_merges

BIN = Path(sys.executable).parent
TOKENS = "tokenizer.ggml.tokens"


@pytest.fixture(scope="module")
def llama_gguf(tiny_model) -> Path:
    """The tiny llama: a SentencePiece ('llama') vocabulary, so the SPM merge builder runs."""
    return tiny_model("llama", gguf_types=("F32",)).gguf["F32"]


@pytest.fixture(scope="module")
def vocab(llama_gguf) -> list[str]:
    return list(read_gguf(llama_gguf).metadata[TOKENS])


def hostile(src: Path, tmp_path: Path, **changes) -> Path:
    return rewrite_gguf(src, tmp_path / "hostile.gguf", {k.replace("__", "."): v for k, v in changes.items()})


# -- HOSTILE-LOAD-001: a model that cannot serve makes a server that exits -------------------------
@pytest.mark.parametrize("change, named", [
    ({"llama.block_count": 0}, "llama.block_count"),
    ({TOKENS: "<100 KB token>"}, f"{TOKENS}[300]"),
])
def test_HOSTILE_LOAD_001_serve_exits_non_zero_naming_the_key(llama_gguf, vocab, tmp_path, change, named):
    if TOKENS in change:
        change = {TOKENS: vocab[:300] + ["x" * 100_000] + vocab[301:]}
    path = rewrite_gguf(llama_gguf, tmp_path / "bad.gguf", change)
    r = subprocess.run([str(BIN / "triolm"), "serve", str(path), "--port", str(free_port())],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "model load failed" in r.stderr and named in r.stderr and str(path) in r.stderr, r.stderr[-3000:]
    assert "Traceback" not in r.stderr


def test_HOSTILE_LOAD_001_a_panicking_native_library_is_a_load_error(llama_gguf, monkeypatch):
    """PyO3's PanicException derives from BaseException, not Exception: the load task
    must still turn it into a reason to exit (here the grammar tokenizer panics)."""
    import triolm.loading.served_model as served_model
    from triolm.runtime.lifecycle import Lifecycle
    from triolm.runtime.runtime import _load_with_progress

    class FakePanic(BaseException):  # what pyo3_runtime.PanicException derives from
        pass

    def panicking_compiler(*args, **kwargs):
        raise FakePanic("assertion failed: num_parents <= (1 << PARENT_BITS) as usize")

    monkeypatch.setattr(served_model, "GrammarCompiler", panicking_compiler)

    with pytest.raises(ModelLoadError, match="num_parents"):
        _load_with_progress(ServerSettings(model=str(llama_gguf), log_level="warning"), Lifecycle())


# -- HOSTILE-LOAD-002: metadata is checked against what the file holds ----------------------------
def test_HOSTILE_LOAD_002_block_count_beyond_the_tensors_present(llama_gguf, tmp_path):
    path = hostile(llama_gguf, tmp_path, llama__block_count=2**32 - 1)
    with pytest.raises(ModelLoadError, match=r"llama\.block_count is 4294967295 but the file holds "
                                             r"tensors for 2 blocks"):
        read_gguf(path)


def test_HOSTILE_LOAD_002_more_tokens_than_embedding_rows(llama_gguf, vocab, tmp_path):
    path = hostile(llama_gguf, tmp_path, **{TOKENS: vocab + [f"<extra{i}>" for i in range(10)],
                                          "tokenizer.ggml.scores": [0.0] * (len(vocab) + 10),
                                          "tokenizer.ggml.token_type": [1] * (len(vocab) + 10)})
    with pytest.raises(ModelLoadError, match=rf"{TOKENS} has {len(vocab) + 10} tokens but the embedding "
                                             rf"has {len(vocab)} rows"):
        load_served_model(ServerSettings(model=str(path)))


# -- HOSTILE-LOAD-003: values no model can have are rejected at load, naming the key ---------------
@pytest.mark.parametrize("key, value, why", [
    ("llama.attention.layer_norm_rms_epsilon", math.nan, "must be a finite number"),
    ("llama.attention.layer_norm_rms_epsilon", 0.0, "must be a finite number"),
    ("llama.rope.freq_base", 0.0, "must be a finite number above 1"),
    ("llama.rope.freq_base", math.inf, "must be a finite number above 1"),
    ("llama.attention.head_count", 0, "must be at least 1"),
    ("llama.attention.head_count_kv", 3, "does not divide"),
    ("llama.embedding_length", 0, "must be at least 1"),
    ("llama.context_length", 0, "must be at least 1"),
])
def test_HOSTILE_LOAD_003_invalid_hyperparameters_are_load_errors(llama_gguf, tmp_path, key, value, why):
    path = rewrite_gguf(llama_gguf, tmp_path / "bad.gguf", {key: value})
    with pytest.raises(ModelLoadError) as err:
        read_gguf(path)
    assert key in str(err.value) and why in str(err.value)


def test_HOSTILE_LOAD_003_hf_config_values_are_checked_alike(tiny_model, tmp_path):
    model_dir = tmp_path / "m"
    shutil.copytree(tiny_model("qwen2").hf_dir, model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**cfg, "rms_norm_eps": math.nan}))
    with pytest.raises(ModelLoadError, match="rms_norm_eps must be a finite number"):
        load_served_model(ServerSettings(model=str(model_dir)))


# -- HOSTILE-LOAD-004: lengths against sane limits -----------------------------------------------
def test_HOSTILE_LOAD_004_a_token_past_the_limit_is_named(llama_gguf, vocab, tmp_path):
    path = hostile(llama_gguf, tmp_path, **{TOKENS: vocab[:7] + ["é" * MAX_TOKEN_BYTES] + vocab[8:]})
    with pytest.raises(ModelLoadError, match=rf"{TOKENS}\[7\] is {2 * MAX_TOKEN_BYTES} bytes long"):
        load_served_model(ServerSettings(model=str(path)))


def test_HOSTILE_LOAD_004_a_chat_template_past_the_limit_is_named(llama_gguf, tmp_path):
    template = "{{ messages[0].content }}" + " " * MAX_CHAT_TEMPLATE_BYTES
    path = hostile(llama_gguf, tmp_path, tokenizer__chat_template=template)
    with pytest.raises(ModelLoadError, match="tokenizer.chat_template: chat template of"):
        load_served_model(ServerSettings(model=str(path)))
    big = tmp_path / "big.jinja"
    big.write_text(template)
    with pytest.raises(ModelLoadError, match="--chat-template"):
        load_served_model(ServerSettings(model=str(llama_gguf), chat_template=str(big)))


def test_HOSTILE_LOAD_004_spm_merges_cost_does_not_grow_with_one_long_piece(vocab):
    """A 50 MB piece: the old builder sliced it at every character (hours); now only split
    points where both halves have the length of some piece are looked at."""
    types = [int(TokenType.NORMAL)] * len(vocab)
    scores = [-float(i) for i in range(len(vocab))]
    expected = spm_merges(vocab, scores, types)
    long_piece = "▁" * 50_000_000
    assert spm_merges(vocab + [long_piece], scores + [0.0], types + [int(TokenType.NORMAL)]) == expected


# -- HOSTILE-LOAD-005: a failing sequence fails alone --------------------------------------------
def _run(engine: LLMEngine, requests: dict[str, SamplingParams]) -> tuple[dict[str, list[int]], dict]:
    tokens: dict[str, list[int]] = {rid: [] for rid in requests}
    failures = {}
    for rid, params in requests.items():
        engine.add_request(rid, [1, 2, 3, 4], params)
    with torch.inference_mode():
        while engine.has_unfinished():
            for out in engine.step():
                tokens[out.request_id].append(out.token_id)
            failures.update(engine.pop_failures())
    return tokens, failures


def test_HOSTILE_LOAD_005_a_sequence_whose_sampling_fails_fails_alone(served_model):
    greedy = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    # +inf logit bias with temperature sampling: softmax gives NaN, torch.multinomial raises
    # "probability tensor contains either inf, nan or element < 0" — for this row only.
    poisoned = SamplingParams(temperature=1.0, max_tokens=12, ignore_eos=True, logit_bias=((5, math.inf),))
    alone, _ = _run(LLMEngine(served_model.model, served_model.eos_token_ids, EngineConfig(max_num_seqs=4)),
                    {"ok": greedy})
    engine = LLMEngine(served_model.model, served_model.eos_token_ids, EngineConfig(max_num_seqs=4))
    together, failures = _run(engine, {"ok": greedy, "bad": poisoned, "ok2": greedy})
    assert set(failures) == {"bad"} and "probability tensor" in str(failures["bad"])
    assert together["ok"] == together["ok2"] == alone["ok"] and len(alone["ok"]) == 12
    assert together["bad"] == [] and engine.block_manager.num_used == 0


def test_HOSTILE_LOAD_005_non_finite_logits_fail_their_sequence_not_a_greedy_token(served_model):
    """argmax over NaN logits would quietly pick a token: a non-finite row is a failure."""
    engine = LLMEngine(served_model.model, served_model.eos_token_ids, EngineConfig(max_num_seqs=4))
    real_run = engine.runner.run

    def run_with_nan_row(seqs, is_prefill):  # fault injection: NaN logits for one sequence
        logits = real_run(seqs, is_prefill)
        for row, seq in enumerate(seqs):
            if seq.request_id == "nan":
                logits[row, 0] = math.nan
        return logits

    engine.runner.run = run_with_nan_row
    greedy = SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True)
    tokens, failures = _run(engine, {"ok": greedy, "nan": greedy})
    assert set(failures) == {"nan"} and "non-finite logits" in str(failures["nan"])
    assert len(tokens["ok"]) == 5 and tokens["nan"] == []


def test_HOSTILE_LOAD_005_through_the_server_the_bystander_stream_completes(make_server, monkeypatch):
    srv = make_server()
    sampler = srv.state.serving().driver.engine.sampler
    real_sample_row = sampler._sample_row

    def fault_injecting_sample_row(row, seq):  # a fake fault: only where no real one can be made
        if seq.params.seed == 13:
            raise RuntimeError("probability tensor contains either inf, nan or element < 0")
        return real_sample_row(row, seq)

    monkeypatch.setattr(sampler, "_sample_row", fault_injecting_sample_row)
    results: dict[str, list[str]] = {}

    def stream(name: str, seed: int) -> None:
        with httpx.Client(base_url=srv.base_url, timeout=60) as c:
            with c.stream("POST", "/v1/completions", json={
                    "prompt": "hello", "max_tokens": 40, "ignore_eos": True, "stream": True,
                    "temperature": 0, "seed": seed}) as s:
                results[name] = [line[6:] for line in s.iter_lines() if line.startswith("data: ")]

    threads = [threading.Thread(target=stream, args=a) for a in (("victim", 13), ("bystander", 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    victim, bystander = results["victim"], results["bystander"]
    assert victim[-1] == "[DONE]" and "probability tensor" in json.loads(victim[-2])["error"]["message"]
    chunks = [json.loads(e) for e in bystander[:-1]]
    assert bystander[-1] == "[DONE]" and not any("error" in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    with httpx.Client(base_url=srv.base_url, timeout=60) as c:
        alone = c.post("/v1/completions", json={"prompt": "hello", "max_tokens": 40, "ignore_eos": True,
                                                "temperature": 0}).json()["choices"][0]["text"]
    assert "".join(c["choices"][0]["text"] for c in chunks) == alone
