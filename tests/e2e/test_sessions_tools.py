"""Tool calls in sessions, against a real server and the tiny real model: parsed calls in
the response, raw markup in the nodes, and agentic conversations (user → tool call →
tool result → text → …) that stay one node. The random-weight model writes exact calls
because a named `tool_choice` forces the hermes spelling through the grammar
(constrained decoding); argument values are pinned by `enum` schemas.
(Contract clauses: contracts/sessions.md.)"""

from __future__ import annotations

import json

from support.sessions_api import MASK, assert_well_formed


def tool(name: str, **enums: list[str]) -> dict:
    params = {"type": "object", "properties": {k: {"type": "string", "enum": v} for k, v in enums.items()},
              "required": list(enums), "additionalProperties": False}
    return {"type": "function", "function": {"name": name, "parameters": params}}


def call(name: str) -> dict:
    return {"type": "function", "function": {"name": name}}


SEARCH = [tool("search", query=["cats"])]


def raw_call(name: str, args: dict) -> str:
    return f'<tool_call>\n{{"name": "{name}", "arguments": {json.dumps(args, ensure_ascii=False)}}}\n</tool_call>'


def step(api, uid, messages, tools, *, force=None, seed=0, max_tokens=48):
    """One turn: the render shows the prompt, the completion is recorded; (response, node)."""
    body = {"tools": tools, "max_tokens": max_tokens, "seed": seed}
    if force:
        body["tool_choice"] = call(force)
    else:
        body["max_tokens"] = 6
    rendered = api.render(uid, messages, **body)
    data = api.chat(uid, messages, **body)
    nodes = api.nodes(uid)
    assert len(nodes) == 1, f"expected 1 node, got {len(nodes)}"
    assert nodes[0]["tokens"][:rendered["num_tokens"]] == rendered["token_ids"]
    return data, nodes[0], rendered


