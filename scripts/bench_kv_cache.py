#!/usr/bin/env python
"""KV cache dtype, float32 against float16: what float16 costs in exactness and what it
buys in decode speed and memory (engine level, no HTTP).

    python scripts/bench_kv_cache.py                          # drift + speed, defaults
    python scripts/bench_kv_cache.py --skip-drift --rounds 5 --contexts 1024 4096 8192

Drift: a real model (default the SmolLM2-135M-Instruct file) continues a few text
prompts greedily with a float32 cache; the same tokens are then teacher-forced through
a float16-cache engine (`support.forced_decode`). Reported: the chosen tokens'
logprob differences (max, mean, p99), the largest difference over the whole
distribution, how often float16's argmax equals float32's token, and how long free
greedy generation stays identical.

Kernel: the native decode attention alone over 30 per-layer caches (one thread).

Speed: the SmolLM-135M-shape benchmark model (Q8_0 by default); one sequence decodes
after a prompt of 1024 and 4096 tokens (and `--streams` sequences of 1024 together),
rounds interleaving the two dtypes, medians reported. Results: a table on stdout and
JSON in bench-results/kv-cache-*.json (or --out).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `triolm serve` does (cli.py)

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402
from bench_engine import run_requests  # noqa: E402

DTYPES = ("float32", "float16")
REAL_MODEL = "/work/models/SmolLM2-135M-Instruct.Q4_1.gguf"
DRIFT_PROMPTS = [
    "The history of the printing press begins",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a refrigerator works, step by step.",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
]


def engine_for(served, dtype: str, max_num_seqs: int, max_model_len: int, budget: int):
    from triolm.engine.llm_engine import EngineConfig, LLMEngine

    return LLMEngine(served.model, (), EngineConfig(
        max_num_seqs=max_num_seqs, max_model_len=max_model_len, kv_cache_bytes=budget,
        kv_cache_dtype=dtype))


# ----------------------------------------------------------------------- drift

def drift(path: str, tokens: int) -> dict:
    import torch

    from support.forced_decode import forced_logits
    from triolm.engine.llm_engine import generate_greedy
    from triolm.loading.served_model import load_served_model
    from triolm.settings import ServerSettings

    bc.log(f"drift: loading {path}")
    served = load_served_model(ServerSettings(model=path, max_model_len=tokens + 256))
    prompts = [served.tokenizer.encode(p) for p in DRIFT_PROMPTS]
    full = engine_for(served, "float32", len(prompts), tokens + 256, 1 << 30)
    half = engine_for(served, "float16", len(prompts), tokens + 256, 1 << 30)
    bc.log(f"drift: {len(prompts)} prompts x {tokens} greedy tokens with a float32 cache")
    ref_tokens = generate_greedy(full, prompts, tokens)
    free_half = generate_greedy(half, prompts, tokens)
    conts = [t[:-1] for t in ref_tokens]  # the last token's logits are not needed
    bc.log("drift: teacher-forcing the float32 continuation through both caches")
    ref = forced_logits(full, prompts, conts)
    got = forced_logits(half, prompts, conts)
    chosen_diff, dist_diff, agree, total = [], 0.0, 0, 0
    for r, g, toks in zip(ref, got, ref_tokens, strict=True):
        lr, lg = r.log_softmax(-1), g.log_softmax(-1)
        idx = torch.tensor(toks).unsqueeze(1)
        chosen_diff += (lr.gather(1, idx) - lg.gather(1, idx)).abs().squeeze(1).tolist()
        dist_diff = max(dist_diff, (lr - lg).abs().max().item())
        agree += int((g.argmax(-1) == torch.tensor(toks)).sum())
        total += len(toks)
    prefix = [next((i for i, (a, b) in enumerate(zip(x, y, strict=False)) if a != b), len(x))
              for x, y in zip(ref_tokens, free_half, strict=True)]
    out = {"model": path, "prompts": len(prompts), "tokens_per_prompt": tokens,
           "chosen_logprob_diff_max": max(chosen_diff),
           "chosen_logprob_diff_mean": sum(chosen_diff) / len(chosen_diff),
           "chosen_logprob_diff_p99": bc.pct(chosen_diff, 99),
           "logprob_diff_max_any_token": dist_diff,
           "forced_argmax_agreement": agree / total,
           "free_greedy_identical_prefix": prefix}
    bc.log(f"drift: chosen-token |dlogprob| max {out['chosen_logprob_diff_max']:.4f} "
           f"mean {out['chosen_logprob_diff_mean']:.5f}; argmax agreement {out['forced_argmax_agreement']:.4f}; "
           f"free greedy identical for {prefix} tokens")
    return out


# ---------------------------------------------------------------------- kernel

def kernel(args) -> dict:
    """`tl_decode_attention` alone, one sequence, the benchmark model's attention shape
    (9 query / 3 KV heads of 64), 30 calls per step over `--kernel-caches` distinct
    caches (30, as in a decode step: nothing stays in L3 from layer to layer); one thread. Less exposed to
    a busy machine than whole engine steps."""
    import ctypes

    import torch

    from triolm.kernels import native

    lib = native.lib()
    if lib is None:
        return {}
    kvh, group, d, bs, layers = 3, 3, 64, 16, 30
    heads = kvh * group
    out: dict = {"layers": layers, "distinct_caches": args.kernel_caches, "heads": heads, "kv_heads": kvh,
                 "head_dim": d, "ms_per_step": {}}
    for ctx in args.contexts:
        nb = -(-(ctx + 1) // bs)
        tables = torch.arange(nb, dtype=torch.int32).unsqueeze(0)
        lens = torch.tensor([ctx + 1], dtype=torch.int32)
        q, kn, vn = torch.randn(1, heads * d), torch.randn(1, kvh * d), torch.randn(1, kvh * d)
        res, dummy = torch.empty(1, heads * d), torch.zeros(1)
        caches = {dt: [(torch.randn(nb * bs, kvh, d).to(getattr(torch, dt)),
                        torch.randn(nb * bs, kvh, d).to(getattr(torch, dt))) for _ in range(args.kernel_caches)]
                  for dt in DTYPES}
        times: dict[str, list[float]] = {dt: [] for dt in DTYPES}
        for rep in range(args.kernel_reps):
            for dt in (DTYPES if rep % 2 == 0 else DTYPES[::-1]):
                kind = native.KV_KINDS[getattr(torch, dt)]
                t0 = time.perf_counter()
                for layer in range(layers):
                    k, v = caches[dt][layer % args.kernel_caches]
                    lib.tl_decode_attention(
                        q.data_ptr(), heads * d, kn.data_ptr(), kvh * d, vn.data_ptr(), kvh * d,
                        k.data_ptr(), v.data_ptr(), kind, tables.data_ptr(), nb, lens.data_ptr(),
                        dummy.data_ptr(), dummy.data_ptr(), 0, res.data_ptr(), 1, heads, kvh, d, bs,
                        ctypes.c_float(d ** -0.5), 1)
                times[dt].append((time.perf_counter() - t0) * 1000)
        out["ms_per_step"][ctx] = {dt: {"median": bc.median(v), "min": min(v)} for dt, v in times.items()}
        bc.log(f"kernel: context {ctx}: attention of {layers} layers " + ", ".join(
            f"{dt} {bc.median(v):.2f} ms (min {min(v):.2f})" for dt, v in times.items()))
        del caches
    return out


# ----------------------------------------------------------------------- speed

def speed(args) -> dict:
    import torch

    from triolm.loading.served_model import load_served_model
    from triolm.settings import ServerSettings

    paths = bc.bench_model((args.kind,))
    path = paths.model_path(args.kind)
    longest = max(args.contexts) + args.gen + 16
    bc.log(f"speed: loading {path.name} (max_model_len {longest})")
    served = load_served_model(ServerSettings(model=str(path), max_model_len=longest))
    budget = args.kv_cache_memory
    engines = {d: engine_for(served, d, max(1, args.streams), longest, budget) for d in DTYPES}
    out: dict = {"kind": args.kind, "threads": torch.get_num_threads(), "contexts": args.contexts,
                 "streams": args.streams, "gen": args.gen,
                 "kv_cache_mb": {d: e.runner.kv_cache_bytes / 1e6 for d, e in engines.items()},
                 "kv_blocks": {d: e.block_manager.num_blocks for d, e in engines.items()},
                 "runs": {}}
    for d, e in engines.items():
        run_requests(e, bc.make_prompts(1, 64, 1), 8, f"warm-{d}")
    seed = 1000
    for rnd in range(args.rounds):
        order = DTYPES if rnd % 2 == 0 else DTYPES[::-1]
        cases = [(1, ctx) for ctx in args.contexts] + ([(args.streams, 1024)] if args.streams > 1 else [])
        for streams, ctx in cases:
            seed += 1
            prompts = bc.make_prompts(streams, ctx, seed)
            for d in order:
                r = run_requests(engines[d], prompts, args.gen, f"r{rnd}-{d}-{streams}-{ctx}")
                key = f"{d}/c{streams}_ctx{ctx}"
                out["runs"].setdefault(key, []).append(r)
                bc.log(f"  round {rnd + 1}/{args.rounds} {d:8s} streams {streams:2d} context {ctx:5d}: "
                       f"decode {bc.fmt(r['decode_tps'])} tok/s, step {bc.fmt(r['decode_step_ms_median'], 2)} ms")
    out["summary"] = {k: {m: bc.median([r[m] for r in runs if r[m] is not None])
                          for m in ("decode_tps", "decode_step_ms_median", "prefill_tps")}
                      for k, runs in out["runs"].items()}
    return out


def table(result: dict) -> str:
    lines = []
    if "drift" in result:
        d = result["drift"]
        lines.append(bc.markdown_table(
            ["model", "tokens", "max |Δ logprob| chosen", "mean", "p99", "max |Δ| any token",
             "argmax agreement", "free greedy identical prefix"],
            [[Path(d["model"]).name, f"{d['prompts']}×{d['tokens_per_prompt']}",
              f"{d['chosen_logprob_diff_max']:.4f}", f"{d['chosen_logprob_diff_mean']:.5f}",
              f"{d['chosen_logprob_diff_p99']:.4f}", f"{d['logprob_diff_max_any_token']:.4f}",
              f"{d['forced_argmax_agreement']:.4f}", str(d["free_greedy_identical_prefix"])]]))
    if "speed" in result:
        s = result["speed"]
        rows = []
        for key in sorted({k.split("/", 1)[1] for k in s["summary"]}):
            f32, f16 = s["summary"].get(f"float32/{key}", {}), s["summary"].get(f"float16/{key}", {})
            a, b = f32.get("decode_tps"), f16.get("decode_tps")
            rows.append([key, bc.fmt(a), bc.fmt(b), bc.fmt(b / a if a and b else None, 2)])
        lines.append(bc.markdown_table(["case", "float32 decode tok/s", "float16 decode tok/s", "ratio"], rows))
        lines.append(f"KV cache MB (same blocks): {s['kv_cache_mb']}")
    if result.get("kernel"):
        k = result["kernel"]
        rows = [[str(ctx), f"{v['float32']['median']:.2f}", f"{v['float16']['median']:.2f}",
                 f"{v['float32']['median'] / v['float16']['median']:.2f}"] for ctx, v in k["ms_per_step"].items()]
        lines.append(bc.markdown_table(["context", "float32 attention ms/step", "float16 ms/step", "speed-up"], rows))
    return "\n\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--drift-model", default=REAL_MODEL)
    ap.add_argument("--drift-tokens", type=int, default=256)
    ap.add_argument("--skip-drift", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--kind", default="Q8_0", help="GGUF type of the benchmark model for speed")
    ap.add_argument("--contexts", nargs="+", type=int, default=[1024, 4096])
    ap.add_argument("--streams", type=int, default=16, help="sequences of 1024 decoding together (0: skip)")
    ap.add_argument("--gen", type=int, default=64, help="decode steps per case")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kv-cache-memory", type=int, default=2 << 30)
    ap.add_argument("--kernel-caches", type=int, default=30,
                    help="distinct per-layer caches the 30 attention calls cycle through (1: one cache, "
                         "hot in the CPU caches at 1024 tokens; 30: as in a real step)")
    ap.add_argument("--kernel-reps", type=int, default=20, help="attention-kernel repetitions (0: skip)")
    ap.add_argument("--out", default=None, help="JSON file name under bench-results/")
    args = ap.parse_args(argv)

    result: dict = {"machine": bc.machine_info(), "args": vars(args)}
    if not args.skip_drift:
        result["drift"] = drift(args.drift_model, args.drift_tokens)
    if args.kernel_reps:
        result["kernel"] = kernel(args)
    if not args.skip_speed:
        result["speed"] = speed(args)
    path = bc.save_json(args.out or f"kv-cache-{time.strftime('%Y%m%d-%H%M%S')}.json", result)
    print(table(result))
    print(f"\nJSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
