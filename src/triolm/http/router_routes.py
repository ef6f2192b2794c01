"""The router's HTTP routes: the OpenAI surface of `triolm serve`, served by the fleet,
plus the admin routes (backends, drain, reload)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Blueprint, Response, current_app, jsonify, request

from triolm.errors import InvalidRequestError
from triolm.http.body import read_json_object
from triolm.http.sse_stream import EventStream, sse_response
from triolm.prompting.prompts import (
    RenderedPrompt,
    check_prompt_chars,
    encode_text,
    render_chat_text_in_worker,
)
from triolm.protocol.errors import APIError, bad_request
from triolm.protocol.plan import completion_prompts
from triolm.protocol.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
    parse_body,
)
from triolm.protocol.validation import parse_request
from triolm.router import dispatch
from triolm.router.backend_client import BackendBroke
from triolm.router.backends import read_backends_file
from triolm.router.chat import FleetChat
from triolm.router.state import RouterState
from triolm.runtime.lanes import text_chars

bp = Blueprint("router", __name__)
BACKEND_HEADER = "X-Triolm-Backend"  # which backend answered (for operators and tests)
admin = Blueprint("router_admin", __name__)


def state() -> RouterState:
    return current_app.config["TRIOLM_ROUTER_STATE"]


async def json_body(allow_empty: bool = False) -> dict:
    return await read_json_object(await request.get_data(cache=False), allow_empty)


def check_model_name(st: RouterState, requested: str | None) -> None:
    if requested and requested != st.frontend.name:
        raise APIError(404, f"The model `{requested}` does not exist. Served: `{st.frontend.name}`.",
                       param="model", code="model_not_found")


async def render_prompt(st: RouterState, body: ChatCompletionRequest) -> RenderedPrompt:
    """As `triolm serve` renders a chat (in a template worker process), tokenized here."""
    fe, lanes = st.frontend, st.lanes
    limiter = lanes.for_chars(text_chars(body.messages) + text_chars(body.tools))
    try:
        text = await render_chat_text_in_worker(lanes.templates, limiter, fe, body.messages, body.tools,
                                                body.add_generation_prompt, body.continue_final_message,
                                                body.template_variables)
    except InvalidRequestError as exc:
        raise bad_request(exc.message, param=exc.param or "messages", code=exc.code) from None
    return RenderedPrompt(text, await lanes.run(limiter, encode_text, fe, text, False))


def _check_running(st: RouterState) -> None:
    if st.shutting_down:
        raise APIError(503, "router is shutting down", code="shutting_down")


# -- OpenAI -----------------------------------------------------------------------------
@bp.post("/v1/chat/completions")
async def chat_completions():
    st = state()
    body = parse_request(ChatCompletionRequest, await json_body())
    _check_running(st)
    check_model_name(st, body.model)
    prompt = await render_prompt(st, body)
    run = FleetChat(st, body, prompt)
    choice = dispatch.choose(st, prompt.token_ids)
    if body.stream:
        response = sse_response(EventStream(await run.open_stream(choice)))
    else:
        response = jsonify(await run.complete(choice))
    response.headers[BACKEND_HEADER] = run.choice.backend.url
    return response


@bp.post("/v1/completions")
async def completions():
    """Passed to a backend with the prompt as token ids (tokenized here, as `triolm serve`
    does: special tokens added); the backend's answer comes back with the router's model name."""
    st = state()
    data = await json_body()
    body = parse_request(CompletionRequest, data)
    _check_running(st)
    check_model_name(st, body.model)
    prompts = await _prompt_ids(st, body)
    payload = {k: v for k, v in data.items() if k != "model"}
    payload["prompt"] = prompts[0] if len(prompts) == 1 else prompts
    choice = dispatch.choose(st, prompts[0])
    name = st.frontend.name
    if not body.stream:
        answer, _ = await dispatch.complete(st, payload, choice, prompts[0])
        return jsonify({**answer, "model": name})
    events, _ = await dispatch.open_stream(st, payload, choice, prompts[0])

    async def relay() -> AsyncIterator[dict]:
        try:
            async for event in events:
                yield {**event, "model": name} if "model" in event else event
        except BackendBroke as exc:
            err = APIError(502, f"{exc}; the request was not retried (part of it was already sent)",
                           code="backend_failed", error_type="upstream_error")
            yield {"error": err.body()["error"]}

    return sse_response(EventStream(relay()))


async def _prompt_ids(st: RouterState, body: CompletionRequest) -> list[list[int]]:
    """As `triolm serve` takes a completion's prompts: ids checked, texts tokenized here."""
    fe = st.frontend
    prompts = []
    for prompt in completion_prompts(body.prompt, fe.vocab_size):
        if isinstance(prompt, str):
            try:
                check_prompt_chars(fe, len(prompt), "prompt")
            except InvalidRequestError as exc:
                raise bad_request(exc.message, param=exc.param, code=exc.code) from None
            prompt = await st.lanes.run(st.lanes.for_chars(len(prompt)), encode_text, fe, prompt,
                                        body.add_special_tokens)
            if not prompt:
                raise bad_request("prompt must not be empty", param="prompt")
        prompts.append(prompt)
    return prompts


