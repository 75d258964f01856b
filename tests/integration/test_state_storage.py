"""How PostgreSQL stores the detector state documents (migration 0434)."""

from __future__ import annotations

import psycopg
import pytest

pytestmark = pytest.mark.integration


def test_detector_states_are_not_compressed_with_pglz(database_url: str) -> None:
    """A device's detector states (~3.5 KB, rewritten every batch) are compressed with lz4 where
    the server has it, else kept inline and uncompressed: pglz on them was most of PostgreSQL's
    CPU per state write."""
    with psycopg.connect(database_url) as conn:
        lz4 = conn.execute(
            "select 'lz4' = any(enumvals) from pg_settings where name = 'default_toast_compression'"
        ).fetchone()
        compression = conn.execute(
            "select attcompression from pg_attribute where attrelid = 'anomaly_state'::regclass and attname = 'states'"
        ).fetchone()
        options = conn.execute("select reloptions from pg_class where oid = 'anomaly_state'::regclass").fetchone()
    assert lz4 is not None and compression is not None and options is not None
    if lz4[0]:
        assert compression[0] == "l"
    else:
        assert "toast_tuple_target=8160" in (options[0] or [])
