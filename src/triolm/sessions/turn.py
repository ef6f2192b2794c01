"""One turn of a session, whoever generated it (the local engine or a router backend):
the prompt it extends a node with, and the nodes its finished generations become.

Both `triolm serve` and `triolm router` record through `record_turn`, so a node means
the same thing whichever process made it (contracts/sessions.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from triolm.engine.finish import Finish
from triolm.prompting.prompts import RenderedPrompt
from triolm.sessions.node import Extension, Generated, Node, build_node
from triolm.sessions.registry import SessionRegistry
from triolm.sessions.session import Session
from triolm.tokenizers.base import Tokenizer


@attrs.frozen
class PreparedTurn:
    session: Session
    extension: Extension
    prompt: RenderedPrompt
    new_prompt_ids: list[int]  # prompt tokens after the extended node's (all of them if none)


@attrs.frozen
class FinishedGeneration:
    """One choice as the engine produced it: every sampled id, with its logprob."""

    token_ids: list[int]
    logprobs: list[float]
    text: str  # as returned to the client (raw: tool-call markup included)
    finish: Finish | None  # None: it did not end by itself (cut off)
    num_cached_prompt_tokens: int | None  # None: the engine did not say
    num_prefilled_tokens: int | None
    extra_metadata: dict = attrs.Factory(dict)  # e.g. the router's backend
    # Which weights produced the tokens: (weight_version, count), in order; empty when
    # the engine does not say (a backend without weight versions).
    weight_spans: tuple[tuple[str, int], ...] = ()


def stop_text(tokenizer: Tokenizer, gen: FinishedGeneration) -> str | None:
    """The text of the stop token (EOS or a stop_token_ids entry) that ended a generation:
    the response text never includes it, the node's tokens do."""
    if gen.finish is None or gen.finish.stop_token is None:
        return None
    return tokenizer.decode([gen.finish.stop_token], skip_special_tokens=False) or None


def record_turn(registry: SessionRegistry, prepared: PreparedTurn, request_id: str,
                gens: Sequence[FinishedGeneration], tokenizer: Tokenizer) -> None:
    """Turn each finished generation into a node of the session (if it still exists).
    A generation that produced nothing, or ended in an abort or error, records nothing."""
    session = prepared.session
    if not registry.is_live(session):
        return
    parent = prepared.extension.parent
    children: list[Node] = []
    for index, gen in enumerate(gens):
        if gen.finish is None or gen.finish.kind in ("abort", "error") or not gen.token_ids:
            continue
        step = {"request_id": request_id, "choice_index": index,
                "finish_reason": gen.finish.kind, "stop_reason": gen.finish.matched,
                "num_prompt_tokens": len(prepared.prompt.token_ids),
                "num_new_prompt_tokens": len(prepared.new_prompt_ids),
                "num_cached_prompt_tokens": gen.num_cached_prompt_tokens,
                "num_prefilled_tokens": gen.num_prefilled_tokens,
                "num_generated_tokens": len(gen.token_ids),
                "extended_node": parent.id if parent is not None else None,
                "stop_token_stands_in": prepared.extension.stop_token_stands_in,
                "weight_version": gen.weight_spans[-1][0] if gen.weight_spans else None,
                **gen.extra_metadata}
        record = Generated(token_ids=list(gen.token_ids), logprobs=list(gen.logprobs), text=gen.text,
                           finish_reason=gen.finish.kind, stop_text=stop_text(tokenizer, gen),
                           metadata=step, weight_spans=gen.weight_spans)
        children.append(build_node(session.new_node_id(), parent, prepared.new_prompt_ids,
                                   prepared.prompt.text, record))
    if children:
        session.record(parent, children)
