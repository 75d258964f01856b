"""HJ 212 PW checking against scrypt hashes: once per connection and MN, off the event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from devices.credentials import (
    STATION_PW_SCRYPT,
    ScryptParams,
    check_station_password,
    hash_secret,
    hash_station_password,
    new_station_password,
    verify_secret,
)
from devices.errors import CredentialError
from ingest.adapters.hj212 import connector as connector_mod
from ingest.adapters.hj212 import cp_params
from ingest.adapters.hj212.connector import (
    Hj212Metrics,
    Hj212Server,
    Hj212ServerConfig,
    StationDirectory,
    auth_resolver,
)
from tests.unit.ingest.test_hj212_connector import CODE, MN, MemorySink, read_frames, upload

# Cheap hashes keep the tests fast; the cost parameters live in the string, so the code path is the same.
FAST = ScryptParams(ln=4)
PW = "Ab12cd"


def fast_hash(pw: str) -> str:
    return hash_secret(pw, FAST)


@pytest.fixture
async def started() -> AsyncIterator[list[Hj212Server]]:
    servers: list[Hj212Server] = []
    yield servers
    for srv in servers:
        await srv.stop()


async def make(servers: list[Hj212Server], resolve: object, **cfg: object) -> tuple[Hj212Server, CollectorRegistry]:
    reg = CollectorRegistry()
    srv = Hj212Server(Hj212ServerConfig(**cfg), MemorySink(), resolve, Hj212Metrics(reg))  # type: ignore[arg-type]
    await srv.start()
    servers.append(srv)
    return srv, reg


def test_station_passwords_fit_the_pw_field_and_hash_with_their_own_cost() -> None:
    pw = new_station_password()
    assert check_station_password(pw) == pw and len(pw) == 6
    encoded = hash_station_password(pw)
    assert encoded.startswith(f"$scrypt$ln={STATION_PW_SCRYPT.ln},r=8,p=1$")
    assert verify_secret(pw, encoded) and not verify_secret(pw[:-1], encoded)
    for bad in ("", "1234567", "12 34", "pw;MN=1", "密码"):
        with pytest.raises(CredentialError):
            check_station_password(bad)


async def test_right_pw_verified_once_per_connection_wrong_pw_refused(
    started: list[Hj212Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    loop_thread = threading.get_ident()

    def counting_verify(secret: str, encoded: str) -> bool:
        calls.append(secret)
        assert threading.get_ident() != loop_thread, "scrypt must not run on the event loop"
        return verify_secret(secret, encoded)

    monkeypatch.setattr(connector_mod, "verify_secret", counting_verify)
    srv, reg = await make(started, auth_resolver({MN: CODE}, pw_hashes={CODE: fast_hash(PW)}))
    sink = srv._sink  # type: ignore[attr-defined]
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(b"".join(upload(i=i, pw=PW) for i in range(5)))
    await writer.drain()
    replies = await read_frames(reader, 5)
    assert [r.cn for r in replies] == ["9014"] * 5
    assert len(sink.messages) == 5
    assert calls == [PW], "one scrypt check per connection and MN, not per frame"

    writer.write(upload(i=7, pw="wrong1") + upload(i=8, pw="wrong1"))
    await writer.drain()
    replies = await read_frames(reader, 2)
    assert [(r.cn, cp_params(r)["QnRtn"]) for r in replies] == [("9011", "3"), ("9011", "3")]
    assert len(sink.messages) == 5, "a frame with a wrong PW is not forwarded"
    assert calls == [PW, "wrong1"], "the same wrong PW is not hashed again"
    assert reg.get_sample_value("citybrain_hj212_auth_failures_total", {"reason": "bad_pw"}) == 2
    writer.close()

    # A new connection verifies again (the cache belongs to the connection).
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(upload(i=9, pw=PW))
    await writer.drain()
    (reply,) = await read_frames(reader, 1)
    assert reply.cn == "9014" and calls == [PW, "wrong1", PW]
    writer.close()


async def test_rotated_hash_is_verified_afresh_on_an_open_connection(started: list[Hj212Server]) -> None:
    directory = StationDirectory({MN: CODE}, {CODE: fast_hash(PW)})
    srv, _ = await make(started, directory.resolve)
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(upload(i=1, pw=PW))
    await writer.drain()
    assert (await read_frames(reader, 1))[0].cn == "9014"
    directory.replace({MN: CODE}, {CODE: fast_hash("New123")})  # the edge's refresh saw a rotation
    writer.write(upload(i=2, pw=PW) + upload(i=3, pw="New123"))
    await writer.drain()
    replies = await read_frames(reader, 2)
    assert [r.cn for r in replies] == ["9011", "9014"]
    writer.close()


async def test_unprovisioned_device_is_refused_unless_checking_is_off(started: list[Hj212Server]) -> None:
    srv, reg = await make(started, auth_resolver({MN: CODE}))
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(upload(i=1) + upload(i=2))
    await writer.drain()
    replies = await read_frames(reader, 2)
    assert [(r.cn, cp_params(r)["QnRtn"]) for r in replies] == [("9011", "3")] * 2
    assert reg.get_sample_value("citybrain_hj212_auth_failures_total", {"reason": "no_pw"}) == 2
    writer.close()

    open_srv, _ = await make(started, auth_resolver({MN: CODE}), check_pw=False)
    reader, writer = await asyncio.open_connection("127.0.0.1", open_srv.port)
    writer.write(upload(i=1, pw="any"))
    await writer.drain()
    assert (await read_frames(reader, 1))[0].cn == "9014"
    writer.close()


async def test_guessing_closes_the_connection(started: list[Hj212Server]) -> None:
    srv, reg = await make(started, auth_resolver({MN: CODE}, pw_hashes={CODE: fast_hash(PW)}), max_pw_failures=3)
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(b"".join(upload(i=i, pw=f"gues{i}") for i in range(5)))
    await writer.drain()
    replies = await read_frames(reader, 3)
    assert [r.cn for r in replies] == ["9011"] * 3
    async with asyncio.timeout(5):
        assert await reader.read() == b""  # closed after the third distinct wrong PW
    assert reg.get_sample_value("citybrain_hj212_disconnects_total", {"reason": "auth"}) == 1
    writer.close()


async def test_command_answers_only_from_the_station_connection(started: list[Hj212Server]) -> None:
    from ingest.adapters.hj212 import reply_9011, reply_9012

    srv, _ = await make(started, auth_resolver({MN: CODE}, {CODE: "123456"}))
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(upload(flag=4))
    await writer.drain()
    for _ in range(100):
        if srv.connected(MN):
            break
        await asyncio.sleep(0.01)
    pending = asyncio.create_task(srv.set_rtd_interval(MN, 30, timeout=1))
    (cmd,) = await read_frames(reader, 1)
    # Another socket answers for the station: ignored, the command times out.
    _, spoof = await asyncio.open_connection("127.0.0.1", srv.port)
    spoof.write(reply_9011(cmd, 1) + reply_9012(cmd, 1))
    await spoof.drain()
    with pytest.raises(connector_mod.CommandError) as info:
        await pending
    assert info.value.reason == "timeout"
    spoof.close()
    writer.close()


async def test_pw_provisioned_after_start_is_seen_by_the_running_server(started: list[Hj212Server]) -> None:
    """Issue 15 defect 2: with no PW at all at start, a refresh used to fill a map the resolver never read."""
    directory = StationDirectory({MN: CODE})  # the edge at start: the station is known, no PW anywhere
    srv, reg = await make(started, directory.resolve)
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(upload(i=1, pw=PW))
    await writer.drain()
    (before,) = await read_frames(reader, 1)
    assert (before.cn, cp_params(before)["QnRtn"]) == ("9011", "3")
    directory.replace({MN: CODE}, {CODE: fast_hash(PW)})  # the refresh after `credentials rotate --hj212`
    assert (directory.stations, directory.with_pw) == (1, 1)
    writer.write(upload(i=2, pw=PW) + upload(i=3, pw="wrong1"))
    await writer.drain()
    after = await read_frames(reader, 2)
    assert sorted((r.cn, r.qn, cp_params(r).get("QnRtn")) for r in after) == [
        ("9011", "20240515103000003", "3"),
        ("9014", "20240515103000002", None),
    ]
    assert reg.get_sample_value("citybrain_hj212_auth_failures_total", {"reason": "bad_pw"}) == 1
    writer.close()


def test_directory_copies_what_it_is_given_and_changes_only_by_replace() -> None:
    mns = {MN: CODE}
    directory = StationDirectory(mns)
    mns["other"] = "x"  # the caller's map is not the directory's
    assert directory.resolve("other") is None and directory.resolve(MN) == connector_mod.DeviceAuth(CODE)
    assert directory.mn_of(CODE) == MN and directory.mn_of("35020603080000099") == "35020603080000099"
    directory.replace({}, {})
    assert directory.resolve(MN) is None and directory.stations == 0
