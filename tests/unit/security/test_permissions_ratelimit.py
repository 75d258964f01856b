"""Permission table, principals, CSRF tokens and login buckets (fake clock, no sleeping)."""

from __future__ import annotations

import pytest

from citybrain.security.auth import require
from citybrain.security.identities import PERMISSIONS, ROLES, Principal, csrf_token, grants_of, roles_with
from citybrain.security.ratelimit import BucketSpec, LoginLimiter, TokenBuckets


def test_permission_table_is_closed_over_known_roles() -> None:
    for permission, roles in PERMISSIONS.items():
        assert roles <= set(ROLES), permission
        assert "admin" in roles, permission  # admin can do everything
    assert roles_with("audit:read") == {"admin", "auditor"}
    assert "app" not in roles_with("commands:send")
    with pytest.raises(KeyError):
        require("devices:reed")


def test_principal_can() -> None:
    p = Principal("olga", frozenset({"operator"}))
    assert p.can("alerts:act") and p.can("readings:read") and not p.can("audit:read")
    assert "session_token" not in p.as_json()


def test_csrf_token_is_bound_to_the_session() -> None:
    assert csrf_token("a") == csrf_token("a") != csrf_token("b")


def test_grants_of_splits_commas() -> None:
    assert grants_of(["350203,350206", " 350203 ", ""]) == ("350203", "350206")


def test_buckets_refill_and_stay_bounded() -> None:
    now = [0.0]
    buckets = TokenBuckets(BucketSpec(2, 0.5), clock=lambda: now[0], max_keys=3)
    buckets.take("k")
    buckets.take("k")
    assert not buckets.available("k")
    assert buckets.retry_after("k") == pytest.approx(2.0)
    now[0] = 2.0
    assert buckets.available("k")
    for k in "abcd":
        buckets.take(k)
    assert len(buckets) == 3


def test_limiter_user_then_ip() -> None:
    limiter = LoginLimiter(per_user=BucketSpec(2, 0.01), per_ip=BucketSpec(3, 0.01), clock=lambda: 0.0)
    limiter.failed("Olga", "10.0.0.1")
    limiter.failed("olga", "10.0.0.1")
    blocked = limiter.blocked("OLGA", "10.0.0.2")
    assert blocked is not None and blocked[0] == "user"
    limiter.failed("bob", "10.0.0.1")
    blocked = limiter.blocked("carol", "10.0.0.1")
    assert blocked is not None and blocked[0] == "ip"
    assert limiter.blocked("carol", "10.0.0.3") is None
