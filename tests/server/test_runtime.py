"""The server's GC tuning (reconciler.server.runtime): frozen start-up, a larger young gen."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from reconciler.server.config import ServerConfig
from reconciler.server.runtime import DEFAULT_YOUNG_THRESHOLD, tune_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_gc")
def test_tuning_freezes_what_exists_and_raises_the_young_threshold() -> None:
    gc.unfreeze()
    _, middle, old = gc.get_threshold()
    built = [{"an": "object made at start-up"} for _ in range(100)]
    assert tune_gc(12_345) is True
    assert gc.get_threshold() == (12_345, middle, old)
    assert gc.get_freeze_count() >= len(built)
    # Frozen objects are in no generation: a full collection no longer walks them.
    assert not any(o is built for o in gc.get_objects(2))


@pytest.mark.usefixtures("restored_gc")
def test_zero_leaves_cpythons_collector_alone() -> None:
    gc.unfreeze()
    before = gc.get_threshold()
    assert tune_gc(0) is False
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_the_setting_defaults_to_the_tuned_value_and_refuses_a_negative() -> None:
    assert ServerConfig(source="/srv/repo").gc_young_threshold == DEFAULT_YOUNG_THRESHOLD
    assert ServerConfig(source="/srv/repo", gc_young_threshold=0).gc_young_threshold == 0
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        ServerConfig(source="/srv/repo", gc_young_threshold=-1)
