"""The control plane fixtures of tests/server, for the day-2 API tests."""

from tests.server.conftest import plane, remote

__all__ = ["plane", "remote"]
