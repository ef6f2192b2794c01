"""Structured concurrency, observed from outside a real server: request deadlines, client
disconnects, backpressure, an event loop that never blocks, and work kept off the loop.

Clause ids (OAI-CONC-…) refer to contracts/openai-compat.md.
"""

from __future__ import annotations

import gc
import json
import threading
import time
from contextlib import asynccontextmanager

import attrs
import httpx
import openai
import psutil
import pytest
import trio

from support.loop_probe import CONTRACT_BOUND_S, Measurement, ServerProcess, large_text
from support.server_thread import ServerThread

CHAT = "/v1/chat/completions"
COMP = "/v1/completions"
MSGS = [{"role": "user", "content": "Tell me everything"}]
LONG = {"max_tokens": 1500, "ignore_eos": True}  # ~30 s of decoding if nothing stops it
LIVEZ_BOUND_S = 0.100  # the contract's bound (OAI-CONC-005, OAI-CONC-006)


def health(http: httpx.Client) -> dict:
    return http.get("/health").json()


def wait_idle(http: httpx.Client, within: float = 1.0) -> float:
    """Seconds until no sequence runs or waits and the KV cache is back to idle (0);
    fails if that takes longer than `within`."""
    start = time.monotonic()
    while True:
        h = health(http)
        if h["requests_running"] == 0 and h["requests_waiting"] == 0 and h["kv_cache_usage"] == 0.0:
            return time.monotonic() - start
        assert time.monotonic() - start < within, f"not idle after {within} s: {h}"
        time.sleep(0.01)


def wait_for(predicate, within: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def timeout_server(served_model, base_settings):
    """A server whose requests time out after 1 s."""
    with ServerThread(attrs.evolve(base_settings, request_timeout=1.0), served_model) as srv:
        yield srv


# -- request timeout -----------------------------------------------------------------------------
@pytest.mark.parametrize("path,body", [(CHAT, {"messages": MSGS}), (COMP, {"prompt": "x"})],
                         ids=["chat", "completions"])
def test_OAI_CONC_001_timeout_non_streaming_is_504(timeout_server, path, body):
    with httpx.Client(base_url=timeout_server.base_url, timeout=30) as c:
        start = time.monotonic()
        r = c.post(path, json={**body, **LONG})
        elapsed = time.monotonic() - start
        assert r.status_code == 504
        err = r.json()["error"]
        assert err["type"] == "timeout_error" and err["code"] == "timeout"
        assert 1.0 <= elapsed < 5.0
        wait_idle(c)  # the timed-out sequence was aborted


@pytest.mark.parametrize("path,body", [(CHAT, {"messages": MSGS}), (COMP, {"prompt": "x"})],
                         ids=["chat", "completions"])
def test_OAI_CONC_002_timeout_ends_a_started_stream_cleanly(timeout_server, path, body):
    with httpx.Client(base_url=timeout_server.base_url, timeout=30) as c:
        start = time.monotonic()
        with c.stream("POST", path, json={**body, **LONG, "stream": True,
                                          "stream_options": {"include_usage": True}}) as r:
            assert r.status_code == 200
            events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
        elapsed = time.monotonic() - start
        assert 1.0 <= elapsed < 5.0
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert all("error" not in c for c in chunks)
        text = [c for c in chunks[:-2] if (c["choices"][0].get("text") or
                                           c["choices"][0].get("delta", {}).get("content"))]
        assert text, "tokens were streamed before the deadline"
        final = chunks[-2]["choices"][0]
        assert final["finish_reason"] == "length"
        assert chunks[-1]["usage"]["completion_tokens"] >= len(text)
        wait_idle(c)


def test_timeout_stream_through_the_official_client(timeout_server, served_model):
    client = openai.OpenAI(base_url=timeout_server.base_url + "/v1", api_key="x", max_retries=0)
    finishes = [c.choices[0].finish_reason for c in client.chat.completions.create(
        model=served_model.name, messages=MSGS, stream=True, max_tokens=1500,
        extra_body={"ignore_eos": True}) if c.choices]
    assert finishes[-1] == "length" and all(f is None for f in finishes[:-1])
    with pytest.raises(openai.APIStatusError) as info:
        client.completions.create(model=served_model.name, prompt="x", max_tokens=1500,
                                  extra_body={"ignore_eos": True})
    assert info.value.status_code == 504


# -- client disconnect ------------------------------------------------------------------------------
def _disconnect_mid_stream(http: httpx.Client, path: str, body: dict) -> None:
    with http.stream("POST", path, json={**body, **LONG, "stream": True}) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("data: ") and ('"text": "' in line and '"text": ""' not in line
                                              or '"content": "' in line and '"content": ""' not in line):
                break  # a token arrived: generation is under way
    # leaving the block with the body unread closes the connection


def test_OAI_CONC_003_disconnect_frees_the_sequence_within_1s(http):
    for path, body in [(CHAT, {"messages": MSGS}), (COMP, {"prompt": "x", "n": 3})]:
        assert wait_idle(http) == pytest.approx(0, abs=0.5)
        _disconnect_mid_stream(http, path, body)
        wait_idle(http, within=1.0)


def test_OAI_CONC_003_disconnect_repeated_100_times_without_growth(server):
    proc = psutil.Process()
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        for _ in range(10):  # warm-up: allocator pools, caches, first-use imports
            _disconnect_mid_stream(http, COMP, {"prompt": "warm up"})
            wait_idle(http)
        gc.collect()
        before, fds_before = proc.memory_info().rss, proc.num_fds()
        for i in range(100):
            _disconnect_mid_stream(http, COMP, {"prompt": f"disconnect {i % 7}"})
            wait_idle(http, within=1.0)
        gc.collect()
        growth, fd_growth = proc.memory_info().rss - before, proc.num_fds() - fds_before
    driver = server.state.serving().driver
    assert driver.num_running == 0 and driver.num_waiting == 0
    assert not driver._streams, "the driver still holds token streams of gone requests"
    assert fd_growth < 20, f"{fd_growth} more file descriptors open after 100 disconnects"
    assert growth < 64 * 1024 * 1024, f"RSS grew by {growth / 2**20:.1f} MiB over 100 disconnects"


def test_disconnect_with_the_official_client_and_non_streaming(server, served_model, http):
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="x", max_retries=0)
    stream = client.chat.completions.create(model=served_model.name, messages=MSGS, stream=True,
                                            max_tokens=1500, extra_body={"ignore_eos": True})
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    wait_idle(http)
    # a non-streaming client that gives up: its request is cancelled too
    impatient = openai.OpenAI(base_url=server.base_url + "/v1", api_key="x", max_retries=0, timeout=0.5)
    with pytest.raises(openai.APITimeoutError):
        impatient.completions.create(model=served_model.name, prompt="x", max_tokens=1500,
                                     extra_body={"ignore_eos": True})
    wait_idle(http)


