"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from edge_site import Site, deployment


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    """An edge deployment in ``tmp_path`` (certificates for 127.0.0.1, a registry); every
    process started through it is killed at the end."""
    with deployment(tmp_path) as made:
        yield made
