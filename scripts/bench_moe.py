#!/usr/bin/env python
"""Mixture-of-experts models: triolm against llama-server on the same Q4_K_M files.

    python scripts/bench_moe.py                       # both shapes, 2 rounds
    python scripts/bench_moe.py --shapes qwen3moe-1b --rounds 1 --gen 32
    python scripts/bench_moe.py --python-cost 8 64 512    # Python time per decode step

Each shape is written as a random-weight F16 GGUF by triolm's writer conventions (one
tensor at a time, experts stacked as llama.cpp's converter stacks them), quantized to
Q4_K_M by llama.cpp's own `llama-quantize`, and served by both servers with the cases
and method of `bench_llama_server.py` (same client, token-id prompts, the server not
measured frozen with SIGSTOP, order alternating by round, medians reported).

Shapes (the spm-llama2 test vocabulary, 32000 tokens, so the experts dominate):
- qwen3moe-1b: Qwen3-30B-A3B's layout scaled down: hidden 1024, 12 layers, 16 heads /
  4 KV heads of 64, 32 experts of width 512, 4 per token, q/k norms;
- mixtral-1b: Mixtral's layout scaled down: hidden 1024, 8 layers, 16 / 4 heads of 64,
  8 experts of width 2816, 2 per token.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402
import bench_llama_server as bls  # noqa: E402

SHAPES = {
    "qwen3moe-1b": dict(architecture="qwen3_moe", hidden_size=1024, intermediate_size=3072,
                        num_hidden_layers=12, num_attention_heads=16, num_key_value_heads=4, head_dim=64,
                        num_experts=32, num_experts_per_tok=4, moe_intermediate_size=512, qk_norm=True,
                        rope_theta=1e6, rms_norm_eps=1e-6),
    "mixtral-1b": dict(architecture="mixtral", hidden_size=1024, intermediate_size=2816,
                       num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=4, head_dim=64,
                       num_experts=8, num_experts_per_tok=2, moe_intermediate_size=2816,
                       rope_theta=1e6, rms_norm_eps=1e-5),
}


def moe_f16(label: str) -> Path:
    """The shape as a random-weight F16 GGUF, written one tensor at a time."""
    import numpy as np
    import torch
    from gguf import GGMLQuantizationType, GGUFWriter

    from support.model_factory import _tokenizer_info
    from triolm.formats import gguf_layout as layout
    from triolm.formats import moe_gguf, moe_layout
    from triolm.formats.gguf_writer import _write_metadata
    from triolm.model.config import ModelConfig

    out = bc.bench_model_dir() / f"{label}-seed0" / "model-F16.gguf"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer_info("spm-llama2", None)
    config = ModelConfig(vocab_size=tok.vocab_size, bos_token_id=tok.bos, eos_token_ids=tok.eos,
                         max_position_embeddings=8192, **SHAPES[label])
    arch = layout.GGUF_ARCH[config.architecture]
    source = moe_gguf.expert_source(config)
    stacked = moe_layout.stacked_gguf_tensors(config)
    tensors: list[tuple[str, tuple[int, ...], str]] = []  # GGUF name, numpy shape, HF name for the init
    for hf, shape in layout.expected_shapes(config).items():
        if hf in source:
            if source[hf] in stacked:
                tensors.append((source[hf], stacked.pop(source[hf])[1], hf))
            continue
        tensors.append((layout.gguf_name(hf, config.architecture), shape, hf))
    bc.log(f"setup: writing {out} ({len(tensors)} tensors, one at a time)")
    tmp = out.with_name(out.name + ".partial")
    w = GGUFWriter(tmp, arch)
    _write_metadata(w, config, arch, "F16", f"triolm-bench-{label}", tok.gguf_metadata)
    for name, shape, _ in tensors:
        vector = len(shape) == 1 or name.endswith(moe_layout.GGUF_ROUTER)
        dtype = np.float32 if vector else np.float16
        w.add_tensor_info(name, tuple(shape), np.dtype(dtype), int(np.prod(shape)) * np.dtype(dtype).itemsize,
                          raw_dtype=GGMLQuantizationType.F32 if vector else GGMLQuantizationType.F16)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    gen = torch.Generator().manual_seed(0)
    for i, (name, shape, hf) in enumerate(tensors):
        if len(shape) == 1:
            data = (1.0 + 0.1 * torch.randn(shape, generator=gen)).numpy()
        else:
            std = 2.0 / shape[-1] ** 0.5 if hf == "model.embed_tokens.weight" else 1.0 / shape[-1] ** 0.5
            t = std * torch.randn(shape, generator=gen)
            data = (t if name.endswith(moe_layout.GGUF_ROUTER) else t.half()).numpy()
        w.write_tensor_data(data)
        if i % 20 == 0:
            bc.log(f"setup:   tensor {i + 1}/{len(tensors)}")
    w.close()
    os.replace(tmp, out)
    return out


def python_cost(experts_list: list[int], steps: int) -> list[dict]:
    """Python time per decode step (the step's wall time minus the time inside the one
    native decode call) of tiny qwen3_moe models that differ only in their expert count:
    4 sequences, hidden 64, 2 layers, 2 experts per token."""
    from triolm.engine.llm_engine import EngineConfig, LLMEngine
    from triolm.engine.sampling_params import SamplingParams
    from triolm.kernels import native
    from triolm.model.build import build_model
    from triolm.model.config import ModelConfig
    from triolm.model.random_init import random_weights

    lib = native.lib()
    step_fn = lib.tl_decode_step
    inside = [0.0]

    def timed(*args):
        t0 = time.perf_counter()
        step_fn(*args)
        inside[0] += time.perf_counter() - t0

    lib.tl_decode_step = timed
    out = []
    try:
        for experts in experts_list:
            config = ModelConfig(architecture="qwen3_moe", vocab_size=512, hidden_size=64, intermediate_size=128,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                 max_position_embeddings=1024, qk_norm=True, num_experts=experts,
                                 num_experts_per_tok=2, moe_intermediate_size=32)
            model = build_model(config, random_weights(config, seed=0))
            engine = LLMEngine(model, (), EngineConfig(max_num_seqs=4, max_model_len=512))
            params = SamplingParams(temperature=0, max_tokens=steps + 2, ignore_eos=True)
            for i in range(4):
                engine.add_request(f"r{i}", list(range(10 + i, 42 + i)), params)
            engine.step()  # prefill
            engine.step()  # first decode step (plan built)
            inside[0] = 0.0
            t0 = time.perf_counter()
            for _ in range(steps):
                engine.step()
            wall = time.perf_counter() - t0
            row = {"experts": experts, "step_ms": 1000 * wall / steps,
                   "native_ms": 1000 * inside[0] / steps, "python_ms": 1000 * (wall - inside[0]) / steps}
            bc.log(f"python cost: {experts} experts: step {row['step_ms']:.3f} ms, native "
                   f"{row['native_ms']:.3f} ms, Python {row['python_ms']:.3f} ms")
            out.append(row)
    finally:
        lib.tl_decode_step = step_fn
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", choices=tuple(SHAPES), default=list(SHAPES))
    ap.add_argument("--llama-server", default=None)
    ap.add_argument("--llama-quantize", default=None)
    ap.add_argument("--llama-cpp-python", default=bls.LLAMA_CPP_PYTHON)
    ap.add_argument("--quant", default="Q4_K_M")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--ctx-gen", type=int, default=32)
    ap.add_argument("--contexts", nargs="+", type=int, default=[1024])
    ap.add_argument("--prefill-len", type=int, default=512)
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--triolm-kv-cache-dtype", choices=["float32", "float16"], default=None)
    ap.add_argument("--results", default=None)
    ap.add_argument("--python-cost", nargs="*", type=int, default=None, metavar="EXPERTS",
                    help="only measure the Python time per decode step for these expert counts "
                         "(default 8 64 512) and exit")
    ap.add_argument("--python-cost-steps", type=int, default=200)
    args = ap.parse_args(argv)
    if args.python_cost is not None:
        rows = python_cost(args.python_cost or [8, 64, 512], args.python_cost_steps)
        print(bc.markdown_table(["experts", "step ms", "native call ms", "Python ms"],
                                [[r["experts"], f"{r['step_ms']:.3f}", f"{r['native_ms']:.3f}",
                                  f"{r['python_ms']:.3f}"] for r in rows]))
        return 0
    args.big_contexts = args.contexts

    results_dir = Path(args.results) if args.results else (
        bls.cache_root() / "bench-results" / f"moe-{time.strftime('%Y%m%d-%H%M%S')}")
    results_dir.mkdir(parents=True, exist_ok=True)
    bc.log(f"results: {results_dir}")
    server_bin, quantize = bls.find_tools(args)
    results = []
    report = {"machine": bc.machine_info(), "args": vars(args), "llama_server": str(server_bin),
              "results": results}
    for label in args.shapes:
        path = bls.quantized(quantize, moe_f16(label), args.quant, args.threads)
        results.append(bls.bench_file(f"{label}-{args.quant.lower()}", path, server_bin, args, results_dir))
        (results_dir / "results.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(bls.table(results))
    print(f"\nJSON: {results_dir / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
