"""Everything one running app owns. Made per app, and its Trio objects per event loop
(a CapacityLimiter bound at import time would tie itself to the first loop)."""

from __future__ import annotations

import time

import attrs
import trio

from triolm.loading.served_model import ServedModel
from triolm.protocol.errors import APIError
from triolm.protocol.responses_store import ResponseStore
from triolm.protocol.validation import RequestLimits
from triolm.runtime.engine_driver import EngineDriver
from triolm.runtime.lanes import PromptLanes
from triolm.runtime.metrics import Metrics
from triolm.settings import ServerSettings


@attrs.define
class AppState:
    settings: ServerSettings
    metrics: Metrics
    served: ServedModel | None = None
    driver: EngineDriver | None = None
    lanes: PromptLanes | None = None
    tokenize_limiter: trio.CapacityLimiter | None = None  # the large lane
    grammar_limiter: trio.CapacityLimiter | None = None  # grammar compiles: a lane of their own
    loading: str = "starting"
    load_error: str | None = None
    shutting_down: bool = False
    fatal: trio.Event | None = None
    sessions: object | None = None  # triolm.sessions.registry.SessionRegistry
    responses: ResponseStore | None = None  # stored Responses API responses (previous_response_id)
    started_at: float = attrs.Factory(time.time)

    @property
    def ready(self) -> bool:
        return self.served is not None and self.driver is not None and not self.shutting_down

    def require_ready(self) -> tuple[ServedModel, EngineDriver]:
        if self.shutting_down:
            raise APIError(503, "server is shutting down", code="shutting_down")
        if self.served is None or self.driver is None:
            detail = self.load_error or f"model is loading ({self.loading})"
            raise APIError(503, f"model not ready: {detail}", code="model_not_ready")
        return self.served, self.driver

    def require_generation(self) -> tuple[ServedModel, EngineDriver]:
        """`require_ready`, and a model served for generation (not embeddings)."""
        served, driver = self.require_ready()
        if served.embedding is not None:
            raise APIError(400, f"the model `{served.name}` is served for embeddings (--task embed): "
                                "use /v1/embeddings", param="model", code="wrong_task")
        return served, driver

    def check_model_name(self, requested: str | None) -> None:
        if requested and self.served is not None and requested != self.served.name:
            raise APIError(404, f"The model `{requested}` does not exist. Served: `{self.served.name}`.",
                           param="model", code="model_not_found")


def request_limits(state: AppState) -> RequestLimits:
    served, driver = state.require_ready()
    return RequestLimits(vocab_size=served.config.vocab_size, max_model_len=served.max_model_len,
                         max_n=state.settings.max_n, max_queue=driver.max_queue)
