"""A chat reply -> Responses API objects: the `response` object with its output items
(reasoning, message, function_call), and the typed stream events with their sequence
numbers, as OpenAI's API and the `openai` client's stream accumulator expect them."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

from triolm.protocol.reply_parts import Finished, Part, TextPart, ToolCallArguments, ToolCallStart
from triolm.protocol.responses_request import ResponsesRequest


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    return {"input_tokens": prompt_tokens,
            "input_tokens_details": {"cached_tokens": cached_tokens, "cache_write_tokens": 0},
            "output_tokens": completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt_tokens + completion_tokens}


def status_of(finish_reason: str) -> tuple[str, dict | None]:
    """(response status, incomplete_details): a reply cut by max_output_tokens is incomplete."""
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    return "completed", None


class ResponseShape:
    """What every shape of one response shares: its id, request echo and model."""

    def __init__(self, body: ResponsesRequest, model: str, response_id: str | None = None):
        self.body = body
        self.model = model
        self.id = response_id or new_id("resp")
        self.created_at = int(time.time())

    def response(self, status: str, output: list[dict], usage_: dict | None = None,
                 incomplete: dict | None = None, error: dict | None = None) -> dict:
        b = self.body
        return {
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "model": self.model, "output": output, "error": error, "incomplete_details": incomplete,
            "instructions": b.instructions, "max_output_tokens": b.max_output_tokens,
            "parallel_tool_calls": b.parallel_tool_calls is not False,
            "previous_response_id": b.previous_response_id,
            "temperature": b.temperature, "top_p": b.top_p,
            "tool_choice": b.tool_choice or "auto", "tools": b.tools or [],
            "text": b.text or {"format": {"type": "text"}}, "truncation": "disabled",
            "metadata": b.metadata or {}, "store": b.store is not False, "background": False,
            "user": b.user, "usage": usage_,
        }


# -- output items ---------------------------------------------------------------------------
def reasoning_item(item_id: str, text: str, status: str) -> dict:
    return {"id": item_id, "type": "reasoning", "summary": [], "status": status,
            "content": [{"type": "reasoning_text", "text": text}] if text else []}


def output_text(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, text: str | None, status: str) -> dict:
    return {"id": item_id, "type": "message", "role": "assistant", "status": status,
            "content": [] if text is None else [output_text(text)]}


def function_call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict:
    return {"id": item_id, "type": "function_call", "call_id": call_id, "name": name,
            "arguments": arguments, "status": status}


def output_items(message: dict, finish_reason: str) -> list[dict]:
    """A chat completion's message as output items: its thinking, its text, its calls."""
    status = "incomplete" if finish_reason == "length" else "completed"
    items = []
    if message.get("reasoning_content"):
        items.append(reasoning_item(new_id("rs"), message["reasoning_content"], status))
    calls = message.get("tool_calls") or []
    if message.get("content") or not (calls or items):  # an empty reply is still one message
        items.append(message_item(new_id("msg"), message.get("content") or "", status))
    for call in calls:
        items.append(function_call_item(new_id("fc"), call["id"], call["function"]["name"],
                                        call["function"]["arguments"], "completed"))
    return items


