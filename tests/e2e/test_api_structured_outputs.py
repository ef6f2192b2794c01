"""vLLM's `structured_outputs` (and the older `guided_*` names, llama.cpp's `grammar`)
with the examples of vLLM's structured-outputs documentation, through the official
`openai` client (extra_body) and httpx on a real server with the tiny random model:
only the constraint can make its output what it is.

Clause ids (OAI-STRUCT-…) refer to contracts/openai-compat.md.
"""

from __future__ import annotations

import json
import re

import openai
import pytest

# vLLM docs' "simplified SQL" grammar, in its EBNF (GBNF) notation and in Lark
SQL_GBNF = """
root ::= select_statement
select_statement ::= "SELECT " column " from " table " where " condition
column ::= "col_1 " | "col_2 "
table ::= "table_1 " | "table_2 "
condition ::= column "= " number
number ::= "1 " | "2 "
"""
SQL_LARK = """
start: select_statement
select_statement: "SELECT " column " from " table " where " condition
column: "col_1 " | "col_2 "
table: "table_1 " | "table_2 "
condition: column "= " number
number: "1 " | "2 "
"""
SQL = re.compile(r"SELECT col_[12]  from table_[12]  where col_[12] = [12] ")

CAR_SCHEMA = {
    "type": "object",
    "properties": {"brand": {"type": "string", "maxLength": 12}, "model": {"type": "string", "maxLength": 12},
                   "car_type": {"type": "string", "enum": ["sedan", "SUV", "Truck", "Coupe"]}},
    "required": ["brand", "model", "car_type"], "additionalProperties": False,
}


def chat(client, served_model, extra: dict, content: str = "Classify this sentiment: vLLM is wonderful!",
         **kw):
    return client.chat.completions.create(model=served_model.name, messages=[{"role": "user", "content": content}],
                                          extra_body=extra, **{"max_tokens": 60, **kw})


def test_OAI_STRUCT_001_choice(client, served_model):
    for seed in range(3):
        r = chat(client, served_model, {"structured_outputs": {"choice": ["positive", "negative"]}}, seed=seed)
        assert r.choices[0].message.content in ("positive", "negative")
    # a single choice makes the text exact
    assert chat(client, served_model, {"structured_outputs": {"choice": ["neutral"]}}).choices[0].message.content \
        == "neutral"


def test_OAI_STRUCT_002_regex(client, served_model):
    # vLLM's example has \w+: bounded here (a random model never ends a word) and ASCII
    # (\w's Unicode classes differ between regex engines)
    r = chat(client, served_model, {"structured_outputs": {"regex": r"[a-z]{1,12}@[a-z]{1,12}\.com\n"},
                                    "stop": ["\n"]},
             content="Generate an example email address for Alan Turing, who works in Enigma. "
                     "End in .com and new line. Example result: alan.turing@enigma.com\n", max_tokens=300)
    assert re.fullmatch(r"[a-z]{1,12}@[a-z]{1,12}\.com", r.choices[0].message.content)


def test_OAI_STRUCT_003_json_schema(client, served_model):
    r = chat(client, served_model, {"structured_outputs": {"json": CAR_SCHEMA}}, max_tokens=200,
             content="Generate a JSON with the brand, model and car_type of the most iconic car from the 90's")
    car = json.loads(r.choices[0].message.content)
    assert set(car) == {"brand", "model", "car_type"}
    assert car["car_type"] in CAR_SCHEMA["properties"]["car_type"]["enum"]
    # json_object is response_format's json_object (a random model's object need not end
    # within max_tokens: the same grammar gives the same text for the same seed)
    r = chat(client, served_model, {"structured_outputs": {"json_object": True}}, max_tokens=20, seed=4)
    same = chat(client, served_model, {"response_format": {"type": "json_object"}}, max_tokens=20, seed=4)
    free = chat(client, served_model, {}, max_tokens=20, seed=4)
    assert r.choices[0].message.content == same.choices[0].message.content != free.choices[0].message.content
    assert r.choices[0].message.content.startswith("{")


