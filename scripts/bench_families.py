#!/usr/bin/env python
"""Each model family, triolm beside llama.cpp's `llama-server` on the same GGUF files.

    python scripts/bench_families.py                          # every family, Q4_K_M, 3 rounds
    python scripts/bench_families.py --families phi3 granite --rounds 1 --gen 32
    python scripts/bench_families.py --quants Q4_K_M F16      # F16 files too
    python scripts/bench_families.py --no-check               # the benchmark only
    python scripts/bench_families.py --check-only             # the llama.cpp check only

Families: llama (the baseline), gemma3 (the real gemma-3-270m Q4_K_M file), gemma2,
phi3, granite, smollm3, qwen3_moe, mixtral. Every family but the real gemma3 is a
random-weight model of a realistic small shape (`FAMILIES`: SmolLM-135M's dims for the
dense ones, ~200M-parameter MoEs with several experts per token), written as F16 by
triolm's own GGUF writer (`write_gguf`, llama.cpp's converter conventions) and
quantized by llama.cpp's `llama-quantize`. Files are cached in
~/.cache/triolm/bench-models/family-<name>-<digest>/ (the digest covers the shape, the
vocabulary and the writer's sources, so a writer change rebuilds them).

Two parts, per family:

1. The check (skipped by `--no-check`): llama-server must load the F16 file triolm
   wrote, both servers must tokenize `CHECK_TEXT` to the same ids, and both decode the
   same token-id prompts greedily (`--check-len`
   tokens, longer than the Gemma windows, then `--check-gen` tokens; llama-server
   with a float32 KV cache like triolm's). Reported: how many leading tokens agree,
   and llama.cpp's gap between its two best tokens where they first differ (a gap
   near 0 is a near-tie that float16 arithmetic may flip; a large gap means the two
   read the file differently). phi3's check runs at a context past its longrope
   switch (long factors; the benchmark's short context takes the short ones). For
   gemma3 the random-weight file has the real model's shape (the real file is
   llama.cpp's own and checked by the tests).
2. The benchmark, with `bench_llama_server.bench_file` (both servers up, the one not
   measured frozen with SIGSTOP, order alternating by round, medians of `--rounds`):
   single-stream decode tok/s (128-token prompt, `--gen` tokens, first token
   excluded), prefill tok/s (a `--prefill-len`-token prompt, one token generated),
   and peak RSS of each server process. Both run one sequence (`-np 1`,
   `--max-num-seqs 1`).

Runtime on a quiet 2-core machine, estimated from the parts of a loaded run: 8-10
minutes for every family with the defaults once the files are cached; building them
the first time adds ~3 minutes.

Results (JSON, server logs) go to `--results` (default
~/.cache/triolm/bench-results/families-<time>/); the markdown tables to stdout,
progress to stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402
import bench_llama_server as bls  # noqa: E402
from triolm.model.config import FULL, SLIDING  # noqa: E402

REAL_GEMMA3 = Path("/work/models/gemma-3-270m-q4_k_m.gguf")

# SmolLM-135M's dims, shared by the dense families.
_DENSE: dict[str, Any] = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                              num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                              max_position_embeddings=8192, tie_word_embeddings=True)

#: family -> (test tokenizer kind, chat template, ModelConfig fields). Each family's own
#: features at real-model values (Gemma's windows shorter than the check's prompts).
FAMILIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama": ("spm-llama2", "llama2.jinja", dict(architecture="llama", rms_norm_eps=1e-5,
                                                 rope_theta=10000.0, **_DENSE)),
    "gemma3": ("spm-llama2", "gemma.jinja", dict(
        # gemma-3-270m's shape: 18 layers, 5 local (window 512) to 1 global, q/k norms
        architecture="gemma3", hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
        num_attention_heads=4, num_key_value_heads=1, head_dim=256, max_position_embeddings=32768,
        tie_word_embeddings=True, rms_norm_eps=1e-6, rope_theta=1e6, qk_norm=True, sliding_window=512,
        layer_types=tuple(FULL if i % 6 == 5 else SLIDING for i in range(18)),
        rope_local_theta=10000.0, query_pre_attn_scalar=256.0)),
    "gemma2": ("spm-llama2", "gemma.jinja", dict(
        architecture="gemma2", rms_norm_eps=1e-6, rope_theta=10000.0, sliding_window=512,
        layer_types=tuple(SLIDING if i % 2 == 0 else FULL for i in range(30)),
        rope_local_theta=10000.0, query_pre_attn_scalar=64.0, attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0, **_DENSE)),
    "phi3": ("spm-llama2", "phi3.jinja", dict(
        # Phi-4-mini's features: 3/4 of each head rotated, longrope from a 4k context
        architecture="phi3", rms_norm_eps=1e-5, rope_theta=10000.0, partial_rotary_factor=0.75,
        rope_scaling=("longrope", 4096, 24), **{**_DENSE, "max_position_embeddings": 131072})),
    "granite": ("bpe-tekken", "granite.jinja", dict(
        # Granite-3.x's multipliers (attention 1/head_dim instead of head_dim^-1/2)
        architecture="granite", rms_norm_eps=1e-5, rope_theta=10000.0, embedding_multiplier=12.0,
        residual_multiplier=0.22, attention_multiplier=0.015625, logits_scaling=8.0, **_DENSE)),
    "smollm3": ("bpe-tekken", "smollm3.jinja", dict(
        architecture="smollm3", rms_norm_eps=1e-6, rope_theta=5e6,
        rope_layers=tuple((i + 1) % 4 != 0 for i in range(30)), **_DENSE)),
    "qwen3_moe": ("bpe-tekken", "chatml_tools.jinja", dict(
        # Qwen3-30B-A3B's layout scaled down: 32 experts of width 256, 4 per token
        architecture="qwen3_moe", hidden_size=512, intermediate_size=1536, num_hidden_layers=12,
        num_attention_heads=8, num_key_value_heads=4, head_dim=64, max_position_embeddings=8192,
        tie_word_embeddings=True, rms_norm_eps=1e-6, rope_theta=1e6, qk_norm=True, num_experts=32,
        num_experts_per_tok=4, moe_intermediate_size=256)),
    "mixtral": ("spm-llama2", "llama2.jinja", dict(
        # Mixtral's layout scaled down: 8 experts of width 1024, 2 per token
        architecture="mixtral", hidden_size=512, intermediate_size=1024, num_hidden_layers=12,
        num_attention_heads=8, num_key_value_heads=2, head_dim=64, max_position_embeddings=8192,
        rms_norm_eps=1e-5, rope_theta=1e6, num_experts=8, num_experts_per_tok=2,
        moe_intermediate_size=1024)),
}

# What decides a family file's bytes besides its shape: the writer's conventions.
_WRITER_SOURCES = ("gguf_writer.py", "gguf_layout.py", "gguf_quants.py", "gemma_gguf.py", "family_gguf.py",
                   "phi3.py", "moe_gguf.py", "moe_layout.py")


def family_config(name: str, vocab_size: int, bos: int | None, eos: tuple[int, ...]):
    """The family's ModelConfig (the tokenizer fixes vocabulary and special ids)."""
    from triolm.model.config import ModelConfig, RopeScaling

    fields = dict(FAMILIES[name][2])
    if isinstance(fields.get("rope_scaling"), tuple):
        # longrope: short factors near 1, long ones rising to 32 (Phi's curves' shape)
        _, original, half = fields["rope_scaling"]
        factor = fields["max_position_embeddings"] / original
        fields["rope_scaling"] = RopeScaling(
            "longrope", factor=factor, original_max_position_embeddings=original,
            short_factor=tuple(1.0 + 0.5 * i / (half - 1) for i in range(half)),
            long_factor=tuple(1.0 + (factor - 1.0) * (i / (half - 1)) ** 2 for i in range(half)),
            attention_factor=1.1902380714238083)  # sqrt(1 + ln 32 / ln 4096), transformers' default
    return ModelConfig(vocab_size=vocab_size, bos_token_id=bos, eos_token_ids=eos, **fields)


