"""CITYBRAIN_NOTIFY_ALLOWED_HOSTS: read once in settings, handed down as a TargetPolicy."""

from __future__ import annotations

import ipaddress

import pytest
from pydantic import ValidationError

from alerts.notify import TargetPolicy
from citybrain.settings import Settings


def test_default_allows_no_internal_target() -> None:
    assert Settings().notify_targets() == TargetPolicy()


def test_allowlist_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYBRAIN_NOTIFY_ALLOWED_HOSTS", "sms-gw.city.internal,10.20.0.0/16")
    policy = Settings().notify_targets()
    assert policy.allowed_hosts == frozenset({"sms-gw.city.internal"})
    assert policy.allowed_networks == (ipaddress.ip_network("10.20.0.0/16"),)


def test_a_bad_entry_stops_the_process_at_start() -> None:
    with pytest.raises(ValidationError, match="not a host name, an address or a CIDR"):
        Settings(notify_allowed_hosts="https://sms-gw.city.internal/send")
