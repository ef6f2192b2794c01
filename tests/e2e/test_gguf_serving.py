"""GGUF files serve the same model as the safetensors directory they were written from."""

import openai
import pytest
import torch

from support.server_thread import ServerThread
from triolm.engine.llm_engine import EngineConfig, LLMEngine
from triolm.engine.sampling_params import SamplingParams
from triolm.formats.gguf_reader import read_gguf
from triolm.loading.served_model import load_served_model
from triolm.model.llama import LlamaModel
from triolm.settings import ServerSettings

PROMPT = list(range(5, 75))


def prefill_logits(model) -> torch.Tensor:
    """Logits of the last prompt position (the one every representation must agree on)."""
    engine = LLMEngine(model, (), EngineConfig(max_num_seqs=1, max_model_len=256))
    captured = []
    run = engine.runner.run

    def recording(seqs, is_prefill):
        out = run(seqs, is_prefill)
        captured.append(out.clone())
        return out

    engine.runner.run = recording
    engine.add_request("r", PROMPT, SamplingParams(temperature=0, max_tokens=1))
    engine.step()
    return captured[0][0]


@pytest.fixture(scope="module")
def llama_files(tiny_model):
    return tiny_model("llama", gguf_types=("F32", "F16", "Q8_0", "Q4_0"))


def test_f32_gguf_gives_the_safetensors_logits(llama_files):
    hf = load_served_model(ServerSettings(model=str(llama_files.hf_dir)))
    gguf = load_served_model(ServerSettings(model=str(llama_files.gguf_path("F32"))))
    assert (prefill_logits(gguf.model) - prefill_logits(hf.model)).abs().max().item() <= 1e-5
    text = "Hello wörld 🙂  code: x = [1, 2]\n\tend"
    assert gguf.tokenizer.encode(text) == hf.tokenizer.encode(text)
    assert gguf.chat_template.render([{"role": "user", "content": "hi"}]) == \
        hf.chat_template.render([{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("file_type", ["F16", "Q8_0", "Q4_0"])
def test_quantized_gguf_logits_match_the_dequantized_reference(llama_files, file_type):
    """Reference: the file's weights dequantized by the gguf package's reference code, run
    in float32. The served model must compute the same function of those weights; 1e-4 is
    float32 summation-order noise (the same bound as against transformers)."""
    path = llama_files.gguf_path(file_type)
    served = load_served_model(ServerSettings(model=str(path)))
    ref = read_gguf(path)  # float32, dequantized
    reference = LlamaModel(ref.config, ref.tensors)
    diff = (prefill_logits(served.model) - prefill_logits(reference)).abs().max().item()
    assert diff <= 1e-4, f"{file_type}: {diff}"


def test_q8_0_stays_close_to_the_unquantized_model(llama_files):
    """Q8_0 rounds each weight to 1/254 of its 32-weight block's max: about 0.2 % relative
    noise per weight, which moves logits of std 2 by far less than 0.25 here."""
    f32 = load_served_model(ServerSettings(model=str(llama_files.gguf_path("F32"))))
    q8 = load_served_model(ServerSettings(model=str(llama_files.gguf_path("Q8_0"))))
    a, b = prefill_logits(f32.model), prefill_logits(q8.model)
    assert (a - b).abs().max().item() < 0.25
    assert a.argmax() == b.argmax()


def test_server_serves_a_gguf_file(llama_files):
    settings = ServerSettings(model=str(llama_files.gguf_path("Q8_0")), max_num_seqs=2)
    with ServerThread(settings, load_served_model(settings)) as srv:
        client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="x", max_retries=0)
        assert [m.id for m in client.models.list()] == ["model-Q8_0"]
        r = client.chat.completions.create(model="model-Q8_0", messages=[{"role": "user", "content": "Hi"}],
                                           max_tokens=5, temperature=0, extra_body={"ignore_eos": True})
        assert r.usage.completion_tokens == 5 and r.choices[0].finish_reason == "length"
