"""/v1/chat/completions: a resolved plan (protocol.plan) gets its prompt (rendered off the
loop) and its constraint (compiled), then generates and is shaped.

`prepare_chat` and `ChatRun` are also used by the sessions routes, which supply their
own prompt tokens and record what was generated.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import attrs
import trio

from triolm.engine.constraint import GrammarSpec
from triolm.errors import InvalidRequestError
from triolm.http.generations_run import GenerationsRun, admit
from triolm.http.sse_stream import EventStream
from triolm.http.state import AppState
from triolm.http.structured import compile_constraint
from triolm.loading.served_model import ServedModel
from triolm.prompting.mistral import invalid_request_from_mistral_error
from triolm.prompting.prompts import (
    RenderedPrompt,
    check_prompt_chars,
    encode_text,
    render_chat_prompt,
    render_chat_text_in_worker,
)
from triolm.protocol import openai_format as fmt
from triolm.protocol.chat_choices import ChoiceOptions, ChoiceStream, message_choice
from triolm.protocol.errors import bad_request
from triolm.protocol.plan import ChatMessages, GenerationPlan, PromptTokenIds
from triolm.protocol.schemas import ChatCompletionRequest
from triolm.protocol.validation import check_token_ids
from triolm.runtime.fanout import Tick, TimedOut, merged_deltas
from triolm.runtime.generation import Generation
from triolm.runtime.lanes import text_chars, verbatim_prompt_chars


@attrs.frozen
class PreparedChat:
    """A chat plan with its prompt rendered and tokenized and its constraint compiled."""

    plan: GenerationPlan
    served: ServedModel
    prompt: RenderedPrompt
    max_tokens: int
    constraint: GrammarSpec | None
    request_id: str
    created: int = attrs.Factory(fmt.now)

    @property
    def body(self) -> ChatCompletionRequest:
        """The checked request (for the flags the reply's shape reads as given)."""
        assert isinstance(self.plan.request, ChatCompletionRequest)
        return self.plan.request

    @property
    def tool_parser(self) -> str | None:
        return self.plan.tool_parser


async def render_for_request(state: AppState, served: ServedModel, chat: ChatMessages,
                             check_context: bool = True) -> RenderedPrompt:
    """The prompt of a chat: rendered (in a template worker process, or by mistral-common
    in a thread) and tokenized in the lane its size picks. With `check_context`, text that
    cannot fit the context is refused before any of that."""
    lanes = state.lanes
    try:
        if check_context:
            check_prompt_chars(served, verbatim_prompt_chars(chat.messages), "messages")
        limiter = lanes.for_chars(text_chars(chat.messages) + text_chars(chat.tools))
        if served.mistral_tokenizer is not None:  # it writes the special tokens itself
            return await lanes.run(
                limiter, render_chat_prompt, served, chat.messages, chat.tools,
                chat.add_generation_prompt, chat.continue_final_message, chat.template_variables)
        text = await render_chat_text_in_worker(
            lanes.templates, limiter, served, chat.messages, chat.tools, chat.add_generation_prompt,
            chat.continue_final_message, chat.template_variables)
        # The template already contains bos and other special tokens as text.
        return RenderedPrompt(text, await lanes.run(limiter, encode_text, served, text, chat.add_special_tokens))
    except InvalidRequestError as exc:
        raise bad_request(exc.message, param=exc.param or "messages", code=exc.code) from None
    except Exception as exc:
        if served.mistral_tokenizer is None:
            raise
        # mistral-common's validation errors name the problem in the message
        mapped = invalid_request_from_mistral_error(exc)
        if mapped is None:
            raise
        raise bad_request(mapped.message, param=mapped.param or "messages") from None


async def prompt_from_token_ids(state: AppState, served: ServedModel, token_ids: list[int]) -> RenderedPrompt:
    """A chat prompt given as token ids (`prompt_token_ids`): used as they are, with their
    decoded text (special tokens kept) as the prompt's text."""
    check_token_ids(token_ids, served.config.vocab_size, "prompt_token_ids")
    text = await state.lanes.run(state.lanes.for_chars(len(token_ids) * 4), served.tokenizer.decode,
                                 token_ids, False)
    return RenderedPrompt(text, list(token_ids))


async def prepare_chat(state: AppState, plan: GenerationPlan, prompt: RenderedPrompt | None = None) -> PreparedChat:
    """Render and tokenize the plan's prompt (unless the caller gives it: a session's),
    check it against the context, compile the constraint."""
    served = state.serving().served
    if prompt is None:
        if isinstance(plan.prompt, PromptTokenIds):
            prompt = await prompt_from_token_ids(state, served, plan.prompt.token_ids)
        else:
            assert isinstance(plan.prompt, ChatMessages)
            prompt = await render_for_request(state, served, plan.prompt)
        prompt = attrs.evolve(prompt, token_ids=plan.truncated(prompt.token_ids))
    max_tokens = plan.max_tokens_for(len(prompt.token_ids))
    constraint = await compile_constraint(state, served, plan.constraint, prompt.text)
    request_id = fmt.new_id("chatcmpl") if plan.request_id is None else f"chatcmpl-{plan.request_id}"
    return PreparedChat(plan, served, prompt, max_tokens, constraint, request_id)


class ChatRun(GenerationsRun):
    """The n generations of one chat request, and their OpenAI shapes."""

    chunk_object = "chat.completion.chunk"

    def __init__(self, state: AppState, prepared: PreparedChat):
        self.state = state
        self.plan = prepared
        self.request_id, self.created, self.model_name = prepared.request_id, prepared.created, prepared.served.name
        plan = prepared.plan
        self.namer = fmt.TokenNamer(prepared.served.tokenizer, plan.request.return_tokens_as_token_ids)
        driver = state.serving().driver
        admit(driver, plan.n)
        self.gens = [
            Generation(driver, prepared.served.tokenizer, prepared.prompt.token_ids,
                       plan.sampling_params(i, prepared.max_tokens, prepared.constraint),
                       stop=list(plan.stops), include_stop_str=plan.include_stop_str,
                       skip_special_tokens=plan.skip_special_tokens)
            for i in range(plan.n)
        ]
        self.tool_names = plan.tool_names
        body = prepared.body
        self.choice_options = ChoiceOptions(
            tool_parser=plan.tool_parser, tool_names=plan.tool_names, reasoning=prepared.served.reasoning,
            prompt_text=prepared.prompt.text, namer=self.namer, logprobs=bool(body.logprobs),
            token_ids=body.return_token_ids, include_reasoning=body.include_reasoning)
        self.echo = plan.echo_text
        self.start = trio.current_time()

    # -- non-streaming ----------------------------------------------------------------
    async def complete(self) -> dict:
        await self._run_to_end()
        return self.response_json()

    def response_json(self) -> dict:
        p = self.plan
        choices = [message_choice(i, g.result.text, g.result.tokens, g.result.finish, self.choice_options,
                                  echo=self.echo)
                   for i, g in enumerate(self.gens)]
        completion_tokens = sum(len(g.result.tokens) for g in self.gens)
        cached = self.gens[0].result.num_cached_prompt_tokens if self.gens else 0
        out = {"id": p.request_id, "object": "chat.completion", "created": p.created,
               "model": p.served.name, "choices": choices,
               "usage": fmt.usage(len(p.prompt.token_ids), completion_tokens, cached),
               "weight_version": self.weight_version}
        if p.body.return_token_ids:
            out["prompt_token_ids"] = list(p.prompt.token_ids)
        if p.body.prompt_logprobs is not None:
            out["prompt_logprobs"] = fmt.vllm_prompt_logprobs(
                p.prompt.token_ids, self.gens[0].result.prompt_logprobs or (), self.namer)
        return out

    # -- streaming --------------------------------------------------------------------
    def event_stream(self) -> EventStream:
        return EventStream(self._events(), tail=self._usage_events)

    def _usage_events(self) -> list[dict]:
        """The usage chunk, when asked for: after the choices, or after an error."""
        p, body = self.plan, self.plan.body
        if not (body.stream_options and body.stream_options.include_usage):
            return []
        completion_tokens = sum(len(g.result.tokens) for g in self.gens)
        return [self._chunk([], fmt.usage(len(p.prompt.token_ids), completion_tokens,
                                          self.gens[0].result.num_cached_prompt_tokens),
                            weight_version=self.weight_version)]

    async def _events(self) -> AsyncIterator[dict | Tick]:
        p = self.plan
        streams = [ChoiceStream(i, self.choice_options) for i in range(len(self.gens))]
        finished = [False] * len(self.gens)
        # vLLM's shape: the prompt's ids on each first (role) chunk
        extra = {"prompt_token_ids": list(p.prompt.token_ids)} if p.body.return_token_ids else None
        for stream in streams:
            yield self._chunk([stream.role()], extra=extra)
        if self.echo:
            for stream in streams:
                yield self._chunk([stream.content(self.echo)])
        try:
            async with merged_deltas(self.gens, self.state.settings.request_timeout) as events:
                async for event in events:
                    if isinstance(event, Tick):
                        yield event
                        continue
                    if isinstance(event, TimedOut):
                        for i, done in enumerate(finished):
                            if not done:
                                finished[i] = True
                                yield self._chunk([streams[i].finished(event.finish)])
                        break
                    i, delta = event
                    for choice in streams[i].pieces(delta.text, delta.tokens, delta.finish):
                        yield self._chunk([choice])
                    if delta.finish is not None:
                        finished[i] = True
                        yield self._chunk([streams[i].finished(delta.finish)],
                                          weight_version=self.gens[i].result.weight_version
                                          or self.weight_version)
        finally:
            self._observe()
