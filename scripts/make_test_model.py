#!/usr/bin/env python
"""Build (or find in the cache) a random-weight test/benchmark model in HF and GGUF form.

    python scripts/make_test_model.py --arch llama --size smollm-135m --gguf F32 F16 Q8_0 Q4_0
    python scripts/make_test_model.py --arch qwen3 --out /tmp/models --sharded --time-load

Prints the paths as JSON on stdout (progress bars go to stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

# Test support (generated models, servers in threads) lives in tests/support.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.model_factory import ARCHS, DEFAULT_GGUF_TYPES, SIZES, default_cache_dir, make_test_model
from triolm.formats.gguf_writer import FILE_TYPES


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=ARCHS, default="llama")
    ap.add_argument("--size", choices=SIZES, default="tiny")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gguf", nargs="*", choices=FILE_TYPES, default=list(DEFAULT_GGUF_TYPES),
                    help="GGUF file types to write (default: %(default)s)")
    ap.add_argument("--sharded", action="store_true", help="also write a sharded safetensors directory")
    ap.add_argument("--out", default=None, help=f"cache directory (default: {default_cache_dir()})")
    ap.add_argument("--time-load", action="store_true", help="time read_gguf on every GGUF file built")
    args = ap.parse_args(argv)

    bars: dict[str, tqdm] = {}

    def progress(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=stage, unit="tensor", file=sys.stderr)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    t0 = time.perf_counter()
    paths = make_test_model(args.out, arch=args.arch, size=args.size, seed=args.seed,
                            gguf_types=tuple(args.gguf), sharded=args.sharded, progress=progress)
    report: dict = {
        "root": str(paths.root),
        "hf_dir": str(paths.hf_dir),
        "hf_sharded_dir": str(paths.hf_sharded_dir) if paths.hf_sharded_dir else None,
        "gguf": {k: str(v) for k, v in paths.gguf.items()},
        "build_seconds": round(time.perf_counter() - t0, 2),
    }
    if args.time_load:
        from triolm.formats.gguf_reader import read_gguf

        report["load_seconds"] = {}
        for ft in args.gguf:
            t = time.perf_counter()
            read_gguf(paths.gguf[ft])
            report["load_seconds"][ft] = round(time.perf_counter() - t, 3)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
