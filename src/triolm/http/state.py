"""Everything one running app owns: its settings and metrics, where it is in its life
(`Lifecycle`), the stores that outlive a model (sessions, stored responses) and, once the
model serves, its `Runtime`. Made per app (a CapacityLimiter bound at import time would tie
itself to the first event loop)."""

from __future__ import annotations

import time

import attrs
import trio

from triolm.protocol.errors import APIError
from triolm.protocol.responses_store import ResponseStore
from triolm.protocol.validation import ModelInfo
from triolm.runtime.lanes import PromptLanes
from triolm.runtime.lifecycle import Lifecycle
from triolm.runtime.metrics import Metrics
from triolm.runtime.runtime import Runtime
from triolm.sessions.registry import SessionRegistry
from triolm.settings import ServerSettings


@attrs.define(eq=False)
class AppState:
    settings: ServerSettings
    metrics: Metrics
    lifecycle: Lifecycle
    sessions: SessionRegistry
    responses: ResponseStore  # stored Responses API responses (previous_response_id)
    runtime: Runtime | None = None  # the model serving: there is none while loading or after a failure
    started_at: float = attrs.Factory(time.time)

    @property
    def ready(self) -> bool:
        return self.runtime is not None and not self.lifecycle.shutting_down

    def serving(self) -> Runtime:
        """The runtime, or the 503 saying why there is none."""
        if self.lifecycle.shutting_down:
            raise APIError(503, "server is shutting down", code="shutting_down")
        if self.runtime is None:
            failure = self.lifecycle.failure
            detail = str(failure) if failure is not None else f"model is loading ({self.lifecycle.stage})"
            raise APIError(503, f"model not ready: {detail}", code="model_not_ready")
        return self.runtime

    def require_generation(self) -> Runtime:
        """`serving()`, with a model served for generation (not embeddings)."""
        runtime = self.serving()
        if runtime.served.embedding is not None:
            raise APIError(400, f"the model `{runtime.served.name}` is served for embeddings (--task embed): "
                                "use /v1/embeddings", param="model", code="wrong_task")
        return runtime

    @property
    def lanes(self) -> PromptLanes:
        return self.serving().lanes

    @property
    def grammar_limiter(self) -> trio.CapacityLimiter:
        return self.serving().grammar_limiter

    def model_info(self, requested: str | None) -> ModelInfo:
        """What a generating request naming the model `requested` is resolved against
        (protocol.plan): a 503 while no model serves, a 400 for an embeddings model, a
        404 for another model's name."""
        runtime = self.require_generation()
        self.check_model_name(requested)
        served = runtime.served
        return ModelInfo(vocab_size=served.config.vocab_size, max_model_len=served.max_model_len,
                         max_n=self.settings.max_n, max_queue=runtime.driver.max_queue,
                         tool_parser=served.tool_parser, reasoning=served.reasoning is not None,
                         renders_tokens=served.mistral_tokenizer is not None)

    def check_model_name(self, requested: str | None) -> None:
        if requested and self.runtime is not None and requested != self.runtime.served.name:
            name = self.runtime.served.name
            raise APIError(404, f"The model `{requested}` does not exist. Served: `{name}`.",
                           param="model", code="model_not_found")
