"""Embeddings of token sequences: one causal prefill over a scratch KV cache, the final
norm, pooling, optional Matryoshka truncation and L2 normalization.

The forward pass is the model's own (the same code the engine prefills with), run
here in a worker thread. A server in embed mode generates nothing, so the engine never
runs the model at the same time. Sequences are packed into forwards of at most
`max_batch_tokens` tokens, which bounds the scratch cache and activations."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from triolm.loading.embedding_spec import EmbeddingSpec
from triolm.model.attention import AttentionMetadata, PrefillSeq
from triolm.model.llama import LlamaModel
from triolm.model.norm import rms_norm


class Embedder:
    def __init__(self, model: LlamaModel, spec: EmbeddingSpec, max_batch_tokens: int):
        self.model = model
        self.spec = spec
        self.max_batch_tokens = max_batch_tokens

    @property
    def dimensions(self) -> int:
        return self.model.config.hidden_size

    def embed(self, sequences: list[list[int]], dimensions: int | None = None) -> torch.Tensor:
        """[len(sequences), dimensions or hidden_size] float32 embeddings of non-empty
        sequences (Matryoshka truncation before normalization)."""
        out: list[torch.Tensor] = []
        batch: list[list[int]] = []
        for seq in sequences:
            if batch and sum(map(len, batch)) + len(seq) > self.max_batch_tokens:
                out.append(self._forward(batch))
                batch = []
            batch.append(seq)
        if batch:
            out.append(self._forward(batch))
        vectors = torch.cat(out)
        if dimensions is not None:
            vectors = vectors[:, :dimensions]
        if self.spec.normalize:
            vectors = F.normalize(vectors, p=2, dim=-1)
        return vectors

    @torch.inference_mode()
    def _forward(self, batch: list[list[int]]) -> torch.Tensor:
        model, c = self.model, self.model.config
        total = sum(map(len, batch))
        ids = torch.tensor([t for seq in batch for t in seq], dtype=torch.long)
        positions = torch.cat([torch.arange(len(seq)) for seq in batch])
        kv_cache = torch.zeros(1, 2, total, c.num_key_value_heads, c.head_dim, dtype=model.dtype).expand(
            c.num_hidden_layers, -1, -1, -1, -1)
        spans, start = [], 0
        for seq in batch:
            spans.append((start, start + len(seq)))
            start += len(seq)
        meta = AttentionMetadata(True, torch.arange(total), [PrefillSeq(s, e, 0, None) for s, e in spans])
        hidden = rms_norm(model.forward(ids, positions, kv_cache, meta), model.norm, c.rms_norm_eps).float()
        return torch.stack([self._pool(hidden[s:e]) for s, e in spans])

    def _pool(self, rows: torch.Tensor) -> torch.Tensor:
        if self.spec.pooling == "last":
            return rows[-1]
        if self.spec.pooling == "cls":
            return rows[0]
        return rows.mean(dim=0)
