"""Bulk-import rows: reading CSV / JSON and validating each row (pure).

The importer (:mod:`devices.importer`) feeds every row through
:class:`RowValidator`; a row is either an :class:`ImportRow`, ready to load,
or a :class:`RowIssue` with its line number and the exact reason. Nothing
here touches the database, so every rule is unit-tested on plain data.

Columns (CSV header / JSON keys; only ``model`` and a way to name the device
are required):

============== ==========================================================
code           17-character city code, or the real 16-digit 部件 code
serial         manufacturer serial / IMEI; required when ``code`` is empty
district       GB/T 2260 county code; with ``class_code``, for allocation
class_code     4-digit 大类+小类, e.g. ``0308``
model          thing model id (latest version) or ``id@version``
name           display name
lon, lat       position (WGS84 or GCJ02, see ``crs``), both or neither
crs            ``WGS84`` (default) or ``GCJ02``
grid           15-digit 单元网格 code (starts with the district)
owner_unit     owning unit (权属单位)
installer      installing company
contact        contact phone / person (personal data: masked by the API)
install_date   ISO date ``YYYY-MM-DD``
attributes     JSON object (a JSON string in CSV)
============== ==========================================================
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any, TextIO

from devices.code import XIAMEN_DISTRICTS, ClassTable, DeviceCode, load_class_table, resolve
from devices.errors import DeviceCodeError, ImportFileError, ModelError
from devices.models import ModelRegistry

__all__ = [
    "COLUMNS",
    "IGNORED_COLUMNS",
    "XIAMEN_BBOX",
    "BBox",
    "ImportRow",
    "RowIssue",
    "RowValidator",
    "read_csv",
    "read_json",
]

COLUMNS: tuple[str, ...] = (
    "code",
    "serial",
    "district",
    "class_code",
    "model",
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
# Columns an export writes that an import reads past: state changes only
# through lifecycle transitions, never by editing a file.
IGNORED_COLUMNS: tuple[str, ...] = ("state",)
_TEXT_LIMITS = {"name": 200, "owner_unit": 200, "installer": 200, "contact": 100, "serial": 64}


@dataclass(frozen=True, slots=True)
class BBox:
    """A lon/lat box that positions must fall in (a plausibility check, not a boundary)."""

    name: str
    west: float
    south: float
    east: float
    north: float

    def contains(self, lon: float, lat: float) -> bool:
        return self.west <= lon <= self.east and self.south <= lat <= self.north

    def describe(self) -> str:
        return f"{self.name} ({self.west}–{self.east}E, {self.south}–{self.north}N)"


# Rough box around Xiamen's six districts incl. Xiang'an and Tong'an, with a
# margin; GCJ02 offsets (a few hundred metres) stay well inside it.
XIAMEN_BBOX = BBox("Xiamen", 117.8, 24.3, 118.6, 25.0)


@dataclass(frozen=True, slots=True)
class ImportRow:
    """One valid row, normalised. ``code`` is None when the ledger must allocate one."""

    line: int
    code: str | None
    serial: str | None
    district: str
    class_code: str
    model: str
    device_class: str
    name: str
    lon: float | None
    lat: float | None
    crs: str
    grid: str | None
    owner_unit: str | None
    installer: str | None
    contact: str | None
    install_date: date | None
    attributes: str  # canonical JSON text (sorted keys): equal rows compare equal

    @property
    def alias(self) -> str | None:
        """The 16-digit 部件 code, the alias column of the ledger."""
        return self.code[:16] if self.code else None


@dataclass(frozen=True, slots=True)
class RowIssue:
    """A rejected row: where and why."""

    line: int
    reason: str
    code: str | None = None

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


class _Bad(Exception):
    """Internal: one rule failed (turned into a RowIssue)."""


def _text(raw: Mapping[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _Bad(f"{key} must be text, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        return None
    limit = _TEXT_LIMITS.get(key)
    if limit is not None and len(text) > limit:
        raise _Bad(f"{key} has {len(text)} characters, at most {limit}")
    return text


def _number(raw: Mapping[str, Any], key: str) -> float | None:
    value = raw.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise _Bad(f"{key} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _Bad(f"{key} {value!r} is not a number") from None
    if not math.isfinite(number):
        raise _Bad(f"{key} {value!r} is not a finite number")
    return number


class RowValidator:
    """Validates rows one by one and remembers codes and serials already seen in the file.

    Args:
        models: The thing models a row's ``model`` must name.
        table: The class table (default: the shipped one).
        districts: County codes a device may be in (default: Xiamen's six).
        bbox: Box positions must fall in (default: :data:`XIAMEN_BBOX`).
    """

    def __init__(
        self,
        models: ModelRegistry,
        *,
        table: ClassTable | None = None,
        districts: Mapping[str, str] = XIAMEN_DISTRICTS,
        bbox: BBox = XIAMEN_BBOX,
    ) -> None:
        self.models = models
        self.table = table or load_class_table()
        self.districts = districts
        self.bbox = bbox
        self._codes: dict[str, int] = {}
        self._serials: dict[str, int] = {}
        self._attr_text: dict[str, str] = {}

    def validate(self, line: int, raw: Mapping[str, Any]) -> ImportRow | RowIssue:
        """Validate one row; never raises for bad data."""
        code_text = None
        try:
            code_text = _text(raw, "code")
            return self._validate(line, raw, code_text)
        except _Bad as exc:
            return RowIssue(line, str(exc), code_text)

    def _validate(self, line: int, raw: Mapping[str, Any], code_text: str | None) -> ImportRow:
        serial = _text(raw, "serial")
        district = _text(raw, "district")
        class_code = _text(raw, "class_code")
        code: DeviceCode | None = None
        if code_text is not None:
            try:
                code = resolve(code_text, table=self.table)
            except DeviceCodeError as exc:
                raise _Bad(str(exc)) from None
            if district is not None and district != code.district:
                raise _Bad(f"district {district} does not match code {code.full} (district {code.district})")
            if class_code is not None and class_code != code.class_code:
                raise _Bad(f"class_code {class_code} does not match code {code.full} (class {code.class_code})")
            district, class_code = code.district, code.class_code
        else:
            if district is None or class_code is None:
                raise _Bad("no code: give a code, or district + class_code (+ serial) to allocate one")
            if serial is None:
                # Without a stable key a re-run would allocate a second code for the same device.
                raise _Bad("no code: a serial is required so that re-running the import finds the same device")
            if len(district) != 6 or not district.isdigit():
                raise _Bad(f"district {district!r} must be a 6-digit GB/T 2260 code")
            if len(class_code) != 4 or not class_code.isdigit():
                raise _Bad(f"class_code {class_code!r} must be 4 digits (大类 + 小类)")
            if not self.table.has_minor(class_code):
                raise _Bad(f"unknown class {class_code} (not in devices/data/classes.yaml)")
        if district not in self.districts:
            known = ", ".join(f"{k} {v}" for k, v in self.districts.items())
            raise _Bad(f"district {district} is not one of the city's districts ({known})")

        model_name = _text(raw, "model")
        if model_name is None:
            raise _Bad("model is required")
        try:
            model = self.models.get(model_name)
        except ModelError:
            raise _Bad(f"unknown model {model_name!r}") from None
        if class_code not in model.class_codes:
            raise _Bad(f"model {model.key} does not fit class {class_code} (it fits {', '.join(model.class_codes)})")

        lon, lat = _number(raw, "lon"), _number(raw, "lat")
        if (lon is None) != (lat is None):
            raise _Bad("give both lon and lat, or neither")
        if lon is not None and lat is not None:
            hint = " (lon and lat look swapped)" if self.bbox.contains(lat, lon) else ""
            if not (-180 <= lon <= 180 and -90 <= lat <= 90):
                raise _Bad(f"lon/lat ({lon}, {lat}) out of range (lon -180..180, lat -90..90){hint}")
            if not self.bbox.contains(lon, lat):
                raise _Bad(f"lon/lat ({lon}, {lat}) is outside {self.bbox.describe()}{hint}")
        crs = (_text(raw, "crs") or "WGS84").upper()
        if crs not in ("WGS84", "GCJ02"):
            raise _Bad(f"crs {crs!r} must be WGS84 or GCJ02")
        grid = _text(raw, "grid")
        if grid is not None and (len(grid) != 15 or not grid.isdigit() or grid[:6] != district):
            raise _Bad(f"grid {grid!r} must be a 15-digit 单元网格 code starting with district {district}")
        install_date = None
        date_text = _text(raw, "install_date")
        if date_text is not None:
            try:
                install_date = date.fromisoformat(date_text)
            except ValueError:
                raise _Bad(f"install_date {date_text!r} is not a date (YYYY-MM-DD)") from None
        attributes = self._attributes(raw.get("attributes"))

        full = code.full if code else None
        if full is not None:
            first = self._codes.setdefault(full, line)
            if first != line:
                raise _Bad(f"duplicate code {full}: already on line {first}")
        if serial is not None:
            first = self._serials.setdefault(serial, line)
            if first != line:
                raise _Bad(f"duplicate serial {serial!r}: already on line {first}")
        return ImportRow(
            line=line,
            code=full,
            serial=serial,
            district=district,
            class_code=class_code,
            model=model.key,
            device_class=model.device_class,
            name=_text(raw, "name") or "",
            lon=lon,
            lat=lat,
            crs=crs,
            grid=grid,
            owner_unit=_text(raw, "owner_unit"),
            installer=_text(raw, "installer"),
            contact=_text(raw, "contact"),
            install_date=install_date,
            attributes=attributes,
        )

    def _attributes(self, value: Any) -> str:
        if value is None or (isinstance(value, str) and not value.strip()):
            return "{}"
        if isinstance(value, str):
            # A city file repeats a handful of attribute strings: normalise each once.
            done = self._attr_text.get(value)
            if done is None:
                done = self._normal_attributes(value)
                if len(self._attr_text) < 4096:
                    self._attr_text[value] = done
            return done
        return self._normal_attributes(value)

    @staticmethod
    def _normal_attributes(value: Any) -> str:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise _Bad(f"attributes is not valid JSON ({exc.msg})") from None
        if not isinstance(value, dict):
            raise _Bad("attributes must be a JSON object")
        return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


Parsed = tuple[int, Mapping[str, Any] | RowIssue]


def read_csv(stream: TextIO) -> Iterator[Parsed]:
    """Rows of a CSV file with a header line, as (line number, mapping or issue).

    The line number is where the row starts, counting the header as line 1
    (quoted fields may span lines). A row with the wrong number of fields is
    an issue, never guessed.

    Raises:
        ImportFileError: no header, an unknown or repeated column, or text that
            is not UTF-8 (the whole file is unusable then).
    """
    reader = csv.reader(stream, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise ImportFileError("empty file: expected a CSV header line") from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise ImportFileError(f"line 1: unreadable CSV header ({exc})") from exc
    names = [h.strip().lstrip("\ufeff").lower() for h in header]
    unknown = [n for n in names if n not in COLUMNS and n not in IGNORED_COLUMNS]
    if unknown:
        raise ImportFileError(f"line 1: unknown column(s) {', '.join(map(repr, unknown))}; known: {', '.join(COLUMNS)}")
    if len(set(names)) != len(names):
        raise ImportFileError("line 1: a column appears twice")
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield start, RowIssue(start, f"malformed CSV row ({exc})")
            continue
        except UnicodeDecodeError as exc:
            raise ImportFileError(f"near line {start}: the file is not UTF-8 ({exc.reason})") from exc
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            continue  # blank line
        if len(fields) != len(names):
            yield start, RowIssue(start, f"malformed CSV row: {len(fields)} fields, the header has {len(names)}")
            continue
        yield start, dict(zip(names, fields, strict=True))


def read_json(stream: TextIO) -> Iterator[Parsed]:
    """Rows of a JSON array of objects, or of JSON Lines (one object per line).

    JSON Lines streams (use it for millions of rows); an array is read whole.
    Line numbers are where each object starts.

    Raises:
        ImportFileError: the array itself is broken (items after the break
            cannot be found reliably), or the text is not UTF-8.
    """
    try:
        first = stream.read(1)
        while first and first.isspace():
            first = stream.read(1)
        if first == "[":
            yield from _json_array("[" + stream.read())
            return
        rest = first + stream.readline()
        line = 1
        while rest:
            text = rest.strip()
            if text:
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as exc:
                    yield line, RowIssue(line, f"malformed JSON ({exc.msg} at column {exc.colno})")
                else:
                    yield line, obj if isinstance(obj, dict) else RowIssue(line, "each line must be a JSON object")
            rest = stream.readline()
            line += 1
    except UnicodeDecodeError as exc:
        raise ImportFileError(f"the file is not UTF-8 ({exc.reason})") from exc


def _json_array(text: str) -> Iterator[Parsed]:
    decoder = json.JSONDecoder()
    pos, line, n = 1, 1, len(text)

    def skip(i: int) -> int:
        while i < n and text[i] in " \t\r\n":
            i += 1
        return i

    pos = skip(pos)
    counted = 0
    if pos < n and text[pos] == "]":
        return
    while pos < n:
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise ImportFileError(f"line {exc.lineno}: malformed JSON array ({exc.msg})") from exc
        yield line, obj if isinstance(obj, dict) else RowIssue(line, "each array item must be a JSON object")
        pos = skip(end)
        if pos < n and text[pos] == ",":
            pos = skip(pos + 1)
        elif pos < n and text[pos] == "]":
            if skip(pos + 1) != n:
                raise ImportFileError("text after the end of the JSON array")
            return
        else:
            line += text.count("\n", counted, pos)
            raise ImportFileError(f"line {line}: expected ',' or ']' in the JSON array")
    raise ImportFileError("the JSON array is not closed with ']'")
