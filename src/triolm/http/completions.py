"""/v1/completions: prompts as a string, strings, token ids or lists of token ids; echo."""

from __future__ import annotations

from collections.abc import AsyncIterator

import trio

from triolm.engine import finish as finishes
from triolm.engine.finish import Finish
from triolm.errors import InvalidRequestError
from triolm.http.generations_run import GenerationsRun, admit
from triolm.http.sse_stream import EventStream
from triolm.http.state import AppState, request_limits
from triolm.http.structured import constraint_for_completion
from triolm.prompting.prompts import check_prompt_chars, encode_text
from triolm.protocol import openai_format as fmt
from triolm.protocol.errors import bad_request
from triolm.protocol.finish_reason import openai_finish
from triolm.protocol.sampling import build_sampling_params, check_context, stop_strings, truncated_prompt
from triolm.protocol.schemas import CompletionRequest
from triolm.protocol.validation import check_against_model, requested_max_tokens
from triolm.runtime.fanout import Tick, TimedOut, merged_deltas
from triolm.runtime.generation import Generation


async def tokenize_prompts(state: AppState, body: CompletionRequest) -> list[list[int]]:
    served = state.serving().served
    prompt = body.prompt
    vocab = served.config.vocab_size
    if isinstance(prompt, str):
        texts = [prompt]
    elif prompt and all(isinstance(p, str) for p in prompt):
        texts = list(prompt)
    elif prompt and all(isinstance(p, int) for p in prompt):
        texts, ids = None, [list(prompt)]
    elif prompt and all(isinstance(p, list) for p in prompt):
        texts, ids = None, [list(p) for p in prompt]
    else:
        raise bad_request("prompt must be a string, a list of strings, a list of token ids "
                          "or a list of lists of token ids, and not empty", param="prompt")
    if texts is not None:
        ids = []
        for text in texts:
            try:
                check_prompt_chars(served, len(text), "prompt")
            except InvalidRequestError as exc:
                raise bad_request(exc.message, param=exc.param, code=exc.code) from None
            ids.append(await state.lanes.run(state.lanes.for_chars(len(text)), encode_text, served, text,
                                             body.add_special_tokens))
    for seq in ids:
        if not seq:
            raise bad_request("prompt must not be empty", param="prompt")
        for t in seq:
            if not 0 <= t < vocab:
                raise bad_request(f"prompt token id {t} is outside the vocabulary (0..{vocab - 1})",
                                  param="prompt")
    return [truncated_prompt(seq, body, served.max_model_len) for seq in ids]


class CompletionRun(GenerationsRun):
    chunk_object = "text_completion"

    def __init__(self, state: AppState, body: CompletionRequest, prompts: list[list[int]], constraint=None):
        runtime = state.serving()
        served, driver = runtime.served, runtime.driver
        self.state, self.body, self.served, self.prompts = state, body, served, prompts
        self.request_id = fmt.new_id("cmpl") if body.request_id is None else f"cmpl-{body.request_id}"
        self.created, self.model_name = fmt.now(), served.name
        self.namer = fmt.TokenNamer(served.tokenizer, body.return_tokens_as_token_ids)
        stops = stop_strings(body)
        # echo + logprobs gives the prompt's log-probabilities too (as vLLM does)
        self.prompt_logprobs = body.prompt_logprobs
        if self.prompt_logprobs is None and body.echo and body.logprobs is not None:
            self.prompt_logprobs = body.logprobs
        # echo with max_tokens 0 (vLLM; scoring harnesses send it): the prompt alone. One
        # token is generated (the prefill must sample) and not told.
        self.echo_only = body.echo and requested_max_tokens(body) == 0
        self.gens: list[Generation] = []
        self.prompt_index: list[int] = []
        for p_index, prompt in enumerate(prompts):
            wanted = 1 if self.echo_only else requested_max_tokens(body) or 16
            max_tokens = check_context(len(prompt), wanted, served.max_model_len,
                                       prompt_param="prompt", min_tokens=body.min_tokens)
            for i in range(body.n):
                params = build_sampling_params(body, max_tokens, body.logprobs, seed_offset=i,
                                               constraint=constraint, prompt_logprobs=self.prompt_logprobs)
                self.gens.append(Generation(driver, served.tokenizer, prompt, params, stop=stops,
                                            skip_special_tokens=body.skip_special_tokens,
                                            include_stop_str=body.include_stop_str_in_output))
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


async def prepare_completion(state: AppState, body: CompletionRequest) -> CompletionRun:
    served = state.require_generation().served
    state.check_model_name(body.model)
    check_against_model(body, request_limits(state))
    if body.suffix:
        raise bad_request("suffix is not supported", param="suffix")
    prompts = await tokenize_prompts(state, body)
    constraint = await constraint_for_completion(state, served, body)
    return CompletionRun(state, body, prompts, constraint)
