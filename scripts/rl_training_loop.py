"""An on-policy RL loop against a running triolm server, with the training step left out.

Each iteration: rollouts through a session (two chat turns each, recorded token for
token), the trainer reads just the new nodes (GET /{uuid}/nodes?since=<marker>), checks
every generated token came from the weights it expects, then — where a trainer would
run its optimizer — generation is paused, the KV cache released, the next checkpoint
loaded with POST /update_weights_from_disk, memory resumed and generation continued.

    python scripts/rl_training_loop.py --base-url http://127.0.0.1:8000 \\
        --checkpoint /ckpt/step-1 --checkpoint /ckpt/step-2 [--api-key KEY]

Prints one JSON summary; exits 1 if a token came from unexpected weights.
"""

from __future__ import annotations

import argparse
import json
import sys

import httpx

TASKS = ["Add 2 and 3.", "Name a colour.", "Count to four.", "Say hello."]


def rollout(http: httpx.Client, session: str, task: str, max_tokens: int) -> None:
    """Two turns of one episode; the session records them as one growing node."""
    messages = [{"role": "user", "content": task}]
    sampling = {"max_tokens": max_tokens, "temperature": 1.0, "seed": len(task), "logprobs": True}
    first = post(http, f"/{session}/v1/chat/completions", {"messages": messages, **sampling})
    messages += [first["choices"][0]["message"], {"role": "user", "content": "Are you sure?"}]
    post(http, f"/{session}/v1/chat/completions", {"messages": messages, **sampling})


def post(http: httpx.Client, path: str, body: dict) -> dict:
    r = http.post(path, json=body)
    if r.status_code != 200:
        raise SystemExit(f"POST {path}: {r.status_code} {r.text}")
    return r.json()


def new_nodes(http: httpx.Client, session: str, marker: int) -> tuple[list[dict], int]:
    data = http.get(f"/{session}/nodes", params={"since": marker}).json()
    return data["nodes"], data["marker"]


def training_batch(nodes: list[dict]) -> dict:
    """What a trainer would consume: ids, loss mask, behaviour logprobs, and per-token
    weight versions (for importance weights when a rollout spans a refresh)."""
    batch = {"tokens": [], "loss_mask": [], "logprobs": [], "versions": []}
    for node in nodes:
        versions = [None] * len(node["tokens"])
        for span in node["weight_versions"]:
            versions[span["start"]:span["end"]] = [span["weight_version"]] * (span["end"] - span["start"])
        batch["tokens"].append(node["tokens"])
        batch["loss_mask"].append([m != -100 for m in node["masked_tokens"]])
        batch["logprobs"].append(node["logprobs"])
        batch["versions"].append(versions)
    return batch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--checkpoint", action="append", default=[], help="weights to load after each step")
    parser.add_argument("--rollouts", type=int, default=len(TASKS))
    parser.add_argument("--max-tokens", type=int, default=12)
    args = parser.parse_args(argv)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    summary = {"steps": [], "on_policy": True}
    with httpx.Client(base_url=args.base_url, headers=headers, timeout=300) as http:
        version = http.get("/v1/models").json()["data"][0]["weight_version"]
        for step in range(len(args.checkpoint) + 1):
            session = post(http, "/sessions/create", {})["uuid"]
            for i in range(args.rollouts):
                rollout(http, session, TASKS[i % len(TASKS)], args.max_tokens)
            nodes, marker = new_nodes(http, session, 0)
            batch = training_batch(nodes)
            seen = sorted({v for versions in batch["versions"] for v in versions if v is not None})
            generated = sum(sum(mask) for mask in batch["loss_mask"])
            summary["steps"].append({"weight_version": version, "nodes": len(nodes),
                                     "generated_tokens": generated, "versions_seen": seen,
                                     "nothing_new": new_nodes(http, session, marker)[0] == []})
            summary["on_policy"] &= seen == [version]
            http.delete(f"/{session}")
            if step == len(args.checkpoint):
                break
            # -- the optimizer step would run here, with the server's memory given back --
            post(http, "/pause_generation", {"mode": "queue"})
            post(http, "/release_memory_occupation", {"tags": ["kv_cache"]})
            version = f"step-{step + 1}"
            post(http, "/update_weights_from_disk", {"model_path": args.checkpoint[step], "weight_version": version})
            post(http, "/resume_memory_occupation", {"tags": ["kv_cache"]})
            post(http, "/continue_generation", {})
    print(json.dumps(summary))
    return 0 if summary["on_policy"] else 1


if __name__ == "__main__":
    sys.exit(main())