#: Phi-3-mini's added tokens (ids 32000-32010 after its SentencePiece vocabulary):
#: llama.cpp's vocabulary loader looks some of them up in every file named phi3.
PHI3_ADDED_TOKENS = ("<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>",
                     "<|placeholder3|>", "<|placeholder4|>", "<|system|>", "<|end|>", "<|placeholder5|>",
                     "<|placeholder6|>", "<|user|>")


def family_tokenizer(name: str) -> tuple[dict[str, Any], int, int | None, tuple[int, ...]]:
    """(GGUF tokenizer keys, vocabulary size, bos, eos) of the family's test tokenizer;
    phi3's with Phi-3's added tokens and <|endoftext|> as eos, as in its files."""
    from gguf import TokenType

    from support.model_factory import _tokenizer_info

    kind, template, _ = FAMILIES[name]
    tok = _tokenizer_info(kind, template)
    meta = dict(tok.gguf_metadata)
    if name != "phi3":
        return meta, tok.vocab_size, tok.bos, tok.eos
    n = len(PHI3_ADDED_TOKENS)
    meta["tokenizer.ggml.tokens"] = list(meta["tokenizer.ggml.tokens"]) + list(PHI3_ADDED_TOKENS)
    meta["tokenizer.ggml.scores"] = list(meta["tokenizer.ggml.scores"]) + [0.0] * n
    meta["tokenizer.ggml.token_type"] = list(meta["tokenizer.ggml.token_type"]) + [int(TokenType.CONTROL)] * n
    meta["tokenizer.ggml.eos_token_id"] = tok.vocab_size
    return meta, tok.vocab_size + n, tok.bos, (tok.vocab_size,)


