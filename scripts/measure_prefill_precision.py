#!/usr/bin/env python
"""Logprob drift and speed of `--prefill-precision bfloat16` against the exact float32 prefill.

    python scripts/measure_prefill_precision.py /work/models/SmolLM2-135M-Instruct.Q4_1.gguf

One prompt of --tokens tokens (the GGUF's own tokenizer on a fixed English text, repeated
to length) runs through the model's prefill in each precision. For every position the
logprob of the token that actually follows is compared (teacher forcing): the max and
mean absolute difference, the share of positions whose argmax agrees, and prefill
tokens/s of each precision (best of --repeat, interleaved). Results: JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `triolm serve` does (cli.py)

import torch  # noqa: E402

from triolm.loading.served_model import load_served_model  # noqa: E402
from triolm.model.attention import AttentionMetadata, PrefillSeq  # noqa: E402
from triolm.model.linear import PrefillPrecision  # noqa: E402
from triolm.settings import ServerSettings  # noqa: E402

TEXT = ("The history of the printing press begins in the fifteenth century, when movable type "
        "made books cheaper to produce. Within fifty years presses spread across Europe, and the "
        "number of printed works grew from a few thousand to millions. Scholars argue about how "
        "much this changed the way people read, wrote and thought, but few doubt that it did. ")


def logprobs(model, ids: list[int]) -> tuple[torch.Tensor, float]:
    c = model.config
    n = len(ids)
    cache = torch.zeros(c.num_hidden_layers, 2, n, c.num_key_value_heads, c.head_dim)
    meta = AttentionMetadata(True, torch.arange(n), [PrefillSeq(0, n, 0, None)])
    t0 = time.perf_counter()
    hidden = model.forward(torch.tensor(ids), torch.arange(n), cache, meta)
    logits = model.logits(hidden)
    secs = time.perf_counter() - t0
    return torch.log_softmax(logits.double(), -1), secs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    served = load_served_model(ServerSettings(model=args.path, max_model_len=args.tokens + 8))
    model = served.model
    ids = served.tokenizer.encode(TEXT * (1 + args.tokens // 40))[:args.tokens]
    results, speeds = {}, {"float32": [], "bfloat16": []}
    for _ in range(args.repeat):
        for name in ("float32", "bfloat16"):
            PrefillPrecision.set(name)
            results[name], secs = logprobs(model, ids)
            speeds[name].append(len(ids) / secs)
    PrefillPrecision.set("float32")
    exact, lossy = results["float32"], results["bfloat16"]
    nxt = torch.tensor(ids[1:])
    rows = torch.arange(len(ids) - 1)
    diff = (exact[rows, nxt] - lossy[rows, nxt]).abs()
    agree = (exact.argmax(-1) == lossy.argmax(-1)).double().mean().item()
    print(json.dumps({
        "file": os.path.basename(args.path), "tokens": len(ids), "weights": model.weight_kinds(),
        "next_token_logprob_abs_diff_max": diff.max().item(),
        "next_token_logprob_abs_diff_mean": diff.mean().item(),
        "argmax_agreement": agree,
        "prefill_tok_s_float32": max(speeds["float32"]), "prefill_tok_s_bfloat16": max(speeds["bfloat16"]),
    }, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