@pytest.mark.parametrize("grammar", [SQL_GBNF, SQL_LARK], ids=["gbnf", "lark"])
def test_OAI_STRUCT_004_grammar_gbnf_and_lark(client, served_model, grammar):
    r = chat(client, served_model, {"structured_outputs": {"grammar": grammar}},
             content="Generate an SQL query to show the 'username' and 'email' from the 'users' table.")
    assert SQL.fullmatch(r.choices[0].message.content), r.choices[0].message.content
    old = chat(client, served_model, {"guided_grammar": grammar}, seed=1, temperature=1.0)
    assert SQL.fullmatch(old.choices[0].message.content)


def test_OAI_STRUCT_005_llama_cpp_grammar_on_completions(http):
    for seed in range(3):
        r = http.post("/v1/completions", json={"prompt": "Is the sky blue?", "max_tokens": 8, "seed": seed,
                                               "grammar": 'root ::= ("yes" | "no") "."'})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] in ("yes.", "no.")


def test_OAI_STRUCT_006_structural_tag(http):
    """vLLM's structural tag: free text, and once a trigger appears, the structure. The
    trigger here is "<", which a logit bias makes the first token: the rest of the call
    is then the grammar's (without it the biased model writes only "<" and "=")."""
    tag = {"type": "structural_tag",
           "structures": [{"begin": "<function=get_weather>",
                           "schema": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris"]}},
                                      "required": ["city"], "additionalProperties": False},
                           "end": "</function>"}],
           "triggers": ["<"]}
    lt = http.post("/tokenize", json={"prompt": "<", "add_special_tokens": False}).json()["tokens"]
    assert len(lt) == 1
    body = {"prompt": "weather in Paris?", "max_tokens": 30, "temperature": 0, "logit_bias": {str(lt[0]): 100}}
    free = http.post("/v1/completions", json=body).json()["choices"][0]["text"]
    assert "function" not in free
    for extra in ({"structured_outputs": {"structural_tag": json.dumps(tag)}}, {"response_format": tag}):
        text = http.post("/v1/completions", json={**body, **extra}).json()["choices"][0]["text"]
        assert re.match(r'<function=get_weather>\{\s*"city"\s*:\s*"Paris"\s*\}</function>', text), text


@pytest.mark.parametrize("body, param, words", [
    ({"structured_outputs": {"grammar": "root ::= missing_rule"}}, "structured_outputs", "GBNF"),
    ({"structured_outputs": {"grammar": "start: undefined_rule"}}, "structured_outputs", "undefined_rule"),
    ({"structured_outputs": {"grammar": "just some words"}}, "structured_outputs", "Lark"),
    # Lark features llguidance does not have: rule templates, look-around
    ({"structured_outputs": {"grammar": 'start: _sep{"a", ","}\n_sep{x, sep}: x (sep x)*'}}, "structured_outputs",
     "params not supported"),
    ({"structured_outputs": {"grammar": "start: /a(?=b)/"}}, "structured_outputs", "invalid regex"),
    ({"grammar": "root ::= " + " | ".join(f'"{i}"' for i in range(30_000))}, "grammar", "characters"),
    ({"guided_grammar": ""}, "guided_grammar", "non-empty"),
    ({"structured_outputs": {"choice": []}}, "structured_outputs", ""),
    ({"structured_outputs": {"choice": ["a"], "regex": "b"}}, "structured_outputs", "one structured-output"),
    ({"structured_outputs": {"choice": ["a"]}, "guided_regex": "b"}, "structured_outputs", "one structured-output"),
    ({"structured_outputs": {"structural_tag": '{"format": {}}'}}, "structured_outputs", "structures"),
    ({"structured_outputs": {"structural_tag": "not json"}}, "structured_outputs", "JSON"),
])
def test_OAI_STRUCT_007_grammars_it_cannot_take_are_400(http, body, param, words):
    r = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                                                **body})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and words in err["message"], err


def test_OAI_STRUCT_008_grammar_with_tools_auto_is_400(client, served_model):
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, served_model, {"structured_outputs": {"grammar": SQL_GBNF}}, tools=[tool])
    assert info.value.body["param"] == "structured_outputs"
