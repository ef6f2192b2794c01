#!/usr/bin/env python
"""Throughput of the native block kernels on one weight matrix: GB/s of weight bytes.

    python scripts/bench_block_kernels.py --types Q4_K Q6_K --shape 8192x3072 --rows 1 --threads 2

Each case multiplies M x-rows by a random but valid N x K matrix of each type, enough
copies of it that they exceed the last-level cache (the weights stream from memory, as in
a decode step of a large model), and reports the median over --repeat passes of the
weight bytes read per second. Decode-shaped (M <= 16) cases call `tl_linear`; --expand
times `tl_dequant_blocks` into a float32 buffer instead. Indicative on a shared machine:
compare code versions in interleaved runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from triolm.kernels import native
from triolm.model import linear as lin

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # test support: random blocks
from support.random_blocks import random_blocks  # noqa: E402


def bench(qtype: str, n: int, k: int, rows: int, threads: int, repeat: int, total_mb: int,
          expand: bool) -> float:
    rng = np.random.default_rng(0)
    one = random_blocks(qtype, n, k, rng)
    copies = max(1, (total_mb << 20) // one.nbytes)
    layers = [lin.BlockLinear(qtype, torch.from_numpy(one.copy()), n, k) for _ in range(copies)]
    x = torch.randn(rows, k)
    y = torch.empty(rows, n)
    buf = torch.empty(n, k)
    lib = native.lib()

    def one_pass() -> float:
        t0 = time.perf_counter()
        for layer in layers:
            if expand:
                lib.tl_dequant_blocks(layer.code, layer._w, buf.data_ptr(), n, k, threads)
            else:
                lib.tl_linear(layer.code, layer._w, None, x.data_ptr(), k, y.data_ptr(), n, rows, n, k, 0,
                              threads)
        return time.perf_counter() - t0

    one_pass()
    secs = statistics.median(one_pass() for _ in range(repeat))
    return copies * one.nbytes / secs / 1e9


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", nargs="+", default=["Q4_K", "Q6_K", "Q5_0", "Q4_0", "Q4_1", "Q8_0", "BF16"])
    ap.add_argument("--shape", default="8192x3072", help="N x K of one matrix")
    ap.add_argument("--rows", nargs="+", type=int, default=[1])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--total-mb", type=int, default=256, help="weight bytes per pass (above the LLC)")
    ap.add_argument("--expand", action="store_true", help="time tl_dequant_blocks instead")
    args = ap.parse_args(argv)
    n, k = (int(v) for v in args.shape.lower().split("x"))
    print("| type | shape | rows | threads | GB/s of weights |")
    print("|---|---|---|---|---|")
    for qtype in args.types:
        for rows in args.rows:
            for t in args.threads:
                gbs = bench(qtype, n, k, rows, t, args.repeat, args.total_mb, args.expand)
                print(f"| {qtype} | {n}x{k} | {rows} | {t} | {gbs:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
