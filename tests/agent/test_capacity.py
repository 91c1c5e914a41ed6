"""How many networks a daemon can still create: pure arithmetic over pools and the
subnets taken (the real daemon: tests/agent/test_capacity_docker.py)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from agent.capacity import (
    DEFAULT_POOLS,
    Pool,
    free_networks,
    free_subnets,
    pools_from_info,
    taken_subnets,
)

net = ipaddress.IPv4Network


def test_dockers_default_pools_hold_31_networks() -> None:
    assert sum(p.subnets for p in DEFAULT_POOLS) == 31
    assert free_subnets(DEFAULT_POOLS, []) == 31
    # docker0 takes 172.17.0.0/16: 30 left, the 30th deployment is the last that fits
    assert free_subnets(DEFAULT_POOLS, [net("172.17.0.0/16")]) == 30


def test_configured_pools_come_from_info_and_bad_entries_are_skipped() -> None:
    info = {
        "DefaultAddressPools": [
            {"Base": "10.10.0.0/16", "Size": 24},
            {"Base": "fd00::/48", "Size": 64},  # IPv6: not counted
            {"Base": "garbage", "Size": 24},
            {"Base": "10.20.0.0/16", "Size": 8},  # size above the base: nonsense
        ]
    }
    assert pools_from_info(info) == (Pool(net("10.10.0.0/16"), 24),)
    assert pools_from_info({"DefaultAddressPools": None}) == DEFAULT_POOLS
    assert pools_from_info({}) == DEFAULT_POOLS


def test_a_taken_subnet_blocks_every_pool_subnet_it_overlaps() -> None:
    pools = [Pool(net("10.0.0.0/22"), 24)]  # 4 subnets
    assert free_subnets(pools, [net("10.0.1.0/24")]) == 3
    assert free_subnets(pools, [net("10.0.0.0/23")]) == 2  # one big network, two subnets
    assert free_subnets(pools, [net("10.0.2.16/28")]) == 3  # a small one inside one
    assert free_subnets(pools, [net("192.168.0.0/24")]) == 4  # elsewhere


def test_overlapping_pools_count_each_subnet_once() -> None:
    pools = [Pool(net("10.0.0.0/23"), 24), Pool(net("10.0.0.0/24"), 24)]
    assert free_subnets(pools, []) == 2


def test_a_huge_pool_is_counted_by_arithmetic() -> None:
    pools = [Pool(net("10.0.0.0/8"), 28)]  # 1,048,576 subnets
    assert free_subnets(pools, []) == 2**20
    assert free_subnets(pools, [net("10.0.0.0/24"), net("10.1.0.0/28")]) == 2**20 - 17


class _Api:
    def __init__(self, info: Any, networks: Any) -> None:
        self._info, self._networks = info, networks

    def info(self) -> Any:
        return self._info

    def networks(self) -> Any:
        if isinstance(self._networks, Exception):
            raise self._networks
        return self._networks


def _network(name: str, *subnets: str) -> dict[str, Any]:
    return {"Name": name, "IPAM": {"Config": [{"Subnet": s} for s in subnets]}}


def test_free_networks_reads_the_daemon_and_reserves_the_proxy_network() -> None:
    info = {"DefaultAddressPools": [{"Base": "10.9.0.0/22", "Size": 24}]}
    listing = [
        _network("bridge", "10.9.0.0/24"),
        _network("host"),
        {"Name": "none", "IPAM": {"Config": None}},
        _network("dual", "fd00::/64", "10.9.1.0/24"),
    ]
    assert [str(s) for s in taken_subnets(listing)] == ["10.9.0.0/24", "10.9.1.0/24"]
    api = _Api(info, listing)
    assert free_networks(api) == 2
    assert free_networks(api, reserved=["impreza-proxy"]) == 1
    assert free_networks(api, reserved=["bridge"]) == 2  # exists already


@pytest.mark.parametrize("networks", [OSError("daemon gone"), None])
def test_free_networks_is_none_when_the_daemon_does_not_say(networks: Any) -> None:
    assert free_networks(_Api({}, networks)) is None
