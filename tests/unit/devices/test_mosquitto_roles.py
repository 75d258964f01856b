"""Service roles in the rendered Mosquitto ACL, and the CLI's service-user options."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from citybrain.devices_cli import _service_user, register
from citybrain.settings import Settings
from devices.credentials import SERVICE_ROLES, ServiceUser, parse_service_user, render_acl_file
from devices.errors import CredentialError


def test_each_role_gets_only_its_topics() -> None:
    acl = render_acl_file(
        [
            ServiceUser("gw", "gateway-secret-1", "gateway"),
            ServiceUser("bridge", "bridge-secret-1", "downstream"),
            ServiceUser("sim", "simulator-secret", "simulator"),
            "admin",  # a bare name: every topic, as before
        ]
    )
    blocks = {
        b.split("\n")[1]: [line for line in b.split("\n")[2:] if line]
        for b in acl.split("\n\n")
        if b.startswith("# service account")
    }
    assert blocks["user gw"] == [
        "topic read citybrain/up/#",
        "topic write citybrain/cmd/#",
        "topic write citybrain/down/#",
        "topic write citybrain/alerts/#",
        "topic write citybrain/down-internal/#",
        "topic write citybrain/down-sensitive/#",
    ]
    assert blocks["user bridge"] == ["topic read citybrain/down/#", "topic read citybrain/alerts/#"]
    assert blocks["user sim"] == ["topic write citybrain/up/#", "topic read citybrain/cmd/#"]
    assert blocks["user admin"] == ["topic readwrite citybrain/#"]
    # Of the narrow roles, only the simulator may publish device uplinks.
    writers = {r for r, rights in SERVICE_ROLES.items() if any(t == "{p}/up/#" and a != "read" for a, t in rights)}
    assert writers == {"simulator"}


def test_roles_and_secrets_are_validated(tmp_path: Path) -> None:
    with pytest.raises(CredentialError):
        ServiceUser("gw", "gateway-secret-1", "superuser")
    assert parse_service_user("gw:a:b:c-secret-1", "gateway") == ServiceUser("gw", "a:b:c-secret-1", "gateway")
    secret_file = tmp_path / "gw.secret"
    secret_file.write_text("from-a-file-0123\n")
    assert _service_user(f"gw:@{secret_file}", "gateway") == ServiceUser("gw", "from-a-file-0123", "gateway")
    with pytest.raises(CredentialError):
        _service_user(f"gw:@{tmp_path / 'missing'}", "gateway")


def test_mosquitto_files_needs_a_directory_and_distinct_users(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    settings = Settings(database_url="postgresql://unused@127.0.0.1:1/x")

    def run(*argv: str) -> int:
        args = parser.parse_args(["devices", "mosquitto-files", *argv])
        return int(args.func(args, settings))

    assert run() == 2 and "--out" in capsys.readouterr().err
    assert run("--out", "x", "--gateway-user", "gw:gateway-secret-1", "--downstream-user", "gw:other-secret-12") == 2
    assert "twice" in capsys.readouterr().err


def test_app_user_option_reads_grade_districts_and_a_secret_file(tmp_path: Path) -> None:
    secret = tmp_path / "app.secret"
    secret.write_text("app-secret-from-file\n", encoding="utf-8")
    user = _service_user(f"dash:internal:350203,350206:@{secret}", "app")
    assert (user.name, user.secret, user.role, user.grade, user.districts) == (
        "dash",
        "app-secret-from-file",
        "app",
        "internal",
        ("350203", "350206"),
    )
    acl = render_acl_file([user])
    assert "topic read citybrain/down-internal/350203/#" in acl
    assert "down-sensitive" not in acl
