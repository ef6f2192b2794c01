"""Session routes: token-exact rollout recording over the OpenAI chat API.

    POST   /sessions/create                        {"tool_parser"?, "track_tree"?}
    GET    /sessions
    DELETE /{uuid}
    POST   /{uuid}/v1/chat/completions             the OpenAI chat body; recorded as nodes
    POST   /{uuid}/v1/chat/completions/render      the exact prompt, no generation, no node
    GET    /{uuid}/nodes

The chat route renders the prompt text, finds the node it extends (sessions.node), and
feeds the engine that node's tokens + the tokens of the new text only. What generates is
a `SessionTurns`: this process's engine (`EngineTurns`, the same `prepare_chat`/`ChatRun`
path as /v1/chat/completions) or, in `triolm router`, a backend. Contract: contracts/sessions.md.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Protocol

import attrs
from quart import Blueprint, jsonify, request

from triolm.errors import InvalidRequestError
from triolm.http.body import read_json_object
from triolm.http.chat import ChatRun, PreparedChat, prepare_chat, prompt_from_token_ids, render_for_request
from triolm.http.sse_stream import EventStream, sse_response
from triolm.http.state import AppState
from triolm.loading.served_model import ServedModel
from triolm.prompting.prompts import RenderedPrompt, render_chat_text_in_worker
from triolm.prompting.tool_parsers import TOOL_PARSERS
from triolm.protocol.errors import APIError, bad_request
from triolm.protocol.plan import chat_messages, resolve_chat
from triolm.protocol.schemas import ChatCompletionRequest
from triolm.protocol.validation import parse_request
from triolm.router.frontend import PromptFrontend
from triolm.runtime.fanout import Tick
from triolm.runtime.lanes import PromptLanes, text_chars
from triolm.sessions.node import Extension, find_extension, find_token_extension
from triolm.sessions.raw_history import find_extension_keeping_thinking
from triolm.sessions.registry import SessionNotFound, SessionRegistry, TooManySessions
from triolm.sessions.session import Session
from triolm.sessions.turn import FinishedGeneration, PreparedTurn, record_turn


class SessionTurns(Protocol):
    """What the session routes need from whatever generates: the local engine
    (`EngineTurns`) or the router's backends (`triolm.http.router_session_turns`)."""

    registry: SessionRegistry

    def model_name(self) -> str:
        """The served model's name; a 503 APIError while nothing can serve."""

    def default_tool_parser(self) -> str:
        """The model's tool-call format: a session's parser unless it names another."""

    async def prepare(self, session: Session, body: ChatCompletionRequest) -> PreparedTurn:
        """The exact prompt of the turn and the node it extends (no generation)."""

    async def complete(self, prepared: PreparedTurn, body: ChatCompletionRequest) -> dict:
        """Generate, record the nodes, return the chat completion."""

    async def open_stream(self, prepared: PreparedTurn, body: ChatCompletionRequest) -> EventStream:
        """Everything that can fail before the first byte, then the SSE events (the
        nodes are recorded when the stream completes)."""


def register_sessions(app, state: AppState) -> None:
    registry = state.sessions
    register_session_routes(app, EngineTurns(state, registry))


def register_session_routes(app, turns: SessionTurns) -> None:
    registry = turns.registry
    bp = Blueprint("sessions", __name__)

    def lookup(session_id: str) -> Session:
        try:
            return registry.get(session_id)
        except SessionNotFound as exc:
            raise APIError(404, str(exc), param="session_id", code="session_not_found") from None

    @bp.post("/sessions/create")
    async def create_session():
        data = await _json_object(allow_empty=True)
        model_name = turns.model_name()
        parser = data.get("tool_parser")
        if parser is None:
            parser = turns.default_tool_parser()
        known = TOOL_PARSERS
        if not isinstance(parser, str) or parser not in known:
            raise bad_request(f"unknown tool_parser {parser!r} (known: {', '.join(known)})",
                              param="tool_parser")
        track_tree = data.get("track_tree", False)
        if not isinstance(track_tree, bool):
            raise bad_request("track_tree must be true or false", param="track_tree")
        try:
            session = registry.create(model_name, parser, track_tree)
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
        since = _since(request.args.get("since"))
        if since is None:
            data = {"nodes": [n.to_json() for n in session.nodes]}
            if session.track_tree:
                data["tree"] = [n.to_json() for n in session.tree]
        else:
            nodes, replaced = session.changes_since(since)
            data = {"nodes": [n.to_json() for n in nodes], "replaced_node_ids": replaced}
            if session.track_tree:
                data["tree"] = [n.to_json() for n in session.tree if n.revision > since]
        data["marker"] = session.revision
        return jsonify(data)

    @bp.post("/<session_id>/v1/chat/completions/render")
    async def render(session_id: str):
        session = lookup(session_id)
        body = parse_request(ChatCompletionRequest, await _json_object())
        with registry.using(session):
            prepared = await turns.prepare(session, body)
        parent = prepared.extension.parent
        return jsonify({"prompt_text": prepared.prompt.text, "token_ids": prepared.prompt.token_ids,
                        "num_tokens": len(prepared.prompt.token_ids),
                        "extends_node": parent.id if parent is not None else None})

    @bp.post("/<session_id>/v1/chat/completions")
    async def chat(session_id: str):
        session = lookup(session_id)
        body = parse_request(ChatCompletionRequest, await _json_object())
        if body.stream:
            with registry.using(session):
                prepared = await turns.prepare(session, body)
                stream = await turns.open_stream(prepared, body)
            return sse_response(used_while_streaming(registry, session, stream))
        with registry.using(session):
            prepared = await turns.prepare(session, body)
            data = await turns.complete(prepared, body)
        return jsonify(data)

    app.register_blueprint(bp)


