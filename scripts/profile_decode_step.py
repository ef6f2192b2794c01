#!/usr/bin/env python
"""Where one single-stream decode step's time goes, engine only (no HTTP).

    python scripts/profile_decode_step.py /work/models/SmolLM2-135M-Instruct.Q4_1.gguf
    python scripts/profile_decode_step.py FILE.gguf --rounds 6 --gen 256

Loads the file as `triolm serve` does, runs `--rounds` greedy requests (128-token prompt,
`--gen` tokens) one at a time, and times every decode step's phases, in wall time and in
the engine thread's own CPU time (less sensitive to other load on a shared machine):

- `layers (native)`: the one native call that runs every layer (`tl_decode_step`);
- `output projection (native)`: the `lm_head` matrix-vector product (`tl_linear`);
- `logits python`, `forward python`, `runner python`: the Python around those calls;
- `sampler`: log-softmax, finite check, argmax / sampling, log-probabilities;
- `scheduler` and `engine bookkeeping` (the rest of `LLMEngine.step`).

The first round warms up and is not counted. Prints a markdown table of medians over
steps (per phase) and the load average.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `triolm serve` does
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402
import bench_engine  # noqa: E402


class _Clock:
    """Accumulates wall and thread-CPU nanoseconds per phase for the current step."""

    def __init__(self) -> None:
        self.wall: dict[str, int] = defaultdict(int)
        self.cpu: dict[str, int] = defaultdict(int)

    def wrap(self, fn, key: str):
        def timed(*args, **kwargs):
            w, c = time.perf_counter_ns(), time.thread_time_ns()
            try:
                return fn(*args, **kwargs)
            finally:
                self.wall[key] += time.perf_counter_ns() - w
                self.cpu[key] += time.thread_time_ns() - c
        return timed


class _TimedSymbol:
    """A ctypes function wrapped with the clock (ctypes symbols are attributes of the library)."""

    def __init__(self, clock: _Clock, fn, key: str) -> None:
        self._call = clock.wrap(fn, key)

    def __call__(self, *args):
        return self._call(*args)


def profile(path: Path, rounds: int, gen: int) -> dict[str, tuple[float, float]]:
    from triolm.kernels import native

    _, engine, _ = bench_engine.load_engine(path, 16, 2048)
    clock = _Clock()
    lib = native.lib()
    if lib is None:
        raise RuntimeError("the native kernels are not available")
    originals = lib.tl_decode_step, lib.tl_linear
    lib.tl_decode_step = _TimedSymbol(clock, originals[0], "layers (native)")
    lib.tl_linear = _TimedSymbol(clock, originals[1], "output projection (native)")
    model, runner = engine.model, engine.runner
    model.forward = clock.wrap(model.forward, "forward")
    model.logits = clock.wrap(model.logits, "logits")
    runner.run = clock.wrap(runner.run, "runner")
    engine.sampler = clock.wrap(engine.sampler, "sampler")
    engine.scheduler.schedule = clock.wrap(engine.scheduler.schedule, "scheduler")
    steps: list[tuple[dict[str, int], dict[str, int]]] = []
    try:
        _run(engine, clock, steps, rounds, gen)
    finally:
        lib.tl_decode_step, lib.tl_linear = originals
    return {name: (bc.median([_phase(s[0], name) for s in steps]) / 1e6,
                   bc.median([_phase(s[1], name) for s in steps]) / 1e6) for name in PHASES}


def _run(engine, clock: _Clock, steps: list, rounds: int, gen: int) -> None:
    import torch

    from triolm.engine.sampling_params import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=gen + 1, ignore_eos=True)
    with torch.inference_mode():
        for rnd in range(rounds + 1):
            engine.add_request(f"r{rnd}", bc.make_prompts(1, 128, 100 + rnd)[0], params)
            engine.step()  # the prefill
            while engine.has_unfinished():
                clock.wall.clear()
                clock.cpu.clear()
                w, c = time.perf_counter_ns(), time.thread_time_ns()
                engine.step()
                clock.wall["step"] = time.perf_counter_ns() - w
                clock.cpu["step"] = time.thread_time_ns() - c
                if rnd:
                    steps.append((dict(clock.wall), dict(clock.cpu)))


PHASES = ("layers (native)", "output projection (native)", "forward python", "logits python",
          "runner python", "sampler", "scheduler", "engine bookkeeping", "step")


def _phase(t: dict[str, int], name: str) -> float:
    """One phase's time from the nested timers (each outer one includes the inner ones)."""
    derived = {
        "forward python": t["forward"] - t["layers (native)"],
        "logits python": t["logits"] - t["output projection (native)"],
        "runner python": t["runner"] - t["forward"] - t["logits"],
        "engine bookkeeping": t["step"] - t["runner"] - t["sampler"] - t["scheduler"],
    }
    return derived.get(name, t.get(name, 0))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--gen", type=int, default=256)
    args = ap.parse_args(argv)
    load = os.getloadavg()[0]
    for path in args.files:
        phases = profile(path, args.rounds, args.gen)
        step_wall = phases["step"][0]
        rows = [[name, f"{wall:.3f}", f"{wall / step_wall * 100:.1f} %", f"{cpu:.3f}"]
                for name, (wall, cpu) in phases.items()]
        print(f"\n{path.name}: {args.rounds} rounds x {args.gen} decode steps, medians per step")
        print(bc.markdown_table(["phase", "wall ms", "of the step", "engine-thread CPU ms"], rows))
    print(f"\nload average: {load:.2f} before, {os.getloadavg()[0]:.2f} after")
    return 0


if __name__ == "__main__":
    sys.exit(main())
