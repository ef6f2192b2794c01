"""`POST /v1/responses`, `GET /v1/responses/{id}`, `DELETE /v1/responses/{id}`: OpenAI's
Responses API, run as a chat request through the chat pipeline (responses_request)
and shaped back (responses_output)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

from quart import Blueprint, jsonify

from triolm.http.chat import prepare_chat
from triolm.http.chat_parts import ChatPartsRun
from triolm.http.routes import json_body, state
from triolm.http.sse_stream import RESPONSES, EventStream, sse_response
from triolm.http.state import AppState
from triolm.protocol.errors import APIError
from triolm.protocol.plan import resolve_chat
from triolm.protocol.reply_parts import Finished
from triolm.protocol.responses_output import ResponseEvents, ResponseShape, output_items, status_of, usage
from triolm.protocol.responses_request import (
    ResponsesRequest,
    chat_request,
    conversation_size,
    input_messages,
    output_messages,
    parse_responses_request,
)
from triolm.protocol.schemas import ChatCompletionRequest
from triolm.protocol.validation import parse_request
from triolm.runtime.fanout import Tick

responses_bp = Blueprint("responses", __name__)

# chat request fields -> the Responses field a client sent them as (for an error's param)
_PARAMS = {"messages": "input", "max_completion_tokens": "max_output_tokens", "max_tokens": "max_output_tokens",
           "response_format": "text"}


def _previous_conversation(st: AppState, body: ResponsesRequest) -> list[dict]:
    if body.previous_response_id is None:
        return []
    stored = st.responses.get(body.previous_response_id)
    if stored is None:
        raise APIError(404, f"Previous response with id '{body.previous_response_id}' not found "
                            "(unknown, expired or evicted from this server's store).",
                       param="previous_response_id", code="previous_response_not_found")
    return stored.conversation


def _remember(st: AppState, body: ResponsesRequest, response: dict, before: list[dict]) -> None:
    if body.store is False:
        return
    conversation = before + input_messages(body.input) + output_messages(response["output"])
    st.responses.put(response["id"], response, conversation, conversation_size(conversation))


@responses_bp.post("/v1/responses")
async def create_response():
    st = state()
    body = parse_responses_request(await json_body())
    before = _previous_conversation(st, body)
    try:
        chat_body = parse_request(ChatCompletionRequest, chat_request(body, before))
        prepared = await prepare_chat(st, resolve_chat(chat_body, st.model_info(chat_body.model)))
    except APIError as exc:
        exc.param = _PARAMS.get(exc.param, exc.param)
        raise
    run = ChatPartsRun(st, prepared)
    shape = ResponseShape(body, prepared.served.name)
    if body.stream:
        events = ResponseEvents(shape)
        return sse_response(EventStream(_events(st, run, events, body, before), RESPONSES,
                                        on_error=lambda err: events.fail(err.body()["error"])))
    chat = await run.complete()
    choice = chat["choices"][0]
    status, incomplete = status_of(choice["finish_reason"])
    u = chat["usage"]
    response = shape.response(status, output_items(choice["message"], choice["finish_reason"]),
                              usage(u["prompt_tokens"], u["completion_tokens"],
                                    u["prompt_tokens_details"]["cached_tokens"]),
                              incomplete=incomplete)
    _remember(st, body, response, before)
    return jsonify(response)


async def _events(st: AppState, run: ChatPartsRun, events: ResponseEvents, body: ResponsesRequest,
                  before: list[dict]) -> AsyncIterator[dict | Tick]:
    """The Responses API's events for one chat run's parts."""
    for event in events.start():
        yield event
    async with aclosing(run.parts()) as parts:  # closed with the stream: its generation aborts
        async for part in parts:
            if isinstance(part, Tick):
                yield part
            elif isinstance(part, Finished):
                for event in events.finish(part):
                    yield event
                _remember(st, body, event["response"], before)
            else:
                for event in events.push(part):
                    yield event


@responses_bp.get("/v1/responses/<response_id>")
async def get_response(response_id: str):
    stored = state().responses.get(response_id)
    if stored is None:
        raise APIError(404, f"Response with id '{response_id}' not found.", param="response_id",
                       code="response_not_found")
    return jsonify(stored.response)


@responses_bp.delete("/v1/responses/<response_id>")
async def delete_response(response_id: str):
    if not state().responses.delete(response_id):
        raise APIError(404, f"Response with id '{response_id}' not found.", param="response_id",
                       code="response_not_found")
    return jsonify({"id": response_id, "object": "response", "deleted": True})
