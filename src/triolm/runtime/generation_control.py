"""What an RL trainer switches between training steps: whether the engine steps, whether
new requests are taken, which memory is given back, which weights are served.

One small object owned by the engine driver. The event loop writes it through the
driver (under the driver's lock); the engine thread reads it between steps.
"""

from __future__ import annotations

import attrs

#: Pause modes. "queue" and "reject": sequences in flight stop stepping where they are
#: (their KV kept); new requests queue until generation continues, or are refused with
#: a 503. The peers' modes (new requests queue in each): "abort" ends the sequences in
#: flight (finish_reason "abort"), "wait" lets them finish first, "retract" sends them
#: back to waiting without their KV (recomputed on continue). Aliases: SGLang's
#: "in_place" and vLLM's "keep" are "queue".
PAUSE_MODES = ("queue", "reject", "abort", "wait", "retract")
PAUSE_MODE_ALIASES = {"in_place": "queue", "keep": "queue"}
#: What `release_memory_occupation` can give back (SGLang's tags).
MEMORY_TAGS = ("kv_cache", "weights")


class GenerationPaused(Exception):
    """Generation is paused in "reject" mode: a new request gets a 503 now."""


@attrs.define
class GenerationControl:
    weight_version: str = "default"
    pending_weight_version: str | None = None  # loaded, waiting for its swap
    paused: bool = False
    pause_mode: str = "queue"
    released: frozenset[str] = frozenset()  # MEMORY_TAGS given back

    @property
    def may_step(self) -> bool:
        """The engine steps only when not paused and its memory is all there."""
        return not self.paused and not self.released

    def check_accepting(self) -> None:
        if self.paused and self.pause_mode == "reject":
            raise GenerationPaused("generation is paused (mode 'reject'): retry after "
                                   "POST /continue_generation")

    def to_json(self) -> dict:
        return {"weight_version": self.weight_version,
                "weight_update_pending": self.pending_weight_version,
                "generation": "paused" if self.paused else "running",
                "pause_mode": self.pause_mode if self.paused else None,
                "memory": {tag: "released" if tag in self.released else "resident" for tag in MEMORY_TAGS}}
