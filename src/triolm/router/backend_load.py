"""A backend's own load, read from its Prometheus /metrics: requests running + waiting.

Names by engine: triolm (`triolm:num_requests_running/waiting`), vLLM
(`vllm:num_requests_running/waiting`, one series per model/engine: summed), SGLang
(`sglang:num_running_reqs`, `sglang:num_queue_reqs`).
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

RUNNING = frozenset({"triolm:num_requests_running", "vllm:num_requests_running", "sglang:num_running_reqs"})
WAITING = frozenset({"triolm:num_requests_waiting", "vllm:num_requests_waiting", "sglang:num_queue_reqs"})


def running_plus_waiting(metrics_text: str) -> int | None:
    """The sum over every known running/waiting gauge; None when the text has none."""
    total, seen = 0.0, False
    for family in text_string_to_metric_families(metrics_text):
        if family.name in RUNNING or family.name in WAITING:
            for sample in family.samples:
                if sample.name == family.name:
                    total += sample.value
                    seen = True
    return int(total) if seen else None
