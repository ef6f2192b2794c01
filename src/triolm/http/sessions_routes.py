"""Session routes: token-exact rollout recording over the OpenAI chat API.

    POST   /sessions/create                        {"tool_parser"?, "track_tree"?}
    GET    /sessions
    DELETE /{uuid}
    POST   /{uuid}/v1/chat/completions             the OpenAI chat body; recorded as nodes
    POST   /{uuid}/v1/chat/completions/render      the exact prompt, no generation, no node
    GET    /{uuid}/nodes

The chat route renders the prompt text, finds the node it extends (sessions.node), and
feeds the engine that node's tokens + the tokens of the new text only, through the same
`prepare_chat`/`ChatRun` path as /v1/chat/completions. Contract: contracts/sessions.md.
"""

from __future__ import annotations

import attrs
from quart import Blueprint, jsonify, request

from triolm.errors import InvalidRequestError
from triolm.http.body import read_json_object
from triolm.http.chat import ChatPlan, ChatRun, prepare_chat, render_for_request
from triolm.http.routes import sse_response
from triolm.http.state import AppState
from triolm.prompting.prompts import RenderedPrompt, render_chat_text_in_worker
from triolm.prompting.tool_parsers import GENERIC_TOOL_PARSER, TOOL_PARSERS
from triolm.protocol import openai_format as fmt
from triolm.protocol.errors import APIError, bad_request
from triolm.protocol.schemas import ChatCompletionRequest
from triolm.protocol.validation import parse_request
from triolm.runtime.lanes import text_chars
from triolm.sessions.node import Extension, Generated, Node, build_node, find_extension, find_token_extension
from triolm.sessions.raw_history import find_extension_keeping_thinking
from triolm.sessions.registry import SessionNotFound, SessionRegistry, TooManySessions
from triolm.sessions.session import Session

DEFAULT_TOOL_PARSER = "hermes"


@attrs.frozen
class _Prepared:
    session: Session
    extension: Extension
    prompt: RenderedPrompt
    new_prompt_ids: list[int]  # prompt tokens after the extended node's (all of them if none)


def register_sessions(app, state: AppState) -> None:
    registry = state.sessions
    bp = Blueprint("sessions", __name__)

    def lookup(session_id: str) -> Session:
        try:
            return registry.get(session_id)
        except SessionNotFound as exc:
            raise APIError(404, str(exc), param="session_id", code="session_not_found") from None

    @bp.post("/sessions/create")
    async def create_session():
        data = await _json_object(allow_empty=True)
        served = state.serving().served
        parser = data.get("tool_parser")
        if parser is None:
            parser = served.tool_parser or DEFAULT_TOOL_PARSER
        known = TOOL_PARSERS
        if not isinstance(parser, str) or parser not in known:
            raise bad_request(f"unknown tool_parser {parser!r} (known: {', '.join(known)})",
                              param="tool_parser")
        track_tree = data.get("track_tree", False)
        if not isinstance(track_tree, bool):
            raise bad_request("track_tree must be true or false", param="track_tree")
        try:
            session = registry.create(served.name, parser, track_tree)
        except TooManySessions as exc:
            raise APIError(429, str(exc), code="too_many_sessions") from None
        return jsonify({"uuid": session.uuid, "model_name": session.model_name,
                        "tool_parser": session.tool_parser, "track_tree": session.track_tree,
                        "created_at": session.created_at})

    @bp.get("/sessions")
    async def list_sessions():
        return jsonify({"sessions": [s.summary() for s in registry.list()]})

    @bp.delete("/<session_id>")
    async def delete_session(session_id: str):
        lookup(session_id)
        registry.delete(session_id)
        return jsonify({"status": "deleted", "uuid": session_id})

    @bp.get("/<session_id>/nodes")
    async def get_nodes(session_id: str):
        session = lookup(session_id)
        data = {"nodes": [n.to_json() for n in session.nodes]}
        if session.track_tree:
            data["tree"] = [n.to_json() for n in session.tree]
        return jsonify(data)

    @bp.post("/<session_id>/v1/chat/completions/render")
    async def render(session_id: str):
        session = lookup(session_id)
        body = parse_request(ChatCompletionRequest, await _json_object())
        with registry.using(session):
            prepared = await _prepare(state, session, body)
        parent = prepared.extension.parent
        return jsonify({"prompt_text": prepared.prompt.text, "token_ids": prepared.prompt.token_ids,
                        "num_tokens": len(prepared.prompt.token_ids),
                        "extends_node": parent.id if parent is not None else None})

    @bp.post("/<session_id>/v1/chat/completions")
    async def chat(session_id: str):
        session = lookup(session_id)
        body = parse_request(ChatCompletionRequest, await _json_object())
        if body.stream:
            return await _stream(session, body)
        with registry.using(session):
            prepared = await _prepare(state, session, body)
            plan = await _plan(state, session, body, prepared)
            run = ChatRun(state, plan)
            data = await run.complete()
            _record(registry, prepared, plan, run)
        return jsonify(data)

    async def _stream(session: Session, body: ChatCompletionRequest):
        with registry.using(session):
            prepared = await _prepare(state, session, body)
            plan = await _plan(state, session, body, prepared)
            run = ChatRun(state, plan)

        async def events():
            with registry.using(session):
                async for chunk in run.stream():
                    if chunk == fmt.SSE_DONE:
                        _record(registry, prepared, plan, run)
                    yield chunk

        return sse_response(events())

    app.register_blueprint(bp)


