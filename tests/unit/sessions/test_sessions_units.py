"""Sessions without a server: node building and extension matching, branch replacement,
tree tracking, the registry's limits, idle expiry and prefix freeing (a fake clock)."""

from __future__ import annotations

import pytest

from triolm.sessions.node import MASK, PROMPT_LOGPROB, Generated, Node, build_node, find_extension, find_token_extension
from triolm.sessions.registry import SessionNotFound, SessionRegistry, TooManySessions, common_block_prefix
from triolm.sessions.session import Session


def gen(ids, text, stop_text=None, finish="length"):
    return Generated(token_ids=list(ids), logprobs=[-0.5 - i for i in range(len(ids))], text=text,
                     finish_reason=finish, stop_text=stop_text, metadata={"num_prefilled_tokens": 7})


def test_fresh_node_masks_prompt_and_keeps_generated_logprobs():
    node = build_node(0, None, [10, 11, 12], "P:", gen([20, 21], "ab"))
    assert node.tokens == [10, 11, 12, 20, 21]
    assert node.masked_tokens == [MASK, MASK, MASK, 20, 21]
    assert node.logprobs == [PROMPT_LOGPROB] * 3 + [-0.5, -1.5]
    assert node.full_text == "P:ab"
    assert node.parent_id is None
    assert node.metadata["num_steps"] == 1 and node.metadata["num_prefilled_tokens"] == 7


def test_extended_node_keeps_parent_tokens_and_logprobs_untouched():
    parent = build_node(0, None, [1, 2], "P", gen([3], "x"))
    child = build_node(1, parent, [4, 5], "Px<next>", gen([6, 7], "yz"))
    assert child.tokens == [1, 2, 3, 4, 5, 6, 7]
    assert child.masked_tokens == [MASK, MASK, 3, MASK, MASK, 6, 7]  # turn 1 stays unmasked
    assert child.logprobs == [1.0, 1.0, -0.5, 1.0, 1.0, -0.5, -1.5]
    assert child.full_text == "Px<next>yz"
    assert child.parent_id == 0
    assert child.metadata["num_steps"] == 2 and len(child.metadata["steps"]) == 2


def test_build_node_rejects_mismatched_logprobs():
    with pytest.raises(ValueError):
        build_node(0, None, [1], "", Generated([2, 3], [-1.0], "t", "stop", None, {}))


def test_extension_picks_the_longest_matching_node():
    short = Node(0, None, [1], [MASK], [1.0], "AB")
    long = Node(1, None, [1, 2], [MASK, 2], [1.0, -1.0], "ABCD")
    other = Node(2, None, [9], [MASK], [1.0], "XY")
    ext = find_extension([short, long, other], "ABCDEF")
    assert ext.parent is long and ext.suffix_text == "EF" and not ext.stop_token_stands_in
    assert find_extension([short, long, other], "ABX").parent is short
    fresh = find_extension([short, long, other], "Q")
    assert fresh.parent is None and fresh.suffix_text == "Q"


def test_generated_stop_token_stands_in_for_the_template_text_it_renders_as():
    node = Node(0, None, [1, 2], [MASK, 2], [1.0, -1.0], "Px", stop_text="<|im_end|>")
    ext = find_extension([node], "Px<|im_end|>\n<|im_start|>user")
    assert ext.parent is node and ext.stop_token_stands_in
    assert ext.suffix_text == "\n<|im_start|>user"  # the terminator is not added a second time
    # a template rendering some other terminator: the stop token stays, the text follows
    ext = find_extension([node], "Px<END>\nuser")
    assert ext.parent is node and not ext.stop_token_stands_in and ext.suffix_text == "<END>\nuser"


def test_token_level_extension_for_token_renderers():
    a = Node(0, None, [1, 2, 3], [MASK] * 3, [1.0] * 3, "")
    b = Node(1, None, [1, 2], [MASK] * 2, [1.0] * 2, "")
    parent, rest = find_token_extension([b, a], [1, 2, 3, 4])
    assert parent is a and rest == [4]
    parent, rest = find_token_extension([a], [1, 5, 3, 4])
    assert parent is None and rest == [1, 5, 3, 4]


def test_logprobs_are_json_safe():
    node = Node(0, None, [1], [1], [float("-inf")], "")
    assert node.to_json()["logprobs"] == [-9999.0]


def _session(track_tree=False) -> Session:
    return Session("u", "m", "hermes", track_tree, 0.0, 0.0, 0.0)


