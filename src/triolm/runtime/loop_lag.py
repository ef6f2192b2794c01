"""Measure event-loop responsiveness: how late a periodic task wakes up."""

from __future__ import annotations

import trio

from triolm.runtime.metrics import Metrics


async def monitor_loop_lag(metrics: Metrics, period: float = 0.01) -> None:
    while True:
        start = trio.current_time()
        await trio.sleep(period)
        lag = max(0.0, trio.current_time() - start - period)
        metrics.loop_lag.observe(lag)
        metrics.max_loop_lag = max(metrics.max_loop_lag, lag)
