"""Digests that stand in for values nobody may read: env values in records and reports.

In the model layer (stdlib only) so that an agent's observer can compare a value it
reads now against the digest in a record without importing the render layer.
"""

from __future__ import annotations

import hashlib

__all__ = ["digest", "value_digest"]


def digest(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def value_digest(dpl_id: str, key: str, value: str) -> str:
    """Digest of one env value, salted by deployment and key: comparable, not guessable."""
    return digest("env", dpl_id, key, value)[:16]
