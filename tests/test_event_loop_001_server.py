"""Contract event-loop-001, clause EL-001.4 (contracts/event-loop-001.md), against a
real server: hypercorn on 127.0.0.1 serving the tiny Mistral-architecture model in
Mistral tokenizer mode (mistral-common's v3 tokenizer, chosen by `auto`).

While a 500 KB Mistral chat request and 500 KB `/tokenize` requests are processed,
another thread polls `/health` and `/livez` every ~20 ms over the whole processing;
every probe must answer within 2 s (the contract) and within 100 ms (triolm's
bound). The server's own loop-lag metric (`triolm:event_loop_lag_seconds`) is
scraped and its maximum reported and bounded too. A control test runs the same
chat request with the prompt rendered on the event loop and requires the probes to
see it — so the measurement itself can fail.

The 500 KB chat prompt (~150k tokens) is beyond the model's 2048-token context:
the server must reject it with a 400 naming its token count and the limit.
"""

from __future__ import annotations

import random
import re
import threading
import time
from typing import Any, Callable

import httpx
import pytest

from triolm.chat.mistral import apply_mistral_chat_template
from triolm.serving.served_model import load_served_model
from triolm.serving.settings import ServerSettings
from triolm.testing.model_factory import make_test_model
from triolm.testing.server_thread import ServerThread

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


@pytest.fixture(scope="module")
def mistral_server():
    paths = make_test_model(arch="mistral", gguf_types=())
    settings = ServerSettings(model=str(paths.hf_dir), max_num_seqs=4)
    served = load_served_model(settings)
    assert served.mistral_tokenizer is not None, "auto mode must pick mistral-common for this model"
    with ServerThread(settings, served) as srv:
        yield srv


@pytest.fixture(scope="module")
def payload() -> str:
    return large_text(PAYLOAD_KB)


# ------------------------------------------------------------------ probing


class ProbePoller(threading.Thread):
    """GET /health and /livez alternately every POLL_S from its own thread and
    connection; records (sent, latency, path, status) — a timeout counts as
    latency = CONTRACT_BOUND_S and status 0."""

    def __init__(self, base_url: str):
        super().__init__(daemon=True, name="probe-poller")
        self.base_url = base_url
        self.stop = threading.Event()
        self.probes: list[tuple[float, float, str, int]] = []

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=CONTRACT_BOUND_S) as client:
            paths = ("/health", "/livez")
            i = 0
            while not self.stop.is_set():
                path = paths[i % 2]
                i += 1
                sent = time.perf_counter()
                try:
                    status = client.get(path).status_code
                except httpx.TimeoutException:
                    status = 0
                latency = time.perf_counter() - sent
                self.probes.append((sent, latency, path, status))
                self.stop.wait(max(0.0, POLL_S - latency))

    def __enter__(self) -> "ProbePoller":
        self.start()
        time.sleep(3 * POLL_S)  # a few idle probes first (connection made, baseline)
        return self

    def __exit__(self, *exc: Any) -> None:
        time.sleep(3 * POLL_S)
        self.stop.set()
        self.join(timeout=10)

    def inside(self, window: tuple[float, float]) -> list[tuple[float, float, str, int]]:
        """Probes sent while the window's request was being processed."""
        start, end = window
        return [p for p in self.probes if start <= p[0] < end]


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


