"""What loading one repository may cost: expanded bytes, nodes, wall time, each file once.

Anyone who can push to a watched repository chooses what the loader does, and
``reconcile serve`` has one worker per source.  The YAML limits alone (aliases and nodes
per document) did not bound the *work*: an ``include:`` reached on N paths per level was
loaded N^8 times (127 s from under 2 KB of files), aliases over large scalars stay under
the node limit yet expand to gigabytes when a compose file is hashed (a 220 KB repository
took 24 s and 4 GB in ``plan``, an 881 KB one died with ``MemoryError``), and a var
interpolated into a string many times made a 196 KB compose file cost 2 GB.

So one :class:`Budget` travels with each load of a repository.  It counts every node and
every byte a document *expands* to (an alias costs what it stands for, as it will cost
when the compose file is rendered and hashed), the bytes interpolation produces, and the
wall time per deployment file (with everything it pulls in) and per repository.  Each
file is parsed once, keyed by its resolved path, however many paths reach it.  Crossing a
limit is an :class:`~reconciler.model.errors.InvalidSpec` placed in the file that crossed
it and naming the limit, so the repository fails its own reconcile with a clear event and
the server goes on.  Because everything after loading (rendering, the spec hash, the plan)
is linear in what loading accepted, these limits bound those steps too; no subprocess is
needed (measured: a repository at the byte limit plans in well under a second).
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Budget", "BudgetExceeded", "Limits"]

MiB = 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class Limits:
    """The defaults leave a normal repository far below them: the 1,000 deployment files
    of ``benchmarks/validate.py`` (1,201 YAML files) expand to 0.15 MB and 20,605 nodes,
    and load in about 0.4 s."""

    expanded_bytes: int = 64 * MiB  # every YAML document, aliases expanded, plus interpolation
    nodes: int = 2_000_000  # every YAML node, aliases expanded, over the whole repository
    file_seconds: float = 10.0  # one deployment file and every file it pulls in
    repo_seconds: float = 120.0  # the whole repository


class BudgetExceeded(Exception):
    """A limit of :class:`Limits` was crossed; the caller places it in a file.

    ``repo_wide`` says whether every later file would fail too (bytes, nodes, the
    repository's time), so the loader stops instead of reporting the same thing again.
    """

    def __init__(self, rule: str, message: str, fix: str, *, repo_wide: bool) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message
        self.fix = fix
        self.repo_wide = repo_wide


_BYTES_FIX = (
    "write large values once instead of aliasing or interpolating them many times, "
    "or move large content out of the repository"
)


@dataclass(eq=False)
class Budget:
    """The counters of one repository load, checked against :class:`Limits`.

    ``clock`` is injectable so a test can run out of time without waiting for it.
    """

    limits: Limits = field(default_factory=Limits)
    clock: Callable[[], float] = time.monotonic
    bytes: int = 0
    nodes: int = 0
    exhausted: BudgetExceeded | None = None
    # Each file once: resolved path -> the loaded Document, or the InvalidSpec it raised.
    documents: dict[pathlib.Path, Any] = field(default_factory=dict)
    # A nested compose file's policy findings, by (resolved path, host ports allowed).
    checked: dict[tuple[pathlib.Path, bool], Any] = field(default_factory=dict)
    _started: float = field(init=False)
    _file_started: float = field(init=False)

    def __post_init__(self) -> None:
        self._started = self._file_started = self.clock()

    def start_file(self) -> None:
        """A new deployment file: its own :attr:`Limits.file_seconds` start now."""
        self._file_started = self.clock()

    def room(self, nodes: int, nbytes: int) -> None:
        """Raise unless ``nodes`` and ``nbytes`` more still fit (nothing is charged)."""
        if self.bytes + nbytes > self.limits.expanded_bytes:
            self._fail(
                "budget-bytes",
                "the repository's YAML expands to more than "
                f"{_size(self.limits.expanded_bytes)} (limit expanded_bytes, aliases and "
                "interpolated vars counted in full)",
                _BYTES_FIX,
                repo_wide=True,
            )
        if self.nodes + nodes > self.limits.nodes:
            self._fail(
                "budget-nodes",
                f"the repository's YAML expands to more than {self.limits.nodes:,} nodes "
                "(limit nodes, aliases counted in full)",
                "write the values out instead of aliasing them, or split the repository",
                repo_wide=True,
            )

    def fits(self, nodes: int, nbytes: int) -> bool:
        """Whether ``nodes`` and ``nbytes`` more fit, without raising (nothing is charged)."""
        return (
            self.bytes + nbytes <= self.limits.expanded_bytes
            and self.nodes + nodes <= self.limits.nodes
        )

    def charge(self, nodes: int, nbytes: int) -> None:
        """Count ``nodes`` and ``nbytes`` as spent, after :meth:`room` said they fit."""
        self.room(nodes, nbytes)
        self.nodes += nodes
        self.bytes += nbytes

    def tick(self) -> None:
        """Raise once this file or this repository has taken longer than it may."""
        now = self.clock()
        if now - self._started > self.limits.repo_seconds:
            self._fail(
                "budget-time",
                f"loading the repository took more than {self.limits.repo_seconds:g} s "
                "(limit repo_seconds); this file was being checked then",
                "split the repository, or flatten include/extends chains and aliases",
                repo_wide=True,
            )
        if now - self._file_started > self.limits.file_seconds:
            self._fail(
                "budget-time",
                f"checking this deployment took more than {self.limits.file_seconds:g} s "
                "(limit file_seconds, with every file it includes)",
                "flatten include/extends chains and aliases in this deployment",
                repo_wide=False,
            )

    def _fail(self, rule: str, message: str, fix: str, *, repo_wide: bool) -> None:
        exc = BudgetExceeded(rule, message, fix, repo_wide=repo_wide)
        if repo_wide:
            self.exhausted = exc
        raise exc


def _size(n: int) -> str:
    return f"{n // MiB} MiB" if n % MiB == 0 else f"{n:,} bytes"
