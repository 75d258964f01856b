"""Embedded PostgreSQL's data lives under the demo's data directory, so `make clean` removes it."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from citybrain.harness import pg_base_dir
from citybrain.platform import Platform
from citybrain.settings import Settings


def _open_dir() -> Path:
    # Under the system temp dir with o+x, as `var/` in a checkout is (pytest's own tmp dirs are 0700).
    d = Path(tempfile.mkdtemp(prefix="citybrain-pgdir-"))
    d.chmod(0o755)
    return d


def test_the_platforms_postgres_data_is_under_its_data_dir() -> None:
    root = _open_dir()
    try:
        platform = Platform.from_settings(Settings(data_dir=root / "var"), data_dir=root / "var")
        assert platform.services.pg_base() == (root / "var").resolve() / "postgres"
        assert pg_base_dir(root / "var") == (root / "var").resolve() / "postgres"
    finally:
        shutil.rmtree(root)


def test_without_a_data_dir_or_when_the_postgres_user_cannot_reach_it_it_is_the_temp_dir(tmp_path: Path) -> None:
    assert pg_base_dir() == Path(tempfile.gettempdir()) / f"citybrain-pg-{os.getuid()}"
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    closed.chmod(0o700)
    expected = closed.resolve() / "var" / "postgres" if os.geteuid() != 0 else pg_base_dir()
    assert pg_base_dir(closed / "var") == expected
