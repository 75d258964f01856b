"""Bulk import of devices from CSV or JSON into the ledger (100k+ rows).

Every row goes through :class:`devices.rows.RowValidator`; bad rows are
reported with their line number and reason and never touch the ledger. Good
rows are streamed with ``COPY`` into a temporary staging table, then merged in
set-based statements, all in ONE transaction: either every good row is in the
ledger afterwards, or (on an error) none is. A row is never half-imported.

Idempotent: a re-run of the same file changes nothing and reports every row
as unchanged. Rows without a code get one allocated (by district and class),
and their ``serial`` finds that same device again on the next run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

import psycopg

from devices.errors import ImportFileError, LedgerError
from devices.ledger import allocate_codes
from devices.models import ModelRegistry
from devices.rows import ImportRow, Parsed, RowIssue, RowValidator, read_csv, read_json

__all__ = ["ImportReport", "import_file", "import_rows"]

log = logging.getLogger(__name__)

Progress = Callable[[int], None]

_STAGE_COLUMNS = (
    "line",
    "code",
    "serial",
    "district",
    "class_code",
    "model",
    "device_class",
    "name",
    "lon",
    "lat",
    "crs",
    "grid",
    "owner_unit",
    "installer",
    "contact",
    "install_date",
    "attributes",
)

_CREATE_STAGE = """
create temp table import_stage (
    line integer primary key, code text, serial text, district text not null, class_code text not null,
    model text not null, device_class text not null, name text not null, lon double precision,
    lat double precision, crs text not null, grid text, owner_unit text, installer text, contact text,
    install_date date, attributes jsonb not null
) on commit drop
"""
_COPY_STAGE = "copy import_stage ({}) from stdin".format(", ".join(_STAGE_COLUMNS))

# A row that names a code but carries a serial already used by another device.
_SERIAL_CONFLICTS = """
delete from import_stage s using devices d
where d.serial = s.serial and s.code is not null and d.code <> s.code
returning s.line, s.code, s.serial, d.code
"""
# A row without a code whose serial is known: it is that device again, if it fits.
_SERIAL_MISFITS = """
delete from import_stage s using devices d
where s.code is null and d.serial = s.serial
  and (substr(d.code, 1, 6) <> s.district or substr(d.code, 7, 4) <> s.class_code)
returning s.line, s.serial, d.code
"""
_SERIAL_MATCH = """
update import_stage s set code = d.code from devices d where s.code is null and d.serial = s.serial
"""
# With the highest sequence the file itself uses in that district and class:
# allocation must not hand out a code that a later row of the file names.
_NEEDS_CODE = """
select s.district, s.class_code, array_agg(s.line order by s.line),
       (select coalesce(max(substr(t.code, 11, 6)::int), 0) from import_stage t
        where t.code is not null and substr(t.code, 1, 10) = s.district || s.class_code)
from import_stage s where s.code is null group by s.district, s.class_code order by 1, 2
"""
# Empty cells keep what the ledger has: a file with fewer columns never erases data.
_MERGED = """
coalesce(s.serial, d.serial), s.model, s.device_class, coalesce(nullif(s.name, ''), d.name),
coalesce(s.grid, d.grid), coalesce(s.lon, d.lon), coalesce(s.lat, d.lat),
case when s.lon is null then d.crs else s.crs end, coalesce(s.owner_unit, d.owner_unit),
coalesce(s.installer, d.installer), coalesce(s.contact, d.contact),
coalesce(s.install_date, d.install_date), d.attributes || s.attributes
"""
_UPDATE = f"""
update devices d set (serial, model, device_class, name, grid, lon, lat, crs, owner_unit, installer, contact,
                      install_date, attributes)
    = ({_MERGED}),
    updated_at = now(), updated_by = %(actor)s
from import_stage s
where d.code = s.code
  and (d.serial, d.model, d.device_class, d.name, d.grid, d.lon, d.lat, d.crs, d.owner_unit, d.installer,
       d.contact, d.install_date, d.attributes) is distinct from ({_MERGED})
"""
_INSERT = """
with ins as (
    insert into devices (code, alias, serial, model, device_class, name, district, grid, lon, lat, crs,
                         owner_unit, installer, contact, install_date, attributes, created_by, updated_by)
    select s.code, substr(s.code, 1, 16), s.serial, s.model, s.device_class, s.name, s.district, s.grid,
           s.lon, s.lat, s.crs, s.owner_unit, s.installer, s.contact, s.install_date, s.attributes,
           %(actor)s, %(actor)s
    from import_stage s
    where not exists (select 1 from devices d where d.code = s.code)
    order by s.code
    returning code
), hist as (
    insert into device_state_history (code, from_state, to_state, reason, actor)
    select code, null, 'registered', 'bulk import', %(actor)s from ins
)
select count(*) from ins
"""


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What an import did (or, with ``dry_run``, would do)."""

    rows: int
    inserted: int
    updated: int
    unchanged: int
    allocated: int
    issues: tuple[RowIssue, ...] = field(default=())
    dry_run: bool = False
    seconds: float = 0.0

    @property
    def rejected(self) -> int:
        return len(self.issues)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        verb = "would import" if self.dry_run else "imported"
        return (
            f"{verb} {self.rows} rows in {self.seconds:.1f}s ({self.rows_per_second:,.0f} rows/s): "
            f"{self.inserted} inserted, {self.updated} updated, {self.unchanged} unchanged, "
            f"{self.rejected} rejected; {self.allocated} codes allocated"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "inserted": self.inserted,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "rejected": self.rejected,
            "allocated": self.allocated,
            "dry_run": self.dry_run,
            "seconds": round(self.seconds, 3),
            "issues": [{"line": i.line, "reason": i.reason, "code": i.code} for i in self.issues],
        }


