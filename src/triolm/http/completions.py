"""/v1/completions: prompts as a string, strings, token ids or lists of token ids; echo."""

from __future__ import annotations

from collections.abc import AsyncIterator

import trio

from triolm.engine import finish as finishes
from triolm.engine.constraint import GrammarSpec
from triolm.engine.finish import Finish
from triolm.errors import InvalidRequestError
from triolm.http.generations_run import GenerationsRun, admit
from triolm.http.sse_stream import EventStream
from triolm.http.state import AppState
from triolm.http.structured import compile_constraint
from triolm.prompting.prompts import check_prompt_chars, encode_text
from triolm.protocol import openai_format as fmt
from triolm.protocol.errors import bad_request
from triolm.protocol.finish_reason import openai_finish
from triolm.protocol.plan import CompletionPrompts, GenerationPlan
from triolm.protocol.schemas import CompletionRequest
from triolm.runtime.fanout import Tick, TimedOut, merged_deltas
from triolm.runtime.generation import Generation


async def tokenize_prompts(state: AppState, prompts: CompletionPrompts) -> list[list[int]]:
    """Each prompt's token ids: texts tokenized in the lane their size picks (ids were
    checked by the resolver)."""
    served = state.serving().served
    ids = []
    for prompt in prompts.prompts:
        if isinstance(prompt, str):
            try:
                check_prompt_chars(served, len(prompt), "prompt")
            except InvalidRequestError as exc:
                raise bad_request(exc.message, param=exc.param, code=exc.code) from None
            prompt = await state.lanes.run(state.lanes.for_chars(len(prompt)), encode_text, served, prompt,
                                           prompts.add_special_tokens)
            if not prompt:
                raise bad_request("prompt must not be empty", param="prompt")
        ids.append(prompt)
    return ids


