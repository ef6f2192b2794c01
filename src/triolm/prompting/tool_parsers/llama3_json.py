"""Llama 3.1/3.2/3.3 JSON tool calling:

    {"name": "get_weather", "parameters": {"city": "Paris"}}

The whole reply is the call (Meta's prompt format; the HF chat template renders a call
back as `{"name": NAME, "parameters": tojson(args)}`), optionally after the
`<|python_tag|>` special token, which may follow some text.  Several calls are
separated by `;`.  A reply that starts with `{` but is not a call object (it lacks
"name" or "parameters"/"arguments") is plain content: the key is required so that an
ordinary JSON answer is not mistaken for a call.
"""

from __future__ import annotations

from .base import WHITESPACE, Args, JsonCallStream, Lit, Name, ToolCallFormat, ToolParser

PYTHON_TAG = "<|python_tag|>"

LLAMA3_JSON_FORMAT = ToolCallFormat(
    parser="llama3_json",
    begin=(),
    call=(Lit('{"name": "'), Name(), Lit('", "parameters": '), Args(), Lit("}")),
    separator=(Lit("; "),),
    end=(),
    markers=(PYTHON_TAG,),
    max_calls=1,  # Meta's chat template refuses several calls in one turn
)


class Llama3JsonStream(JsonCallStream):
    require_args_key = True
    initial_state = "start"

    def _run(self, final: bool) -> None:
        while True:
            st = self._state
            if st == "start":
                rest = self._pending.lstrip(WHITESPACE)
                if not rest:
                    if final:
                        self._content(self._pending)
                        self._pending = ""
                    return
                if rest.startswith("{"):
                    self._content(self._pending[: len(self._pending) - len(rest)])
                    self._pending = rest
                    self._open_json_call("")
                    self._state = "json"
                elif not final and PYTHON_TAG.startswith(rest):
                    return
                else:
                    self._state = "content"
            elif st == "content":
                if not self._content_until(PYTHON_TAG, final):
                    return
                self._open_json_call(PYTHON_TAG)
                self._state = "json"
            elif st == "json":
                call = self._call
                done = self._read_call()
                if done is None:
                    self._state = "skip" if call.committed else "content"
                    self._abandon_call(call)
                    continue
                if not done:
                    return
                if self._complete_call(call):
                    self._state = "between"
                else:
                    self._abandon_call(call)
                    self._state = "content"
            elif st == "between":
                rest = self._pending.lstrip(WHITESPACE)
                if not rest:
                    return
                if rest.startswith(";"):
                    sep = self._pending[: len(self._pending) - len(rest) + 1]
                    self._pending = rest[1:]
                    self._open_json_call(sep)
                    self._state = "json"
                else:
                    self._state = "content"
            else:  # "skip": a streamed call broke; the rest of the reply is dropped
                self._pending = ""
                return


class Llama3JsonToolParser(ToolParser):
    name = "llama3_json"
    format = LLAMA3_JSON_FORMAT
    stream_class = Llama3JsonStream
