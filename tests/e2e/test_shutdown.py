"""SIGTERM always wins (contracts/hostile-input.md, HOSTILE-SHUT-*): a real
`triolm serve` subprocess with a client that never reads a long stream, a client that
reads one, a non-streaming generation and a chat template stuck in a worker thread, all
in flight at SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from support.server_process import ServerProcess

BIN = Path(sys.executable).parent
GRACEFUL = 2.0
LONG = {"prompt": "long", "max_tokens": 1900, "ignore_eos": True}
# Renders in no time for a short message, for minutes for a long one: a worker thread
# that no cancellation reaches (whatever budget templates get, shutdown must not wait).
SLOW_TEMPLATE = ("{% for m in messages %}{% if m.content | length > 1000 %}{% for i in range(100000) %}"
                 "{% for j in range(100000) %}{% endfor %}{% endfor %}{% endif %}"
                 "{{ m.role }}: {{ m.content }}\n{% endfor %}")


def non_reader(port: int) -> socket.socket:
    """A streaming request whose client never reads: small receive window, so the
    server's sends block part-way once the pipe is full."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    body = json.dumps({**LONG, "logprobs": 20, "stream": True}).encode()
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body)
    return sock


@pytest.fixture(scope="module")
def sigterm_run(tiny_model, tmp_path_factory):
    """One server, everything in flight, SIGTERM; what each client saw and how the process ended."""
    tmp = tmp_path_factory.mktemp("shutdown")
    template = tmp / "slow.jinja"
    template.write_text(SLOW_TEMPLATE)
    srv = ServerProcess([str(BIN / "triolm"), "serve", str(tiny_model("qwen2").hf_dir), "--port", "{port}",
                  "--graceful-timeout", str(GRACEFUL), "--shutdown-delay", "0",
                  "--chat-template", str(template)], tmp / "server.log")
    result: dict = {"stream": [], "blocking": None, "stuck": None}
    try:
        srv.wait_ready()
        stuck_sock = non_reader(srv.port)

        def stream() -> None:
            try:
                with httpx.Client(base_url=srv.base_url, timeout=60) as c:
                    with c.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as s:
                        for line in s.iter_lines():
                            if line.startswith("data: "):
                                result["stream"].append(line[6:])
            except httpx.HTTPError as exc:
                result["stream"].append(f"<{type(exc).__name__}>")

        def blocking() -> None:
            try:
                result["blocking"] = httpx.post(srv.base_url + "/v1/completions", json=LONG, timeout=60)
            except httpx.HTTPError as exc:
                result["blocking"] = exc

        def stuck_template() -> None:
            try:
                result["stuck"] = httpx.post(srv.base_url + "/v1/chat/completions", timeout=60, json={
                    "messages": [{"role": "user", "content": "x" * 2000}], "max_tokens": 2})
            except httpx.HTTPError as exc:
                result["stuck"] = exc

        threads = [threading.Thread(target=f, daemon=True) for f in (stream, blocking, stuck_template)]
        for t in threads[:2]:
            t.start()
        deadline = time.monotonic() + 60
        while httpx.get(srv.base_url + "/health").json()["requests_running"] < 3 or len(result["stream"]) < 5:
            assert time.monotonic() < deadline, srv.output()
            time.sleep(0.02)
        threads[2].start()  # last: it holds the prompt worker thread for good
        time.sleep(1.5)  # the non-reader's pipe fills (~20 KB), the template thread is busy
        assert result["stuck"] is None
        sigterm_at = time.monotonic()
        srv.popen.send_signal(signal.SIGTERM)
        try:
            result["rc"] = srv.popen.wait(GRACEFUL + 30)
        except subprocess.TimeoutExpired:
            result["rc"] = None
        result["exit_seconds"] = time.monotonic() - sigterm_at
        for t in threads:
            t.join(10)
        stuck_sock.close()
        result["log"] = srv.output()
        yield result
    finally:
        srv.stop()


def test_HOSTILE_SHUT_001_sigterm_exits_0_within_graceful_timeout_plus_2s(sigterm_run):
    assert sigterm_run["rc"] == 0, sigterm_run["log"]
    assert sigterm_run["exit_seconds"] < GRACEFUL + 2.0, sigterm_run["log"]
    assert sigterm_run["exit_seconds"] >= GRACEFUL - 0.2  # the graceful period was honoured


def test_HOSTILE_SHUT_002_streams_cut_at_the_graceful_timeout_end_with_an_error_chunk_and_done(sigterm_run):
    events = sigterm_run["stream"]
    assert events[-1] == "[DONE]", events[-3:]
    last = json.loads(events[-2])
    assert last["error"]["code"] == "shutting_down" and "graceful timeout" in last["error"]["message"]
    tokens = [e for e in events[:-2] if json.loads(e)["choices"]]
    assert 5 <= len(tokens) < LONG["max_tokens"]  # cut, not run to its end


def test_HOSTILE_SHUT_003_a_non_streaming_generation_cut_at_the_graceful_timeout_gets_503(sigterm_run):
    r = sigterm_run["blocking"]
    assert isinstance(r, httpx.Response), r
    assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"
