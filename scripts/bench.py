#!/usr/bin/env python
"""HTTP benchmark of a triolm server: N concurrent streaming clients over the OpenAI API.

    python scripts/bench.py                          # start `triolm serve` on the F16 GGUF
    python scripts/bench.py --kinds F16 Q8_0 --concurrency 1 4 16
    python scripts/bench.py --url http://127.0.0.1:8000 --model-name m   # target a running server
    python scripts/bench.py --all                    # + engine-only figures and the peers
                                                     #   (llama.cpp, transformers), one report

Per concurrency level: time to first token p50/p99, inter-token latency p50/p99,
aggregate tok/s, per-stream decode tok/s; with one stream also prefill tok/s for 128-
and 1024-token prompts. Per server: start-up time (process start to /readyz), peak RSS,
event-loop lag p99/max during the most concurrent run (from /metrics). Greedy,
ignore_eos, 128 generated tokens, distinct random prompts (no prefix-cache hits).

Writes bench-results/bench-<time>.json, a markdown report (.md) and a PNG plot of
aggregate tok/s and TTFT against concurrency; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402

LAG = "triolm:event_loop_lag_seconds"


def start_triolm(model_path: Path, max_num_seqs: int, threads: int | None) -> tuple[subprocess.Popen, str, float]:
    port = bc.free_port()
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "triolm.cli", "serve", str(model_path), "--port", str(port),
           "--max-num-seqs", str(max_num_seqs), "--max-model-len", "2048", "--log-level", "warning"]
    bc.RESULTS.mkdir(parents=True, exist_ok=True)
    log_path = bc.RESULTS / f"triolm-server-{model_path.stem}.log"
    t0 = time.perf_counter()
    with open(log_path, "w") as log_file:  # not a pipe: a full pipe would block the server
        proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        bc.wait_ready(url + "/readyz", 300, proc)
    except Exception as exc:
        bc.stop_process(proc)
        raise RuntimeError(f"triolm server failed to start ({exc}); log: {log_path}") from exc
    return proc, url, time.perf_counter() - t0


def run_server_suite(url: str, style: str, model_name: str, args, label: str,
                     metrics: bool, seed0: int = 1000) -> dict:
    """The whole load suite against one server; returns per-level summaries."""
    import trio

    out: dict = {"label": label, "levels": {}, "prefill": {}}
    # warm-up: first requests pay one-time costs (thread pools, allocator, caches)
    trio.run(bc.run_load, url, style, model_name, bc.make_prompts(2, 16, seed0), 1, 8)
    for plen in args.prompt_lens:
        if plen == 128:
            continue  # measured by the concurrency-1 level below
        prompts = bc.make_prompts(args.single_requests, plen, seed0 + plen)
        bc.log(f"{label}: 1 stream, prompt {plen}")
        results, wall = trio.run(bc.run_load, url, style, model_name, prompts, 1, args.gen)
        out["prefill"][plen] = bc.summarize_load(results, wall, 1)
    for c in args.concurrency:
        n = args.single_requests if c == 1 else c * args.rounds
        prompts = bc.make_prompts(n, 128, seed0 + 7 * c)
        before = bc.scrape(url) if metrics else ""
        bc.log(f"{label}: {c} concurrent stream(s), {n} requests")
        results, wall = trio.run(bc.run_load, url, style, model_name, prompts, c, args.gen)
        s = bc.summarize_load(results, wall, c)
        if metrics:
            after = bc.scrape(url)
            p99, top, samples = bc.histogram_delta_quantile(
                bc.parse_histogram(before, LAG), bc.parse_histogram(after, LAG), 0.99)
            s["loop_lag_p99_ms_le"] = None if p99 is None else p99 * 1000
            s["loop_lag_max_ms_le"] = None if top is None else top * 1000
            exported_max = bc.gauge(after, "triolm:event_loop_lag_max_seconds")
            if exported_max is not None:
                s["loop_lag_max_ms"] = exported_max * 1000
            s["loop_lag_samples"] = samples
        out["levels"][c] = s
        bc.log(f"  -> {bc.fmt(s['aggregate_tps'])} tok/s aggregate, TTFT p50 {bc.fmt(s['ttft_p50_ms'], 0)} ms, "
               f"ITL p50 {bc.fmt(s['itl_p50_ms'], 1)} ms, errors {s['errors']}")
    one = out["levels"].get(1)
    if one:
        out["prefill"][128] = one
    return out


def bench_triolm(kind: str, args, paths) -> dict:
    model_path = paths.model_path(kind)
    bc.log(f"triolm {kind}: starting server on {model_path.name}")
    proc, url, startup = start_triolm(model_path, max(args.concurrency), args.threads)
    try:
        bc.log(f"triolm {kind}: ready in {startup:.2f} s")
        res = run_server_suite(url, "triolm", model_path.stem if model_path.is_file() else model_path.name,
                               args, f"triolm {kind}", metrics=True)
        res["startup_s"] = startup
        res["peak_rss_mb"] = bc.peak_rss_mb(proc.pid)
        health = _get_json(url + "/health")
        res["health"] = health
    finally:
        bc.stop_process(proc)
    res["kind"] = kind
    return res


def _get_json(url: str) -> dict:
    import httpx

    try:
        return httpx.get(url, timeout=5).json()
    except Exception:
        return {}


# ----------------------------------------------------------------------- report

def plot(report: dict, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        bc.log("matplotlib missing: no plot (pip install -e '.[bench]')")
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for series in report["servers"]:
        levels = series["levels"]
        cs = sorted(int(c) for c in levels)
        agg = [levels[c]["aggregate_tps"] if c in levels else levels[str(c)]["aggregate_tps"] for c in cs]
        ttft = [(levels[c] if c in levels else levels[str(c)])["ttft_p50_ms"] for c in cs]
        ax1.plot(cs, agg, marker="o", label=series["label"])
        ax2.plot(cs, ttft, marker="o", label=series["label"])
    for ax, title, unit in ((ax1, "Aggregate throughput", "tok/s"), (ax2, "Time to first token (p50)", "ms")):
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 2, 4, 8, 16])
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("concurrent streams")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax2.set_yscale("log")
    ax1.legend(fontsize=8)
    fig.suptitle("SmolLM-135M shape, 128-token prompts, 128 generated tokens, greedy (this machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def server_table(report: dict) -> str:
    rows = []
    for s in report["servers"]:
        for c, lv in sorted(s["levels"].items(), key=lambda kv: int(kv[0])):
            rows.append([s["label"], str(c), bc.fmt(lv["aggregate_tps"]), bc.fmt(lv["decode_tps_per_stream_median"]),
                         bc.fmt(lv["ttft_p50_ms"], 0), bc.fmt(lv["ttft_p99_ms"], 0),
                         bc.fmt(lv["itl_p50_ms"], 1), bc.fmt(lv["itl_p99_ms"], 1),
                         bc.fmt(lv.get("loop_lag_p99_ms_le"), 1), str(lv["errors"])])
    return bc.markdown_table(
        ["server", "streams", "aggregate tok/s", "decode tok/s per stream", "TTFT p50 ms", "TTFT p99 ms",
         "ITL p50 ms", "ITL p99 ms", "loop lag p99 ms (≤)", "errors"], rows)


def server_summary_table(report: dict) -> str:
    rows = []
    for s in report["servers"]:
        pre = s.get("prefill", {})
        p128 = (pre.get(128) or pre.get("128") or {}).get("prefill_tps_median")
        p1024 = (pre.get(1024) or pre.get("1024") or {}).get("prefill_tps_median")
        rows.append([s["label"], bc.fmt(s.get("startup_s"), 2), bc.fmt(s.get("peak_rss_mb"), 0),
                     bc.fmt(p128, 0), bc.fmt(p1024, 0)])
    return bc.markdown_table(["server", "start-up s", "peak RSS MB", "prefill tok/s (128, HTTP)",
                              "prefill tok/s (1024, HTTP)"], rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kinds", nargs="+", default=["F16", "Q8_0"],
                    help="model files to serve: GGUF types (F32 F16 Q8_0) or 'hf'")
    ap.add_argument("--url", default=None, help="benchmark this running server instead of starting one")
    ap.add_argument("--model-name", default="model", help="model id to send with --url")
    ap.add_argument("--style", choices=["triolm", "llamacpp"], default="triolm",
                    help="request dialect for --url (llamacpp: text prompt, min_tokens)")
    ap.add_argument("--concurrency", nargs="+", type=int, default=[1, 4, 16])
    ap.add_argument("--prompt-lens", nargs="+", type=int, default=[128, 1024])
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--single-requests", type=int, default=3, help="sequential requests at concurrency 1")
    ap.add_argument("--rounds", type=int, default=1, help="requests per client at concurrency > 1")
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="CPU threads for every engine, ours and the peers' (default: all cores)")
    ap.add_argument("--repeat", type=int, default=2, help="with --all: repetitions of engine/peer runs")
    ap.add_argument("--all", action="store_true", help="also engine-only figures and the peers")
    ap.add_argument("--no-peers", action="store_true", help="with --all: skip llama.cpp / transformers")
    args = ap.parse_args(argv)

    stamp = time.strftime("%Y%m%d-%H%M%S")
    report: dict = {"machine": bc.machine_info(), "args": vars(args), "servers": []}
    t_start = time.perf_counter()
    if args.url:
        res = run_server_suite(args.url, args.style, args.model_name, args, args.url,
                               metrics=args.style == "triolm")
        report["servers"].append(res)
    elif not args.all:
        paths = bc.bench_model(tuple(k for k in args.kinds if k != "hf"))
        for kind in args.kinds:
            report["servers"].append(bench_triolm(kind, args, paths))
    else:
        # Interleaved per weight file: engine-only, our server, llama.cpp in process, its
        # server, back to back, so each comparison sees the same machine load (which
        # drifts by tens of percent over minutes when the machine is shared).
        import bench_peers

        paths = bc.bench_model(tuple(k for k in args.kinds if k != "hf"))
        report["engine"] = {"results": []}
        report["peers"] = {"inproc": [], "servers": []}
        report["load"] = []
        peer_servers = []
        for kind in args.kinds:
            report["load"].append((kind, "start", os.getloadavg()[0]))
            eng = bench_peers.engine_figures(args, [kind])
            if eng:
                report["engine"]["results"] += eng["results"]
            report["servers"].append(bench_triolm(kind, args, paths))
            if not args.no_peers and kind != "hf":
                r = bench_peers.llamacpp_inproc(kind, args)
                if r:
                    report["peers"]["inproc"].append(r)
                r = bench_peers.llamacpp_server_safe(kind, args)
                if r:
                    peer_servers.append(r)
                    report["peers"]["servers"].append(r)
            report["load"].append((kind, "end", os.getloadavg()[0]))
        if not args.no_peers:
            r = bench_peers.transformers_inproc(args)
            if r:
                report["peers"]["inproc"].append(r)
        report["servers"].extend(peer_servers)
    report["elapsed_s"] = time.perf_counter() - t_start

    json_path = bc.save_json(f"bench-{stamp}.json", report)
    png = plot(report, bc.RESULTS / f"bench-{stamp}.png")
    md = [f"# triolm benchmark {stamp}", "", f"machine: {report['machine']}", "",
          f"1-minute load average per segment: {report.get('load', [])}", "",
          "## Servers under load", "", server_table(report), "", server_summary_table(report), ""]
    if args.all:
        import bench_peers

        md += bench_peers.report_sections(report)
    if png:
        md += ["", f"Plot: `{png.relative_to(bc.ROOT)}`"]
    md_path = bc.RESULTS / f"bench-{stamp}.md"
    md_path.write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"\nJSON: {json_path}\nreport: {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