def _since(raw: str | None) -> int | None:
    """The `since` marker of GET /{uuid}/nodes: a revision number a response gave."""
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise bad_request(f"since must be a marker from an earlier response (an integer >= 0), "
                          f"not {raw!r}", param="since")
    return value


async def _json_object(allow_empty: bool = False) -> dict:
    return await read_json_object(await request.get_data(cache=False), allow_empty)


async def prepare_turn(lanes: PromptLanes, served: ServedModel | PromptFrontend, session: Session,
                       body: ChatCompletionRequest) -> PreparedTurn:
    """Render the prompt and find the node it extends; tokenize only the new text."""
    chat = chat_messages(body)
    try:
        text = await render_chat_text_in_worker(
            lanes.templates, lanes.for_chars(text_chars(chat.messages) + text_chars(chat.tools)),
            served, chat.messages, chat.tools, chat.add_generation_prompt, chat.continue_final_message,
            chat.template_variables)
    except InvalidRequestError as exc:
        raise bad_request(exc.message, param=exc.param or "messages", code=exc.code) from None
    extension = find_extension(session.nodes, text)
    if extension.parent is None and served.reasoning is not None:
        kept = await lanes.run(lanes.for_chars(len(text)), find_extension_keeping_thinking, session.nodes, text,
                               served.reasoning)
        if kept is not None:
            extension, text = kept
    new_ids = await lanes.run(lanes.for_chars(len(extension.suffix_text)), served.tokenizer.encode,
                              extension.suffix_text, False)
    base = extension.parent.tokens if extension.parent is not None else []
    if not base and not new_ids:
        raise bad_request("the rendered prompt is empty", param="messages")
    return PreparedTurn(session, extension, RenderedPrompt(text, base + new_ids), new_ids)


class EngineTurns:
    """Session turns on this process's engine, through the same `prepare_chat`/`ChatRun`
    path as /v1/chat/completions."""

    def __init__(self, state: AppState, registry: SessionRegistry):
        self.state = state
        self.registry = registry

    def model_name(self) -> str:
        served = self.state.serving().served
        return served.name

    def default_tool_parser(self) -> str:
        return self.state.serving().served.tool_parser

    async def prepare(self, session: Session, body: ChatCompletionRequest) -> PreparedTurn:
        served = self.state.serving().served
        if body.prompt_token_ids is not None:
            # The client's own ids: the node they extend is matched token by token.
            prompt = await prompt_from_token_ids(self.state, served, body.prompt_token_ids)
            parent, new_ids = find_token_extension(session.nodes, prompt.token_ids)
            return PreparedTurn(session, Extension(parent, ""), prompt, new_ids)
        if served.mistral_tokenizer is not None:
            # mistral-common renders tokens, not text: match nodes token by token.
            prompt = await render_for_request(self.state, served, chat_messages(body))
            parent, new_ids = find_token_extension(session.nodes, prompt.token_ids)
            return PreparedTurn(session, Extension(parent, ""), prompt, new_ids)
        return await prepare_turn(self.state.lanes, served, session, body)

    async def _plan(self, prepared: PreparedTurn, body: ChatCompletionRequest) -> PreparedChat:
        plan = resolve_chat(body, self.state.model_info(body.model), session_tool_parser=prepared.session.tool_parser)
        return await prepare_chat(self.state, plan, prompt=prepared.prompt)

    async def complete(self, prepared: PreparedTurn, body: ChatCompletionRequest) -> dict:
        plan = await self._plan(prepared, body)
        run = ChatRun(self.state, plan)
        data = await run.complete()
        self._record(prepared, plan, run)
        return data

    async def open_stream(self, prepared: PreparedTurn, body: ChatCompletionRequest) -> EventStream:
        plan = await self._plan(prepared, body)
        run = ChatRun(self.state, plan)
        return recorded_at_end(run.event_stream(), lambda: self._record(prepared, plan, run))

    def _record(self, prepared: PreparedTurn, plan: PreparedChat, run: ChatRun) -> None:
        gens = [FinishedGeneration(token_ids=[t.token_id for t in g.result.tokens],
                                   logprobs=[t.logprob for t in g.result.tokens], text=g.result.text,
                                   finish=g.result.finish,
                                   num_cached_prompt_tokens=g.result.num_cached_prompt_tokens,
                                   num_prefilled_tokens=g.result.num_prefilled_tokens,
                                   weight_spans=tuple((w.weight_version, w.count) for w in g.result.weight_spans))
                for g in run.gens]
        record_turn(self.registry, prepared, plan.request_id, gens, plan.served.tokenizer)


def recorded_at_end(stream: EventStream, record: Callable[[], None]) -> EventStream:
    """`stream`, recording the turn's nodes once its events ended (normally or with an
    error: the choices that finished are recorded); not when its client left first."""

    def tail() -> list[dict]:
        events = list(stream.tail())
        record()
        return events

    return attrs.evolve(stream, tail=tail)


def used_while_streaming(registry: SessionRegistry, session: Session, stream: EventStream) -> EventStream:
    """`stream`, with the session marked in use (it does not expire) while it streams."""

    async def events() -> AsyncIterator[dict | Tick]:
        with registry.using(session):
            async with aclosing(stream.events) as source:
                async for event in source:
                    yield event

    def tail() -> list[dict]:
        with registry.using(session):
            return list(stream.tail())

    return attrs.evolve(stream, events=events(), tail=tail)
