"""KV-cache blocks with hash-chained prefix caching.

A full block is identified by the hash of (previous block's hash, its token ids). A
block whose sequence finished keeps its hash and contents until it is reused for
something else, so a later prompt starting with the same tokens picks it up
(multi-turn conversations, n > 1 samples of one prompt).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

from triolm.engine.sequence import Sequence

if TYPE_CHECKING:  # window_blocks builds on this module's Block
    from triolm.engine.window_blocks import WindowBlocks


class Block:
    __slots__ = ("block_id", "ref_count", "hash", "token_ids")

    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_count = 0
        self.hash: int | None = None
        self.token_ids: tuple[int, ...] = ()


def chain_hash(token_ids: tuple[int, ...], prefix_hash: int | None) -> int:
    return hash((prefix_hash, token_ids))


def chain_start(seq: Sequence) -> int | None:
    """Where a sequence's hash chain starts: a salted one in a chain of its salt's own."""
    salt = seq.params.cache_salt
    return None if salt is None else hash(("cache_salt", salt))


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, window: WindowBlocks | None = None):
        self.block_size = block_size
        #: the sliding-window layers' own pool (models with local layers), kept in step
        self.window = window
        self.blocks = [Block(i) for i in range(num_blocks)]
        # Free blocks in LRU order: the least recently freed is reused first, so cached
        # prefixes survive as long as possible.
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.hash_to_block: dict[int, int] = {}

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self.free)

    def blocks_needed(self, seq: Sequence) -> int:
        return (len(seq) + self.block_size - 1) // self.block_size

    def _take_free(self, block_id: int | None = None) -> Block:
        if block_id is None:
            block_id, _ = self.free.popitem(last=False)
        else:
            del self.free[block_id]
        block = self.blocks[block_id]
        if block.hash is not None and block.ref_count == 0 and self.hash_to_block.get(block.hash) == block_id:
            # Reusing a cached block for new content: forget what it held.
            del self.hash_to_block[block.hash]
            block.hash, block.token_ids = None, ()
        block.ref_count = 1
        return block

    def _cached_prefix(self, seq: Sequence) -> list[int]:
        """Block ids whose content equals seq's leading full blocks. The last prompt token
        is never taken from the cache: its logits are needed to sample. Nor is any token of
        a prompt whose log-probabilities are asked for: they come from its prefill."""
        if seq.needs_prompt_logprobs:
            return []
        hits, prefix_hash = [], chain_start(seq)
        usable = len(seq) - 1
        for i in range(usable // self.block_size):
            tokens = tuple(seq.token_ids[i * self.block_size:(i + 1) * self.block_size])
            h = chain_hash(tokens, prefix_hash)
            block_id = self.hash_to_block.get(h)
            if block_id is None or self.blocks[block_id].token_ids != tokens:
                break
            hits.append(block_id)
            prefix_hash = h
        return hits

    def _usable_prefix(self, seq: Sequence) -> list[int]:
        hits = self._cached_prefix(seq)
        if self.window is not None:
            hits = hits[:self.window.usable_hit(seq, len(hits))]
        return hits

    def can_allocate(self, seq: Sequence) -> bool:
        hits = self._usable_prefix(seq)
        if self.window is not None and not self.window.can_allocate(seq, len(hits)):
            return False
        free_hits = sum(1 for b in hits if self.blocks[b].ref_count == 0)
        return len(self.free) - free_hits >= self.blocks_needed(seq) - len(hits)

    def allocate(self, seq: Sequence) -> None:
        assert not seq.block_table
        hits = self._usable_prefix(seq)
        for block_id in hits:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self.free[block_id]
            block.ref_count += 1
            seq.block_table.append(block_id)
        seq.num_cached_tokens = len(hits) * self.block_size
        while len(seq.block_table) < self.blocks_needed(seq):
            seq.block_table.append(self._take_free().block_id)
        if self.window is not None:
            self.window.allocate(seq, len(hits))

    def deallocate(self, seq: Sequence) -> None:
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free[block_id] = None
        seq.block_table = []
        seq.num_cached_tokens = 0
        if self.window is not None:
            self.window.deallocate(seq)

    def can_append(self, seq: Sequence) -> bool:
        """Room for the KV of seq's newest token (a new block when it starts one)."""
        if self.window is not None and not self.window.can_append(seq):
            return False
        return len(seq.block_table) * self.block_size > len(seq) - 1 or len(self.free) > 0

    def append_slot(self, seq: Sequence) -> None:
        if len(seq.block_table) * self.block_size <= len(seq) - 1:
            seq.block_table.append(self._take_free().block_id)
        if self.window is not None:
            self.window.append_slot(seq)

    def register_full_blocks(self, seq: Sequence, num_computed: int) -> None:
        """Publish the hashes of seq's blocks that are full and whose KV is computed."""
        prefix_hash = chain_start(seq)
        for i in range(num_computed // self.block_size):
            block = self.blocks[seq.block_table[i]]
            tokens = tuple(seq.token_ids[i * self.block_size:(i + 1) * self.block_size])
            h = chain_hash(tokens, prefix_hash)
            if block.hash != h:
                block.hash, block.token_ids = h, tokens
                self.hash_to_block.setdefault(h, block.block_id)
            if self.window is not None:
                self.window.register(seq, i, h, tokens)
            prefix_hash = h

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix (the KV was computed by weights no longer served, or
        the cache's memory was given back). Blocks in use keep their contents."""
        for block in self.blocks:
            block.hash, block.token_ids = None, ()
        self.hash_to_block.clear()

    def forget_prefix(self, token_ids: list[int], keep_tokens: int = 0) -> int:
        """Drop cached blocks holding this token prefix (e.g. a deleted session's), except
        the blocks lying wholly inside its first `keep_tokens` tokens (a prefix others still
        use). Blocks still used by a running sequence are left alone. Returns blocks dropped."""
        dropped, prefix_hash = 0, None
        keep_blocks = keep_tokens // self.block_size
        for i in range(len(token_ids) // self.block_size):
            tokens = tuple(token_ids[i * self.block_size:(i + 1) * self.block_size])
            h = chain_hash(tokens, prefix_hash)
            block_id = self.hash_to_block.get(h)
            if i >= keep_blocks and block_id is not None and self.blocks[block_id].ref_count == 0:
                del self.hash_to_block[h]
                self.blocks[block_id].hash, self.blocks[block_id].token_ids = None, ()
                dropped += 1
            if i >= keep_blocks and self.window is not None:
                self.window.forget(h)
            prefix_hash = h
        return dropped