# -- backpressure --------------------------------------------------------------------------------------
def test_OAI_CONC_004_full_queue_answers_429_at_once(make_server, served_model):
    srv = make_server(max_queue=1, max_num_seqs=1)
    client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="x", max_retries=0)
    with httpx.Client(base_url=srv.base_url, timeout=30) as a, httpx.Client(base_url=srv.base_url, timeout=30) as b, \
            httpx.Client(base_url=srv.base_url, timeout=30) as c:
        with a.stream("POST", COMP, json={"prompt": "running", **LONG, "stream": True}) as running, \
                b.stream("POST", COMP, json={"prompt": "waiting", **LONG, "stream": True}) as waiting:
            keep = (running.iter_lines(), waiting.iter_lines())  # keep both streams open
            wait_for(lambda: health(c)["requests_running"] == 1 and health(c)["requests_waiting"] == 1,
                     what="one running and one waiting request")
            for path, body in [(COMP, {"prompt": "more"}), (CHAT, {"messages": MSGS}),
                               (CHAT, {"messages": MSGS, "stream": True})]:
                start = time.monotonic()
                r = c.post(path, json={**body, "max_tokens": 5})
                assert time.monotonic() - start < 1.0
                assert r.status_code == 429
                assert r.json()["error"]["type"] == "rate_limit_error"
                assert r.json()["error"]["code"] == "overloaded"
            with pytest.raises(openai.RateLimitError):
                client.completions.create(model=served_model.name, prompt="x", max_tokens=2)
            assert health(c)["requests_running"] == 1 and health(c)["requests_waiting"] == 1
            del keep
        wait_idle(c)
        assert c.post(COMP, json={"prompt": "room again", "max_tokens": 2}).status_code == 200



