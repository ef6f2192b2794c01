"""Contract event-loop-001, clause EL-001.4 (contracts/event-loop-001.md), against a
real server: hypercorn on 127.0.0.1, in its own process, serving the tiny
Mistral-architecture model in Mistral tokenizer mode (mistral-common's v3 tokenizer,
chosen by `auto`).

While a 500 KB Mistral chat request and 500 KB `/tokenize` requests are processed
(one after the other, then a chat and a /tokenize at once), another thread polls
`/health` and `/livez` every ~20 ms over the whole processing. Bounds:
- every probe answers, within 2 s wall clock (the contract) — every probe, every run;
- every probe within 100 ms (triolm's bound) once host CPU starvation is taken out (the
  run-queue wait of the server's loop thread and of the probing thread during the probe,
  from the kernel), and every observation of the server's loop-lag metric
  (`triolm:event_loop_lag_seconds`) within 100 ms less the loop thread's own run-queue
  wait; one re-run is allowed. On this shared 2-core VM other processes starve both
  threads for 100-700 ms at times, which says nothing about the server.
- the lag metric as scraped kept measuring and stays under 2 s.
A control renders the same chat prompt on the event loop (what vLLM did) and requires
the instruments to see it, so the measurement itself can fail. How and why the
instruments work: support.loop_probe.

The 500 KB chat prompt (~170k tokens) is beyond the model's 2048-token context:
the server must reject it with a 400 naming its token count and the limit.
"""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from support.loop_probe import CONTRACT_BOUND_S, Measurement, ServerProcess, chat_body, large_text
from support.model_factory import make_test_model
from triolm.prompting.mistral import apply_mistral_chat_template
from triolm.tokenizers.mistral_tokenizer import load_mistral_tokenizer

PROBE_BOUND_S = 0.100  # triolm's own bound for a probe while tokenizing
LOOP_LAG_BOUND_S = 0.100  # the contract's loop-yield bound (EL-001.1), on the server's lag metric
PAYLOAD_KB = 500
MIN_PROBES_PER_REQUEST = 5  # fewer probes inside a request's window would void the test
PROBED = ("/health", "/livez")
ATTEMPTS = 2  # one re-run when the shared host starves the server; a real block fails both
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def model_dir() -> str:
    return str(make_test_model(arch="mistral", gguf_types=()).hf_dir)


@pytest.fixture(scope="module")
def mistral_server(model_dir):
    with ServerProcess(model_dir, max_num_seqs=4) as srv:
        assert srv.mistral_mode, "auto mode must pick mistral-common for this model"
        yield srv


@pytest.fixture(scope="module")
def payload() -> str:
    return large_text(PAYLOAD_KB)


def measure(srv: ServerProcess, payload: str) -> Measurement:
    """One run: a 500 KB chat, /tokenize (messages, then prompt), then a chat and a
    /tokenize at once, all while the poller probes. Bodies are serialized before the
    run, so the test process's GIL is not held against the poller for that."""
    chat = json.dumps(chat_body(payload))
    tokenize_messages = json.dumps({"messages": [{"role": "user", "content": payload}]})
    tokenize_prompt = json.dumps({"prompt": payload})
    with httpx.Client(base_url=srv.base_url, timeout=60, headers=JSON) as client, \
            Measurement(srv, PROBED) as m:
        m.request("chat", lambda: client.post("/v1/chat/completions", content=chat))
        m.request("tokenize_messages", lambda: client.post("/tokenize", content=tokenize_messages))
        m.request("tokenize_prompt", lambda: client.post("/tokenize", content=tokenize_prompt))

        def post(key: str, path: str, body: str) -> None:
            with httpx.Client(base_url=srv.base_url, timeout=60, headers=JSON) as c:
                m.results[key] = c.post(path, content=body)

        workers = [threading.Thread(target=post, args=("both_chat", "/v1/chat/completions", chat)),
                   threading.Thread(target=post, args=("both_tokenize", "/tokenize", tokenize_prompt))]
        with m.window("chat+tokenize"):
            for w in workers:
                w.start()
            for w in workers:
                w.join()
    return m


def test_EL_001_4_probes_answer_while_500kb_mistral_requests_are_processed(mistral_server, model_dir, payload):
    srv = mistral_server
    mistral = load_mistral_tokenizer(model_dir)
    reference = apply_mistral_chat_template(mistral, [{"role": "user", "content": payload}])
    prompt_reference = mistral.instruct_tokenizer.tokenizer.encode(payload, bos=True, eos=False)
    attempts: list[Measurement] = []
    for _ in range(ATTEMPTS):
        m = measure(srv, payload)
        attempts.append(m)
        results = m.results
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
        assert all(p.status == 200 for p in m.probes), [p for p in m.probes if p.status != 200]
        assert m.worst.latency < CONTRACT_BOUND_S, m.summary()
        assert {p.path for p in m.probes} == set(PROBED)
        for name in m.windows:
            assert len(m.inside(name)) >= MIN_PROBES_PER_REQUEST, (name, m.summary())
        # the lag metric kept measuring, and the account is of its observations
        assert m.lag_observations > 10 and m.lag_bound <= CONTRACT_BOUND_S, m.summary()
        assert m.lag.count > 10 and m.lag.raw_max <= m.lag_bound, m.summary()
        if m.within(PROBE_BOUND_S, LOOP_LAG_BOUND_S):
            break
    print("\nEL-001.4: " + "\n  retried: ".join(a.summary() for a in attempts))
    # triolm's bounds: every probe and loop-lag observation of a run under 100 ms, host CPU starvation excepted
    assert attempts[-1].within(PROBE_BOUND_S, LOOP_LAG_BOUND_S), "\n".join(a.summary() for a in attempts)


def test_EL_001_4_probes_detect_a_blocked_loop(mistral_server, payload):
    """Control: render the chat prompt on the event loop (what vLLM did) and the same
    measurement must see the block — probes and loop lag far over 100 ms, also after
    host CPU wait is subtracted."""
    srv = mistral_server
    chat = json.dumps(chat_body(payload))
    srv.block_loop(True)
    try:
        with httpx.Client(base_url=srv.base_url, timeout=60, headers=JSON) as client, \
                Measurement(srv, PROBED) as m:
            response = m.request("chat", lambda: client.post("/v1/chat/completions", content=chat))
    finally:
        srv.block_loop(False)
    assert response.status_code == 400
    print(f"\ncontrol: {m.summary()}")
    # ~250-300 ms of encoding on the loop thread; its CPU starvation is not subtracted away
    assert not m.within(PROBE_BOUND_S, LOOP_LAG_BOUND_S)
    assert m.worst_server.server_latency > 1.5 * PROBE_BOUND_S, m.summary()
    assert m.lag.adjusted_max > 1.5 * LOOP_LAG_BOUND_S, m.summary()
    assert m.lag_bound > LOOP_LAG_BOUND_S, m.summary()
