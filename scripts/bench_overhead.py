#!/usr/bin/env python
"""Serving overhead per token, measured in pairs so both sides see the same machine load.

    python scripts/bench_overhead.py --kinds F16 Q8_0 --pairs 6

For each weight file: start `triolm serve` on it, load the same file in this process,
then alternate one engine-only request and one streamed HTTP request (same 128-token
prompt length, 128 greedy tokens), `--pairs` times. Engine: median decode step time.
HTTP: median inter-token latency of the stream, measured by the client. The overhead
is the median over pairs of (ITL / step − 1). The idle server uses no CPU while the
engine-only half runs (and the unloaded engine none while the server runs).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `triolm serve` does
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402
import bench_engine  # noqa: E402
from bench import start_triolm  # noqa: E402


def engine_step_ms(engine, prompt: list[int], gen: int, tag: str) -> float:
    r = bench_engine.run_requests(engine, [prompt], gen, tag)
    return r["decode_step_ms_median"]


async def http_itl_ms(url: str, model: str, prompt: list[int], gen: int) -> float:
    import httpx

    async with httpx.AsyncClient(timeout=600) as client:
        body = bc.completion_body("triolm", model, prompt, gen)
        r = await bc.stream_one(client, f"{url}/v1/completions", body, len(prompt))
    if r.error:
        raise RuntimeError(r.error)
    return bc.median(r.itls) * 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kinds", nargs="+", default=["F16", "Q8_0"])
    ap.add_argument("--pairs", type=int, default=6)
    ap.add_argument("--gen", type=int, default=128)
    args = ap.parse_args(argv)
    paths = bc.bench_model(tuple(args.kinds))
    rows, report = [], {"machine": bc.machine_info(), "kinds": {}}
    for kind in args.kinds:
        path = paths.model_path(kind)
        proc, url, _ = start_triolm(path, 16, None)
        try:
            _, engine, _ = bench_engine.load_engine(path, 1, 2048)
            engine_step_ms(engine, bc.make_prompts(1, 32, 1)[0], 8, "warm")
            asyncio.run(http_itl_ms(url, path.stem, bc.make_prompts(1, 32, 2)[0], 8))
            pairs = []
            for i in range(args.pairs):
                prompt = bc.make_prompts(1, 128, 1000 + i)[0]
                step = engine_step_ms(engine, prompt, args.gen, f"p{i}")
                itl = asyncio.run(http_itl_ms(url, path.stem, prompt, args.gen))
                pairs.append((step, itl))
                bc.log(f"{kind} pair {i}: engine step {step:.2f} ms, HTTP ITL {itl:.2f} ms "
                       f"({(itl / step - 1) * 100:+.1f} %)")
            del engine
        finally:
            bc.stop_process(proc)
        over = bc.median([itl / step - 1 for step, itl in pairs]) * 100
        report["kinds"][kind] = {"pairs": pairs, "overhead_pct_median": over}
        rows.append([kind, f"{bc.median([s for s, _ in pairs]):.2f}", f"{bc.median([i for _, i in pairs]):.2f}",
                     f"{over:.1f}", str(len(pairs))])
    print(bc.markdown_table(["weights", "engine step ms (median)", "HTTP ITL ms (median)",
                             "overhead % (median of pairs)", "pairs"], rows))
    print(f"JSON: {bc.save_json(time.strftime('overhead-%Y%m%d-%H%M%S.json'), report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
