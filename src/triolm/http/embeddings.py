"""`POST /v1/embeddings` for a model served with `--task embed` (or detected as an
embedding model): strings or token ids, one or a batch, as float lists or base64.

A server in generate mode answers 400: a generative model's pooled hidden states are no
trained embedding, and serving them would look like it works while giving poor vectors."""

from __future__ import annotations

import base64
from typing import Literal

from pydantic import BaseModel, ConfigDict
from quart import Blueprint, jsonify

from triolm.http.routes import json_body, state
from triolm.loading.served_model import ServedModel
from triolm.protocol.errors import APIError, bad_request
from triolm.protocol.schemas import parse_body
from triolm.runtime.embedder import Embedder
from triolm.tokenizers.hf import HFTokenizer

embeddings_bp = Blueprint("embeddings", __name__)

MAX_INPUTS = 2048  # OpenAI's limit of inputs per request
MAX_REQUEST_TOKENS = 1 << 16  # tokens per request: bounds one request's CPU time
FORWARD_TOKENS = 2048  # tokens packed into one forward pass (a longer input runs alone)


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None  # accepted, changes nothing


def _encode_all(served: ServedModel, texts: list[str]) -> list[list[int]]:
    """The texts' tokens as transformers (so sentence-transformers) makes them: a Hugging
    Face tokenizer's own post-processor adds the special tokens. Qwen3-Embedding's appends
    `<|endoftext|>`, which is not its eos_token, and its last-token pooling rests on it."""
    tokenizer = served.tokenizer
    if isinstance(tokenizer, HFTokenizer):
        return [e.ids for e in tokenizer.hf_tokenizer.encode_batch(texts, add_special_tokens=True)]
    return [tokenizer.encode(text, add_special_tokens=True) for text in texts]


async def _sequences(body: EmbeddingsRequest, served: ServedModel) -> list[list[int]]:
    st = state()
    data = body.input
    if isinstance(data, str) or (data and isinstance(data[0], int)):
        data = [data]  # one text, or one sequence of token ids
    if not data:
        raise bad_request("input must not be empty", param="input")
    if len(data) > MAX_INPUTS:
        raise bad_request(f"at most {MAX_INPUTS} inputs per request, got {len(data)}", param="input")
    if isinstance(data[0], str):
        chars = sum(map(len, data))
        if chars > MAX_REQUEST_TOKENS * served.max_token_chars:
            raise bad_request(f"input is too long (more than {MAX_REQUEST_TOKENS} tokens)", param="input",
                              code="request_too_large")
        sequences = await st.lanes.run(st.lanes.for_chars(chars), _encode_all, served, data)
    else:
        sequences = data
    vocab = served.config.vocab_size
    for i, seq in enumerate(sequences):
        if not seq:
            raise bad_request(f"input[{i}] is empty", param="input")
        if len(seq) > served.max_model_len:
            raise bad_request(f"input[{i}] has {len(seq)} tokens; this model's maximum context length is "
                              f"{served.max_model_len}", param="input", code="context_length_exceeded")
        if not all(0 <= t < vocab for t in seq):
            raise bad_request(f"input[{i}] holds a token id outside the vocabulary (0..{vocab - 1})", param="input")
    total = sum(map(len, sequences))
    if total > MAX_REQUEST_TOKENS:
        raise bad_request(f"input has {total} tokens; at most {MAX_REQUEST_TOKENS} per request", param="input",
                          code="request_too_large")
    return sequences


def _encoded(vector, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.numpy().astype("<f4").tobytes()).decode()
    return vector.tolist()


@embeddings_bp.post("/v1/embeddings")
async def create_embeddings():
    st = state()
    body = parse_body(EmbeddingsRequest, await json_body())
    served = st.serving().served
    st.check_model_name(body.model)
    if served.embedding is None:
        raise APIError(400, f"the model `{served.name}` is served for generation; start the server with "
                            "--task embed to serve embeddings", param="model", code="wrong_task")
    if served.model is None:
        raise APIError(503, "the weights are released: POST /resume_memory_occupation first",
                       code="weights_released")
    embedder = Embedder(served.model, served.embedding, FORWARD_TOKENS)
    if body.dimensions is not None and not 1 <= body.dimensions <= embedder.dimensions:
        raise bad_request(f"dimensions must be between 1 and {embedder.dimensions}", param="dimensions")
    sequences = await _sequences(body, served)
    vectors = await st.lanes.run(st.lanes.large, embedder.embed, sequences, body.dimensions)
    total = sum(map(len, sequences))
    return jsonify({"object": "list", "model": served.name,
                    "data": [{"object": "embedding", "index": i, "embedding": _encoded(v, body.encoding_format)}
                             for i, v in enumerate(vectors)],
                    "usage": {"prompt_tokens": total, "total_tokens": total}})
