"""Request fields fail closed: every field is implemented, accepted because it changes
nothing, or a 400 naming it. vLLM's extras that are implemented are checked here for
their effect, through the official `openai` client (extra_body) and httpx on a real server.

Clause ids (OAI-FIELDS-…) refer to contracts/openai-compat.md.
"""

from __future__ import annotations

import openai
import pytest

from support.paths import TEMPLATES_DIR
from support.server_thread import ServerThread
from triolm.loading.served_model import load_served_model
from triolm.settings import ServerSettings

MSGS = [{"role": "user", "content": "Tell me a story about a cat"}]
CHAT = "/v1/chat/completions"
COMP = "/v1/completions"
TEMPLATES = TEMPLATES_DIR


def chat_body(**fields) -> dict:
    return {"messages": MSGS, "max_tokens": 4, "temperature": 0, "ignore_eos": True, **fields}


def comp_body(**fields) -> dict:
    return {"prompt": "Once upon a time", "max_tokens": 4, "temperature": 0, "ignore_eos": True, **fields}


# -- fail closed ----------------------------------------------------------------------------
REFUSED = [
    ("no_such_field", 1),
    ("use_beam_search", True),
    ("best_of", 3),
    ("length_penalty", 0.5),
    ("priority", 1),
    ("bad_words", ["cat"]),
    ("logits_processors", ["my.module:Processor"]),
    ("logprob_token_ids", [1, 2]),
    ("vllm_xargs", {"a": 1}),
    ("kv_transfer_params", {"a": 1}),
    ("prompt_embeds", "AAAA"),
    ("thinking_token_budget", 10),
    ("watermarking", True),
    ("guided_whitespace_pattern", " "),
    ("functions", [{"name": "f"}]),
    ("function_call", "auto"),
    ("audio", {"voice": "alloy"}),
    ("modalities", ["text", "audio"]),
    ("chat_template", "{{ messages }}"),
    ("web_search_options", {}),
]


@pytest.mark.parametrize("path, body", [(CHAT, chat_body), (COMP, comp_body)])
@pytest.mark.parametrize("field, value", REFUSED)
def test_OAI_FIELDS_001_unknown_and_unsupported_fields_are_400_naming_them(http, path, body, field, value):
    r = http.post(path, json=body(**{field: value}))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == field and field in err["message"]
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize("body, param", [
    (chat_body(structured_outputs={"choice": ["a"], "nope": 1}), "structured_outputs"),
    (chat_body(structured_outputs={"json": {}, "whitespace_pattern": " "}), "structured_outputs"),
    (chat_body(structured_outputs={"json": {}, "disable_additional_properties": True}), "structured_outputs"),
    (chat_body(stream=True, stream_options={"include_usage": True, "nope": 1}), "stream_options"),
    (chat_body(stream=True, stream_options={"continuous_usage_stats": True}), "stream_options"),
])
def test_OAI_FIELDS_001_unknown_nested_fields_are_400(http, body, param):
    r = http.post(CHAT, json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_OAI_FIELDS_001_through_the_official_client(client, served_model):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=served_model.name, messages=MSGS, max_tokens=2,
                                       extra_body={"use_beam_search": True})
    assert info.value.body["param"] == "use_beam_search"
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=served_model.name, prompt="hi", max_tokens=2, best_of=2)
    assert info.value.body["param"] == "best_of"


INERT = {
    "user": "u-1", "metadata": {"k": "v"}, "store": False, "service_tier": "auto",
    "safety_identifier": "s", "prompt_cache_key": "k", "prompt_cache_retention": "24h",
    "session_id": "s-1", "stream_interval": 3, "spaces_between_special_tokens": True,
    "guided_decoding_backend": "xgrammar",
    # vLLM's typed clients send its defaults on every request
    "use_beam_search": False, "length_penalty": 1.0, "priority": 0, "bad_words": [],
    "logits_processors": None, "watermarking": False, "best_of": 1,
}


def test_OAI_FIELDS_002_inert_fields_are_accepted_and_change_nothing(http):
    for path, body, text in ((CHAT, chat_body, lambda r: r["choices"][0]["message"]["content"]),
                             (COMP, comp_body, lambda r: r["choices"][0]["text"])):
        plain = http.post(path, json=body())
        assert plain.status_code == 200
        extra = dict(INERT)
        if path == CHAT:
            extra.update(prediction={"type": "content", "content": "x"}, modalities=["text"])
        r = http.post(path, json=body(**extra))
        assert r.status_code == 200, r.text
        assert text(r.json()) == text(plain.json())
    streamed = http.post(CHAT, json=chat_body(stream=True, stream_options={"include_usage": True,
                                                                           "include_obfuscation": True}))
    assert streamed.status_code == 200


