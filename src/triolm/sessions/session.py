"""One session: its current nodes (one per branch) and, with track_tree, every node made."""

from __future__ import annotations

import itertools

import attrs

from triolm.sessions.node import Node


@attrs.define(eq=False)
class Session:
    uuid: str
    model_name: str
    tool_parser: str
    track_tree: bool
    created_at: float  # wall clock (seconds since the epoch), for clients
    last_accessed: float  # wall clock
    last_used: float  # monotonic clock, for idle expiry
    nodes: list[Node] = attrs.Factory(list)  # the leaves: what /nodes returns
    tree: list[Node] = attrs.Factory(list)  # with track_tree: every node, in creation order
    active: int = 0  # requests running now (an active session never expires)
    # Bumped by every record; nodes carry the revision that made them, and replaced
    # nodes are remembered with the revision that replaced them, so a trainer can ask
    # for just what changed since the revision it last saw.
    revision: int = 0
    replaced: list[tuple[int, int]] = attrs.Factory(list)  # (revision, id of the node replaced)
    backend: str | None = None  # in `triolm router`: the backend holding this session's prefix cache
    _ids: itertools.count = attrs.Factory(itertools.count)

    def new_node_id(self) -> int:
        return next(self._ids)

    def record(self, parent: Node | None, children: list[Node]) -> None:
        """Children of `parent` replace it (an extended node supersedes the old one; n > 1
        gives n branches). If `parent` was already replaced — a concurrent request of the
        same session extended it first — the children are added beside the other branch."""
        self.revision += 1
        for child in children:
            child.revision = self.revision
        index = next((i for i, n in enumerate(self.nodes) if n is parent), None)
        if parent is not None and index is not None:
            self.nodes[index:index + 1] = children
            self.replaced.append((self.revision, parent.id))
        else:
            self.nodes.extend(children)
        if self.track_tree:
            self.tree.extend(children)

    def changes_since(self, revision: int) -> tuple[list[Node], list[int]]:
        """(current nodes recorded after `revision`, ids of nodes replaced after it)."""
        nodes = [n for n in self.nodes if n.revision > revision]
        return nodes, [node_id for rev, node_id in self.replaced if rev > revision]

    def summary(self) -> dict:
        return {"uuid": self.uuid, "model_name": self.model_name, "tool_parser": self.tool_parser,
                "track_tree": self.track_tree, "created_at": self.created_at,
                "last_accessed": self.last_accessed, "num_nodes": len(self.nodes)}