async def _json_object(allow_empty: bool = False) -> dict:
    return await read_json_object(await request.get_data(cache=False), allow_empty)


async def _prepare(state: AppState, session: Session, body: ChatCompletionRequest) -> _Prepared:
    """Render the prompt and find the node it extends; tokenize only the new text."""
    served = state.serving().served
    if served.mistral_tokenizer is not None:
        # mistral-common renders tokens, not text: match nodes token by token.
        prompt = await render_for_request(state, served, body)
        parent, new_ids = find_token_extension(session.nodes, prompt.token_ids)
        return _Prepared(session, Extension(parent, ""), prompt, new_ids)
    try:
        text = await render_chat_text_in_worker(
            state.lanes.templates, state.lanes.for_chars(text_chars(body.messages) + text_chars(body.tools)),
            served, body.messages, body.tools, body.add_generation_prompt, body.continue_final_message,
            body.template_variables)
    except InvalidRequestError as exc:
        raise bad_request(exc.message, param=exc.param or "messages", code=exc.code) from None
    extension = find_extension(session.nodes, text)
    if extension.parent is None and served.reasoning is not None:
        kept = await state.lanes.run(state.lanes.for_chars(len(text)), find_extension_keeping_thinking,
                                     session.nodes, text, served.reasoning)
        if kept is not None:
            extension, text = kept
    new_ids = await state.lanes.run(state.lanes.for_chars(len(extension.suffix_text)), served.tokenizer.encode,
                                 extension.suffix_text, False)
    base = extension.parent.tokens if extension.parent is not None else []
    if not base and not new_ids:
        raise bad_request("the rendered prompt is empty", param="messages")
    return _Prepared(session, extension, RenderedPrompt(text, base + new_ids), new_ids)


async def _plan(state: AppState, session: Session, body: ChatCompletionRequest,
                prepared: _Prepared) -> ChatPlan:
    plan = await prepare_chat(state, body, prompt=prepared.prompt)
    # The session's parser, not the server default, reads tool calls out of the output.
    generic = session.tool_parser == GENERIC_TOOL_PARSER  # its replies are JSON even with "none"
    plan.tool_parser = session.tool_parser if body.tools and (body.tool_choice != "none" or generic) else None
    return plan


def _stop_text(plan: ChatPlan, token_ids: list[int], finish_reason: str, stop_reason) -> str | None:
    """The text of the stop token (EOS or a stop_token_ids entry) that ended a generation:
    the response text never includes it (serving.generation), the node's tokens do."""
    if finish_reason != "stop" or not token_ids or isinstance(stop_reason, str):
        return None
    last = token_ids[-1]
    if last not in set(plan.served.eos_token_ids) | set(plan.body.stop_token_ids or ()):
        return None
    return plan.served.tokenizer.decode([last], skip_special_tokens=False) or None


def _record(registry: SessionRegistry, prepared: _Prepared, plan: ChatPlan, run: ChatRun) -> None:
    """Turn each finished generation into a node of the session (if it still exists)."""
    session = prepared.session
    if not registry.is_live(session):
        return
    parent = prepared.extension.parent
    children: list[Node] = []
    for index, gen in enumerate(run.gens):
        r = gen.result
        if r.finish_reason in (None, "abort", "error") or not r.tokens:  # "error": its grammar failed
            continue
        ids = [t.token_id for t in r.tokens]
        step = {"request_id": plan.request_id, "choice_index": index,
                "finish_reason": r.finish_reason, "stop_reason": r.stop_reason,
                "num_prompt_tokens": len(prepared.prompt.token_ids),
                "num_new_prompt_tokens": len(prepared.new_prompt_ids),
                "num_cached_prompt_tokens": r.num_cached_prompt_tokens,
                "num_prefilled_tokens": r.num_prefilled_tokens,
                "num_generated_tokens": len(ids),
                "extended_node": parent.id if parent is not None else None,
                "stop_token_stands_in": prepared.extension.stop_token_stands_in}
        gen_record = Generated(token_ids=ids, logprobs=[t.logprob for t in r.tokens], text=r.text,
                               finish_reason=r.finish_reason,
                               stop_text=_stop_text(plan, ids, r.finish_reason, r.stop_reason),
                               metadata=step)
        children.append(build_node(session.new_node_id(), parent, prepared.new_prompt_ids,
                                   prepared.prompt.text, gen_record))
    if children:
        session.record(parent, children)