def test_EL_001_4_probes_answer_while_500kb_mistral_requests_are_processed(mistral_server, payload):
    srv = mistral_server
    base = srv.base_url
    mistral = srv.served.mistral_tokenizer
    windows: dict[str, tuple[float, float]] = {}
    results: dict[str, httpx.Response] = {}
    metrics = srv.state.metrics
    lag_before = lag_histogram(base)
    metrics.max_loop_lag = 0.0  # the server's exact running max, from now on
    with httpx.Client(base_url=base, timeout=60) as client, ProbePoller(base) as poller:
        results["chat"], windows["chat"] = timed(lambda: client.post("/v1/chat/completions", json=chat_body(payload)))
        results["tokenize_messages"], windows["tokenize_messages"] = timed(lambda: client.post(
            "/tokenize", json={"messages": [{"role": "user", "content": payload}]}))
        results["tokenize_prompt"], windows["tokenize_prompt"] = timed(lambda: client.post(
            "/tokenize", json={"prompt": payload}))

        # both at once: a chat and a /tokenize in flight together
        both: dict[str, httpx.Response] = {}

        def post(key: str, path: str, body: dict) -> None:
            with httpx.Client(base_url=base, timeout=60) as c:
                both[key] = c.post(path, json=body)

        start = time.perf_counter()
        workers = [threading.Thread(target=post, args=("chat", "/v1/chat/completions", chat_body(payload))),
                   threading.Thread(target=post, args=("tokenize", "/tokenize", {"prompt": payload}))]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        windows["concurrent"] = (start, time.perf_counter())
    lag_after = lag_histogram(base)
    max_lag = metrics.max_loop_lag

    # the large requests were processed correctly
    reference = apply_mistral_chat_template(mistral, [{"role": "user", "content": payload}])
    assert results["tokenize_messages"].status_code == 200
    assert results["tokenize_messages"].json()["tokens"] == reference
    raw = mistral.instruct_tokenizer.tokenizer
    assert results["tokenize_prompt"].json()["tokens"] == raw.encode(payload, bos=True, eos=False)
    assert both["tokenize"].json()["tokens"] == results["tokenize_prompt"].json()["tokens"]
    limit = srv.served.max_model_len
    for response in (results["chat"], both["chat"]):
        assert response.status_code == 400, response.text
        message = response.json()["error"]["message"]
        assert f"{limit} tokens" in message and f"{len(reference)} tokens" in message, message
        assert response.json()["error"]["code"] == "context_length_exceeded"

    # the probes: all answered, in time, and enough of them fell inside each request
    probes = poller.probes
    assert all(status == 200 for _, _, _, status in probes), [p for p in probes if p[3] != 200]
    worst = max(latency for _, latency, _, _ in probes)
    lag_bound, lag_obs = lag_bound_between(lag_before, lag_after)
    report = {name: (round((w[1] - w[0]) * 1000), len(poller.inside(w)),
                     round(max((p[1] for p in poller.inside(w)), default=0) * 1000, 1))
              for name, w in windows.items()}
    print(f"\nEL-001.4: {len(probes)} probes, worst {worst * 1000:.1f} ms; per request "
          f"(duration ms, probes inside, worst probe ms): {report}; server loop lag max "
          f"{max_lag * 1000:.1f} ms (histogram: ≤ {lag_bound * 1000:g} ms over {lag_obs} observations)")
    for name, window in windows.items():
        assert len(poller.inside(window)) >= MIN_PROBES_PER_REQUEST, (name, report)
    assert worst < CONTRACT_BOUND_S
    assert worst < PROBE_BOUND_S, f"a probe took {worst * 1000:.1f} ms: {report}"
    for path in ("/health", "/livez"):
        assert any(p[2] == path for p in probes)
    assert max_lag < LOOP_LAG_BOUND_S
    assert lag_bound <= LOOP_LAG_BOUND_S and lag_obs > 0


def test_EL_001_4_probes_detect_a_blocked_loop(mistral_server, payload, monkeypatch):
    """Control: render the chat prompt on the event loop (what vLLM did) and the same
    measurement must see the block — probe latency and loop lag far over 100 ms."""
    import triolm.api.chat as chat_api

    async def on_the_loop(limiter, fn, *args):
        return fn(*args)

    monkeypatch.setattr(chat_api, "run_off_loop", on_the_loop)
    srv = mistral_server
    srv.state.metrics.max_loop_lag = 0.0
    with httpx.Client(base_url=srv.base_url, timeout=60) as client, ProbePoller(srv.base_url) as poller:
        response, window = timed(lambda: client.post("/v1/chat/completions", json=chat_body(payload)))
    assert response.status_code == 400
    worst = max(p[1] for p in poller.probes)
    blocked = window[1] - window[0]
    print(f"\ncontrol: request {blocked * 1000:.0f} ms, worst probe {worst * 1000:.0f} ms, "
          f"loop lag max {srv.state.metrics.max_loop_lag * 1000:.0f} ms")
    assert worst > max(PROBE_BOUND_S, 0.5 * blocked)
    assert srv.state.metrics.max_loop_lag > LOOP_LAG_BOUND_S
