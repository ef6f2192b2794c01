"""Owns the model and its KV cache; turns scheduled sequences into tensors and logits."""

from __future__ import annotations

import mmap
from collections.abc import Callable
from typing import Any

import torch

from triolm.engine.prompt_logprobs import prompt_token_logprobs
from triolm.engine.sequence import Sequence
from triolm.model.attention import AttentionMetadata, PrefillSeq
from triolm.model.build import Model
from triolm.model.gemma import GemmaModel

# The state `model.cache_state(...)` made for this runner's model; each model's forward
# takes only its own kind, which the (model, state) pairing here guarantees.
ModelCacheState = Any


def window_layers(model: Model) -> list[int]:
    """The layers whose KV lives in the sliding-window pool (`window_blocks`)."""
    c = model.config
    if not c.sliding_window or not isinstance(model, GemmaModel):
        return []
    return [i for i in range(c.num_hidden_layers) if c.is_sliding(i)]


class ModelRunner:
    def __init__(self, model: Model, num_blocks: int, block_size: int,
                 kv_dtype: torch.dtype | None = None, num_window_blocks: int = 0):
        """`num_window_blocks`: the sliding-window layers' pool (0 without such layers);
        their cache has one block more, the scratch block."""
        c = model.config
        self.model: Model | None = model  # None while the weights are released
        self.block_size = block_size
        self._cache_dtype = kv_dtype or model.dtype
        local = window_layers(model)
        self._cache_shape = (c.num_hidden_layers - len(local), 2, num_blocks * block_size,
                             c.num_key_value_heads, c.head_dim)
        self._window_shape = ((len(local), 2, (num_window_blocks + 1) * block_size,
                               c.num_key_value_heads, c.head_dim) if local else None)
        self.scratch_slot = num_window_blocks * block_size
        self.kv_cache: torch.Tensor | None = None
        self.window_cache: torch.Tensor | None = None
        self.cache_state: ModelCacheState | None = None  # model and cache both there
        self.allocate_cache()
        # Called once per forward, inputs ready, just before the layers: the server hands
        # out the previous step's tokens there, so the event loop's Python runs while this
        # thread is in the kernels with the GIL released (at step end it would contend
        # with this thread's own Python for the GIL and stall it).
        self.before_layers: Callable[[], None] | None = None

    @property
    def kv_cache_bytes(self) -> int:
        caches = [t for t in (self.kv_cache, self.window_cache) if t is not None]
        return sum(t.numel() * t.element_size() for t in caches)

    def _refresh_state(self) -> None:
        self.cache_state = None
        if self.model is None or self.kv_cache is None:
            return
        if isinstance(self.model, GemmaModel):
            self.cache_state = self.model.cache_state(self.kv_cache, self.window_cache)
        else:
            self.cache_state = self.model.cache_state(self.kv_cache)

    def allocate_cache(self) -> None:
        """A fresh (zero) cache, unless one is there."""
        if self.kv_cache is None:
            self.kv_cache = _lazy_zeros(self._cache_shape, self._cache_dtype)
            if self._window_shape is not None:
                self.window_cache = _lazy_zeros(self._window_shape, self._cache_dtype)
            self._refresh_state()

    def release_cache(self) -> None:
        """Drop the cache: its anonymous mapping is unmapped once nothing views it."""
        self.kv_cache = None
        self.window_cache = None
        self.cache_state = None

    def release_model(self) -> None:
        self.model = None
        self.cache_state = None

    def set_model(self, model: Model) -> None:
        """Run other weights of the same shapes over the same cache."""
        self.model = model
        self._refresh_state()

    def _window_slots(self, seq: Sequence, start: int, end: int) -> torch.Tensor:
        """Slots of positions [start, end) in the sliding-window cache; the scratch slot
        where seq holds no block (released, or never stored)."""
        table = torch.tensor(seq.window_table, dtype=torch.long)
        pos = torch.arange(start, end)
        blocks = table[pos // self.block_size]
        slots = blocks * self.block_size + pos % self.block_size
        return torch.where(blocks >= 0, slots, self.scratch_slot)

    def _slots(self, seq: Sequence, start: int, end: int) -> torch.Tensor:
        table = torch.tensor(seq.block_table, dtype=torch.long)
        pos = torch.arange(start, end)
        return table[pos // self.block_size] * self.block_size + pos % self.block_size

    def run(self, seqs: list[Sequence], is_prefill: bool) -> torch.Tensor:
        """Logits [len(seqs), vocab] for the next token of each sequence."""
        model, kv_cache, state = self.model, self.kv_cache, self.cache_state
        if model is None or kv_cache is None or state is None:
            raise RuntimeError("no step can run while the weights or the KV cache are released")
        if is_prefill:
            return self._prefill(model, kv_cache, state, seqs)
        return self._decode(model, kv_cache, state, seqs)

    def _prefill(self, model: Model, kv_cache: torch.Tensor, state: ModelCacheState,
                 seqs: list[Sequence]) -> torch.Tensor:
        ids, positions, slots, meta_seqs, last_rows = [], [], [], [], []
        offset = 0
        for seq in seqs:
            start, end = seq.num_cached_tokens, len(seq)
            ids.extend(seq.token_ids[start:end])
            positions.append(torch.arange(start, end))
            slots.append(self._slots(seq, start, end))
            context = self._slots(seq, 0, end) if start > 0 else None
            meta_seqs.append(PrefillSeq(offset, offset + end - start, start, context))
            offset += end - start
            last_rows.append(offset - 1)
        meta = AttentionMetadata(True, torch.cat(slots), meta_seqs)
        if self.window_cache is not None:
            meta.window = AttentionMetadata(True, torch.cat([
                self._window_slots(seq, seq.num_cached_tokens, len(seq)) for seq in seqs]), [
                PrefillSeq(m.start, m.end, m.num_cached,
                           self._window_slots(seq, 0, len(seq)) if m.num_cached > 0 else None)
                for seq, m in zip(seqs, meta_seqs, strict=True)])
        hidden = model.forward(torch.tensor(ids, dtype=torch.long), torch.cat(positions),
                                    kv_cache, meta, state,
                                    before_layers=self.before_layers)
        for seq, m in zip(seqs, meta_seqs, strict=True):
            top_n = seq.params.prompt_logprobs
            if top_n is not None and seq.prompt_logprobs is None:  # prefilled whole: row i is position i
                n = seq.num_prompt_tokens
                seq.prompt_logprobs = prompt_token_logprobs(
                    model.logits, hidden[m.start:m.start + n - 1], seq.token_ids[:n], top_n)
        return model.logits(hidden[torch.tensor(last_rows)])

    def _decode(self, model: Model, kv_cache: torch.Tensor, state: ModelCacheState,
                seqs: list[Sequence]) -> torch.Tensor:
        ids = torch.tensor([s.last_token for s in seqs], dtype=torch.long)
        lengths = [len(s) for s in seqs]
        if model.native_decode:
            # The kernel walks block tables itself: one small int32 tensor per step.
            model.rope.ensure(max(lengths))
            width = max(len(s.block_table) for s in seqs)
            tables = torch.tensor([s.block_table + [0] * (width - len(s.block_table)) for s in seqs],
                                  dtype=torch.int32)
            meta = AttentionMetadata(False, torch.empty(0, dtype=torch.long), block_tables=tables,
                                     seq_lens=torch.tensor(lengths, dtype=torch.int32),
                                     block_size=self.block_size)
            if self.window_cache is not None:
                # released blocks (-1) point at the scratch block: never read (window_blocks)
                scratch = self.scratch_slot // self.block_size
                width = max(len(s.window_table) for s in seqs)
                local = torch.tensor([s.window_table + [-1] * (width - len(s.window_table)) for s in seqs],
                                     dtype=torch.int32)
                meta.window = AttentionMetadata(False, torch.empty(0, dtype=torch.long),
                                                block_tables=torch.where(local >= 0, local, scratch),
                                                seq_lens=meta.seq_lens, block_size=self.block_size)
            hidden = model.forward(ids, torch.tensor(lengths) - 1, kv_cache, meta,
                                        state, before_layers=self.before_layers)
            return model.logits(hidden)
        longest = max(lengths)
        context = torch.zeros(len(seqs), longest, dtype=torch.long)
        for row, seq in enumerate(seqs):
            context[row, : lengths[row]] = self._slots(seq, 0, lengths[row])
        lens = torch.tensor(lengths)
        mask = (torch.arange(longest).unsqueeze(0) < lens.unsqueeze(1)).view(len(seqs), 1, 1, longest)
        positions = lens - 1
        slot_mapping = context[torch.arange(len(seqs)), positions]
        meta = AttentionMetadata(False, slot_mapping, decode_slots=context, decode_mask=mask)
        if self.window_cache is not None:
            local = torch.full((len(seqs), longest), self.scratch_slot, dtype=torch.long)
            for row, seq in enumerate(seqs):
                local[row, : lengths[row]] = self._window_slots(seq, 0, lengths[row])
            meta.window = AttentionMetadata(False, local[torch.arange(len(seqs)), positions],
                                            decode_slots=local, decode_mask=mask)
        hidden = model.forward(ids, positions, kv_cache, meta, state,
                                    before_layers=self.before_layers)
        return model.logits(hidden)


def _lazy_zeros(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A zero tensor whose memory is committed page by page as it is written.

    The cache is sized for max_num_seqs x max_model_len, usually far more than is in
    use; torch.zeros would touch (and count in RSS) every page at start-up. An anonymous
    mapping is zero-filled by the kernel on first touch."""
    numel = 1
    for d in shape:
        numel *= d
    nbytes = numel * torch.empty(0, dtype=dtype).element_size()
    if nbytes < 1 << 20:
        return torch.zeros(shape, dtype=dtype)
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return torch.frombuffer(buf, dtype=dtype, count=numel).view(shape)
