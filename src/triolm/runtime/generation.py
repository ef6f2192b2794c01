"""One generation's lifetime on the event loop: submit, stream text deltas, stop, clean up.

Whatever ends the consumer — finished, stop string, timeout, client disconnect — closing
its token stream aborts the engine sequence, so its KV cache is freed before the next step.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager

import attrs
import trio

from triolm.engine import finish as finishes
from triolm.engine.constraint import ConstraintFailure
from triolm.engine.finish import Finish
from triolm.engine.llm_engine import StepOutput
from triolm.engine.prompt_logprobs import PromptTokenLogprob
from triolm.engine.sampler import SampledToken
from triolm.engine.sampling_params import SamplingParams
from triolm.runtime.engine_driver import Ended, EngineDriver
from triolm.runtime.stop_strings import StopStringMatcher
from triolm.tokenizers.base import Tokenizer
from triolm.tokenizers.detokenizer import IncrementalDetokenizer

_ids = itertools.count()


@attrs.frozen
class Delta:
    """New text of one generation, with the tokens that arrived since the last delta."""

    text: str
    tokens: tuple[SampledToken, ...]
    finish: Finish | None = None  # on the last delta: why the generation ended
    weight_version: str | None = None  # the weights that computed these tokens (None: no token)


@attrs.frozen
class WeightSpan:
    """`count` consecutive generated tokens computed by the weights `weight_version`."""

    weight_version: str
    count: int


@attrs.define
class GenerationResult:
    """Accumulated outcome, filled while the generation streams."""

    text: str = ""
    tokens: list[SampledToken] = attrs.Factory(list)
    finish: Finish | None = None  # None while running, or if it was cut off (deadline, client gone)
    num_prompt_tokens: int = 0
    num_cached_prompt_tokens: int = 0
    num_prefilled_tokens: int = 0
    first_token_time: float | None = None
    token_times: list[float] = attrs.Factory(list)
    weight_spans: list[WeightSpan] = attrs.Factory(list)  # which weights made which tokens, in order
    # the prompt's tokens after the first, when the sampling params asked for them
    prompt_logprobs: tuple[PromptTokenLogprob, ...] | None = None

    @property
    def token_ids(self) -> list[int]:
        return [t.token_id for t in self.tokens]

    @property
    def weight_version(self) -> str | None:
        """The weights of the last generated token."""
        return self.weight_spans[-1].weight_version if self.weight_spans else None

    def count_token_of(self, weight_version: str) -> None:
        spans = self.weight_spans
        if spans and spans[-1].weight_version == weight_version:
            spans[-1] = WeightSpan(weight_version, spans[-1].count + 1)
        else:
            spans.append(WeightSpan(weight_version, 1))


class Generation:
    """Iterate `deltas()` once; read `result` afterwards (or during)."""

    def __init__(self, driver: EngineDriver, tokenizer: Tokenizer, prompt_ids: list[int],
                 params: SamplingParams, stop: list[str] | None = None,
                 skip_special_tokens: bool = True, include_stop_str: bool = False):
        self.driver = driver
        self.tokenizer = tokenizer
        self.prompt_ids = prompt_ids
        self.params = params
        self.request_id = f"gen-{next(_ids)}"
        self.detokenizer = IncrementalDetokenizer(tokenizer, skip_special_tokens=skip_special_tokens)
        self.stops = StopStringMatcher(stop or [])
        self.include_stop_str = include_stop_str  # the matched stop string ends the text
        self.result = GenerationResult(num_prompt_tokens=len(prompt_ids))
        self.start_time = trio.current_time()

    @asynccontextmanager
    async def stream(self) -> AsyncIterator[Callable[[], Awaitable[Delta | None]]]:
        """Submit the request and give an awaitable `next_delta()`, None once finished.

        `next_delta` is cancel-safe (a cancelled wait loses no token), so a caller may
        wait under a deadline without a task of its own. Leaving the block before the
        end aborts the engine sequence."""
        stream = self.driver.submit(self.request_id, self.prompt_ids, self.params)
        finished = False

        async def next_delta() -> Delta | None:
            nonlocal finished
            if finished:
                return None
            try:
                item = await stream.receive()
            except trio.EndOfChannel:
                # the stream ended without a finishing token: aborted from elsewhere
                finished = True
                if self.result.finish is None:
                    self.result.finish = finishes.aborted("its engine sequence was stopped")
                return None
            if isinstance(item, Exception):
                raise item
            if isinstance(item, Ended):
                finished = True
                return self._on_ended(item.finish)
            delta = self._on_output(item)
            finished = delta.finish is not None
            return delta

        async with stream:  # closing it before the last token aborts the sequence
            yield next_delta

    async def deltas(self) -> AsyncIterator[Delta]:
        async with self.stream() as next_delta:
            while (delta := await next_delta()) is not None:
                yield delta

    def _on_output(self, out: StepOutput) -> Delta:
        r = self.result
        finish = out.finish
        if finish is not None and finish.kind == "error":  # the grammar failed: no text past what it allowed
            r.finish = finish
            raise ConstraintFailure(finish.detail or "")
        now = trio.current_time()
        if r.first_token_time is None:
            r.first_token_time = now
            r.num_cached_prompt_tokens = out.num_cached_prompt_tokens
        if out.prompt_logprobs is not None:
            r.prompt_logprobs = out.prompt_logprobs
        r.num_prefilled_tokens = out.num_prefilled_tokens
        r.token_times.append(now)
        info = SampledToken(out.token_id, out.logprob, out.top_logprobs)
        r.tokens.append(info)
        r.count_token_of(out.weight_version)
        # The token that ends generation (EOS, a stop token id) is never part of the text.
        ends_on_token = finish is not None and finish.stop_token == out.token_id
        piece = "" if ends_on_token else self.detokenizer.push(out.token_id)
        if finish is not None:
            piece += self.detokenizer.flush()
        text = self.stops.feed(piece)
        if self.stops.matched is not None:
            # A stop string: text-level, so found here, where the text is; the engine
            # ends the sequence with it (unless it already ended by itself).
            finish = finishes.stop_string(self.stops.matched)
            if self.include_stop_str:
                text += self.stops.matched
            self.driver.finish(self.request_id, finish)
        elif finish is not None:
            text += self.stops.flush()
        r.text += text
        if finish is not None:
            r.finish = finish
        return Delta(text, (info,), finish, out.weight_version)

    def _on_ended(self, finish: Finish) -> Delta:
        """The server stopped this generation between two tokens (weights swapped under
        the "abort" policy): what text was held back goes out, with the engine's finish."""
        text = self.stops.feed(self.detokenizer.flush()) + self.stops.flush()
        self.result.text += text
        self.result.finish = finish
        return Delta(text, (), finish, self.result.weight_version)

    async def run_to_end(self) -> GenerationResult:
        async with aclosing(self.deltas()) as deltas:
            async for _ in deltas:
                pass
        return self.result
