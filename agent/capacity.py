"""How many more networks the Docker daemon can create: its address pools minus what is taken.

Every deployment is a compose project, and each project makes at least one bridge network
from the daemon's ``default-address-pools``.  Docker's built-in pools hold 31 networks
(15 /16s in 172.17-31, 16 /20s in 192.168.0.0/16; moby ``libnetwork/ipamutils``), and one
goes to ``docker0``, so on a stock daemon the 30th deployment fails at ``up`` with "could
not find an available, non-overlapping IPv4 address pool".  The agent reports this figure
so the planner can block what does not fit, with the reason, before anything runs.

``docker info`` lists ``DefaultAddressPools`` (API 1.41+) only when they are configured;
an empty or missing list means the built-in ones.  A subnet of a pool is free when no
existing network's IPv4 subnet overlaps it, which is the test Docker's allocator makes.
The figure is a best estimate (the daemon may also skip subnets that overlap the host's
own routes), which is why the plan's hint says how to raise the limit, not only that it
was reached.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_POOLS",
    "Pool",
    "free_networks",
    "free_subnets",
    "pools_from_info",
    "taken_subnets",
]

log = logging.getLogger(__name__)

IPv4Net = ipaddress.IPv4Network


@dataclass(frozen=True)
class Pool:
    """One entry of ``default-address-pools``: a base range cut into ``/size`` subnets."""

    base: IPv4Net
    size: int

    @property
    def subnets(self) -> int:
        return int(2 ** max(0, self.size - self.base.prefixlen))


#: Docker's built-in local pools when ``default-address-pools`` is not set.
DEFAULT_POOLS: tuple[Pool, ...] = (
    *(Pool(IPv4Net(f"172.{n}.0.0/16"), 16) for n in range(17, 32)),
    Pool(IPv4Net("192.168.0.0/16"), 20),
)

#: Above this many subnets in one pool, count by arithmetic instead of walking them all
#: (a /8 cut into /28s is a million subnets).
_WALK_LIMIT = 65_536


def pools_from_info(info: Mapping[str, Any]) -> tuple[Pool, ...]:
    """The pools a daemon allocates from, per its ``/info``; Docker's defaults when unset.

    IPv6 pools are left out: a compose network is IPv4 unless it asks for IPv6, and the
    IPv4 pools are what runs out.  Malformed entries are skipped rather than guessed at.
    """
    raw = info.get("DefaultAddressPools") or []
    pools: list[Pool] = []
    for entry in raw if isinstance(raw, list) else []:
        try:
            base = ipaddress.ip_network(str(entry["Base"]), strict=False)
            size = int(entry["Size"])
        except (KeyError, TypeError, ValueError):
            continue
        if isinstance(base, IPv4Net) and base.prefixlen <= size <= 32:
            pools.append(Pool(base, size))
    return tuple(pools) if pools else DEFAULT_POOLS


def free_subnets(pools: Sequence[Pool], taken: Iterable[IPv4Net]) -> int:
    """How many ``/size`` subnets of ``pools`` overlap none of ``taken`` (pure).

    Pools that overlap each other are counted once per distinct subnet, as Docker hands
    each subnet out at most once.
    """
    used = sorted(set(taken), key=lambda n: (int(n.network_address), n.prefixlen))
    seen: set[IPv4Net] = set()
    free = 0
    for pool in pools:
        if pool.subnets > _WALK_LIMIT:
            free += _free_by_arithmetic(pool, used)
            continue
        for subnet in pool.base.subnets(new_prefix=pool.size):
            if subnet in seen:
                continue
            seen.add(subnet)
            if not any(subnet.overlaps(n) for n in used):
                free += 1
    return free


def _free_by_arithmetic(pool: Pool, used: Sequence[IPv4Net]) -> int:
    """Subnets of a huge pool minus those each taken network blocks (overlaps counted once
    per taken network: an estimate, good enough at this scale)."""
    blocked = 0
    for net in used:
        if not net.overlaps(pool.base):
            continue
        if net.prefixlen >= pool.size:
            blocked += 1
        else:
            blocked += 2 ** (pool.size - max(net.prefixlen, pool.base.prefixlen))
    return max(0, pool.subnets - blocked)


def taken_subnets(networks: Iterable[Mapping[str, Any]]) -> list[IPv4Net]:
    """The IPv4 subnets of ``GET /networks`` entries (IPAM ``Config[].Subnet``)."""
    out: list[IPv4Net] = []
    for net in networks:
        for config in ((net.get("IPAM") or {}).get("Config")) or []:
            try:
                subnet = ipaddress.ip_network(str(config.get("Subnet")), strict=False)
            except (AttributeError, ValueError):
                continue
            if isinstance(subnet, IPv4Net):
                out.append(subnet)
    return out


def free_networks(
    api: Any, info: Mapping[str, Any] | None = None, *, reserved: Iterable[str] = ()
) -> int | None:
    """How many more networks the daemon behind ``api`` can create for deployments; None
    when it does not say (an unknown capacity blocks nothing).  Never raises.

    ``reserved``: networks the first install makes anyway (the proxy network); each one
    that does not exist yet is one subnet fewer for the deployments.
    """
    try:
        details = info if info is not None else api.info()
        networks = list(api.networks())
    except Exception as exc:  # the SDK raises requests/docker/OS errors
        log.debug("listing networks failed: %s", exc)
        return None
    names = {str(n.get("Name")) for n in networks}
    missing = sum(1 for name in set(reserved) if name not in names)
    free = free_subnets(pools_from_info(details), taken_subnets(networks))
    return max(0, free - missing)
