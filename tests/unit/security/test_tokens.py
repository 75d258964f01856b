"""HS256 JWTs: round trip, expiry with leeway, rotation, and forgeries."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import jwt
import pytest

from citybrain.security.errors import TokenError
from citybrain.security.tokens import KeyRing, SigningKey, issue, sign_jwt, verify_jwt

T0 = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
K1 = SigningKey("k1", b"1" * 32, T0 - timedelta(days=1))
K2 = SigningKey("k2", b"2" * 32, T0)


def _reason(token: str, ring: KeyRing, now: datetime = T0) -> str:
    with pytest.raises(TokenError) as err:
        verify_jwt(token, ring, now=now)
    return err.value.reason


def test_round_trip_and_expiry_with_leeway() -> None:
    ring = KeyRing.of([K1])
    token = issue("olga", ring, now=T0, ttl=timedelta(minutes=15))
    assert verify_jwt(token, ring, now=T0)["sub"] == "olga"
    assert verify_jwt(token, ring, now=T0 + timedelta(minutes=15, seconds=29))["sub"] == "olga"
    assert _reason(token, ring, T0 + timedelta(minutes=15, seconds=31)) == "expired"
    assert _reason(token, ring, T0 - timedelta(minutes=1)) == "not_yet_valid"
    with pytest.raises(TokenError):
        issue("olga", ring, now=T0, ttl=timedelta(days=1))


def test_rotation_previous_key_verifies_until_its_tokens_expire() -> None:
    old = issue("olga", KeyRing.of([K1]), now=T0, ttl=timedelta(hours=1))
    rotated = KeyRing.of([SigningKey("k1", K1.secret, K1.created_at, T0), K2])
    assert rotated.current().kid == "k2"
    assert verify_jwt(old, rotated, now=T0 + timedelta(minutes=30))["sub"] == "olga"
    new = issue("olga", rotated, now=T0, ttl=timedelta(hours=1))
    assert json.loads(base64.urlsafe_b64decode(new.split(".")[0] + "=="))["kid"] == "k2"
    # Long after retirement the old kid is refused outright.
    assert _reason(old, rotated, T0 + timedelta(hours=3)) == "unknown_kid"
    with pytest.raises(TokenError):
        KeyRing.of([SigningKey("k1", K1.secret, K1.created_at, T0)]).current()


def _b64(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


def test_forgeries_are_refused() -> None:
    ring = KeyRing.of([K1])
    token = issue("olga", ring, now=T0, ttl=timedelta(minutes=5))
    head, body, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    assert _reason(f"{head}.{_b64({**claims, 'sub': 'admin'})}.{sig}", ring) == "bad_signature"
    assert _reason(f"{_b64({'alg': 'none', 'kid': 'k1'})}.{body}.", ring) == "bad_alg"
    # Another HMAC algorithm with the same key is refused too: the verifier fixes HS256.
    hs512 = jwt.encode(claims, K1.secret * 2, algorithm="HS512", headers={"kid": "k1"})
    assert _reason(hs512, ring) == "bad_alg"
    assert _reason(f"{_b64({'alg': 'HS256', 'kid': 7})}.{body}.{sig}", ring) in {"unknown_kid", "malformed"}
    assert _reason(f"{_b64({'alg': 'HS256', 'kid': 'nope'})}.{body}.{sig}", ring) == "unknown_kid"
    assert _reason(token + "x", ring) in {"bad_signature", "malformed"}
    assert _reason("a.b", ring) == "malformed"
    assert _reason("!!.@@.##", ring) == "malformed"
    other = SigningKey("k1", b"x" * 32, T0)
    assert _reason(sign_jwt(claims, other), ring) == "bad_signature"
    assert _reason(sign_jwt({**claims, "iss": "evil"}, K1), ring) == "bad_issuer"
    too_long = {**claims, "exp": claims["iat"] + 10 * 3600}
    assert _reason(sign_jwt(too_long, K1), ring) == "malformed"
    assert "secret" not in repr(K1) and "1111" not in repr(K1)
