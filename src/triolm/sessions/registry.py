"""All sessions of one server: creation within a limit, lookup, deletion, idle expiry.

Sessions live on the event loop (no locks: every method is synchronous). Expiry is
lazy: every registry call first drops the sessions idle for longer than the timeout,
so no background task is needed and a client never sees a session outlive it.
Deleting or expiring a session tells the engine to forget the cached KV blocks of its
prefixes, except the leading blocks another live session still starts with (a shared
system prompt stays cached for the others).
"""

from __future__ import annotations

import builtins
import time
import uuid as uuidlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from triolm.runtime.engine_driver import EngineDriver
from triolm.sessions.session import Session

_GONE_MEMORY = 4096  # ids of deleted/expired sessions remembered, for clearer 404s


class SessionNotFound(LookupError):
    def __init__(self, session_id: str, reason: str | None = None):
        self.session_id = session_id
        self.reason = reason
        detail = f" ({reason})" if reason else ""
        super().__init__(f"session {session_id!r} not found{detail}")


class TooManySessions(Exception):
    pass


def common_block_prefix(a: list[int], b: list[int], block_size: int) -> int:
    """Length of the common prefix of a and b, in whole blocks (as the prefix cache sees it)."""
    n, i = min(len(a), len(b)), 0
    while i + block_size <= n and a[i:i + block_size] == b[i:i + block_size]:
        i += block_size
    return i


class SessionRegistry:
    def __init__(self, max_sessions: int, idle_timeout: float | None,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time):
        self.max_sessions = max_sessions
        self.idle_timeout = idle_timeout if idle_timeout and idle_timeout > 0 else None
        self._clock = clock
        self._wall = wall_clock
        self._sessions: dict[str, Session] = {}
        self._gone: OrderedDict[str, str] = OrderedDict()
        self._driver: EngineDriver | None = None

    # -- wiring -----------------------------------------------------------------------
    def attach(self, driver: EngineDriver) -> None:
        """Called once the model serves: its engine forgets the prefixes sessions free."""
        self._driver = driver

    @property
    def block_size(self) -> int:
        return self._driver.engine.block_manager.block_size if self._driver is not None else 16

    # -- the registry -----------------------------------------------------------------
    def __len__(self) -> int:
        self.sweep()
        return len(self._sessions)

    def create(self, model_name: str, tool_parser: str, track_tree: bool = False) -> Session:
        self.sweep()
        if len(self._sessions) >= self.max_sessions:
            hint = (f"; idle sessions expire after {self.idle_timeout:g} s" if self.idle_timeout else "")
            raise TooManySessions(f"the server already holds the maximum of {self.max_sessions} "
                                  f"sessions: delete finished ones (DELETE /{{uuid}}){hint}")
        now = self._wall()
        session = Session(uuid=str(uuidlib.uuid4()), model_name=model_name, tool_parser=tool_parser,
                          track_tree=track_tree, created_at=now, last_accessed=now,
                          last_used=self._clock())
        self._sessions[session.uuid] = session
        return session

    def list(self) -> list[Session]:
        self.sweep()
        return list(self._sessions.values())

    def get(self, session_id: str) -> Session:
        """The session (its idle clock restarts), or SessionNotFound."""
        self.sweep()
        session = self._sessions.get(session_id)
        if session is None:
            raise SessionNotFound(session_id, self._gone.get(session_id))
        self._touch(session)
        return session

    def is_live(self, session: Session) -> bool:
        return self._sessions.get(session.uuid) is session

    def delete(self, session_id: str) -> Session:
        session = self.get(session_id)
        self._remove(session, "deleted")
        return session

    @contextmanager
    def using(self, session: Session) -> Iterator[Session]:
        """Mark a request in progress: the session does not expire under it."""
        session.active += 1
        self._touch(session)
        try:
            yield session
        finally:
            session.active -= 1
            self._touch(session)

    def sweep(self) -> builtins.list[Session]:
        """Drop the sessions idle for longer than the timeout; returns them."""
        if self.idle_timeout is None:
            return []
        deadline = self._clock() - self.idle_timeout
        expired = [s for s in self._sessions.values() if s.active == 0 and s.last_used < deadline]
        for session in expired:
            self._remove(session, f"expired after {self.idle_timeout:g} s idle")
        return expired

    # -- internals --------------------------------------------------------------------
    def _touch(self, session: Session) -> None:
        session.last_used = self._clock()
        session.last_accessed = self._wall()

    def _remove(self, session: Session, reason: str) -> None:
        del self._sessions[session.uuid]
        self._gone[session.uuid] = reason
        while len(self._gone) > _GONE_MEMORY:
            self._gone.popitem(last=False)
        self._forget_prefixes(session)

    def _forget_prefixes(self, session: Session) -> None:
        if self._driver is None or not session.nodes:
            return
        block = self.block_size
        others = [n.tokens for s in self._sessions.values() for n in s.nodes]
        work = []
        for node in session.nodes:
            keep = max((common_block_prefix(node.tokens, t, block) for t in others), default=0)
            if keep < len(node.tokens) // block * block:
                work.append((node.tokens, keep))
        if work:
            self._driver.call_soon(lambda engine: [engine.forget_prefix(t, keep) for t, keep in work])
