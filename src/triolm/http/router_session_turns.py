"""Session turns on the fleet: the router renders and tokenizes (sharing
`prepare_turn` with `triolm serve`), the session's backend generates, and the ids and
logprobs it returns become the nodes (`sessions.turn.record_turn`).

A session is pinned to the backend that holds its prefix cache. When that backend is
gone (down, draining, removed or full), the turn goes where the router would send any
request, and the node's step metadata says so (`moved_from`, `moved_because`).
"""

from __future__ import annotations

import attrs

from triolm.http.sessions_routes import prepare_turn
from triolm.http.sse_stream import EventStream
from triolm.protocol.schemas import ChatCompletionRequest
from triolm.router import dispatch
from triolm.router.backends import Backend, Choice
from triolm.router.chat import FleetChat
from triolm.router.state import RouterState
from triolm.sessions.registry import SessionRegistry
from triolm.sessions.session import Session
from triolm.sessions.turn import PreparedTurn, record_turn


class FleetTurns:
    def __init__(self, state: RouterState):
        self.state = state
        self.registry: SessionRegistry = state.sessions

    def model_name(self) -> str:
        return self.state.frontend.name

    def default_tool_parser(self) -> str:
        return self.state.frontend.tool_parser

    async def prepare(self, session: Session, body: ChatCompletionRequest) -> PreparedTurn:
        return await prepare_turn(self.state.lanes, self.state.frontend, session, body)

    def _start(self, prepared: PreparedTurn, body: ChatCompletionRequest) -> tuple[FleetChat, Choice]:
        session = prepared.session
        run = FleetChat(self.state, body, prepared.prompt, session_tool_parser=session.tool_parser)
        pinned = self.state.pool.get(session.backend) if session.backend else None
        return run, dispatch.choose(self.state, prepared.prompt.token_ids, pinned=pinned)

    def _record(self, prepared: PreparedTurn, run: FleetChat) -> None:
        session = prepared.session
        gens = run.finished()
        used = run.choice.backend
        if session.backend is not None and session.backend != used.url:
            self.state.pool.stats.moved_sessions += 1
            why = _why_moved(self.state, session.backend)
            gens = [attrs.evolve(g, extra_metadata={**g.extra_metadata, "moved_from": session.backend,
                                                     "moved_because": why})
                    for g in gens]
        session.backend = used.url
        record_turn(self.registry, prepared, run.request_id, gens, self.state.frontend.tokenizer)

    async def complete(self, prepared: PreparedTurn, body: ChatCompletionRequest) -> dict:
        run, choice = self._start(prepared, body)
        data = await run.complete(choice)
        self._record(prepared, run)
        return data

    async def open_stream(self, prepared: PreparedTurn, body: ChatCompletionRequest) -> EventStream:
        run, choice = self._start(prepared, body)
        return EventStream(await run.open_stream(choice, on_done=lambda: self._record(prepared, run)))


def _why_moved(state: RouterState, url: str) -> str:
    backend: Backend | None = state.pool.get(url)
    if backend is None:
        return "removed from the fleet"
    if not backend.healthy:
        return f"down ({backend.last_error or 'failed health checks'})"
    if backend.draining:
        return "draining"
    if backend.in_flight >= state.pool.max_inflight:
        return "full"
    return "failed this request"
