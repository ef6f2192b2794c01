"""Everything one running router owns. Made per app; its Trio and httpx objects are made
inside the running event loop (a CapacityLimiter made at import time binds to the
first loop)."""

from __future__ import annotations

import time

import attrs
import httpx

from triolm.router.backends import BackendPool
from triolm.router.frontend import PromptFrontend
from triolm.router.router_metrics import RouterMetrics
from triolm.router.settings import RouterSettings
from triolm.runtime.lanes import PromptLanes
from triolm.sessions.registry import SessionRegistry


@attrs.define
class RouterState:
    settings: RouterSettings
    frontend: PromptFrontend
    pool: BackendPool
    sessions: SessionRegistry
    metrics: RouterMetrics
    client: httpx.AsyncClient | None = None
    lanes: PromptLanes | None = None
    shutting_down: bool = False
    started_at: float = attrs.Factory(time.time)
