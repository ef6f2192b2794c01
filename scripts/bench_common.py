"""Shared pieces of the benchmark scripts: the benchmark model, prompts, an HTTP load
generator for OpenAI-compatible streaming servers, statistics, tables and plots.

Everything here is plain Python + httpx + trio so the load generator itself stays
cheap: on a 2-core machine the client competes with the server for CPU.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

# Test support (generated models, servers in threads) lives in tests/support.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench-results"
GGUF_TYPES = ("F32", "F16", "Q8_0")


def log(msg: str) -> None:
    """Progress goes to stderr, timestamped, so stdout stays the report."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- model

def bench_model_dir() -> Path:
    env = os.environ.get("TRIOLM_BENCH_MODELS")
    return Path(env) if env else Path.home() / ".cache" / "triolm" / "bench-models"


def bench_model(gguf_types: tuple[str, ...] = GGUF_TYPES):
    """The SmolLM-135M-shaped benchmark model (random weights) as HF dir + GGUF files.

    Built once into its own cache directory. A build from older factory sources is
    reused as is (the weights do not change with unrelated source edits), so a run
    does not pay a minute of rebuilding whenever someone touches the factory."""
    from support.model_factory import make_test_model

    base = bench_model_dir()
    for manifest in sorted(base.glob("llama-smollm-135m-seed0-*/manifest.json"),
                           key=lambda p: p.stat().st_mtime, reverse=True):
        data = json.loads(manifest.read_text())
        if all(t in data.get("gguf", {}) for t in gguf_types):
            root = manifest.parent
            return _Paths(root / "hf", {t: root / n for t, n in data["gguf"].items()})
    log("building the benchmark model (SmolLM-135M shape, random weights) ...")
    p = make_test_model(base, arch="llama", size="smollm-135m", gguf_types=gguf_types)
    return _Paths(p.hf_dir, dict(p.gguf))


@attrs.frozen
class _Paths:
    hf_dir: Path
    gguf: dict[str, Path]

    def model_path(self, kind: str) -> Path:
        """kind: 'hf' or a GGUF type."""
        return self.hf_dir if kind == "hf" else self.gguf[kind]


def make_prompts(n: int, length: int, seed: int) -> list[list[int]]:
    """n distinct prompts of exactly `length` token ids: BOS + ids that round-trip through
    text unchanged (so a peer that only takes text sees the same tokens)."""
    import random

    tok = _tokenizer()
    rng = random.Random(seed)
    out: list[list[int]] = []
    while len(out) < n:
        ids = [rng.randrange(300, 31000) for _ in range(length * 2)]
        text = tok.decode(ids)
        again = tok.encode(text, add_special_tokens=False)[: length - 1]
        text = tok.decode(again)
        if tok.encode(text, add_special_tokens=False) == again and len(again) == length - 1:
            out.append([1] + again)
    return out


_TOK = None


def _tokenizer():
    global _TOK
    if _TOK is None:
        from triolm.tokenizers.hf import HFTokenizer

        _TOK = HFTokenizer.from_dir(bench_model(()).hf_dir)
    return _TOK


def prompt_text(ids: list[int]) -> str:
    """The text of a prompt made by make_prompts (without BOS; servers add it)."""
    return _tokenizer().decode(ids[1:])


# ----------------------------------------------------------------------------- stats

