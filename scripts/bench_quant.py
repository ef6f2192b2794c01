#!/usr/bin/env python
"""Engine-only figures of GGUF files as downloaded: load time, RSS, decode and prefill.

    python scripts/bench_quant.py /work/models/SmolLM2-135M-Instruct.Q4_1.gguf other.gguf

Per file, in a fresh process each (so RSS is the file's own): seconds to load, RSS after
load and after generating (VmRSS, and VmHWM the peak), the weights' bytes as held,
single-stream decode tok/s (median of --repeat runs of --gen tokens after a 128-token
prompt) and prefill tok/s of a 512-token prompt. Indicative on a shared machine.
Results: a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `triolm serve` does (cli.py)


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(path: str, gen: int, repeat: int) -> dict:
    import random

    from triolm.engine.llm_engine import EngineConfig, LLMEngine
    from triolm.engine.sampling_params import SamplingParams
    from triolm.loading.served_model import load_served_model
    from triolm.settings import ServerSettings

    rss0 = _status_mb("VmRSS")
    settings = ServerSettings(model=path, max_num_seqs=4, max_model_len=2048)
    t0 = time.perf_counter()
    served = load_served_model(settings)
    load_s = time.perf_counter() - t0
    model = served.model
    rss_loaded = _status_mb("VmRSS")
    engine = LLMEngine(model, (), EngineConfig(max_num_seqs=4, max_model_len=2048,
                                               kv_cache_bytes=64 << 20))
    rng = random.Random(0)
    vocab = model.config.vocab_size

    def run(prompt_len: int, max_tokens: int) -> tuple[float, float]:
        prompt = [rng.randrange(10, vocab - 10) for _ in range(prompt_len)]
        engine.add_request(f"r{rng.random()}", prompt, SamplingParams(temperature=0.0, max_tokens=max_tokens,
                                                                      ignore_eos=True))
        prefill = decode = 0.0
        n = 0
        first = True
        while engine.has_unfinished():
            s = time.perf_counter()
            outs = engine.step()
            dt = time.perf_counter() - s
            if first:
                prefill, first = dt, False
            else:
                decode += dt
                n += len(outs)
        return prompt_len / prefill, n / decode if decode else float("nan")

    run(32, 8)
    decode = sorted(run(128, gen)[1] for _ in range(repeat))[repeat // 2]
    prefill = sorted(run(512, 2)[0] for _ in range(repeat))[repeat // 2]
    return {"file": Path(path).name, "load_s": load_s, "rss_start_mb": rss0, "rss_loaded_mb": rss_loaded,
            "rss_mb": _status_mb("VmRSS"), "peak_rss_mb": _status_mb("VmHWM"),
            "weights_mb": model.weights_bytes / 1e6, "kinds": model.weight_kinds(),
            "decode_tps": decode, "prefill_tps": prefill}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # child process
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.paths[0], args.gen, args.repeat)))
        return 0
    rows = []
    for p in args.paths:
        out = subprocess.run([sys.executable, __file__, "--one", "--gen", str(args.gen),
                              "--repeat", str(args.repeat), p], capture_output=True, text=True)
        if out.returncode:
            print(out.stderr[-3000:], file=sys.stderr)
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(r), file=sys.stderr)
        rows.append(r)
    print("| file | load s | weights MB | RSS loaded MB | RSS after MB | peak MB | decode tok/s | prefill tok/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['file']} | {r['load_s']:.2f} | {r['weights_mb']:.0f} | {r['rss_loaded_mb']:.0f} | "
              f"{r['rss_mb']:.0f} | {r['peak_rss_mb']:.0f} | {r['decode_tps']:.1f} | {r['prefill_tps']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