def test_a_client_that_stops_reading_gets_every_chunk_whole_and_in_order(server, served_model):
    """A stream whose client stops reading (its receive window and the server's send
    buffer fill, so sends block part-way) arrives complete: every SSE event parses,
    one per token, indices in order, then [DONE]."""
    import socket

    host, port = server.base_url.split("//", 1)[1].split(":")
    body = json.dumps({"model": served_model.name, "prompt": "fill the pipe", "max_tokens": 600,
                       "ignore_eos": True, "logprobs": 5, "stream": True}).encode()
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        time.sleep(1.5)  # not reading: the generation runs ahead of the socket
        raw = b""
        while data := sock.recv(65536):
            raw += data
    head, _, chunked = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    payload = b""
    while True:  # undo the chunked transfer encoding
        size_line, _, rest = chunked.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        payload, chunked = payload + rest[:size], rest[size + 2:]
    events = [line[6:] for line in payload.decode().split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    tokens = [c for c in chunks if c["choices"] and c["choices"][0]["logprobs"]]
    assert len(tokens) == 600
    offsets = [c["choices"][0]["logprobs"]["text_offset"][0] for c in tokens]
    assert offsets == sorted(offsets)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


# -- the event loop never blocks ---------------------------------------------------------------------------
class LivezProber(threading.Thread):
    """Times GET /livez every ~20 ms from its own thread and connection."""

    def __init__(self, base_url: str):
        super().__init__(daemon=True)
        self.base_url = base_url
        self.latencies: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=10) as c:
            while not self.stop.is_set():
                start = time.perf_counter()
                r = c.get("/livez")
                self.latencies.append(time.perf_counter() - start)
                assert r.status_code == 200
                time.sleep(0.02)

    def __enter__(self) -> LivezProber:
        self.start()
        wait_for(lambda: len(self.latencies) >= 3, what="livez probes")
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.join(10)


# OAI-CONC-005 runs the server in its own process and takes host CPU starvation out of
# what it measures: how and why in support.loop_probe (shared with EL-001.4).
LOOP_LAG_BOUND_S = 0.100  # every observation of the server's loop-lag metric, less CPU wait
STREAMS = 8
ATTEMPTS = 2  # one re-run when the shared host starves the server; a real block fails both
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def server_process(tiny_model):
    """The tiny qwen2 model (the `server` fixture's) served from a process of its own."""
    with ServerProcess(str(tiny_model("qwen2").hf_dir), max_num_seqs=STREAMS) as srv:
        yield srv


class Streams(threading.Thread):
    """STREAMS completions streaming at once, all from this one thread (one Trio loop,
    one client: little of the test process's GIL taken from the prober); records when
    each stream's first and last token chunk arrived (perf_counter)."""

    def __init__(self, base_url: str, max_tokens: int = 120):
        super().__init__(daemon=True, name="streams")
        self.base_url, self.max_tokens = base_url, max_tokens
        self.chunks = [0] * STREAMS
        self.first: list[float | None] = [None] * STREAMS
        self.last: list[float | None] = [None] * STREAMS
        self.done = [False] * STREAMS

    def run(self) -> None:
        trio.run(self._all)

    async def _all(self) -> None:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=60) as c, trio.open_nursery() as n:
            for i in range(STREAMS):
                n.start_soon(self._one, c, i)

    async def _one(self, c: httpx.AsyncClient, i: int) -> None:
        body = {"prompt": f"stream {i}", "max_tokens": self.max_tokens, "ignore_eos": True, "stream": True}
        async with c.stream("POST", COMP, json=body) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    self.chunks[i] += 1
                    self.last[i] = time.perf_counter()
                    if self.first[i] is None:
                        self.first[i] = self.last[i]
                elif line == "data: [DONE]":
                    self.done[i] = True

    def generating_throughout(self, window: tuple[float, float]) -> bool:
        """Every stream had a token before the window and another after it."""
        return all(f is not None and f < window[0] for f in self.first) and \
            all(t is not None and t > window[1] for t in self.last)


