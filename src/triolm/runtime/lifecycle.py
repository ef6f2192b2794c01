"""Where a serving process is in its life — loading (at which stage), serving, failed,
shutting down. This object is the one place that knows; the runtime, the app and the CLI
tell it what happened and read it back."""

from __future__ import annotations

import logging

import attrs
import trio

log = logging.getLogger("triolm")


@attrs.define(eq=False)
class Lifecycle:
    stage: str = "starting"  # what loading is doing now; "ready" once the model serves
    failure: BaseException | None = None  # why the model cannot serve (it never will again)
    shutting_down: bool = False
    failed: trio.Event = attrs.field(factory=trio.Event)  # set with `failure`: `triolm serve` exits 1

    def fail(self, failure: BaseException) -> None:
        self.failure = failure
        self.failed.set()

    def shut_down(self) -> None:
        """New work is refused from now on (503 `shutting_down`); running work finishes."""
        self.shutting_down = True

    @property
    def reason_not_ready(self) -> str:
        if self.shutting_down:
            return "shutting down"
        return str(self.failure) if self.failure is not None else self.stage
