"""Pure logic of the server's budgets: the refused-event bucket and the text cap."""

from __future__ import annotations

from reconciler.server.fields import clip
from reconciler.server.hooks import EventBudget


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_bucket_lets_a_burst_through_then_refills_at_its_rate() -> None:
    clock = Clock()
    budget = EventBudget(10, clock=clock)
    assert [budget.take("a")[0] for _ in range(12)] == [True] * 10 + [False] * 2
    assert budget.take("b") == (True, 0)  # another address has its own bucket
    clock.now += 6  # one event's worth (10 a minute)
    assert budget.take("a") == (True, 2)  # and it says how many were left out
    assert budget.take("a") == (False, 0)


def test_the_bucket_remembers_a_bounded_number_of_addresses() -> None:
    clock = Clock()
    budget = EventBudget(1, max_sources=3, clock=clock)
    for address in ("a", "b", "c", "d"):
        assert budget.take(address)[0]
    assert budget.take("d") == (False, 0)
    assert budget.take("a") == (True, 0)  # forgotten: a full bucket again


def test_clip_keeps_short_text_and_marks_a_cut() -> None:
    assert clip("short", 10) == "short"
    cut = clip("x" * 10_000, 100)
    assert len(cut) <= 100
    kept = len(cut) - len(cut.lstrip("x"))
    assert cut == "x" * kept + f"… [cut by the server: {10_000 - kept} of 10000 characters dropped]"
