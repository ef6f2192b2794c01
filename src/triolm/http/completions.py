"""/v1/completions: prompts as a string, strings, token ids or lists of token ids; echo."""

from __future__ import annotations

from collections.abc import AsyncIterator

import trio

from triolm.errors import InvalidRequestError
from triolm.http.generations_run import STREAM_ERRORS, GenerationsRun, admit, stream_error_event
from triolm.http.state import AppState, request_limits
from triolm.http.structured import constraint_for_completion
from triolm.prompting.prompts import check_prompt_chars, encode_text
from triolm.protocol import openai_format as fmt
from triolm.protocol.errors import bad_request
from triolm.protocol.sampling import build_sampling_params, check_context, stop_strings
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
            ids.append(await state.lanes.run(state.lanes.for_chars(len(text)), encode_text, served, text, True))
    for seq in ids:
        if not seq:
            raise bad_request("prompt must not be empty", param="prompt")
        for t in seq:
            if not 0 <= t < vocab:
                raise bad_request(f"prompt token id {t} is outside the vocabulary (0..{vocab - 1})",
                                  param="prompt")
    return ids


class CompletionRun(GenerationsRun):
    chunk_object = "text_completion"

    def __init__(self, state: AppState, body: CompletionRequest, prompts: list[list[int]], constraint=None):
        runtime = state.serving()
        served, driver = runtime.served, runtime.driver
        self.state, self.body, self.served, self.prompts = state, body, served, prompts
        self.request_id, self.created, self.model_name = fmt.new_id("cmpl"), fmt.now(), served.name
        self.namer = fmt.TokenNamer(served.tokenizer, body.return_tokens_as_token_ids)
        stops = stop_strings(body)
        self.gens: list[Generation] = []
        self.prompt_index: list[int] = []
        for p_index, prompt in enumerate(prompts):
            max_tokens = check_context(len(prompt), requested_max_tokens(body) or 16, served.max_model_len,
                                       prompt_param="prompt", min_tokens=body.min_tokens)
            for i in range(body.n):
                params = build_sampling_params(body, max_tokens, body.logprobs, seed_offset=i,
                                               constraint=constraint)
                self.gens.append(Generation(driver, served.tokenizer, prompt, params, stop=stops,
                                            skip_special_tokens=body.skip_special_tokens))
                self.prompt_index.append(p_index)
        admit(driver, len(self.gens))
        self.start = trio.current_time()

    def _echo_text(self, index: int) -> str:
        return self.served.tokenizer.decode(self.prompts[self.prompt_index[index]],
                                            skip_special_tokens=self.body.skip_special_tokens)

    def _usage(self) -> dict:
        prompt_tokens = sum(len(p) for p in self.prompts)
        return fmt.usage(prompt_tokens, sum(len(g.result.tokens) for g in self.gens))

    async def complete(self) -> dict:
        await self._run_to_end()
        choices = []
        for i, g in enumerate(self.gens):
            r = g.result
            prefix = self._echo_text(i) if self.body.echo else ""
            choice = {"index": i, "text": prefix + r.text, "logprobs": None,
                      "finish_reason": r.finish_reason, "stop_reason": r.stop_reason}
            if self.body.logprobs is not None:
                choice["logprobs"] = fmt.completion_logprobs(r.tokens, self.namer, len(prefix))
            if self.body.return_token_ids:
                choice["prompt_token_ids"] = list(self.prompts[self.prompt_index[i]])
                choice["token_ids"] = r.token_ids
            choices.append(choice)
        return {"id": self.request_id, "object": "text_completion", "created": self.created,
                "model": self.served.name, "choices": choices, "usage": self._usage()}

    async def stream(self) -> AsyncIterator[bytes]:
        body = self.body
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
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

        if body.echo:
            for i in range(len(self.gens)):
                text = self._echo_text(i)
                offsets[i] = len(text)
                yield self._chunk([choice(i, {"text": text, "logprobs": None, "finish_reason": None})])
        try:
            async with merged_deltas(self.gens, self.state.settings.request_timeout) as events:
                async for event in events:
                    if isinstance(event, Tick):
                        yield fmt.SSE_KEEPALIVE
                        continue
                    if isinstance(event, TimedOut):
                        for i, done in enumerate(finished):
                            if not done:
                                yield self._chunk([choice(i, {"text": "", "logprobs": None,
                                                              "finish_reason": "length"})])
                        break
                    i, delta = event
                    logprobs = None
                    if body.logprobs is not None:
                        logprobs = fmt.completion_logprobs(delta.tokens, self.namer, offsets[i])
                    offsets[i] += len(delta.text)
                    if delta.finish_reason is not None:
                        finished[i] = True
                    yield self._chunk([choice(i, {"text": delta.text, "logprobs": logprobs,
                                                  "finish_reason": delta.finish_reason,
                                                  "stop_reason": delta.stop_reason}, delta.tokens)])
        except STREAM_ERRORS as exc:
            yield stream_error_event(exc)
        finally:
            self._observe()
        if include_usage:
            yield self._chunk([], self._usage())
        yield fmt.SSE_DONE


async def prepare_completion(state: AppState, body: CompletionRequest) -> CompletionRun:
    served = state.require_generation().served
    state.check_model_name(body.model)
    check_against_model(body, request_limits(state))
    if body.suffix:
        raise bad_request("suffix is not supported", param="suffix")
    prompts = await tokenize_prompts(state, body)
    constraint = await constraint_for_completion(state, served, body)
    return CompletionRun(state, body, prompts, constraint)
