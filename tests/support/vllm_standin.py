"""A STAND-IN for a vLLM server (vLLM cannot run on this machine): it speaks exactly
the response shapes vLLM documents for what `triolm router` uses, and nothing more.

Recorded from vLLM's OpenAI-compatible server (vllm/entrypoints/openai/protocol.py,
versions >= 0.10.2):
- `POST /v1/completions` with `prompt` as token ids. `CompletionResponse`:
  `{id: "cmpl-…", object: "text_completion", created, model, choices, usage,
  kv_transfer_params}`; each `CompletionResponseChoice`: `{index, text, logprobs,
  finish_reason, stop_reason, prompt_logprobs, prompt_token_ids, token_ids}` — with
  `return_token_ids`, `prompt_token_ids` and `token_ids` sit on the choice (vLLM puts
  the completion's prompt ids there "to align with CompletionResponseChoice").
  `logprobs` (`CompletionLogProbs`): `{text_offset, token_logprobs, tokens,
  top_logprobs}`; with `return_tokens_as_token_ids` each token is `"token_id:N"`.
  `usage` (`UsageInfo`): `{prompt_tokens, total_tokens, completion_tokens,
  prompt_tokens_details}`, the last `{"cached_tokens": N}` with
  `--enable-prompt-tokens-details`.
- Streaming: `CompletionStreamResponse` chunks `{id, object: "text_completion", created,
  model, choices: [CompletionResponseStreamChoice]}`, each choice `{index, text,
  logprobs, finish_reason, stop_reason, prompt_token_ids, token_ids}`: prompt ids in the
  first chunk only, `token_ids` the delta; with `stream_options.include_usage` a last
  chunk with `choices: []` and `usage`; then `data: [DONE]`.
- `stop_reason`: the stop token id (from `stop_token_ids`) or stop string that ended the
  completion, None for EOS or length.
- `GET /metrics`: gauges `vllm:num_requests_running` and `vllm:num_requests_waiting`
  with labels `model_name` and `engine`.
- `GET /health`: 200 with an empty body. `GET /v1/models`: `{object: "list", data:
  [{id, object: "model", created, owned_by: "vllm", root, parent, max_model_len,
  permission}]}`.

Generation is a deterministic function of the prompt and the seed (no model runs);
text is the real tokenizer's decoding of the ids, and the prefix cache is simulated in
16-token blocks so `cached_tokens` means what vLLM's does. Every request is kept in
`requests` for the tests to compare with what the router recorded.
"""

from __future__ import annotations

import json
import random
import threading
import time

import attrs
import trio
from quart import Response, jsonify, request
from quart_trio import QuartTrio

from support.server_thread import free_port
from triolm.tokenizers.hf import HFTokenizer

BLOCK = 16


@attrs.define
class Served:
    prompt_ids: list[int]
    token_ids: list[int]
    logprobs: list[float]
    cached_tokens: int


