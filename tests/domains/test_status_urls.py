"""`reconcile status` shows where each app answers: its DOMAIN_URL (https, or http with
the port when TLS is off) and its onion address, and nothing for an uninstalled app."""

from __future__ import annotations

from reconciler.cli.status import app_urls
from reconciler.model.state import DeployedApp


def _app(**kw: object) -> DeployedApp:
    return DeployedApp.model_validate(
        {"id": "dpl_0123456789abcdef", "name": "api", "namespace": "n", "spec_hash": "h", **kw}
    )


def test_the_record_url_is_shown() -> None:
    assert app_urls(_app(), "https://api.example.com") == ["https://api.example.com"]
    assert app_urls(_app(), "http://api.localhost:8080") == ["http://api.localhost:8080"]


def test_no_url_without_a_record_url() -> None:
    assert app_urls(_app(), None) == []


def test_an_uninstalled_app_has_no_url() -> None:
    assert app_urls(_app(status="uninstalled"), "https://api.example.com") == []


def test_urls_and_onion_address_from_the_agent() -> None:
    onion = "a" * 56 + ".onion"
    both = _app(urls=["https://api.example.com", f"http://{onion}"], onion_address=onion)
    assert app_urls(both, "https://ignored.example.com") == [
        "https://api.example.com",
        f"http://{onion}",
    ]
    only_onion = _app(onion_address=onion)
    assert app_urls(only_onion, None) == [f"http://{onion}"]


def test_json_snapshot_carries_urls_and_onion_address() -> None:
    onion = "b" * 56 + ".onion"
    dumped = _app(urls=[f"http://{onion}"], onion_address=onion).model_dump(mode="json")
    assert dumped["urls"] == [f"http://{onion}"]
    assert dumped["onion_address"] == onion
