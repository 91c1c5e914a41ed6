"""The Caddy config for HTTPS: which names get the local CA, and HTTP -> HTTPS redirects
that point at the port the host really publishes."""

from __future__ import annotations

from typing import Any

import pytest

from agent.proxy import desired_config, publicly_certifiable, routes_from_config

MIXED = {
    "app.example.com": "dpl_1-app:80",
    "dev.localhost": "dpl_2-app:80",
    "printer.local": "dpl_3-app:80",
    "10.0.0.7": "dpl_4-app:80",
    "intranet": "dpl_5-app:80",
    "x" * 56 + ".onion": "dpl_6-app:80",
}


def _policies(config: dict[str, Any]) -> list[dict[str, Any]]:
    policies: list[dict[str, Any]] = (
        config["apps"].get("tls", {}).get("automation", {}).get("policies", [])
    )
    return policies


@pytest.mark.parametrize(
    ("domain", "public"),
    [
        ("example.com", True),
        ("www.example.co.uk", True),
        ("shop.example.org.", True),
        ("localhost", False),
        ("api-1a2b3c.localhost", False),
        ("nas.local", False),
        ("git.corp.internal", False),
        ("router.home.arpa", False),
        ("site.test", False),
        ("demo.example", False),
        ("nothing.invalid", False),
        ("box.lan", False),
        ("127.0.0.1", False),
        ("::1", False),
        ("intranet", False),
    ],
)
def test_publicly_certifiable(domain: str, public: bool) -> None:
    assert publicly_certifiable(domain) is public


def test_auto_gives_private_names_the_local_ca_and_public_ones_to_acme() -> None:
    config = desired_config(MIXED, "auto")
    assert _policies(config) == [
        {
            "subjects": ["10.0.0.7", "dev.localhost", "intranet", "printer.local"],
            "issuers": [{"module": "internal"}],
        }
    ]
    # The public name is in no policy: Caddy's default issuers (ACME) take it.
    assert "app.example.com" not in str(_policies(config))
    assert config["apps"]["pki"]["certificate_authorities"]["local"]["install_trust"] is False


def test_internal_covers_every_clearnet_name_and_no_onion() -> None:
    config = desired_config(MIXED, "internal")
    (policy,) = _policies(config)
    assert policy["subjects"] == sorted(d for d in MIXED if not d.endswith(".onion"))


def test_standard_https_port_keeps_caddys_own_redirects() -> None:
    config = desired_config(MIXED, "internal")
    http, https = (
        config["apps"]["http"]["servers"]["http"],
        config["apps"]["http"]["servers"]["https"],
    )
    assert "automatic_https" not in https
    assert all(
        h["handler"] != "static_response" or h["status_code"] == 404
        for r in http["routes"]
        for h in r["handle"]
    )


def test_other_https_port_redirects_to_that_port() -> None:
    config = desired_config(MIXED, "internal", https_port=8443)
    servers = config["apps"]["http"]["servers"]
    assert servers["https"]["automatic_https"] == {"disable_redirects": True}
    redirect = next(
        r for r in servers["http"]["routes"] if r["handle"][0].get("status_code") == 308
    )
    assert redirect["match"] == [{"host": sorted(d for d in MIXED if not d.endswith(".onion"))}]
    assert redirect["handle"][0]["headers"]["Location"] == [
        "https://{http.request.host}:8443{http.request.uri}"
    ]
    # The onion route stays plain HTTP on :80, before the redirect and the 404.
    first = servers["http"]["routes"][0]
    assert first["match"][0]["host"][0].endswith(".onion")
    assert servers["http"]["routes"][-1]["handle"][0]["status_code"] == 404
    # Reading the routes back still gives the upstreams, not the redirects.
    assert routes_from_config(config) == MIXED


def test_tls_off_has_no_redirect_and_no_certificates() -> None:
    config = desired_config(MIXED, "off", https_port=8443)
    assert "tls" not in config["apps"] and "pki" not in config["apps"]
    assert "308" not in str(config)
