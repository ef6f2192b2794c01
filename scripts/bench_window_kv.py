#!/usr/bin/env python
"""KV cache memory of a sliding-window model: reserved and touched bytes for a long context.

    PYTHONPATH=src python scripts/bench_window_kv.py [--model FILE] [--prompt 4000] [--max-model-len 8192]

Loads a gemma GGUF (default the real gemma-3-270m Q4_K_M file), builds an engine for
`--max-num-seqs` sequences of `--max-model-len` tokens and prefills one prompt of
`--prompt` tokens. Reported: the cache the engine reserves (`kv_cache_bytes`), what
the same cache would be with every layer holding the whole context, and the resident
memory the prefill added (the cache is committed page by page as it is written).
Run it against another checkout (PYTHONPATH=other/src) to compare layouts.
"""

from __future__ import annotations

import argparse
import json
import os
import resource

import torch

from triolm.engine.llm_engine import EngineConfig, LLMEngine
from triolm.engine.sampling_params import SamplingParams
from triolm.formats.gguf_weights import read_gguf_for_engine
from triolm.model.build import build_model


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="/work/models/gemma-3-270m-q4_k_m.gguf")
    ap.add_argument("--prompt", type=int, default=4000)
    ap.add_argument("--max-model-len", type=int, default=8192)
    ap.add_argument("--max-num-seqs", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(2)
    parsed, tensors = read_gguf_for_engine(args.model)
    model = build_model(parsed.config, tensors, max_positions=args.max_model_len + 1)
    c = parsed.config
    before = rss_bytes()
    engine = LLMEngine(model, (), EngineConfig(max_num_seqs=args.max_num_seqs, max_model_len=args.max_model_len,
                                               kv_cache_bytes=1 << 40))
    ids = torch.randint(10, c.vocab_size, (args.prompt,), generator=torch.Generator().manual_seed(0)).tolist()
    engine.add_request("long", ids, SamplingParams(temperature=0, max_tokens=1, ignore_eos=True))
    while engine.has_unfinished():
        engine.step()
    touched = rss_bytes() - before
    every_layer = (2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 4
                   * args.max_num_seqs * -(-args.max_model_len // 16) * 16)
    print(json.dumps({
        "model": os.path.basename(args.model), "layers": c.num_hidden_layers,
        "sliding_layers": sum(c.is_sliding(i) for i in range(c.num_hidden_layers)),
        "window": c.sliding_window, "max_model_len": args.max_model_len, "max_num_seqs": args.max_num_seqs,
        "prompt_tokens": args.prompt,
        "kv_reserved_mb": round(engine.runner.kv_cache_bytes / 1e6, 1),
        "kv_reserved_every_layer_full_mb": round(every_layer / 1e6, 1),
        "rss_added_by_engine_and_prefill_mb": round(touched / 1e6, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3, 1),
    }, indent=1))


if __name__ == "__main__":
    main()
