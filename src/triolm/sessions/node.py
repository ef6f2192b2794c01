"""Nodes: what the engine consumed and produced for one branch of a conversation, token
for token, and how a new turn extends one.

Why token-exact: an RL trainer needs the ids the policy saw and sampled, with the
sampled tokens' log-probabilities. Re-tokenizing a transcript drifts (random or rare
text re-encodes differently), so a node's tokens are never re-derived from text: a new
turn keeps them and tokenizes only the text that is new (see contracts/sessions.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import attrs

MASK = -100  # masked_tokens at prompt positions (ignored by the loss)
PROMPT_LOGPROB = 1.0  # logprobs at prompt positions (no sampled log-probability there)
_LOGPROB_FLOOR = -9999.0  # JSON has no -inf


@attrs.define
class Node:
    id: int
    parent_id: int | None
    tokens: list[int]
    masked_tokens: list[int]
    logprobs: list[float]
    full_text: str  # the prompt text + the generated text as the client received it
    # Text of the stop token (EOS, stop_token_ids) that ended the node's last generation:
    # `full_text` leaves it out, as the response text does, but a template may render
    # exactly that text after the turn; the generated token then stands for it.
    stop_text: str | None = None
    metadata: dict = attrs.Factory(dict)
    # Which weights generated which tokens: (weight_version, start, end) over `tokens`,
    # in order; prompt tokens belong to no span.
    weight_spans: list[tuple[str, int, int]] = attrs.Factory(list)
    revision: int = 0  # the session's revision that recorded this node (GET /nodes?since=)

    @property
    def weight_version(self) -> str | None:
        """The weights of the node's last generated token."""
        return self.weight_spans[-1][0] if self.weight_spans else None

    def text_forms(self) -> list[tuple[str, bool]]:
        """The texts a re-rendered prompt may start with to extend this node, longest
        first, with whether the node's stop token stands for the template's text."""
        forms = [(self.full_text, False)]
        if self.stop_text:
            forms.insert(0, (self.full_text + self.stop_text, True))
        return forms

    def to_json(self) -> dict:
        return {"id": self.id, "parent_id": self.parent_id, "tokens": self.tokens,
                "masked_tokens": self.masked_tokens,
                "logprobs": [max(lp, _LOGPROB_FLOOR) for lp in self.logprobs],
                "full_text": self.full_text, "metadata": self.metadata,
                "weight_version": self.weight_version,
                "weight_versions": [{"weight_version": v, "start": start, "end": end}
                                    for v, start, end in self.weight_spans],
                "revision": self.revision}


@attrs.frozen
class Extension:
    """How a prompt continues the session: the node it extends (None: a fresh node) and
    the prompt text after that node's text (the whole prompt for a fresh node)."""

    parent: Node | None
    suffix_text: str
    stop_token_stands_in: bool = False


def find_extension(nodes: Iterable[Node], prompt_text: str) -> Extension:
    """The node whose text the prompt starts with (the longest such match wins)."""
    best: tuple[int, Node, bool] | None = None
    for node in nodes:
        for text, stands_in in node.text_forms():
            if prompt_text.startswith(text) and (best is None or len(text) > best[0]):
                best = (len(text), node, stands_in)
                break
    if best is None:
        return Extension(None, prompt_text)
    length, node, stands_in = best
    return Extension(node, prompt_text[length:], stands_in)


def find_token_extension(nodes: Iterable[Node], prompt_ids: Sequence[int]) -> tuple[Node | None, list[int]]:
    """Token-level matching, for renderers that produce tokens rather than text
    (mistral-common): the longest node whose tokens are a prefix of `prompt_ids`."""
    best: Node | None = None
    for node in nodes:
        n = len(node.tokens)
        if n <= len(prompt_ids) and list(prompt_ids[:n]) == node.tokens and (
                best is None or n > len(best.tokens)):
            best = node
    if best is None:
        return None, list(prompt_ids)
    return best, list(prompt_ids[len(best.tokens):])


@attrs.frozen
class Generated:
    """One finished generation, as the engine produced it."""

    token_ids: list[int]
    logprobs: list[float]
    text: str  # as returned to the client (raw: tool-call markup included)
    finish_reason: str
    stop_text: str | None  # see Node.stop_text
    metadata: dict  # this step's numbers (prefill counts, finish reason …)
    weight_spans: tuple[tuple[str, int], ...] = ()  # (weight_version, tokens), in order


def build_node(node_id: int, parent: Node | None, new_prompt_ids: Sequence[int], prompt_text: str,
               gen: Generated) -> Node:
    """The node after one more step: the parent's tokens untouched, then the new prompt
    tokens (masked, logprob 1.0), then the generated tokens (unmasked, real logprobs)."""
    if len(gen.token_ids) != len(gen.logprobs):
        raise ValueError("one logprob per generated token")
    n_new = len(new_prompt_ids)
    tokens = (parent.tokens if parent else []) + list(new_prompt_ids) + list(gen.token_ids)
    masked = (parent.masked_tokens if parent else []) + [MASK] * n_new + list(gen.token_ids)
    logprobs = (parent.logprobs if parent else []) + [PROMPT_LOGPROB] * n_new + list(gen.logprobs)
    spans = list(parent.weight_spans) if parent else []
    start = len(tokens) - len(gen.token_ids)
    for version, count in gen.weight_spans:
        spans.append((version, start, start + count))
        start += count
    steps = (parent.metadata.get("steps", []) if parent else []) + [gen.metadata]
    metadata = {**gen.metadata, "finish_reason": gen.finish_reason, "num_steps": len(steps),
                "steps": steps}
    return Node(id=node_id, parent_id=parent.id if parent else None, tokens=tokens,
                masked_tokens=masked, logprobs=logprobs, full_text=prompt_text + gen.text,
                stop_text=gen.stop_text, metadata=metadata, weight_spans=spans)
