"""Fixtures the integration modules share (the servers and per-test databases are in ``tests/conftest.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from psycopg_pool import AsyncConnectionPool


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[AsyncConnectionPool]:
    """An open connection pool on the test's own database."""
    p = AsyncConnectionPool(database_url, min_size=1, max_size=8, open=False)
    await p.open(wait=True)
    try:
        yield p
    finally:
        await p.close()
