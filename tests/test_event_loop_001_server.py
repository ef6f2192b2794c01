"""Contract event-loop-001, clause EL-001.4 (contracts/event-loop-001.md), against a
real server: hypercorn on 127.0.0.1 serving the tiny Mistral-architecture model in
Mistral tokenizer mode (mistral-common's v3 tokenizer, chosen by `auto`).

While a 500 KB Mistral chat request and 500 KB `/tokenize` requests are processed
(one after the other, then a chat and a /tokenize at once), another thread polls
`/health` and `/livez` every ~20 ms over the whole processing. Bounds:
- every probe answers, within 2 s wall clock (the contract) — every probe, every run;
- every probe within 100 ms (triolm's bound) once host CPU starvation is taken out:
  the test reads, from the kernel (/proc/<pid>/task/<tid>/schedstat), how long the
  server's loop thread and the probing thread sat runnable in a run queue during
  each probe, and subtracts it. On this shared 2-core VM other processes starve
  both for 100-700 ms at times (measured), which says nothing about the server;
  work done on, or a GIL held against, the event loop is not subtracted (the loop
  thread is running, or sleeping on the GIL, not queued). One re-run is allowed.
- the server's loop-lag metric (`triolm:event_loop_lag_seconds`) is scraped:
  reported, and bounded by 2 s.
A control renders the same chat prompt on the event loop (what vLLM did) and
requires both instruments to see it, so the measurement itself can fail.

The server runs in its own process: in-process, the probing thread would compete
for the test process's GIL with the server's tokenizer thread, and its own waits
would be counted against the server (measured in-process: worst probe ~170 ms while
the server's own loop lag stayed ≤ 75 ms).

The 500 KB chat prompt (~170k tokens) is beyond the model's 2048-token context:
the server must reject it with a 400 naming its token count and the limit.
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
import threading
import time
from typing import Any, Callable, NamedTuple

import httpx
import pytest

from triolm.chat.mistral import apply_mistral_chat_template, load_mistral_tokenizer
from triolm.testing.model_factory import make_test_model

CONTRACT_BOUND_S = 2.0  # the seed's health-check bound
PROBE_BOUND_S = 0.100  # triolm's own bound for a probe while tokenizing
LOOP_LAG_BOUND_S = 0.100  # the contract's loop-yield bound, on the server's own lag metric
POLL_S = 0.020
PAYLOAD_KB = 500
MIN_PROBES_PER_REQUEST = 5  # fewer probes inside a request's window would void the test

_WORDS = ("the of and to in is that for it as with was on be by this are at from or have an "
          "which not but they we you all one their there been has more if will request server "
          "health probe mistral tokenizer trio café naïve Größe 東京 данные δεδομένα 🙂 1234 "
          "3.14159 foo_bar() {\"k\": [1, 2]}").split()


def large_text(size_kb: int, seed: int = 0) -> str:
    """Deterministic prose of exactly `size_kb` KiB of UTF-8, some of it non-ASCII."""
    rng = random.Random(seed)
    target = size_kb * 1024
    parts, size = [], 0
    while size < target:
        piece = rng.choice(_WORDS) + ("\n" if rng.random() < 0.05 else " ")
        parts.append(piece)
        size += len(piece.encode())
    text = "".join(parts).encode()[:target].decode("utf-8", errors="ignore")
    return text + "x" * (target - len(text.encode()))


# The server process: a ServerThread (real hypercorn) on the model, driven over stdin.
# "block on"/"block off" switch the control: chat prompts rendered ON the event loop.
_SERVER_MAIN = """
import sys
import triolm.api.chat as chat_api
from triolm.serving.served_model import load_served_model
from triolm.serving.settings import ServerSettings
from triolm.testing.server_thread import ServerThread

settings = ServerSettings(model=sys.argv[1], max_num_seqs=4)
served = load_served_model(settings)
off_loop = chat_api.run_off_loop

async def on_the_loop(limiter, fn, *args):
    return fn(*args)

