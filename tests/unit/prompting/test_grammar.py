"""Structured output and forced tool calls with real tokenizers (32k SentencePiece,
131k Tekken) and a random "model": torch.randn logits at every step, sampled under the
grammar's mask.  Whatever the randomness picks, the text must parse/validate and end
(no whitespace or other loops)."""

from __future__ import annotations

import codecs
import json
import re

import jsonschema
import pytest
import torch

from support.tokenizer_fixtures import spm_v3_tokenizer, tekken_tokenizer
from triolm.engine.constraint import (
    allocate_token_bitmask,
    apply_token_bitmask_,
    bitmask_to_bool,
    fill_token_bitmasks,
)
from triolm.errors import InvalidRequestError
from triolm.prompting.grammar import GrammarCompiler, llg_tokenizer
from triolm.prompting.tool_parsers import (
    HERMES_FORMAT,
    LLAMA3_JSON_FORMAT,
    MISTRAL_FORMAT,
    aggregate,
    get_tool_parser,
)
from triolm.prompting.tool_parsers.json_stream import JsonStream


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Per-token ops on one vocabulary row are too small to share across threads; on a
    busy 2-core machine the thread pool's hand-offs cost more than the work."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def spm():
    tok = spm_v3_tokenizer()
    return tok, GrammarCompiler(tok)


@pytest.fixture(scope="module")
def tekken():
    tok = tekken_tokenizer()
    return tok, GrammarCompiler(tok)


def generate(compiled, tok, seed: int, max_tokens: int = 400):
    """Random-logit sampling under the mask: (token ids, text, finished)."""
    gen = torch.Generator().manual_seed(seed)
    matcher = compiled.new_matcher()
    bitmask = allocate_token_bitmask(1, compiled.vocab_size)
    eos = set(tok.eos_token_ids)
    ids: list[int] = []
    finished = False
    for _ in range(max_tokens):
        fill_token_bitmasks([matcher], bitmask)
        logits = apply_token_bitmask_(torch.randn(1, compiled.vocab_size, generator=gen), bitmask)
        cdf = torch.cumsum(torch.softmax(logits[0], dim=-1), dim=0)  # inverse-CDF sampling
        token = int(torch.searchsorted(cdf, torch.rand(1, generator=gen) * cdf[-1], right=True).clamp(max=len(cdf) - 1))
        if logits[0, token] == float("-inf"):  # rounding at the very end of the CDF
            token = int(torch.argmax(logits[0]))
        if token in eos:
            finished = True
            break
        matcher.accept_token(token)
        ids.append(token)
        if matcher.is_terminated():
            finished = True
            break
    text = b"".join(tok.token_bytes(i) for i in ids).decode("utf-8")
    return ids, text, finished


def whitespace_outside_strings(text: str) -> bool:
    """Whitespace outside strings other than the one space of json.dumps's ", " and ": "."""
    in_str = esc = False
    prev = ""
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in " \t\r\n" and not (ch == " " and prev in ",:"):
            return True
        prev = "" if in_str else ch
    return False


NUMBER_OR_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?')


def canonical(text: str) -> bool:
    """Spelled exactly as json.dumps would, except that numbers keep the model's
    spelling (the grammar allows any JSON number: `-0`, `1.50`, `1e5`)."""
    zeroed = NUMBER_OR_STRING.sub(lambda m: m.group(0) if m.group(0).startswith('"') else "0", text)
    return zeroed == json.dumps(json.loads(zeroed), ensure_ascii=False)


# ------------------------------------------------------------------------ json_object
def test_json_object_random_logits(spm):
    """Any JSON object, compact spelling.  Unlike a schema with bounded strings, "any
    object" lets the model choose string lengths and nesting, and random logits nest
    faster than they close, so only some samples finish within the bound.  Every sample
    must still be a whitespace-free prefix of a JSON object, and every finished one an
    object."""
    tok, compiler = spm
    grammar = compiler.json_object()
    done = 0
    for seed in range(16):
        ids, text, finished = generate(grammar, tok, seed, max_tokens=200)
        assert text.startswith("{") and not whitespace_outside_strings(text), text
        reader = JsonStream(require_object=True)
        assert reader.feed(text) == len(text)  # a valid JSON prefix (raises otherwise)
        if finished:
            done += 1
            assert reader.done and isinstance(json.loads(text), dict), text
    assert done >= 1  # 3 of these 16 seeds finish within 200 tokens


