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
from triolm.http.generations_run import STREAM_ERRORS, GenerationsRun, admit, stream_error_event
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
from triolm.protocol.chat_output import make_streamer, shape_message
from triolm.protocol.errors import bad_request
from triolm.protocol.plan import ChatMessages, GenerationPlan, PromptTokenIds
from triolm.protocol.schemas import ChatCompletionRequest
from triolm.protocol.tool_calls import tool_calls_finish_reason
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
        self.echo = plan.echo_text
        self.start = trio.current_time()

    # -- non-streaming ----------------------------------------------------------------
    async def complete(self) -> dict:
        await self._run_to_end()
        return self.response_json()

    def response_json(self) -> dict:
        p = self.plan
        choices = []
        for i, g in enumerate(self.gens):
            r = g.result
            message, called = shape_message(r.text, tool_parser=p.tool_parser, tool_names=self.tool_names,
                                            reasoning=p.served.reasoning, prompt_text=p.prompt.text,
                                            cut_short=r.finish_reason == "length")
            if not p.body.include_reasoning:
                message.pop("reasoning_content", None)
            if self.echo:
                message["content"] = self.echo + (message["content"] or "")
            finish = tool_calls_finish_reason(r.finish_reason) if called else r.finish_reason
            choice = {"index": i, "message": message, "logprobs": None, "finish_reason": finish,
                      "stop_reason": r.stop_reason}
            if p.body.logprobs:
                choice["logprobs"] = fmt.chat_logprobs(r.tokens, self.namer)
            if p.body.return_token_ids:
                choice["token_ids"] = r.token_ids
            choices.append(choice)
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
    def _with_ids(self, choice: dict, tokens) -> dict:
        """A stream choice with the ids of the tokens it tells, when the request asks."""
        if self.plan.body.return_token_ids:
            choice["token_ids"] = [t.token_id for t in tokens]
        return choice

    async def stream(self) -> AsyncIterator[bytes]:
        p = self.plan
        body = p.body
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        streamers = [make_streamer(tool_parser=p.tool_parser, tool_names=self.tool_names,
                                   reasoning=p.served.reasoning, prompt_text=p.prompt.text)
                     for _ in self.gens]
        finished = [False] * len(self.gens)
        token_ids = body.return_token_ids
        # vLLM's shape: the prompt's ids on each first (role) chunk, each chunk's new
        # token ids on its choice; concatenated they are the choice's token_ids.
        extra = {"prompt_token_ids": list(p.prompt.token_ids)} if token_ids else None
        for i in range(len(self.gens)):
            yield self._chunk([self._with_ids({"index": i, "delta": {"role": "assistant", "content": ""},
                                               "logprobs": None, "finish_reason": None}, ())],
                              extra=extra)
        if self.echo:
            for i in range(len(self.gens)):
                yield self._chunk([self._with_ids({"index": i, "delta": {"content": self.echo},
                                                   "logprobs": None, "finish_reason": None}, ())])
        try:
            async with merged_deltas(self.gens, self.state.settings.request_timeout) as events:
                async for event in events:
                    if isinstance(event, Tick):
                        yield fmt.SSE_KEEPALIVE
                        continue
                    if isinstance(event, TimedOut):
                        for i, done in enumerate(finished):
                            if not done:
                                finished[i] = True
                                yield self._chunk([self._with_ids({"index": i, "delta": {}, "logprobs": None,
                                                                   "finish_reason": "length"}, ())])
                        break
                    i, delta = event
                    streamer = streamers[i]
                    deltas = streamer.push(delta.text) if streamer else (
                        [{"content": delta.text}] if delta.text else [])
                    if delta.finish_reason is not None and streamer is not None:
                        deltas += streamer.finish(cut_short=delta.finish_reason == "length")
                    if not body.include_reasoning:
                        deltas = [d for d in deltas if "reasoning_content" not in d]
                    logprobs = fmt.chat_logprobs(delta.tokens, self.namer) if body.logprobs else None
                    per_token = bool(logprobs) or token_ids  # every token is told, text or not
                    for j, d in enumerate(deltas or ([{}] if per_token else [])):
                        yield self._chunk([self._with_ids({"index": i, "delta": d,
                                                           "logprobs": logprobs if j == 0 else None,
                                                           "finish_reason": None},
                                                          delta.tokens if j == 0 else ())])
                    if delta.finish_reason is not None:
                        finished[i] = True
                        finish = delta.finish_reason
                        if streamer is not None and streamer.saw_tool_call:
                            finish = tool_calls_finish_reason(finish)
                        yield self._chunk([self._with_ids({"index": i, "delta": {}, "logprobs": None,
                                                           "finish_reason": finish,
                                                           "stop_reason": delta.stop_reason}, ())],
                                          weight_version=self.gens[i].result.weight_version
                                          or self.weight_version)
        except STREAM_ERRORS as exc:
            yield stream_error_event(exc)
        finally:
            self._observe()
        if include_usage:
            completion_tokens = sum(len(g.result.tokens) for g in self.gens)
            yield self._chunk([], fmt.usage(len(p.prompt.token_ids), completion_tokens,
                                            self.gens[0].result.num_cached_prompt_tokens),
                              weight_version=self.weight_version)
        yield fmt.SSE_DONE
