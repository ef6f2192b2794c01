"""HOSTILE-TMPL-*: chat templates are untrusted code, bounded in time, output and memory
(contracts/hostile-input.md). Every test runs a real server whose chat template
is hostile when the user says "attack" and ordinary otherwise, so each can also show
that the server (and its template worker) serves the next request."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import attrs
import httpx
import psutil
import pytest

from support.paths import REPO_DIR
from support.server_thread import ServerThread, free_port
from triolm.errors import InvalidRequestError
from triolm.prompting.template import ChatTemplate
from triolm.prompting.template_sandbox import MAX_TEMPLATE_CHARS, RenderBudget

BUDGET_SECONDS = 2.0
ORDINARY = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def hostile(body: str) -> str:
    """A template that runs `body` when the last message says "attack"."""
    return "{% if messages[-1].content == 'attack' %}" + body + "{% else %}" + ORDINARY + "{% endif %}"


@pytest.fixture
def serve_template(served_model, base_settings):
    started = []

    def start(source: str, budget: RenderBudget = RenderBudget(BUDGET_SECONDS, 1 << 20), **settings):
        template = ChatTemplate(source, "", "<|im_end|>", budget)
        srv = ServerThread(attrs.evolve(base_settings, **settings),
                           attrs.evolve(served_model, chat_template=template)).start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


def chat(srv, content: str, timeout: float = 60) -> httpx.Response:
    return httpx.post(srv.base_url + "/v1/chat/completions", timeout=timeout,
                      json={"messages": [{"role": "user", "content": content}], "max_tokens": 2})


def assert_budget_error(response: httpx.Response, *words: str) -> str:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "chat_template_budget_exceeded", error
    assert error["type"] == "invalid_request_error" and error["param"] == "messages", error
    for word in words:
        assert word in error["message"], error["message"]
    return error["message"]


def assert_serves_ordinary_chat(srv) -> None:
    response = chat(srv, "hello")
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] is not None


def test_HOSTILE_TMPL_001_nested_range_loops_stop_at_the_time_budget(serve_template):
    srv = serve_template(hostile("{% for i in range(100000) %}{% for j in range(100000) %}"
                                 "{% endfor %}{% endfor %}"))
    start = time.monotonic()
    assert_budget_error(chat(srv, "attack"), "longer than its budget of 2 s")
    tokenize = httpx.post(srv.base_url + "/tokenize", timeout=60,
                          json={"messages": [{"role": "user", "content": "attack"}]})
    assert_budget_error(tokenize, "budget")
    # two renders, each stopped at its 2 s budget (+ the kill slack, + a worker start)
    assert time.monotonic() - start < 2 * (BUDGET_SECONDS + 1) + 5
    assert httpx.get(srv.base_url + "/livez").status_code == 200
    assert_serves_ordinary_chat(srv)


def test_HOSTILE_TMPL_002_lipsum_is_bounded(serve_template):
    srv = serve_template(hostile("{{ lipsum(1000000) }}"))
    assert_budget_error(chat(srv, "attack"), "lipsum")
    assert_serves_ordinary_chat(srv)


def test_HOSTILE_TMPL_003_huge_power_is_refused(serve_template):
    srv = serve_template(hostile("{% set n = 1 %}{{ (n+9)**100000000 }}"))
    assert_budget_error(chat(srv, "attack"), "too large")
    assert_serves_ordinary_chat(srv)


def test_HOSTILE_TMPL_004_string_doubling_stops_at_the_output_budget(serve_template):
    doubling = serve_template(hostile("{% set ns = namespace(s='x') %}{% for i in range(40) %}"
                                      "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}"))
    assert_budget_error(chat(doubling, "attack"), "beyond the budget of 1048576 characters")
    assert_serves_ordinary_chat(doubling)
    recursion = serve_template(hostile("{% macro d(s, n) %}{{ d(s ~ s, n - 1) if n else s|length }}"
                                       "{% endmacro %}{{ d('x', 40) }}"))
    assert_budget_error(chat(recursion, "attack"), "beyond the budget of 1048576 characters")


def test_HOSTILE_TMPL_005_format_width_at_load_and_render(served_model, base_settings, tmp_path):
    template = tmp_path / "format.jinja"
    template.write_text(hostile('{{ "%999999999d"|format(1) }}'))
    settings = attrs.evolve(base_settings, chat_template=str(template))
    # The real load path (no injected model): compiling evaluates nothing of the template.
    before = psutil.Process().memory_info().rss
    with ServerThread(settings) as srv:
        assert_budget_error(chat(srv, "attack"), "format field wider than 10000")
        assert_serves_ordinary_chat(srv)
        grown = psutil.Process().memory_info().rss - before
    assert grown < 1 << 30  # the 2.9 GB the unbounded format allocated at load never happened


def test_HOSTILE_TMPL_005_oversized_template_source_refuses_to_start(served_model, tmp_path):
    template = tmp_path / "huge.jinja"
    template.write_text(ORDINARY + " " * MAX_TEMPLATE_CHARS)
    proc = subprocess.run(
        [sys.executable, "-m", "triolm.cli", "serve", served_model.path, "--port", str(free_port()),
         "--chat-template", str(template)],
        capture_output=True, text=True, timeout=180, env={**os.environ, "PYTHONPATH": _src_path()})
    assert proc.returncode != 0
    assert f"the limit is {MAX_TEMPLATE_CHARS}" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("source", [
    "{% for m in messages %}" * 30 + "{% endfor %}" * 30,  # Python: too many statically nested blocks
    "{{ " + "(" * 30_000 + "1" + ")" * 30_000 + " }}",  # deeper than the parser recurses
])
def test_HOSTILE_TMPL_005_nesting_beyond_the_compiler_is_a_clear_error(source):
    with pytest.raises(InvalidRequestError, match="chat template cannot be compiled"):
        ChatTemplate(source)


def test_HOSTILE_TMPL_006_huge_range_is_a_400(serve_template):
    srv = serve_template(hostile("{% for i in range(10**9) %}{% endfor %}"))
    assert_budget_error(chat(srv, "attack"), "Range too big")
    assert_serves_ordinary_chat(srv)


def test_HOSTILE_TMPL_007_recursion_is_a_400(serve_template):
    srv = serve_template(hostile("{% macro r(n) %}{{ r(n + 1) }}{% endmacro %}{{ r(0) }}"))
    assert_budget_error(chat(srv, "attack"), "recursed too deeply")
    assert_serves_ordinary_chat(srv)


def test_HOSTILE_TMPL_008_huge_repetition_is_a_400(serve_template):
    srv = serve_template(hostile("{% set c = 'c' %}{{ c*10**10 }}"))
    assert_budget_error(chat(srv, "attack"), "repetition would be 10000000000 long")
    assert_serves_ordinary_chat(srv)


def test_HOSTILE_TMPL_009_render_stuck_in_one_call_is_killed(serve_template):
    # One wordwrap over 15 MB: ~15 s inside a single filter call, where no guard looks.
    srv = serve_template(hostile("{{ ('ab ' * 5000000)|wordwrap(2) }}"), budget=RenderBudget(0.2, 1 << 25))
    start = time.monotonic()
    assert_budget_error(chat(srv, "attack"), "longer than its budget of 0.2 s")
    # killed at the budget + 1 s (a warm worker), long before the call could end
    assert time.monotonic() - start < 5
    assert_serves_ordinary_chat(srv)


def test_HOSTILE_TMPL_010_render_memory_is_bounded_by_its_worker(serve_template):
    # Each replace multiplies the string by 8: 1 MB, 8 MB, 64 MB, 512 MB, 4 GB — past the
    # 256 MB worker budget, while every string stays within the output budget until then.
    grow = "{% set ns = namespace(s='x' * 1000000) %}" + "{% set ns.s = ns.s|replace('x', 'xxxxxxxx') %}" * 4
    srv = serve_template(hostile(grow + "{{ ns.s|length }}"), budget=RenderBudget(30, 1 << 33),
                         template_memory=256 << 20)
    server_rss = psutil.Process().memory_info().rss
    message = assert_budget_error(chat(srv, "attack"))
    assert "memory" in message, message
    assert psutil.Process().memory_info().rss < server_rss + (256 << 20)
    assert_serves_ordinary_chat(srv)


def test_HOSTILE_TMPL_011_stuck_template_does_not_hold_shutdown(served_model, tmp_path):
    template = tmp_path / "loop.jinja"
    template.write_text(hostile("{% for i in range(100000) %}{% for j in range(100000) %}"
                                "{% endfor %}{% endfor %}"))
    port = free_port()
    graceful, delay = 2.0, 0.5
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "triolm.cli", "serve", served_model.path, "--port", str(port),
         "--chat-template", str(template), "--template-timeout", "600",
         "--graceful-timeout", str(graceful), "--shutdown-delay", str(delay)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": _src_path()})
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, base)
        with httpx.Client(timeout=600) as client:
            stuck = threading.Thread(target=lambda: _quietly(client.post, base + "/v1/chat/completions",
                                                             json={"messages": [{"role": "user",
                                                                                 "content": "attack"}]}))
            stuck.start()
            time.sleep(1.0)  # the render is running
            assert proc.poll() is None
            proc.send_signal(signal.SIGTERM)
            start = time.monotonic()
            code = proc.wait(timeout=60)
            took = time.monotonic() - start
        assert code == 0, (tmp_path / "server.log").read_text()[-3000:]
        assert took < graceful + delay + 2, took
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _quietly(fn, *args, **kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except httpx.HTTPError:
        pass


def _wait_ready(proc: subprocess.Popen, base: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "server exited early"
        try:
            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("server not ready")


def _src_path() -> str:
    return str(REPO_DIR / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")
