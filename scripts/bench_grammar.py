"""Per-token overhead of constrained decoding (llguidance) vs unconstrained sampling.

For each vocabulary (32k Mistral v3 SentencePiece, 131k Tekken), batch size (1, 8) and
constraint (JSON schema, json_object, a forced Hermes tool call), it walks random-logit
trajectories (torch.randn per step, sampled under the mask, so the grammar state moves
through keys, strings, numbers ...) and times, per decode step:

    fill    matcher -> int32 bitmask (all rows)          engine.constraint.fill_token_bitmasks
    apply   bitmask -> logits (-inf where disallowed)    engine.constraint.apply_token_bitmask_
    accept  advance each matcher by its sampled token    TokenMatcher.accept_token
    sample  softmax + exponential-race sampling          (the unconstrained baseline)
    greedy  argmax alone                                 (the cheapest baseline)

Times are per-thread CPU time (time.thread_time), so other processes on a shared
machine do not inflate them; medians over the steps.  Compile time is for the first
compile of each grammar (the compiler's cache then makes it ~0), after one warm-up
compile per vocabulary; wall time includes the compile sandbox's round trip.

    .venv/bin/python scripts/bench_grammar.py [--steps 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support import tokenizer_fixtures  # noqa: E402
from triolm.engine.constraint import allocate_token_bitmask, apply_token_bitmask_, fill_token_bitmasks  # noqa: E402
from triolm.prompting.grammar import GrammarCompiler  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 4},
        "address": {
            "type": "object",
            "properties": {
                "street": {"type": "string", "maxLength": 24},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "required": ["street", "zip"],
            "additionalProperties": False,
        },
        "score": {"type": "number"},
    },
    "required": ["name", "age", "role", "tags", "address", "score"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 32}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "search", "parameters": {
        "type": "object", "properties": {"query": {"type": "string", "maxLength": 48},
                                         "limit": {"type": "integer", "minimum": 1, "maximum": 50}},
        "required": ["query"], "additionalProperties": False}}},
]
WORKLOADS = {
    "json_schema": lambda c: c.json_schema(SCHEMA),
    "json_object": lambda c: c.json_object(),
    "tool_call (hermes)": lambda c: c.tool_calls(TOOLS, "required", "hermes"),
}


def sample(logits: torch.Tensor) -> torch.Tensor:
    probs = torch.softmax(logits, dim=-1)
    return torch.argmax(probs / torch.empty_like(probs).exponential_(), dim=-1)


def cpu_ms(fn) -> tuple[float, object]:
    t0 = time.thread_time()
    out = fn()
    return (time.thread_time() - t0) * 1e3, out


def run(compiled, eos: set[int], batch: int, steps: int, seed: int = 0) -> dict[str, float]:
    torch.manual_seed(seed)
    vocab = compiled.vocab_size
    matchers = [compiled.new_matcher() for _ in range(batch)]
    bitmask = allocate_token_bitmask(batch, vocab)
    t = {"fill": [], "apply": [], "accept": [], "sample": [], "greedy": []}
    for _ in range(steps):
        logits = torch.randn(batch, vocab)
        ms, _ = cpu_ms(lambda: torch.argmax(logits, dim=-1).tolist())  # noqa: B023 (called within this iteration)
        t["greedy"].append(ms)
        ms, _ = cpu_ms(lambda: fill_token_bitmasks(matchers, bitmask))
        t["fill"].append(ms)
        ms, _ = cpu_ms(lambda: apply_token_bitmask_(logits, bitmask))  # noqa: B023 (called within this iteration)
        t["apply"].append(ms)
        ms, ids = cpu_ms(lambda: sample(logits).tolist())  # noqa: B023 (called within this iteration)
        t["sample"].append(ms)
        t0 = time.thread_time()
        for i, tok in enumerate(ids):
            if tok in eos:
                matchers[i] = compiled.new_matcher()
            else:
                matchers[i].accept_token(tok)
        t["accept"].append((time.thread_time() - t0) * 1e3)
        for i, m in enumerate(matchers):
            if m.is_terminated():
                matchers[i] = compiled.new_matcher()
    return {k: statistics.median(v) for k, v in t.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for vname, make in (("32k", tokenizer_fixtures.spm_v3_tokenizer), ("131k", tokenizer_fixtures.tekken_tokenizer)):
        tok = make()
        setup_ms, compiler = cpu_ms(lambda: GrammarCompiler(tok))  # noqa: B023 (called within this iteration)
        t0 = time.perf_counter()
        compiler.choice(["warm", "up"])  # once per model: any compile sandbox starts here
        first_s = time.perf_counter() - t0
        print(f"first compile (sandbox start) {vname}: {first_s:.2f} s wall", file=sys.stderr)
        for wname, build in WORKLOADS.items():
            t0 = time.perf_counter()
            compile_ms, compiled = cpu_ms(lambda: build(compiler))  # noqa: B023 (called within this iteration)
            wall_ms = (time.perf_counter() - t0) * 1e3
            for batch in (1, 8):
                r = run(compiled, set(tok.eos_token_ids), batch, args.steps)
                over = r["fill"] + r["apply"] + r["accept"]
                rows.append((vname, wname, batch, f"{compile_ms:.1f} / {wall_ms:.1f}", r, over))
                print(f"{vname} {wname} b{batch} done", file=sys.stderr, flush=True)
        print(f"tokenizer setup {vname}: {setup_ms:.0f} ms CPU", file=sys.stderr)
    print("| vocab | constraint | batch | compile ms (thread CPU / wall) | fill ms | apply ms | accept ms "
          "| **overhead ms/step** | random sampling ms/step | overhead vs sampling | greedy argmax ms/step |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for vname, wname, batch, compile_ms, r, over in rows:
        print(f"| {vname} | {wname} | {batch} | {compile_ms} | {r['fill']:.3f} | {r['apply']:.3f} "
              f"| {r['accept']:.3f} | **{over:.3f}** | {r['sample']:.3f} | +{100 * over / r['sample']:.0f}% "
              f"| {r['greedy']:.3f} |")

if __name__ == "__main__":
    main()
