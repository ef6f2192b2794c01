#!/usr/bin/env python
"""The machine's memory read bandwidth, and the decode speed it allows per weight file.

    python scripts/bench_memory.py

Single-stream decode reads every weight once per token, so tok/s can never exceed
bandwidth / weight bytes. Two readers, both on all cores: torch's float32 sum over
1 GiB (a plain streaming read), and triolm's float16 GEMV kernel over 1 GiB of distinct
rows (what a decode step does). Prints the ceiling for the benchmark model's files.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402


def best_rate(fn, nbytes: int, reps: int = 5) -> float:
    fn()
    best = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = max(best, nbytes / (time.perf_counter() - t0) / 1e9)
    return best


def main() -> int:
    import torch

    from triolm.kernels import native

    n = 1 << 28  # 1 GiB of float32
    a = torch.ones(n)
    rates = {"torch float32 sum": best_rate(a.sum, 4 * n)}
    del a
    lib = native.lib()
    if lib is not None:
        k = 576
        rows = (1 << 29) // k  # 1 GiB of float16
        w = torch.ones(rows, k, dtype=torch.float16)
        x, y = torch.randn(1, k), torch.empty(1, rows)
        threads = native.num_threads()
        rates["triolm float16 GEMV"] = best_rate(
            lambda: lib.tl_linear(native.W_F16, w.data_ptr(), None, x.data_ptr(), k, y.data_ptr(), rows,
                                  1, rows, k, 0, threads), 2 * rows * k)
        del w
    for name, rate in rates.items():
        bc.log(f"{name}: {rate:.1f} GB/s")
    peak = max(rates.values())
    weights_mb = {"F32": 498, "F16": 249, "Q8_0": 140}  # read per token: the engine's weights_mb
    rows = [[kind, f"{mb}", f"{peak * 1e3 / mb:.0f}"] for kind, mb in weights_mb.items()]
    print(bc.markdown_table(["weights", "MB read per token", f"ceiling tok/s at {peak:.1f} GB/s"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
