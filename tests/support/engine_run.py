"""Greedy runs through the real engine that keep every step's logits, for comparing two
weight representations of one model."""

from __future__ import annotations

import torch

from triolm.engine.llm_engine import EngineConfig, LLMEngine
from triolm.engine.sampling_params import SamplingParams


def greedy_with_logits(model, prompts: list[list[int]], steps: int) -> tuple[torch.Tensor, list[list[int]]]:
    """Logits of every step of several sequences decoded together, and their tokens."""
    engine = LLMEngine(model, (), EngineConfig(max_num_seqs=4, max_model_len=1024))
    logits = []
    run = engine.runner.run

    def recording(seqs, is_prefill):
        out = run(seqs, is_prefill)
        logits.append(out.clone())
        return out

    engine.runner.run = recording
    params = SamplingParams(temperature=0, max_tokens=steps, ignore_eos=True)
    for i, p in enumerate(prompts):
        engine.add_request(f"r{i}", p, params)
    tokens = {f"r{i}": [] for i in range(len(prompts))}
    while engine.has_unfinished():
        for o in engine.step():
            tokens[o.request_id].append(o.token_id)
    return torch.cat(logits), [tokens[f"r{i}"] for i in range(len(prompts))]
