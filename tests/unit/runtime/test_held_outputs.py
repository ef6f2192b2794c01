"""The engine driver hands a small step's outputs out early in the next step (right
before its layers), a big step's at once, and never loses or reorders any."""

from __future__ import annotations

from triolm.runtime.engine_driver import _HeldOutputs


def test_a_small_step_is_held_until_the_next_step_hands_it_out():
    delivered = []
    held = _HeldOutputs(delivered.append)
    held.hold(["a1"])
    assert delivered == []
    held.hand_out()  # the next step's layers are about to run
    held.hand_out()  # (nothing twice)
    assert delivered == [["a1"]]


def test_a_step_that_ran_no_layers_does_not_delay_the_one_before():
    delivered = []
    held = _HeldOutputs(delivered.append)
    held.hold(["a1"])
    held.hold(["a2"])  # no hand_out in between: the first goes out first
    held.hand_out()
    assert delivered == [["a1"], ["a2"]]


def test_a_big_step_goes_out_at_once():
    delivered = []
    held = _HeldOutputs(delivered.append)
    big = [f"r{i}" for i in range(_HeldOutputs.MAX_HELD + 1)]
    held.hold(["small"])
    held.hold(big)
    assert delivered == [["small"], big]
    held.hand_out()
    assert delivered == [["small"], big]
