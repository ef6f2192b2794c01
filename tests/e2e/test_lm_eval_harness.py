"""lm-evaluation-harness against a real server: its `local-completions` model runs a small
task written here (local JSON lines, no download) for `loglikelihood` and
`generate_until`, and the log-likelihoods it reports equal our own forward pass.

Clause ids (OAI-LMEVAL-…) refer to contracts/openai-compat.md.
"""

from __future__ import annotations

import json

import lm_eval
import pytest
import torch
from lm_eval.api.registry import get_model
from lm_eval.tasks import TaskManager
from openai import OpenAI

from support.forced_decode import forced_logits
from triolm.engine.llm_engine import EngineConfig, LLMEngine

DOCS = [
    {"context": "The cat sat on the", "continuation": " mat"},
    {"context": "Once upon a time there was", "continuation": " a little dragon who"},
    {"context": "1, 2, 3,", "continuation": " 4, 5"},
]

LOGLIKELIHOOD_TASK = """\
task: triolm_tiny_loglikelihood
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{continuation}}}}"
metric_list:
  - metric: perplexity
"""

GENERATE_TASK = """\
task: triolm_tiny_generate
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{continuation}}}}"
generation_kwargs:
  until: ["\\n\\n"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
"""


@pytest.fixture
def tasks_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (tmp_path / "loglikelihood.yaml").write_text(LOGLIKELIHOOD_TASK.format(data=data))
    (tmp_path / "generate.yaml").write_text(GENERATE_TASK.format(data=data))
    return tmp_path


def forward_pass_loglikelihood(served_model, context: list[int], continuation: list[int]) -> float:
    """Sum of log p(continuation token | all before it), teacher-forced through the engine's
    own runner (decode steps: a computation independent of the server's prefill)."""
    engine = LLMEngine(served_model.model, (), EngineConfig(max_num_seqs=1, max_model_len=256))
    logits = forced_logits(engine, [context], [continuation[:-1]])[0]
    logprobs = torch.log_softmax(logits, dim=-1)
    return float(logprobs[torch.arange(len(continuation)), torch.tensor(continuation)].sum())


def test_OAI_LMEVAL_001_loglikelihood_and_generate_until(server, served_model, tiny_model, tasks_dir):
    lm = get_model("local-completions")(
        base_url=server.base_url + "/v1/completions", model=served_model.name,
        tokenizer_backend="huggingface", tokenizer=str(tiny_model("qwen2").hf_dir),
        tokenized_requests=True, num_concurrent=1, max_retries=1, max_length=served_model.max_model_len)
    results = lm_eval.simple_evaluate(
        model=lm, tasks=["triolm_tiny_loglikelihood", "triolm_tiny_generate"],
        task_manager=TaskManager(include_path=str(tasks_dir)), log_samples=True, bootstrap_iters=0)

    scored = results["samples"]["triolm_tiny_loglikelihood"]
    assert len(scored) == len(DOCS)
    for sample in scored:
        context, continuation = sample["arguments"][0]
        (loglikelihood, _is_greedy), = sample["resps"][0]
        context_ids, continuation_ids = lm._encode_pair(context, continuation)
        assert continuation_ids
        want = forward_pass_loglikelihood(served_model, context_ids, continuation_ids)
        assert loglikelihood == pytest.approx(want, abs=1e-4)

    generated = results["samples"]["triolm_tiny_generate"]
    assert len(generated) == len(DOCS)
    client = OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0)
    for sample in generated:
        context = sample["arguments"][0][0]
        (text,) = sample["resps"][0]
        # the same greedy request by hand gives the text lm_eval reports
        want = client.completions.create(model=served_model.name, prompt=lm.tok_encode(context),
                                         max_tokens=6, temperature=0, stop=["\n\n"]).choices[0].text
        assert text == want
