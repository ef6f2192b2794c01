#!/usr/bin/env python
"""Benchmark: where should Mistral chat-template tokenization run? (contract event-loop-001)

Strategies, each driven from a Trio event loop:
  inline   apply_mistral_chat_template called on the loop thread (what vLLM did: bug 24910)
  thread   async_apply_mistral_chat_template: a worker thread under a CapacityLimiter
  process  a trio-parallel worker process that holds its own tokenizer; ids come back
           as packed int32 bytes and are turned into a list in a thread, in slices,
           so neither unpickling nor list building holds the GIL for long
  auto     thread below --auto-kb KiB of message text, process at or above it

For each payload size (one user message of N KiB) it measures, while a 1 ms periodic
task ticks on the loop: loop gap between ticks p50/p99/max, request latency, and
throughput with 1 and 8 concurrent requests. It also measures clause EL-001.5: the
latency overhead of the async (thread) path over calling the sync function directly,
single request, idle loop (target < 5 %).

Prints a markdown table, shows progress on stderr, writes bench-results/tokenization.json.

  .venv/bin/python scripts/bench_tokenization.py                  # 10K..5M, v3 tokenizer
  .venv/bin/python scripts/bench_tokenization.py --sizes 10,100,500 --tokenizer tekken
"""

from __future__ import annotations

import argparse
import array
import functools
import json
import math
import os
import platform
import random
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import mistral_common
import trio
import trio_parallel
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

from triolm.prompting.mistral import (
    DEFAULT_TOKENIZATION_THREADS,
    apply_mistral_chat_template,
    async_apply_mistral_chat_template,
)

TICK_S = 0.001
_DATA = Path(mistral_common.__file__).parent / "data"
TOKENIZER_FILES = {
    "v3": _DATA / "mistral_instruct_tokenizer_240323.model.v3",  # = MistralTokenizer.v3()
    "tekken": _DATA / "tekken_240911.json",
}

# ------------------------------------------------------------------ payload

_WORDS = (
    "the of and to in is that for it as with was on be by this are at from or have an "
    "which not but they his her she he we you all one their there been has more if will "
    "tokenization event loop request latency mistral trio thread process server health "
    "café naïve Größe søster 東京 данные δεδομένα 🙂 1234 3.14159 foo_bar() {\"k\": [1, 2]}"
).split()


def payload_text(size_kb: int, seed: int = 0) -> str:
    """Deterministic prose-like text of `size_kb` KiB (UTF-8), some of it non-ASCII."""
    rng = random.Random(seed)
    target = size_kb * 1024
    parts, size = [], 0
    while size < target:
        piece = rng.choice(_WORDS) + ("\n" if rng.random() < 0.05 else " ")
        parts.append(piece)
        size += len(piece.encode())
    return "".join(parts).encode()[:target].decode("utf-8", errors="ignore")


# ------------------------------------------------------------------ process strategy

_WORKER_TOKENIZERS: dict[str, MistralTokenizer] = {}


def _worker_tokenizer(path: str) -> MistralTokenizer:
    tokenizer = _WORKER_TOKENIZERS.get(path)
    if tokenizer is None:
        tokenizer = _WORKER_TOKENIZERS[path] = MistralTokenizer.from_file(path)
    return tokenizer


def _worker_init(path: str) -> None:
    _worker_tokenizer(path)  # load once per worker process, before the first request


def _encode_in_worker(path: str, messages: list[dict[str, Any]]) -> bytes:
    ids = apply_mistral_chat_template(_worker_tokenizer(path), messages)
    return array.array("i", ids).tobytes()  # unpickles as one memcpy, unlike a list of ints


_SLICE = 1 << 16


def _ids_from_bytes(data: bytes) -> list[int]:
    packed = array.array("i")
    packed.frombytes(data)
    ids: list[int] = []
    for start in range(0, len(packed), _SLICE):  # short GIL holds: the loop thread gets turns
        ids += packed[start : start + _SLICE].tolist()
    return ids


