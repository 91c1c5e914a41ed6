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
