"""/v1/chat/completions: prepare (render off the loop, validate), generate, shape.

`prepare_chat` and `ChatRun` are also used by the sessions routes, which supply their
own prompt tokens and record what was generated.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import attrs
import trio

from triolm.errors import InvalidRequestError
from triolm.http.generations_run import GenerationsRun, admit
from triolm.http.sse_stream import EventStream
from triolm.http.state import AppState, request_limits
from triolm.http.structured import constraint_for_chat, tool_parsing_mode
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
from triolm.protocol.sampling import build_sampling_params, check_context, stop_strings, truncated_prompt
from triolm.protocol.schemas import ChatCompletionRequest
from triolm.protocol.validation import check_against_model, requested_max_tokens
from triolm.runtime.fanout import Tick, TimedOut, merged_deltas
from triolm.runtime.generation import Generation
from triolm.runtime.lanes import text_chars, verbatim_prompt_chars


@attrs.define
class ChatPlan:
    body: ChatCompletionRequest
    served: ServedModel
    prompt: RenderedPrompt
    max_tokens: int
    stops: list[str]
    tool_parser: str | None  # parse tool calls out of the output with this parser
    constraint: object | None
    request_id: str = attrs.Factory(lambda: fmt.new_id("chatcmpl"))
    created: int = attrs.Factory(fmt.now)


async def render_for_request(state: AppState, served: ServedModel, body: ChatCompletionRequest,
                             check_context: bool = True) -> RenderedPrompt:
    """The prompt of a chat request: rendered (in a template worker process, or by
    mistral-common in a thread) and tokenized in the lane its size picks. With
    `check_context`, text that cannot fit the context is refused before any of that."""
    lanes = state.lanes
    try:
        if check_context:
            check_prompt_chars(served, verbatim_prompt_chars(body.messages), "messages")
        limiter = lanes.for_chars(text_chars(body.messages) + text_chars(body.tools))
        if served.mistral_tokenizer is not None:
            if body.add_special_tokens:
                raise bad_request("add_special_tokens is not supported with mistral-common's tokenizer "
                                  "(it writes the special tokens itself)", param="add_special_tokens")
            return await lanes.run(
                limiter, render_chat_prompt, served, body.messages, body.tools,
                body.add_generation_prompt, body.continue_final_message, body.template_variables)
        text = await render_chat_text_in_worker(
            lanes.templates, limiter, served, body.messages, body.tools, body.add_generation_prompt,
            body.continue_final_message, body.template_variables)
        # The template already contains bos and other special tokens as text.
        return RenderedPrompt(text, await lanes.run(limiter, encode_text, served, text, body.add_special_tokens))
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
    vocab = served.config.vocab_size
    bad = next((t for t in token_ids if not 0 <= t < vocab), None)
    if bad is not None:
        raise bad_request(f"prompt_token_ids: token id {bad} is outside the vocabulary (0..{vocab - 1})",
                          param="prompt_token_ids")
    text = await state.lanes.run(state.lanes.for_chars(len(token_ids) * 4), served.tokenizer.decode,
                                 token_ids, False)
    return RenderedPrompt(text, list(token_ids))


async def prepare_chat(state: AppState, body: ChatCompletionRequest,
                       prompt: RenderedPrompt | None = None) -> ChatPlan:
    served = state.require_generation().served
    state.check_model_name(body.model)
    check_against_model(body, request_limits(state))
    if prompt is not None and body.truncate_prompt_tokens is not None:
        raise bad_request("truncate_prompt_tokens cannot be used here: the prompt is the session's",
                          param="truncate_prompt_tokens")
    if prompt is None:
        if body.prompt_token_ids is not None:
            prompt = await prompt_from_token_ids(state, served, body.prompt_token_ids)
        else:
            prompt = await render_for_request(state, served, body)
        prompt = attrs.evolve(prompt, token_ids=truncated_prompt(prompt.token_ids, body, served.max_model_len))
    max_tokens = check_context(len(prompt.token_ids), requested_max_tokens(body), served.max_model_len,
                               min_tokens=body.min_tokens)
    constraint = await constraint_for_chat(state, served, body, prompt.text)
    plan = ChatPlan(body=body, served=served, prompt=prompt, max_tokens=max_tokens,
                    stops=stop_strings(body), tool_parser=tool_parsing_mode(served, body),
                    constraint=constraint)
    if body.request_id is not None:
        plan.request_id = f"chatcmpl-{body.request_id}"
    return plan


def echoed_text(body: ChatCompletionRequest) -> str:
    """vLLM's chat `echo`: the last message's text, when the reply continues its role
    (the reply's role is the last message's without a generation prompt)."""
    if not body.echo or body.messages is None:
        return ""
    last = body.messages[-1]
    role = "assistant" if body.add_generation_prompt else last.get("role")
    if last.get("role") != role:
        return ""
    content = last.get("content")
    if isinstance(content, list):
        content = "".join(part["text"] for part in content)
    return content or ""


class ChatRun(GenerationsRun):
    """The n generations of one chat request, and their OpenAI shapes."""

    chunk_object = "chat.completion.chunk"

    def __init__(self, state: AppState, plan: ChatPlan):
        self.state = state
        self.plan = plan
        self.request_id, self.created, self.model_name = plan.request_id, plan.created, plan.served.name
        body = plan.body
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        self.namer = fmt.TokenNamer(plan.served.tokenizer, body.return_tokens_as_token_ids)
        driver = state.serving().driver
        admit(driver, body.n)
        self.gens = [
            Generation(driver, plan.served.tokenizer, plan.prompt.token_ids,
                       build_sampling_params(body, plan.max_tokens, logprobs, seed_offset=i,
                                             constraint=plan.constraint,
                                             prompt_logprobs=body.prompt_logprobs if i == 0 else None),
                       stop=plan.stops, include_stop_str=body.include_stop_str_in_output,
                       # tool and thinking markup may be special tokens ([TOOL_CALLS], [THINK])
                       skip_special_tokens=body.skip_special_tokens and plan.tool_parser is None
                       and plan.served.reasoning is None)
            for i in range(body.n)
        ]
        self.tool_names = [t.get("function", {}).get("name") for t in (body.tools or [])] or None
        self.choice_options = ChoiceOptions(
            tool_parser=plan.tool_parser, tool_names=self.tool_names, reasoning=plan.served.reasoning,
            prompt_text=plan.prompt.text, namer=self.namer, logprobs=bool(body.logprobs),
            token_ids=body.return_token_ids, include_reasoning=body.include_reasoning)
        self.echo = echoed_text(body)
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
