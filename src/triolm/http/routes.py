"""HTTP routes: OpenAI API, tokenize/detokenize, probes, metrics."""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Blueprint, Response, current_app, jsonify, request

from triolm.http.body import read_json_object
from triolm.http.chat import ChatRun, prepare_chat, render_for_request
from triolm.http.completions import prepare_completion
from triolm.http.sse_stream import sse_response
from triolm.http.state import AppState
from triolm.prompting.prompts import encode_text
from triolm.protocol.errors import APIError, bad_request
from triolm.protocol.plan import chat_messages, resolve_chat, resolve_completion
from triolm.protocol.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
    parse_body,
)
from triolm.protocol.validation import check_token_ids, parse_request

bp = Blueprint("triolm", __name__)


def state() -> AppState:
    return current_app.config["TRIOLM_STATE"]


async def json_body() -> dict:
    """The request's JSON object, or a 400 naming what is wrong with it."""
    return await read_json_object(await request.get_data(cache=False))


# -- OpenAI -----------------------------------------------------------------------------
@bp.post("/v1/chat/completions")
async def chat_completions():
    st = state()
    body = parse_request(ChatCompletionRequest, await json_body())
    plan = resolve_chat(body, st.model_info(body.model))
    run = ChatRun(st, await prepare_chat(st, plan))
    if plan.stream:
        return sse_response(run.event_stream())
    return jsonify(await run.complete())


@bp.post("/v1/completions")
async def completions():
    st = state()
    body = parse_request(CompletionRequest, await json_body())
    plan = resolve_completion(body, st.model_info(body.model))
    run = await prepare_completion(st, plan)
    if plan.stream:
        return sse_response(run.event_stream())
    return jsonify(await run.complete())


@bp.get("/v1/models")
async def list_models():
    st = state()
    data = []
    if st.runtime is not None:
        served = st.runtime.served
        data.append({"id": served.name, "object": "model", "created": int(st.started_at),
                     "owned_by": "triolm", "root": served.name,
                     "max_model_len": served.max_model_len, "card": served.card or None,
                     "weight_version": _weight_version(st)})
    return jsonify({"object": "list", "data": data})


def _weight_version(st: AppState) -> str | None:
    return st.runtime.driver.control.weight_version if st.runtime is not None else None


@bp.get("/v1/models/<path:model_id>")
async def get_model(model_id: str):
    st = state()
    served = st.runtime.served if st.runtime is not None else None
    if served is None or served.name != model_id:
        raise APIError(404, f"The model `{model_id}` does not exist.", param="model", code="model_not_found")
    return jsonify({"id": served.name, "object": "model", "created": int(st.started_at),
                    "owned_by": "triolm", "max_model_len": served.max_model_len,
                    "card": served.card or None, "weight_version": _weight_version(st)})


# -- tokenize / detokenize (vLLM shapes) --------------------------------------------------
# Behind --api-key like /v1/* (triolm.http.server). Work is admitted to a lane by its size, so a
# big request never holds up a small one. Text beyond the context is still tokenized
# (counting it is what /tokenize is for), within --max-body-size.
@bp.post("/tokenize")
async def tokenize():
    st = state()
    body = parse_body(TokenizeRequest, await json_body())
    served = st.serving().served
    st.check_model_name(body.model)
    if (body.prompt is None) == (body.messages is None):
        raise bad_request("give exactly one of 'prompt' or 'messages'", param="prompt")
    if body.messages is not None:
        if not body.messages:
            raise bad_request("messages must not be empty", param="messages")

        chat_body = parse_body(ChatCompletionRequest, {"messages": body.messages, "tools": body.tools,
                                                       "add_generation_prompt": body.add_generation_prompt})
        tokens = (await render_for_request(st, served, chat_messages(chat_body), check_context=False)).token_ids
    else:
        tokens = await st.lanes.run(st.lanes.for_chars(len(body.prompt)), encode_text, served, body.prompt,
                                    body.add_special_tokens)
    if len(tokens) > _TOKENS_JSON_OFF_LOOP:
        text = await st.lanes.run(st.lanes.for_chars(len(tokens) * _CHARS_PER_TOKEN_ID),
                                  _tokenize_json, tokens, served.max_model_len)
        return Response(text, content_type="application/json")
    return jsonify({"tokens": tokens, "count": len(tokens), "max_model_len": served.max_model_len})


_TOKENS_JSON_OFF_LOOP = 8192
_TOKENS_JSON_SLICE = 8192
_CHARS_PER_TOKEN_ID = 6  # a token id in JSON ("12345,"), or a token's text in /detokenize, near enough


def _tokenize_json(tokens: list[int], max_model_len: int) -> str:
    """The /tokenize body for a long prompt. `json.dumps` of a 150k-id list is one C call
    holding the GIL for ~30 ms wherever it runs; joined slice by slice in a worker
    thread, the event loop can take the GIL between slices (gaps measured ≤ ~10 ms)."""
    ids = ",".join(",".join(map(str, tokens[i:i + _TOKENS_JSON_SLICE]))
                   for i in range(0, len(tokens), _TOKENS_JSON_SLICE))
    return f'{{"tokens": [{ids}], "count": {len(tokens)}, "max_model_len": {max_model_len}}}'


@bp.post("/detokenize")
async def detokenize():
    st = state()
    body = parse_body(DetokenizeRequest, await json_body())
    served = st.serving().served
    st.check_model_name(body.model)
    check_token_ids(body.tokens, served.config.vocab_size, "tokens")
    text = await st.lanes.run(st.lanes.for_chars(len(body.tokens) * _CHARS_PER_TOKEN_ID),
                              served.tokenizer.decode, body.tokens, False)
    return jsonify({"prompt": text})


# -- probes and metrics -------------------------------------------------------------------
@bp.get("/livez")
async def livez():
    return jsonify({"status": "alive"})


@bp.get("/readyz")
async def readyz():
    st = state()
    if st.ready and st.runtime is not None:
        return jsonify({"status": "ready", "model": st.runtime.served.name})
    response = jsonify({"status": "not ready", "reason": st.lifecycle.reason_not_ready})
    response.status_code = 503
    return response


@bp.get("/health")
async def health():
    st = state()
    runtime, lifecycle = st.runtime, st.lifecycle
    driver = runtime.driver if runtime is not None else None
    status = "ok" if st.ready else ("error" if lifecycle.failure is not None else "loading")
    if lifecycle.shutting_down:
        status = "shutting_down"
    data = {
        "status": status,
        "model": runtime.served.name if runtime else None,
        "model_card": runtime.served.card if runtime else None,
        "requests_running": driver.num_running if driver else 0,
        "requests_waiting": driver.num_waiting if driver else 0,
        "kv_cache_usage": driver.engine.kv_cache_usage if driver else 0.0,
        "sessions": len(st.sessions),
        "uptime_seconds": round(time.time() - st.started_at, 3),
    }
    if driver is not None:
        data.update(driver.control.to_json())  # weight_version, generation, memory
    if lifecycle.failure is not None:
        data["error"] = str(lifecycle.failure)
    response = jsonify(data)
    if not st.ready:
        response.status_code = 503
    return response


@bp.get("/metrics")
async def metrics():
    st = state()
    m = st.metrics
    if st.runtime is not None:
        driver = st.runtime.driver
        m.running.set(driver.num_running)
        m.waiting.set(driver.num_waiting)
        m.kv_usage.set(driver.engine.kv_cache_usage)
    return Response(generate_latest(m.registry), content_type=CONTENT_TYPE_LATEST)
