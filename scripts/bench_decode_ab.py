#!/usr/bin/env python
"""Single-stream decode of two triolm source trees, A/B, through the real server.

    python scripts/bench_decode_ab.py --base-src /tmp/base/src --files /work/models/SmolLM2-135M-Instruct.Q4_1.gguf
    python scripts/bench_decode_ab.py --base-src /tmp/base/src --rounds 12 --gen 128 --files A.gguf B.gguf

Per file, `triolm serve` runs once from `--base-src` (A) and once from `--new-src` (B,
default: this checkout's src/), side by side; the one not measured is frozen with SIGSTOP
so its idle wake-ups steal nothing. Each round streams one greedy completion (a 128-token
prompt of random ordinary tokens, new per round, `--gen` tokens, ignore_eos) from each,
the order alternating by round, with a bare-socket client (~20 µs of CPU per token, so the
client takes little from the two cores the server shares with it). Per request:

- tok/s after the first token ((n-1) / (last - first) over the SSE events);
- CPU per token of the server's event-loop thread and of the whole process (from
  /proc/<pid>/task/*/stat): less sensitive to other load on a shared machine than wall time.

Reported: medians over rounds, the B/A ratio of each round's pair, and the load average
before and after (other work on the machine moves wall-clock figures; interleaving keeps
the comparison fair, not the absolute numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402

REPO_SRC = Path(__file__).resolve().parent.parent / "src"


def start_server(src: Path, model: Path, tag: str) -> tuple[subprocess.Popen, str]:
    port = bc.free_port()
    env = dict(os.environ, PYTHONPATH=str(src), OMP_WAIT_POLICY="PASSIVE")
    cmd = [sys.executable, "-m", "triolm.cli", "serve", str(model), "--port", str(port),
           "--max-num-seqs", "16", "--max-model-len", "2048", "--log-level", "warning"]
    bc.RESULTS.mkdir(parents=True, exist_ok=True)
    with open(bc.RESULTS / f"ab-{tag}-{model.stem}.log", "w") as log_file:
        proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    bc.wait_ready(url + "/readyz", 300, proc)
    return proc, url


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds so far of each thread of a process, by thread id."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[tid] = (int(fields[11]) + int(fields[12])) / tick
    return out


def stream_times(url: str, model: str, prompt: list[int], gen: int) -> list[float]:
    """One streamed completion over a bare socket: a timestamp per SSE `data:` event."""
    host, port = url.split("//", 1)[1].split(":")
    payload = json.dumps(bc.completion_body("triolm", model, prompt, gen)).encode()
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n").encode()
    times: list[float] = []
    tail = b""
    with socket.create_connection((host, int(port)), timeout=600) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(head + payload)
        while data := sock.recv(65536):
            now = time.perf_counter()
            window = tail + data  # an event marker split across two reads counts once
            times.extend([now] * (window.count(b"data: ") - tail.count(b"data: ")))
            tail = window[-8:]
    if len(times) < gen:
        raise RuntimeError(f"the stream carried {len(times)} events for {gen} tokens")
    return times[:gen]  # the token chunks; then usage and [DONE]


def measure(proc: subprocess.Popen, url: str, model: str, prompt: list[int], gen: int) -> dict:
    loop_tid = str(proc.pid)  # the main thread runs the event loop
    before = thread_cpu(proc.pid)
    times = stream_times(url, model, prompt, gen)
    after = thread_cpu(proc.pid)
    total = sum(v - before.get(t, 0.0) for t, v in after.items())
    return {"tok_s": (len(times) - 1) / (times[-1] - times[0]),
            "loop_cpu_ms_per_token": (after[loop_tid] - before[loop_tid]) / gen * 1000,
            "cpu_ms_per_token": total / gen * 1000}


def run_file(model: Path, args) -> dict:
    procs = {"A": start_server(Path(args.base_src), model, "A"),
             "B": start_server(Path(args.new_src), model, "B")}
    try:
        for p, _ in procs.values():
            p.send_signal(signal.SIGSTOP)
        rounds = []
        for i in range(args.rounds + 1):  # round 0 warms both up and is not counted
            prompt = bc.make_prompts(1, 128, 5000 + i)[0]
            got = {}
            for tag in ("AB" if i % 2 == 0 else "BA"):
                proc, url = procs[tag]
                proc.send_signal(signal.SIGCONT)
                try:
                    got[tag] = measure(proc, url, model.stem, prompt, args.gen)
                finally:
                    proc.send_signal(signal.SIGSTOP)
            if i == 0:
                continue
            got["load"] = os.getloadavg()[0]
            rounds.append(got)
            bc.log(f"{model.name} round {i}: A {got['A']['tok_s']:.1f} tok/s, B {got['B']['tok_s']:.1f} "
                   f"tok/s (B/A {got['B']['tok_s'] / got['A']['tok_s']:.3f}); loop CPU ms/token A "
                   f"{got['A']['loop_cpu_ms_per_token']:.3f} B {got['B']['loop_cpu_ms_per_token']:.3f}; "
                   f"load {got['load']:.2f}")
    finally:
        for p, _ in procs.values():
            p.send_signal(signal.SIGCONT)
            bc.stop_process(p)
    med = {tag: {k: bc.median([r[tag][k] for r in rounds]) for k in rounds[0][tag]} for tag in "AB"}
    return {"rounds": rounds, "median": med,
            "median_ratio_tok_s": bc.median([r["B"]["tok_s"] / r["A"]["tok_s"] for r in rounds])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-src", required=True, help="A: a triolm src/ directory (e.g. a `git archive` of main)")
    ap.add_argument("--new-src", default=str(REPO_SRC), help="B: default this checkout's src/")
    ap.add_argument("--files", nargs="+", type=Path, required=True, help="GGUF files")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--gen", type=int, default=128)
    args = ap.parse_args(argv)
    load_before = os.getloadavg()
    report = {"machine": bc.machine_info(), "load_before": load_before, "files": {}}
    rows = []
    for model in args.files:
        r = run_file(model, args)
        report["files"][model.name] = r
        a, b = r["median"]["A"], r["median"]["B"]
        rows.append([model.name, f"{a['tok_s']:.1f}", f"{b['tok_s']:.1f}", f"{r['median_ratio_tok_s']:.3f}",
                     f"{a['loop_cpu_ms_per_token']:.3f}", f"{b['loop_cpu_ms_per_token']:.3f}",
                     f"{a['cpu_ms_per_token']:.2f}", f"{b['cpu_ms_per_token']:.2f}", str(len(r["rounds"]))])
    report["load_after"] = os.getloadavg()
    print(bc.markdown_table(["file", "A tok/s", "B tok/s", "B/A (median of pairs)", "A loop CPU ms/tok",
                             "B loop CPU ms/tok", "A CPU ms/tok", "B CPU ms/tok", "rounds"], rows))
    print(f"load average before {load_before[0]:.2f}, after {report['load_after'][0]:.2f}")
    print(f"JSON: {bc.save_json(time.strftime('decode-ab-%Y%m%d-%H%M%S.json'), report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
