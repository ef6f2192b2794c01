#!/usr/bin/env python
"""The peers, on the same weights and prompts: llama.cpp (through llama-cpp-python, in
process and as its OpenAI server under the same concurrent load) and Hugging Face
transformers `generate`. Usually driven by `bench.py --all`; alone:

    python scripts/bench_peers.py --kinds F16 Q8_0          # prints a table and ratios
    python scripts/bench_peers.py --peer llamacpp --kind F16  # one peer, JSON on stdout

Every peer runs in its own subprocess (isolated memory, threads and crashes). Greedy,
128 generated tokens with end-of-sequence suppressed, 128- and 1024-token prompts.

llama-cpp-python notes: `Llama.scores` stays zero unless `logits_all=True` (not needed
here: we time generation only). Its repacked/AMX weight buffers crash on this machine's
Q8_0 file (segfault in the first eval), so model loading disables "extra buffer types"
for every file (no effect on F16, which is not repacked).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402

# Run before llama_cpp builds its first model: turn off extra (repacked) buffer types.
LLAMACPP_PATCH = """
import llama_cpp.llama_cpp as _ll
_orig = _ll.llama_model_default_params
def _params():
    p = _orig()
    p.use_extra_bufts = False
    return p
_ll.llama_model_default_params = _params
"""


def have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# --------------------------------------------------------------- in-process peers

def peer_llamacpp(kind: str, args) -> dict:
    exec(LLAMACPP_PATCH, {})
    from llama_cpp import Llama

    paths = bc.bench_model((kind,))
    t0 = time.perf_counter()
    llm = Llama(model_path=str(paths.model_path(kind)), n_ctx=2048, n_batch=512,
                n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
    load_s = time.perf_counter() - t0
    out: dict = {"peer": "llama.cpp (in-process)", "kind": kind, "load_s": load_s, "runs": {}}
    llm.eval(bc.make_prompts(1, 16, 5)[0])  # warm-up
    for rep in range(args.repeat):
        for plen in args.prompt_lens:
            prompt = bc.make_prompts(1, plen, 200 + rep * 10 + plen)[0]
            llm.reset()
            t0 = time.perf_counter()
            llm.eval(prompt)
            prefill = time.perf_counter() - t0
            n, times = 0, []
            for _tok in llm.generate(prompt, temp=0.0, reset=True,
                                     logits_processor=_no_eos(llm.token_eos())):
                times.append(time.perf_counter())
                n += 1
                if n >= args.gen:
                    break
            # generate() re-used the evaluated prompt (same tokens), so times[0] is the
            # first decode step after an (almost) free prefill.
            decode = (len(times) - 1) / (times[-1] - times[0])
            out["runs"].setdefault(str(plen), []).append({"prefill_tps": plen / prefill, "decode_tps": decode})
            bc.log(f"  llama.cpp {kind} prompt {plen}: prefill {plen / prefill:.0f} tok/s, decode {decode:.1f} tok/s")
    out["summary"] = _summary(out["runs"])
    return out


def _no_eos(eos: int):
    import numpy as np

    def proc(_ids, scores):
        scores[eos] = -np.inf
        return scores

    from llama_cpp import LogitsProcessorList

    return LogitsProcessorList([proc])


def peer_transformers(kind: str, args) -> dict:
    import torch
    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    paths = bc.bench_model(())
    t0 = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(paths.hf_dir, dtype=torch.float32).eval()
    load_s = time.perf_counter() - t0
    out: dict = {"peer": "transformers generate", "kind": "hf float32", "load_s": load_s, "runs": {}}
    gen_kw = dict(do_sample=False, pad_token_id=0)
    with torch.inference_mode():
        model.generate(torch.tensor([bc.make_prompts(1, 16, 5)[0]]), max_new_tokens=4, **gen_kw)
        for rep in range(args.repeat):
            for plen in args.prompt_lens:
                ids = torch.tensor([bc.make_prompts(1, plen, 300 + rep * 10 + plen)[0]])
                t0 = time.perf_counter()
                model.generate(ids, max_new_tokens=1, min_new_tokens=1, **gen_kw)
                prefill = time.perf_counter() - t0
                t0 = time.perf_counter()
                model.generate(ids, max_new_tokens=args.gen, min_new_tokens=args.gen, **gen_kw)
                total = time.perf_counter() - t0
                decode = (args.gen - 1) / max(total - prefill, 1e-9)
                out["runs"].setdefault(str(plen), []).append({"prefill_tps": plen / prefill, "decode_tps": decode})
                bc.log(f"  transformers prompt {plen}: prefill {plen / prefill:.0f} tok/s, decode {decode:.1f} tok/s")
    out["summary"] = _summary(out["runs"])
    return out


def _summary(runs: dict) -> dict:
    return {plen: {m: bc.median([r[m] for r in rs]) for m in ("prefill_tps", "decode_tps")}
            for plen, rs in runs.items()}


# ------------------------------------------------------------------- server peer

def llamacpp_server(kind: str, args) -> dict:
    """llama-cpp-python's OpenAI server under the same load as triolm's."""
    import bench

    paths = bc.bench_model((kind,))
    port = bc.free_port()
    code = LLAMACPP_PATCH + "\nimport sys\nfrom llama_cpp.server.__main__ import main\nsys.exit(main())\n"
    cmd = [sys.executable, "-c", code, "--model", str(paths.model_path(kind)), "--host", "127.0.0.1",
           "--port", str(port), "--n_ctx", "2048", "--model_alias", "model",
           # by default a new request interrupts the running one: serve them in turn instead
           "--interrupt_requests", "False"]
    if args.threads:
        cmd += ["--n_threads", str(args.threads), "--n_threads_batch", str(args.threads)]
    bc.log(f"llama.cpp server {kind}: starting")
    t0 = time.perf_counter()
    log_path = bc.RESULTS / f"llamacpp-server-{kind}.log"
    bc.RESULTS.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log_file:  # a pipe would fill up and block the server
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        bc.wait_ready(url + "/v1/models", 300, proc)
        startup = time.perf_counter() - t0
        res = bench.run_server_suite(url, "llamacpp", "model", args, f"llama-cpp-python server {kind}",
                                     metrics=False)
        res["startup_s"] = startup
        res["peak_rss_mb"] = bc.peak_rss_mb(proc.pid)
    except Exception as exc:
        raise RuntimeError(f"llama.cpp server {kind} failed: {exc}; log: {log_path}") from exc
    finally:
        bc.stop_process(proc)
    res["kind"] = kind
    return res


# ------------------------------------------------------------------ orchestration

def _subprocess_json(argv: list[str], timeout: float = 1800) -> dict | None:
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *argv],
                          stdout=subprocess.PIPE, stderr=None, text=True, timeout=timeout)
    if proc.returncode != 0:
        bc.log(f"peer {' '.join(argv)} failed with code {proc.returncode}")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _common_argv(args) -> list[str]:
    argv = ["--gen", str(args.gen), "--repeat", str(getattr(args, "repeat", 2)),
            "--prompt-lens", *map(str, args.prompt_lens)]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    return argv


def engine_figures(args, kinds: list[str]) -> dict | None:
    """bench_engine.py in a subprocess, same kinds/concurrency as the HTTP runs."""
    out = f"engine-for-bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    cmd = [sys.executable, str(Path(__file__).resolve().parent / "bench_engine.py"),
           "--kinds", *kinds, "--concurrency", *map(str, args.concurrency),
           "--prompt-lens", *map(str, args.prompt_lens), "--gen", str(args.gen),
           "--repeat", str(getattr(args, "repeat", 2)), "--out", out]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    bc.log(f"engine-only figures {' '.join(kinds)} (bench_engine.py)")
    if subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode != 0:
        return None
    return json.loads((bc.RESULTS / out).read_text())


def llamacpp_inproc(kind: str, args) -> dict | None:
    if not have("llama_cpp"):
        bc.log("llama-cpp-python not installed (pip install -e '.[bench]'): no llama.cpp figures")
        return None
    bc.log(f"llama.cpp in-process {kind}")
    return _subprocess_json(["--peer", "llamacpp", "--kind", kind, *_common_argv(args)])


def llamacpp_server_safe(kind: str, args) -> dict | None:
    if not (have("llama_cpp") and have("uvicorn") and have("sse_starlette")):
        bc.log("llama-cpp-python[server] missing: no llama.cpp server figures")
        return None
    try:
        return llamacpp_server(kind, args)
    except Exception as exc:
        bc.log(str(exc))
        return None


def transformers_inproc(args) -> dict | None:
    if not have("transformers"):
        return None
    bc.log("transformers generate (float32, HF directory)")
    return _subprocess_json(["--peer", "transformers", "--kind", "hf", *_common_argv(args)])


def run_peers(args, paths) -> dict:
    result: dict = {"inproc": [], "servers": []}
    for kind in args.kinds:
        if kind == "hf":
            continue
        r = llamacpp_inproc(kind, args)
        if r:
            result["inproc"].append(r)
        r = llamacpp_server_safe(kind, args)
        if r:
            result["servers"].append(r)
    r = transformers_inproc(args)
    if r:
        result["inproc"].append(r)
    return result


def _lv(server: dict, c: int) -> dict:
    levels = server.get("levels", {})
    return levels.get(c) or levels.get(str(c)) or {}


def _ratio(a, b) -> str:
    return "–" if not a or not b else f"{a / b:.2f}×"


def report_sections(report: dict) -> list[str]:
    """Markdown: single-stream table (engine, HTTP, peers), ratios, overhead, targets."""
    lines: list[str] = []
    engine = {r["kind"]: r for r in (report.get("engine") or {}).get("results", [])}
    ours = {s["kind"]: s for s in report["servers"] if s.get("kind") and s["label"].startswith("triolm")}
    peers_srv = {s["kind"]: s for s in report["servers"] if s["label"].startswith("llama-cpp")}
    inproc = (report.get("peers") or {}).get("inproc", [])
    lcpp = {r["kind"]: r for r in inproc if r["peer"].startswith("llama.cpp")}
    hf = next((r for r in inproc if r["peer"].startswith("transformers")), None)

    rows = []
    for kind in ours:
        e = engine.get(kind, {}).get("summary", {})
        rows.append([f"triolm engine {kind}", bc.fmt((e.get("c1_p128") or {}).get("decode_tps")),
                     bc.fmt((e.get("c1_p128") or {}).get("prefill_tps"), 0),
                     bc.fmt((e.get("c1_p1024") or {}).get("prefill_tps"), 0)])
        lv = _lv(ours[kind], 1)
        pre = ours[kind].get("prefill", {})
        rows.append([f"triolm HTTP {kind}", bc.fmt(lv.get("decode_tps_per_stream_median")),
                     bc.fmt(lv.get("prefill_tps_median"), 0),
                     bc.fmt((pre.get(1024) or pre.get("1024") or {}).get("prefill_tps_median"), 0)])
    for kind, r in lcpp.items():
        s = r["summary"]
        rows.append([f"llama.cpp in-process {kind}", bc.fmt((s.get("128") or {}).get("decode_tps")),
                     bc.fmt((s.get("128") or {}).get("prefill_tps"), 0),
                     bc.fmt((s.get("1024") or {}).get("prefill_tps"), 0)])
    if hf:
        s = hf["summary"]
        rows.append(["transformers generate (float32)", bc.fmt((s.get("128") or {}).get("decode_tps")),
                     bc.fmt((s.get("128") or {}).get("prefill_tps"), 0),
                     bc.fmt((s.get("1024") or {}).get("prefill_tps"), 0)])
    lines += ["## Single stream (128-token prompt, 128 generated tokens)", "",
              bc.markdown_table(["engine", "decode tok/s", "prefill tok/s (128)", "prefill tok/s (1024)"], rows), ""]

    ratio_rows = []
    for kind in ours:
        e = (engine.get(kind, {}).get("summary", {}).get("c1_p128") or {}).get("decode_tps")
        http = _lv(ours[kind], 1).get("decode_tps_per_stream_median")
        peer = ((lcpp.get(kind) or {}).get("summary", {}).get("128") or {}).get("decode_tps")
        hf_dec = ((hf or {}).get("summary", {}).get("128") or {}).get("decode_tps")
        agg16 = _lv(ours[kind], 16).get("aggregate_tps")
        peer16 = _lv(peers_srv.get(kind, {}), 16).get("aggregate_tps")
        agg1 = _lv(ours[kind], 1).get("aggregate_tps")
        ratio_rows.append([kind, _ratio(e, peer), _ratio(http, peer), _ratio(e, hf_dec),
                           _ratio(agg16, peer16), _ratio(agg16, agg1), _ratio(agg16, http)])
    lines += ["## Ratios", "",
              bc.markdown_table(["weights", "decode vs llama.cpp (engine)", "decode vs llama.cpp (HTTP)",
                                 "decode vs transformers", "16-stream aggregate vs llama-cpp-python server",
                                 "16-stream aggregate vs own 1-stream aggregate (both with prompts)",
                                 "16-stream aggregate vs own single-stream decode tok/s"], ratio_rows), ""]

    over_rows = []
    for kind in ours:
        e = engine.get(kind, {}).get("summary", {})
        step = (e.get("c1_p128") or {}).get("decode_step_ms_median")
        itl = _lv(ours[kind], 1).get("itl_p50_ms")
        e16 = (e.get("c16_p128") or {}).get("aggregate_tps")
        h16 = _lv(ours[kind], 16).get("aggregate_tps")
        over = None if not step or not itl else (itl - step) / step * 100
        over16 = None if not e16 or not h16 else (e16 / h16 - 1) * 100
        srv = ours[kind]
        weights = (engine.get(kind) or {}).get("weights_mb")
        lines_lag = _lv(srv, max(int(c) for c in srv["levels"])) if srv.get("levels") else {}
        over_rows.append([kind, bc.fmt(step, 2), bc.fmt(itl, 2), bc.fmt(over, 1), bc.fmt(over16, 1),
                          bc.fmt(lines_lag.get("loop_lag_p99_ms_le"), 1),
                          bc.fmt(lines_lag.get("loop_lag_max_ms_le"), 1),
                          bc.fmt(srv.get("startup_s"), 2), bc.fmt(srv.get("peak_rss_mb"), 0), bc.fmt(weights, 0)])
    lines += ["## Serving overhead, event loop, start-up, memory", "",
              bc.markdown_table(["weights", "engine decode step ms", "HTTP ITL p50 ms",
                                 "HTTP ITL / engine step − 1 % (unpaired; see bench_overhead.py)",
                                 "16-stream engine/HTTP − 1 %", "loop lag p99 ms (≤, 16 streams)",
                                 "loop lag max ms (≤)", "start-up s", "peak RSS MB", "weights MB"], over_rows), ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer", choices=["llamacpp", "transformers"], default=None)
    ap.add_argument("--kind", default="F16")
    ap.add_argument("--kinds", nargs="+", default=["F16", "Q8_0"])
    ap.add_argument("--prompt-lens", nargs="+", type=int, default=[128, 1024])
    ap.add_argument("--concurrency", nargs="+", type=int, default=[1, 4, 16])
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--single-requests", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads is None:
        args.threads = os.cpu_count()
    if args.peer == "llamacpp":
        print(json.dumps(peer_llamacpp(args.kind, args)))
        return 0
    if args.peer == "transformers":
        print(json.dumps(peer_transformers(args.kind, args)))
        return 0
    paths = bc.bench_model(tuple(args.kinds))
    peers = run_peers(args, paths)
    report = {"machine": bc.machine_info(), "servers": peers["servers"], "peers": peers}
    path = bc.save_json(f"peers-{time.strftime('%Y%m%d-%H%M%S')}.json", report)
    import bench

    print(bench.server_table(report))
    print()
    print("\n".join(report_sections(report)))
    print(f"\nJSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