srv = ServerThread(settings, served).start()
print(srv.base_url, served.mistral_tokenizer is not None, served.max_model_len, srv._thread.native_id, flush=True)
for line in sys.stdin:
    chat_api.run_off_loop = on_the_loop if line.strip() == "block on" else off_loop
    print("ok", flush=True)
srv.stop()
"""


class ServerProcess:
    def __init__(self, model_dir: str):
        self.popen = subprocess.Popen([sys.executable, "-c", _SERVER_MAIN, model_dir], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)
        ready = self.popen.stdout.readline().split()
        if len(ready) != 4:
            self.popen.kill()
            raise RuntimeError(f"server process did not start (exit {self.popen.wait()})")
        self.base_url, self.mistral_mode, self.max_model_len = ready[0], ready[1] == "True", int(ready[2])
        # the kernel's count of ns the event-loop thread spent runnable but waiting for a CPU
        self.loop_schedstat = f"/proc/{self.popen.pid}/task/{ready[3]}/schedstat"

    def block_loop(self, on: bool) -> None:
        self.popen.stdin.write("block on\n" if on else "block off\n")
        self.popen.stdin.flush()
        assert self.popen.stdout.readline().strip() == "ok"

    def close(self) -> None:
        self.popen.stdin.close()
        try:
            self.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


@pytest.fixture(scope="module")
def model_dir() -> str:
    return str(make_test_model(arch="mistral", gguf_types=()).hf_dir)


@pytest.fixture(scope="module")
def mistral_server(model_dir):
    srv = ServerProcess(model_dir)
    try:
        assert srv.mistral_mode, "auto mode must pick mistral-common for this model"
        yield srv
    finally:
        srv.close()


@pytest.fixture(scope="module")
def payload() -> str:
    return large_text(PAYLOAD_KB)


# ------------------------------------------------------------------ probing


class Probe(NamedTuple):
    sent: float
    latency: float
    path: str
    status: int
    cpu_wait: float  # of that latency, time the server's loop thread or the poller sat in a run queue

    @property
    def server_latency(self) -> float:
        """The latency less host CPU starvation of the two threads involved: what the
        server's own design (GIL, work on the loop) costs the probe."""
        return max(0.0, self.latency - self.cpu_wait)


def _cpu_wait(schedstat: str | None) -> float:
    if schedstat is None:
        return 0.0
    try:
        with open(schedstat) as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


class ProbePoller(threading.Thread):
    """GET /health and /livez alternately every POLL_S from its own thread and
    connection; records a Probe each time (a timeout: status 0). It also records how
    long, during the probe, the poller thread and — given `schedstat`, the server loop
    thread's /proc file — the server's loop thread sat runnable in the kernel's run
    queue: host CPU starvation (other processes on a shared machine), not the server."""

    def __init__(self, base_url: str, schedstat: str | None = None):
        super().__init__(daemon=True, name="probe-poller")
        self.base_url = base_url
        self.schedstat = schedstat
        self.stop = threading.Event()
        self.probes: list[Probe] = []

    def run(self) -> None:
        own = f"/proc/self/task/{threading.get_native_id()}/schedstat"
        with httpx.Client(base_url=self.base_url, timeout=CONTRACT_BOUND_S) as client:
            paths = ("/health", "/livez")
            i = 0
            while not self.stop.is_set():
                path = paths[i % 2]
                i += 1
                waited = _cpu_wait(self.schedstat) + _cpu_wait(own)
                sent = time.perf_counter()
                try:
                    status = client.get(path).status_code
                except httpx.TimeoutException:
                    status = 0
                latency = time.perf_counter() - sent
                cpu_wait = _cpu_wait(self.schedstat) + _cpu_wait(own) - waited
                self.probes.append(Probe(sent, latency, path, status, cpu_wait))
                self.stop.wait(max(0.0, POLL_S - latency))

    def __enter__(self) -> "ProbePoller":
        self.start()
        time.sleep(3 * POLL_S)  # a few idle probes first (connection made, baseline)
        return self

    def __exit__(self, *exc: Any) -> None:
        time.sleep(3 * POLL_S)
        self.stop.set()
        self.join(timeout=10)

    def inside(self, window: tuple[float, float]) -> list[Probe]:
        """Probes sent while the window's request was being processed."""
        start, end = window
        return [p for p in self.probes if start <= p.sent < end]