# -- implemented extras --------------------------------------------------------------------
def test_OAI_FIELDS_003_include_stop_str_in_output(http):
    full = http.post(COMP, json=comp_body(max_tokens=12)).json()["choices"][0]["text"]
    stop = full[3:6]
    cut = http.post(COMP, json=comp_body(max_tokens=12, stop=[stop])).json()["choices"][0]
    kept = http.post(COMP, json=comp_body(max_tokens=12, stop=[stop], include_stop_str_in_output=True))
    choice = kept.json()["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] == stop
    assert choice["text"] == cut["text"] + stop
    assert full.startswith(choice["text"])


def test_OAI_FIELDS_004_allowed_token_ids(http):
    allowed = [1000, 1001, 1002]
    r = http.post(COMP, json=comp_body(max_tokens=8, temperature=1.0, seed=3, allowed_token_ids=allowed,
                                       return_token_ids=True)).json()
    ids = r["choices"][0]["token_ids"]
    assert len(ids) == 8 and set(ids) <= set(allowed)
    bad = http.post(COMP, json=comp_body(allowed_token_ids=[10 ** 9]))
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "allowed_token_ids"


def test_OAI_FIELDS_005_truncate_prompt_tokens(client, served_model):
    prompt = list(range(100, 120))
    kw = dict(model=served_model.name, prompt=prompt, max_tokens=1)
    left = client.completions.create(**kw, extra_body={"truncate_prompt_tokens": 5, "return_token_ids": True})
    assert left.choices[0].prompt_token_ids == prompt[-5:] and left.usage.prompt_tokens == 5
    right = client.completions.create(**kw, extra_body={"truncate_prompt_tokens": 5, "truncation_side": "right",
                                                        "return_token_ids": True})
    assert right.choices[0].prompt_token_ids == prompt[:5]
    chat = client.chat.completions.create(model=served_model.name, messages=MSGS, max_tokens=1,
                                          extra_body={"truncate_prompt_tokens": 4, "return_token_ids": True})
    full = client.chat.completions.create(model=served_model.name, messages=MSGS, max_tokens=1,
                                          extra_body={"return_token_ids": True})
    assert chat.prompt_token_ids == full.prompt_token_ids[-4:] and chat.usage.prompt_tokens == 4


def test_OAI_FIELDS_006_request_id_names_the_response(client, http, served_model):
    r = client.completions.create(model=served_model.name, prompt="hi", max_tokens=1,
                                  extra_body={"request_id": "abc-123"})
    assert r.id == "cmpl-abc-123"
    chat = http.post(CHAT, json=chat_body(request_id="xyz")).json()
    assert chat["id"] == "chatcmpl-xyz"


def test_OAI_FIELDS_007_add_special_tokens(http, served_model):
    text = "Once upon a time"
    with_special = http.post("/tokenize", json={"prompt": text, "add_special_tokens": True}).json()["tokens"]
    without = http.post("/tokenize", json={"prompt": text, "add_special_tokens": False}).json()["tokens"]
    assert with_special != without  # the tokenizer adds BOS
    r = http.post(COMP, json=comp_body(prompt=text, add_special_tokens=False, return_token_ids=True)).json()
    assert r["choices"][0]["prompt_token_ids"] == without
    r = http.post(COMP, json=comp_body(prompt=text, return_token_ids=True)).json()
    assert r["choices"][0]["prompt_token_ids"] == with_special
    chat = http.post(CHAT, json=chat_body(return_token_ids=True)).json()["prompt_token_ids"]
    chat_bos = http.post(CHAT, json=chat_body(return_token_ids=True, add_special_tokens=True)).json()
    assert chat_bos["prompt_token_ids"][-len(chat):] == chat and len(chat_bos["prompt_token_ids"]) > len(chat)


def test_OAI_FIELDS_008_chat_echo_continues_the_last_message(http, client, served_model):
    msgs = MSGS + [{"role": "assistant", "content": "Once upon"}]
    body = chat_body(messages=msgs, add_generation_prompt=False, continue_final_message=True)
    plain = http.post(CHAT, json=body).json()["choices"][0]["message"]["content"]
    echoed = http.post(CHAT, json={**body, "echo": True}).json()["choices"][0]["message"]["content"]
    assert echoed == "Once upon" + plain
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=served_model.name, messages=msgs, max_tokens=4, temperature=0, stream=True,
        extra_body={"echo": True, "add_generation_prompt": False, "continue_final_message": True,
                    "ignore_eos": True}))
    assert streamed == echoed
    # a reply to a user message echoes nothing
    assert (http.post(CHAT, json=chat_body(echo=True)).json()["choices"][0]["message"]["content"]
            == http.post(CHAT, json=chat_body()).json()["choices"][0]["message"]["content"])


