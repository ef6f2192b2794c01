"""Reasoning ("thinking") output: split `<think>…</think>` off the answer.

Reasoning models (Qwen3, DeepSeek-R1 distills, SmolLM3, Phi-4-reasoning, Magistral…)
write their thinking between two markers before the answer. The server returns it as
`message.reasoning_content` (streamed as `delta.reasoning_content`) and keeps `content`
for the answer, as vLLM's `--reasoning-parser` and llama.cpp's `--reasoning-format` do.

    fmt = get_reasoning_format("qwen3")          # or detect_reasoning_parser(template)
    splitter = ReasoningSplitter(fmt, starts_inside=prompt_opens_thinking(prompt, fmt))
    parts = splitter.push(delta)                 # [("reasoning" | "content", text), …]
    parts += splitter.finish()

Where the thinking starts: templates that open the block themselves (DeepSeek-R1's
generation prompt ends with `<think>\\n`) make the model start inside it; otherwise a
block counts only at the very start of the output (after whitespace). A block that never
closes (cut by max_tokens) is all reasoning. Whitespace around the thinking and at the
start of the answer is dropped. Streamed and whole-text splitting run the same state
machine, so streamed parts add up to the whole-text split.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

WHITESPACE = " \t\r\n"


@attrs.frozen
class ReasoningFormat:
    name: str
    start: str
    end: str


_THINK = ("<think>", "</think>")
_FORMATS = {
    "deepseek_r1": _THINK,
    "qwen3": _THINK,
    "mistral": ("[THINK]", "[/THINK]"),
}
REASONING_PARSERS: tuple[str, ...] = (*_FORMATS, "none")


def get_reasoning_format(name: str) -> ReasoningFormat | None:
    """The markers of parser `name` (see REASONING_PARSERS); None for "none"."""
    if name == "none":
        return None
    try:
        start, end = _FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown reasoning parser {name!r}; choose one of {', '.join(REASONING_PARSERS)}") from None
    return ReasoningFormat(name, start, end)


def detect_reasoning_parser(chat_template: str | None) -> str | None:
    """The parser whose closing marker the chat template knows, or None (no thinking)."""
    t = chat_template or ""
    if "</think>" in t:
        return "deepseek_r1" if "<｜Assistant｜>" in t else "qwen3"
    if "[/THINK]" in t:
        return "mistral"
    return None


def reasoning_format_for(parser: str | None, chat_template: str | None) -> ReasoningFormat | None:
    """The format a server uses: the `--reasoning-parser` given, else the detected one."""
    name = parser if parser is not None else detect_reasoning_parser(chat_template)
    return get_reasoning_format(name) if name is not None else None


def prompt_opens_thinking(prompt_text: str, fmt: ReasoningFormat) -> bool:
    """True when the rendered prompt itself ends inside an open thinking block."""
    return prompt_text.rstrip(WHITESPACE).endswith(fmt.start)


def _marker_prefix_len(buf: str, marker: str) -> int:
    """Length of buf's longest suffix that is a proper prefix of `marker`."""
    for k in range(min(len(buf), len(marker) - 1), 0, -1):
        if marker.startswith(buf[-k:]):
            return k
    return 0


class ReasoningSplitter:
    """Incremental split of generated text into ("reasoning" | "content", text) parts."""

    def __init__(self, fmt: ReasoningFormat, starts_inside: bool = False):
        self.fmt = fmt
        self._state = "reasoning" if starts_inside else "start"
        self._pending = ""
        self._ws = ""  # whitespace inside the thinking, held until more thinking follows
        self._began = False  # the thinking has had a non-whitespace character
        self.saw_reasoning = starts_inside

    def push(self, text: str) -> list[tuple[str, str]]:
        self._pending += text
        return self._run(final=False)

    def finish(self) -> list[tuple[str, str]]:
        return self._run(final=True)

    def split(self, text: str) -> tuple[str, str]:
        """(reasoning, content) of a whole text."""
        parts = self.push(text) + self.finish()
        return (_join(parts, "reasoning"), _join(parts, "content"))

    def _run(self, final: bool) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        while self._pending:
            if self._state == "start":
                body = self._pending.lstrip(WHITESPACE)
                if body.startswith(self.fmt.start):
                    self._pending = body[len(self.fmt.start):]
                    self._state = "reasoning"
                    self.saw_reasoning = True
                elif not final and self.fmt.start.startswith(body):
                    break  # could still become the opening marker
                else:
                    self._state = "content"
            elif self._state == "reasoning":
                i = self._pending.find(self.fmt.end)
                if i == -1:
                    keep = 0 if final else _marker_prefix_len(self._pending, self.fmt.end)
                    self._thinking(self._pending[:len(self._pending) - keep], out)
                    self._pending = self._pending[len(self._pending) - keep:]
                    break
                self._thinking(self._pending[:i], out)
                self._pending = self._pending[i + len(self.fmt.end):]
                self._ws = ""
                self._state = "after"
            elif self._state == "after":
                self._pending = self._pending.lstrip(WHITESPACE)
                if self._pending:
                    self._state = "content"
            else:
                out.append(("content", self._pending))
                self._pending = ""
        if final and self._state == "start" and self._pending:
            out.append(("content", self._pending))
            self._pending = ""
        return out

    def _thinking(self, text: str, out: list[tuple[str, str]]) -> None:
        if not self._began:
            text = text.lstrip(WHITESPACE)
            if not text:
                return
            self._began = True
        core = text.rstrip(WHITESPACE)
        if core:
            out.append(("reasoning", self._ws + core))
            self._ws = ""
        self._ws += text[len(core):]


def _join(parts: Iterable[tuple[str, str]], kind: str) -> str:
    return "".join(t for k, t in parts if k == kind)


def strip_thinking(text: str, fmt: ReasoningFormat) -> str:
    """`text` without its complete thinking blocks (and the whitespace after each)."""
    out = []
    pos = 0
    while True:
        i = text.find(fmt.start, pos)
        j = text.find(fmt.end, i + len(fmt.start)) if i != -1 else -1
        if i == -1 or j == -1:
            out.append(text[pos:])
            return "".join(out)
        out.append(text[pos:i])
        pos = j + len(fmt.end)
        while pos < len(text) and text[pos] in WHITESPACE:
            pos += 1