def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _status_mb(pid: int, field: str) -> float | None:
    """A memory figure of /proc/PID/status (VmRSS, VmHWM …) in MB; None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def rss_mb(pid: int) -> float | None:
    return _status_mb(pid, "VmRSS")


def peak_rss_mb(pid: int) -> float | None:
    return _status_mb(pid, "VmHWM")


def machine_info() -> dict[str, Any]:
    import torch

    load = os.getloadavg()
    return {"cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "loadavg_1m_at_start": round(load[0], 2),
            "cpu": _cpu_model()}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


# ---------------------------------------------------------------------- HTTP load

@attrs.define
class RequestResult:
    prompt_tokens: int
    tokens: int = 0
    start: float = 0.0
    first: float | None = None
    times: list[float] = attrs.Factory(list)
    end: float = 0.0
    error: str | None = None

    @property
    def ttft(self) -> float | None:
        return None if self.first is None else self.first - self.start

    @property
    def itls(self) -> list[float]:
        return [b - a for a, b in itertools.pairwise(self.times)]

    @property
    def decode_tps(self) -> float | None:
        if len(self.times) < 2:
            return None
        return (len(self.times) - 1) / (self.times[-1] - self.times[0])


def completion_body(style: str, model: str, prompt: list[int], max_tokens: int) -> dict:
    """One greedy streaming completion of exactly max_tokens tokens.

    style 'triolm': token-id prompt, ignore_eos. style 'llamacpp': llama-cpp-python's
    server takes text only and has no ignore_eos; min_tokens keeps EOS away instead."""
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "temperature": 0.0,
                            "stream": True}
    if style == "triolm":
        body.update(prompt=prompt, ignore_eos=True)
    else:
        body.update(prompt=prompt_text(prompt), min_tokens=max_tokens)
    return body


async def stream_one(client, url: str, body: dict, prompt_tokens: int,
                     trailing_finish_chunk: bool = False) -> RequestResult:
    """Stream one completion, timestamping every token. trailing_finish_chunk: the server
    ends with an extra chunk (empty text + finish_reason) that carries no token."""
    r = RequestResult(prompt_tokens=prompt_tokens, start=time.perf_counter())
    try:
        async with client.stream("POST", url, json=body) as resp:
            if resp.status_code != 200:
                r.error = f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}"
                return r
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                now = time.perf_counter()
                chunk = json.loads(data)
                if "error" in chunk:
                    r.error = str(chunk["error"])[:200]
                    break
                choices = chunk.get("choices") or []
                if not choices:
                    continue
                if trailing_finish_chunk and choices[0].get("finish_reason") and not choices[0].get("text"):
                    continue
                # one chunk per generated token (both servers stream token by token)
                r.tokens += 1
                r.times.append(now)
                if r.first is None:
                    r.first = now
    except Exception as exc:  # a failed request is reported, not fatal to the run
        r.error = f"{type(exc).__name__}: {exc}"
    r.end = time.perf_counter()
    return r


async def run_load(base_url: str, style: str, model: str, prompts: list[list[int]],
                   concurrency: int, max_tokens: int) -> tuple[list[RequestResult], float]:
    """`concurrency` clients pull prompts from a shared list until it is empty.
    Returns every request's result and the wall time of the whole batch."""
    import httpx
    import trio

    url = base_url.rstrip("/") + "/v1/completions"
    queue = list(prompts)
    results: list[RequestResult] = []
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        async def worker() -> None:
            while queue:
                p = queue.pop(0)
                body = completion_body(style, model, p, max_tokens)
                results.append(await stream_one(client, url, body, len(p), style == "llamacpp"))

        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
        wall = time.perf_counter() - t0
    return results, wall


def summarize_load(results: list[RequestResult], wall: float, concurrency: int) -> dict[str, Any]:
    ok = [r for r in results if r.error is None]
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    itls = [x for r in ok for x in r.itls]
    tokens = sum(r.tokens for r in ok)
    errors = [r.error for r in results if r.error is not None]
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "generated_tokens": tokens,
        "wall_s": wall,
        "aggregate_tps": tokens / wall if wall > 0 else None,
        "ttft_p50_ms": _ms(pct(ttfts, 50)),
        "ttft_p99_ms": _ms(pct(ttfts, 99)),
        "itl_p50_ms": _ms(pct(itls, 50)),
        "itl_p99_ms": _ms(pct(itls, 99)),
        "decode_tps_per_stream_median": median([r.decode_tps for r in ok if r.decode_tps]),
        "prefill_tps_median": median([r.prompt_tokens / r.ttft for r in ok if r.ttft]),
    }


def _ms(v: float | None) -> float | None:
    return None if v is None else v * 1000


def wait_ready(url: str, timeout: float, proc=None) -> float:
    """Seconds until GET url answers 200 (raises if the process dies or time runs out)."""
    import httpx

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout:.0f} s")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc, timeout: float = 15.0) -> None:
    """SIGTERM the server we started, then SIGKILL if it does not go."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except Exception:
        proc.kill()
        proc.wait(5)


# ----------------------------------------------------------------- metrics parsing

def parse_histogram(text: str, name: str) -> dict[float, float]:
    """Cumulative bucket counts {le: count} of one Prometheus histogram."""
    out: dict[float, float] = {}
    prefix = name + "_bucket{"
    for line in text.splitlines():
        if line.startswith(prefix):
            labels, value = line[len(prefix):].split("}", 1)
            le = [p.split("=", 1)[1].strip('"') for p in labels.split(",") if p.startswith("le=")][0]
            out[float("inf") if le == "+Inf" else float(le)] = float(value)
    return out


def histogram_delta_quantile(before: dict[float, float], after: dict[float, float], q: float
                             ) -> tuple[float | None, float | None, int]:
    """(quantile upper bound, max upper bound, samples) of the observations between two
    scrapes: bucket resolution, so both are 'at most' figures."""
    les = sorted(after)
    counts = [after[le] - before.get(le, 0.0) for le in les]
    total = counts[-1] if counts else 0
    if total <= 0:
        return None, None, 0
    target = total * q
    quant = next((le for le, c in zip(les, counts, strict=True) if c >= target), les[-1])
    prev = 0.0
    top = None
    for le, c in zip(les, counts, strict=True):
        if c > prev:
            top = le
        prev = c
    return quant, top, int(total)


def scrape(base_url: str) -> str:
    import httpx

    try:
        return httpx.get(base_url.rstrip("/") + "/metrics", timeout=5.0).text
    except httpx.HTTPError:
        return ""


def gauge(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            try:
                return float(line.rsplit(" ", 1)[1])
            except ValueError:
                return None
    return None


# ----------------------------------------------------------------- output

def fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in row) + " |")
    return "\n".join(lines)


def save_json(name: str, data: Any) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0
