"""Compare llguidance, xgrammar and outlines-core on this CPU: grammar compile time and
per-token cost (mask fill + accept) along random-logit trajectories, at batch 1 and 8,
(per-thread CPU time, medians; xgrammar is given one compile thread),
for a 32k (Mistral v3 SentencePiece) and a 131k (Tekken) vocabulary.

This is the measurement behind docs/structured-output.md.  Only llguidance is a triolm
dependency; install the others out of the project's environment to rerun it:

    .venv/bin/pip install --no-deps --target /tmp/gram_alt xgrammar apache-tvm-ffi outlines-core
    PYTHONPATH=/tmp/gram_alt .venv/bin/python scripts/compare_grammar_engines.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support import tokenizer_fixtures  # noqa: E402
from triolm.engine.constraint import apply_token_bitmask_  # noqa: E402
from triolm.prompting.grammar import GrammarCompiler  # noqa: E402
from triolm.prompting.grammar.llg import llg_tokenizer  # noqa: E402

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


class LLG:
    name = "llguidance"

    def __init__(self, tok):
        self.compiler = GrammarCompiler(tok, cache_size=0)

    def compile(self, schema):
        return self.compiler.json_schema(schema)

    def matcher(self, compiled):
        return compiled.new_matcher()

    def fill(self, matchers, bitmask):
        from triolm.engine.constraint import fill_token_bitmasks

        fill_token_bitmasks(matchers, bitmask)

    def accept(self, m, t):
        m.accept_token(t)

    def done(self, m):
        return m.is_terminated()


class XGR:
    name = "xgrammar"

    def __init__(self, tok):
        import xgrammar as xgr

        self.xgr = xgr
        vocab = [
            b"" if i in tok.special_token_ids else tok.token_bytes(i) for i in range(tok.vocab_size)
        ]
        info = xgr.TokenizerInfo(
            vocab, xgr.VocabType.RAW, vocab_size=tok.vocab_size, stop_token_ids=list(tok.eos_token_ids)
        )
        self.compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)

    def compile(self, schema):
        return self.compiler.compile_json_schema(
            json.dumps(schema), any_whitespace=False, separators=(", ", ": ")
        )

    def matcher(self, compiled):
        return self.xgr.GrammarMatcher(compiled)

    def fill(self, matchers, bitmask):
        for i, m in enumerate(matchers):
            m.fill_next_token_bitmask(bitmask, i)

    def accept(self, m, t):
        assert m.accept_token(t)

    def done(self, m):
        return m.is_terminated()


class OC:
    name = "outlines-core"

    def __init__(self, tok):
        import outlines_core as oc

        self.oc = oc
        eos = tok.eos_token_ids[0]
        vmap: dict[bytes, list[int]] = {}
        for i in range(tok.vocab_size):
            if i in tok.special_token_ids:
                continue
            vmap.setdefault(tok.token_bytes(i), []).append(i)
        self.vocab = oc.Vocabulary(eos, vmap)
        self.eos = eos

    def compile(self, schema):
        from outlines_core.json_schema import build_regex_from_schema

        regex = build_regex_from_schema(json.dumps(schema), whitespace_pattern="")
        return self.oc.Index(regex, self.vocab)

    def matcher(self, compiled):
        return self.oc.Guide(compiled)

    def fill(self, matchers, bitmask):
        for i, g in enumerate(matchers):
            row = bitmask[i]
            g.write_mask_into(row.data_ptr(), row.numel(), 4)

    def accept(self, g, t):
        if t != self.eos:
            g.advance(t)

    def done(self, g):
        return g.is_finished()


def run(engine, tok, batch: int, steps: int, vocab: int):
    t0 = time.thread_time()
    compiled = engine.compile(SCHEMA)
    compile_s = time.thread_time() - t0
    gen = torch.Generator().manual_seed(0)
    matchers = [engine.matcher(compiled) for _ in range(batch)]
    words = (vocab + 31) // 32
    bitmask = torch.full((batch, words), -1, dtype=torch.int32)
    fill_t, apply_t, accept_t = [], [], []
    eos = set(tok.eos_token_ids)
    for _ in range(steps):
        logits = torch.randn(batch, vocab, generator=gen)
        t0 = time.thread_time()
        engine.fill(matchers, bitmask)
        t1 = time.thread_time()
        apply_token_bitmask_(logits, bitmask)
        t2 = time.thread_time()
        ids = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen).view(-1).tolist()
        t3 = time.thread_time()
        for i, t in enumerate(ids):
            engine.accept(matchers[i], t)
        t4 = time.thread_time()
        for i, t in enumerate(ids):
            if t in eos or engine.done(matchers[i]):
                matchers[i] = engine.matcher(compiled)
        fill_t.append(t1 - t0)
        apply_t.append(t2 - t1)
        accept_t.append(t4 - t3)
    med = lambda xs: statistics.median(xs) * 1e3  # noqa: E731
    return compile_s * 1e3, fill_t[0] * 1e3, med(fill_t), statistics.mean(fill_t) * 1e3, med(apply_t), med(accept_t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--engines", default="llguidance,xgrammar,outlines-core")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("| engine | vocab | batch | compile ms | first fill ms | fill ms/step (median) | fill mean "
          "| apply ms/step | accept ms/step |")
    print("|---|---|---|---|---|---|---|---|---|")
    for vname, make in [("32k", tokenizer_fixtures.spm_v3_tokenizer), ("131k", tokenizer_fixtures.tekken_tokenizer)]:
        tok = make()
        llg_tokenizer(tok)  # warm the shared tokenizer cache outside the timings
        for cls in (LLG, XGR, OC):
            if cls.name not in args.engines.split(","):
                continue
            t0 = time.thread_time()
            engine = cls(tok)
            setup = (time.thread_time() - t0) * 1e3
            for batch in (1, 8):
                c, first, f, fmean, a, acc = run(engine, tok, batch, args.steps, tok.vocab_size)
                print(f"| {cls.name} | {vname} | {batch} | {c:.1f} (+{setup:.0f} tokenizer) | {first:.3f} "
                      f"| {f:.3f} | {fmean:.3f} | {a:.3f} | {acc:.3f} |", flush=True)
                setup = 0


if __name__ == "__main__":
    main()