class Strategies:
    def __init__(
        self, tokenizer: MistralTokenizer, path: Path, worker_ctx: Any, threads: int, workers: int, auto_kb: int = 32
    ):
        self.auto_threshold = auto_kb * 1024
        self.tokenizer = tokenizer
        self.path = str(path)
        self.worker_ctx = worker_ctx
        self.thread_limiter = trio.CapacityLimiter(threads)
        self.process_limiter = trio.CapacityLimiter(workers)

    async def inline(self, messages: list[dict[str, Any]]) -> list[int]:
        return apply_mistral_chat_template(self.tokenizer, messages)

    async def thread(self, messages: list[dict[str, Any]]) -> list[int]:
        return await async_apply_mistral_chat_template(self.tokenizer, messages, limiter=self.thread_limiter)

    async def process(self, messages: list[dict[str, Any]]) -> list[int]:
        data = await self.worker_ctx.run_sync(
            _encode_in_worker, self.path, messages, limiter=self.process_limiter
        )
        return await trio.to_thread.run_sync(_ids_from_bytes, data, limiter=self.thread_limiter)

    async def auto(self, messages: list[dict[str, Any]]) -> list[int]:
        """Thread for small chats (no IPC cost), process for large ones (no GIL coupling)."""
        if _text_size(messages) < self.auto_threshold:
            return await self.thread(messages)
        return await self.process(messages)


def _text_size(messages: list[dict[str, Any]]) -> int:
    """Characters of string content: O(number of messages), cheap enough for the loop."""
    size = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            size += len(content)
        elif isinstance(content, list):
            size += sum(len(part.get("text") or "") for part in content if isinstance(part, dict))
    return size


# ------------------------------------------------------------------ measurement


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class RunQueueClock:
    """Time this thread spent runnable but waiting for a CPU (Linux schedstat). On a
    shared machine that is the OS's doing, not ours: a gap minus the run-queue wait
    inside it is what the event loop lost to the GIL and to its own work."""

    def __init__(self) -> None:
        try:
            self._fd: int | None = os.open(f"/proc/self/task/{threading.get_native_id()}/schedstat", os.O_RDONLY)
        except OSError:
            self._fd = None

    def seconds(self) -> float:
        if self._fd is None:
            return 0.0
        return int(os.pread(self._fd, 128, 0).split()[1]) / 1e9

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)


async def with_loop_monitor(work) -> tuple[Any, list[float], list[float], float]:
    """Run `work()` while a task ticks every 1 ms; return (result, tick gaps, the same
    gaps minus the loop thread's run-queue wait, wall time)."""
    gaps: list[float] = []
    own: list[float] = []
    recording = False
    clock = RunQueueClock()

    async def ticker() -> None:
        last, last_rq = time.perf_counter(), clock.seconds()
        while True:
            await trio.sleep(TICK_S)
            now, rq = time.perf_counter(), clock.seconds()
            if recording:
                gaps.append(now - last)
                own.append(now - last - (rq - last_rq))
            last, last_rq = now, rq

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            await trio.sleep(0.01)
            recording = True
            start = time.perf_counter()
            result = await work()
            wall = time.perf_counter() - start
            await trio.sleep(2 * TICK_S)
            recording = False
            nursery.cancel_scope.cancel()
    finally:
        clock.close()
    return result, gaps, own, wall


def gap_stats(gaps: list[float], own: list[float]) -> dict[str, float]:
    return {
        "ticks": len(gaps),
        "p50": pct(gaps, 0.5) * 1e3,
        "p99": pct(gaps, 0.99) * 1e3,
        "max": max(gaps) * 1e3,
        "p99_minus_cpu_wait": pct(own, 0.99) * 1e3,
        "max_minus_cpu_wait": max(own) * 1e3,
    }


async def run_load(strategy, messages, expected: list[int], requests: int, concurrency: int) -> dict[str, Any]:
    latencies: list[float] = []
    outputs: list[list[int]] = []
    remaining = requests

    async def client() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            start = time.perf_counter()
            outputs.append(await strategy(messages))
            latencies.append(time.perf_counter() - start)
            # A server does network I/O between requests; without this checkpoint the
            # inline strategy would run all its requests as one uninterrupted block.
            await trio.lowlevel.checkpoint()

    async def all_clients() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(client)

    _, gaps, own, wall = await with_loop_monitor(all_clients)
    # Checked after the measured window: comparing million-element lists is itself a
    # GIL-holding C call that would show up as loop lag.
    if any(ids != expected for ids in outputs):
        raise AssertionError("strategy returned different tokens")
    return {
        "requests": requests,
        "wall_s": wall,
        "throughput_rps": requests / wall,
        "latency_ms": {"p50": pct(latencies, 0.5) * 1e3, "max": max(latencies) * 1e3},
        "loop_gap_ms": gap_stats(gaps, own),
    }


