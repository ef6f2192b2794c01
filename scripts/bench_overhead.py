#!/usr/bin/env python
"""Serving overhead per token, measured in pairs so both sides see the same machine load.

    python scripts/bench_overhead.py --kinds F16 Q8_0 --pairs 8 --gen 256
    python scripts/bench_overhead.py --files /work/models/SmolLM2-135M-Instruct.Q4_1.gguf

For each weight file: start `triolm serve` on it, load the same file in this process,
then take turns — one engine-only request, then the same request streamed over HTTP by
each client (same 128-token prompt length, greedy tokens) — `--pairs` times. Engine:
median decode step time. HTTP: median inter-token latency of the stream, measured by
the client. The overhead is the median over rounds of (ITL / step − 1). The idle server
uses no CPU while the engine-only request runs (and the unloaded engine none while the
server runs).

Two clients, because on this 2-core machine the client shares the CPU with the server:
- `socket`: a minimal stdlib client (one blocking socket, counts SSE events; ~20 µs of
  CPU per token) — the server's own overhead, what a remote client sees;
- `httpx`: the async httpx client the load benchmarks use (~0.25 ms of CPU per token
  here, taken from the same two cores).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `triolm serve` does
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402
import bench_decode_ab  # noqa: E402
import bench_engine  # noqa: E402
from bench import start_triolm  # noqa: E402


def engine_step_ms(engine, prompt: list[int], gen: int, tag: str) -> float:
    r = bench_engine.run_requests(engine, [prompt], gen, tag)
    return r["decode_step_ms_median"]


def socket_itl_ms(url: str, model: str, prompt: list[int], gen: int) -> float:
    """Stream with a bare socket: the median gap between token events as they arrive."""
    times = bench_decode_ab.stream_times(url, model, prompt, gen)
    itls = [b - a for a, b in itertools.pairwise(times[1:])]  # not the first token
    return bc.median(itls) * 1000


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
    ap.add_argument("--files", nargs="+", type=Path, default=[],
                    help="GGUF files measured instead of the benchmark model's --kinds")
    ap.add_argument("--pairs", type=int, default=8, help="rounds (engine, socket, httpx)")
    ap.add_argument("--gen", type=int, default=256)
    args = ap.parse_args(argv)
    if args.files:
        targets = [(path.name, path) for path in args.files]
    else:
        paths = bc.bench_model(tuple(args.kinds))
        targets = [(kind, paths.model_path(kind)) for kind in args.kinds]
    rows, report = [], {"machine": bc.machine_info(), "kinds": {}}
    for kind, path in targets:
        proc, url, _ = start_triolm(path, 16, None)
        try:
            _, engine, _ = bench_engine.load_engine(path, 1, 2048)
            engine_step_ms(engine, bc.make_prompts(1, 32, 1)[0], 8, "warm")
            asyncio.run(http_itl_ms(url, path.stem, bc.make_prompts(1, 32, 2)[0], 8))
            rounds = []
            for i in range(args.pairs):
                prompt = bc.make_prompts(1, 128, 1000 + i)[0]
                step = engine_step_ms(engine, prompt, args.gen, f"p{i}")
                sock = socket_itl_ms(url, path.stem, prompt, args.gen)
                hx = asyncio.run(http_itl_ms(url, path.stem, prompt, args.gen))
                rounds.append((step, sock, hx))
                bc.log(f"{kind} round {i}: engine step {step:.2f} ms, ITL socket client {sock:.2f} ms "
                       f"({(sock / step - 1) * 100:+.1f} %), httpx client {hx:.2f} ms "
                       f"({(hx / step - 1) * 100:+.1f} %)")
            del engine
        finally:
            bc.stop_process(proc)
        over_sock = bc.median([sock / step - 1 for step, sock, _ in rounds]) * 100
        over_hx = bc.median([hx / step - 1 for step, _, hx in rounds]) * 100
        report["kinds"][kind] = {"rounds": rounds, "overhead_pct_median_socket_client": over_sock,
                                 "overhead_pct_median_httpx_client": over_hx}
        rows.append([kind, f"{bc.median([r[0] for r in rounds]):.2f}",
                     f"{bc.median([r[1] for r in rounds]):.2f}", f"{over_sock:.1f}",
                     f"{bc.median([r[2] for r in rounds]):.2f}", f"{over_hx:.1f}", str(len(rounds))])
    print(bc.markdown_table(["weights", "engine step ms", "ITL ms, socket client", "overhead %",
                             "ITL ms, httpx client", "overhead %", "rounds"], rows))
    print(f"JSON: {bc.save_json(time.strftime('overhead-%Y%m%d-%H%M%S.json'), report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