def test_tool_call_outbound(api):
    uid = api.create()
    messages = [{"role": "user", "content": "Search cats"}]
    data = api.chat(uid, messages, tools=SEARCH, tool_choice=call("search"), max_tokens=48, seed=1)
    choice = data["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    [tc] = choice["message"]["tool_calls"]
    assert tc["type"] == "function" and tc["id"]
    assert tc["function"]["name"] == "search"
    assert json.loads(tc["function"]["arguments"]) == {"query": "cats"}


def test_tool_choice_none_returns_raw_text(api):
    """The model writes call markup (forced by guided_choice): with tool_choice "none" it
    comes back as text; with "auto" the same text is a parsed call."""
    raw = raw_call("search", {"query": "cats"})
    messages = [{"role": "user", "content": "Search cats"}]
    body = {"tools": SEARCH, "guided_choice": [raw], "max_tokens": 48, "seed": 2}
    uid = api.create()
    choice = api.chat(uid, messages, tool_choice="none", **body)["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"].get("tool_calls") is None
    assert choice["message"]["content"] == raw
    [node] = api.nodes(uid)
    assert node["full_text"].endswith(raw)
    auto = api.chat(api.create(), messages, tool_choice="auto", **body)["choices"][0]
    assert auto["finish_reason"] == "tool_calls"
    assert auto["message"]["tool_calls"][0]["function"]["name"] == "search"


def test_nodes_preserve_raw_text(api, served_model):
    uid = api.create()
    messages = [{"role": "user", "content": "Search cats"}]
    prompt = api.render(uid, messages, tools=SEARCH)
    data = api.chat(uid, messages, tools=SEARCH, tool_choice=call("search"), max_tokens=48, seed=4)
    assert data["choices"][0]["message"]["tool_calls"]
    [node] = api.nodes(uid)
    assert_well_formed(node)
    expected = raw_call("search", {"query": "cats"})
    assert node["full_text"] == prompt["prompt_text"] + expected  # markup, not parsed calls
    generated = [t for t in node["masked_tokens"] if t != MASK]
    assert served_model.tokenizer.decode(generated, skip_special_tokens=True) == expected


def test_10_message_agentic_conversation_is_one_node(api, served_model):
    uid = api.create()
    tools = [tool("get_weather", city=["SF", "NYC"]), tool("get_forecast", city=["SF"])]
    messages = [{"role": "user", "content": "What's the weather in SF?"}]
    lengths = []

    def called(data, name):
        choice = data["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        [tc] = choice["message"]["tool_calls"]
        assert tc["function"]["name"] == name
        return choice["message"]["tool_calls"]

    def said(data):
        choice = data["choices"][0]
        assert choice["message"].get("tool_calls") is None
        return choice["message"]["content"]

    data, node, _ = step(api, uid, messages, tools, force="get_weather", seed=10)
    tc1 = called(data, "get_weather")
    lengths.append(len(node["tokens"]))
    messages += [{"role": "assistant", "content": None, "tool_calls": tc1},
                 {"role": "tool", "tool_call_id": tc1[0]["id"], "content": "72°F and sunny"}]
    data, node, rendered = step(api, uid, messages, tools, seed=11)
    # the call sent back re-renders exactly as the model wrote it
    args = json.loads(tc1[0]["function"]["arguments"])
    assert args["city"] in ("SF", "NYC")
    assert "<|im_start|>assistant\n" + raw_call("get_weather", args) + "<|im_end|>" in rendered["prompt_text"]
    out2 = said(data)
    lengths.append(len(node["tokens"]))
    messages += [{"role": "assistant", "content": out2}, {"role": "user", "content": "Yes please, get the forecast"}]
    data, node, _ = step(api, uid, messages, tools, force="get_forecast", seed=12)
    tc3 = called(data, "get_forecast")
    lengths.append(len(node["tokens"]))
    messages += [{"role": "assistant", "content": None, "tool_calls": tc3},
                 {"role": "tool", "tool_call_id": tc3[0]["id"], "content": "Rain expected tomorrow"}]
    data, node, _ = step(api, uid, messages, tools, seed=13)
    out4 = said(data)
    lengths.append(len(node["tokens"]))
    messages += [{"role": "assistant", "content": out4}, {"role": "user", "content": "What about NYC?"}]
    data, node, _ = step(api, uid, messages, tools, force="get_weather", seed=14)
    tc5 = called(data, "get_weather")
    lengths.append(len(node["tokens"]))
    messages += [{"role": "assistant", "content": None, "tool_calls": tc5},
                 {"role": "tool", "tool_call_id": tc5[0]["id"], "content": "55°F and cloudy"}]
    data, node, _ = step(api, uid, messages, tools, seed=15)
    messages.append({"role": "assistant", "content": said(data)})
    lengths.append(len(node["tokens"]))
    assert len(messages) == 12  # user → call → result → text → user → … → text
    [final] = api.nodes(uid)
    assert_well_formed(final)
    assert final["metadata"]["num_steps"] == 6
    assert lengths == sorted(lengths) and len(set(lengths)) == 6  # each step extended the last
    steps = final["metadata"]["steps"]
    assert [s["extended_node"] is not None for s in steps] == [False] + [True] * 5
    for previous_len, s in zip(lengths, steps[1:], strict=False):  # each step prefilled only what was new
        uncomputed = s["num_prompt_tokens"] - (previous_len - 1)
        assert uncomputed <= s["num_prefilled_tokens"] < uncomputed + 16
    masked = sum(1 for t in final["masked_tokens"] if t == MASK)
    assert 0 < masked < len(final["tokens"])
    # the three calls are in the node once each, as the model wrote them, unmasked
    assert final["full_text"].count('<tool_call>\n{"name": "get_weather", "arguments": {"city": ') == 2
    engine_text = served_model.tokenizer.decode(final["tokens"], skip_special_tokens=False)
    assert engine_text.count('<tool_call>\n{"name": "get_weather"') == 2
    assert engine_text.count('<tool_call>\n{"name": "get_forecast"') == 1
    unmasked = served_model.tokenizer.decode([t for t in final["masked_tokens"] if t != MASK])
    assert unmasked.count("<tool_call>") == 3


def test_tool_then_plain_then_tool_one_node(api, served_model):
    uid = api.create()
    messages = [{"role": "user", "content": "Search for cats"}]
    data, _, _ = step(api, uid, messages, SEARCH, force="search", seed=20)
    tc = data["choices"][0]["message"]["tool_calls"]
    messages += [{"role": "assistant", "content": None, "tool_calls": tc},
                 {"role": "tool", "tool_call_id": tc[0]["id"], "content": "Found 10 cats"}]
    data, _, _ = step(api, uid, messages, SEARCH, seed=21)
    messages += [data["choices"][0]["message"], {"role": "user", "content": "Search for cats again"}]
    data, _, _ = step(api, uid, messages, SEARCH, force="search", seed=22)
    tc2 = data["choices"][0]["message"]["tool_calls"]
    messages += [{"role": "assistant", "content": None, "tool_calls": tc2},
                 {"role": "tool", "tool_call_id": tc2[0]["id"], "content": "Found 5 more"}]
    data, _, _ = step(api, uid, messages, SEARCH, seed=23)
    messages += [data["choices"][0]["message"], {"role": "user", "content": "Thanks!"}]
    data, node, _ = step(api, uid, messages, SEARCH, seed=24)
    assert len(messages) == 9
    assert node["metadata"]["num_steps"] == 5
    assert len(api.nodes(uid)) == 1
    engine_text = served_model.tokenizer.decode(node["tokens"], skip_special_tokens=False)
    assert engine_text.count('<tool_call>\n{"name": "search", "arguments": {"query": "cats"}}\n</tool_call>') == 2