def _digest(name: str, tokenizer_metadata: dict[str, Any]) -> str:
    h = hashlib.sha256(repr(FAMILIES[name]).encode())
    h.update(json.dumps(tokenizer_metadata, sort_keys=True, default=str).encode())
    formats = Path(__file__).resolve().parents[1] / "src" / "triolm" / "formats"
    for source in _WRITER_SOURCES:
        h.update((formats / source).read_bytes())
    return h.hexdigest()[:10]


def family_f16(name: str) -> Path:
    """The family's random-weight model as an F16 GGUF written by `write_gguf` (cached;
    builds of older writer sources are deleted)."""
    from triolm.formats.gguf_writer import write_gguf
    from triolm.model.random_init import random_weights

    meta, vocab_size, bos, eos = family_tokenizer(name)
    root = bc.bench_model_dir() / f"family-{name}-{_digest(name, meta)}"
    out = root / "model-F16.gguf"
    if out.exists():
        return out
    for stale in root.parent.glob(f"family-{name}-*"):
        if stale != root and len(stale.name) == len(root.name):
            shutil.rmtree(stale, ignore_errors=True)
    config = family_config(name, vocab_size, bos, eos)
    bc.log(f"setup: {name}: random weights, then {out} (F16, triolm's writer)")
    weights = random_weights(config, seed=0)
    params = sum(t.numel() for t in weights.values())
    write_gguf(out, config, weights, meta, "F16", name=f"triolm-bench-{name}")
    (root / "shape.json").write_text(json.dumps({"parameters": params, "config": repr(config)}, indent=1) + "\n")
    bc.log(f"setup: {name}: {params / 1e6:.0f}M parameters, {out.stat().st_size / 1e6:.0f} MB")
    return out


def bench_path(name: str, quant: str, quantize: Path, threads: int) -> tuple[str, Path]:
    """(label, file) the benchmark runs for a family: the real gemma-3-270m for gemma3's
    Q4_K_M, else the family's file as `quant` (F16 as written, others by llama-quantize)."""
    if name == "gemma3" and quant == "Q4_K_M" and REAL_GEMMA3.exists():
        return "gemma3-270m-real-q4_k_m", REAL_GEMMA3
    f16 = family_f16(name)
    label = f"{name}-random-{quant.lower()}"
    return label, f16 if quant == "F16" else bls.quantized(quantize, f16, quant, threads)


# ------------------------------------------------------------------------ the check

async def _triolm_greedy(url: str, prompt: list[int], n: int) -> list[int]:
    import httpx

    async with httpx.AsyncClient(timeout=httpx.Timeout(900.0)) as client:
        r = await client.post(url + "/v1/completions", json={
            "model": "model", "prompt": prompt, "max_tokens": n, "temperature": 0.0, "ignore_eos": True,
            "return_token_ids": True})
        r.raise_for_status()
        return [int(t) for t in r.json()["choices"][0]["token_ids"]]


