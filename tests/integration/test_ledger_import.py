"""Bulk import into real PostgreSQL: bad rows reported, good rows in, idempotent re-runs, grid cells assigned."""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
from pathlib import Path

import numpy as np
import psycopg
import pytest

from citybrain.devices_cli import register
from citybrain.settings import Settings
from devices import importer
from devices.code import DeviceCode
from devices.credentials import verify_mosquitto
from devices.importer import import_file
from devices.models import ModelRegistry
from geo.districts import load_districts
from geo.sample import random_points_in

pytestmark = pytest.mark.integration

DISTRICTS = ["350203", "350205", "350206", "350211", "350212", "350213"]
HEADER = ["code", "serial", "district", "class_code", "model", "name", "lon", "lat", "contact", "attributes"]


def _good_rows(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    # Each device lies inside the district its code names (the importer checks it).
    outlines = {d.code: d.geometry for d in load_districts()}
    np_rng = np.random.default_rng(seed)
    points = {d: random_points_in(outlines[d], n // 6 + 1, np_rng) for d in DISTRICTS}
    rows = []
    for i in range(n):
        d = DISTRICTS[i % 6]
        if i % 10 == 9:  # one row in ten has no code: allocated by district + class, found again by serial
            rows.append(
                {
                    "serial": f"SN{i:07d}",
                    "district": d,
                    "class_code": "0701",
                    "model": "smart-pole",
                    "name": f"pole {i}",
                }
            )
            continue
        rows.append(
            {
                "code": DeviceCode.build(d, "0308", 1 + i).full,
                "model": "air-micro",
                "name": f"微站 {i}",
                "lon": f"{points[d][0][i // 6]:.6f}",
                "lat": f"{points[d][1][i // 6]:.6f}",
                "contact": f"138{i:08d}",
                "attributes": json.dumps({"sensor_vendor": rng.choice(["A", "B"])}) if i % 4 == 0 else "",
            }
        )
    return rows


def _csv(rows: list[dict[str, str]], bad: dict[int, str] | None = None) -> str:
    """CSV text; ``bad`` maps a data-row index to a raw line inserted before it."""
    out = io.StringIO()
    w = csv.DictWriter(out, HEADER, lineterminator="\n")
    w.writeheader()
    for i, row in enumerate(rows):
        if bad and i in bad:
            out.write(bad[i] + "\n")
        w.writerow(row)
    return out.getvalue()


def _count(url: str, query: str = "select count(*) from devices") -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(query).fetchone()
        assert row is not None
        return int(row[0])


def test_import_100k_with_bad_rows_then_rerun_is_idempotent(database_url: str, models: ModelRegistry) -> None:
    n = 100_000
    rows = _good_rows(n, seed=3)
    first = DeviceCode.build("350206", "0308", 3).full
    typo = first[:16] + ("0" if first[16] != "0" else "1")
    bad = {
        10: f"{typo},,,,air-micro,typo,,,,",
        500: f"{DeviceCode.build('350206', '0308', 900_001).full},,,,air-station,wrong class fits,121.47,31.23,,",
        20_000: f"{DeviceCode.build('350206', '0399', 1).body},,,,air-micro,unknown class,,,,",
        40_000: f"{DeviceCode.build('350206', '0308', 900_002).full},,,,no-model,x,,,,",
        60_000: f"{DeviceCode.build('350206', '0701', 900_003).full},,,,air-micro,mismatch,,,,",
        70_000: f"{rows[0]['code']},,,,air-micro,duplicate,,,,",
        80_000: "a,b,c",
        90_000: f"{DeviceCode.build('350206', '0308', 900_004).full},,,,air-micro,swapped,24.5,118.1,,",
        95_000: f"{DeviceCode.build('350206', '0308', 900_005).full},,,,air-micro,in Siming,118.08,24.46,,",
        99_000: f"{DeviceCode.build('350203', '0308', 900_006).full},,,,air-micro,at sea,118.2,24.4,,",
    }
    text = _csv(rows, bad)
    seen: list[int] = []
    with psycopg.connect(database_url) as conn:
        report = import_file(conn, io.StringIO(text), "csv", models, actor="test", progress=seen.append)
    assert report.rows == n + len(bad)
    assert report.inserted == n and report.updated == 0 and report.unchanged == 0
    assert report.allocated == n // 10
    reasons = {i.line: i.reason for i in report.issues}
    assert len(reasons) == len(bad), reasons
    # Header is line 1, row i is line i + 2, plus one line per inserted bad row before it.
    assert "check character" in reasons[10 + 2]
    assert "outside Xiamen" in reasons[500 + 3]
    assert "unknown class 0399" in reasons[20_000 + 4]
    assert "unknown model" in reasons[40_000 + 5]
    assert "does not fit class 0701" in reasons[60_000 + 6]
    assert "duplicate code" in reasons[70_000 + 7] and "line 2" in reasons[70_000 + 7]
    assert "malformed CSV row" in reasons[80_000 + 8]
    assert "swapped" in reasons[90_000 + 9]
    assert "is in district 350203 思明区, but the row says 350206 湖里区" in reasons[95_000 + 10]
    assert "outside the city" in reasons[99_000 + 11] and "nearest is" in reasons[99_000 + 11]
    assert seen and seen[-1] == report.rows
    assert _count(database_url) == n
    assert _count(database_url, "select count(*) from device_state_history where reason = 'bulk import'") == n
    assert (
        _count(database_url, "select count(*) from devices where serial is not null and length(code) = 17") == n // 10
    )
    # Every located device got the 单元网格 cell of its location, in its own district.
    located = _count(database_url, "select count(*) from devices where lon is not null")
    assert located == n - n // 10
    assert _count(database_url, "select count(*) from devices where grid like district || '%'") == located

    # Same file again: nothing changes, nothing is allocated twice.
    with psycopg.connect(database_url) as conn:
        again = import_file(conn, io.StringIO(text), "csv", models, actor="test")
    assert (again.inserted, again.updated, again.unchanged, again.rejected) == (0, 0, n, len(bad))
    assert _count(database_url) == n

    # Edit two rows (one with a code, one found by serial) and dry-run, then apply.
    rows[1]["name"] = "renamed"
    rows[9]["name"] = "pole renamed"
    edited = _csv(rows[:20])
    with psycopg.connect(database_url) as conn:
        dry = import_file(conn, io.StringIO(edited), "csv", models, actor="test", dry_run=True)
        assert (dry.updated, dry.unchanged, dry.dry_run) == (2, 18, True)
        assert _count(database_url, "select count(*) from devices where name like '%renamed'") == 0
        applied = import_file(conn, io.StringIO(edited), "csv", models, actor="test")
    assert (applied.inserted, applied.updated, applied.unchanged) == (0, 2, 18)
    assert _count(database_url, "select count(*) from devices where name like '%renamed'") == 2


def test_json_import_and_serial_conflicts(database_url: str, models: ModelRegistry) -> None:
    a, b = DeviceCode.build("350211", "0308", 1).full, DeviceCode.build("350211", "0308", 2).full
    items = [
        {"code": a, "model": "air-station", "serial": "S-1", "lon": 118.1, "lat": 24.6, "attributes": {"k": 1}},
        {"serial": "S-2", "district": "350211", "class_code": "0308", "model": "air-station"},
    ]
    text = "\n".join(json.dumps(i) for i in items) + "\n"
    with psycopg.connect(database_url) as conn:
        first = import_file(conn, io.StringIO(text), "json", models)
        assert (first.inserted, first.allocated, first.rejected) == (2, 1, 0)
        # The allocated code is the next after the highest one in use.
        row = conn.execute("select code from devices where serial = 'S-2'").fetchone()
        assert row is not None and row[0] == b
        clash = json.dumps(
            {"code": DeviceCode.build("350211", "0308", 3).full, "model": "air-station", "serial": "S-1"}
        )
        misfit = json.dumps({"serial": "S-2", "district": "350203", "class_code": "0308", "model": "air-station"})
        second = import_file(conn, io.StringIO(clash + "\n" + misfit + "\n"), "json", models)
    assert second.inserted == 0
    assert [i.line for i in second.issues] == [1, 2]
    assert "already belongs to device " + a in second.issues[0].reason
    assert "another district or class" in second.issues[1].reason


def test_chunked_merge_allocates_above_codes_named_later_in_the_file(
    database_url: str, models: ModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Named rows merge chunk by chunk while the next is validated; rows without a code wait
    for the whole file, so allocation never hands out a code a later chunk names."""
    monkeypatch.setattr(importer, "MERGE_CHUNK", 2)
    monkeypatch.setattr(importer, "PLACE_CHUNK", 2)
    named = [DeviceCode.build("350211", "0308", seq).full for seq in (1, 2, 7)]
    items = [
        {"serial": "U-1", "district": "350211", "class_code": "0308", "model": "air-station"},
        {"code": named[0], "model": "air-station", "serial": "N-1"},
        {"code": named[1], "model": "air-station"},
        {"serial": "U-2", "district": "350211", "class_code": "0308", "model": "air-station"},
        {"code": named[2], "model": "air-station"},  # a later chunk names sequence 7
        {"code": DeviceCode.build("350211", "0308", 9).full, "model": "air-station", "serial": "N-1"},
    ]
    text = "\n".join(json.dumps(i) for i in items) + "\n"
    with psycopg.connect(database_url) as conn:
        report = import_file(conn, io.StringIO(text), "json", models)
        assert (report.inserted, report.allocated) == (5, 2)
        # Line 6 repeats a serial of line 2: refused by the validator, whatever the chunks.
        assert [i.line for i in report.issues] == [6]
        allocated = [
            r[0] for r in conn.execute("select code from devices where serial like 'U-%' order by serial").fetchall()
        ]
        assert allocated == [DeviceCode.build("350211", "0308", seq).full for seq in (8, 9)]
        again = import_file(conn, io.StringIO(text), "json", models)
    assert (again.inserted, again.updated, again.allocated) == (0, 0, 0)


def test_cli_import_export_credentials_mosquitto_files(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    settings = Settings(database_url=database_url)

    def run(*argv: str) -> int:
        args = parser.parse_args(list(argv))
        return int(args.func(args, settings))

    src = tmp_path / "in.csv"
    src.write_text(_csv(_good_rows(30, seed=1), {5: "bad,row"}), encoding="utf-8")
    assert run("devices", "import", str(src), "--dry-run") == 1
    assert _count(database_url) == 0
    assert run("devices", "import", str(src), "--report", str(tmp_path / "r.json")) == 1
    out = capsys.readouterr()
    assert f"{src}:7: malformed CSV row" in out.out and "rows/s" in out.err
    assert json.loads((tmp_path / "r.json").read_text())["inserted"] == 30

    exported = tmp_path / "out.csv"
    assert run("devices", "export", str(exported)) == 0
    assert len(exported.read_text().splitlines()) == 31
    assert run("devices", "import", str(exported)) == 0  # the export re-imports as "unchanged"
    assert "30 unchanged" in capsys.readouterr().err

    code = DeviceCode.build("350203", "0308", 1).full
    assert run("devices", "credentials", "rotate", code) == 0
    secret = capsys.readouterr().out.split("secret:")[1].split()[0]
    assert run("devices", "mosquitto-files", str(tmp_path / "mq"), "--service-user", "gateway:gateway-secret-1") == 0
    lines = (tmp_path / "mq" / "passwd").read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == ["gateway", code]
    assert verify_mosquitto(secret, lines[1].split(":", 1)[1])
    assert oct((tmp_path / "mq" / "passwd").stat().st_mode & 0o777) == "0o600"
    assert "pattern write citybrain/up/%u/#" in (tmp_path / "mq" / "acl").read_text()
    assert run("devices", "credentials", "revoke", code[:16]) == 0
    assert run("devices", "credentials", "rotate", "35020303089999990") == 2
