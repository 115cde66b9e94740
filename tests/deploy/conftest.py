"""Fixtures for the deploy tests (terraform, Dockerfile, Lambda entry, deploy.sh, smoke.sh)."""

from __future__ import annotations

import socket

import pytest


@pytest.fixture
def unused_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
