"""Credentials out of everything the reconciler prints, logs, stores or serves.

A URL's userinfo (``https://user:token@host``, ``https://token@host``) is a credential.
The loaders refuse such URLs, but the refusal itself, a clone error, a log line or an
event would still carry the URL, and a malformed one (a bad port, say) cannot even be
parsed to find the userinfo.  So redaction works on text, not on parsed URLs: anything
shaped ``scheme://userinfo@`` has its userinfo replaced, wherever it appears in a
message (up to the first ``@``: a malformed URL may have a ``/`` in its password, and
redacting an ``@`` in a path too is the cheaper mistake).  ``ssh://git@host`` keeps its
user name: for ssh it is an account, not a secret (a password after it is redacted).
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["REDACTED", "redact", "redact_fields"]

REDACTED = "***"

_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^\s@'\"<>]*?)@")


def _replace(match: re.Match[str]) -> str:
    scheme, userinfo = match["scheme"], match["userinfo"]
    if scheme.lower().startswith("ssh") and ":" not in userinfo:
        return match[0]
    return f"{scheme}{REDACTED}@"


def redact(text: str) -> str:
    """``text`` with the userinfo of every URL in it replaced by ``***``."""
    return _USERINFO.sub(_replace, text) if "://" in text else text


def redact_fields(value: Any) -> Any:
    """``redact`` applied to every string in a JSON-like value (keys included)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_fields(k): redact_fields(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_fields(v) for v in value]
    return value
