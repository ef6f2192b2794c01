"""Owns the model and its KV cache; turns scheduled sequences into tensors and logits."""

from __future__ import annotations

import mmap
from collections.abc import Callable

import torch

from triolm.engine.prompt_logprobs import prompt_token_logprobs
from triolm.engine.sequence import Sequence
from triolm.model.attention import AttentionMetadata, PrefillSeq
from triolm.model.llama import LlamaModel


class ModelRunner:
    def __init__(self, model: LlamaModel, num_blocks: int, block_size: int,
                 kv_dtype: torch.dtype | None = None):
        c = model.config
        self.model = model
        self.block_size = block_size
        self.kv_cache = _lazy_zeros(
            (c.num_hidden_layers, 2, num_blocks * block_size, c.num_key_value_heads, c.head_dim),
            kv_dtype or model.dtype)
        self.cache_state = model.cache_state(self.kv_cache)
        # Called once per forward, inputs ready, just before the layers: the server hands
        # out the previous step's tokens there, so the event loop's Python runs while this
        # thread is in the kernels with the GIL released (at step end it would contend
        # with this thread's own Python for the GIL and stall it).
        self.before_layers: Callable[[], None] | None = None

    @property
    def kv_cache_bytes(self) -> int:
        return self.kv_cache.numel() * self.kv_cache.element_size()

    def _slots(self, seq: Sequence, start: int, end: int) -> torch.Tensor:
        table = torch.tensor(seq.block_table, dtype=torch.long)
        pos = torch.arange(start, end)
        return table[pos // self.block_size] * self.block_size + pos % self.block_size

    def run(self, seqs: list[Sequence], is_prefill: bool) -> torch.Tensor:
        """Logits [len(seqs), vocab] for the next token of each sequence."""
        if is_prefill:
            return self._prefill(seqs)
        return self._decode(seqs)

    def _prefill(self, seqs: list[Sequence]) -> torch.Tensor:
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
        hidden = self.model.forward(torch.tensor(ids, dtype=torch.long), torch.cat(positions),
                                    self.kv_cache, meta, self.cache_state,
                                    before_layers=self.before_layers)
        for seq, m in zip(seqs, meta_seqs, strict=True):
            top_n = seq.params.prompt_logprobs
            if top_n is not None and seq.prompt_logprobs is None:  # prefilled whole: row i is position i
                n = seq.num_prompt_tokens
                seq.prompt_logprobs = prompt_token_logprobs(
                    self.model.logits, hidden[m.start:m.start + n - 1], seq.token_ids[:n], top_n)
        return self.model.logits(hidden[torch.tensor(last_rows)])

    def _decode(self, seqs: list[Sequence]) -> torch.Tensor:
        ids = torch.tensor([s.last_token for s in seqs], dtype=torch.long)
        lengths = [len(s) for s in seqs]
        if self.model.native_decode:
            # The kernel walks block tables itself: one small int32 tensor per step.
            self.model.rope.ensure(max(lengths))
            width = max(len(s.block_table) for s in seqs)
            tables = torch.tensor([s.block_table + [0] * (width - len(s.block_table)) for s in seqs],
                                  dtype=torch.int32)
            meta = AttentionMetadata(False, torch.empty(0, dtype=torch.long), block_tables=tables,
                                     seq_lens=torch.tensor(lengths, dtype=torch.int32),
                                     block_size=self.block_size)
            hidden = self.model.forward(ids, torch.tensor(lengths) - 1, self.kv_cache, meta,
                                        self.cache_state, before_layers=self.before_layers)
            return self.model.logits(hidden)
        longest = max(lengths)
        context = torch.zeros(len(seqs), longest, dtype=torch.long)
        for row, seq in enumerate(seqs):
            context[row, : lengths[row]] = self._slots(seq, 0, lengths[row])
        lens = torch.tensor(lengths)
        mask = (torch.arange(longest).unsqueeze(0) < lens.unsqueeze(1)).view(len(seqs), 1, 1, longest)
        positions = lens - 1
        slot_mapping = context[torch.arange(len(seqs)), positions]
        meta = AttentionMetadata(False, slot_mapping, decode_slots=context, decode_mask=mask)
        hidden = self.model.forward(ids, positions, self.kv_cache, meta, self.cache_state,
                                    before_layers=self.before_layers)
        return self.model.logits(hidden)


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
