"""Record llama.cpp's tokenization and greedy tokens on the real gemma-3-270m Q4_K_M file.

The output (tests/data/gemma3_270m_llamacpp.json) is what tests/e2e/test_gemma_real_file.py
checks triolm against, so CI needs neither llama.cpp nor a recording run. Start
llama-server on the file first, e.g.

    llama-server -m gemma-3-270m-q4_k_m.gguf --port 18765 -t 1 -c 4096
    python scripts/record_gemma_reference.py --url http://127.0.0.1:18765

Greedy decoding runs one prompt at a time from an empty cache. For every generated
token the gap between llama.cpp's two most likely tokens is recorded too: llama.cpp
multiplies quantized weights with activations it quantizes to 8 bits, so where two
tokens are nearly tied its choice is not the exact dequantized model's; the test
skips near ties. `top2` holds the two best (id, logprob) pairs of each step.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import httpx

TEXTS = [
    "Hello world",
    " leading space, and  two  spaces",
    "Line one\nLine two\n\n\tTabbed\r\nWindows",
    "<start_of_turn>user\nHi!<end_of_turn>\n<start_of_turn>model\n",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
    "Numbers: 3.14159, 1,000,000 and 2026-12-03.",
    "日本語のテキストと中文文本, 한국어, Ελληνικά, русский текст.",
    "Emoji 🙂🚀 and symbols ©®™ — “quotes” …",
    "unbelievable antidisestablishmentarianism supercalifragilistic",
    "   ",
    "<bos>literal specials <eos> and <unk> in text",
]

_STORY = (
    "The lighthouse keeper climbed the spiral stairs every evening at dusk. He wrote the "
    "weather in a leather book: the wind from the west, the height of the waves, the ships "
    "that passed and the birds that rested on the rail. In winter the storms came early and "
    "the lamp burned through the night. In summer children from the village visited, asking "
    "about the old days, when the light was a flame and not a bulb. "
)

PROMPTS = {
    "capital": "The capital of France is",
    "code": "def fibonacci(n):\n    ",
    "chat": "<start_of_turn>user\nWhat is the tallest mountain in the world?<end_of_turn>\n"
            "<start_of_turn>model\n",
    "story": "Once upon a time, in a small village by the sea,",
    # longer than the model's 512-token sliding window, so local layers drop the start
    "long": _STORY * 9 + "Years later, the keeper's daughter",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:18765")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).resolve().parents[1] / "tests" / "data" / "gemma3_270m_llamacpp.json")
    args = ap.parse_args()
    with httpx.Client(base_url=args.url, timeout=600) as http:
        props = http.get("/props").json()

        def tokenize(text: str) -> list[int]:
            r = http.post("/tokenize", json={"content": text, "add_special": True, "parse_special": True})
            return r.json()["tokens"]

        tokenizer = [{"text": t, "ids": tokenize(t)} for t in TEXTS]
        greedy = {}
        for name, text in PROMPTS.items():
            prompt = tokenize(text)
            r = http.post("/completion", json={
                "prompt": prompt, "n_predict": args.steps, "temperature": 0, "n_probs": 2,
                "cache_prompt": False, "return_tokens": True})
            body = r.json()
            top2 = [[[q["id"], round(q["logprob"], 5)] for q in p["top_logprobs"][:2]]
                    for p in body["completion_probabilities"]]
            greedy[name] = {"prompt_ids": prompt, "tokens": body["tokens"],
                            "top2_logprob_gap": [round(a[1] - b[1], 4) for a, b in top2],
                            "top2": top2}
    data = {
        "model": "gemma-3-270m-q4_k_m.gguf",
        "sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "produced_by": (f"llama.cpp llama-server (build {props.get('build_info')}), -t 1, "
                        "POST /tokenize (add_special, parse_special) and POST /completion "
                        f"(token-id prompt, temperature 0, n_predict {args.steps}, n_probs 2, "
                        "cache_prompt false), via scripts/record_gemma_reference.py"),
        "tokenizer": tokenizer,
        "greedy": greedy,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
