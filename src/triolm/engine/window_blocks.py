"""KV blocks of sliding-window layers: each sequence holds only its window's blocks.

A local (sliding-window) layer's query at position q reads keys q - window + 1 .. q, so
once a block lies wholly before the next query's window that layer never reads it
again. These layers get their own cache and block pool: a sequence's `window_table`
maps its logical blocks to pool blocks, -1 where the block was released (or never
stored), so a long context keeps at most ceil(window / block_size) + 1 blocks here
while the global layers keep all of it in `BlockManager`'s pool.

Prefix caching works across both pools: a released block keeps its hash (the same
chain hash as the global layers' block of those tokens) until it is reused, and a
prefix hit of n blocks counts only if this pool still holds the blocks the first new
token's window reads; otherwise the hit shrinks until it does (down to none).

Prefill stores only the blocks the next decode step's window reads; the step's own
queries take the step's keys directly (`windowed_attention`), and keys of positions
with no block go to a scratch block that is never read unmasked.
"""

from __future__ import annotations

from collections import OrderedDict

from triolm.engine.block_manager import Block, chain_hash
from triolm.engine.sequence import Sequence


class WindowBlocks:
    def __init__(self, num_blocks: int, block_size: int, window: int):
        self.block_size = block_size
        self.window = window
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.hash_to_block: dict[int, int] = {}
        #: the slot after the pool: writes of positions without a block land there
        self.scratch_block = num_blocks

    @staticmethod
    def blocks_per_sequence(window: int, block_size: int) -> int:
        """The most a decoding sequence holds: its window's blocks and one being filled."""
        return -(-window // block_size) + 1

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self.free)

    def first_block(self, query_position: int) -> int:
        """The first logical block a query at this position reads."""
        return max(0, query_position - self.window + 1) // self.block_size

    def _hashes(self, seq: Sequence, count: int) -> list[tuple[int, tuple[int, ...]]]:
        out, prefix = [], None
        for i in range(count):
            tokens = tuple(seq.token_ids[i * self.block_size:(i + 1) * self.block_size])
            prefix = chain_hash(tokens, prefix)
            out.append((prefix, tokens))
        return out

    def _cached(self, h: int, tokens: tuple[int, ...]) -> int | None:
        block_id = self.hash_to_block.get(h)
        if block_id is None or self.blocks[block_id].token_ids != tokens:
            return None
        return block_id

    def usable_hit(self, seq: Sequence, hits: int) -> int:
        """The longest prefix hit (in blocks, at most `hits`) whose window this pool holds."""
        hashes = self._hashes(seq, hits)
        for n in range(hits, 0, -1):
            if all(self._cached(*hashes[i]) is not None for i in range(self.first_block(n * self.block_size), n)):
                return n
        return 0

    def _stored_range(self, seq: Sequence, hits: int) -> range:
        """Logical blocks a prefill after `hits` cached blocks stores: those the next
        token's window reads."""
        total = -(-len(seq) // self.block_size)
        return range(max(hits, self.first_block(len(seq))), total)

    def can_allocate(self, seq: Sequence, hits: int) -> bool:
        hashes = self._hashes(seq, hits)
        reused = [self._cached(*hashes[i]) for i in range(self.first_block(hits * self.block_size), hits)]
        free_reused = sum(1 for b in reused if b is not None and self.blocks[b].ref_count == 0)
        return len(self.free) - free_reused >= len(self._stored_range(seq, hits))

    def allocate(self, seq: Sequence, hits: int) -> None:
        """Blocks for a prefill after `hits` cached blocks (a hit `usable_hit` allowed)."""
        total = -(-len(seq) // self.block_size)
        seq.window_table = [-1] * total
        hashes = self._hashes(seq, hits)
        for i in range(self.first_block(hits * self.block_size), hits):
            block_id = self._cached(*hashes[i])
            assert block_id is not None, "allocate after usable_hit"
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self.free[block_id]
            block.ref_count += 1
            seq.window_table[i] = block_id
        for i in self._stored_range(seq, hits):
            seq.window_table[i] = self._take_free()

    def _take_free(self) -> int:
        block_id, _ = self.free.popitem(last=False)
        block = self.blocks[block_id]
        if block.hash is not None and self.hash_to_block.get(block.hash) == block_id:
            del self.hash_to_block[block.hash]
        block.hash, block.token_ids = None, ()
        block.ref_count = 1
        return block_id

    def _release(self, block_id: int) -> None:
        block = self.blocks[block_id]
        block.ref_count -= 1
        if block.ref_count == 0:
            self.free[block_id] = None

    def trim(self, seq: Sequence) -> None:
        """Release the blocks before the window of seq's newest token (position len - 1)."""
        for i in range(min(self.first_block(len(seq) - 1), len(seq.window_table))):
            if seq.window_table[i] >= 0:
                self._release(seq.window_table[i])
                seq.window_table[i] = -1

    def can_append(self, seq: Sequence) -> bool:
        """Room for seq's newest token after trimming (which this does: those blocks are
        never read by seq again)."""
        self.trim(seq)
        return len(seq.window_table) * self.block_size > len(seq) - 1 or len(self.free) > 0

    def append_slot(self, seq: Sequence) -> None:
        self.trim(seq)
        if len(seq.window_table) * self.block_size <= len(seq) - 1:
            seq.window_table.append(self._take_free())

    def deallocate(self, seq: Sequence) -> None:
        for block_id in reversed(seq.window_table):
            if block_id >= 0:
                self._release(block_id)
        seq.window_table = []

    def register(self, seq: Sequence, index: int, h: int, tokens: tuple[int, ...]) -> None:
        """Logical block `index` of seq is full and computed: publish it under hash `h`."""
        if index < len(seq.window_table) and seq.window_table[index] >= 0:
            block = self.blocks[seq.window_table[index]]
            if block.hash != h:
                block.hash, block.token_ids = h, tokens
                self.hash_to_block.setdefault(h, block.block_id)

    def forget(self, h: int) -> None:
        block_id = self.hash_to_block.get(h)
        if block_id is not None and self.blocks[block_id].ref_count == 0:
            del self.hash_to_block[h]
            self.blocks[block_id].hash, self.blocks[block_id].token_ids = None, ()
