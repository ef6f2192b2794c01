"""The router's own Prometheus metrics (its registry is per app)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from triolm.router.backends import BackendPool


class RouterMetrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("triolm_router:requests", "Requests sent to a backend, by how it was chosen",
                                ["backend", "reason"], registry=r)
        self.backend_failures = Counter("triolm_router:backend_failures",
                                        "Requests a backend failed (unreachable, or broke mid-stream)",
                                        ["backend", "kind"], registry=r)
        self.retries = Counter("triolm_router:retries", "Requests retried on another backend", registry=r)
        self.rejected = Counter("triolm_router:rejected", "Requests refused: every backend saturated or down",
                                ["reason"], registry=r)
        self.healthy = Gauge("triolm_router:backend_healthy", "1 while the backend is admitted",
                             ["backend"], registry=r)
        self.in_flight = Gauge("triolm_router:backend_in_flight", "This router's requests in flight",
                               ["backend"], registry=r)
        self.load = Gauge("triolm_router:backend_load", "Running + waiting, as the router estimates it",
                          ["backend"], registry=r)
        self.affinity_hit_rate = Gauge("triolm_router:affinity_hit_rate",
                                       "Requests sent to the backend that served their prefix, of those "
                                       "whose prefix some backend served", registry=r)
        self.sessions = Gauge("triolm_router:sessions", "Live sessions", registry=r)

    def refresh(self, pool: BackendPool, sessions: int) -> None:
        """Gauges read the pool at scrape time."""
        for b in pool.backends.values():
            self.healthy.labels(b.url).set(1 if b.healthy and not b.draining else 0)
            self.in_flight.labels(b.url).set(b.in_flight)
            self.load.labels(b.url).set(b.load)
        rate = pool.stats.to_json()["affinity_hit_rate"]
        self.affinity_hit_rate.set(rate if rate is not None else 0.0)
        self.sessions.set(sessions)
