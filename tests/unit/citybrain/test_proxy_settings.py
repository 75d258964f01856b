"""Which forwarding headers `citybrain api` believes (issue 15, defect 8): none unless configured."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from citybrain.cli import _api_proxy_headers
from citybrain.settings import Settings


def test_by_default_uvicorn_is_told_to_believe_no_forwarding_header() -> None:
    # uvicorn's own default believes 127.0.0.1 (and $FORWARDED_ALLOW_IPS): it must never be left to it.
    assert _api_proxy_headers(Settings(trusted_proxies="")) == {"proxy_headers": False, "forwarded_allow_ips": []}


def test_configured_proxies_are_passed_as_given() -> None:
    settings = Settings(trusted_proxies="10.0.0.0/8, 192.0.2.7 ,::1")
    assert settings.proxy_networks() == ("10.0.0.0/8", "192.0.2.7", "::1")
    assert _api_proxy_headers(settings) == {
        "proxy_headers": True,
        "forwarded_allow_ips": ["10.0.0.0/8", "192.0.2.7", "::1"],
    }


@pytest.mark.parametrize("bad", ["*", "proxy.internal", "10.0.0.0/33"])
def test_a_proxy_must_be_an_address_or_network(bad: str) -> None:
    with pytest.raises(ValidationError, match="not an IP address or network"):
        Settings(trusted_proxies=bad)


def test_the_anonymous_body_bound_may_not_exceed_the_other() -> None:
    with pytest.raises(ValidationError, match="must not exceed"):
        Settings(api_max_body_bytes=4096, api_anonymous_max_body_bytes=8192)