def _stage_tuple(r: ImportRow) -> tuple[Any, ...]:
    return (
        r.line,
        r.code,
        r.serial,
        r.district,
        r.class_code,
        r.model,
        r.device_class,
        r.name,
        r.lon,
        r.lat,
        r.crs,
        r.grid,
        r.owner_unit,
        r.installer,
        r.contact,
        r.install_date,
        r.attributes,
    )


def import_file(
    conn: psycopg.Connection,
    stream: TextIO,
    fmt: str,
    models: ModelRegistry,
    **kwargs: Any,
) -> ImportReport:
    """Import a CSV or JSON (array or JSON Lines) stream; see :func:`import_rows`.

    Raises:
        ImportFileError: unknown format, or a file that cannot be read at all.
    """
    if fmt == "csv":
        parsed = read_csv(stream)
    elif fmt in ("json", "jsonl"):
        parsed = read_json(stream)
    else:
        raise ImportFileError(f"unknown format {fmt!r}: use csv or json")
    return import_rows(conn, parsed, models, **kwargs)


def import_rows(
    conn: psycopg.Connection,
    parsed: Iterable[Parsed],
    models: ModelRegistry,
    *,
    actor: str = "import",
    dry_run: bool = False,
    validator: RowValidator | None = None,
    progress: Progress | None = None,
    progress_every: int = 10_000,
) -> ImportReport:
    """Validate and import rows in one transaction.

    Args:
        conn: A connection (not in autocommit mode) the import owns for its duration.
        parsed: (line, mapping or issue) pairs, e.g. from :func:`devices.rows.read_csv`.
        models: Thing models rows must name.
        actor: Recorded as created_by / updated_by and in the state history.
        dry_run: Do everything, report, then roll back (allocations included).
        validator: A configured validator (default: Xiamen districts and bbox).
        progress: Called with the number of rows read so far, every ``progress_every`` rows.

    Raises:
        ImportFileError: the file cannot be read at all; nothing was imported.
        LedgerError: the database refused the merge; nothing was imported.
    """
    t0 = time.perf_counter()
    validator = validator or RowValidator(models)
    issues: list[RowIssue] = []
    rows = staged = 0
    inserted = updated = allocated = 0
    try:
        with conn.transaction() as tx:
            conn.execute(_CREATE_STAGE)
            with conn.cursor() as cur, cur.copy(_COPY_STAGE) as copy:
                for line, item in parsed:
                    rows += 1
                    result = item if isinstance(item, RowIssue) else validator.validate(line, item)
                    if isinstance(result, RowIssue):
                        issues.append(result)
                    else:
                        copy.write_row(_stage_tuple(result))
                        staged += 1
                    if progress is not None and rows % progress_every == 0:
                        progress(rows)
            conn.execute("analyze import_stage")
            for line, code, serial, other in conn.execute(_SERIAL_CONFLICTS).fetchall():
                issues.append(RowIssue(line, f"serial {serial!r} already belongs to device {other}", code))
                staged -= 1
            for line, serial, other in conn.execute(_SERIAL_MISFITS).fetchall():
                issues.append(RowIssue(line, f"serial {serial!r} belongs to device {other}, another district or class"))
                staged -= 1
            conn.execute(_SERIAL_MATCH)
            allocated = _allocate_missing(conn)
            updated = conn.execute(_UPDATE, {"actor": actor}).rowcount
            row = conn.execute(_INSERT, {"actor": actor}).fetchone()
            inserted = int(row[0]) if row else 0
            if dry_run:
                raise psycopg.Rollback(tx)
    except psycopg.errors.UniqueViolation as exc:
        raise LedgerError(f"import refused by the ledger, nothing imported: {exc.diag.message_detail or exc}") from exc
    except psycopg.Error as exc:
        raise LedgerError(f"import failed, nothing imported: {exc}") from exc
    if progress is not None:
        progress(rows)
    issues.sort(key=lambda i: i.line)
    report = ImportReport(
        rows=rows,
        inserted=inserted,
        updated=updated,
        unchanged=staged - inserted - updated,
        allocated=allocated,
        issues=tuple(issues),
        dry_run=dry_run,
        seconds=time.perf_counter() - t0,
    )
    log.info("%s", report.summary())
    return report


def _allocate_missing(conn: psycopg.Connection) -> int:
    """Allocate codes for staged rows without one, in line order per (district, class)."""
    groups = conn.execute(_NEEDS_CODE).fetchall()
    if not groups:
        return 0
    # Allocate every range first: no other statement may run while COPY is open.
    assigned = [
        (lines, allocate_codes(conn, district, class_code, len(lines), floor=floor))
        for district, class_code, lines, floor in groups
    ]
    total = 0
    conn.execute("create temp table import_alloc (line integer primary key, code text not null) on commit drop")
    with conn.cursor() as cur, cur.copy("copy import_alloc (line, code) from stdin") as copy:
        for lines, codes in assigned:
            for line, code in zip(lines, codes, strict=True):
                copy.write_row((line, code.full))
            total += len(lines)
    conn.execute("update import_stage s set code = a.code from import_alloc a where s.line = a.line")
    return total
