"""One chat generation streamed as typed parts (protocol.reply_parts), for the protocols
that shape a reply their own way (the Responses and Messages APIs). The chat pipeline
does the work: the request is a `PreparedChat`, and the text is split by the same reasoning
splitter and tool-call parser that shape `/v1/chat/completions` deltas."""

from __future__ import annotations

from collections.abc import AsyncIterator

from triolm.engine import finish as finishes
from triolm.engine.finish import Finish
from triolm.http.chat import ChatRun
from triolm.protocol.chat_output import OutputStreamer
from triolm.protocol.finish_reason import openai_finish
from triolm.protocol.reply_parts import Finished, Part, parts_of_delta
from triolm.runtime.fanout import Tick, TimedOut, merged_deltas


class ChatPartsRun(ChatRun):
    """A one-generation chat run whose stream is `parts()`."""

    async def parts(self) -> AsyncIterator[Part | Tick]:
        """Parts in order, `Tick` while idle, and one `Finished` last. Errors of the
        generation (overload, a failed grammar) propagate: the caller tells them in its
        own protocol's error event."""
        p = self.plan
        gen = self.gens[0]
        streamer = OutputStreamer(tool_parser=p.tool_parser, tool_names=self.tool_names,
                                  reasoning=p.served.reasoning, prompt_text=p.prompt.text)
        finish: Finish | None = None
        try:
            async with merged_deltas(self.gens, self.state.settings.request_timeout) as events:
                async for event in events:
                    if isinstance(event, Tick):
                        yield event
                        continue
                    if isinstance(event, TimedOut):
                        finish = event.finish
                        for delta in streamer.finish(cut_short=True):
                            for part in parts_of_delta(delta):
                                yield part
                        break
                    _, delta = event
                    deltas = streamer.push(delta.text)
                    if delta.finish is not None:
                        deltas += streamer.finish(cut_short=delta.finish.cut_short)
                    for d in deltas:
                        for part in parts_of_delta(d):
                            yield part
                    if delta.finish is not None:
                        finish = delta.finish
        finally:
            self._observe()
        r = gen.result
        finish_reason, stop_reason = openai_finish(finish or finishes.LENGTH, streamer.saw_tool_call)
        yield Finished(finish_reason or "length", stop_reason, len(p.prompt.token_ids), len(r.tokens),
                       r.num_cached_prompt_tokens)
