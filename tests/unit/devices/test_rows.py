import io
import json

import pytest

from devices.code import DeviceCode
from devices.errors import ImportFileError
from devices.models import shipped_models
from devices.rows import ImportRow, RowIssue, RowValidator, read_csv, read_json

AIR = DeviceCode.build("350206", "0308", 1).full
POLE = DeviceCode.build("350203", "0701", 7).full


def _validator() -> RowValidator:
    return RowValidator(shipped_models())


def _ok(v: RowValidator, line: int, **raw: object) -> ImportRow:
    res = v.validate(line, raw)
    assert isinstance(res, ImportRow), res
    return res


def _bad(v: RowValidator, line: int, **raw: object) -> str:
    res = v.validate(line, raw)
    assert isinstance(res, RowIssue), res
    assert res.line == line
    return res.reason


def test_valid_row_is_normalised() -> None:
    row = _ok(
        _validator(),
        2,
        code=AIR,
        model="air-station",
        lon="118.1",
        lat="24.5",
        attributes='{"b": 1, "a": 2}',
        install_date="2026-01-02",
    )
    assert row.code == AIR and row.alias == AIR[:16]
    assert row.model == "air-station@1" and row.device_class == "air"
    assert (row.district, row.class_code) == ("350206", "0308")
    assert row.attributes == '{"a":2,"b":1}'


def test_alias_code_becomes_full_code() -> None:
    assert _ok(_validator(), 2, code=AIR[:16], model="air-station").code == AIR


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ({"code": AIR[:-1] + ("0" if AIR[-1] != "0" else "1"), "model": "air-station"}, "check character"),
        ({"code": "3502060308A00001" + "7", "model": "air-station"}, "not a digit"),
        ({"code": "350206039900001", "model": "air-station"}, "characters"),
        ({"district": "350206", "class_code": "0399", "serial": "s1", "model": "air-station"}, "unknown class 0399"),
        ({"code": AIR, "model": "no-such-model"}, "unknown model"),
        ({"code": POLE, "model": "air-station"}, "does not fit class 0701"),
        ({"code": AIR, "model": "air-station", "lon": "121.5", "lat": "31.2"}, "outside Xiamen"),
        ({"code": AIR, "model": "air-station", "lon": "24.5", "lat": "118.1"}, "swapped"),
        ({"code": AIR, "model": "air-station", "lon": "200", "lat": "24.5"}, "out of range"),
        ({"code": AIR, "model": "air-station", "lon": "118.1"}, "both lon and lat"),
        ({"code": AIR, "model": "air-station", "lon": "east", "lat": "24.5"}, "not a number"),
        ({"code": AIR, "model": "air-station", "lon": "nan", "lat": "24.5"}, "finite"),
        ({"code": AIR, "model": "air-station", "attributes": "{oops"}, "not valid JSON"),
        ({"code": AIR, "model": "air-station", "install_date": "02/01/2026"}, "not a date"),
        ({"code": AIR, "model": "air-station", "grid": "123"}, "grid"),
        ({"code": AIR, "model": "air-station", "crs": "BD09"}, "crs"),
        ({"code": AIR, "model": "air-station", "district": "350203"}, "does not match code"),
        ({"model": "air-station"}, "no code"),
        ({"district": "350206", "class_code": "0308", "model": "air-station"}, "serial is required"),
        ({"district": "310101", "class_code": "0308", "serial": "s", "model": "air-station"}, "not one of"),
        ({"code": AIR}, "model is required"),
    ],
)
def test_bad_rows_say_why(raw: dict[str, str], reason: str) -> None:
    assert reason in _bad(_validator(), 5, **raw)


def test_duplicates_within_a_file() -> None:
    v = _validator()
    _ok(v, 2, code=AIR, model="air-station")
    assert "duplicate code" in _bad(v, 3, code=AIR[:16], model="air-station")
    assert "line 2" in _bad(v, 4, code=AIR, model="air-station")
    _ok(v, 5, district="350206", class_code="0308", serial="SN-1", model="air-station")
    assert "duplicate serial" in _bad(v, 6, district="350206", class_code="0308", serial="SN-1", model="air-station")


def test_row_without_code_is_kept_for_allocation() -> None:
    row = _ok(_validator(), 2, district="350211", class_code="0701", serial="P-9", model="smart-pole")
    assert row.code is None and row.alias is None and row.serial == "P-9"


def test_read_csv_line_numbers_and_malformed_rows() -> None:
    text = (
        "code,model,name\n"
        f'{AIR},air-station,"two\nlines"\n'
        "\n"
        f"{POLE},smart-pole\n"
        f"{POLE},smart-pole,x,extra\n"
        f"{AIR[:16]},air-station,ok\n"
    )
    out = list(read_csv(io.StringIO(text)))
    assert [line for line, _ in out] == [2, 5, 6, 7]
    assert isinstance(out[0][1], dict) and out[0][1]["name"] == "two\nlines"
    assert isinstance(out[1][1], RowIssue) and "2 fields, the header has 3" in out[1][1].reason
    assert isinstance(out[2][1], RowIssue)


def test_read_csv_rejects_unknown_columns() -> None:
    with pytest.raises(ImportFileError, match="lattitude"):
        list(read_csv(io.StringIO("code,lattitude\n")))
    with pytest.raises(ImportFileError, match="empty"):
        list(read_csv(io.StringIO("")))


def test_read_csv_accepts_bom() -> None:
    out = list(read_csv(io.StringIO("\ufeffcode,model\n" + f"{AIR},air-station\n")))
    assert out == [(2, {"code": AIR, "model": "air-station"})]


def test_read_json_array_with_lines() -> None:
    items = [{"code": AIR, "model": "air-station"}, {"code": POLE, "model": "smart-pole"}]
    text = "[\n" + ",\n\n".join(json.dumps(i) for i in items) + "\n]\n"
    out = list(read_json(io.StringIO(text)))
    assert [line for line, _ in out] == [2, 4]
    assert out[1][1] == items[1]
    assert list(read_json(io.StringIO("[]"))) == []
    with pytest.raises(ImportFileError, match="malformed"):
        list(read_json(io.StringIO('[{"a": 1}, {"b": ]')))


def test_read_json_lines() -> None:
    text = json.dumps({"code": AIR}) + "\n\n{bad json\n[1]\n" + json.dumps({"code": POLE}) + "\n"
    out = list(read_json(io.StringIO(text)))
    assert [line for line, _ in out] == [1, 3, 4, 5]
    assert isinstance(out[1][1], RowIssue) and "malformed JSON" in out[1][1].reason
    assert isinstance(out[2][1], RowIssue) and "object" in out[2][1].reason
