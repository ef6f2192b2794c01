"""Owns the model and its KV cache; turns scheduled sequences into tensors and logits."""

from __future__ import annotations

import mmap
from collections.abc import Callable

import torch

from triolm.engine.prompt_logprobs import prompt_token_logprobs
from triolm.engine.sequence import Sequence
from triolm.model.attention import AttentionMetadata, PrefillSeq
from triolm.model.llama import CacheState, LlamaModel


class ModelRunner:
    def __init__(self, model: LlamaModel, num_blocks: int, block_size: int,
                 kv_dtype: torch.dtype | None = None):
        c = model.config
        self.model: LlamaModel | None = model  # None while the weights are released
        self.block_size = block_size
        self._cache_shape = (c.num_hidden_layers, 2, num_blocks * block_size, c.num_key_value_heads, c.head_dim)
        self._cache_dtype = kv_dtype or model.dtype
        self.kv_cache: torch.Tensor | None = None
        self.cache_state: CacheState | None = None  # set while both model and cache are there
        self.allocate_cache()
        # Called once per forward, inputs ready, just before the layers: the server hands
        # out the previous step's tokens there, so the event loop's Python runs while this
        # thread is in the kernels with the GIL released (at step end it would contend
        # with this thread's own Python for the GIL and stall it).
        self.before_layers: Callable[[], None] | None = None

    @property
    def kv_cache_bytes(self) -> int:
        if self.kv_cache is None:
            return 0
        return self.kv_cache.numel() * self.kv_cache.element_size()

    def allocate_cache(self) -> None:
        """A fresh (zero) cache, unless one is there."""
        if self.kv_cache is None:
            self.kv_cache = _lazy_zeros(self._cache_shape, self._cache_dtype)
            if self.model is not None:
                self.cache_state = self.model.cache_state(self.kv_cache)

    def release_cache(self) -> None:
        """Drop the cache: its anonymous mapping is unmapped once nothing views it."""
        self.kv_cache = None
        self.cache_state = None

    def release_model(self) -> None:
        self.model = None
        self.cache_state = None

    def set_model(self, model: LlamaModel) -> None:
        """Run other weights of the same shapes over the same cache."""
        self.model = model
        if self.kv_cache is not None:
            self.cache_state = model.cache_state(self.kv_cache)

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

    def _prefill(self, model: LlamaModel, kv_cache: torch.Tensor, state: CacheState,
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

    def _decode(self, model: LlamaModel, kv_cache: torch.Tensor, state: CacheState,
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
