#!/usr/bin/env python
"""Engine-only throughput: the engine's own figure, without HTTP, Trio or tokenization.

    python scripts/bench_engine.py                      # F16, Q8_0 and F32 GGUF files
    python scripts/bench_engine.py --kinds F16 --repeat 5 --concurrency 1 16

Loads the benchmark model exactly as the server does (`load_served_model`), then drives
`LLMEngine.step()` directly: prefill tok/s (128- and 1024-token prompts), single-stream
decode tok/s and step time, and aggregate tok/s with N sequences decoding together.
Comparing these with `bench.py`'s HTTP figures gives the serving overhead per token.
Results: a markdown table on stdout, JSON in bench-results/engine-*.json.
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


def load_engine(path: Path, max_num_seqs: int, max_model_len: int):
    from triolm.engine.llm_engine import EngineConfig, LLMEngine
    from triolm.loading.served_model import load_served_model
    from triolm.settings import ServerSettings

    settings = ServerSettings(model=str(path), max_num_seqs=max_num_seqs, max_model_len=max_model_len)
    t0 = time.perf_counter()
    served = load_served_model(settings)
    load_s = time.perf_counter() - t0
    engine = LLMEngine(served.model, (), EngineConfig(
        max_num_seqs=max_num_seqs, max_model_len=max_model_len, kv_cache_bytes=settings.kv_cache_memory))
    return served, engine, load_s


def run_requests(engine, prompts: list[list[int]], max_tokens: int, tag: str) -> dict:
    """Add all prompts at once and step to completion, timing prefill and decode steps."""
    from triolm.engine.sampling_params import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    for i, p in enumerate(prompts):
        engine.add_request(f"{tag}-{i}", p, params)
    prefill_s, decode_steps, tokens = 0.0, [], 0
    t0 = time.perf_counter()
    while engine.has_unfinished():
        prefill = bool(engine.scheduler.waiting)
        s0 = time.perf_counter()
        outs = engine.step()
        dt = time.perf_counter() - s0
        tokens += len(outs)
        if prefill:
            prefill_s += dt
        else:
            decode_steps.append((dt, len(outs)))
    wall = time.perf_counter() - t0
    decode_s = sum(d for d, _ in decode_steps)
    decode_tokens = sum(n for _, n in decode_steps)
    return {
        "sequences": len(prompts),
        "prompt_tokens": sum(len(p) for p in prompts),
        "generated_tokens": tokens,
        "wall_s": wall,
        "prefill_s": prefill_s,
        "prefill_tps": sum(len(p) for p in prompts) / prefill_s if prefill_s else None,
        "aggregate_tps": tokens / wall,
        "decode_tps": decode_tokens / decode_s if decode_s else None,
        "decode_step_ms_median": bc.median([d * 1000 for d, _ in decode_steps]),
    }


def bench_kind(kind: str, args, paths) -> dict:
    import torch

    from triolm.kernels import native

    path = paths.model_path(kind)
    bc.log(f"engine {kind}: loading {path.name}")
    served, engine, load_s = load_engine(path, max(args.concurrency), 2048)
    model = served.model
    out = {"kind": kind, "load_s": load_s, "weights_mb": model.weights_bytes / 1e6,
           "weight_kinds": model.weight_kinds(), "native": native.available(),
           "threads": torch.get_num_threads(), "runs": {}}
    seed = 100
    run_requests(engine, bc.make_prompts(1, 32, seed), 8, "warm")  # first-call costs
    for rep in range(args.repeat):
        for plen in args.prompt_lens:
            seed += 1
            r = run_requests(engine, bc.make_prompts(1, plen, seed), args.gen, f"s{plen}-{rep}")
            out["runs"].setdefault(f"c1_p{plen}", []).append(r)
            bc.log(f"  {kind} c=1 prompt {plen}: prefill {bc.fmt(r['prefill_tps'], 0)} tok/s, "
                   f"decode {bc.fmt(r['decode_tps'])} tok/s")
        for c in args.concurrency:
            if c == 1:
                continue
            seed += 1
            r = run_requests(engine, bc.make_prompts(c, 128, seed), args.gen, f"c{c}-{rep}")
            out["runs"].setdefault(f"c{c}_p128", []).append(r)
            bc.log(f"  {kind} c={c}: aggregate {bc.fmt(r['aggregate_tps'])} tok/s "
                   f"(decode-only {bc.fmt(r['decode_tps'])})")
    out["summary"] = {key: {m: bc.median([r[m] for r in runs if r[m] is not None])
                            for m in ("prefill_tps", "decode_tps", "aggregate_tps", "decode_step_ms_median")}
                      for key, runs in out["runs"].items()}
    return out


def table(results: list[dict]) -> str:
    rows = []
    for r in results:
        s = r["summary"]
        row = [r["kind"], f"{r['weights_mb']:.0f}", bc.fmt(r["load_s"], 2)]
        row += [bc.fmt((s.get("c1_p128") or {}).get("prefill_tps"), 0),
                bc.fmt((s.get("c1_p1024") or {}).get("prefill_tps"), 0),
                bc.fmt((s.get("c1_p128") or {}).get("decode_tps")),
                bc.fmt((s.get("c1_p128") or {}).get("decode_step_ms_median"), 2)]
        for c in (4, 16):
            row.append(bc.fmt((s.get(f"c{c}_p128") or {}).get("aggregate_tps")))
        rows.append(row)
    return bc.markdown_table(
        ["weights", "MB", "load s", "prefill tok/s (128)", "prefill tok/s (1024)",
         "decode tok/s (1 stream)", "decode step ms", "aggregate tok/s (4)", "aggregate tok/s (16)"],
        rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kinds", nargs="+", default=["F16", "Q8_0", "F32"],
                    help="GGUF types and/or 'hf' (safetensors directory)")
    ap.add_argument("--prompt-lens", nargs="+", type=int, default=[128, 1024])
    ap.add_argument("--concurrency", nargs="+", type=int, default=[1, 4, 16])
    ap.add_argument("--gen", type=int, default=128, help="generated tokens per request")
    ap.add_argument("--repeat", type=int, default=3, help="repetitions (medians are reported)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", default=None, help="JSON file name under bench-results/")
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    paths = bc.bench_model(tuple(k for k in args.kinds if k != "hf"))
    results = [bench_kind(kind, args, paths) for kind in args.kinds]
    report = {"machine": bc.machine_info(), "args": vars(args), "results": results}
    path = bc.save_json(args.out or f"engine-{time.strftime('%Y%m%d-%H%M%S')}.json", report)
    print(table(results))
    print(f"\nJSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
