"""The notification target policy (SSRF): which addresses a webhook may reach, the allowlist."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from alerts.notify import (
    DeliveryFailed,
    NotifyError,
    PolicyResolver,
    TargetPolicy,
    TargetRefused,
    forbidden_category,
)

DEFAULT = TargetPolicy()


class Dns:
    """A resolver whose answers the test changes (a name re-pointed after creation)."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.asked.append((host, port))
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.answers[host]


@pytest.mark.parametrize(
    ("address", "category"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("fe80::1", "link-local"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("fd12:3456::1", "private"),  # ULA
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("100.64.0.1", "reserved"),  # RFC 6598 shared space
        ("240.0.0.1", "private"),  # Python counts IANA special ranges as private
        ("8.8.8.8", None),
        ("2001:4860:4860::8888", None),
        ("203.119.206.1", None),
    ],
)
def test_forbidden_categories(address: str, category: str | None) -> None:
    assert forbidden_category(ipaddress.ip_address(address)) == category


def test_allowlist_parses_hosts_addresses_and_networks() -> None:
    p = TargetPolicy.parse(" SMS-GW.city.internal. , 10.20.0.0/16, 127.0.0.1,[::1],, ")
    assert p.allowed_hosts == frozenset({"sms-gw.city.internal"})
    assert [str(n) for n in p.allowed_networks] == ["10.20.0.0/16", "127.0.0.1/32", "::1/128"]
    assert TargetPolicy.parse("") == DEFAULT
    for bad in ("http://sms.internal", "*.internal", "sms.internal:8080", "a b"):
        with pytest.raises(NotifyError, match="not a host name, an address or a CIDR"):
            TargetPolicy.parse(bad)


async def test_literal_addresses_are_refused_without_resolving() -> None:
    dns = Dns({})
    for url, category in [
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("https://192.168.0.10/sms", "private"),
        ("http://[::ffff:10.0.0.1]/", "private"),
        ("http://0.0.0.0/", "unspecified"),
    ]:
        with pytest.raises(TargetRefused) as err:
            await DEFAULT.check(url, dns)
        assert err.value.category == category and err.value.permanent
        assert f"is a {category} address" in err.value.reason and "CITYBRAIN_NOTIFY_ALLOWED_HOSTS" in err.value.reason
    assert dns.asked == []
    await DEFAULT.check("https://203.119.206.1/robot", dns)  # public


async def test_names_are_checked_on_every_address_they_resolve_to() -> None:
    dns = Dns({"hooks.example.com": ["93.184.216.34"], "mixed.example.com": ["93.184.216.34", "127.0.0.1"]})
    await DEFAULT.check("https://hooks.example.com/x", dns)
    assert dns.asked == [("hooks.example.com", 443)]
    with pytest.raises(TargetRefused, match=r"mixed\.example\.com \(127\.0\.0\.1\) is a loopback address"):
        await DEFAULT.check("http://mixed.example.com:8080/x", dns)
    # The name is re-pointed after the subscription was made: the next check refuses it.
    dns.answers["hooks.example.com"] = ["127.0.0.1"]
    with pytest.raises(TargetRefused):
        await DEFAULT.check("https://hooks.example.com/x", dns)


async def test_an_unresolvable_name_passes_at_creation_and_fails_retryably_at_send() -> None:
    dns = Dns({})
    await DEFAULT.check("https://not-yet.example.com/x", dns, unresolved_ok=True)
    with pytest.raises(DeliveryFailed, match=r"cannot resolve not-yet\.example\.com") as err:
        await DEFAULT.check("https://not-yet.example.com/x", dns)
    assert not isinstance(err.value, TargetRefused) and not err.value.permanent


async def test_the_allowlist_lets_a_city_reach_its_own_gateway() -> None:
    dns = Dns({"sms-gw.city.internal": ["10.20.3.4"], "other.city.internal": ["10.30.0.1"], "localhost": ["::1"]})
    by_network = TargetPolicy.parse("10.20.0.0/16")
    await by_network.check("http://sms-gw.city.internal/send", dns)
    with pytest.raises(TargetRefused, match="private"):
        await by_network.check("http://other.city.internal/send", dns)
    by_name = TargetPolicy.parse("other.city.internal")
    await by_name.check("http://OTHER.city.internal./send", dns)  # whatever it resolves to
    with pytest.raises(TargetRefused):
        await by_name.check("http://sms-gw.city.internal/send", dns)
    # An allowed IPv4 network does not allow IPv6 loopback.
    with pytest.raises(TargetRefused):
        await TargetPolicy.parse("127.0.0.1").check("http://localhost/", dns)


class _Fixed(AbstractResolver):
    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(hostname=host, host=a, port=port, family=family, proto=0, flags=socket.AI_NUMERICHOST)
            for a in self.addresses
        ]

    async def close(self) -> None:
        pass


async def test_the_connection_resolver_keeps_only_allowed_addresses() -> None:
    """DNS rebinding: whatever the name resolves to when connecting, forbidden addresses are dropped."""
    inner = _Fixed(["93.184.216.34", "127.0.0.1"])
    kept = await PolicyResolver(DEFAULT, inner).resolve("hooks.example.com", 443)
    assert [r["host"] for r in kept] == ["93.184.216.34"]
    inner.addresses = ["127.0.0.1"]
    with pytest.raises(OSError, match="may not reach"):
        await PolicyResolver(DEFAULT, inner).resolve("hooks.example.com", 443)
    allowed = await PolicyResolver(TargetPolicy.parse("127.0.0.0/8"), inner).resolve("hooks.example.com", 443)
    assert [r["host"] for r in allowed] == ["127.0.0.1"]
