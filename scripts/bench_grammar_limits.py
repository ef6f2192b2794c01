"""How much of each grammar limit legitimate grammars need (margin of the defaults).

For realistic grammars — a 50-property nested object schema, a 500-value enum, a
30-tool agent toolbox forced with tool_choice "required", guided_choice with 2,000 and
20,000 entries, a date/e-mail regex — it compiles each with every llguidance limit of
`GrammarLimits` divided by 2, 4, 8, ... and walks random-logit trajectories (the
sampled token under the mask, 300 steps or to the end) to see that no step fails. The
largest divisor that still passes is that grammar's margin under the defaults. It
also reports the wall-clock time of the first compile (sandbox + in-process) under the
defaults, against `compile_timeout`.

    .venv/bin/python scripts/bench_grammar_limits.py [--walks 3] [--steps 300]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import attrs
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support import tokenizer_fixtures
from triolm.errors import InvalidRequestError
from triolm.prompting.grammar import GrammarCompiler
from triolm.prompting.grammar.limits import GrammarLimits

SCALED = ("max_grammar_size", "max_items_in_row", "step_max_items", "initial_lexer_fuel",
          "step_lexer_fuel", "max_lexer_states")
DIVISORS = (1, 2, 4, 8, 16, 32, 64)


def nested_schema() -> dict:
    """50 properties over 5 nested objects, with the keywords real schemas use."""
    def leaf(i: int) -> dict:
        kinds = [{"type": "string", "maxLength": 40}, {"type": "integer", "minimum": 0, "maximum": 10000},
                 {"type": "number"}, {"type": "boolean"}, {"enum": ["red", "green", "blue", "unknown"]},
                 {"type": "string", "format": "date"}, {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{4}$"},
                 {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 5},
                 {"anyOf": [{"type": "string", "maxLength": 10}, {"type": "null"}]},
                 {"type": "string", "format": "email"}]
        return kinds[i % len(kinds)]

    def obj(start: int, n: int, child: dict | None) -> dict:
        props = {f"field_{i}": leaf(i) for i in range(start, start + n)}
        if child is not None:
            props["child"] = child
        return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}

    schema = None
    for level in range(5):
        schema = obj(level * 10, 10, schema)
    return schema


def toolbox(n: int = 30) -> list[dict]:
    tools = []
    for i in range(n):
        tools.append({"type": "function", "function": {
            "name": f"tool_{i}", "description": "an agent tool",
            "parameters": {"type": "object", "properties": {
                "path": {"type": "string", "description": "file path"},
                "query": {"type": "string", "maxLength": 200},
                "limit": {"type": "integer", "minimum": 1, "maximum": 100},
                "mode": {"enum": ["fast", "thorough", "auto"]},
                "options": {"type": "object", "properties": {
                    "recursive": {"type": "boolean"}, "tags": {"type": "array", "items": {"type": "string"}}}},
            }, "required": ["path"]}}})
    return tools


GRAMMARS = {
    "50-property nested schema": lambda c, lim: c.from_request(
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": nested_schema(),
                                                                "strict": True}}, limits=lim),
    "500-value enum": lambda c, lim: c.from_request(
        guided_json={"type": "object", "properties": {"code": {"enum": [f"value-{i:04d}" for i in range(500)]}},
                     "required": ["code"]}, limits=lim),
    "30-tool toolbox (required)": lambda c, lim: c.from_request(
        tools=toolbox(), tool_choice="required", tool_parser="hermes", limits=lim),
    "guided_choice 2,000": lambda c, lim: c.from_request(
        guided_choice=[f"label number {i}" for i in range(2000)], limits=lim),
    "guided_choice 20,000": lambda c, lim: c.from_request(
        guided_choice=[f"c{i}" for i in range(20000)], limits=lim),
    "regex date/email": lambda c, lim: c.from_request(
        guided_regex=r"[0-9]{4}-[0-9]{2}-[0-9]{2} [a-z0-9._%+-]{1,32}@[a-z0-9.-]{1,32}\.[a-z]{2,6}", limits=lim),
}


def walk(compiled, eos: set[int], steps: int, seed: int) -> str | None:
    """Random-logit sampling under the mask; the matcher's error, if one is met."""
    gen = torch.Generator().manual_seed(seed)
    m = compiled.new_matcher()
    for _ in range(steps):
        mask = m.allowed_tokens_mask()
        if m.error:
            return m.error
        logits = torch.randn(mask.shape[0], generator=gen).masked_fill(~mask, float("-inf"))
        tok = int(torch.argmax(logits))
        if tok in eos or m.is_terminated():
            return None
        try:
            m.accept_token(tok)
        except ValueError:
            return m.error
        if m.is_terminated():
            return None
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--walks", type=int, default=3)
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    torch.set_num_threads(1)
    tok = tokenizer_fixtures.tekken_tokenizer()
    eos = set(tok.eos_token_ids)
    base = GrammarLimits()
    print("| grammar | first compile s (defaults) | largest divisor of all limits that passes | fails at |")
    print("|---|---|---|---|")
    for name, build in GRAMMARS.items():
        compiler = GrammarCompiler(tok, cache_size=0)
        build(compiler, base.__class__(compile_timeout=60.0))  # start the sandbox child
        t0 = time.perf_counter()
        build(compiler, attrs.evolve(base, compile_timeout=60.0))
        first = time.perf_counter() - t0
        passed, failure = None, ""
        for d in DIVISORS:
            lim = attrs.evolve(base, compile_timeout=60.0, **{k: max(1, getattr(base, k) // d) for k in SCALED})
            try:
                compiled = build(compiler, lim)
                errors = [e for s in range(args.walks) if (e := walk(compiled, eos, args.steps, s))]
            except InvalidRequestError as exc:
                errors = [exc.message]
            if errors:
                failure = f"1/{d}: {errors[0].splitlines()[0][:90]}"
                break
            passed = d
        compiler.close()
        print(f"| {name} | {first:.2f} | {passed if passed else 'none'} | {failure} |", flush=True)


if __name__ == "__main__":
    main()
