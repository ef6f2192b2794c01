"""The engine facade: add requests, abort them, step. Synchronous and thread-confined:
every call must come from one thread at a time (the serving layer's engine driver)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs
import torch

from triolm.engine import finish as finishes
from triolm.engine.block_manager import BlockManager
from triolm.engine.finish import Finish
from triolm.engine.model_runner import ModelRunner, window_layers
from triolm.engine.prompt_logprobs import PromptTokenLogprob
from triolm.engine.sampler import Sampler
from triolm.engine.sampling_params import SamplingParams
from triolm.engine.scheduler import Scheduler
from triolm.engine.sequence import Sequence
from triolm.engine.window_blocks import WindowBlocks
from triolm.model.llama import LlamaModel

log = logging.getLogger(__name__)


@attrs.frozen
class EngineConfig:
    max_num_seqs: int = 16
    max_model_len: int = 2048
    block_size: int = 16
    kv_cache_bytes: int = 1 << 30  # upper bound; the cache never exceeds what max_num_seqs needs
    max_num_batched_tokens: int | None = None  # default: max_model_len
    kv_cache_dtype: str | None = None  # "float32" | "float16"; None: the model's dtype
    seed: int | None = None


@attrs.frozen
class StepOutput:
    """One new token of one request."""

    request_id: str
    token_id: int
    logprob: float
    top_logprobs: tuple[tuple[int, float], ...] | None
    finish: Finish | None  # why the request ended with this token; None while it runs
    num_prompt_tokens: int
    num_cached_prompt_tokens: int  # prompt tokens found in the prefix cache at admission
    num_prefilled_tokens: int  # tokens computed by prefill so far (cost of this request)
    # on a request's first token, when its params asked for them
    prompt_logprobs: tuple[PromptTokenLogprob, ...] | None = None
    weight_version: str = ""  # the weights that computed this token (LLMEngine.weight_version)


KV_CACHE_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def kv_cache_dtype(name: str | None, model_dtype: torch.dtype) -> torch.dtype:
    """The KV cache's element type: float16 halves its memory and the bytes a long-context
    decode step reads, at a measured cost in exactness (docs/kv-cache.md)."""
    if name is None:
        return model_dtype
    if name not in KV_CACHE_DTYPES:
        raise ValueError(f"kv_cache_dtype must be one of {sorted(KV_CACHE_DTYPES)}, not {name!r}")
    return KV_CACHE_DTYPES[name]


class LLMEngine:
    def __init__(self, model: LlamaModel, eos_token_ids: tuple[int, ...], config: EngineConfig = EngineConfig(),
                 weight_version: str = "default"):
        self.config = config
        self.model: LlamaModel | None = model  # None while released
        self.weight_version = weight_version
        c = model.config
        kv_dtype = kv_cache_dtype(config.kv_cache_dtype, model.dtype)
        token_bytes = 2 * c.num_key_value_heads * c.head_dim * kv_dtype.itemsize  # one layer's
        local = len(window_layers(model))
        window = None
        budget = config.kv_cache_bytes
        if local and c.sliding_window is not None:
            # sliding-window layers: a window's blocks per sequence, twice (a prefill after
            # a prefix hit reads the hit's window while storing its own), plus the scratch block
            per_seq = WindowBlocks.blocks_per_sequence(c.sliding_window, config.block_size)
            window = WindowBlocks(2 * per_seq * config.max_num_seqs, config.block_size, c.sliding_window)
            budget -= (window.num_blocks + 1) * config.block_size * local * token_bytes
        bytes_per_token = (c.num_hidden_layers - local) * token_bytes
        wanted_blocks = -(-config.max_model_len // config.block_size) * config.max_num_seqs
        budget_blocks = (max(0, budget) // (bytes_per_token * config.block_size) if bytes_per_token
                         else wanted_blocks)  # every layer is a sliding-window one
        num_blocks = max(1, min(wanted_blocks, budget_blocks))
        if num_blocks * config.block_size < config.max_model_len:
            log.warning("KV cache holds %d tokens, less than max_model_len %d",
                        num_blocks * config.block_size, config.max_model_len)
        self.eos_token_ids = tuple(eos_token_ids)
        self.block_manager = BlockManager(num_blocks, config.block_size, window)
        self.scheduler = Scheduler(self.block_manager, config.max_num_seqs,
                                   config.max_num_batched_tokens or max(config.max_model_len, 512))
        self.runner = ModelRunner(model, num_blocks, config.block_size, kv_dtype,
                                  window.num_blocks if window is not None else 0)
        self.sampler = Sampler(self.eos_token_ids, config.seed)
        self.sequences: dict[str, Sequence] = {}
        self._failures: list[tuple[str, Exception]] = []

    # -- requests ---------------------------------------------------------------------
    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        if request_id in self.sequences:
            raise ValueError(f"duplicate request id {request_id!r}")
        if len(prompt_token_ids) >= self.config.max_model_len:
            raise ValueError(f"prompt of {len(prompt_token_ids)} tokens leaves no room in "
                             f"max_model_len {self.config.max_model_len}")
        capacity = self.block_manager.num_blocks * self.config.block_size
        if len(prompt_token_ids) >= capacity:
            raise ValueError(f"prompt of {len(prompt_token_ids)} tokens exceeds the KV cache ({capacity} tokens)")
        seq = Sequence(request_id, prompt_token_ids, params)
        self.sequences[request_id] = seq
        self.scheduler.add(seq)

    def abort(self, request_id: str) -> bool:
        """Stop a request now (its client is gone) and free its cache blocks. False if it
        was not running."""
        return self.finish(request_id, finishes.aborted("its client stopped it"))

    def finish(self, request_id: str, finish: Finish) -> bool:
        """End a request for a reason found outside the token loop (a stop string in its
        detokenized text, the server stopping it) and free its cache blocks. False if it
        was not running (it ended by itself first: its own finish stands)."""
        seq = self.sequences.pop(request_id, None)
        if seq is None:
            return False
        seq.finish = finish
        self.scheduler.remove(seq)
        return True

    def forget_prefix(self, token_ids: list[int], keep_tokens: int = 0) -> int:
        return self.block_manager.forget_prefix(token_ids, keep_tokens)

    def abort_all(self, reason: str) -> dict[str, Finish]:
        """Stop every request now; their ids and how each ended."""
        finish = finishes.aborted(reason)
        ids = list(self.sequences)
        for request_id in ids:
            self.finish(request_id, finish)
        return dict.fromkeys(ids, finish)

    # -- weights and memory -----------------------------------------------------------
    def preempt_all(self) -> None:
        """Send every running sequence back to the waiting queue without its KV blocks:
        it is prefilled again (prompt and tokens so far) when stepping resumes."""
        self.scheduler.preempt_all()

    def swap_model(self, model: LlamaModel, weight_version: str) -> None:
        """Serve other weights of the same shapes from the next step on. No sequence may
        hold cache blocks (preempt or abort them first): their KV came from the old
        weights. The prefix cache is emptied for the same reason."""
        if self.block_manager.num_used:
            raise RuntimeError("swap_model with cache blocks in use: preempt or abort first")
        self.block_manager.reset_prefix_cache()
        self.model = model
        self.runner.set_model(model)
        self.weight_version = weight_version

    @property
    def kv_cache_resident(self) -> bool:
        return self.runner.kv_cache is not None

    def release_kv_cache(self) -> None:
        """Give the KV cache's memory back: sequences in flight are preempted (recomputed
        once the cache is back), cached prefixes forgotten. No step may run until
        `restore_kv_cache`."""
        self.preempt_all()
        self.block_manager.reset_prefix_cache()
        self.runner.release_cache()

    def restore_kv_cache(self) -> None:
        self.runner.allocate_cache()

    @property
    def weights_resident(self) -> bool:
        return self.model is not None

    def release_weights(self) -> None:
        """Drop the model (no step may run until `restore_weights`). Sequences keep their
        cache blocks: the same weights come back."""
        self.model = None
        self.runner.release_model()

    def restore_weights(self, model: LlamaModel) -> None:
        self.model = model
        self.runner.set_model(model)

    # -- stepping ---------------------------------------------------------------------
    def has_unfinished(self) -> bool:
        return self.scheduler.has_work()

    def call_before_layers(self, fn: Callable[[], None] | None) -> None:
        """Run `fn` in every step once the inputs are ready, right before the model's layers
        (see `ModelRunner.before_layers`)."""
        self.runner.before_layers = fn

    def step(self) -> list[StepOutput]:
        seqs, is_prefill = self.scheduler.schedule()
        if not seqs:
            return []
        if is_prefill:
            for seq in seqs:
                if seq.first_admission:
                    seq.num_prefix_hit_tokens = seq.num_cached_tokens
                    seq.first_admission = False
                seq.num_prefilled_tokens += len(seq) - seq.num_cached_tokens
        logits = self.runner.run(seqs, is_prefill)
        sampled = self.sampler(logits, seqs)
        outputs = []
        for seq, tok in zip(seqs, sampled, strict=True):
            if isinstance(tok, Exception):
                self._fail(seq, tok)
                continue
            seq.num_cached_tokens = len(seq)  # every token so far now has its KV
            self.block_manager.register_full_blocks(seq, seq.num_cached_tokens)
            seq.append(tok.token_id)
            error = self._advance_matcher(seq, tok.token_id)
            finish = finishes.failed(error) if error is not None else self._finish(seq, tok.token_id)
            outputs.append(StepOutput(seq.request_id, tok.token_id, tok.logprob, tok.top_logprobs,
                                      finish, seq.num_prompt_tokens, seq.num_prefix_hit_tokens,
                                      seq.num_prefilled_tokens,
                                      seq.prompt_logprobs if seq.num_generated == 1 else None,
                                      self.weight_version))
            if finish is not None:
                seq.finish = finish
                self.sequences.pop(seq.request_id, None)
                self.scheduler.remove(seq)
        return outputs

    @staticmethod
    def _advance_matcher(seq: Sequence, token_id: int) -> str | None:
        """Feed the sampled token to the sequence's grammar; its error if it failed (in
        this step's mask or on this token): that sequence alone ends with it."""
        if seq.matcher is None:
            return None
        if seq.matcher.error is None:
            try:
                seq.matcher.accept_token(token_id)
            except ValueError:
                pass  # the matcher now holds the error
        error = seq.matcher.error
        if error is not None:
            log.warning("grammar of %s failed: %s", seq.request_id, error.splitlines()[0] if error else "")
        return error
    def _fail(self, seq: Sequence, exc: Exception) -> None:
        """A failure this sequence alone caused: it ends here, the batch goes on."""
        log.warning("sequence %s failed: %s: %s", seq.request_id, type(exc).__name__, exc)
        seq.finish = finishes.failed(f"{type(exc).__name__}: {exc}")
        self.sequences.pop(seq.request_id, None)
        self.scheduler.remove(seq)
        self._failures.append((seq.request_id, exc))

    def pop_failures(self) -> list[tuple[str, Exception]]:
        """(request id, exception) of the sequences that failed alone since the last call."""
        failures, self._failures = self._failures, []
        return failures

    def _finish(self, seq: Sequence, token_id: int) -> Finish | None:
        """Whether `token_id`, just sampled, ends the sequence, and why."""
        p = seq.params
        stops = seq.matcher is not None and seq.matcher.is_terminated()  # only EOS could follow
        if seq.num_generated >= p.min_tokens:
            stops |= (not p.ignore_eos and token_id in self.eos_token_ids) or token_id in p.stop_token_ids
        if stops:
            if token_id in p.stop_token_ids:
                return finishes.stop_token(token_id)
            if token_id in self.eos_token_ids:
                return finishes.eos(token_id)
            return finishes.GRAMMAR_COMPLETE
        if seq.num_generated >= p.max_tokens or len(seq) >= self.config.max_model_len:
            return finishes.LENGTH
        return None

    # -- introspection ----------------------------------------------------------------
    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    @property
    def kv_cache_usage(self) -> float:
        """Fraction of cache blocks held by live sequences (0 when idle)."""
        return self.block_manager.num_used / self.block_manager.num_blocks


def generate_greedy(engine: LLMEngine, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    """Convenience for tests and benchmarks: run prompts to completion, greedy."""
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    results: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        engine.add_request(f"g{i}", prompt, params)
        results[f"g{i}"] = []
    with torch.inference_mode():
        while engine.has_unfinished():
            for out in engine.step():
                results[out.request_id].append(out.token_id)
    return [results[f"g{i}"] for i in range(len(prompts))]
