"""The fleet: each backend's health, load and drain state, and which one a request goes to.

Choosing (`BackendPool.choose`), in order:
1. a session's pinned backend, while it is admitted (healthy, not draining, not full);
2. the backend that served the longest prefix of the prompt (at least
   `affinity_min_tokens` tokens), unless its load exceeds the least loaded backend's by
   more than `affinity_slack` requests — a cache hit saves the prefix's prefill, a long
   queue costs more than that;
3. the least loaded backend.
Load is the backend's own running + waiting (from its /metrics, which counts every
client's requests) corrected by what this router sent or finished since that reading.

Everything here is synchronous and lives on the event loop: no locks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import attrs

from triolm.router.affinity import PrefixAffinity, block_keys


@attrs.define(eq=False)
class Backend:
    url: str
    healthy: bool = False  # admitted after its first successful health check
    draining: bool = False
    failures: int = 0  # failed health checks (or refused connections) in a row
    model_id: str | None = None  # the name the backend serves the model under
    reported_load: int = 0  # running + waiting at the last /metrics reading
    in_flight_at_report: int = 0  # this router's in-flight requests at that reading
    in_flight: int = 0
    served: int = 0  # requests sent here
    last_error: str | None = None

    @property
    def load(self) -> int:
        """Requests in the backend now: others' (from its metrics) plus this router's."""
        others = max(0, self.reported_load - self.in_flight_at_report)
        return others + self.in_flight

    def summary(self) -> dict:
        return {"url": self.url, "healthy": self.healthy, "draining": self.draining,
                "failures": self.failures, "model": self.model_id, "load": self.load,
                "in_flight": self.in_flight, "served": self.served, "last_error": self.last_error}


class NoBackend(Exception):
    """No backend can take the request: `saturated` (429) or none admitted (503)."""

    def __init__(self, message: str, saturated: bool):
        super().__init__(message)
        self.saturated = saturated


@attrs.define
class RoutingStats:
    requests: int = 0
    affinity_candidates: int = 0  # requests whose prefix a backend had served
    affinity_hits: int = 0  # ... and were sent there
    pinned: int = 0
    moved_sessions: int = 0
    retries: int = 0

    def to_json(self) -> dict:
        rate = self.affinity_hits / self.affinity_candidates if self.affinity_candidates else None
        return {**attrs.asdict(self), "affinity_hit_rate": rate}


@attrs.frozen
class Choice:
    backend: Backend
    reason: str  # "pinned" | "affinity" | "least_loaded"
    prefix_keys: tuple[int, ...]


class BackendPool:
    def __init__(self, urls: Sequence[str], *, max_inflight: int, failures_to_eject: int,
                 affinity_min_tokens: int, affinity_slack: int, affinity_entries: int):
        self.max_inflight = max_inflight
        self.failures_to_eject = failures_to_eject
        self.affinity_min_tokens = affinity_min_tokens
        self.affinity_slack = affinity_slack
        self.affinity = PrefixAffinity(affinity_entries)
        self.stats = RoutingStats()
        self.backends: dict[str, Backend] = {}
        self.set_urls(urls)

    # -- membership -------------------------------------------------------------------
    def set_urls(self, urls: Sequence[str]) -> tuple[list[str], list[str]]:
        """Make the fleet exactly `urls` (a backends file re-read); returns (added, removed).
        A removed backend's requests in flight finish; it gets no new ones."""
        wanted = [normalize_url(u) for u in urls]
        added = [u for u in wanted if u not in self.backends]
        removed = [u for u in self.backends if u not in wanted]
        for url in removed:
            del self.backends[url]
            self.affinity.forget_backend(url)
        for url in added:
            self.backends[url] = Backend(url)
        return added, removed

    def get(self, url: str) -> Backend | None:
        return self.backends.get(normalize_url(url))

    def is_member(self, backend: Backend) -> bool:
        return self.backends.get(backend.url) is backend

    def admitted(self, backend: Backend) -> bool:
        return self.is_member(backend) and backend.healthy and not backend.draining

    # -- health -----------------------------------------------------------------------
    def check_passed(self, backend: Backend, model_id: str | None, load: int | None) -> None:
        backend.failures = 0
        backend.healthy = True
        backend.last_error = None
        if model_id is not None:
            backend.model_id = model_id
        if load is not None:
            backend.reported_load = load
            backend.in_flight_at_report = backend.in_flight

    def check_failed(self, backend: Backend, error: str, eject_now: bool = False) -> None:
        """A failed health check, or a request that could not reach the backend
        (`eject_now`: the connection was refused, nothing is listening)."""
        backend.failures = max(backend.failures + 1, self.failures_to_eject if eject_now else 0)
        backend.last_error = error
        if backend.failures >= self.failures_to_eject:
            backend.healthy = False

    # -- routing ----------------------------------------------------------------------
    def choose(self, prompt_ids: Sequence[int], pinned: Backend | None = None,
               exclude: Backend | None = None) -> Choice:
        """The backend for a request, or NoBackend. Counts the decision in `stats`."""
        keys = tuple(block_keys(prompt_ids))
        open_ = [b for b in self.backends.values()
                 if b.healthy and not b.draining and b is not exclude]
        if not open_:
            raise NoBackend("no backend is available (all are down, draining or removed)", saturated=False)
        room = [b for b in open_ if b.in_flight < self.max_inflight]
        if not room:
            raise NoBackend(f"every backend has {self.max_inflight} requests in flight: retry later",
                            saturated=True)
        self.stats.requests += 1
        if pinned is not None and pinned in room:
            self.stats.pinned += 1
            return Choice(pinned, "pinned", keys)
        least = min(room, key=lambda b: (b.load, b.served))
        owner_url, matched = self.affinity.lookup(keys)
        if owner_url is not None and matched >= self.affinity_min_tokens:
            self.stats.affinity_candidates += 1
            owner = self.backends.get(owner_url)
            if owner in room and owner.load <= least.load + self.affinity_slack:
                self.stats.affinity_hits += 1
                return Choice(owner, "affinity", keys)
        return Choice(least, "least_loaded", keys)

    def start(self, choice: Choice) -> Backend:
        """Count a request in flight on the chosen backend until `finish`."""
        backend = choice.backend
        backend.in_flight += 1
        backend.served += 1
        return backend

    def finish(self, choice: Choice, succeeded: bool) -> None:
        """The request is over; if it succeeded, the backend now caches its prompt."""
        backend = choice.backend
        backend.in_flight -= 1
        if succeeded and self.is_member(backend):
            self.affinity.remember(choice.prefix_keys, backend.url)

    @contextmanager
    def lease(self, choice: Choice) -> Iterator[Backend]:
        succeeded = False
        try:
            yield self.start(choice)
            succeeded = True
        finally:
            self.finish(choice, succeeded)

    def summary(self) -> dict:
        return {"backends": [b.summary() for b in self.backends.values()],
                "routing": self.stats.to_json(), "affinity_entries": len(self.affinity)}


def normalize_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if url.endswith("/v1"):
        url = url[:-3]
    return url


def read_backends_file(path: str) -> list[str]:
    """One base URL a line; blank lines and `#` comments are skipped."""
    with open(path, encoding="utf-8") as f:
        lines = [line.split("#", 1)[0].strip() for line in f]
    return [line for line in lines if line]