async def _llama_greedy(url: str, prompt: list[int], n: int) -> tuple[list[int], list[list[float]]]:
    """llama-server's greedy tokens and, per step, its two best log-probabilities."""
    import httpx

    async with httpx.AsyncClient(timeout=httpx.Timeout(900.0)) as client:
        r = await client.post(url + "/completion", json={
            "prompt": prompt, "n_predict": n, "temperature": 0, "n_probs": 2, "cache_prompt": False,
            "return_tokens": True, "ignore_eos": True})
        r.raise_for_status()
        body = r.json()
    top2 = [[q["logprob"] for q in p["top_logprobs"][:2]] for p in body["completion_probabilities"]]
    return [int(t) for t in body["tokens"]], top2


#: Text both servers tokenize in the check: words, digits, spacing, punctuation, accents,
#: CJK and an emoji (byte fallback).
CHECK_TEXT = ("The quick brown fox jumps over the lazy dog 1234567 times.\n\n  Indented:\tx = f(3.14)"
              " // done?  Déjà vu, naïve café — 東京タワー 🚀 end")


async def _tokenize(url: str, path: str, body: dict) -> list[int]:
    import httpx

    async with httpx.AsyncClient(timeout=httpx.Timeout(60.0)) as client:
        r = await client.post(url + path, json=body)
        r.raise_for_status()
        return [int(t) for t in r.json()["tokens"]]