async def measure_overhead(strategies: Strategies, messages, repeats: int) -> dict[str, Any]:
    """EL-001.5: single request on an idle loop, sync call vs thread vs process,
    interleaved so drifting machine load hits all three alike. Reports the median
    and the minimum: on a shared machine noise only ever adds time, so the minimum
    is the cleanest estimate of the intrinsic cost."""
    times: dict[str, list[float]] = {"sync": [], "thread": [], "process": []}

    async def sync_call(msgs):
        return apply_mistral_chat_template(strategies.tokenizer, msgs)

    calls = {"sync": sync_call, "thread": strategies.thread, "process": strategies.process}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            await call(messages)
            times[name].append(time.perf_counter() - start)
    row: dict[str, Any] = {"repeats": repeats}
    for name, values in times.items():
        row[f"{name}_ms"] = {"median": statistics.median(values) * 1e3, "min": min(values) * 1e3}
    for name in ("thread", "process"):
        row[f"{name}_overhead_pct"] = {
            stat: (row[f"{name}_ms"][stat] / row["sync_ms"][stat] - 1) * 100 for stat in ("median", "min")
        }
    return row


async def idle_baseline(seconds: float) -> dict[str, float]:
    """Tick gaps with nothing else to do: the machine's own noise floor."""
    _, gaps, own, _ = await with_loop_monitor(lambda: trio.sleep(seconds))
    return gap_stats(gaps, own)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    path = TOKENIZER_FILES[args.tokenizer]
    tokenizer = MistralTokenizer.from_file(str(path))
    sizes = [int(s) for s in args.sizes.split(",")]
    names = args.strategies.split(",")
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "mistral_common": mistral_common.__version__,
            "switch_interval_s": sys.getswitchinterval(),
        },
        "tokenizer": args.tokenizer,
        "tick_s": TICK_S,
        "threads": args.threads,
        "process_workers": args.workers,
        "auto_threshold_kb": args.auto_kb,
        "overhead": [],
        "runs": [],
    }
    async with trio_parallel.open_worker_context(
        init=functools.partial(_worker_init, str(path)), idle_timeout=3600
    ) as worker_ctx:
        strategies = Strategies(tokenizer, path, worker_ctx, args.threads, args.workers, args.auto_kb)
        progress(f"warming up {args.workers} worker processes (spawn + tokenizer load)…")
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(args.workers):
                nursery.start_soon(strategies.process, [{"role": "user", "content": "warm up"}])
        results["process_cold_start_s"] = time.perf_counter() - start

        results["load_avg_1m_start"] = os.getloadavg()[0]
        results["idle_loop_gap_ms"] = await idle_baseline(2.0)
        total = len(sizes) * (1 + len(names) * len(concurrencies))
        step = 0
        for size_kb in sizes:
            messages = [{"role": "user", "content": payload_text(size_kb)}]
            expected = apply_mistral_chat_template(tokenizer, messages)
            step += 1
            start = time.perf_counter()
            apply_mistral_chat_template(tokenizer, messages)
            estimate = time.perf_counter() - start
            if not args.no_overhead:
                repeats = max(args.repeats, min(200, math.ceil(args.budget / estimate)))
                progress(f"[{step}/{total}] {size_kb} KB: overhead, {repeats} interleaved repeats…")
                overhead = await measure_overhead(strategies, messages, repeats)
                overhead.update(size_kb=size_kb, prompt_tokens=len(expected), load_avg_1m=os.getloadavg()[0])
                results["overhead"].append(overhead)
            for concurrency in concurrencies:
                # Enough requests for ~budget seconds of sync work, at least one per client.
                n = max(concurrency, min(args.max_requests, math.ceil(args.budget / estimate)))
                n = math.ceil(n / concurrency) * concurrency
                for name in names:
                    step += 1
                    progress(f"[{step}/{total}] {size_kb} KB {name:7} c={concurrency} ({n} requests)…")
                    run = await run_load(getattr(strategies, name), messages, expected, n, concurrency)
                    run.update(
                        strategy=name, size_kb=size_kb, concurrency=concurrency, load_avg_1m=os.getloadavg()[0]
                    )
                    results["runs"].append(run)
                    gap = run["loop_gap_ms"]
                    progress(
                        f"    latency p50 {run['latency_ms']['p50']:.1f} ms, {run['throughput_rps']:.2f} req/s, "
                        f"loop gap p50/p99/max {gap['p50']:.1f}/{gap['p99']:.1f}/{gap['max']:.1f} ms"
                    )
    return results