def test_OAI_CONC_005_livez_answers_within_100ms_while_a_500KB_prompt_is_tokenized(server_process):
    """8 streams generate while a 500 KB prompt is tokenized (/tokenize, then a chat request
    refused for its length); /livez, timed from another thread, answers within 100 ms
    every time and the loop-lag metric records no observation over 100 ms, both less the
    time host CPU starvation kept the threads involved in a run queue (raw: under 2 s)."""
    srv = server_process
    prompt = large_text(500)
    tokenize = json.dumps({"prompt": prompt})  # serialized outside the measured run
    chat = json.dumps({"messages": [{"role": "user", "content": prompt}], "max_tokens": 5})
    attempts: list[Measurement] = []
    for _ in range(ATTEMPTS):
        streams = Streams(srv.base_url)
        with httpx.Client(base_url=srv.base_url, timeout=60, headers=JSON) as http, Measurement(srv) as m:
            streams.start()
            wait_for(lambda: all(streams.chunks), what="all 8 streams under way")  # noqa: B023 (called within this iteration)
            m.request("tokenize", lambda: http.post("/tokenize", content=tokenize))
            m.request("chat", lambda: http.post(CHAT, content=chat))
            streams.join(120)
        attempts.append(m)
        tok, refused = m.results["tokenize"], m.results["chat"]
        assert tok.status_code == 200 and tok.json()["count"] > 50_000
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "context_length_exceeded"
        assert all(streams.done) and min(streams.chunks) >= 100, streams.chunks
        for name in ("tokenize", "chat"):
            assert streams.generating_throughout(m.windows[name]), f"streams not generating during {name}"
            assert len(m.inside(name)) >= 5, f"the probes did not overlap {name}: {m.summary()}"
        assert all(p.status == 200 for p in m.probes), [p for p in m.probes if p.status != 200]
        assert m.worst.latency < CONTRACT_BOUND_S, m.summary()
        # the lag metric kept measuring, and the account is of its observations
        assert m.lag_observations > 50 and m.lag_bound <= CONTRACT_BOUND_S, m.summary()
        assert m.lag.count > 50 and m.lag.raw_max <= m.lag_bound, m.summary()
        if m.within(LIVEZ_BOUND_S, LOOP_LAG_BOUND_S):
            break
    print("\nOAI-CONC-005: " + "\n  retried: ".join(a.summary() for a in attempts))
    assert attempts[-1].within(LIVEZ_BOUND_S, LOOP_LAG_BOUND_S), "\n".join(a.summary() for a in attempts)


def test_OAI_CONC_005_probe_and_lag_metric_see_a_blocked_loop(server_process):
    """The instruments above can fail: the server's loop burns 300 ms of its own CPU time
    at once, which no subtraction of host CPU wait may excuse."""
    srv = server_process
    with Measurement(srv) as m:
        time.sleep(0.1)
        srv.stall(0.3)  # returns when the stall is over
        time.sleep(0.1)
    print(f"\ncontrol: {m.summary()}")
    assert not m.within(LIVEZ_BOUND_S, LOOP_LAG_BOUND_S)
    assert m.worst_server.server_latency > 0.2, m.summary()
    assert m.lag.adjusted_max > 0.25 and m.lag_bound > 0.25, m.summary()


