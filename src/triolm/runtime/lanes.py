"""Lanes for prompt work (chat templates, tokenization, detokenization) in one app.

A 15 MB `/tokenize` keeps a tokenizer thread busy for many seconds; queued behind it,
a half-kilobyte chat would wait that long for its first token. So work is admitted by
its size: requests whose text is below `small_work_chars` take the small lane, the rest
the large lane, each with its own capacity. The large lane can be full of big requests
and small ones still go straight through. Large work also runs at a lower CPU priority
(`low_priority_thread`): the tokenizer releases the GIL while it encodes, so what is
left between lanes is competition for the two cores, which the priority settles in the
small request's favour (measured by scripts/bench_hostile_lanes.py).

Made per app inside its running event loop: a `trio.CapacityLimiter` binds to the loop
it was made in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import attrs
import trio

from triolm.prompting.template_workers import TemplateWorkers
from triolm.runtime.low_priority_thread import run_at_low_priority

T = TypeVar("T")

#: Text below this many characters (a few thousand tokens) is small work.
DEFAULT_SMALL_WORK_CHARS = 64 * 1024


@attrs.frozen
class PromptLanes:
    small: trio.CapacityLimiter
    large: trio.CapacityLimiter
    templates: TemplateWorkers
    small_work_chars: int = DEFAULT_SMALL_WORK_CHARS

    def for_chars(self, chars: int) -> trio.CapacityLimiter:
        return self.small if chars < self.small_work_chars else self.large

    async def run(self, lane: trio.CapacityLimiter, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` off the loop in `lane`; large work at low CPU priority."""
        if lane is self.large:
            async with lane:
                return await run_at_low_priority(fn, *args)
        return await trio.to_thread.run_sync(fn, *args, limiter=lane)


def text_chars(value: Any) -> int:
    """Characters of all strings in a JSON-like value (messages, tools): what rendering
    and tokenizing it costs, near enough."""
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return total


_VERBATIM_ROLES = frozenset({"system", "developer", "user", "tool"})


def verbatim_prompt_chars(messages: Iterable[Mapping[str, Any]]) -> int:
    """Characters of message content every chat template copies into the prompt as it is
    (system, user and tool turns; assistant turns may be rewritten, e.g. reasoning
    dropped). A prompt holds at least this many characters."""
    total = 0
    for message in messages:
        if isinstance(message, Mapping) and message.get("role") in _VERBATIM_ROLES:
            content = message.get("content")
            if isinstance(content, str):
                total += len(content)
            elif isinstance(content, list):
                total += sum(len(part["text"]) for part in content
                             if isinstance(part, Mapping) and isinstance(part.get("text"), str))
    return total
