"""The heartbeat grid (agent.cadence): a slow answer must not move an agent's phase."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.cadence import Cadence


def fixed(value: float):  # type: ignore[no-untyped-def]
    return lambda low, high: low + value * (high - low)


def test_the_phase_is_drawn_once_within_the_first_interval() -> None:
    cadence = Cadence(10.0, 100.0, fixed(0.25))
    assert cadence.anchor == 102.5
    assert cadence.next_due(100.0) == 102.5  # before the first slot: the first slot


def test_a_late_answer_keeps_the_grid_and_skips_the_missed_slot() -> None:
    cadence = Cadence(10.0, 0.0, fixed(0.3))  # slots at 3, 13, 23, 33 ...
    # Answered at once: the next slot.
    assert cadence.next_due(3.01) == 13.0
    # The server took 14 s to answer the report of slot 3 (a rollout's backlog): the
    # agent reports at 23, its own slot, not "10 s after the answer" (27) like the rest of
    # the fleet answered out of the same backlog, and not twice to catch up.
    assert cadence.next_due(17.0) == 23.0
    assert cadence.delay(17.0) == pytest.approx(6.0)


def test_two_agents_answered_together_stay_apart() -> None:
    a = Cadence(10.0, 0.0, fixed(0.1))  # slots at 1, 11, 21 ...
    b = Cadence(10.0, 0.0, fixed(0.6))  # slots at 6, 16, 26 ...
    answered = 18.0  # both answers came out of one backlog at the same moment
    assert a.next_due(answered) == 21.0
    assert b.next_due(answered) == 26.0


def test_a_new_interval_keeps_the_phase() -> None:
    cadence = Cadence(10.0, 0.0, fixed(0.2))  # slots at 2, 12, 22 ...
    cadence.set_interval(5.0, 14.0)
    assert cadence.next_due(14.0) == 17.0  # 12 stays a slot, then every 5 s
    assert cadence.next_due(17.5) == 22.0
    cadence.set_interval(5.0, 30.0)  # the same interval again changes nothing
    assert cadence.next_due(30.0) == 32.0
    cadence.set_interval(0.0, 30.0)  # nor does a nonsense one from a server
    assert cadence.interval == 5.0


def test_a_shorter_interval_before_the_first_slot_brings_the_slot_within_it() -> None:
    # The agent starts with its default (10 s); the server's first answer says 1 s: the
    # first slot, drawn 7.5 s ahead, must not hold heartbeats back for 7.5 s (the server
    # would count the agent offline after three missed seconds).
    cadence = Cadence(10.0, 0.0, fixed(0.75))
    cadence.set_interval(1.0, 0.2)
    assert 0.2 < cadence.next_due(0.2) <= 1.2
    assert cadence.next_due(0.2) == pytest.approx(0.2 + (7.5 - 0.2) % 1.0)
    assert cadence.next_due(cadence.next_due(0.2)) == pytest.approx(cadence.next_due(0.2) + 1.0)


def test_an_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Cadence(0.0, 0.0)


@given(
    interval=st.floats(min_value=0.5, max_value=600),
    start=st.floats(min_value=0, max_value=1e6),
    phase=st.floats(min_value=0, max_value=1),
    later=st.floats(min_value=0, max_value=1e5),
)
def test_the_next_slot_is_ahead_within_one_interval_and_on_the_grid(
    interval: float, start: float, phase: float, later: float
) -> None:
    cadence = Cadence(interval, start, fixed(phase))
    now = start + later
    due = cadence.next_due(now)
    assert due > now or (now < cadence.anchor and due == cadence.anchor)
    assert due - now <= interval * (1 + 1e-9)
    steps = (due - cadence.anchor) / interval
    assert steps >= 0
    assert math.isclose(steps, round(steps), abs_tol=1e-6)
