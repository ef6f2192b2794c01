"""One generation in flight: its tokens, cache blocks and sampling state."""

from __future__ import annotations

import enum
from collections import Counter

import torch

from triolm.engine.finish import Finish
from triolm.engine.prompt_logprobs import PromptTokenLogprob
from triolm.engine.sampling_params import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    def __init__(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams):
        if not prompt_token_ids:
            raise ValueError("a sequence needs at least one prompt token")
        self.request_id = request_id
        self.token_ids: list[int] = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.params = params
        self.status = SequenceStatus.WAITING
        self.block_table: list[int] = []
        self.window_table: list[int] = []  # sliding-window layers' blocks, -1: released (window_blocks)
        self.num_cached_tokens = 0  # tokens whose KV is in the cache (prefix hit or computed)
        self.num_prefix_hit_tokens = 0  # of the prompt, found in the prefix cache at first admission
        self.num_prefilled_tokens = 0  # tokens actually computed by prefill, over all admissions
        self.first_admission = True
        self.generated_counts: Counter[int] = Counter()
        self.generator: torch.Generator | None = None
        if params.seed is not None:
            self.generator = torch.Generator().manual_seed(params.seed)
        self.matcher = params.constraint.new_matcher() if params.constraint is not None else None
        # filled by the first prefill when params.prompt_logprobs asks (kept across preemption)
        self.prompt_logprobs: tuple[PromptTokenLogprob, ...] | None = None
        self.finish: Finish | None = None  # why it ended, once it has

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def needs_prompt_logprobs(self) -> bool:
        """Asked for and not computed yet: the next prefill must compute every prompt position."""
        return self.params.prompt_logprobs is not None and self.prompt_logprobs is None

    @property
    def num_generated(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def last_token(self) -> int:
        return self.token_ids[-1]

    def append(self, token_id: int) -> None:
        self.token_ids.append(token_id)
        self.generated_counts[token_id] += 1
