"""Mosquitto ACL lines of app accounts by data grade and district, and of the gateway (bridge)."""

from __future__ import annotations

import pytest

from devices.credentials import ServiceUser, parse_app_user, render_acl_file, service_rights
from devices.errors import CredentialError


def _block(acl: str, name: str) -> list[str]:
    for b in acl.split("\n\n"):
        lines = b.split("\n")
        if len(lines) > 1 and lines[1] == f"user {name}":
            return [line for line in lines[2:] if line]
    raise AssertionError(name)


def test_app_reads_only_its_grades_and_districts() -> None:
    acl = render_acl_file(
        [
            ServiceUser("gw", "gateway-secret-1", "gateway"),
            parse_app_user("pub:public:app-secret-0001"),
            parse_app_user("ops:internal:350203,350206:app-secret-0002"),
            parse_app_user("all:sensitive::with:colons-0003"),
        ]
    )
    assert _block(acl, "pub") == ["topic read citybrain/down/#", "topic read citybrain/alerts/#"]
    assert _block(acl, "ops") == [
        "topic read citybrain/down/350203/#",
        "topic read citybrain/down/350206/#",
        "topic read citybrain/down-internal/350203/#",
        "topic read citybrain/down-internal/350206/#",
        "topic read citybrain/alerts/350203/#",
        "topic read citybrain/alerts/350206/#",
    ]
    assert _block(acl, "all") == [
        "topic read citybrain/down/#",
        "topic read citybrain/down-internal/#",
        "topic read citybrain/down-sensitive/#",
        "topic read citybrain/alerts/#",
    ]
    assert "# service account, role app, grade internal, 350203,350206" in acl
    # The bridge (gateway role) writes every graded view.
    gw = _block(acl, "gw")
    for root in ("down", "down-internal", "down-sensitive"):
        assert f"topic write citybrain/{root}/#" in gw
    # No app may write anything.
    assert all(line.startswith("topic read ") for n in ("pub", "ops", "all") for line in _block(acl, n))


def test_app_user_parsing() -> None:
    u = parse_app_user("ops:internal:350203:s3cret:with:colons")
    assert (u.name, u.grade, u.districts, u.secret) == ("ops", "internal", ("350203",), "s3cret:with:colons")
    assert parse_app_user("a:public:abcdefghijkl").districts == ()
    assert service_rights(ServiceUser("x", "abcdefghijkl", "downstream")) == [
        ("read", "citybrain/down/#"),
        ("read", "citybrain/alerts/#"),
    ]
    for bad in (
        "ops:internal",
        "ops:secret:abcdefghijkl",  # unknown grade
        "ops:public:35020:abc",  # not a district list: the whole rest is the secret, too short
    ):
        with pytest.raises(CredentialError):
            parse_app_user(bad)
    with pytest.raises(CredentialError):
        ServiceUser("gw", "gateway-secret-1", "gateway", grade="internal")
    with pytest.raises(CredentialError):
        ServiceUser("ap", "gateway-secret-1", "app", districts=("3502",))