# ------------------------------------------------------------------------ json_schema
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "quote": {"type": "string", "minLength": 2, "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "role": {"enum": ["admin", "user", 'say "hi"']},
        "active": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "minItems": 1, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                "geo": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "integer"}],
                        "items": False, "minItems": 2},
                "note": {"anyOf": [{"type": "null"}, {"type": "string", "maxLength": 8}]},
            },
            "required": ["zip", "geo"],
            "additionalProperties": False,
        },
        "nickname": {"type": "string", "maxLength": 6},
    },
    "required": ["name", "quote", "age", "role", "active", "tags", "address"],
    "additionalProperties": False,
}
MEASURE = {
    "type": "object",
    "properties": {"value": {"type": "number"}, "ratio": {"type": "number", "minimum": 0, "maximum": 1},
                   "unit": {"const": "m/s"}},
    "required": ["value", "ratio", "unit"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("vocab", ["spm", "tekken"])
def test_json_schema_random_logits(vocab, request):
    tok, compiler = request.getfixturevalue(vocab)
    grammar = compiler.json_schema(PERSON)
    validator = jsonschema.Draft202012Validator(PERSON)
    escapes = 0
    for seed in range(12 if vocab == "spm" else 4):
        ids, text, finished = generate(grammar, tok, seed)
        assert finished, text
        obj = json.loads(text)
        validator.validate(obj)
        assert canonical(text), text  # exactly json.dumps spelling: no free whitespace
        escapes += "\\" in text
    if vocab == "spm":
        assert escapes, "no sample exercised string escapes"


def test_json_schema_numbers(spm):
    tok, compiler = spm
    grammar = compiler.json_schema(MEASURE)
    for seed in range(10):
        _, text, finished = generate(grammar, tok, seed)
        assert finished and not whitespace_outside_strings(text), text
        jsonschema.validate(json.loads(text), MEASURE)


# ------------------------------------------------------------------------ tool calls
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city", "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 16}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "search", "strict": True, "parameters": {
        "type": "object",
        "properties": {
            "query": {"type": "string", "maxLength": 20},
            "limit": {"type": "integer", "minimum": 1, "maximum": 50},
            "filters": {"type": "object", "properties": {"lang": {"enum": ["en", "fr"]},
                                                         "safe": {"type": "boolean"}},
                        "required": ["lang"], "additionalProperties": False},
        },
        "required": ["query"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "get_time"}},
]
SCHEMAS = {t["function"]["name"]: t["function"].get("parameters", {"type": "object", "maxProperties": 0})
           for t in TOOLS}


def check_calls(text: str, parser_name: str, allowed: set[str]):
    parsed = get_tool_parser(parser_name).parse(text)
    assert parsed.content is None, text
    assert parsed.tool_calls, text
    for call in parsed.tool_calls:
        assert call.name in allowed
        jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])
    return parsed


@pytest.mark.parametrize("vocab", ["spm", "tekken"])
def test_required_hermes_tool_calls(vocab, request):
    tok, compiler = request.getfixturevalue(vocab)
    grammar = compiler.tool_calls(TOOLS, "required", "hermes")
    counts = set()
    for seed in range(10 if vocab == "spm" else 3):
        ids, text, finished = generate(grammar, tok, seed, max_tokens=600)
        assert finished, text
        parsed = check_calls(text, "hermes", set(SCHEMAS))
        counts.add(len(parsed.tool_calls))
        # the forced text is what the chat template renders back for these calls
        assert HERMES_FORMAT.render_calls(parsed.tool_calls) == text
        # streamed token by token (as the serving layer detokenizes) it is the same message
        stream, events = get_tool_parser("hermes").streaming(), []
        utf8 = codecs.getincrementaldecoder("utf-8")()
        for t in ids:
            events += stream.push(utf8.decode(tok.token_bytes(t)))
        streamed = aggregate(events + stream.finish())
        assert [(c.name, c.arguments) for c in streamed.tool_calls] == [
            (c.name, c.arguments) for c in parsed.tool_calls]
        assert streamed.content is None
    assert max(counts) >= 1


def test_named_tool_choice_is_one_call_of_that_function(spm):
    tok, compiler = spm
    choice = {"type": "function", "function": {"name": "search"}}
    grammar = compiler.tool_calls(TOOLS, choice, "hermes")
    for seed in range(10):
        _, text, finished = generate(grammar, tok, seed)
        assert finished, text
        parsed = check_calls(text, "hermes", {"search"})
        assert len(parsed.tool_calls) == 1


