"""One chat choice in OpenAI's shapes — the whole message, or its stream of `delta`
choices — whoever generated it: this server's engine or, in `triolm router`, a
backend. The reasoning split, the tool-call parsing, logprobs, token ids and the finish
are shaped here once for both."""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from triolm.engine.finish import Finish
from triolm.engine.sampler import SampledToken
from triolm.prompting.reasoning import ReasoningFormat
from triolm.protocol import openai_format as fmt
from triolm.protocol.chat_output import make_streamer, shape_message
from triolm.protocol.finish_reason import openai_finish


@attrs.frozen
class ChoiceOptions:
    """What a request asks of each choice's shape, and how its text is read."""

    tool_parser: str | None
    tool_names: list[str] | None
    reasoning: ReasoningFormat | None
    prompt_text: str
    namer: fmt.TokenNamer
    logprobs: bool
    token_ids: bool
    include_reasoning: bool = True


def message_choice(index: int, text: str, tokens: Sequence[SampledToken], finish: Finish | None,
                   options: ChoiceOptions, echo: str = "") -> dict:
    """The choice of a whole chat completion."""
    o = options
    message, called = shape_message(text, tool_parser=o.tool_parser, tool_names=o.tool_names,
                                    reasoning=o.reasoning, prompt_text=o.prompt_text,
                                    cut_short=finish is not None and finish.cut_short)
    if not o.include_reasoning:
        message.pop("reasoning_content", None)
    if echo:
        message["content"] = echo + (message["content"] or "")
    finish_reason, stop_reason = openai_finish(finish, called)
    choice = {"index": index, "message": message, "logprobs": None, "finish_reason": finish_reason,
              "stop_reason": stop_reason}
    if o.logprobs:
        choice["logprobs"] = fmt.chat_logprobs(list(tokens), o.namer)
    if o.token_ids:
        choice["token_ids"] = [t.token_id for t in tokens]
    return choice


class ChoiceStream:
    """One choice's stream: its role chunk's choice, then per piece of generated text
    the `delta` choices that tell it, and once it ended, the choice with its finish."""

    def __init__(self, index: int, options: ChoiceOptions):
        self.index = index
        self.options = options
        self.streamer = make_streamer(tool_parser=options.tool_parser, tool_names=options.tool_names,
                                      reasoning=options.reasoning, prompt_text=options.prompt_text)

    def _choice(self, delta: dict, tokens: Sequence[SampledToken] = (), **fields) -> dict:
        choice = {"index": self.index, "delta": delta, "logprobs": None, "finish_reason": None, **fields}
        if self.options.token_ids:  # vLLM's shape: concatenated, they are the choice's token_ids
            choice["token_ids"] = [t.token_id for t in tokens]
        return choice

    def role(self) -> dict:
        return self._choice({"role": "assistant", "content": ""})

    def content(self, text: str) -> dict:
        return self._choice({"content": text})

    def pieces(self, text: str, tokens: Sequence[SampledToken], finish: Finish | None) -> list[dict]:
        """The delta choices telling `text` (made of `tokens`); a choice per token batch
        even without text when logprobs or token ids are asked for."""
        o = self.options
        streamer = self.streamer
        deltas = streamer.push(text) if streamer else ([{"content": text}] if text else [])
        if finish is not None and streamer is not None:
            deltas += streamer.finish(cut_short=finish.cut_short)
        if not o.include_reasoning:
            deltas = [d for d in deltas if "reasoning_content" not in d]
        logprobs = fmt.chat_logprobs(list(tokens), o.namer) if o.logprobs else None
        per_token = bool(logprobs) or (o.token_ids and bool(tokens))  # every token is told, text or not
        return [self._choice(d, tokens if j == 0 else (), logprobs=logprobs if j == 0 else None)
                for j, d in enumerate(deltas or ([{}] if per_token else []))]

    def finished(self, finish: Finish) -> dict:
        """The choice saying why it ended (tool calls, when the text held some)."""
        finish_reason, stop_reason = openai_finish(finish, self.streamer is not None and self.streamer.saw_tool_call)
        return self._choice({}, finish_reason=finish_reason, stop_reason=stop_reason)
