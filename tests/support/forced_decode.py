"""Teacher-forced logits through an engine's own runner and cache.

Comparing two ways of computing the same model (a float16 KV cache against float32,
native decode against torch) needs both to see the same tokens at every step; greedy
generation stops being comparable at the first token where the two disagree. Here the
continuation is given: every sequence is prefilled, then decoded one given token at a
time, all sequences in one batch, exactly as the engine's scheduler would run them."""

from __future__ import annotations

import torch

from triolm.engine.llm_engine import LLMEngine
from triolm.engine.sampling_params import SamplingParams
from triolm.engine.sequence import Sequence


def forced_logits(engine: LLMEngine, prompts: list[list[int]],
                  continuations: list[list[int]]) -> list[torch.Tensor]:
    """Per sequence, float32 logits [1 + len(continuation), vocab]: after its prompt (the
    prefill step), then after each token of its continuation (decode steps). Full
    blocks are published to the prefix cache as the engine does, so a later call with
    the same prompt prefills from the cache."""
    steps = len(continuations[0])
    if any(len(c) != steps for c in continuations):
        raise ValueError("continuations must have equal lengths (one batch per decode step)")
    bm = engine.block_manager
    params = SamplingParams(temperature=0.0, max_tokens=steps + 1, ignore_eos=True)
    seqs = [Sequence(f"forced-{i}", p, params) for i, p in enumerate(prompts)]
    rows: list[list[torch.Tensor]] = [[] for _ in seqs]
    try:
        for seq in seqs:
            bm.allocate(seq)
        _record(engine, seqs, rows, is_prefill=True)
        for step in range(steps):
            for seq, cont in zip(seqs, continuations, strict=True):
                seq.append(cont[step])
                bm.append_slot(seq)
            _record(engine, seqs, rows, is_prefill=False)
    finally:
        for seq in seqs:
            bm.deallocate(seq)
    return [torch.cat(r) for r in rows]


def _record(engine: LLMEngine, seqs: list[Sequence], rows: list[list[torch.Tensor]],
            is_prefill: bool) -> None:
    logits = engine.runner.run(seqs, is_prefill).float()
    for i, seq in enumerate(seqs):
        rows[i].append(logits[i:i + 1].clone())
        seq.num_cached_tokens = len(seq)
        engine.block_manager.register_full_blocks(seq, seq.num_cached_tokens)