def test_parallel_tool_calls_false_is_one_call(spm):
    tok, compiler = spm
    grammar = compiler.tool_calls(TOOLS, "required", "hermes", parallel_tool_calls=False)
    for seed in range(6):
        _, text, _ = generate(grammar, tok, seed)
        assert len(check_calls(text, "hermes", set(SCHEMAS)).tool_calls) == 1


@pytest.mark.parametrize("parser_name,fmt", [("llama3_json", LLAMA3_JSON_FORMAT), ("mistral", MISTRAL_FORMAT)])
def test_required_other_formats(spm, parser_name, fmt):
    tok, compiler = spm
    grammar = compiler.tool_calls(TOOLS, "required", parser_name)
    tool_calls_id = tok.token_to_id("[TOOL_CALLS]")
    for seed in range(6):
        ids, text, finished = generate(grammar, tok, seed, max_tokens=600)
        assert finished, text
        parsed = check_calls(text, parser_name, set(SCHEMAS))
        if parser_name == "mistral":
            # the marker is the control token itself, then the (optional) SentencePiece space
            assert ids[0] == tool_calls_id
            assert fmt.render_calls(parsed.tool_calls) == text.replace("[TOOL_CALLS] [", "[TOOL_CALLS][", 1)
        else:
            assert len(parsed.tool_calls) == 1  # Llama 3 templates take one call per turn
            assert fmt.render_calls(parsed.tool_calls) == text


def test_auto_with_response_format_allows_calls_or_answer(spm):
    tok, compiler = spm
    schema = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}}, "required": ["answer"],
              "additionalProperties": False}
    grammar = compiler.from_request(
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema, "strict": True}},
        tools=TOOLS, tool_choice="auto", tool_parser="hermes")
    kinds = set()
    for seed in range(16):
        _, text, finished = generate(grammar, tok, seed)
        assert finished, text
        if text.startswith("<tool_call>"):
            check_calls(text, "hermes", set(SCHEMAS))
            kinds.add("calls")
        else:
            jsonschema.validate(json.loads(text), schema)
            kinds.add("answer")
    assert kinds == {"calls", "answer"}


# ------------------------------------------------------------------------ choice / regex
def test_guided_choice_and_regex(tekken):
    tok, compiler = tekken
    choices = ["positive", "negative", "neutral ☺", 'with "quotes"']
    grammar = compiler.choice(choices)
    seen = set()
    for seed in range(12):
        _, text, finished = generate(grammar, tok, seed)
        assert finished and text in choices
        seen.add(text)
    assert len(seen) >= 2
    pattern = r"[A-Z]{2}-\d{3}(\.[a-z]{1,4})?"
    grammar = compiler.regex(pattern)
    for seed in range(12):
        _, text, finished = generate(grammar, tok, seed)
        assert finished and re.fullmatch(pattern, text), text


# ------------------------------------------------------------------------ the engine contract
def encode_exact(tok, text: str) -> list[int]:
    """Tokens spelling exactly `text` (no SentencePiece dummy space), as the grammar sees them."""
    ids = llg_tokenizer(tok).tokenize_str(text)
    assert b"".join(tok.token_bytes(i) for i in ids) == text.encode()
    return ids


def test_terminates_by_forcing_eos(tekken):
    tok, compiler = tekken
    matcher = compiler.choice(["yes", "yesterday"]).new_matcher()
    for t in encode_exact(tok, "yes"):
        matcher.accept_token(t)
    assert not matcher.is_terminated() and matcher.is_accepting()  # "yesterday" still possible
    allowed = matcher.allowed_tokens_mask()
    assert allowed[list(tok.eos_token_ids)].all()
    matcher = compiler.choice(["yes", "no"]).new_matcher()
    for t in encode_exact(tok, "no"):
        matcher.accept_token(t)
    assert matcher.is_terminated()
    allowed = matcher.allowed_tokens_mask()
    assert allowed.shape == (compiler.vocab_size,) and allowed.dtype == torch.bool
    assert set(allowed.nonzero().view(-1).tolist()) == set(tok.eos_token_ids)


