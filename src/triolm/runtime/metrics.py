"""Prometheus metrics with vLLM-style names (so dashboards carry over), one registry per app."""

from __future__ import annotations

import itertools

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
_LAG_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self, model_name_getter):
        self.registry = CollectorRegistry()
        r = self.registry
        self.running = Gauge("triolm:num_requests_running", "Sequences in the running batch", registry=r)
        self.waiting = Gauge("triolm:num_requests_waiting", "Sequences waiting for admission", registry=r)
        self.kv_usage = Gauge("triolm:kv_cache_usage_perc", "Fraction of KV-cache blocks in use (0..1)", registry=r)
        self.prompt_tokens = Counter("triolm:prompt_tokens", "Prompt tokens processed", registry=r)
        self.generation_tokens = Counter("triolm:generation_tokens", "Tokens generated", registry=r)
        self.request_success = Counter("triolm:request_success", "Finished requests",
                                       ["finished_reason"], registry=r)
        self.ttft = Histogram("triolm:time_to_first_token_seconds", "Time to first token",
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("triolm:inter_token_latency_seconds", "Time between tokens",
                             buckets=_LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("triolm:e2e_request_latency_seconds", "Request latency",
                             buckets=_LATENCY_BUCKETS, registry=r)
        self.loop_lag = Histogram("triolm:event_loop_lag_seconds",
                                  "How late a 10 ms periodic task on the event loop wakes up",
                                  buckets=_LAG_BUCKETS, registry=r)
        self.max_loop_lag = 0.0

    def observe_generation(self, result, start_time: float, end_time: float) -> None:
        """Record one finished generation (a GenerationResult)."""
        self.prompt_tokens.inc(result.num_prompt_tokens)
        self.generation_tokens.inc(len(result.tokens))
        self.request_success.labels(finished_reason=result.finish.kind if result.finish else "abort").inc()
        if result.first_token_time is not None:
            self.ttft.observe(result.first_token_time - start_time)
        times = result.token_times
        for a, b in itertools.pairwise(times):
            self.itl.observe(b - a)
        self.e2e.observe(end_time - start_time)
