#!/usr/bin/env python
"""`triolm router` overhead per streamed token, and throughput with 1, 2, 3 backends.

    python scripts/bench_router.py --model /work/models/SmolLM2-135M-Instruct.Q4_1.gguf

Overhead: one backend, one router in front of it; rounds alternate a stream straight to
the backend's /v1/chat/completions and the same stream through the router (greedy,
`ignore_eos`, `--gen` tokens). Reported per token: the inter-token latency the client
sees each way (median over rounds), their difference against the backend's own ITL, and
the router process's CPU time per token (from /proc, the cleanest figure on a shared
machine: it is what the router adds whatever else runs).

Throughput: three backends; routers over 1, 2 and 3 of them; `--concurrency` streams at
once, `--requests` in all; generated tokens per second. All processes share this
machine's cores, so more backends cannot add compute here: the numbers show what the
router costs and how it spreads load, not a fleet's scaling (see docs/router.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import free_port, log, machine_info, save_json, stop_process, wait_ready  # noqa: E402

BIN = Path(sys.executable).parent
MSGS = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]


def start(argv: list[str], log_path: Path) -> subprocess.Popen:
    return subprocess.Popen(argv, stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})


def start_backend(model: str, port: int, logs: Path) -> subprocess.Popen:
    return start([str(BIN / "triolm"), "serve", model, "--port", str(port), "--max-num-seqs", "16",
                  "--kv-cache-memory", str(256 << 20), "--log-level", "warning"], logs / f"backend-{port}.log")


def start_router(model: str, ports: list[int], port: int, logs: Path) -> subprocess.Popen:
    argv = [str(BIN / "triolm"), "router", "--tokenizer", model, "--port", str(port), "--log-level", "warning"]
    for p in ports:
        argv += ["--backend", f"http://127.0.0.1:{p}"]
    return start(argv, logs / f"router-{port}.log")


def wait_backends(url: str, n: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = httpx.get(url + "/admin/backends", timeout=5).json()
            if sum(b["healthy"] for b in data["backends"]) == n:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url}: {n} backends not admitted")


def stream_itl(client: httpx.Client, url: str, gen: int) -> tuple[float, int]:
    """(median gap between content events, events) of one greedy stream."""
    body = {"messages": MSGS, "max_tokens": gen, "ignore_eos": True, "temperature": 0, "stream": True}
    stamps, buffer = [], b""
    with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for chunk in r.iter_bytes():
            buffer += chunk
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                if event.startswith(b"data: {") and b'"content"' in event and b'"role"' not in event:
                    stamps.append(time.perf_counter())
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return statistics.median(gaps), len(stamps)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def overhead(model: str, logs: Path, rounds: int, gen: int) -> dict:
    bport, rport = free_port(), free_port()
    backend = start_backend(model, bport, logs)
    router = start_router(model, [bport], rport, logs)
    direct_url, routed_url = f"http://127.0.0.1:{bport}", f"http://127.0.0.1:{rport}"
    try:
        wait_ready(direct_url + "/readyz", 300, backend)
        wait_backends(routed_url, 1)
        direct, routed, tokens, cpu = [], [], 0, 0.0
        with httpx.Client(timeout=300) as client:
            stream_itl(client, direct_url, 8)
            stream_itl(client, routed_url, 8)  # warm both paths
            for i in range(rounds):
                direct.append(stream_itl(client, direct_url, gen)[0])
                before = cpu_seconds(router.pid)
                itl, n = stream_itl(client, routed_url, gen)
                cpu += cpu_seconds(router.pid) - before
                routed.append(itl)
                tokens += n
                log(f"round {i}: ITL direct {direct[-1] * 1e3:.2f} ms, routed {itl * 1e3:.2f} ms")
    finally:
        stop_process(router)
        stop_process(backend)
    d, r = statistics.median(direct), statistics.median(routed)
    return {"rounds": rounds, "gen_tokens": gen, "itl_direct_ms": d * 1e3, "itl_routed_ms": r * 1e3,
            "itl_added_ms": (r - d) * 1e3, "itl_added_pct": (r / d - 1) * 100,
            "router_cpu_ms_per_token": cpu / tokens * 1e3, "router_cpu_pct_of_itl": cpu / tokens / d * 100}


def run_streams(url: str, concurrency: int, requests: int, gen: int) -> list[int]:
    """`requests` streams, `concurrency` at a time; the content events of each."""
    counts: list[int] = []
    todo = list(range(requests))
    lock = threading.Lock()

    def worker():
        with httpx.Client(timeout=600) as client:
            while True:
                with lock:
                    if not todo:
                        return
                    todo.pop()
                counts.append(stream_itl(client, url, gen)[1])

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return counts


def throughput(model: str, logs: Path, concurrency: int, requests: int, gen: int) -> list[dict]:
    ports = [free_port() for _ in range(3)]
    backends = [start_backend(model, p, logs) for p in ports]
    out = []
    try:
        for p, proc in zip(ports, backends, strict=True):
            wait_ready(f"http://127.0.0.1:{p}/readyz", 300, proc)
        for n in (1, 2, 3):
            rport = free_port()
            router = start_router(model, ports[:n], rport, logs)
            url = f"http://127.0.0.1:{rport}"
            try:
                wait_backends(url, n)
                start_t = time.perf_counter()
                counts = run_streams(url, concurrency, requests, gen)
                wall = time.perf_counter() - start_t
                served = httpx.get(url + "/admin/backends").json()["backends"]
                row = {"backends": n, "tokens": sum(counts), "seconds": wall, "tokens_per_s": sum(counts) / wall,
                       "requests_per_backend": [b["served"] for b in served]}
                log(json.dumps(row))
                out.append(row)
            finally:
                stop_process(router)
    finally:
        for proc in backends:
            stop_process(proc)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="/work/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--concurrency", type=int, default=12)
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--logs", default="/tmp/bench_router_logs")
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args()
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine_info(), "model": args.model, "load_avg_start": os.getloadavg()}
    result["overhead"] = overhead(args.model, logs, args.rounds, args.gen)
    log(json.dumps(result["overhead"]))
    if not args.skip_throughput:
        result["throughput"] = throughput(args.model, logs, args.concurrency, args.requests, args.gen)
    result["load_avg_end"] = os.getloadavg()
    log(f"saved {save_json('router.json', result)}")


if __name__ == "__main__":
    main()
