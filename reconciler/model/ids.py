"""Stable identities derived from names, so no stored state is needed to find an app."""

from __future__ import annotations

import hashlib
import re

__all__ = [
    "AGENT_ID_RE",
    "COMMAND_ID_RE",
    "DEPLOYMENT_ID_RE",
    "LABEL_DEPLOYMENT",
    "LABEL_NAME",
    "LABEL_NAMESPACE",
    "LABEL_SPEC_HASH",
    "LOCAL_AGENT",
    "NAME_RE",
    "auto_domain",
    "deployment_id",
]

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{1,98}[a-z0-9]$")
AGENT_ID_RE = re.compile(r"^agt_[0-9a-f]{16}$")
DEPLOYMENT_ID_RE = re.compile(r"^dpl_[0-9a-f]{16}$")
# The server makes cmd_<16 hex>; agents name journal files and URLs after it.
COMMAND_ID_RE = re.compile(r"^cmd_[A-Za-z0-9_-]{1,64}$")
LOCAL_AGENT = "local"

# Labels on everything we run: the only way we ever recognise a container as ours.
LABEL_NAMESPACE = "io.reconciler.namespace"
LABEL_DEPLOYMENT = "io.reconciler.deployment"
LABEL_SPEC_HASH = "io.reconciler.spec-hash"
LABEL_NAME = "io.reconciler.name"


def deployment_id(namespace: str, name: str) -> str:
    """``dpl_<16 hex>`` from namespace and name: stable across reconciles and hosts."""
    digest = hashlib.sha256(f"deployment\0{namespace}\0{name}".encode()).hexdigest()
    return f"dpl_{digest[:16]}"


def auto_domain(namespace: str, name: str, base_domain: str, attempt: int = 0) -> str:
    """``<name>-<6 hex>.<base>``; ``attempt`` moves to fresh hex after a clash."""
    seed = f"domain\0{namespace}\0{name}\0{attempt}".encode()
    return f"{name}-{hashlib.sha256(seed).hexdigest()[:6]}.{base_domain}"