# -- streaming --------------------------------------------------------------------------------
class ResponseEvents:
    """Parts of a chat reply -> Responses stream events (dicts), numbered in order.

    Each run of one kind of part is one output item: opened (`output_item.added`, and
    `content_part.added` for text), filled by deltas, closed (`…done` events) when the
    next kind starts or the reply ends."""

    def __init__(self, shape: ResponseShape):
        self.shape = shape
        self.sequence = 0
        self.output: list[dict] = []  # finished items
        self.open: dict | None = None  # the item being filled
        self.open_text: list[str] = []
        self.open_call: int | None = None  # tool-call index of an open function_call item

    def _event(self, kind: str, **fields: Any) -> dict:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event

    def start(self) -> Iterator[dict]:
        response = self.shape.response("in_progress", [])
        yield self._event("response.created", response=response)
        yield self._event("response.in_progress", response=response)

    def push(self, part: Part) -> Iterator[dict]:
        if isinstance(part, TextPart):
            kind = "reasoning" if part.kind == "reasoning" else "message"
            if self.open is None or self.open["type"] != kind:
                yield from self._close("completed")
                yield from self._open_text(kind)
            assert self.open is not None  # _open_text opened it
            self.open_text.append(part.text)
            assert self.open is not None  # opened just above when it was not
            common = dict(item_id=self.open["id"], output_index=len(self.output), content_index=0)
            if kind == "reasoning":
                yield self._event("response.reasoning_text.delta", delta=part.text, **common)
            else:
                yield self._event("response.output_text.delta", delta=part.text, logprobs=[], **common)
        elif isinstance(part, ToolCallStart):
            yield from self._close("completed")
            self.open = function_call_item(new_id("fc"), part.call_id, part.name, "", "in_progress")
            self.open_call = part.index
            self.open_text = []
            yield self._event("response.output_item.added", output_index=len(self.output), item=dict(self.open))
        elif isinstance(part, ToolCallArguments):
            if self.open is None or self.open_call != part.index:
                return  # fragments of a call whose header never came: nothing to attach them to
            self.open_text.append(part.fragment)
            yield self._event("response.function_call_arguments.delta", item_id=self.open["id"],
                              output_index=len(self.output), delta=part.fragment)

    def finish(self, finished: Finished) -> Iterator[dict]:
        status, incomplete = status_of(finished.finish_reason)
        if self.open is None and not self.output:
            yield from self._open_text("message")  # an empty reply is still one message
        yield from self._close("incomplete" if status == "incomplete" else "completed")
        response = self.shape.response(status, self.output,
                                       usage(finished.prompt_tokens, finished.completion_tokens,
                                             finished.cached_tokens),
                                       incomplete=incomplete)
        yield self._event("response.completed" if status == "completed" else "response.incomplete",
                          response=response)

    def fail(self, error: dict) -> Iterator[dict]:
        """A generation that failed after the stream began: an `error` event, then
        `response.failed`."""
        yield self._event("error", code=error.get("code"), message=error["message"], param=error.get("param"))
        yield from self._close("incomplete")
        yield self._event("response.failed", response=self.shape.response(
            "failed", self.output, error={"code": error.get("code") or "server_error",
                                          "message": error["message"]}))

    def _open_text(self, kind: str) -> Iterator[dict]:
        if kind == "reasoning":
            self.open, part = reasoning_item(new_id("rs"), "", "in_progress"), {"type": "reasoning_text", "text": ""}
        else:
            self.open, part = message_item(new_id("msg"), None, "in_progress"), output_text("")
        self.open_text = []
        index = len(self.output)
        yield self._event("response.output_item.added", output_index=index, item=dict(self.open))
        yield self._event("response.content_part.added", item_id=self.open["id"], output_index=index,
                          content_index=0, part=part)

    def _close(self, status: str) -> Iterator[dict]:
        item = self.open
        if item is None:
            return
        text = "".join(self.open_text)
        index = len(self.output)
        common = dict(item_id=item["id"], output_index=index)
        if item["type"] == "reasoning":
            yield self._event("response.reasoning_text.done", content_index=0, text=text, **common)
            yield self._event("response.content_part.done", content_index=0,
                              part={"type": "reasoning_text", "text": text}, **common)
            done = reasoning_item(item["id"], text, status)
        elif item["type"] == "message":
            yield self._event("response.output_text.done", content_index=0, text=text, logprobs=[], **common)
            yield self._event("response.content_part.done", content_index=0, part=output_text(text), **common)
            done = message_item(item["id"], text, status)
        else:
            yield self._event("response.function_call_arguments.done", arguments=text, name=item["name"],
                              **common)
            done = function_call_item(item["id"], item["call_id"], item["name"], text, "completed")
        yield self._event("response.output_item.done", output_index=index, item=done)
        self.output.append(done)
        self.open, self.open_text, self.open_call = None, [], None
