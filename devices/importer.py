"""Bulk import of devices from CSV or JSON into the ledger (100k+ rows).

Every row goes through :class:`devices.rows.RowValidator`; bad rows are
reported with their line number and reason and never touch the ledger. Good
rows are copied with ``COPY`` into a temporary staging table and merged in
set-based statements, :data:`MERGE_CHUNK` rows at a time, all in ONE
transaction: either every good row is in the ledger afterwards, or (on an error)
none is. A row is never half-imported. A chunk is merged by a second thread
while this one validates the next, so the server's merge (index maintenance,
history rows) and the client's validation overlap. Rows without a code are
merged last, once every row naming a code is in: allocation must not hand out
a code that a later row of the file names.

Idempotent: a re-run of the same file changes nothing and reports every row
as unchanged. Rows without a code get one allocated (by district and class),
and their ``serial`` finds that same device again on the next run.

Rows with a location are placed on the map in chunks of :data:`PLACE_CHUNK`
with one bulk STRtree query per chunk (:meth:`geo.assign.Assigner.assign_many`,
GCJ-02 converted first): a location outside every district, or in another
district than the row's code (or ``district`` column) says, rejects that row
with a message naming both; a row without a ``grid`` gets its 单元网格 cell.
"""

from __future__ import annotations

import functools
import logging
import operator
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np
import psycopg

from devices.errors import ImportFileError, LedgerError
from devices.ledger import allocate_codes
from devices.models import ModelRegistry
from devices.rows import COLUMNS, ImportRow, Parsed, RowIssue, RowValidator, read_csv, read_json

if TYPE_CHECKING:
    from geo.assign import Assigner

__all__ = ["MERGE_CHUNK", "PLACE_CHUNK", "ImportReport", "default_assigner", "import_file", "import_rows", "place_rows"]

log = logging.getLogger(__name__)

Progress = Callable[[int], None]

# Rows assigned per bulk query: large enough that the per-call overhead of the
# STRtree query vanishes (~1 µs/point at 8k), small enough to bound memory.
PLACE_CHUNK = 8192
# Rows validated per merge: the merge of one chunk overlaps the validation of the next.
MERGE_CHUNK = 8 * PLACE_CHUNK
# Naming the nearest district measures the distance to every outline (~1 ms);
# past this many outside rows in one import, the message skips it.
_NEAREST_LIMIT = 1000

# The file's columns in their order, then what validation derived (the class from the model).
_STAGE_COLUMNS = ("line", *COLUMNS, "device_class")

_CREATE_STAGE = """
create temp table import_stage (
    line integer primary key, code text, serial text, district text not null, class_code text not null,
    model text not null, device_class text not null, name text not null, lon double precision,
    lat double precision, crs text not null, grid text, owner_unit text, installer text, contact text,
    install_date date, attributes jsonb not null
) on commit drop
"""
_COPY_STAGE = "copy import_stage ({}) from stdin".format(", ".join(_STAGE_COLUMNS))
# Rows without a code wait here until every row that names one is merged.
_CREATE_DEFERRED = "create temp table import_deferred (like import_stage) on commit drop"
_COPY_DEFERRED = "copy import_deferred ({}) from stdin".format(", ".join(_STAGE_COLUMNS))

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


_ROW_VALUES = operator.attrgetter(*COLUMNS)
_GRID = COLUMNS.index("grid")


def _stage_tuple(r: ImportRow, grid: str | None) -> tuple[Any, ...]:
    values = list(_ROW_VALUES(r))
    values[_GRID] = grid  # assigned from the position, not taken from the file
    return (r.line, *values, r.device_class)


@functools.cache
def default_assigner() -> Assigner:
    """An assigner over the shipped district outlines and the 0.01° grid (built once, ~60 ms)."""
    from geo.assign import Assigner
    from geo.districts import load_districts
    from geo.grid import Grid

    districts = load_districts()
    return Assigner(districts, Grid.build(districts, cell_deg=0.01))


