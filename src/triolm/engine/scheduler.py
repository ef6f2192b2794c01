"""Continuous batching: admit waiting sequences while others decode, within the KV budget.

Each step is either a prefill of newly admitted sequences or one decode token for every
running sequence. When the cache is full, the youngest running sequence is preempted:
its blocks are freed and it waits to be recomputed (its prefix may still be cached).
"""

from __future__ import annotations

from collections import deque

from triolm.engine.block_manager import BlockManager
from triolm.engine.sequence import Sequence, SequenceStatus


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int):
        self.blocks = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def remove(self, seq: Sequence) -> None:
        """Take a sequence out (finished or aborted) and free its cache blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        if seq.block_table:
            self.blocks.deallocate(seq)
        seq.status = SequenceStatus.FINISHED

    def schedule(self) -> tuple[list[Sequence], bool]:
        """The sequences to run this step, and whether it is a prefill step."""
        batch: list[Sequence] = []
        tokens = 0
        while self.waiting and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if not self.blocks.can_allocate(seq):
                break
            self.blocks.allocate(seq)
            new_tokens = len(seq) - seq.num_cached_tokens
            if batch and tokens + new_tokens > self.max_num_batched_tokens:
                self.blocks.deallocate(seq)
                break
            tokens += new_tokens
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            batch.append(seq)
        if batch:
            return batch, True
        for seq in list(self.running):
            if seq.status is not SequenceStatus.RUNNING:
                continue  # preempted while making room for an older sequence
            while not self.blocks.can_append(seq):
                victim = self.running[-1]
                self._preempt(victim)
                if victim is seq:
                    break
            if seq.status is SequenceStatus.RUNNING:
                self.blocks.append_slot(seq)
                batch.append(seq)
        return batch, False

    def preempt_all(self) -> None:
        """Every running sequence back to the front of the waiting queue, oldest first."""
        for seq in reversed(list(self.running)):
            self._preempt(seq)

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.deallocate(seq)
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
