"""Record llama.cpp's next-token log-probabilities on a tiny test model's F32 GGUF.

The files come from triolm's own GGUF writer, so this is the outside check that the
writer (and the reader, which the tests run on the same file) follow llama.cpp's
conventions: for gemma2/gemma3 the tensor names, norms stored as w + 1, the layer
pattern, the local RoPE base, linear rope scaling and soft-capping keys; for
mixtral/qwen3_moe the stacked expert tensors (`ffn_*_exps`), the router
(`ffn_gate_inp`), the `expert_count` / `expert_used_count` /
`expert_feed_forward_length` keys, mixtral as architecture `llama` with permuted Q/K.
Serve each file with llama-server (F32 KV cache, so nothing is rounded that triolm
keeps exact), then record:

    python scripts/make_test_model.py --arch gemma3 --gguf F32   # or any test run
    llama-server -m ~/.cache/triolm/test-models/gemma3-tiny-seed0-*/model-F32.gguf \\
        --port 18766 -t 1 -c 512 -np 1 -ctk f32 -ctv f32
    python scripts/record_tiny_reference.py --arch gemma3 --url http://127.0.0.1:18766

The prompt is 70 random token ids (seed 1); llama.cpp decodes 16 tokens greedily and
reports its 5 most likely tokens at each step. Gemma's go to
tests/data/gemma_tiny_llamacpp.json, MoE ones to tests/data/moe_tiny_llamacpp.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import httpx
import torch

# Test support (generated models, servers in threads) lives in tests/support.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.model_factory import make_test_model  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
OUT = {"gemma2": DATA / "gemma_tiny_llamacpp.json", "gemma3": DATA / "gemma_tiny_llamacpp.json",
       "mixtral": DATA / "moe_tiny_llamacpp.json", "qwen3_moe": DATA / "moe_tiny_llamacpp.json"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=tuple(OUT), required=True)
    ap.add_argument("--url", default="http://127.0.0.1:18766")
    args = ap.parse_args()
    config = make_test_model(arch=args.arch, gguf_types=("F32",)).config
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(3, config.vocab_size, (70,), generator=gen).tolist()
    with httpx.Client(base_url=args.url, timeout=600) as http:
        build = http.get("/props").json().get("build_info")
        body = http.post("/completion", json={
            "prompt": prompt, "n_predict": 16, "temperature": 0, "n_probs": 5,
            "cache_prompt": False, "return_tokens": True}).json()
    out = OUT[args.arch]
    data = json.loads(out.read_text()) if out.exists() else {}
    data[args.arch] = {
        "produced_by": (f"llama.cpp llama-server (build {build}) on the tiny {args.arch} test model's "
                        "F32 GGUF, -ctk f32 -ctv f32, POST /completion (token-id prompt, temperature 0, "
                        "n_predict 16, n_probs 5), via scripts/record_tiny_reference.py"),
        "prompt_ids": prompt,
        "tokens": body["tokens"],
        "top5": [[[q["id"], round(q["logprob"], 6)] for q in p["top_logprobs"]]
                 for p in body["completion_probabilities"]],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {args.arch} to {out}")


if __name__ == "__main__":
    main()
