import random

import pytest

from devices.code import DeviceCode, check_char, code_bounds, resolve
from devices.errors import AllocationError, DeviceCodeError
from devices.grades import mask_contact
from devices.index import DeviceIndex, DeviceInfo, code_key
from devices.ledger import DeviceQuery, _allocate_params, _allocated


def _devices(n: int, seed: int = 7) -> list[DeviceInfo]:
    rng = random.Random(seed)
    districts = ["350203", "350205", "350206", "350211", "350212", "350213"]
    out = []
    for i in range(n):
        d = districts[i % len(districts)]
        code = DeviceCode.build(d, "0308", 1 + i).full
        attrs = {"vendor": rng.choice(["a", "b"])} if i % 3 == 0 else {}
        out.append(DeviceInfo(code, "air-station@1", "air", d, None if i % 2 else d + "001001001", "active", attrs))
    return out


def test_index_returns_what_was_put_in() -> None:
    devices = _devices(500)
    index = DeviceIndex(reversed(devices))
    assert len(index) == 500
    for d in devices:
        assert index.get(d.code) == d
    assert index.get_many([devices[3].code, "nope", devices[4].code]) == [devices[3], None, devices[4]]


def test_index_is_exact_about_codes() -> None:
    d = _devices(1)[0]
    index = DeviceIndex([d])
    wrong_check = d.code[:16] + ("0" if d.code[16] != "0" else "1")
    for probe in (wrong_check, d.code[:16], d.code + "0", " " + d.code[1:], d.code.lower() + "", "３" + d.code[1:]):
        if probe != d.code:
            assert index.get(probe) is None, probe
    assert code_key("1" * 16 + "X") == int("1" * 16) * 11 + 10


def test_put_overlays_until_replace() -> None:
    devices = _devices(10)
    index = DeviceIndex(devices)
    changed = DeviceInfo(devices[0].code, "air-station@1", "air", devices[0].district, None, "suspended", {})
    index.put(changed)
    assert index.get(changed.code) == changed
    assert len(index) == 10
    new = DeviceInfo(
        DeviceCode.build("350206", "0701", 1).full, "smart-pole@1", "pole", "350206", None, "registered", {}
    )
    index.put(new)
    assert len(index) == 11 and new.code in index
    index.replace(devices)
    assert index.get(changed.code) == devices[0] and len(index) == 10


def test_index_is_compact() -> None:
    index = DeviceIndex(_devices(20_000))
    # 20 bytes of arrays per device plus small interned tables.
    assert index.memory_bytes() / 20_000 < 40


def test_empty_index() -> None:
    index = DeviceIndex()
    assert len(index) == 0 and index.get(_devices(1)[0].code) is None and index.get_many([]) == []


def test_resolve_alias_and_code_bounds() -> None:
    code = DeviceCode.build("350206", "0102", 48188)
    assert resolve(code.body) == code == resolve(code.full)
    lo, hi = code_bounds("350206", "0102")
    assert lo <= code.full <= hi
    assert lo[:10] == hi[:10] == "3502060102"
    with pytest.raises(DeviceCodeError):
        code_bounds("35020", "0102")


def test_allocation_ranges() -> None:
    codes = _allocated("350206", "0308", 3, next_seq=11)  # the counter moved to 11: 8, 9, 10 are ours
    assert [c.sequence for c in codes] == [8, 9, 10]
    assert all(c.full[16] == check_char(c.body) for c in codes)
    with pytest.raises(AllocationError, match="exhausted"):
        _allocated("350206", "0308", 2, next_seq=1_000_001)
    assert _allocated("350206", "0308", 1, next_seq=1_000_000)[0].sequence == 999_999


@pytest.mark.parametrize(
    ("district", "class_code", "n", "reason"),
    [
        ("350206", "0399", 1, "unknown class"),
        ("3502", "0308", 1, "6 digits"),
        ("350200", "0308", 1, "county-level"),
        ("350206", "0308", 0, "cannot allocate"),
    ],
)
def test_allocation_arguments_are_checked(district: str, class_code: str, n: int, reason: str) -> None:
    with pytest.raises(AllocationError, match=reason):
        _allocate_params(district, class_code, n)


def test_mask_contact() -> None:
    assert mask_contact("13800138000") == "*******8000"
    assert mask_contact("Li") == "***"
    assert mask_contact(None) is None


def test_query_where_is_composed_not_formatted() -> None:
    q = DeviceQuery(q="50%'; drop table devices; --", state="active", bbox=(118.0, 24.4, 118.2, 24.6))
    assert "drop table" in repr(q.where())  # stays a quoted literal inside a Composed
    with pytest.raises(Exception, match="state"):
        DeviceQuery(state="retired")
    with pytest.raises(Exception, match="bbox"):
        DeviceQuery(bbox=(118.2, 24.4, 118.0, 24.6))


def _row(d: DeviceInfo) -> tuple[object, ...]:
    return (d.code, d.model, d.device_class, d.district, d.grid, d.state, d.attributes)


def test_apply_updates_adds_and_removes_like_a_rebuild() -> None:
    rng = random.Random(11)
    devices = _devices(3000)
    index = DeviceIndex(devices[:2000])
    truth = {d.code: d for d in devices[:2000]}
    for step in range(40):
        rows: list[DeviceInfo] = []
        for _ in range(50):
            d = devices[rng.randrange(3000)]
            state = rng.choice(["registered", "active", "suspended", "decommissioned"])
            attrs = {"depth_m": rng.choice([1.5, 2.0])} if rng.random() < 0.3 else {}
            rows.append(DeviceInfo(d.code, d.model, d.device_class, d.district, d.grid, state, attrs))
        gone = [devices[rng.randrange(3000)].code for _ in range(10)]
        if step % 7 == 0:  # a put() between two refreshes (the pipeline's own writes)
            index.put(rows[0])
        index.apply([_row(r) for r in rows], gone)
        for r in rows:
            truth[r.code] = r
        for code in gone:
            truth.pop(code, None)
        if step % 10 == 9:
            index.fold()
        assert len(index) == len(truth)
    rebuilt = DeviceIndex(truth.values())
    for d in devices:
        assert index.get(d.code) == rebuilt.get(d.code) == truth.get(d.code)
    codes = [d.code for d in devices]
    assert index.get_many(codes) == rebuilt.get_many(codes)


def test_apply_folds_a_large_overlay_into_the_arrays() -> None:
    devices = _devices(10_000)
    index = DeviceIndex(devices[:100])
    index.apply([_row(d) for d in devices[100:]])
    assert not index._overlay  # folded: new devices are in the compact arrays
    assert len(index) == 10_000
    assert all(index.get(d.code) == d for d in devices[::97])
