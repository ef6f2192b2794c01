"""Stored responses, for `previous_response_id` and `GET /v1/responses/{id}`: in memory,
bounded in count, in bytes and in age, so storing every response (OpenAI's default)
never grows the server without limit. The oldest entries go first."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

import attrs


@attrs.frozen
class StoredResponse:
    response: dict  # the response object, as GET returns it
    conversation: list[dict]  # chat messages up to and including this response's output
    size: int  # bytes counted against the store's budget
    expires_at: float


class ResponseStore:
    """Insertion-ordered entries; each `put` evicts past the bounds, each `get` drops an
    expired entry. The clock is injectable for tests of expiry."""

    def __init__(self, max_entries: int, max_bytes: int, ttl: float,
                 clock: Callable[[], float] = time.monotonic):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl = ttl
        self.clock = clock
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    def put(self, response_id: str, response: dict, conversation: list[dict], size: int) -> bool:
        """Store an entry; False (nothing stored) when it alone exceeds the byte budget."""
        if self.max_entries < 1 or size > self.max_bytes:
            return False
        self.delete(response_id)
        self._entries[response_id] = StoredResponse(response, conversation, size, self.clock() + self.ttl)
        self._bytes += size
        self._evict()
        return True

    def get(self, response_id: str) -> StoredResponse | None:
        self._evict()
        return self._entries.get(response_id)

    def delete(self, response_id: str) -> bool:
        entry = self._entries.pop(response_id, None)
        if entry is None:
            return False
        self._bytes -= entry.size
        return True

    def _evict(self) -> None:
        now = self.clock()
        while self._entries:
            oldest_id, oldest = next(iter(self._entries.items()))
            # entries expire in insertion order (one ttl for all): the oldest expires first
            if len(self._entries) > self.max_entries or self._bytes > self.max_bytes or oldest.expires_at <= now:
                self.delete(oldest_id)
            else:
                break
