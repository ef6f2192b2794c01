"""`POST /v1/messages` and `POST /v1/messages/count_tokens`: Anthropic's Messages API, run
as a chat request through the chat pipeline (messages_request) and shaped back
(messages_output). Errors on these routes take Anthropic's shape (api.errors)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

from quart import Blueprint, jsonify

from triolm.http.chat import prepare_chat, render_for_request
from triolm.http.chat_parts import ChatPartsRun
from triolm.http.routes import json_body, state
from triolm.http.sse_stream import ANTHROPIC, EventStream, sse_response
from triolm.protocol.errors import APIError, anthropic_error_body
from triolm.protocol.messages_output import MessageEvents, from_chat_completion, new_id
from triolm.protocol.messages_request import (
    CountTokensRequest,
    MessagesRequest,
    chat_request,
    check_thinking,
    parse_messages_request,
)
from triolm.protocol.plan import chat_messages, resolve_chat
from triolm.protocol.reply_parts import Finished
from triolm.protocol.schemas import ChatCompletionRequest
from triolm.protocol.validation import parse_request
from triolm.runtime.fanout import Tick

messages_bp = Blueprint("messages", __name__)

_PARAMS = {"max_completion_tokens": "max_tokens", "max_tokens": "max_tokens", "stop": "stop_sequences"}


def _chat_body(body: CountTokensRequest) -> ChatCompletionRequest:
    served = state().serving().served
    check_thinking(body.thinking, served.reasoning is not None)
    return parse_request(ChatCompletionRequest, chat_request(body))


@messages_bp.post("/v1/messages")
async def create_message():
    st = state()
    body = parse_messages_request(MessagesRequest, await json_body())
    try:
        chat_body = _chat_body(body)
        prepared = await prepare_chat(st, resolve_chat(chat_body, st.model_info(chat_body.model)))
    except APIError as exc:
        exc.param = _PARAMS.get(exc.param, exc.param)
        raise
    run = ChatPartsRun(st, prepared)
    message_id = new_id("msg")
    if body.stream:
        return sse_response(EventStream(_events(run, message_id), ANTHROPIC,
                                        on_error=lambda err: [anthropic_error_body(err)]))
    return jsonify(from_chat_completion(message_id, await run.complete()))


async def _events(run: ChatPartsRun, message_id: str) -> AsyncIterator[dict | Tick]:
    """The Messages API's events (each named by its type) for one chat run's parts."""
    events = MessageEvents(message_id, run.plan.served.name)
    for event in events.start(len(run.plan.prompt.token_ids)):
        yield event
    async with aclosing(run.parts()) as parts:  # closed with the stream: its generation aborts
        async for part in parts:
            if isinstance(part, Tick):
                yield part
                continue
            for event in events.finish(part) if isinstance(part, Finished) else events.push(part):
                yield event


@messages_bp.post("/v1/messages/count_tokens")
async def count_tokens():
    st = state()
    body = parse_messages_request(CountTokensRequest, await json_body())
    served = st.serving().served
    st.check_model_name(body.model)
    prompt = await render_for_request(st, served, chat_messages(_chat_body(body)), check_context=False)
    return jsonify({"input_tokens": len(prompt.token_ids)})

