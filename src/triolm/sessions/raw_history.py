"""Extending a node over a chat template that drops or re-spells earlier thinking.

Reasoning-model templates (Qwen3, DeepSeek-R1) leave the thinking of earlier turns out
of the history they render, so the re-rendered prompt of a next turn no longer starts
with the node's text (prompt + raw output, `<think>` block included) and the
conversation would fork into a new node. Sessions keep the raw text instead — as
Atropos protects think blocks: the prompt of the next turn is the node's own text, think
blocks included, followed by what the template renders after it. Which node that is, is
decided with every complete thinking block left out of both texts. The model then sees
its earlier thinking (which plain /v1/chat/completions would not show it); in exchange the
whole conversation stays one node, token for token.
"""

from __future__ import annotations

from collections.abc import Iterable

from triolm.prompting.reasoning import WHITESPACE, ReasoningFormat, strip_thinking
from triolm.sessions.node import Extension, Node


def match_skipping_thinking(target: str, rendered: str, fmt: ReasoningFormat) -> int | None:
    """The end in `rendered` of a prefix equal to `target` once its complete thinking
    blocks (and the whitespace after each) are skipped; None when there is none."""
    i = k = 0
    while k < len(target):
        if rendered.startswith(fmt.start, i):
            j = rendered.find(fmt.end, i + len(fmt.start))
            if j != -1:
                i = j + len(fmt.end)
                while i < len(rendered) and rendered[i] in WHITESPACE:
                    i += 1
                continue
        if i >= len(rendered) or rendered[i] != target[k]:
            return None
        i += 1
        k += 1
    return i


def find_extension_keeping_thinking(nodes: Iterable[Node], prompt_text: str,
                                    fmt: ReasoningFormat) -> tuple[Extension, str] | None:
    """(the extension, the prompt text to use: the node's raw text + the rendered rest),
    for the node with the longest raw text that matches; None when none does."""
    best: tuple[Node, str, bool, int] | None = None
    for node in nodes:
        for raw, stands_in in node.text_forms():
            end = match_skipping_thinking(strip_thinking(raw, fmt), prompt_text, fmt)
            if end is not None:
                if best is None or len(raw) > len(best[1]):
                    best = (node, raw, stands_in, end)
                break
    if best is None:
        return None
    node, raw, stands_in, end = best
    suffix = prompt_text[end:]
    return Extension(node, suffix, stands_in), raw + suffix
