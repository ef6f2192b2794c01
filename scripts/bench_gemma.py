"""Decode tok/s of a Gemma GGUF file served by triolm, beside llama-server on the same file.

Both are driven the same way: a streamed /v1/completions request (token-id prompt,
greedy, `--gen` tokens, EOS ignored); decode speed is (tokens - 1) / (time from the
first streamed token to the last), prefill speed is prompt tokens / time to the first
token. Start llama-server yourself (e.g. `llama-server -m FILE --port 18765 -t 2`) and
pass --peer-url; triolm runs in-process on a real server (ServerThread).

    python scripts/bench_gemma.py --model /path/gemma-3-270m-q4_k_m.gguf --peer-url http://127.0.0.1:18765
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import httpx

# Test support (generated models, servers in threads) lives in tests/support.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.server_thread import ServerThread
from triolm.loading.served_model import load_served_model
from triolm.settings import ServerSettings

PROMPT_TEXT = "The history of the lighthouse begins"


def stream_once(base_url: str, model: str, prompt: list[int], gen: int) -> tuple[float, float]:
    """(prefill tok/s, decode tok/s) of one streamed greedy completion."""
    body = {"model": model, "prompt": prompt, "max_tokens": gen, "temperature": 0, "stream": True,
            "ignore_eos": True}
    times: list[float] = []
    start = time.perf_counter()
    with httpx.Client(timeout=600) as http, http.stream("POST", base_url + "/v1/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                if json.loads(line[6:])["choices"][0].get("text"):
                    times.append(time.perf_counter())
    first, last = times[0], times[-1]
    return len(prompt) / (first - start), (len(times) - 1) / (last - first)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--peer-url", default=None, help="a llama-server already serving the same file")
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    served = load_served_model(ServerSettings(model=args.model, max_model_len=2048, max_num_seqs=2))
    prompt = served.tokenizer.encode(PROMPT_TEXT)
    results = {}
    with ServerThread(ServerSettings(model=args.model, max_model_len=2048, max_num_seqs=2), served) as srv:
        stream_once(srv.base_url, served.name, prompt, 4)  # warm-up
        runs = [stream_once(srv.base_url, served.name, prompt, args.gen) for _ in range(args.repeat)]
        results["triolm"] = runs
    if args.peer_url:
        stream_once(args.peer_url, "x", prompt, 4)
        results["llama-server"] = [stream_once(args.peer_url, "x", prompt, args.gen) for _ in range(args.repeat)]
    print(f"prompt {len(prompt)} tokens, {args.gen} generated, median of {args.repeat}")
    for name, runs in results.items():
        print(f"{name:13s} prefill {statistics.median(r[0] for r in runs):7.1f} tok/s   "
              f"decode {statistics.median(r[1] for r in runs):6.1f} tok/s")


if __name__ == "__main__":
    main()
