"""A small chat's time to first token, idle and while big /tokenize requests are in flight.

Starts `triolm serve MODEL` as a subprocess (the real CLI), measures a ~0.5 KB chat's
time to first streamed token (TTFT) on the idle server, then again while four 15 MB
`/tokenize` requests are being tokenized (target: < 2x idle, contract HOSTILE-LANE-004).
`--one-lane` runs the same with every request in one lane (TRIOLM_SMALL_WORK_CHARS=0),
the behaviour without lanes, for comparison. `--control-burn` replaces the big requests
by one process spinning on a CPU core (what one busy tokenizer thread takes from the
machine) — the part of the slowdown that is CPU contention, not queueing.

    PYTHONPATH=src python scripts/bench_hostile_lanes.py /work/models/SmolLM2-135M-Instruct.Q4_1.gguf
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

import httpx

CHAT = [{"role": "system", "content": "You are a concise assistant. " * 4},
        {"role": "user", "content": ("Summarise in one line why the sky is blue, mentioning Rayleigh "
                                     "scattering, wavelength and the angle of the sun. ") * 3}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def varied_text(chars: int, seed: int) -> str:
    """Text from 50,000 distinct words, so the tokenizer's word cache cannot shortcut it."""
    rng = random.Random(seed)
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 9))) for _ in range(50_000)]
    return " ".join(rng.choices(words, k=chars // 6))[:chars]


def ttft(client: httpx.Client, timeout: float) -> float:
    start = time.perf_counter()
    body = {"messages": CHAT, "max_tokens": 4, "stream": True, "temperature": 0}
    with client.stream("POST", "/v1/chat/completions", json=body, timeout=timeout) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[len("data: "):])["choices"]
            if choices and choices[0]["delta"].get("content"):
                return time.perf_counter() - start
    raise RuntimeError("no content token streamed")


def measure(client: httpx.Client, rounds: int, timeout: float) -> list[float]:
    return [ttft(client, timeout) for _ in range(rounds)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--big-mb", type=float, default=15.0)
    parser.add_argument("--big-requests", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--one-lane", action="store_true", help="every request in one lane (no small lane)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds one measured chat may take")
    parser.add_argument("--control-burn", action="store_true",
                        help="instead of big requests, one process spinning on a core")
    args = parser.parse_args()

    port = free_port()
    env = {**os.environ}
    if args.one_lane:
        env["TRIOLM_SMALL_WORK_CHARS"] = "0"
    server = subprocess.Popen([sys.executable, "-m", "triolm.cli", "serve", args.model, "--port", str(port),
                               "--log-level", "warning"], env=env)
    base = f"http://127.0.0.1:{port}"
    bodies = [] if args.control_burn else [json.dumps({"prompt": varied_text(int(args.big_mb * 1e6), seed)}).encode()
                                           for seed in range(args.big_requests)]
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, "server exited"
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server not ready"
            time.sleep(0.2)
        with httpx.Client(base_url=base) as client:
            measure(client, 3, args.timeout)  # warm-up
            idle = measure(client, args.rounds, args.timeout)
            finished: list[float] = []

            def big(body: bytes) -> None:
                try:
                    httpx.post(base + "/tokenize", content=body, timeout=3600,
                               headers={"Content-Type": "application/json"})
                    finished.append(time.monotonic())
                except httpx.HTTPError:
                    pass

            burner = None
            if args.control_burn:
                burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            else:
                for body in bodies:
                    threading.Thread(target=big, args=(body,), daemon=True).start()
            time.sleep(3.0)  # the bodies are uploaded and parsed; the first is being tokenized
            try:
                loaded = measure(client, args.rounds, args.timeout)
            except httpx.TimeoutException:
                loaded = [float("inf")]
            in_flight = 0 if burner else args.big_requests - len(finished)
            if burner is not None:
                burner.kill()
                burner.wait()
        idle_ms, loaded_ms = statistics.median(idle) * 1e3, statistics.median(loaded) * 1e3
        result = {"idle_ttft_ms": {"median": round(idle_ms, 1), "max": round(max(idle) * 1e3, 1)},
                  "loaded_ttft_ms": {"median": round(loaded_ms, 1), "max": round(max(loaded) * 1e3, 1)},
                  "ratio_median": round(loaded_ms / idle_ms, 2), "big_requests_still_in_flight": in_flight,
                  "big_request_mb": args.big_mb, "big_requests": args.big_requests,
                  "lanes": "one" if args.one_lane else "small+large", "rounds": args.rounds,
                  "load": "one spinning process" if args.control_burn else "big /tokenize requests",
                  "loadavg_1min": os.getloadavg()[0]}
        print(json.dumps(result, indent=2))
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()