class CompletionRun(GenerationsRun):
    chunk_object = "text_completion"

    def __init__(self, state: AppState, plan: GenerationPlan, prompts: list[list[int]],
                 constraint: GrammarSpec | None = None):
        runtime = state.serving()
        served, driver = runtime.served, runtime.driver
        assert isinstance(plan.request, CompletionRequest)
        body = plan.request
        self.state, self.body, self.served, self.prompts = state, body, served, prompts
        self.request_id = fmt.new_id("cmpl") if plan.request_id is None else f"cmpl-{plan.request_id}"
        self.created, self.model_name = fmt.now(), served.name
        self.namer = fmt.TokenNamer(served.tokenizer, body.return_tokens_as_token_ids)
        self.prompt_logprobs = plan.prompt_logprobs
        # echo with max_tokens 0: the prompt alone. One token is generated (the prefill
        # must sample) and not told.
        self.echo_only = plan.echo_only
        self.gens: list[Generation] = []
        self.prompt_index: list[int] = []
        for p_index, prompt in enumerate(prompts):
            max_tokens = plan.max_tokens_for(len(prompt))
            for i in range(plan.n):
                self.gens.append(Generation(driver, served.tokenizer, prompt,
                                            plan.sampling_params(i, max_tokens, constraint), stop=list(plan.stops),
                                            skip_special_tokens=plan.skip_special_tokens,
                                            include_stop_str=plan.include_stop_str))
                self.prompt_index.append(p_index)
        admit(driver, len(self.gens))
        self.start = trio.current_time()

    def _echo_text(self, index: int) -> str:
        return self.served.tokenizer.decode(self.prompts[self.prompt_index[index]],
                                            skip_special_tokens=self.body.skip_special_tokens)

    def _echo_logprobs(self, index: int) -> dict:
        """The echoed prompt's part of choice `index`'s logprobs."""
        return fmt.echoed_prompt_logprobs(self.prompts[self.prompt_index[index]],
                                          self.gens[index].result.prompt_logprobs or (), self.namer)

    def _usage(self) -> dict:
        prompt_tokens = sum(len(p) for p in self.prompts)
        generated = 0 if self.echo_only else sum(len(g.result.tokens) for g in self.gens)
        # a prompt's n generations share its prefill: its first one reports the cache hit
        cached = sum(self.gens[i].result.num_cached_prompt_tokens for i in range(0, len(self.gens), self.body.n))
        return fmt.usage(prompt_tokens, generated, cached)

    def _told(self, text: str, tokens, finish: Finish | None) -> tuple:
        """(text, tokens, finish_reason, stop_reason) told of generated output: for echo
        alone, nothing but the end (the max_tokens of 0 it asked for)."""
        if self.echo_only:
            return "", (), *openai_finish(finishes.LENGTH if finish is not None else None)
        return text, tokens, *openai_finish(finish)

    async def complete(self) -> dict:
        await self._run_to_end()
        choices = []
        for i, g in enumerate(self.gens):
            r = g.result
            text, tokens, finish_reason, stop_reason = self._told(r.text, r.tokens, r.finish)
            prefix = self._echo_text(i) if self.body.echo else ""
            choice = {"index": i, "text": prefix + text, "logprobs": None,
                      "finish_reason": finish_reason, "stop_reason": stop_reason}
            if self.body.logprobs is not None:
                choice["logprobs"] = fmt.completion_logprobs(tokens, self.namer, len(prefix))
                if self.body.echo:
                    choice["logprobs"] = fmt.joined_logprobs(self._echo_logprobs(i), choice["logprobs"])
            if self.body.prompt_logprobs is not None:
                choice["prompt_logprobs"] = fmt.vllm_prompt_logprobs(
                    self.prompts[self.prompt_index[i]], r.prompt_logprobs or (), self.namer)
            if self.body.return_token_ids:
                choice["prompt_token_ids"] = list(self.prompts[self.prompt_index[i]])
                choice["token_ids"] = [t.token_id for t in tokens]
            choices.append(choice)
        return {"id": self.request_id, "object": "text_completion", "created": self.created,
                "model": self.served.name, "choices": choices, "usage": self._usage(),
                "weight_version": self.weight_version}

    def event_stream(self) -> EventStream:
        return EventStream(self._events(), tail=self._usage_events)

    def _usage_events(self) -> list[dict]:
        """The usage chunk, when asked for: after the choices, or after an error."""
        if not (self.body.stream_options and self.body.stream_options.include_usage):
            return []
        return [self._chunk([], self._usage(), weight_version=self.weight_version)]

    async def _events(self) -> AsyncIterator[dict | Tick]:
        body = self.body
        finished = [False] * len(self.gens)
        offsets = [0] * len(self.gens)
        # vLLM's shape: a choice's first chunk carries its prompt's ids, every chunk the
        # ids of the tokens it tells.
        told_prompt = [not body.return_token_ids] * len(self.gens)

        def choice(i: int, fields: dict, tokens=()) -> dict:
            out = {"index": i, **fields}
            if body.return_token_ids:
                if not told_prompt[i]:
                    told_prompt[i] = True
                    out["prompt_token_ids"] = list(self.prompts[self.prompt_index[i]])
                out["token_ids"] = [t.token_id for t in tokens]
            return out

        # With logprobs, a choice's echo waits for its prefill, which gives the prompt's
        # log-probabilities; without, it goes out at once.
        echo_pending = [body.echo] * len(self.gens)

        def echo_chunk(i: int) -> dict:
            echo_pending[i] = False
            text = self._echo_text(i)
            offsets[i] = len(text)
            logprobs = self._echo_logprobs(i) if body.logprobs is not None else None
            return self._chunk([choice(i, {"text": text, "logprobs": logprobs, "finish_reason": None})])

        if body.logprobs is None:
            for i in range(len(self.gens)):
                if echo_pending[i]:
                    yield echo_chunk(i)
        try:
            async with merged_deltas(self.gens, self.state.settings.request_timeout) as events:
                async for event in events:
                    if isinstance(event, Tick):
                        yield event
                        continue
                    if isinstance(event, TimedOut):
                        timed_out, _ = openai_finish(event.finish)
                        for i, done in enumerate(finished):
                            if echo_pending[i]:
                                yield echo_chunk(i)
                            if not done:
                                yield self._chunk([choice(i, {"text": "", "logprobs": None,
                                                              "finish_reason": timed_out})])
                        break
                    i, delta = event
                    if echo_pending[i]:
                        yield echo_chunk(i)
                    text, tokens, finish_reason, stop_reason = self._told(delta.text, delta.tokens, delta.finish)
                    logprobs = None
                    if body.logprobs is not None:
                        logprobs = fmt.completion_logprobs(tokens, self.namer, offsets[i])
                    offsets[i] += len(text)
                    if finish_reason is not None:
                        finished[i] = True
                    final = finish_reason is not None
                    yield self._chunk([choice(i, {"text": text, "logprobs": logprobs,
                                                  "finish_reason": finish_reason,
                                                  "stop_reason": stop_reason}, tokens)],
                                      weight_version=(self.gens[i].result.weight_version
                                                      or self.weight_version) if final else None)
        finally:
            self._observe()


async def prepare_completion(state: AppState, plan: GenerationPlan) -> CompletionRun:
    """Tokenize the plan's prompts, check each against the context, compile the constraint."""
    served = state.serving().served
    assert isinstance(plan.prompt, CompletionPrompts)
    prompts = [plan.truncated(ids) for ids in await tokenize_prompts(state, plan.prompt)]
    constraint = await compile_constraint(state, served, plan.constraint)
    return CompletionRun(state, plan, prompts, constraint)