class VLLMStandIn:
    def __init__(self, tokenizer_dir: str, model: str = "standin-model", token_delay: float = 0.0):
        self.tokenizer = HFTokenizer.from_dir(tokenizer_dir)
        self.model = model
        self.token_delay = token_delay
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.requests: list[Served] = []
        self.running = 0
        self._cached_blocks: set[tuple[int, ...]] = set()
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self._stop: trio.Event | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._ready = threading.Event()

    # -- generation ---------------------------------------------------------------------
    def _generate(self, prompt: list[int], body: dict) -> tuple[list[int], list[float], str, int | None]:
        rng = random.Random(hash((tuple(prompt), body.get("seed"))))
        stop_ids = set(body.get("stop_token_ids") or ())
        ids, lps, finish, stop_reason = [], [], "length", None
        # ordinary word pieces of the tekken vocabulary (past its special/byte tokens)
        for _ in range(int(body.get("max_tokens") or 16)):
            token = rng.randrange(1000, 20000)
            if stop_ids and rng.random() < 0.2:
                token = min(stop_ids)
            ids.append(token)
            lps.append(-rng.uniform(0.05, 8.0))
            if token in stop_ids:
                finish, stop_reason = "stop", token
                break
        return ids, lps, finish, stop_reason

    def _cache(self, prompt: list[int]) -> int:
        """Prefix-cache hit in whole blocks (vLLM caches full blocks only)."""
        hit = 0
        for end in range(BLOCK, len(prompt) + 1, BLOCK):
            if tuple(prompt[:end]) not in self._cached_blocks:
                break
            hit = end
        for end in range(BLOCK, len(prompt) + 1, BLOCK):
            self._cached_blocks.add(tuple(prompt[:end]))
        return hit

    def _logprobs(self, ids: list[int], lps: list[float], offset: int) -> dict:
        out = {"text_offset": [], "token_logprobs": [], "tokens": [], "top_logprobs": []}
        for i, lp in zip(ids, lps, strict=True):
            name = f"token_id:{i}"
            out["text_offset"].append(offset)
            out["token_logprobs"].append(lp)
            out["tokens"].append(name)
            out["top_logprobs"].append({name: lp})
            offset += len(self.tokenizer.decode([i], skip_special_tokens=False))
        return out

    # -- the app ------------------------------------------------------------------------
    def _app(self) -> QuartTrio:
        app = QuartTrio("vllm-standin")

        @app.get("/health")
        async def health():
            return Response("", status=200)

        @app.get("/v1/models")
        async def models():
            return jsonify({"object": "list", "data": [
                {"id": self.model, "object": "model", "created": int(time.time()), "owned_by": "vllm",
                 "root": self.model, "parent": None, "max_model_len": 2048, "permission": []}]})

        @app.get("/metrics")
        async def metrics():
            labels = f'engine="0",model_name="{self.model}"'
            text = (f"# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
                    f"# TYPE vllm:num_requests_running gauge\n"
                    f"vllm:num_requests_running{{{labels}}} {float(self.running)}\n"
                    f"# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
                    f"# TYPE vllm:num_requests_waiting gauge\n"
                    f"vllm:num_requests_waiting{{{labels}}} 0.0\n")
            return Response(text, content_type="text/plain; version=0.0.4; charset=utf-8")

        @app.post("/v1/completions")
        async def completions():
            body = json.loads(await request.get_data())
            prompt = body["prompt"]
            if not (isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt)):
                return jsonify({"error": {"message": "the stand-in takes one prompt of token ids",
                                          "type": "BadRequestError", "param": None, "code": 400}}), 400
            if body.get("model") not in (None, self.model):
                return jsonify({"error": {"message": f"The model `{body.get('model')}` does not exist.",
                                          "type": "NotFoundError", "param": "model", "code": 404}}), 404
            ids, lps, finish, stop_reason = self._generate(prompt, body)
            cached = self._cache(prompt)
            self.requests.append(Served(list(prompt), ids, lps, cached))
            skip = body.get("skip_special_tokens", True)
            with_ids = bool(body.get("return_token_ids"))
            want_lp = body.get("logprobs") is not None
            # vLLM's text ends before a stop token (EOS or stop_token_ids)
            shown = ids[:-1] if finish == "stop" else ids
            usage = {"prompt_tokens": len(prompt), "total_tokens": len(prompt) + len(ids),
                     "completion_tokens": len(ids), "prompt_tokens_details": {"cached_tokens": cached}}
            rid, created = f"cmpl-{random.getrandbits(64):016x}", int(time.time())
            if not body.get("stream"):
                choice = {"index": 0, "text": self.tokenizer.decode(shown, skip_special_tokens=skip),
                          "logprobs": self._logprobs(ids, lps, 0) if want_lp else None,
                          "finish_reason": finish, "stop_reason": stop_reason, "prompt_logprobs": None,
                          "prompt_token_ids": prompt if with_ids else None,
                          "token_ids": ids if with_ids else None}
                return jsonify({"id": rid, "object": "text_completion", "created": created, "model": self.model,
                                "choices": [choice], "usage": usage, "kv_transfer_params": None})
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

            async def events():
                self.running += 1
                try:
                    offset, text_so_far = 0, ""
                    for k, (token, lp) in enumerate(zip(ids, lps, strict=True)):
                        await trio.sleep(self.token_delay)
                        text = self.tokenizer.decode(shown[:k + 1], skip_special_tokens=skip)
                        delta, text_so_far = text[len(text_so_far):], text
                        last = k == len(ids) - 1
                        choice = {"index": 0, "text": delta,
                                  "logprobs": self._logprobs([token], [lp], offset) if want_lp else None,
                                  "finish_reason": finish if last else None,
                                  "stop_reason": stop_reason if last else None,
                                  "prompt_token_ids": prompt if with_ids and k == 0 else None,
                                  "token_ids": [token] if with_ids else None}
                        offset += len(delta)
                        chunk = {"id": rid, "object": "text_completion", "created": created,
                                 "model": self.model, "choices": [choice]}
                        yield f"data: {json.dumps(chunk)}\n\n".encode()
                    if include_usage:
                        chunk = {"id": rid, "object": "text_completion", "created": created,
                                 "model": self.model, "choices": [], "usage": usage}
                        yield f"data: {json.dumps(chunk)}\n\n".encode()
                    yield b"data: [DONE]\n\n"
                finally:
                    self.running -= 1

            return Response(events(), mimetype="text/event-stream")

        return app

    async def _main(self) -> None:
        from hypercorn.config import Config
        from hypercorn.trio import serve

        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        config = Config()
        config.bind = [f"127.0.0.1:{self.port}"]
        config.accesslog = None
        self._ready.set()
        await serve(self._app(), config, shutdown_trigger=self._stop.wait)

    def __enter__(self) -> VLLMStandIn:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(10)