def place_rows(
    assigner: Assigner, rows: Sequence[ImportRow], *, nearest: bool = True
) -> tuple[list[ImportRow | RowIssue], list[str | None]]:
    """Check rows' locations against their district and fill in their grid cell (pure, vectorised).

    One :meth:`~geo.assign.Assigner.assign_many` call for the whole batch;
    per-row Python work is limited to building the arrays and to the rows
    that change (a grid filled in) or fail.

    Args:
        assigner: Districts and grid to place rows on.
        rows: Validated rows, in file order.
        nearest: Name the nearest district and its distance in the message
            for a row outside every district (costs ~1 ms per such row).

    Returns:
        ``(results, grids)``, one entry each per row, same order: the row or
        a :class:`RowIssue` naming the location and the districts involved;
        and the grid cell to store — the row's own ``grid`` if it has one,
        else its assigned cell, else None (no location). Grids come back
        separately because copying 8k frozen rows costs 10x the assignment.
    """
    from geo.coords import gcj02_to_wgs84

    located = [i for i, r in enumerate(rows) if r.lon is not None and r.lat is not None]
    out: list[ImportRow | RowIssue] = list(rows)
    grids: list[str | None] = [r.grid for r in rows]
    if not located:
        return out, grids
    n = len(located)
    lons = np.fromiter((rows[i].lon for i in located), dtype=np.float64, count=n)
    lats = np.fromiter((rows[i].lat for i in located), dtype=np.float64, count=n)
    gcj = np.fromiter((rows[i].crs == "GCJ02" for i in located), dtype=np.bool_, count=n)
    if gcj.any():
        # Districts and grid are WGS84; a GCJ-02 position is ~500 m off in Xiamen.
        lons[gcj], lats[gcj] = gcj02_to_wgs84(lons[gcj], lats[gcj])
    declared = np.array([rows[i].district for i in located], dtype="<U6")
    bulk = assigner.assign_many(lons, lats)
    bad = bulk.outside | (bulk.district_codes != declared)
    names = {d.code: d.name_zh for d in assigner.grid.districts}
    for k in np.flatnonzero(bad).tolist():
        row = rows[located[k]]
        where = f"location ({row.lon}, {row.lat}{', GCJ-02' if gcj[k] else ''})"
        if bulk.outside[k]:
            if nearest:
                detail = str(assigner.grid.index.outside_error(float(lons[k]), float(lats[k])))
                reason = f"{where} is outside the city: {detail}"
            else:
                reason = f"{where} is outside every district of the city"
        else:
            found = str(bulk.district_codes[k])
            reason = (
                f"{where} is in district {found} {names.get(found, '')}, but the row says "
                f"{row.district} {names.get(row.district, '')}; fix the location or the code"
            )
        out[located[k]] = RowIssue(row.line, reason, row.code)
    cells = bulk.cell_codes.tolist()
    for k, i in enumerate(located):
        # A grid the file gives is kept (as Ledger.register does): it may
        # come from the city's own 单元网格 survey.
        if grids[i] is None and not bad[k]:
            grids[i] = cells[k]
    return out, grids


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
    assigner: Assigner | None = None,
    place: bool = True,
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
        assigner: Districts and grid that locations are checked against and
            grid cells come from (default: :func:`default_assigner`).
        place: Check locations and assign grid cells (see :func:`place_rows`);
            False skips it (the ledger's own tests of unrelated behaviour).

    Raises:
        ImportFileError: the file cannot be read at all; nothing was imported.
        LedgerError: the database refused the merge; nothing was imported.
    """
    t0 = time.perf_counter()
    validator = validator or RowValidator(models)
    placer = (assigner or default_assigner()) if place else None
    issues: list[RowIssue] = []
    rows = staged = outside_named = 0
    counts = _Counts()
    try:
        # One thread merges a chunk while this one validates the next: the merge is the
        # server's work (indexes, history rows) and waits in libpq without the GIL, so
        # client and server overlap instead of taking turns (docs/benchmarks.md, goal 6).
        with conn.transaction() as tx, ThreadPoolExecutor(1, thread_name_prefix="import-merge") as merger:
            conn.execute(_CREATE_STAGE)
            conn.execute(_CREATE_DEFERRED)
            merging: Future[_Counts] | None = None
            for batch in _chunks(parsed, MERGE_CHUNK):
                named: list[tuple[Any, ...]] = []
                unnamed: list[tuple[Any, ...]] = []
                for chunk in _chunks(batch, PLACE_CHUNK):
                    valid: list[ImportRow] = []
                    for line, item in chunk:
                        rows += 1
                        result = item if isinstance(item, RowIssue) else validator.validate(line, item)
                        if isinstance(result, RowIssue):
                            issues.append(result)
                        else:
                            valid.append(result)
                        if progress is not None and rows % progress_every == 0:
                            progress(rows)
                    placed: list[ImportRow | RowIssue] = list(valid)
                    grids = [r.grid for r in valid]
                    if placer is not None and valid:
                        placed, grids = place_rows(placer, valid, nearest=outside_named < _NEAREST_LIMIT)
                    for result, grid in zip(placed, grids, strict=True):
                        if isinstance(result, RowIssue):
                            issues.append(result)
                            outside_named += "outside" in result.reason
                        else:
                            (named if result.code is not None else unnamed).append(_stage_tuple(result, grid))
                            staged += 1
                if merging is not None:
                    counts += merging.result()
                merging = merger.submit(_merge_named, conn, actor, named, unnamed)
            if merging is not None:
                counts += merging.result()
            # Rows without a code last, with the whole file in the ledger: allocation must not
            # hand out a code that a later row of the file names.
            counts += _merge_unnamed(conn, actor)
            if dry_run:
                raise psycopg.Rollback(tx)
    except psycopg.errors.UniqueViolation as exc:
        raise LedgerError(f"import refused by the ledger, nothing imported: {exc.diag.message_detail or exc}") from exc
    except psycopg.Error as exc:
        raise LedgerError(f"import failed, nothing imported: {exc}") from exc
    issues.extend(counts.issues)
    staged -= len(counts.issues)
    inserted, updated, allocated = counts.inserted, counts.updated, counts.allocated
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


@dataclass(slots=True)
class _Counts:
    """What the merges of an import did."""

    inserted: int = 0
    updated: int = 0
    allocated: int = 0
    issues: list[RowIssue] = field(default_factory=list)

    def __iadd__(self, other: _Counts) -> _Counts:
        self.inserted += other.inserted
        self.updated += other.updated
        self.allocated += other.allocated
        self.issues += other.issues
        return self


def _merge_named(
    conn: psycopg.Connection, actor: str, named: list[tuple[Any, ...]], unnamed: list[tuple[Any, ...]]
) -> _Counts:
    """Stage a chunk's rows; merge those that name their code into the ledger, then empty the stage.

    A chunk at a time: the validator has already refused a code or serial named twice in
    the file, so merging chunk by chunk gives what merging the file at once would. Rows
    without a code wait in ``import_deferred`` (:func:`_merge_unnamed`).
    """
    out = _Counts()
    with conn.cursor() as cur:
        if unnamed:
            with cur.copy(_COPY_DEFERRED) as copy:
                for values in unnamed:
                    copy.write_row(values)
        if not named:
            return out
        with cur.copy(_COPY_STAGE) as copy:
            for values in named:
                copy.write_row(values)
    for line, code, serial, other in conn.execute(_SERIAL_CONFLICTS).fetchall():
        out.issues.append(RowIssue(line, f"serial {serial!r} already belongs to device {other}", code))
    out.updated = conn.execute(_UPDATE, {"actor": actor}).rowcount
    row = conn.execute(_INSERT, {"actor": actor}).fetchone()
    out.inserted = int(row[0]) if row else 0
    conn.execute("truncate import_stage")
    return out


def _merge_unnamed(conn: psycopg.Connection, actor: str) -> _Counts:
    """Merge the rows without a code: found again by serial, or given a new code."""
    out = _Counts()
    if conn.execute("select not exists (select 1 from import_deferred)").fetchone() == (True,):
        return out
    conn.execute("insert into import_stage select * from import_deferred")
    conn.execute("analyze import_stage")
    for line, serial, other in conn.execute(_SERIAL_MISFITS).fetchall():
        out.issues.append(RowIssue(line, f"serial {serial!r} belongs to device {other}, another district or class"))
    conn.execute(_SERIAL_MATCH)
    out.allocated = _allocate_missing(conn)
    out.updated = conn.execute(_UPDATE, {"actor": actor}).rowcount
    row = conn.execute(_INSERT, {"actor": actor}).fetchone()
    out.inserted = int(row[0]) if row else 0
    return out


def _chunks(parsed: Iterable[Parsed], size: int) -> Iterator[list[Parsed]]:
    """The parsed rows in lists of ``size`` (the last one shorter), streaming."""
    chunk: list[Parsed] = []
    for item in parsed:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


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
