import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.code import DeviceCode, check_char, load_class_table, parse, validate
from devices.errors import DeviceCodeError


def test_check_char_matches_gb11643_example() -> None:
    # ISO 7064 MOD 11-2 is the check of Chinese ID numbers: 11010519491231002X.
    assert check_char("11010519491231002") == "X"


def test_build_and_parse_round_trip() -> None:
    code = DeviceCode.build("350206", "0308", 1)
    assert code.body == "3502060308000001"
    assert len(code.full) == 17
    assert parse(code.full) == code
    assert code.class_code == "0308"


def test_alias_accepted_only_when_allowed() -> None:
    body = "3502060308000001"
    with pytest.raises(DeviceCodeError, match="17"):
        parse(body)
    assert parse(body, allow_alias=True).full == DeviceCode.build("350206", "0308", 1).full


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("3502060308000001", "16 characters"),
        ("350206030800000X1", "not a digit"),
        ("35020603080000019", "check character"),
        ("35020603080000Z17", "not a digit"),
        ("3502069908000001" + check_char("3502069908000001"), "unknown major class"),
        ("3502060399000001" + check_char("3502060399000001"), "unknown class 0399"),
        ("3500000308000001" + check_char("3500000308000001"), "county-level"),
    ],
)
def test_validate_gives_exact_reason(text: str, reason: str) -> None:
    msg = validate(text)
    assert msg is not None and reason in msg


@settings(max_examples=200, derandomize=True)
@given(st.integers(0, 999_999), st.integers(0, 15), st.integers(0, 9))
def test_single_digit_typo_is_caught(seq: int, pos: int, delta: int) -> None:
    full = DeviceCode.build("350211", "0102", seq).full
    digit = (int(full[pos]) + 1 + delta % 9) % 10
    typo = full[:pos] + str(digit) + full[pos + 1 :]
    assert typo != full
    with pytest.raises(DeviceCodeError):
        body = typo[:16]
        if check_char(body) == typo[16]:
            raise AssertionError("MOD 11-2 missed a single-digit error")
        parse(typo)


def test_class_table_covers_required_kinds() -> None:
    t = load_class_table()
    for c in ("0101", "0102", "0103", "0105", "0107", "0111", "0308", "0311", "0117", "0118", "0701"):
        assert t.has_minor(c), c
    assert t.is_sensitive("0111") and not t.is_sensitive("0101")
