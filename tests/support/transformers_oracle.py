"""Comparing our engine with Hugging Face transformers, the outside oracle of every
family's tests: greedy runs through the real engine that keep each request's logits,
and the check that they equal transformers' on the same tokens."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import transformers

from triolm.engine.llm_engine import EngineConfig, LLMEngine
from triolm.engine.sampling_params import SamplingParams

TOLERANCE = 1e-4  # float32 end to end; differences come only from summation order


class LogitRecorder:
    """Wraps the model runner to keep the logits of every step, one row per request,
    and how many tokens each request had cached when it was prefilled."""

    def __init__(self, runner):
        self.runner, self.logits, self.cached_at_prefill = runner, [], {}

    def run(self, seqs, is_prefill):
        if is_prefill:
            self.cached_at_prefill.update({s.request_id: s.num_cached_tokens for s in seqs})
        out = self.runner.run(seqs, is_prefill)
        self.logits.append({s.request_id: out[i].clone() for i, s in enumerate(seqs)})
        return out


def engine_run(model, prompts: Sequence[list[int]], steps: int = 16,
               max_model_len: int = 256) -> list[tuple[torch.Tensor, list[int]]]:
    """Greedy-decode every prompt in one engine (batched decode steps); per prompt the
    logits of its prefill and decode steps [steps + 1, vocab] and its tokens."""
    engine = LLMEngine(model, (), EngineConfig(max_num_seqs=len(prompts), max_model_len=max_model_len))
    recorder = LogitRecorder(engine.runner)
    engine.runner = recorder
    for i, prompt in enumerate(prompts):
        engine.add_request(f"r{i}", prompt, SamplingParams(temperature=0, max_tokens=steps + 1, ignore_eos=True))
    tokens: dict[str, list[int]] = {f"r{i}": [] for i in range(len(prompts))}
    while engine.has_unfinished():
        for out in engine.step():
            tokens[out.request_id].append(out.token_id)
    rows = [[step[f"r{i}"] for step in recorder.logits if f"r{i}" in step] for i in range(len(prompts))]
    return [(torch.stack(r), tokens[f"r{i}"]) for i, r in enumerate(rows)]


def random_prompts(vocab: int, lengths: Sequence[int] = (70, 41), seed: int = 1) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in lengths]


def hf_model(model_dir, state_dict=None):
    """transformers' model of `model_dir` in float32, optionally on other weights (a
    GGUF file's, as read back)."""
    hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    if state_dict is not None:
        missing, unexpected = hf.load_state_dict(state_dict, strict=False)
        assert not unexpected and set(missing) <= {"lm_head.weight"}  # tied to the embedding
    return hf


def assert_matches_transformers(model, hf, vocab: int, label: str, lengths: Sequence[int] = (70, 41),
                                max_model_len: int = 256, steps: int = 16) -> None:
    """The prompts decoded together for `steps` greedy steps through the paged KV cache:
    every step's logits within TOLERANCE of transformers' on the same tokens, and the
    tokens transformers' argmax."""
    prompts = random_prompts(vocab, lengths)
    for prompt, (ours, tokens) in zip(prompts, engine_run(model, prompts, steps, max_model_len), strict=True):
        with torch.no_grad():
            ref = hf(torch.tensor([prompt + tokens[:steps]])).logits[0, len(prompt) - 1:].float()
        assert ours.shape == ref.shape == (steps + 1, vocab)
        diff = (ours - ref).abs().max().item()
        assert diff <= TOLERANCE, f"{label}, prompt of {len(prompt)}: max |logit diff| {diff}"
        assert tokens[:steps] == ref[:-1].argmax(-1).tolist()
