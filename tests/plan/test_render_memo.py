"""The compose-text memo of rendering (reconciler.render.rendering._dump): a push that
changes a tenth of the deployments emits only those, and the text never differs from what
the emitter writes."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.render import rendering

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=20),
)
documents = st.dictionaries(
    st.text(min_size=1, max_size=12),
    st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(st.text(min_size=1, max_size=12), inner, max_size=4)
        ),
        max_leaves=12,
    ),
    max_size=5,
)


@settings(max_examples=200, deadline=None)
@given(documents)
def test_the_memo_gives_the_emitters_text_first_and_every_time_after(doc: dict[str, Any]) -> None:
    expected = rendering._emit(dict(doc))
    assert rendering._dump(doc) == expected
    assert rendering._dump(doc) == expected  # from the memo now


def test_an_unchanged_document_is_emitted_once(monkeypatch: Any) -> None:
    emitted: list[dict[str, Any]] = []
    real = rendering._emit

    def counting(document: dict[str, Any]) -> str:
        emitted.append(document)
        return real(document)

    monkeypatch.setattr(rendering, "_emit", counting)
    doc = {"services": {"app": {"image": "busybox:1.36", "environment": {"V": "memo-test 1"}}}}
    first = rendering._dump(doc)
    again = rendering._dump(
        {"services": {"app": {"image": "busybox:1.36", "environment": {"V": "memo-test 1"}}}}
    )
    assert again == first and len(emitted) == 1
    changed = rendering._dump(
        {"services": {"app": {"image": "busybox:1.36", "environment": {"V": "memo-test 2"}}}}
    )
    assert "memo-test 2" in changed and len(emitted) == 2


def test_values_that_look_alike_are_not_confused() -> None:
    # The key is the repr: 1, "1", True and 1.0 are four documents with four texts.
    texts = {rendering._dump({"v": value}) for value in (1, "1", True, 1.0)}
    assert len(texts) == 4
    # Key order is part of the document (compose files keep the author's order).
    assert rendering._dump({"a": 1, "b": 2}) != rendering._dump({"b": 2, "a": 1})


class Tagged(str):
    """A str subclass: its repr is a plain str's, so it must not be memoized."""


def test_a_value_of_a_subclass_is_never_memoized() -> None:
    assert rendering._memo_key({"v": Tagged("x")}) is None
    assert rendering._memo_key({"v": ("a", "tuple")}) is None
    assert rendering._memo_key({1: "an int key"}) is None
    assert rendering._memo_key({"v": ["x", {"y": 1.5}]}) is not None


def test_the_memo_stays_bounded(monkeypatch: Any) -> None:
    monkeypatch.setattr(rendering._memo, "size", 8)
    for i in range(50):
        rendering._dump({"bounded": i})
    assert len(rendering._memo) <= 8


def test_the_memo_drops_the_least_recently_used_entry() -> None:
    from reconciler.model.memo import Memo

    memo: Memo[str] = Memo(2)
    memo.put(b"a", "A")
    memo.put(b"b", "B")
    assert memo.get(b"a") == "A"  # used: b is now the oldest
    memo.put(b"c", "C")
    assert (memo.get(b"a"), memo.get(b"b"), memo.get(b"c")) == ("A", None, "C")
    assert len(memo) == 2
