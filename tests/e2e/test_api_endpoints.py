"""/tokenize and /detokenize (vLLM shapes), /metrics (vLLM-style names), probes and
/health — end to end, plus app-level checks of readiness with Quart's test client.

Clause ids (OAI-…) refer to contracts/openai-compat.md.
"""

from __future__ import annotations

import json
import time

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from triolm.http.server import create_app
from triolm.settings import ServerSettings

MSGS = [{"role": "user", "content": "Hello there"}]


# -- tokenize / detokenize ---------------------------------------------------------------------
def test_OAI_TOK_001_tokenize_and_detokenize_shapes(http, served_model):
    r = http.post("/tokenize", json={"model": served_model.name, "prompt": "Hello world"})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"tokens", "count", "max_model_len"}
    assert body["count"] == len(body["tokens"]) and body["max_model_len"] == served_model.max_model_len
    assert body["tokens"] == served_model.tokenizer.encode("Hello world")
    bare = http.post("/tokenize", json={"prompt": "Hello world", "add_special_tokens": False}).json()["tokens"]
    assert bare == served_model.tokenizer.encode("Hello world", add_special_tokens=False)
    assert len(bare) < len(body["tokens"])  # the tiny model's tokenizer adds a BOS
    d = http.post("/detokenize", json={"model": served_model.name, "tokens": bare})
    assert d.status_code == 200 and d.json() == {"prompt": "Hello world"}
    # messages: the chat prompt, with or without the generation prompt
    chat = http.post("/tokenize", json={"messages": MSGS}).json()
    no_gen = http.post("/tokenize", json={"messages": MSGS, "add_generation_prompt": False}).json()
    assert chat["count"] > no_gen["count"] and chat["tokens"][: no_gen["count"]] == no_gen["tokens"]
    usage = http.post("/v1/chat/completions", json={"messages": MSGS, "max_tokens": 1}).json()["usage"]
    assert usage["prompt_tokens"] == chat["count"]
    assert http.post("/tokenize", json={"model": "other", "prompt": "x"}).status_code == 404


# -- metrics -------------------------------------------------------------------------------------------
REQUIRED = {
    "triolm:num_requests_running": "gauge", "triolm:num_requests_waiting": "gauge",
    "triolm:kv_cache_usage_perc": "gauge", "triolm:prompt_tokens": "counter",
    "triolm:generation_tokens": "counter", "triolm:request_success": "counter",
    "triolm:time_to_first_token_seconds": "histogram", "triolm:inter_token_latency_seconds": "histogram",
    "triolm:e2e_request_latency_seconds": "histogram", "triolm:event_loop_lag_seconds": "histogram",
}


def scrape(http: httpx.Client) -> dict[str, float]:
    r = http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k != "le")
            out[s.name + (f"{{{labels}}}" if labels else "")] = s.value
    return out


def test_OAI_METRICS_001_names_types_and_exact_counts(http, served_model):
    text = http.get("/metrics").text
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    for name, kind in REQUIRED.items():
        assert types.get(name) == kind, name
    for name in ("triolm:prompt_tokens_total", "triolm:generation_tokens_total",
                 "triolm:request_success_total", "triolm:time_to_first_token_seconds_bucket"):
        assert name in text
    before = scrape(http)
    assert before["triolm:num_requests_running"] == 0 and before["triolm:kv_cache_usage_perc"] == 0
    prompt = http.post("/tokenize", json={"prompt": "Count me"}).json()["count"]
    r = http.post("/v1/completions", json={"prompt": "Count me", "max_tokens": 5, "ignore_eos": True})
    assert r.json()["usage"]["prompt_tokens"] == prompt
    after = scrape(http)

    def delta(name: str) -> float:
        return after.get(name, 0) - before.get(name, 0)

    assert delta("triolm:prompt_tokens_total") == prompt
    assert delta("triolm:generation_tokens_total") == 5
    assert delta("triolm:request_success_total{finished_reason=length}") == 1
    assert delta("triolm:time_to_first_token_seconds_count") == 1
    assert delta("triolm:inter_token_latency_seconds_count") == 4
    assert delta("triolm:e2e_request_latency_seconds_count") == 1
    assert delta("triolm:event_loop_lag_seconds_count") > 0


def test_OAI_METRICS_002_gauges_while_a_stream_is_open(http):
    with http.stream("POST", "/v1/completions", json={"prompt": "gauge", "max_tokens": 1500,
                                                      "ignore_eos": True, "stream": True}) as r, \
            httpx.Client(base_url=str(http.base_url), timeout=30) as other:
        lines = r.iter_lines()  # keep the iterator (and the connection) alive while we look
        next(line for line in lines if line.startswith("data: "))
        during = scrape(other)
        assert during["triolm:num_requests_running"] == 1
        assert 0 < during["triolm:kv_cache_usage_perc"] <= 1
    for _ in range(100):  # the disconnect aborts the sequence within a step or two
        idle = scrape(http)
        if idle["triolm:num_requests_running"] == 0 and idle["triolm:kv_cache_usage_perc"] == 0:
            break
        time.sleep(0.01)
    else:
        raise AssertionError(f"gauges did not return to idle: {idle}")


# -- probes ---------------------------------------------------------------------------------------------
def test_OAI_PROBE_001_probes_and_health(http, served_model):
    assert http.get("/livez").json() == {"status": "alive"}
    assert http.get("/readyz").json() == {"status": "ready", "model": served_model.name}
    h = http.get("/health")
    assert h.status_code == 200
    body = h.json()
    assert body["status"] == "ok" and body["model"] == served_model.name
    for key in ("requests_running", "requests_waiting", "kv_cache_usage", "uptime_seconds"):
        assert key in body


# -- app level: Quart's test client --------------------------------------------------------------------
async def _wait(client, path: str, status: int, within: float = 60.0):
    with trio.fail_after(within):
        while True:
            r = await client.get(path)
            if r.status_code == status:
                return r
            await trio.sleep(0.02)


async def test_app_livez_at_once_readyz_after_loading(served_model):
    app = create_app(ServerSettings(model=served_model.path, max_num_seqs=2))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        assert (await client.get("/livez")).status_code == 200
        loading = await client.get("/readyz")
        assert loading.status_code == 503 and (await loading.get_json())["status"] == "not ready"
        r = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
        assert r.status_code == 503 and (await r.get_json())["error"]["code"] == "model_not_ready"
        await _wait(client, "/readyz", 200)
        r = await client.post("/v1/chat/completions", json={"messages": MSGS, "max_tokens": 2})
        assert r.status_code == 200
        assert (await r.get_json())["usage"]["completion_tokens"] <= 2


async def test_app_load_failure_is_reported_not_ready(tmp_path):
    app = create_app(ServerSettings(model=str(tmp_path / "missing.gguf")))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        with trio.fail_after(30):
            while app.config["TRIOLM_STATE"].lifecycle.failure is None:
                await trio.sleep(0.01)
        r = await client.get("/readyz")
        assert r.status_code == 503 and "no such file" in (await r.get_json())["reason"]
        h = await client.get("/health")
        assert h.status_code == 503 and (await h.get_json())["status"] == "error"
        r = await client.post("/v1/completions", json={"prompt": "x"})
        err = (await r.get_json())["error"]
        assert r.status_code == 503 and err["code"] == "model_not_ready" and "no such file" in err["message"]
        assert (await client.get("/livez")).status_code == 200
        assert json.loads(await (await client.get("/v1/models")).get_data())["data"] == []
