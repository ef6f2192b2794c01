"""`triolm serve` and `hypercorn … 'triolm.http.server:create_app()'` as real subprocesses:
they become ready, answer, drain in-flight work on SIGTERM and exit 0; bad models
exit non-zero with a clear message. Plus the flags themselves.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from support.server_process import ServerProcess
from support.server_thread import free_port
from triolm.cli import build_parser, settings_from_args
from triolm.settings import ServerSettings

BIN = Path(sys.executable).parent
MSGS = [{"role": "user", "content": "hi"}]


class Proc(ServerProcess):
    def __init__(self, argv: list[str], tmp_path: Path, env: dict | None = None):
        super().__init__(argv, tmp_path / f"server-{len(list(tmp_path.glob('server-*.log')))}.log", env)


@pytest.fixture
def procs(tmp_path):
    started: list[Proc] = []

    def start(argv, env=None) -> Proc:
        p = Proc(argv, tmp_path, env)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


@pytest.fixture(scope="module")
def model_dir(tiny_model):
    return str(tiny_model("qwen2").hf_dir)


def test_serve_ready_answers_and_drains_in_flight_stream_on_sigterm(procs, model_dir):
    p = procs([str(BIN / "triolm"), "serve", model_dir, "--port", "{port}", "--served-model-name", "tiny",
               "--graceful-timeout", "20", "--shutdown-delay", "1.0"])
    p.wait_ready()
    client = openai.OpenAI(base_url=p.base_url + "/v1", api_key="x", max_retries=0)
    r = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=4)
    assert r.choices[0].message.role == "assistant" and r.usage.completion_tokens <= 4
    assert httpx.get(p.base_url + "/health").json()["status"] == "ok"

    lines: list[str] = []

    def stream() -> None:
        with httpx.Client(base_url=p.base_url, timeout=60) as c:
            with c.stream("POST", "/v1/completions", json={"prompt": "drain me", "max_tokens": 80,
                                                           "ignore_eos": True, "stream": True}) as s:
                lines.extend(line for line in s.iter_lines() if line.startswith("data: "))

    t = threading.Thread(target=stream)
    t.start()
    deadline = time.monotonic() + 30
    while not httpx.get(p.base_url + "/health").json()["requests_running"]:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    sigterm_at = time.monotonic()
    p.popen.send_signal(signal.SIGTERM)
    readyz, refused_work = [], None
    while time.monotonic() - sigterm_at < 0.8:
        try:
            readyz.append(httpx.get(p.base_url + "/readyz", timeout=1).status_code)
            if refused_work is None:
                refused_work = httpx.post(p.base_url + "/v1/completions", json={"prompt": "late"}, timeout=5)
        except httpx.HTTPError:
            readyz.append("refused")
        time.sleep(0.05)
    t.join(30)
    rc = p.popen.wait(30)
    elapsed = time.monotonic() - sigterm_at
    assert 503 in readyz and 200 not in readyz, readyz
    assert refused_work is not None and refused_work.status_code == 503
    assert refused_work.json()["error"]["code"] == "shutting_down"
    # the in-flight stream finished: all its tokens, its final chunk, [DONE]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert len(chunks) == 80 and chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert rc == 0, p.output()
    assert elapsed < 15
    out = p.output()
    assert "shutting down" in out and "Traceback" not in out


def test_sigterm_cancels_what_outlives_the_grace_period(procs, model_dir):
    p = procs([str(BIN / "triolm"), "serve", model_dir, "--port", "{port}", "--graceful-timeout", "1",
               "--shutdown-delay", "0"])
    p.wait_ready()
    got: list[str] = []

    def stream() -> None:
        try:
            with httpx.Client(base_url=p.base_url, timeout=60) as c:
                with c.stream("POST", "/v1/completions", json={"prompt": "long", "max_tokens": 1500,
                                                               "ignore_eos": True, "stream": True}) as s:
                    for line in s.iter_lines():
                        got.append(line)
        except httpx.HTTPError:
            got.append("<cut>")

    t = threading.Thread(target=stream)
    t.start()
    while len(got) < 4:
        time.sleep(0.01)
    start = time.monotonic()
    p.popen.send_signal(signal.SIGTERM)
    rc = p.popen.wait(30)
    t.join(30)
    assert rc == 0, p.output()
    assert time.monotonic() - start < 10
    # cut when the grace period ended, not run to its end: an error chunk, then [DONE]
    data = [line[6:] for line in got if line.startswith("data: ")]
    assert data[-1] == "[DONE]" and json.loads(data[-2])["error"]["code"] == "shutting_down"
    assert len(data) < 1500


def test_hypercorn_with_triolm_environment(procs, model_dir):
    p = procs([str(BIN / "hypercorn"), "--worker-class", "trio", "--bind", "127.0.0.1:{port}",
               "triolm.http.server:create_app()"],
              env={"TRIOLM_MODEL": model_dir, "TRIOLM_SERVED_MODEL_NAME": "env-named",
                   "TRIOLM_API_KEY": "envkey", "TRIOLM_MAX_NUM_SEQS": "2"})
    p.wait_ready()
    assert httpx.get(p.base_url + "/v1/models").status_code == 401
    client = openai.OpenAI(base_url=p.base_url + "/v1", api_key="envkey", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["env-named"]
    r = client.chat.completions.create(model="env-named", messages=MSGS, max_tokens=3)
    assert r.choices[0].finish_reason in ("length", "stop")
    p.popen.send_signal(signal.SIGTERM)
    assert p.popen.wait(30) == 0, p.output()


def test_default_model_is_a_real_one(procs, default_served):
    """No MODEL argument: SmolLM2-135M-Instruct (cached by the fixture), which answers for real."""
    p = procs([str(BIN / "triolm"), "serve", "--port", "{port}"])
    p.wait_ready(timeout=300)
    models = httpx.get(p.base_url + "/v1/models").json()["data"]
    assert [m["id"] for m in models] == ["SmolLM2-135M-Instruct"]
    assert "SmolLM2-135M-Instruct" in httpx.get(p.base_url + "/health").json()["model_card"]
    assert "serving the default model SmolLM2-135M-Instruct" in p.output()
    client = openai.OpenAI(base_url=p.base_url + "/v1", api_key="x", max_retries=0)
    r = client.chat.completions.create(model="SmolLM2-135M-Instruct", temperature=0, max_tokens=20,
                                       messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert r.choices[0].message.content == "The capital of France is Paris."
    p.popen.send_signal(signal.SIGINT)
    assert p.popen.wait(30) == 0, p.output()


def test_missing_model_exits_non_zero_with_a_clear_message(tmp_path):
    missing = tmp_path / "nope" / "model.gguf"
    r = subprocess.run([str(BIN / "triolm"), "serve", str(missing), "--port", str(free_port())],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert str(missing) in r.stderr and "no such file" in r.stderr
    assert "Traceback" not in r.stderr


def test_unreadable_model_exits_non_zero_with_a_clear_message(procs, tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"this is not a GGUF file at all" * 10)
    p = procs([str(BIN / "triolm"), "serve", str(junk), "--port", "{port}"])
    rc = p.popen.wait(60)
    out = p.output()
    assert rc == 1
    assert "model load failed" in out and str(junk) in out


# -- flags -------------------------------------------------------------------------------------
ISSUE_FLAGS = ["--host", "--port", "--served-model-name", "--api-key", "--max-num-seqs", "--max-model-len",
               "--request-timeout", "--tokenizer-mode", "--chat-template", "--log-level", "--max-body-size"]


def test_every_documented_flag_exists_and_reaches_the_settings():
    parser = build_parser()
    help_text = parser._subparsers._group_actions[0].choices["serve"].format_help()
    for flag in ISSUE_FLAGS:
        assert flag in help_text
    args = parser.parse_args(["serve", "m.gguf", "--host", "0.0.0.0", "--port", "9001", "--served-model-name", "n",
                              "--api-key", "k", "--max-num-seqs", "3", "--max-model-len", "4096",
                              "--request-timeout", "7.5", "--tokenizer-mode", "hf", "--chat-template", "t.jinja",
                              "--log-level", "debug", "--max-body-size", "1000"])
    s = settings_from_args(args)
    assert (s.model, s.host, s.port, s.served_model_name, s.api_key, s.max_num_seqs, s.max_model_len,
            s.request_timeout, s.tokenizer_mode, s.chat_template, s.log_level, s.max_body_size) == \
        ("m.gguf", "0.0.0.0", 9001, "n", "k", 3, 4096, 7.5, "hf", "t.jinja", "debug", 1000)
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--tokenizer-mode", "sentencepiece"])


def test_settings_from_triolm_environment():
    s = ServerSettings.from_env({"TRIOLM_MODEL": "/m", "TRIOLM_PORT": "9", "TRIOLM_REQUEST_TIMEOUT": "2.5",
                                 "TRIOLM_API_KEY": "k", "TRIOLM_MAX_MODEL_LEN": ""}, max_num_seqs=5)
    assert (s.model, s.port, s.request_timeout, s.api_key, s.max_model_len, s.max_num_seqs) == \
        ("/m", 9, 2.5, "k", None, 5)


def test_max_model_len_beyond_the_trained_context_is_allowed_with_a_warning(model_dir, caplog):
    from triolm.loading.served_model import load_served_model

    trained = json.loads((Path(model_dir) / "config.json").read_text())["max_position_embeddings"]
    with caplog.at_level(logging.WARNING):
        served = load_served_model(ServerSettings(model=model_dir, max_model_len=trained * 2))
    assert served.max_model_len == trained * 2
    assert any("beyond the model's trained context" in r.getMessage() for r in caplog.records)


def test_chat_template_flag_overrides_the_models_template(model_dir, tmp_path):
    from triolm.loading.served_model import load_served_model
    from triolm.prompting.prompts import render_chat_prompt

    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}<<{{ m.role }}|{{ m.content }}>>{% endfor %}")
    served = load_served_model(ServerSettings(model=model_dir, chat_template=str(template)))
    assert render_chat_prompt(served, MSGS).text == "<<user|hi>>"