def size_label(size_kb: int) -> str:
    return f"{size_kb // 1024} MB" if size_kb >= 1024 and size_kb % 1024 == 0 else f"{size_kb} KB"


def markdown(results: dict[str, Any]) -> str:
    machine = results["machine"]
    lines = [
        f"Tokenizer `{results['tokenizer']}`, {machine['cpus']} CPUs, Python {machine['python']}, "
        f"mistral-common {machine['mistral_common']}, switch interval {machine['switch_interval_s'] * 1e3:g} ms, "
        f"{results['threads']} tokenizer thread(s), {results['process_workers']} worker processes, "
        f"auto = process from {results['auto_threshold_kb']} KB "
        f"(cold start {results['process_cold_start_s']:.2f} s). Loop gap = time between ticks of a 1 ms task; "
        "'minus CPU wait' subtracts the time the loop thread sat in the OS run queue (other load on a shared "
        "machine), leaving what the loop lost to the GIL and its own work.",
        "",
        "| payload | strategy | concurrency | latency p50 (ms) | throughput (req/s) | loop gap p50 / p99 / max (ms) "
        "| gap p99 / max minus CPU wait (ms) | load avg |",
        "|---|---|---:|---:|---:|---|---|---:|",
    ]
    idle = results["idle_loop_gap_ms"]
    lines.append(
        f"| — | idle loop (noise floor) | — | — | — | {idle['p50']:.1f} / {idle['p99']:.1f} / {idle['max']:.1f} | "
        f"{idle['p99_minus_cpu_wait']:.1f} / {idle['max_minus_cpu_wait']:.1f} | {results['load_avg_1m_start']:.1f} |"
    )
    for run in results["runs"]:
        gap = run["loop_gap_ms"]
        lines.append(
            f"| {size_label(run['size_kb'])} | {run['strategy']} | {run['concurrency']} | "
            f"{run['latency_ms']['p50']:.1f} | {run['throughput_rps']:.2f} | "
            f"{gap['p50']:.1f} / {gap['p99']:.1f} / {gap['max']:.1f} | "
            f"{gap['p99_minus_cpu_wait']:.1f} / {gap['max_minus_cpu_wait']:.1f} | {run['load_avg_1m']:.1f} |"
        )
    if not results["overhead"]:
        return "\n".join(lines)
    lines += [
        "",
        "EL-001.5 — latency of one request on an idle loop; min (median) of interleaved repeats. "
        "Target: thread overhead < 5 %.",
        "",
        "| payload | prompt tokens | repeats | sync (ms) | thread (ms) | thread overhead "
        "| process (ms) | process overhead |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["overhead"]:
        ms = lambda name: f"{row[name + '_ms']['min']:.1f} ({row[name + '_ms']['median']:.1f})"  # noqa: E731, B023
        over = lambda name: (  # noqa: E731
            f"{row[name + '_overhead_pct']['min']:+.1f} % ({row[name + '_overhead_pct']['median']:+.1f} %)"  # noqa: B023 (called within this iteration)
        )
        lines.append(
            f"| {size_label(row['size_kb'])} | {row['prompt_tokens']} | {row['repeats']} | {ms('sync')} | "
            f"{ms('thread')} | {over('thread')} | {ms('process')} | {over('process')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,100,500,1024,5120", help="payload sizes in KiB (default: %(default)s)")
    parser.add_argument("--tokenizer", choices=sorted(TOKENIZER_FILES), default="v3")
    parser.add_argument("--strategies", default="inline,thread,process,auto")
    parser.add_argument("--auto-kb", type=int, default=32, help="auto: process at or above this many KiB of text")
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--threads", type=int, default=DEFAULT_TOKENIZATION_THREADS, help="tokenizer threads")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes")
    parser.add_argument("--repeats", type=int, default=3, help="minimum repeats for the overhead measurement")
    parser.add_argument("--budget", type=float, default=2.0, help="seconds of sync work per load run")
    parser.add_argument("--max-requests", type=int, default=64)
    parser.add_argument("--no-overhead", action="store_true", help="skip the EL-001.5 measurement")
    parser.add_argument("--switch-interval", type=float, default=None, help="sys.setswitchinterval (s)")
    parser.add_argument("--out", default="bench-results/tokenization.json")
    args = parser.parse_args()
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)

    results = trio.run(bench, args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(markdown(results))
    progress(f"wrote {out}")


if __name__ == "__main__":
    main()