def timed(call: Callable[[], httpx.Response]) -> tuple[httpx.Response, tuple[float, float]]:
    start = time.perf_counter()
    response = call()
    return response, (start, time.perf_counter())


def lag_histogram(base_url: str) -> tuple[dict[float, float], float]:
    """Cumulative bucket counts (by upper bound) and the count of the server's
    triolm:event_loop_lag_seconds histogram."""
    text = httpx.get(base_url + "/metrics").text
    buckets = {}
    for le, value in re.findall(r'^triolm:event_loop_lag_seconds_bucket\{le="([^"]+)"\} (\S+)$', text, re.M):
        buckets[float(le)] = float(value)
    count = float(re.search(r"^triolm:event_loop_lag_seconds_count (\S+)$", text, re.M).group(1))
    return buckets, count


def lag_bound_between(before: tuple[dict, float], after: tuple[dict, float]) -> tuple[float, int]:
    """(upper bound of the largest lag observed between two scrapes, observations)."""
    (b0, c0), (b1, c1) = before, after
    new = c1 - c0
    for le in sorted(b1):
        if b1[le] - b0.get(le, 0.0) >= new:
            return le, int(new)
    return float("inf"), int(new)


def chat_body(text: str) -> dict:
    return {"messages": [{"role": "user", "content": text}], "max_tokens": 4}


# ------------------------------------------------------------------ the clause


class Attempt(NamedTuple):
    windows: dict[str, tuple[float, float]]
    results: dict[str, httpx.Response]
    poller: ProbePoller
    lag_bound: float
    lag_observations: int

    @property
    def worst(self) -> Probe:
        return max(self.poller.probes, key=lambda p: p.latency)

    @property
    def worst_server(self) -> Probe:
        return max(self.poller.probes, key=lambda p: p.server_latency)

    def within_bounds(self) -> bool:
        return self.worst_server.server_latency < PROBE_BOUND_S

    def summary(self) -> str:
        per_request = {name: (round((w[1] - w[0]) * 1000), len(self.poller.inside(w)),
                              round(max((p.latency for p in self.poller.inside(w)), default=0) * 1000, 1))
                       for name, w in self.windows.items()}
        worst, server = self.worst, self.worst_server
        return (f"{len(self.poller.probes)} probes; worst {worst.latency * 1000:.1f} ms ({worst.path}, "
                f"{worst.cpu_wait * 1000:.1f} ms of it waiting for a CPU); worst less CPU wait "
                f"{server.server_latency * 1000:.1f} ms; per request (ms, probes inside, worst probe ms): "
                f"{per_request}; server loop lag max ≤ {self.lag_bound * 1000:g} ms (histogram bucket, "
                f"{self.lag_observations} observations)")


def measure(srv: ServerProcess, payload: str) -> Attempt:
    """One run: a 500 KB chat, /tokenize (messages, then prompt), then a chat and a
    /tokenize at once, all while the poller probes."""
    base = srv.base_url
    windows: dict[str, tuple[float, float]] = {}
    results: dict[str, httpx.Response] = {}
    lag_before = lag_histogram(base)
    with httpx.Client(base_url=base, timeout=60) as client, ProbePoller(base, srv.loop_schedstat) as poller:
        results["chat"], windows["chat"] = timed(lambda: client.post("/v1/chat/completions", json=chat_body(payload)))
        results["tokenize_messages"], windows["tokenize_messages"] = timed(lambda: client.post(
            "/tokenize", json={"messages": [{"role": "user", "content": payload}]}))
        results["tokenize_prompt"], windows["tokenize_prompt"] = timed(lambda: client.post(
            "/tokenize", json={"prompt": payload}))

        def post(key: str, path: str, body: dict) -> None:
            with httpx.Client(base_url=base, timeout=60) as c:
                results[key] = c.post(path, json=body)

        start = time.perf_counter()
        workers = [threading.Thread(target=post, args=("both_chat", "/v1/chat/completions", chat_body(payload))),
                   threading.Thread(target=post, args=("both_tokenize", "/tokenize", {"prompt": payload}))]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        windows["chat+tokenize"] = (start, time.perf_counter())
    lag_bound, lag_observations = lag_bound_between(lag_before, lag_histogram(base))
    return Attempt(windows, results, poller, lag_bound, lag_observations)