# -- work off the loop, bounded by limiters ---------------------------------------------------------------
def test_OAI_CONC_006_tokenization_and_steps_run_in_worker_threads(make_server, served_model, monkeypatch):
    srv = make_server(tokenizer_threads=2)
    loop_thread = srv._thread.ident
    tokenizer = served_model.tokenizer
    real_encode = type(tokenizer).encode
    lock = threading.Lock()
    seen = {"threads": set(), "active": 0, "max_active": 0}

    def slow_encode(self, text, add_special_tokens=True):
        with lock:
            seen["threads"].add(threading.get_ident())
            seen["active"] += 1
            seen["max_active"] = max(seen["max_active"], seen["active"])
        time.sleep(0.15)
        with lock:
            seen["active"] -= 1
        return real_encode(self, text, add_special_tokens)

    monkeypatch.setattr(type(tokenizer), "encode", slow_encode)
    engine = srv.state.serving().driver.engine
    step_threads = set()
    real_step = engine.step

    def step():
        step_threads.add(threading.get_ident())
        return real_step()

    monkeypatch.setattr(engine, "step", step)
    def tokenize_at_once(prompts: list[str]) -> int:
        seen["max_active"] = 0
        threads = [threading.Thread(target=lambda p=p: httpx.post(
            srv.base_url + "/tokenize", json={"prompt": p}, timeout=60)) for p in prompts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return seen["max_active"]

    with LivezProber(srv.base_url) as prober:
        assert tokenize_at_once([f"text {i}" for i in range(6)]) == 1  # the small lane
        large = "word " * (srv.state.settings.small_work_chars // 5 + 1)
        assert tokenize_at_once([large + str(i) for i in range(4)]) == 2  # the large lane: tokenizer_threads
        assert httpx.post(srv.base_url + COMP, json={"prompt": "x", "max_tokens": 3}, timeout=30).status_code == 200
    assert loop_thread not in seen["threads"] and loop_thread not in step_threads
    assert step_threads
    # Probes kept answering; their latency bound is OAI-CONC-005's (measured there with
    # host CPU starvation accounted for — a raw bound here flakes on a shared machine).
    assert prober.latencies and max(prober.latencies) < 2.0


# -- the engine driver survives an engine failure ------------------------------------------------------------
def test_engine_failure_fails_the_requests_in_flight_and_keeps_serving(make_server, monkeypatch):
    srv = make_server()
    engine = srv.state.serving().driver.engine
    real_step = engine.step
    failures = {"left": 1}

    def flaky_step():
        if failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("simulated kernel failure")
        return real_step()

    monkeypatch.setattr(engine, "step", flaky_step)
    with httpx.Client(base_url=srv.base_url, timeout=30) as c:
        r = c.post(COMP, json={"prompt": "x", "max_tokens": 3})
        assert r.status_code == 500
        assert r.json()["error"]["type"] == "internal_server_error"
        assert "Traceback" not in r.text
        failures["left"] = 1
        with c.stream("POST", CHAT, json={"messages": MSGS, "max_tokens": 3, "stream": True}) as s:
            events = [line[6:] for line in s.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        assert any("error" in json.loads(e) for e in events[:-1])
        wait_idle(c)
        assert c.get("/readyz").status_code == 200
        ok = c.post(COMP, json={"prompt": "x", "max_tokens": 3})
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 3


# -- fan-out unit level: keep-alive ticks, the deadline, errors of one generation ----------------------
class FakeGeneration:
    """Stands in for serving.generation.Generation: deltas() after delays, or an error."""

    def __init__(self, delays: list[float], error: Exception | None = None):
        self.delays, self.error = delays, error
        self.closed = False

    async def deltas(self):
        from triolm.runtime.generation import Delta

        try:
            for i, delay in enumerate(self.delays):
                await trio.sleep(delay)
                yield Delta(f"t{i}", (), "length" if i == len(self.delays) - 1 else None)
            if self.error is not None:
                raise self.error
        finally:
            self.closed = True  # where the real one aborts its engine sequence

    @asynccontextmanager
    async def stream(self):
        """Like Generation.stream: a cancel-safe next_delta() (the i-th delta is due
        at a fixed time, and only counted once returned)."""
        from triolm.runtime.generation import Delta

        due, t = [], trio.current_time()
        for delay in self.delays:
            t += delay
            due.append(t)
        i = 0

        async def next_delta():
            nonlocal i
            if i == len(due):
                if self.error is not None:
                    raise self.error
                return None
            await trio.sleep_until(due[i])
            i += 1
            return Delta(f"t{i - 1}", (), "length" if i == len(due) else None)

        try:
            yield next_delta
        finally:
            self.closed = True

    async def run_to_end(self):
        async for _ in self.deltas():
            pass


async def _collect(gens, timeout, keepalive):
    from triolm.runtime.fanout import merged_deltas

    async with merged_deltas(gens, timeout, keepalive) as events:
        return [e async for e in events]


async def test_fanout_ticks_while_idle_and_merges_by_index():
    from triolm.runtime.fanout import Tick

    gens = [FakeGeneration([0.25]), FakeGeneration([0.0, 0.3])]
    events = await _collect(gens, timeout=5, keepalive=0.05)
    assert sum(isinstance(e, Tick) for e in events) >= 3
    deltas = [(i, d.text) for i, d in (e for e in events if not isinstance(e, Tick))]
    assert sorted(deltas) == [(0, "t0"), (1, "t0"), (1, "t1")]
    assert all(g.closed for g in gens)


async def test_fanout_deadline_yields_timed_out_and_closes_generations():
    from triolm.runtime.fanout import TimedOut

    gens = [FakeGeneration([0.0, 10.0]), FakeGeneration([10.0])]
    with trio.fail_after(3):
        events = await _collect(gens, timeout=0.2, keepalive=0.05)
    assert isinstance(events[-1], TimedOut)
    assert all(g.closed for g in gens)


async def test_fanout_and_run_all_raise_the_failing_generations_error_not_a_group():
    from triolm.runtime.engine_driver import OverloadedError
    from triolm.runtime.fanout import run_all

    with pytest.raises(OverloadedError):
        await _collect([FakeGeneration([10.0]), FakeGeneration([], OverloadedError("full"))], 5, 1)
    with pytest.raises(ValueError):
        await run_all([FakeGeneration([10.0]), FakeGeneration([], ValueError("too long"))], 5)
    with pytest.raises(trio.TooSlowError):
        await run_all([FakeGeneration([10.0])], 0.1)


async def test_fanout_deadline_while_the_consumer_is_slow():
    """The deadline passes while the producer waits at a `yield` for a slow consumer (an
    SSE client reading slowly): still exactly one TimedOut at the end, no error."""
    from triolm.runtime.fanout import TimedOut, merged_deltas

    gens = [FakeGeneration([0.005] * 1000)]
    events = []
    with trio.fail_after(5):
        async with merged_deltas(gens, 0.3, 1.0) as stream:
            async for event in stream:
                events.append(event)
                await trio.sleep(0.03)
    assert isinstance(events[-1], TimedOut) and sum(isinstance(e, TimedOut) for e in events) == 1
    assert gens[0].closed


class FakeEngine:
    """Just enough of LLMEngine for the driver: one token per step for each request."""

    def __init__(self):
        self.requests: dict[str, int] = {}
        self.aborted: list[str] = []
        self.fail_next_step = False

    num_waiting = 0
    weight_version = "fake-weights"

    @property
    def num_running(self):
        return len(self.requests)

    def has_unfinished(self):
        return bool(self.requests)

    def add_request(self, request_id, prompt_ids, params):
        self.requests[request_id] = 0

    def finish(self, request_id, finish):
        self.aborted.append(request_id)
        return self.requests.pop(request_id, None) is not None

    before_layers = None

    def call_before_layers(self, fn):
        self.before_layers = fn

    def pop_failures(self):
        return []  # no sequence fails alone here

    def step(self):
        from triolm.engine.llm_engine import StepOutput

        if self.fail_next_step:
            self.fail_next_step = False
            raise RuntimeError("simulated")
        if self.before_layers is not None:
            self.before_layers()  # as the real engine does, right before its layers
        time.sleep(0.001)
        return [StepOutput(r, 5, -1.0, None, None, 1, 0, 1) for r in self.requests]


async def test_driver_forgets_a_request_whose_stream_was_closed_without_an_abort():
    """A request that closes its token stream (no driver.abort) is aborted in the engine
    and never signalled again; the other requests and the driver keep going."""
    from triolm.engine.sampling_params import SamplingParams
    from triolm.runtime.engine_driver import EngineDriver, EngineFailure

    engine = FakeEngine()
    driver = EngineDriver(engine, max_queue=8)
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run)
        gone = driver.submit("gone", [1], SamplingParams())
        alive = driver.submit("alive", [1], SamplingParams())
        with trio.fail_after(5):
            assert (await gone.receive()).request_id == "gone"  # running in the engine
        await gone.aclose()
        with trio.fail_after(5):
            for _ in range(3):
                assert (await alive.receive()).request_id == "alive"
        assert "gone" in engine.aborted and "gone" not in engine.requests
        assert "gone" not in driver._streams
        never = driver.submit("never", [1], SamplingParams())
        await never.aclose()  # before the engine thread took it: never added at all
        with trio.fail_after(5):
            for _ in range(3):
                assert (await alive.receive()).request_id == "alive"
        assert "never" not in engine.requests and "never" not in driver._streams
        engine.fail_next_step = True  # a failing step fails who is in flight, the driver lives on
        with trio.fail_after(5):
            while True:
                item = await alive.receive()
                if isinstance(item, Exception):
                    break
        assert isinstance(item, EngineFailure) and not driver._streams
        again = driver.submit("again", [1], SamplingParams())
        with trio.fail_after(5):
            assert (await again.receive()).request_id == "again"
        nursery.cancel_scope.cancel()


async def test_driver_cancellation_returns_only_after_the_engine_thread_stopped():
    """The engine thread lives exactly as long as the driver task: once `run` has
    returned (cancelled), the engine is never stepped again."""
    from triolm.engine.sampling_params import SamplingParams
    from triolm.runtime.engine_driver import EngineDriver

    class CountingEngine(FakeEngine):
        steps = 0

        def step(self):
            self.steps += 1
            time.sleep(0.005)  # a step in flight when the cancel arrives
            return super().step()

    engine = CountingEngine()
    driver = EngineDriver(engine, max_queue=8)
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run)
        channel = driver.submit("busy", [1], SamplingParams())
        with trio.fail_after(5):
            for _ in range(3):
                await channel.receive()
        nursery.cancel_scope.cancel()
    stopped_at = engine.steps
    await trio.sleep(0.1)
    assert engine.steps == stopped_at >= 3
