"""Turn a batch of logits into one token per sequence, each with its own settings.

Order of processing (as in vLLM): allowed_token_ids, logit_bias, repetition/presence/frequency penalties,
min_tokens (hide stop ids), grammar mask, then temperature, top_k, top_p, min_p and
sampling. Reported log-probabilities are those of the model's raw distribution
(log_softmax of the unprocessed logits), like vLLM's default `raw_logprobs`.
"""

from __future__ import annotations

import attrs
import numpy as np
import torch

from triolm.engine.constraint import allocate_token_bitmask, apply_token_bitmask_, fill_token_bitmasks
from triolm.engine.sequence import Sequence


@attrs.frozen
class SampledToken:
    token_id: int
    logprob: float
    top_logprobs: tuple[tuple[int, float], ...] | None  # best-first (id, logprob)


class Sampler:
    def __init__(self, eos_token_ids: tuple[int, ...], seed: int | None = None):
        self.eos_token_ids = eos_token_ids
        self.default_generator = torch.Generator()
        if seed is not None:
            self.default_generator.manual_seed(seed)
        else:
            self.default_generator.seed()

    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[SampledToken | Exception]:
        """One token per sequence — or, for a sequence whose own sampling failed (its logits
        not finite, its logit bias or grammar raising), the exception: the engine fails that
        sequence alone and the others' tokens are exactly what they would be without it."""
        raw_logprobs = torch.log_softmax(logits, dim=-1)
        failed: dict[int, Exception] = {}
        # numpy's reductions over a vocabulary row are ~10x faster than torch's here
        # (a decode step's whole budget is a few ms): the finite check and argmax use them.
        finite = np.isfinite(logits.numpy()).all(axis=-1)
        if not finite.all():
            for row in np.flatnonzero(~finite).tolist():
                failed[row] = FloatingPointError("the model computed non-finite logits for this sequence")
        processed = logits
        if any(_needs_processing(s) for s in seqs):
            processed = logits.clone()
            for row, seq in enumerate(seqs):
                if row not in failed and _needs_processing(seq):
                    try:
                        self._process_row(processed[row], seq)
                    except Exception as exc:
                        failed[row] = exc
            constrained = [row for row, s in enumerate(seqs) if s.matcher is not None and row not in failed]
            if constrained:
                bitmask = allocate_token_bitmask(len(seqs), processed.shape[-1])
                _fill_bitmasks(seqs, constrained, bitmask, failed)
                constrained = [row for row in constrained if row not in failed]
                apply_token_bitmask_(processed, bitmask, rows=constrained)
        out: list[SampledToken | Exception] = []
        for row, seq in enumerate(seqs):
            if row in failed:
                out.append(failed[row])
                continue
            try:
                token = self._sample_row(processed[row], seq)
            except Exception as exc:
                out.append(exc)
                continue
            lp = raw_logprobs[row]
            top = None
            if seq.params.logprobs is not None:
                n = seq.params.logprobs
                if n > 0:
                    vals, ids = torch.topk(lp, n)
                    top = tuple(zip(ids.tolist(), vals.tolist(), strict=True))
                else:
                    top = ()
            out.append(SampledToken(token, float(lp[token]), top))
        return out

    def _process_row(self, row: torch.Tensor, seq: Sequence) -> None:
        p = seq.params
        if p.allowed_token_ids:
            allowed = torch.tensor(p.allowed_token_ids, dtype=torch.long)
            kept = row[allowed]
            row.fill_(float("-inf"))
            row[allowed] = kept
        for token_id, bias in p.logit_bias:
            row[token_id] += bias
        if p.repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(seq.token_ids)), dtype=torch.long)
            vals = row[seen]
            row[seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        if (p.presence_penalty or p.frequency_penalty) and seq.generated_counts:
            ids = torch.tensor(list(seq.generated_counts.keys()), dtype=torch.long)
            counts = torch.tensor(list(seq.generated_counts.values()), dtype=row.dtype)
            row[ids] -= p.frequency_penalty * counts + p.presence_penalty
        if seq.num_generated < p.min_tokens and seq.matcher is None:  # a grammar decides its own end
            hidden = list(p.stop_token_ids) + ([] if p.ignore_eos else list(self.eos_token_ids))
            if hidden:
                row[torch.tensor(hidden, dtype=torch.long)] = float("-inf")

    def _sample_row(self, row: torch.Tensor, seq: Sequence) -> int:
        p = seq.params
        if p.greedy:
            return int(row.numpy().argmax())  # the first maximal index, as torch.argmax
        row = row / p.temperature
        if p.top_k and 0 < p.top_k < row.shape[0]:
            kth = torch.topk(row, p.top_k).values[-1]
            row = row.masked_fill(row < kth, float("-inf"))
        probs = torch.softmax(row, dim=-1)
        if p.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            cumulative = torch.cumsum(sorted_probs, dim=-1)
            drop_sorted = (cumulative - sorted_probs) > p.top_p  # keep the token crossing top_p
            probs = probs.scatter(0, order, sorted_probs.masked_fill(drop_sorted, 0.0))
        if p.min_p > 0.0:
            probs = probs.masked_fill(probs < p.min_p * probs.max(), 0.0)
        generator = seq.generator or self.default_generator
        return int(torch.multinomial(probs, 1, generator=generator))


def _fill_bitmasks(seqs: list[Sequence], rows: list[int], bitmask: torch.Tensor,
                   failed: dict[int, Exception]) -> None:
    """All constrained rows at once; if that raises, row by row to find whose grammar failed."""
    chosen = set(rows)
    try:
        fill_token_bitmasks([s.matcher if i in chosen else None for i, s in enumerate(seqs)], bitmask)
        return
    except Exception:
        pass
    for row in rows:
        matcher = seqs[row].matcher
        if matcher is None:  # rows are the constrained sequences
            continue
        try:
            matcher.fill_bitmask(bitmask, row)
        except Exception as exc:
            failed[row] = exc


def _needs_processing(seq: Sequence) -> bool:
    p = seq.params
    return bool(p.logit_bias or p.allowed_token_ids or p.repetition_penalty != 1.0 or p.presence_penalty
                or p.frequency_penalty or seq.num_generated < p.min_tokens
                or seq.matcher is not None)
