"""Clients for the RL serving tests: greedy token ids, SSE streams read in threads."""

from __future__ import annotations

import json
import threading

import attrs
import httpx

GREEDY = {"temperature": 0, "ignore_eos": True, "logprobs": 0, "return_tokens_as_token_ids": True}


def token_ids_of(logprobs: dict) -> list[int]:
    return [int(t.removeprefix("token_id:")) for t in logprobs["tokens"]]


def greedy(http: httpx.Client, prompt: list[int], max_tokens: int, **extra) -> tuple[list[int], dict]:
    """(generated ids, response) of a greedy /v1/completions on token ids."""
    r = http.post("/v1/completions", json={"prompt": prompt, "max_tokens": max_tokens, **GREEDY, **extra})
    assert r.status_code == 200, r.text
    data = r.json()
    return token_ids_of(data["choices"][0]["logprobs"]), data


def sse_events(response: httpx.Response):
    """The JSON events of an SSE response (split on blank lines, never on U+2028)."""
    buffer = b""
    for chunk in response.iter_bytes():
        buffer += chunk
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if line.startswith(b"data: ") and line != b"data: [DONE]":
                    yield json.loads(line[6:])


@attrs.define
class StreamReader:
    """A greedy /v1/completions stream read in a thread: its token ids in arrival order,
    its final chunk, and an event set once the first token arrived."""

    base_url: str
    prompt: list[int]
    max_tokens: int
    headers: dict = attrs.Factory(dict)
    token_ids: list[int] = attrs.Factory(list)
    final: dict | None = None
    events: list[dict] = attrs.Factory(list)
    error: BaseException | None = None
    first_token: threading.Event = attrs.Factory(threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> StreamReader:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        body = {"prompt": self.prompt, "max_tokens": self.max_tokens, "stream": True, **GREEDY}
        try:
            with httpx.Client(base_url=self.base_url, timeout=120, headers=self.headers) as c:
                with c.stream("POST", "/v1/completions", json=body) as r:
                    assert r.status_code == 200, r.read()
                    for event in sse_events(r):
                        self.events.append(event)
                        for choice in event.get("choices", []):
                            if choice.get("logprobs"):
                                self.token_ids += token_ids_of(choice["logprobs"])
                                self.first_token.set()
                            if choice.get("finish_reason") is not None:
                                self.final = event
        except BaseException as exc:  # reported by join()
            self.error = exc
        finally:
            self.first_token.set()

    def join(self, timeout: float = 120) -> StreamReader:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "stream did not finish"
        if self.error is not None:
            raise self.error
        return self

    @property
    def finish_reason(self) -> str | None:
        return self.final["choices"][0]["finish_reason"] if self.final else None