def _model_card(st: RouterState) -> dict:
    fe = st.frontend
    return {"id": fe.name, "object": "model", "created": int(st.started_at), "owned_by": "triolm-router",
            "root": fe.name, "max_model_len": fe.max_model_len}


@bp.get("/v1/models")
async def list_models():
    return jsonify({"object": "list", "data": [_model_card(state())]})


@bp.get("/v1/models/<path:model_id>")
async def get_model(model_id: str):
    st = state()
    check_model_name(st, model_id)
    return jsonify(_model_card(st))


@bp.post("/tokenize")
async def tokenize():
    st = state()
    body = parse_body(TokenizeRequest, await json_body())
    check_model_name(st, body.model)
    if (body.prompt is None) == (body.messages is None):
        raise bad_request("give exactly one of 'prompt' or 'messages'", param="prompt")
    if body.messages is not None:
        if not body.messages:
            raise bad_request("messages must not be empty", param="messages")
        chat = parse_body(ChatCompletionRequest, {"messages": body.messages, "tools": body.tools,
                                                  "add_generation_prompt": body.add_generation_prompt})
        tokens = (await render_prompt(st, chat)).token_ids
    else:
        tokens = await st.lanes.run(st.lanes.for_chars(len(body.prompt)), encode_text, st.frontend,
                                    body.prompt, body.add_special_tokens)
    return jsonify({"tokens": tokens, "count": len(tokens), "max_model_len": st.frontend.max_model_len})


@bp.post("/detokenize")
async def detokenize():
    st = state()
    body = parse_body(DetokenizeRequest, await json_body())
    check_model_name(st, body.model)
    vocab = st.frontend.vocab_size
    bad = [t for t in body.tokens if not 0 <= t < vocab]
    if bad:
        raise bad_request(f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})", param="tokens")
    text = await st.lanes.run(st.lanes.for_chars(len(body.tokens) * 6), st.frontend.tokenizer.decode,
                              body.tokens, False)
    return jsonify({"prompt": text})


# -- probes and metrics -------------------------------------------------------------------
@bp.get("/livez")
async def livez():
    return jsonify({"status": "alive"})


def _admitted(st: RouterState) -> int:
    return sum(1 for b in st.pool.backends.values() if st.pool.admitted(b))


@bp.get("/readyz")
async def readyz():
    st = state()
    if not st.shutting_down and _admitted(st):
        return jsonify({"status": "ready", "model": st.frontend.name})
    response = jsonify({"status": "not ready",
                        "reason": "shutting down" if st.shutting_down else "no backend admitted"})
    response.status_code = 503
    return response


@bp.get("/health")
async def health():
    st = state()
    ready = not st.shutting_down and _admitted(st) > 0
    status = "shutting_down" if st.shutting_down else ("ok" if ready else "no_backend")
    backends = [b.summary() for b in st.pool.backends.values()]
    response = jsonify({"status": status, "model": st.frontend.name, "sessions": len(st.sessions),
                        "requests_running": sum(b["in_flight"] for b in backends),
                        "requests_waiting": 0, "backends": backends})
    if not ready:
        response.status_code = 503
    return response


@bp.get("/metrics")
async def metrics():
    st = state()
    st.metrics.refresh(st.pool, len(st.sessions))
    return Response(generate_latest(st.metrics.registry), content_type=CONTENT_TYPE_LATEST)


# -- admin (behind --api-key) -------------------------------------------------------------
@admin.get("/admin/backends")
async def list_backends():
    return jsonify(state().pool.summary())


def reload_backends(st: RouterState) -> dict:
    """The fleet becomes --backend URLs + the backends file's (read again now)."""
    urls = list(st.settings.backends)
    if st.settings.backends_file:
        try:
            urls += read_backends_file(st.settings.backends_file)
        except OSError as exc:
            raise APIError(500, f"cannot read the backends file {st.settings.backends_file}: {exc}",
                           code="backends_file_unreadable") from None
    added, removed = st.pool.set_urls(urls)
    return {"added": added, "removed": removed, "backends": list(st.pool.backends)}


@admin.post("/admin/backends/reload")
async def reload():
    await request.get_data()
    return jsonify(reload_backends(state()))


async def _backend_from_body():
    st = state()
    data = await json_body()
    url = data.get("url")
    if not isinstance(url, str):
        raise bad_request("give the backend's 'url'", param="url")
    backend = st.pool.get(url)
    if backend is None:
        raise APIError(404, f"no backend {url!r} (known: {', '.join(st.pool.backends)})", param="url",
                       code="backend_not_found")
    return backend


@admin.post("/admin/backends/drain")
async def drain():
    """No new work for the backend (sessions pinned to it move); in-flight work finishes."""
    backend = await _backend_from_body()
    backend.draining = True
    return jsonify(backend.summary())


@admin.post("/admin/backends/undrain")
async def undrain():
    backend = await _backend_from_body()
    backend.draining = False
    return jsonify(backend.summary())
