"""Our forward pass equals Hugging Face transformers' on the same weights (the outside
oracle), through the paged KV cache: a 64+-token prefill and 16 decode steps."""

import pytest
import torch
import transformers

from triolm.engine.llm_engine import EngineConfig, LLMEngine
from triolm.engine.sampling_params import SamplingParams
from triolm.formats.hf_config import read_hf_config
from triolm.formats.safetensors_loader import read_safetensors
from triolm.model.llama import LlamaModel

ARCHS = ["llama", "mistral", "qwen2", "qwen3", "llama3"]
TOLERANCE = 1e-4  # float32 end to end; differences come only from summation order


class LogitRecorder:
    """Wraps the model runner to keep the logits of every step."""

    def __init__(self, runner):
        self.runner, self.logits = runner, []

    def run(self, seqs, is_prefill):
        out = self.runner.run(seqs, is_prefill)
        self.logits.append(out.clone())
        return out


def engine_logits(model_dir, prompt, steps):
    config = read_hf_config(model_dir)
    model = LlamaModel(config, read_safetensors(model_dir))
    engine = LLMEngine(model, (), EngineConfig(max_num_seqs=2, max_model_len=512))
    recorder = LogitRecorder(engine.runner)
    engine.runner = recorder
    engine.add_request("r", prompt, SamplingParams(temperature=0, max_tokens=steps + 1, ignore_eos=True))
    tokens = []
    while engine.has_unfinished():
        tokens += [o.token_id for o in engine.step()]
    return torch.cat(recorder.logits), tokens


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_transformers(tiny_model, arch):
    paths = tiny_model(arch)
    gen = torch.Generator().manual_seed(1)
    vocab = paths.config.vocab_size
    prompt = torch.randint(0, vocab, (70,), generator=gen).tolist()
    ours, tokens = engine_logits(paths.hf_dir, prompt, 16)
    hf = transformers.AutoModelForCausalLM.from_pretrained(paths.hf_dir, dtype=torch.float32).eval()
    full = torch.tensor([prompt + tokens[:16]])
    with torch.no_grad():
        ref = hf(full).logits[0, len(prompt) - 1:].float()
    assert ours.shape == ref.shape == (17, vocab)
    diff = (ours - ref).abs().max().item()
    assert diff <= TOLERANCE, f"{arch}: max |logit diff| {diff}"
    # and the greedy tokens the engine chose are the oracle's argmax at every step
    assert tokens[:16] == ref[:-1].argmax(-1).tolist()
