"""The bundle format both sides agree on: what the server ships and what an agent accepts.

A bundle is a tar (plain, or gzip) of repository directories, paths relative to the
repository root.  It holds regular files and directories; a symlink only when the
repository itself had it pointing inside the shipped directory that holds it, and then
the server says so on the member with the pax keyword :data:`LINK_PAX_KEY` set to
:data:`LINK_INSIDE`.  Its target is written the way the server resolved it: relative,
through real directories only, so "inside" can be checked from the member list alone.
Hard links, devices and fifos never travel.

The marker is not a proof: an agent checks every link itself.  It makes the contract
explicit, so a tar that was not made by :func:`reconciler.server.worker.build_bundle`
(an old server, a hand-made tar, a tampered one) is refused with a reason instead of
being unpacked by a looser rule.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable

__all__ = ["LINK_INSIDE", "LINK_PAX_KEY", "link_scope"]

LINK_PAX_KEY = "RECONCILER.link"
LINK_INSIDE = "inside"


def link_scope(path: str, dirs: Iterable[str]) -> str:
    """The innermost shipped directory holding ``path`` (``""``: the bundle root).

    Innermost, because each shipped directory is copied on its own on the host (a build
    context into ``build/``, a bundle into the app dir): a link must stay inside the copy
    it travels in, not merely inside the bundle.
    """
    best = ""
    for d in dirs:
        d = posixpath.normpath(d).strip("/")
        if d in ("", ".") or path == d or path.startswith(d + "/"):
            d = "" if d == "." else d
            if len(d) > len(best):
                best = d
    return best
