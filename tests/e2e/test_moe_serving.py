"""The real server serves each mixture-of-experts family (contracts/moe.md, MOE-8)."""

import math

import openai
import pytest

from support.server_thread import ServerThread
from triolm.loading.served_model import load_served_model
from triolm.model.llama import LlamaModel
from triolm.model.moe import SparseMoe
from triolm.settings import ServerSettings


@pytest.fixture(scope="module")
def moe(tiny_model):
    return lambda arch: tiny_model(arch, gguf_types=("F32", "F16", "Q8_0"))


@pytest.mark.parametrize("arch, file_type", [("qwen3_moe", "Q8_0"), ("mixtral", None)])
def test_moe_008_server_answers_chat_completions(moe, arch, file_type):
    """The real server serves each family (qwen3_moe from its Q8_0 GGUF with the file's
    chat template, mixtral from its HF directory): greedy answers are the model's top
    choice at every step, with finite log-probabilities, and repeat exactly."""
    paths = moe(arch)
    model_path = paths.gguf_path(file_type) if file_type else paths.hf_dir
    settings = ServerSettings(model=str(model_path), max_num_seqs=2)
    served = load_served_model(settings)
    assert isinstance(served.model, LlamaModel) and isinstance(served.model.layers[0].feed_forward, SparseMoe)
    with ServerThread(settings, served) as srv:
        client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="x", max_retries=0)
        answers = []
        for _ in range(2):
            r = client.chat.completions.create(
                model=served.name, messages=[{"role": "user", "content": "Name three colours."}],
                max_tokens=8, temperature=0, logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True})
            assert r.usage.completion_tokens == 8 and r.choices[0].finish_reason == "length"
            for step in r.choices[0].logprobs.content:
                assert math.isfinite(step.logprob)
                assert step.logprob == pytest.approx(max(t.logprob for t in step.top_logprobs), abs=1e-5)
            answers.append(r.choices[0].message.content)
        assert answers[0] == answers[1] and answers[0]
