"""Prefix affinity: which backend last served a prompt starting with these tokens.

Prompts are cut into blocks of `BLOCK` tokens and each block is keyed by a hash chained
over all blocks before it, as engines key their prefix caches; the longest chain of a
new prompt found in the table names the backend whose cache most likely still holds it.
The table is an LRU of bounded size (a few hundred bytes an entry).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

BLOCK = 16


def block_keys(token_ids: Sequence[int]) -> list[int]:
    """One key per whole block: the hash of the prompt up to the end of that block."""
    keys, key = [], 0
    for start in range(0, len(token_ids) - BLOCK + 1, BLOCK):
        key = hash((key, tuple(token_ids[start:start + BLOCK])))
        keys.append(key)
    return keys


class PrefixAffinity:
    def __init__(self, max_entries: int):
        self.max_entries = max_entries
        self._owner: OrderedDict[int, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._owner)

    def lookup(self, keys: Sequence[int]) -> tuple[str | None, int]:
        """(backend URL, matched tokens) of the longest remembered prefix."""
        for n in range(len(keys), 0, -1):
            owner = self._owner.get(keys[n - 1])
            if owner is not None:
                self._owner.move_to_end(keys[n - 1])
                return owner, n * BLOCK
        return None, 0

    def remember(self, keys: Sequence[int], backend_url: str) -> None:
        for key in keys:
            self._owner[key] = backend_url
            self._owner.move_to_end(key)
        while len(self._owner) > self.max_entries:
            self._owner.popitem(last=False)

    def forget_backend(self, backend_url: str) -> None:
        """A removed backend's cache is gone with it."""
        for key in [k for k, url in self._owner.items() if url == backend_url]:
            del self._owner[key]