ATTEMPTS = 2  # one re-run when the shared host starves the server; a real block fails both


def test_EL_001_4_probes_answer_while_500kb_mistral_requests_are_processed(mistral_server, model_dir, payload):
    srv = mistral_server
    mistral = load_mistral_tokenizer(model_dir)
    reference = apply_mistral_chat_template(mistral, [{"role": "user", "content": payload}])
    prompt_reference = mistral.instruct_tokenizer.tokenizer.encode(payload, bos=True, eos=False)
    attempts: list[Attempt] = []
    for _ in range(ATTEMPTS):
        attempt = measure(srv, payload)
        attempts.append(attempt)
        results, poller = attempt.results, attempt.poller
        # the large requests were processed correctly
        assert results["tokenize_messages"].status_code == 200
        assert results["tokenize_messages"].json()["tokens"] == reference
        assert results["tokenize_prompt"].json()["tokens"] == prompt_reference
        assert results["both_tokenize"].json()["tokens"] == prompt_reference
        for key in ("chat", "both_chat"):
            response = results[key]
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["code"] == "context_length_exceeded"
            assert f"{srv.max_model_len} tokens" in error["message"], error["message"]
            assert f"{len(reference)} tokens" in error["message"], error["message"]
        # every probe answered, within the contract's bound, and enough fell inside each request
        assert all(p.status == 200 for p in poller.probes), [p for p in poller.probes if p.status != 200]
        assert attempt.worst.latency < CONTRACT_BOUND_S, attempt.summary()
        assert {p.path for p in poller.probes} == {"/health", "/livez"}
        for name, window in attempt.windows.items():
            assert len(poller.inside(window)) >= MIN_PROBES_PER_REQUEST, (name, attempt.summary())
        assert attempt.lag_observations > 0 and attempt.lag_bound <= CONTRACT_BOUND_S, attempt.summary()
        if attempt.within_bounds():
            break
    print("\nEL-001.4: " + "\n  retried: ".join(a.summary() for a in attempts))
    # triolm's bound: every probe of a run under 100 ms, host CPU starvation excepted
    assert attempts[-1].within_bounds(), "\n".join(a.summary() for a in attempts)


def test_EL_001_4_probes_detect_a_blocked_loop(mistral_server, payload):
    """Control: render the chat prompt on the event loop (what vLLM did) and the same
    measurement must see the block — probe latency and loop lag far over 100 ms."""
    srv = mistral_server
    lag_before = lag_histogram(srv.base_url)
    srv.block_loop(True)
    try:
        with httpx.Client(base_url=srv.base_url, timeout=60) as client, \
                ProbePoller(srv.base_url, srv.loop_schedstat) as poller:
            response, window = timed(lambda: client.post("/v1/chat/completions", json=chat_body(payload)))
    finally:
        srv.block_loop(False)
    lag_bound, _ = lag_bound_between(lag_before, lag_histogram(srv.base_url))
    assert response.status_code == 400
    worst = max(poller.probes, key=lambda p: p.server_latency)
    blocked = window[1] - window[0]
    print(f"\ncontrol: request {blocked * 1000:.0f} ms, worst probe {worst.latency * 1000:.0f} ms "
          f"({worst.server_latency * 1000:.0f} ms less CPU wait), loop lag max ≤ {lag_bound * 1000:g} ms")
    # ~250-300 ms of encoding on the loop thread; its CPU starvation is not subtracted away
    assert worst.server_latency > 1.5 * PROBE_BOUND_S
    assert lag_bound > LOOP_LAG_BOUND_S
