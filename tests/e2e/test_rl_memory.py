"""Memory release and resume on a real `triolm serve` process, its RSS read from /proc.
Clause ids (RL-…) refer to contracts/rl-serving.md."""

from __future__ import annotations

import concurrent.futures
import sys
import time
from pathlib import Path

import httpx
import pytest

from support.rl_client import StreamReader, greedy
from support.server_process import ServerProcess

BIN = Path(sys.executable).parent
PROMPTS = [[1, 2, 3, 4, 5], list(range(300, 700)), [42, 43]]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def process_a(tiny_model, tmp_path):
    srv = ServerProcess([str(BIN / "triolm"), "serve", str(tiny_model("qwen2").hf_dir), "--port", "{port}",
                         "--max-num-seqs", "8", "--weight-version", "A", "--log-level", "warning"],
                        tmp_path / "server.log")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def test_rl_memory_001_release_and_resume(process_a):
    pid = process_a.popen.pid
    with httpx.Client(base_url=process_a.base_url, timeout=120) as http:
        want = [greedy(http, p, 16)[0] for p in PROMPTS]
        want_long = greedy(http, PROMPTS[0], 120)[0]
        for _ in range(2):  # settle the allocator at its working size
            assert [greedy(http, p, 16)[0] for p in PROMPTS] == want
        before = rss_bytes(pid)

        stream = StreamReader(process_a.base_url, PROMPTS[0], 120).start()
        assert stream.first_token.wait(60)
        r = http.post("/release_memory_occupation", json={"tags": ["kv_cache", "weights"]})
        assert r.status_code == 200, r.text
        assert r.json()["memory"] == {"kv_cache": "released", "weights": "released"}
        assert http.post("/release_memory_occupation", json={"tags": ["kv_cache", "weights"]}).status_code == 200
        health = http.get("/health").json()
        assert health["memory"] == {"kv_cache": "released", "weights": "released"}
        assert http.get("/is_sleeping").json() == {"is_sleeping": True}
        released = rss_bytes(pid)
        assert released < before - 20 * 2**20, (before, released)  # the weights (~33 MB) went back

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            queued = pool.submit(greedy, http, PROMPTS[2], 16)  # waits for the memory
            _wait_for(lambda: http.get("/health").json()["requests_waiting"] >= 1)
            assert not queued.done()
            r = http.post("/resume_memory_occupation")
            assert r.status_code == 200 and r.json()["memory"] == {"kv_cache": "resident", "weights": "resident"}
            assert queued.result(60)[0] == want[2]
        assert http.post("/resume_memory_occupation").status_code == 200  # idempotent
        stream.join()
        assert stream.token_ids == want_long  # recomputed after the cache came back: nothing lost
        assert [greedy(http, p, 16)[0] for p in PROMPTS] == want
        after = rss_bytes(pid)
        assert abs(after - before) < 50 * 2**20, (before, after)
        assert http.get("/health").json()["weight_version"] == "A"


def test_rl_memory_002_vllm_sleep_levels_and_bad_tags(process_a):
    with httpx.Client(base_url=process_a.base_url, timeout=120) as http:
        want = greedy(http, PROMPTS[0], 8)[0]
        r = http.post("/sleep", params={"level": 1})
        assert r.json()["memory"] == {"kv_cache": "released", "weights": "resident"}
        assert http.post("/wake_up", params={"tags": "kv_cache"}).json()["memory"]["kv_cache"] == "resident"
        r = http.post("/sleep", params={"level": 2})
        assert r.json()["memory"] == {"kv_cache": "released", "weights": "released"}
        assert http.post("/wake_up").json()["memory"] == {"kv_cache": "resident", "weights": "resident"}
        assert greedy(http, PROMPTS[0], 8)[0] == want
        for bad, param in (({"tags": ["gpu"]}, "tags"), ({"tags": "kv_cache"}, "tags"), ({"level": 3}, "level")):
            r = http.post("/release_memory_occupation", json=bad)
            assert r.status_code == 400 and r.json()["error"]["param"] == param, bad
        assert http.get("/health").json()["memory"] == {"kv_cache": "resident", "weights": "resident"}


def _wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.02)