@pytest.fixture(scope="module")
def variables_server(tiny_model, tmp_path_factory):
    """A template that writes the variables reasoning_effort and documents into the prompt."""
    template = tmp_path_factory.mktemp("tpl") / "vars.jinja"
    template.write_text("effort={{ reasoning_effort | default('unset') }};"
                        "{% for d in documents | default([]) %}doc={{ d.title }};{% endfor %}"
                        "{% for m in messages %}{{ m.content }}{% endfor %}")
    served = load_served_model(ServerSettings(model=str(tiny_model("qwen2").hf_dir), chat_template=str(template)))
    with ServerThread(ServerSettings(model=served.path, max_num_seqs=4), served) as srv:
        yield srv


def test_OAI_FIELDS_009_reasoning_effort_and_documents_reach_the_template(variables_server):
    import httpx

    with httpx.Client(base_url=variables_server.base_url, timeout=60) as http:
        def prompt_text(**fields) -> str:
            ids = http.post(CHAT, json=chat_body(max_tokens=1, return_token_ids=True, **fields)).json()
            return http.post("/detokenize", json={"tokens": ids["prompt_token_ids"]}).json()["prompt"]

        assert prompt_text().startswith("effort=unset;Tell me")
        assert prompt_text(reasoning_effort="high",
                           documents=[{"title": "Cats", "text": "..."}]).startswith("effort=high;doc=Cats;")


@pytest.fixture(scope="module")
def thinking_server(tiny_model):
    served = load_served_model(ServerSettings(model=str(tiny_model("qwen2").hf_dir),
                                              chat_template=str(TEMPLATES / "qwen3.jinja")))
    with ServerThread(ServerSettings(model=served.path, max_num_seqs=4), served) as srv:
        yield srv


def test_OAI_FIELDS_010_include_reasoning_false_drops_the_thinking(thinking_server):
    client = openai.OpenAI(base_url=thinking_server.base_url + "/v1", api_key="unused", max_retries=0)
    kw = dict(model="hf", messages=[{"role": "user", "content": "What is the capital of France?"}],
              max_tokens=40)
    regex = r"<think>\nFrance\.\n</think>\n\nParis\."
    shown = client.chat.completions.create(**kw, extra_body={"guided_regex": regex}).choices[0].message
    assert shown.model_extra["reasoning_content"] == "France."
    hidden = client.chat.completions.create(**kw, extra_body={"guided_regex": regex, "include_reasoning": False})
    assert hidden.choices[0].message.content == "Paris."
    assert "reasoning_content" not in hidden.choices[0].message.model_extra
    parts = [c.choices[0].delta for c in client.chat.completions.create(
        **kw, stream=True, extra_body={"guided_regex": regex, "include_reasoning": False}) if c.choices]
    assert "".join(d.content or "" for d in parts) == "Paris."
    assert not any((d.model_extra or {}).get("reasoning_content") for d in parts)


def test_OAI_FIELDS_011_cache_salt_separates_prefix_caches(http):
    """A salted prompt reads cached blocks only of prompts with the same salt."""
    prompt = "The history of the city begins in the old harbour, where fishermen " * 3

    def cached(**fields) -> int:
        r = http.post(CHAT, json=chat_body(messages=[{"role": "user", "content": prompt}], max_tokens=1,
                                           **fields)).json()
        return r["usage"]["prompt_tokens_details"]["cached_tokens"]

    cached(cache_salt="tenant-a")  # fills the cache, salted
    assert cached() == 0  # unsalted: a chain of its own
    assert cached(cache_salt="tenant-b") == 0
    assert cached(cache_salt="tenant-a") > 0
    assert cached() > 0  # the unsalted one is cached by now
    bad = http.post(CHAT, json=chat_body(cache_salt=""))
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "cache_salt"
