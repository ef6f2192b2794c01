"""Fields clients send that triolm does not implement.

Request bodies fail closed: a field the schema does not know is a 400 naming it, so a
client never gets unconstrained or unranked output it did not ask for. The fields below
are known (OpenAI's or vLLM's) but not implemented: each is a 400 saying why — unless
its value is the one that changes nothing (null, or the default it would have), which
clients built on vLLM's or OpenAI's typed request objects send on every request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from triolm.protocol.errors import RequestError

Inert = Callable[[Any, dict], bool]


def _is(*values) -> Inert:
    return lambda value, body: value is None or any(value == v and type(value) is type(v) for v in values)


def _best_of(value, body: dict) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool)
                             and value == body.get("n", 1))


def _text_only(value, body: dict) -> bool:
    return value is None or value == ["text"]


# field -> (why it is refused, when its value changes nothing)
UNSUPPORTED: dict[str, tuple[str, Inert]] = {
    "use_beam_search": ("beam search is not supported", _is(False)),
    "best_of": ("best_of other than n is not supported (candidates are not ranked)", _best_of),
    "length_penalty": ("length_penalty applies to beam search, which is not supported", _is(1.0, 1)),
    "watermarking": ("watermarking is not supported", _is(False)),
    "priority": ("priority scheduling is not supported", _is(0)),
    "bad_words": ("bad_words is not supported", _is([])),
    "logprob_token_ids": ("logprob_token_ids is not supported", _is()),
    "logits_processors": ("custom logits processors are not supported", _is()),
    "thinking_token_budget": ("thinking_token_budget is not supported", _is(-1)),
    "repetition_detection": ("repetition_detection is not supported", _is()),
    "vllm_xargs": ("vllm_xargs is not supported", _is()),
    "kv_transfer_params": ("disaggregated serving is not supported", _is()),
    "ec_transfer_params": ("disaggregated serving is not supported", _is()),
    "prompt_embeds": ("prompt_embeds is not supported", _is()),
    "chat_template": ("a per-request chat_template is not supported (start the server with "
                      "--chat-template)", _is()),
    "mm_processor_kwargs": ("multimodal input is not supported", _is()),
    "media_io_kwargs": ("multimodal input is not supported", _is()),
    "return_prompt_text": ("return_prompt_text is not supported", _is(False)),
    "guided_whitespace_pattern": ("a whitespace pattern is not supported: JSON is written with "
                                  "json.dumps' spacing", _is()),
    "guided_json_object": ("use response_format {\"type\": \"json_object\"}", _is(False)),
    "audio": ("audio output is not supported", _is()),
    "modalities": ("only text output is supported", _text_only),
    "functions": ("the deprecated functions field is not supported: use tools", _is()),
    "function_call": ("the deprecated function_call field is not supported: use tool_choice", _is()),
    "web_search_options": ("web search is not supported", _is()),
    "verbosity": ("verbosity is not supported", _is()),
}


def refuse_unsupported(data: dict) -> dict:
    """`data` without the unsupported fields whose values change nothing; a 400 naming
    the first whose value would."""
    kept = {}
    for key, value in data.items():
        refusal = UNSUPPORTED.get(key)
        if refusal is None:
            kept[key] = value
            continue
        why, inert = refusal
        if not inert(value, data):
            raise RequestError(f"'{key}' is not supported: {why}", param=key, code="unsupported_parameter")
    return kept