def test_children_replace_their_parent_and_n_gives_branches():
    s = _session(track_tree=True)
    root = build_node(s.new_node_id(), None, [1], "", gen([2], "a"))
    other = build_node(s.new_node_id(), None, [7], "", gen([8], "b"))
    s.record(None, [root, other])
    kids = [build_node(s.new_node_id(), root, [3], "a?", gen([4 + i], "c")) for i in range(2)]
    s.record(root, kids)
    assert s.nodes == [kids[0], kids[1], other]  # root replaced in place by its 2 branches
    assert [n.id for n in s.tree] == [0, 1, 2, 3]  # the tree keeps the replaced node
    assert [n.parent_id for n in s.tree] == [None, None, 0, 0]


def test_a_parent_already_replaced_gets_a_sibling_branch():
    s = _session()
    root = build_node(0, None, [1], "", gen([2], "a"))
    s.record(None, [root])
    first = build_node(1, root, [3], "a!", gen([4], "x"))
    second = build_node(2, root, [3], "a!", gen([5], "y"))  # a concurrent request, same parent
    s.record(root, [first])
    s.record(root, [second])
    assert s.nodes == [first, second]
    assert s.tree == []  # no tree unless asked


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class FakeDriver:
    class engine:
        class block_manager:
            block_size = 4

    def __init__(self):
        self.calls = []

    def call_soon(self, fn):
        forgotten = []

        class Engine:
            def forget_prefix(self, tokens, keep_tokens=0):
                forgotten.append((list(tokens), keep_tokens))

        fn(Engine())
        self.calls.append(forgotten)


def test_registry_limit_lookup_and_delete():
    reg = SessionRegistry(max_sessions=2, idle_timeout=None)
    a = reg.create("m", "hermes")
    reg.create("m", "hermes", track_tree=True)
    with pytest.raises(TooManySessions):
        reg.create("m", "hermes")
    assert len(reg) == 2
    assert reg.get(a.uuid) is a
    reg.delete(a.uuid)
    with pytest.raises(SessionNotFound, match="deleted"):
        reg.get(a.uuid)
    with pytest.raises(SessionNotFound):
        reg.get("nonexistent-uuid")
    assert reg.create("m", "hermes")  # room again
    assert len(reg.list()) == 2


def test_idle_sessions_expire_unless_used_or_busy():
    clock = Clock()
    reg = SessionRegistry(max_sessions=10, idle_timeout=60.0, clock=clock)
    idle, touched, busy = (reg.create("m", "hermes") for _ in range(3))
    clock.now += 40
    reg.get(touched.uuid)  # restarts its idle clock
    with reg.using(busy):
        clock.now += 30  # 70 s since creation
        assert {s.uuid for s in reg.list()} == {touched.uuid, busy.uuid}
    with pytest.raises(SessionNotFound, match="expired after 60 s idle"):
        reg.get(idle.uuid)
    clock.now += 59
    # busy's clock restarted when its request ended; touched was last used 89 s ago
    assert [s.uuid for s in reg.list()] == [busy.uuid]
    clock.now += 2
    assert len(reg) == 0


def test_deleting_forgets_prefixes_but_keeps_blocks_other_sessions_start_with():
    driver = FakeDriver()
    reg = SessionRegistry(max_sessions=10, idle_timeout=None)
    reg.attach(driver)
    shared = [1, 2, 3, 4, 5, 6, 7, 8]
    a, b = reg.create("m", "hermes"), reg.create("m", "hermes")
    a.record(None, [Node(0, None, shared + [10, 11, 12, 13, 14], [], [], "")])
    b.record(None, [Node(0, None, shared + [20, 21, 22, 23], [], [], "")])
    reg.delete(a.uuid)
    assert driver.calls == [[(shared + [10, 11, 12, 13, 14], 8)]]  # the 2 shared blocks stay
    reg.delete(b.uuid)
    assert driver.calls[1] == [(shared + [20, 21, 22, 23], 0)]  # nobody left: forget it all
    empty = reg.create("m", "hermes")
    reg.delete(empty.uuid)
    assert len(driver.calls) == 2  # nothing cached, nothing to forget


def test_common_block_prefix_counts_whole_blocks():
    assert common_block_prefix([1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 7], 2) == 4
    assert common_block_prefix([1, 2, 3], [1, 2, 3], 2) == 2
    assert common_block_prefix([9], [1], 2) == 0
