"""Fixtures shared by the test modules."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from processes import Cluster


@pytest.fixture
def cluster(tmp_path: Path):
    ports = []
    for _ in range(6):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    c = Cluster(tmp_path, ports)
    try:
        yield c
    finally:
        c.stop_all()