def check_family(name: str, server_bin: Path, args, log_dir: Path) -> dict:
    """Does llama-server load the F16 file triolm wrote, and do both decode alike?"""
    import trio

    path = family_f16(name)
    ctx = -(-(args.check_len + args.check_gen + 16) // 256) * 256
    longrope = FAMILIES[name][2].get("rope_scaling")
    if longrope:
        # a context past the switch point: both must take the long factors (the benchmark's
        # short context runs the short ones)
        ctx = max(ctx, longrope[1] + 256)
    out: dict[str, Any] = {"family": name, "file": str(path), "prompts": []}
    one = argparse.Namespace(**{**vars(args), "streams": 1})
    procs = {}
    try:
        try:
            procs["llama-server"] = bls.start_llama_server(server_bin, path, ctx, one, log_dir, f"check-{name}",
                                                           extra=("-ctk", "f32", "-ctv", "f32"))
        except RuntimeError as exc:
            out["llama_server_loads"] = False
            out["error"] = str(exc)
            log_tail = (log_dir / f"llama-server-check-{name}.log").read_text(errors="replace")[-1500:]
            out["llama_server_log_tail"] = log_tail
            bc.log(f"check {name}: llama-server REFUSES the file: {exc}\n{log_tail}")
            return out
        out["llama_server_loads"] = True
        try:
            procs["triolm"] = bls.start_triolm(path, ctx, one, log_dir, f"check-{name}")
        except RuntimeError as exc:  # reported; the other families still run
            out["error"] = str(exc)
            bc.log(f"check {name}: triolm did not start: {exc}")
            return out
        bc.log(f"check {name}: both servers up (llama-server {procs['llama-server'][2]:.1f} s, "
               f"triolm {procs['triolm'][2]:.1f} s)")
        with bls.only(procs, "llama-server"):
            theirs_text = trio.run(_tokenize, procs["llama-server"][1], "/tokenize",
                                   {"content": CHECK_TEXT, "add_special": True})
        with bls.only(procs, "triolm"):
            ours_text = trio.run(_tokenize, procs["triolm"][1], "/tokenize",
                                 {"model": "model", "prompt": CHECK_TEXT, "add_special_tokens": True})
        out["tokenization_equal"] = ours_text == theirs_text
        out["tokenization"] = {"triolm": ours_text, "llama_server": theirs_text}
        bc.log(f"check {name}: tokenization of the check text ({len(ours_text)} / {len(theirs_text)} ids) "
               + ("equal" if ours_text == theirs_text else "DIFFERS"))
        vocab = bls.Vocab(path)
        for i, prompt in enumerate(vocab.prompts(args.check_prompts, args.check_len, 7)):
            with bls.only(procs, "llama-server"):
                theirs, top2 = trio.run(_llama_greedy, procs["llama-server"][1], prompt, args.check_gen)
            with bls.only(procs, "triolm"):
                ours = trio.run(_triolm_greedy, procs["triolm"][1], prompt, args.check_gen)
            agree = next((k for k, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b),
                         min(len(ours), len(theirs)))
            gap = top2[agree][0] - top2[agree][1] if agree < len(top2) and len(top2[agree]) == 2 else None
            out["prompts"].append({"agree": agree, "of": args.check_gen, "llama_cpp_gap_at_divergence": gap,
                                   "triolm": ours, "llama_server": theirs})
            bc.log(f"check {name} prompt {i + 1}: {agree}/{args.check_gen} leading tokens agree"
                   + ("" if gap is None else f" (llama.cpp's top-2 gap where they part: {gap:.3f} nats)"))
    finally:
        for proc, _, _ in procs.values():
            bc.stop_process(proc)
    return out


def check_table(checks: list[dict]) -> str:
    rows = []
    for c in checks:
        if not c.get("llama_server_loads") or "error" in c:
            rows.append([c["family"], "yes" if c.get("llama_server_loads") else "no", "–", "–", "–"])
            continue
        agree = ", ".join(f"{p['agree']}/{p['of']}" for p in c["prompts"])
        gaps = ", ".join("–" if p["llama_cpp_gap_at_divergence"] is None
                         else f"{p['llama_cpp_gap_at_divergence']:.3f}" for p in c["prompts"])
        rows.append([c["family"], "yes", "yes" if c["tokenization_equal"] else "no", agree, gaps])
    return bc.markdown_table(["family (random-weight F16)", "llama-server loads it", "same text tokens",
                              "leading greedy tokens equal", "llama.cpp top-2 gap where they part (nats)"],
                             rows)


# ------------------------------------------------------------------------ main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", nargs="+", choices=tuple(FAMILIES), default=list(FAMILIES))
    ap.add_argument("--quants", nargs="+", default=["Q4_K_M"],
                    help="file types to benchmark: F16 or any llama-quantize type (default Q4_K_M)")
    ap.add_argument("--llama-server", default=None)
    ap.add_argument("--llama-quantize", default=None)
    ap.add_argument("--llama-cpp-python", default=bls.LLAMA_CPP_PYTHON)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gen", type=int, default=64, help="tokens of the single-stream decode case")
    ap.add_argument("--prefill-len", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--triolm-kv-cache-dtype", choices=["float32", "float16"], default=None)
    ap.add_argument("--triolm-prefill-precision", choices=["float32", "bfloat16"], default=None)
    ap.add_argument("--no-check", action="store_true", help="skip the llama.cpp load and greedy check")
    ap.add_argument("--check-only", action="store_true", help="only the check, no benchmark")
    ap.add_argument("--check-len", type=int, default=600, help="prompt tokens of the check (> Gemma's window)")
    ap.add_argument("--check-gen", type=int, default=16)
    ap.add_argument("--check-prompts", type=int, default=2)
    ap.add_argument("--results", default=None)
    args = ap.parse_args(argv)
    args.streams = 1

    results_dir = Path(args.results) if args.results else (
        bls.cache_root() / "bench-results" / f"families-{time.strftime('%Y%m%d-%H%M%S')}")
    results_dir.mkdir(parents=True, exist_ok=True)
    bc.log(f"results: {results_dir}")
    t0 = time.perf_counter()
    server_bin, quantize = bls.find_tools(args)
    checks: list[dict] = []
    results: list[dict] = []
    report = {"machine": bc.machine_info(), "args": vars(args), "llama_server": str(server_bin),
              "checks": checks, "results": results}
    json_path = results_dir / "results.json"
    suite = [("single_decode", 1, 128, args.gen, "decode_tps"), ("prefill", 1, args.prefill_len, 1, "prefill_tps")]
    for name in args.families:
        if not args.no_check:
            checks.append(check_family(name, server_bin, args, results_dir))
            json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
        if args.check_only:
            continue
        for quant in args.quants:
            label, path = bench_path(name, quant, quantize, args.threads)
            try:
                results.append(bls.bench_file(label, path, server_bin, args, results_dir, suite))
            except RuntimeError as exc:  # one family's failure does not end the others' run
                bc.log(f"{label}: FAILED: {exc}")
                results.append({"label": label, "file": str(path), "error": str(exc)})
            json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    report["wall_s"] = time.perf_counter() - t0
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    if checks:
        print(check_table(checks) + "\n")
    done = [r for r in results if "error" not in r]
    if done:
        print(bls.table(done))
    for r in results:
        if "error" in r:
            print(f"\n{r['label']}: failed: {r['error']}")
    print(f"\nJSON: {json_path} ({report['wall_s'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
