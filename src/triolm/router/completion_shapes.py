"""Reading a backend's token-id completion (vLLM's /v1/completions shapes).

The generated ids come from the choice's `token_ids` (vLLM's `return_token_ids`) when
the backend sends them, else from the logprobs' `token_id:N` names
(`return_tokens_as_token_ids`); their log-probabilities from `logprobs.token_logprobs`.
Both are asked for on every request, so any engine speaking either gives exact ids.
"""

from __future__ import annotations

import attrs

from triolm.engine.finish import Finish
from triolm.engine.sampler import SampledToken
from triolm.protocol.finish_reason import finish_of_openai

_ID_PREFIX = "token_id:"


class MalformedCompletion(ValueError):
    pass


@attrs.frozen
class ChoiceDelta:
    """One choice of a backend's answer or stream chunk, as it said it."""

    index: int
    text: str
    tokens: tuple[SampledToken, ...]
    finish_reason: str | None
    stop_reason: int | str | None


@attrs.define
class ChoiceResult:
    """One choice, accumulated over a stream's deltas (or from one whole answer).
    `stop_token_ids`: EOS and the request's stop tokens, to tell whether the backend's
    last token ended the choice."""

    stop_token_ids: set[int]
    text: str = ""
    tokens: list[SampledToken] = attrs.Factory(list)
    finish: Finish | None = None

    def add(self, delta: ChoiceDelta) -> Finish | None:
        """Take a delta; the choice's finish, once this delta ended it."""
        self.text += delta.text
        self.tokens.extend(delta.tokens)
        if delta.finish_reason is None:
            return None
        last = self.tokens[-1].token_id if self.tokens else None
        self.finish = finish_of_openai(delta.finish_reason, delta.stop_reason, last, self.stop_token_ids)
        return self.finish


def _token_id(name: object) -> int:
    if isinstance(name, str) and name.startswith(_ID_PREFIX):
        try:
            return int(name[len(_ID_PREFIX):])
        except ValueError:
            pass
    raise MalformedCompletion(f"logprobs token {name!r} is not 'token_id:N' (return_tokens_as_token_ids)")


def read_choice(choice: object) -> ChoiceDelta:
    if not isinstance(choice, dict) or not isinstance(choice.get("index", 0), int):
        raise MalformedCompletion("a choice is not an object with an index")
    text = choice.get("text") or ""
    logprobs = choice.get("logprobs") or {}
    names = logprobs.get("tokens") or []
    values = logprobs.get("token_logprobs") or []
    tops = logprobs.get("top_logprobs") or [None] * len(names)
    ids = choice.get("token_ids")
    if ids is None:
        ids = [_token_id(n) for n in names]
    if len(values) != len(ids) or len(tops) != len(ids):
        raise MalformedCompletion(f"{len(ids)} token ids but {len(values)} logprobs: ask the backend for "
                                  "logprobs with return_tokens_as_token_ids")
    tokens = tuple(
        SampledToken(token_id=int(i), logprob=float(lp) if lp is not None else 0.0,
                  top_logprobs=None if top is None else tuple((_token_id(n), float(v)) for n, v in top.items()))
        for i, lp, top in zip(ids, values, tops, strict=True))
    return ChoiceDelta(index=choice.get("index", 0), text=text if isinstance(text, str) else "",
                       tokens=tokens, finish_reason=choice.get("finish_reason"),
                       stop_reason=choice.get("stop_reason"))


def cached_prompt_tokens(usage: object) -> int | None:
    """usage.prompt_tokens_details.cached_tokens, when the backend reports it."""
    if not isinstance(usage, dict):
        return None
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return cached if isinstance(cached, int) else None
