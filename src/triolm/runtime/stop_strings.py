"""Stop strings on streamed text: cut at the earliest match, never emit the stop text.

Text that could still be the start of a stop string is held back until the next delta
proves otherwise, so a stop string split across tokens is never partly streamed.
"""

from __future__ import annotations


class StopStringMatcher:
    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.holdback = max((len(s) for s in self.stops), default=1) - 1
        self.pending = ""
        self.matched: str | None = None

    def feed(self, delta: str) -> str:
        """Text safe to emit now. After a match, `matched` is set and nothing more is emitted."""
        if self.matched is not None:
            return ""
        if not self.stops:
            return delta
        self.pending += delta
        earliest, which = None, None
        for stop in self.stops:
            idx = self.pending.find(stop)
            if idx != -1 and (earliest is None or idx < earliest):
                earliest, which = idx, stop
        if earliest is not None:
            self.matched = which
            out, self.pending = self.pending[:earliest], ""
            return out
        cut = max(0, len(self.pending) - self.holdback)
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out

    def flush(self) -> str:
        """At the end of generation: whatever was held back (no stop string completed)."""
        out, self.pending = self.pending, ""
        return out if self.matched is None else ""
