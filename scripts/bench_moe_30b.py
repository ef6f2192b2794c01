#!/usr/bin/env python
"""A Qwen3-30B-A3B-shape Q4_K file: triolm against llama-server (decode and prefill).

    python scripts/bench_moe_30b.py                 # the full shape: a ~17 GB file, 2 rounds
    python scripts/bench_moe_30b.py --layers 2      # a shallow file for a quick check

The shape is Qwen3-30B-A3B's (hidden 2048, 48 layers, 32 / 4 heads of 128, 128 experts of
width 768, 8 per token, q/k norms, vocabulary 151936). Its float16 form would be 61 GB,
more than this machine's disk holds beside the rest, so the file is written straight in
llama.cpp's Q4_K blocks: random but valid blocks (random codes and 6-bit scales, small
float16 block scales chosen so a row's values have about 1/sqrt(width) spread), the
routers and norms float32. Random weights give random routing, so every expert is read
within a few tokens and the whole file must sit in the page cache: the machine needs
~18 GB of free memory.

Both servers serve the same file with the cases and method of `bench_llama_server.py`
(same client, token-id prompts, the other server frozen, order alternating by round,
medians): single-stream decode, a 4-stream aggregate and a prefill.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402
import bench_llama_server as bls  # noqa: E402

SHAPE = dict(architecture="qwen3_moe", hidden_size=2048, intermediate_size=6144, num_hidden_layers=48,
             num_attention_heads=32, num_key_value_heads=4, head_dim=128, num_experts=128,
             num_experts_per_tok=8, moe_intermediate_size=768, qk_norm=True, rope_theta=1e6,
             rms_norm_eps=1e-6, vocab_size=151936)
Q4_K_BLOCK = (256, 144)  # values, bytes: d, dmin (float16), 12 bytes of 6-bit scales/mins, 128 of codes


def random_q4_k(rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """Random valid Q4_K blocks for a [rows, cols] matrix, as uint8 [rows, cols/256*144].

    A value is d·sc·q − dmin·m with q in 0..15 and sc, m in 0..63; dmin = 7.5·d centres
    the values, and d makes their spread about 1/sqrt(cols)."""
    values, nbytes = Q4_K_BLOCK
    blocks = rng.integers(0, 256, size=(rows, cols // values, nbytes), dtype=np.uint8)
    d = np.float16(1.0 / (cols ** 0.5 * 250.0))
    scale = np.array([d, np.float16(7.5 * float(d))], dtype=np.float16).view(np.uint8)
    blocks[:, :, :4] = scale
    return blocks.reshape(rows, -1)


def moe_30b_file(layers: int) -> Path:
    """The shape as a random-block Q4_K GGUF, written one tensor at a time."""
    from gguf import GGMLQuantizationType, GGUFWriter

    from triolm.formats import gguf_layout as layout
    from triolm.formats import moe_gguf, moe_layout
    from triolm.formats.gguf_writer import _write_metadata
    from triolm.model.config import ModelConfig

    out = bc.bench_model_dir() / f"qwen3moe-30b-a3b-shape-{layers}layers-seed0" / "model-Q4_K.gguf"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tok, meta = bls.padded_tokenizer(SHAPE["vocab_size"])
    config = ModelConfig(bos_token_id=tok.bos, eos_token_ids=tok.eos, max_position_embeddings=8192,
                         **{**SHAPE, "num_hidden_layers": layers})
    arch = layout.GGUF_ARCH[config.architecture]
    source = moe_gguf.expert_source(config)
    stacked = moe_layout.stacked_gguf_tensors(config)
    tensors: list[tuple[str, tuple[int, ...]]] = []  # GGUF name, numpy shape
    for hf, shape in layout.expected_shapes(config).items():
        if hf in source:
            if source[hf] in stacked:
                tensors.append((source[hf], stacked.pop(source[hf])[1]))
            continue
        tensors.append((layout.gguf_name(hf, config.architecture), shape))

    def is_f32(name: str, shape: tuple[int, ...]) -> bool:
        return len(shape) == 1 or name.endswith(moe_layout.GGUF_ROUTER)

    total = sum(int(np.prod(s)) * (4 if is_f32(n, s) else 144 / 256) for n, s in tensors)
    bc.log(f"setup: writing {out} ({len(tensors)} tensors, {total / 1e9:.1f} GB, one at a time)")
    tmp = out.with_name(out.name + ".partial")
    w = GGUFWriter(tmp, arch)
    _write_metadata(w, config, arch, "Q4_K", "triolm-bench-qwen3moe-30b-a3b-shape", meta)
    for name, shape in tensors:
        if is_f32(name, shape):
            w.add_tensor_info(name, tuple(shape), np.dtype(np.float32), 4 * int(np.prod(shape)),
                              raw_dtype=GGMLQuantizationType.F32)
        else:
            byte_shape = (*shape[:-1], shape[-1] // 256 * 144)
            w.add_tensor_info(name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)),
                              raw_dtype=GGMLQuantizationType.Q4_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(0)
    written, t0 = 0.0, time.perf_counter()
    for i, (name, shape) in enumerate(tensors):
        if len(shape) == 1:
            data = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        elif is_f32(name, shape):
            data = (rng.standard_normal(shape) / shape[-1] ** 0.5).astype(np.float32)
        else:
            cols = shape[-1]
            rows = int(np.prod(shape[:-1]))
            data = random_q4_k(rows, cols, rng)
        w.write_tensor_data(data)
        written += data.nbytes
        if i % 25 == 0 or i == len(tensors) - 1:
            bc.log(f"setup:   tensor {i + 1}/{len(tensors)}, {written / 1e9:.1f}/{total / 1e9:.1f} GB, "
                   f"{time.perf_counter() - t0:.0f} s")
    w.close()
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=SHAPE["num_hidden_layers"])
    ap.add_argument("--llama-server", default=None)
    ap.add_argument("--llama-quantize", default=None)
    ap.add_argument("--llama-cpp-python", default=bls.LLAMA_CPP_PYTHON)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--prefill-len", type=int, default=256)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--results", default=None)
    args = ap.parse_args(argv)
    args.contexts = args.big_contexts = []
    args.ctx_gen = 0
    args.triolm_kv_cache_dtype = args.triolm_prefill_precision = None
    results_dir = Path(args.results) if args.results else (
        bls.cache_root() / "bench-results" / f"moe-30b-{time.strftime('%Y%m%d-%H%M%S')}")
    results_dir.mkdir(parents=True, exist_ok=True)
    bc.log(f"results: {results_dir}")
    server_bin, _ = bls.find_tools(args)
    path = moe_30b_file(args.layers)
    label = f"qwen3moe-30b-a3b-shape-q4_k{'' if args.layers == SHAPE['num_hidden_layers'] else f'-{args.layers}l'}"
    result = bls.bench_file(label, path, server_bin, args, results_dir)
    report = {"machine": bc.machine_info(), "args": vars(args), "llama_server": str(server_bin),
              "results": [result]}
    (results_dir / "results.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(bls.table([result]))
    print(f"\nJSON: {results_dir / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
