"""What rendering a chat template in a killable worker process costs per render.

Renders a ~0.5 KB chat with a model's chat template (default: the embedded ChatML one)
inline, in a thread (`trio.to_thread`), and in a template worker process
(`TemplateWorkers.render`, what the server does), and prints the median per render.

    PYTHONPATH=src python scripts/bench_template_render.py [--gguf MODEL.gguf] [--rounds 300]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import trio

from triolm.prompting.template import DEFAULT_CHAT_TEMPLATE, ChatTemplate
from triolm.prompting.template_workers import open_template_workers

MESSAGES = [{"role": "system", "content": "You are a concise assistant. " * 4},
            {"role": "user", "content": ("Summarise in one line why the sky is blue, mentioning Rayleigh "
                                         "scattering, wavelength and the angle of the sun. ") * 3}]


def template_of(gguf: str | None) -> ChatTemplate:
    if gguf is None:
        return ChatTemplate(DEFAULT_CHAT_TEMPLATE, "", "<|im_end|>")
    from triolm.loading.served_model import _load_gguf

    _, _, tokenizer, source = _load_gguf(Path(gguf))
    return ChatTemplate(source or DEFAULT_CHAT_TEMPLATE, tokenizer.bos_token or "", tokenizer.eos_token or "")


async def timed(rounds: int, render) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        await render()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e3


async def bench(template: ChatTemplate, rounds: int) -> dict:
    limiter = trio.CapacityLimiter(1)

    async def inline():
        template.render(MESSAGES)

    async def thread():
        await trio.to_thread.run_sync(template.render, MESSAGES, limiter=limiter)

    async with open_template_workers(1 << 30) as workers:
        await workers.warm_up(template, limiter)

        async def process():
            await workers.render(template, MESSAGES, None, True, {}, limiter)

        await timed(20, process)
        return {"inline_ms": round(await timed(rounds, inline), 3),
                "thread_ms": round(await timed(rounds, thread), 3),
                "worker_process_ms": round(await timed(rounds, process), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", default=None)
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    print(json.dumps(trio.run(bench, template_of(args.gguf), args.rounds), indent=2))


if __name__ == "__main__":
    main()