def test_mask_helpers_rows_and_padding(spm):
    tok, _ = spm
    compiler = GrammarCompiler(tok, vocab_size=tok.vocab_size + 64)  # a padded embedding
    assert compiler.vocab_size == tok.vocab_size + 64
    grammar = compiler.choice(["{"])
    m = grammar.new_matcher()
    bitmask = allocate_token_bitmask(3, compiler.vocab_size)
    bitmask.zero_()
    fill_token_bitmasks([m, None, m], bitmask)
    assert (bitmask[1] == -1).all()
    allowed = bitmask_to_bool(bitmask[0], compiler.vocab_size)
    assert torch.equal(allowed, m.allowed_tokens_mask())
    assert not allowed[tok.vocab_size:].any()
    assert allowed.sum() >= 1 and all(tok.token_bytes(i).startswith(b"{") for i in allowed.nonzero().view(-1))
    logits = torch.randn(3, compiler.vocab_size + 5)
    before = logits.clone()
    apply_token_bitmask_(logits, bitmask, rows=[0])
    assert torch.equal(logits[1:], before[1:])
    assert torch.isinf(logits[0, ~torch.cat([allowed, torch.zeros(5, dtype=torch.bool)])]).all()
    assert torch.equal(logits[0, :compiler.vocab_size][allowed], before[0, :compiler.vocab_size][allowed])


def test_accept_rollback_and_rejection(spm):
    tok, compiler = spm
    matcher = compiler.json_schema({"type": "object", "properties": {"a": {"type": "integer"}},
                                    "required": ["a"], "additionalProperties": False}).new_matcher()
    ids = encode_exact(tok, '{"a": 12')
    for t in ids[:2]:
        matcher.accept_token(t)
    mask_at_2 = matcher.allowed_tokens_mask()
    for t in ids[2:]:
        matcher.accept_token(t)
    matcher.rollback(len(ids) - 2)
    assert torch.equal(matcher.allowed_tokens_mask(), mask_at_2)
    with pytest.raises(ValueError, match="rejected"):
        matcher.accept_token(encode_exact(tok, "x")[0])


def test_compiled_grammars_are_cached(spm):
    tok, _ = spm
    compiler = GrammarCompiler(tok, cache_size=2)
    a = compiler.json_schema(MEASURE)
    assert compiler.json_schema(json.loads(json.dumps(MEASURE))) is a and compiler.hits == 1
    compiler.choice(["x"])
    compiler.choice(["y"])  # evicts the schema
    assert compiler.json_schema(MEASURE) is not a
    assert compiler.from_request() is None
    assert compiler.from_request(tools=TOOLS, tool_choice="auto", tool_parser="hermes") is None
    assert compiler.from_request(response_format={"type": "text"}) is None


# ------------------------------------------------------------------------ request errors
@pytest.mark.parametrize(
    "kwargs,param,needle",
    [
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}}},
         "response_format", "strin"),
        ({"response_format": {"type": "json_schema", "json_schema": {
            "name": "x", "strict": True, "schema": {"type": "string", "format": "no-such-format"}}}},
         "response_format", "no-such-format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}}},
         "response_format", "schema"),
        ({"response_format": {"type": "xml"}}, "response_format", "xml"),
        ({"guided_regex": "(unclosed"}, "guided_regex", "guided_regex"),
        ({"guided_choice": []}, "guided_choice", "guided_choice"),
        ({"guided_choice": ["a"], "guided_regex": "a"}, "guided_regex", "only one"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}},
          "tool_parser": "hermes"}, "tool_choice", "nope"),
        ({"tools": TOOLS, "tool_choice": "required"}, "tool_choice", "tool-call format"),
        ({"tools": TOOLS, "tool_choice": "sometimes", "tool_parser": "hermes"}, "tool_choice", "sometimes"),
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}], "tool_choice": "required",
          "tool_parser": "hermes"}, "tools", "bad name"),
        ({"tools": [*TOOLS, {"type": "function", "function": {"name": "broken", "parameters": {
            "type": "object", "properties": {"x": {"$ref": "#/$defs/missing"}}}}}],
          "tool_choice": "required", "tool_parser": "hermes"}, "tools", "tools[3] (broken)"),
        ({"tools": TOOLS, "tool_choice": "required", "tool_parser": "nope"}, "tools", "nope"),
    ],
)
def test_invalid_requests(spm, kwargs, param, needle):
    _, compiler = spm
    with pytest.raises(InvalidRequestError) as info:
        compiler.from_request(**kwargs)
    assert info.value.param == param
    assert needle in info.value.message


def test_lenient_schemas_unless_strict(spm):
    _, compiler = spm
    schema = {"type": "object", "properties": {"x": {"type": "string", "format": "float"}}}
    assert compiler.json_schema(schema, strict=False) is not None
    with pytest.raises(InvalidRequestError):
        compiler.json_schema(schema, strict=True)
