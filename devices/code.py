"""The unified city device code.

Layout (GB/T 30428.2 部件 code, docs/standards.md §1.1) plus one
check character::

    350206 03 08 000001 7
    |      |  |  |      +- ISO 7064 MOD 11-2 check character (GB/T 17710), 0-9 or X
    |      |  |  +-------- 6-digit sequence (流水号)
    |      |  +----------- 2-digit minor class (小类)
    |      +-------------- 2-digit major class (大类)
    +--------------------- 6-digit GB/T 2260 county-level code

The first 16 characters are exactly a real 部件 code, so an existing 16-digit
code is accepted as an alias of the same facility (:func:`parse` with
``allow_alias=True``); the check character catches typos at the gateway.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

import yaml

from devices.errors import DeviceCodeError

__all__ = [
    "MAX_SEQUENCE",
    "XIAMEN_DISTRICTS",
    "ClassTable",
    "DeviceCode",
    "check_char",
    "code_bounds",
    "load_class_table",
    "parse",
    "resolve",
    "validate",
]

# The 流水号 has six digits; 0 is never allocated so that a code ending in
# 000000 stays recognisable as a placeholder in paper records.
MAX_SEQUENCE = 999_999

# GB/T 2260 county-level codes of Xiamen (docs/standards.md §1.2, [V]).
XIAMEN_DISTRICTS: dict[str, str] = {
    "350203": "思明区",
    "350205": "海沧区",
    "350206": "湖里区",
    "350211": "集美区",
    "350212": "同安区",
    "350213": "翔安区",
}

_BODY_RE = re.compile(r"^[0-9]{16}$")


def check_char(body: str) -> str:
    """ISO 7064 MOD 11-2 check character of a digit string (GB/T 17710).

    The pure-system recursion ``p = 2 * (p + d) mod 11`` is the same as the
    weighted sum with weights 2^k mod 11 used for Chinese ID numbers.
    """
    if not body.isdigit() or not body.isascii():
        raise DeviceCodeError(f"check character needs digits only, got {body!r}")
    # Unrolled: p = sum(d_k * 2^(n-k+1)) mod 11, one C-level pass over the bytes
    # (a bulk import checks a code per row).
    weights, offset = _weights(len(body))
    p = (sum(map(operator.mul, body.encode(), weights)) - offset) % 11
    c = (12 - p) % 11
    return "X" if c == 10 else str(c)


@cache
def _weights(n: int) -> tuple[tuple[int, ...], int]:
    """ISO 7064 MOD 11-2 weights 2^(n-k+1) mod 11 of a length-n body, and the weighted sum of 48s ('0')."""
    weights = tuple(pow(2, n - k + 1, 11) for k in range(1, n + 1))
    return weights, 48 * sum(weights)


@dataclass(frozen=True, slots=True)
class ClassTable:
    """Facility classes (大类/小类), loaded from data, not code."""

    majors: dict[str, str]
    minors: dict[str, dict[str, object]]

    def has_minor(self, class_code: str) -> bool:
        return class_code in self.minors

    def name(self, class_code: str, lang: str = "zh") -> str:
        return str(self.minors[class_code][lang])

    def is_sensitive(self, class_code: str) -> bool:
        return bool(self.minors.get(class_code, {}).get("sensitive", False))


@cache
def load_class_table() -> ClassTable:
    """The class table shipped in ``devices/data/classes.yaml``."""
    text = resources.files("devices").joinpath("data/classes.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    majors = {str(k): str(v) for k, v in data["majors"].items()}
    minors = {str(k): dict(v) for k, v in data["minors"].items()}
    for code in minors:
        if len(code) != 4 or not code.isdigit() or code[:2] not in majors:
            raise DeviceCodeError(f"class table: minor class {code!r} has no major class")
    return ClassTable(majors=majors, minors=minors)


@dataclass(frozen=True, slots=True)
class DeviceCode:
    """A parsed, valid city device code."""

    district: str
    major: str
    minor: str
    sequence: int

    def __post_init__(self) -> None:
        if len(self.district) != 6 or not self.district.isdigit():
            raise DeviceCodeError(f"district {self.district!r} must be 6 digits")
        if len(self.major) != 2 or not self.major.isdigit():
            raise DeviceCodeError(f"major class {self.major!r} must be 2 digits")
        if len(self.minor) != 2 or not self.minor.isdigit():
            raise DeviceCodeError(f"minor class {self.minor!r} must be 2 digits")
        if not 0 <= self.sequence <= 999_999:
            raise DeviceCodeError(f"sequence {self.sequence} must be 0..999999")

    @property
    def class_code(self) -> str:
        """Major + minor class, e.g. ``0308``."""
        return self.major + self.minor

    @property
    def body(self) -> str:
        """The 16-digit 部件 code (the alias form)."""
        return f"{self.district}{self.major}{self.minor}{self.sequence:06d}"

    @property
    def full(self) -> str:
        """The 17-character city code with its check character."""
        body = self.body
        return body + check_char(body)

    def __str__(self) -> str:
        return self.full

    @classmethod
    def build(cls, district: str, class_code: str, sequence: int) -> DeviceCode:
        if len(class_code) != 4:
            raise DeviceCodeError(f"class code {class_code!r} must be 4 digits")
        return cls(district, class_code[:2], class_code[2:], sequence)


def parse(text: str, *, allow_alias: bool = False, table: ClassTable | None = None) -> DeviceCode:
    """Parse and validate a city device code.

    Args:
        text: The code, 17 characters (or 16 when ``allow_alias``).
        allow_alias: Accept a real 16-digit 部件 code without check character.
        table: Class table to check the class against (default: the shipped one).

    Raises:
        DeviceCodeError: with the exact reason the code is invalid.
    """
    if not isinstance(text, str):
        raise DeviceCodeError("device code must be a string")
    code = text.strip().upper()
    if len(code) == 16 and allow_alias:
        body, given = code, None
    elif len(code) == 17:
        body, given = code[:16], code[16]
    else:
        expected = "16 or 17" if allow_alias else "17"
        raise DeviceCodeError(f"device code {text!r} has {len(code)} characters, expected {expected}")
    if not _BODY_RE.match(body):
        bad = next((i for i, ch in enumerate(body) if not ("0" <= ch <= "9")), 0)
        raise DeviceCodeError(f"device code {text!r}: character {bad + 1} ({body[bad]!r}) is not a digit")
    if given is not None:
        if not (given.isdigit() or given == "X"):
            raise DeviceCodeError(f"device code {text!r}: check character {given!r} must be 0-9 or X")
        want = check_char(body)
        if given != want:
            raise DeviceCodeError(f"device code {text!r}: check character is {given!r} but should be {want!r} (typo?)")
    district = body[:6]
    if district[:2] == "00" or district[2:] == "0000":
        raise DeviceCodeError(f"device code {text!r}: {district} is not a county-level GB/T 2260 code")
    tbl = table or load_class_table()
    major, minor = body[6:8], body[8:10]
    if major not in tbl.majors:
        raise DeviceCodeError(f"device code {text!r}: unknown major class {major}")
    if not tbl.has_minor(major + minor):
        raise DeviceCodeError(f"device code {text!r}: unknown class {major}{minor}")
    return DeviceCode(district, major, minor, int(body[10:]))


def validate(text: str, *, allow_alias: bool = False) -> str | None:
    """Return ``None`` if the code is valid, else the exact reason it is not."""
    try:
        parse(text, allow_alias=allow_alias)
    except DeviceCodeError as exc:
        return str(exc)
    return None


def resolve(text: str, *, table: ClassTable | None = None) -> DeviceCode:
    """Parse a city code or a real 16-digit 部件 code (its alias) to the same device.

    A 16-digit code is the body of exactly one 17-character code, so both
    spellings name the same facility; callers store and compare the full form.

    Raises:
        DeviceCodeError: with the exact reason the code is invalid.
    """
    return parse(text, allow_alias=True, table=table)


def code_bounds(district: str, class_code: str) -> tuple[str, str]:
    """Lowest and highest 17-character code of one district and class.

    Codes of one (district, class) share their first ten characters, so under a
    byte-order (C) collation they form one contiguous range of the primary key:
    the allocator finds the highest used sequence with one index probe.
    """
    prefix = district + class_code
    if len(prefix) != 10 or not prefix.isdigit():
        raise DeviceCodeError(f"district {district!r} + class {class_code!r} must be 6 + 4 digits")
    return prefix + "000000" + "0", prefix + "999999" + "X"
