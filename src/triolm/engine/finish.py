"""Why a sequence ended: one typed value, made where the reason is known and read by
everyone after (the runtime, sessions, every API's shaping).

The engine makes it in its step for the token-level reasons (EOS, a stop token id, the
token budget or the context, the grammar) and when it is told to end a sequence for a
reason found outside its token loop: a stop string in the detokenized text, the server
ending the request. Readers never re-derive it from token ids or strings; each API maps
it to its own words in one protocol function.
"""

from __future__ import annotations

from typing import Literal

import attrs

FinishKind = Literal["stop", "length", "abort", "error"]


@attrs.frozen
class Finish:
    kind: FinishKind
    # vLLM's `stop_reason`: the stop string or the stop_token_ids entry that matched
    # (None for EOS, a complete grammar, and every other kind)
    matched: str | int | None = None
    # the sampled token that ended the sequence (EOS or a stop_token_ids entry): it is
    # one of the sequence's tokens but never part of its text
    stop_token: int | None = None
    detail: str | None = None  # why, in words, for "abort" and "error"

    @property
    def cut_short(self) -> bool:
        """The budget (max_tokens, the context or the request's deadline) ended it: what was
        being written may be unfinished."""
        return self.kind == "length"


def eos(token_id: int) -> Finish:
    return Finish("stop", stop_token=token_id)


def stop_token(token_id: int) -> Finish:
    return Finish("stop", matched=token_id, stop_token=token_id)


def stop_string(text: str) -> Finish:
    return Finish("stop", matched=text)


GRAMMAR_COMPLETE = Finish("stop")  # only EOS could follow
LENGTH = Finish("length")
DEADLINE = Finish("length", detail="the request's deadline passed")


def aborted(reason: str) -> Finish:
    return Finish("abort", detail=reason)


def failed(reason: str) -> Finish:
    return Finish("error", detail=reason)
