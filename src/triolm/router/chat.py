"""One chat request on the fleet: the router's rendered prompt goes to a backend as token
ids (/v1/completions), and the backend's completion comes back in chat shapes — tool
calls and reasoning parsed by the project's own shaping (`protocol.chat_choices`), the
same code that shapes `triolm serve`'s engine text.

What the router cannot do for a backend: constrain output to tool calls
(`tool_choice` "required" or a named function, and the generic tool format of templates
without tool support) — those need the grammar inside the engine; they are 400s here.
`response_format` and the guided_* fields pass through (the backend compiles them).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from triolm.prompting.prompts import RenderedPrompt
from triolm.prompting.tool_parsers import GENERIC_TOOL_PARSER
from triolm.protocol import openai_format as fmt
from triolm.protocol.chat_choices import ChoiceOptions, ChoiceStream, message_choice
from triolm.protocol.errors import APIError, bad_request
from triolm.protocol.plan import resolve_chat
from triolm.protocol.schemas import ChatCompletionRequest
from triolm.protocol.validation import ModelInfo
from triolm.router import dispatch
from triolm.router.backend_client import BackendBroke
from triolm.router.backends import Choice
from triolm.router.completion_shapes import (
    ChoiceDelta,
    ChoiceResult,
    MalformedCompletion,
    cached_prompt_tokens,
    read_choice,
)
from triolm.router.state import RouterState
from triolm.sessions.turn import FinishedGeneration

MAX_N = 16
# Sampling fields a backend takes as they are.
_PASSED_THROUGH = ("n", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
                   "frequency_penalty", "logit_bias", "seed", "stop", "stop_token_ids", "ignore_eos",
                   "min_tokens", "response_format", "guided_choice", "guided_regex", "guided_json", "user")


def check_tools_supported(state: RouterState, body: ChatCompletionRequest) -> None:
    if not body.tools:
        return
    if body.tool_choice == "required" or isinstance(body.tool_choice, dict):
        raise bad_request("tool_choice 'required' or a named function needs constrained decoding inside "
                          "the engine, which the router cannot ask of its backends: use 'auto' (or "
                          "guided_json / guided_regex)", param="tool_choice")
    if state.frontend.tool_parser == GENERIC_TOOL_PARSER:
        raise bad_request("this model's chat template has no tool support, and the router cannot "
                          "constrain a backend to the generic tool-call format", param="tools")


class FleetChat:
    def __init__(self, state: RouterState, body: ChatCompletionRequest, prompt: RenderedPrompt,
                 session_tool_parser: str | None = None):
        fe = state.frontend
        model = ModelInfo(vocab_size=fe.vocab_size, max_model_len=fe.max_model_len, max_n=MAX_N,
                          max_queue=state.settings.backend_max_inflight, tool_parser=fe.tool_parser,
                          reasoning=fe.reasoning is not None)
        self.plan = resolve_chat(body, model, session_tool_parser=session_tool_parser)
        check_tools_supported(state, body)
        self.state, self.body, self.prompt, self.tool_parser = state, body, prompt, self.plan.tool_parser
        self.max_tokens = self.plan.max_tokens_for(len(prompt.token_ids))
        self.request_id, self.created = fmt.new_id("chatcmpl"), fmt.now()
        self.namer = fmt.TokenNamer(fe.tokenizer, body.return_tokens_as_token_ids)
        self.tool_names = self.plan.tool_names
        self.choice_options = ChoiceOptions(
            tool_parser=self.tool_parser, tool_names=self.tool_names, reasoning=fe.reasoning,
            prompt_text=prompt.text, namer=self.namer, logprobs=bool(body.logprobs),
            token_ids=body.return_token_ids, include_reasoning=body.include_reasoning)
        stop_ids = set(fe.eos_token_ids) | set(body.stop_token_ids or ())
        self.results = [ChoiceResult(stop_ids) for _ in range(body.n)]
        self.cached_tokens: int | None = None
        self.choice: Choice | None = None

    def payload(self, stream: bool) -> dict:
        body = self.body
        out = {k: getattr(body, k) for k in _PASSED_THROUGH if getattr(body, k) is not None}
        out.update(prompt=self.prompt.token_ids, max_tokens=self.max_tokens,
                   logprobs=(body.top_logprobs or 0) if body.logprobs else 0,
                   return_tokens_as_token_ids=True, return_token_ids=True,
                   skip_special_tokens=self.plan.skip_special_tokens,
                   stream=stream)
        if stream:
            out["stream_options"] = {"include_usage": True}
        return out

    # -- the answer -------------------------------------------------------------------
    def finished(self) -> list[FinishedGeneration]:
        """The choices as the session recorder takes them."""
        cached = self.cached_tokens
        prefilled = None if cached is None else len(self.prompt.token_ids) - cached
        backend = {"backend": self.choice.backend.url, "routed_by": self.choice.reason} if self.choice else {}
        return [FinishedGeneration(token_ids=[t.token_id for t in r.tokens], logprobs=[t.logprob for t in r.tokens],
                                   text=r.text, finish=r.finish,
                                   num_cached_prompt_tokens=cached, num_prefilled_tokens=prefilled,
                                   extra_metadata=backend)
                for r in self.results]

    def _usage(self) -> dict:
        completion = sum(len(r.tokens) for r in self.results)
        return fmt.usage(len(self.prompt.token_ids), completion, self.cached_tokens)

    async def complete(self, choice: Choice) -> dict:
        data, self.choice = await dispatch.complete(self.state, self.payload(stream=False), choice,
                                                    self.prompt.token_ids)
        try:
            for c in data.get("choices") or []:
                delta = read_choice(c)
                if 0 <= delta.index < len(self.results):
                    self.results[delta.index].add(delta)
        except MalformedCompletion as exc:
            raise APIError(502, f"backend {self.choice.backend.url}: {exc}", code="backend_malformed",
                           error_type="upstream_error") from None
        self.cached_tokens = cached_prompt_tokens(data.get("usage"))
        return self.response_json()

    def response_json(self) -> dict:
        fe, body = self.state.frontend, self.body
        choices = [message_choice(i, r.text, r.tokens, r.finish, self.choice_options)
                   for i, r in enumerate(self.results)]
        data = {"id": self.request_id, "object": "chat.completion", "created": self.created,
                "model": fe.name, "choices": choices, "usage": self._usage()}
        if body.return_token_ids:
            data["prompt_token_ids"] = self.prompt.token_ids
        return data

    # -- streaming --------------------------------------------------------------------
    async def open_stream(self, choice: Choice, on_done: Callable[[], None] | None = None) -> AsyncIterator[dict]:
        """Reach a backend (retrying once elsewhere) before answering 200; then the chat
        chunks (the caller frames them). `on_done` runs once the stream completed (every
        choice finished)."""
        events, self.choice = await dispatch.open_stream(self.state, self.payload(stream=True), choice,
                                                         self.prompt.token_ids)
        return self._events(events, on_done)

    def _chunk(self, choices: list[dict], usage: dict | None = None, **extra) -> dict:
        return fmt.chunk(self.request_id, "chat.completion.chunk", self.created, self.state.frontend.name,
                         choices, usage, **extra)

    async def _events(self, events: AsyncIterator[dict], on_done: Callable[[], None] | None):
        body = self.body
        ids = body.return_token_ids
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        streams = [ChoiceStream(i, self.choice_options) for i in range(len(self.results))]
        extra = {"prompt_token_ids": self.prompt.token_ids} if ids else {}
        for stream in streams:
            yield self._chunk([stream.role()], **extra)
        failed = False
        try:
            async for event in events:
                if isinstance(event.get("error"), dict):  # the backend's own stream error event
                    failed = True
                    yield {"error": event["error"]}
                    break
                if event.get("usage") is not None:
                    self.cached_tokens = cached_prompt_tokens(event["usage"])
                for c in event.get("choices") or []:
                    delta = read_choice(c)
                    if not 0 <= delta.index < len(self.results):
                        continue
                    for chunk in self._delta_chunks(delta, streams[delta.index]):
                        yield chunk
        except (BackendBroke, MalformedCompletion) as exc:
            failed = True
            err = APIError(502, f"{exc}; the request was not retried (part of it was already sent)",
                           code="backend_failed", error_type="upstream_error")
            yield {"error": err.body()["error"]}
        if include_usage:
            yield self._chunk([], self._usage())
        if not failed and on_done is not None:
            on_done()

    def _delta_chunks(self, delta: ChoiceDelta, stream: ChoiceStream):
        finish = self.results[delta.index].add(delta)
        for choice in stream.pieces(delta.text, delta.tokens, finish):
            yield self._chunk([choice])
        if finish is not None:
            yield self._chunk([stream.finished(finish)])
