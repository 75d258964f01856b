import base64
import hashlib
import re

import pytest

from devices.credentials import (
    ScryptParams,
    hash_secret,
    mosquitto_hash,
    new_secret,
    parse_service_user,
    render_acl_file,
    render_password_file,
    verify_mosquitto,
    verify_secret,
)
from devices.errors import CredentialError


def test_scrypt_hash_carries_its_parameters_and_verifies() -> None:
    secret = new_secret()
    encoded = hash_secret(secret, ScryptParams(ln=10, r=8, p=1))
    assert re.fullmatch(r"\$scrypt\$ln=10,r=8,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}", encoded)
    assert verify_secret(secret, encoded)
    assert not verify_secret(secret + "x", encoded)
    assert not verify_secret("", encoded)


def test_scrypt_hash_is_salted() -> None:
    assert hash_secret("s3cret-s3cret", ScryptParams(ln=4)) != hash_secret("s3cret-s3cret", ScryptParams(ln=4))


def test_scrypt_matches_hashlib_with_given_salt() -> None:
    salt = bytes(range(16))
    encoded = hash_secret("pw", ScryptParams(ln=4, r=8, p=1), salt=salt)
    want = hashlib.scrypt(b"pw", salt=salt, n=16, r=8, p=1, dklen=32)
    assert encoded.split("$")[-1] == base64.b64encode(want).decode().rstrip("=")


@pytest.mark.parametrize(
    "bad",
    ["", "plain", "$scrypt$ln=99,r=8,p=1$AAAA$AAAA", "$scrypt$ln=4,r=8,p=1$!!$AAAA", "$7$0$AAAA$AAAA"],
)
def test_malformed_hashes_verify_nothing(bad: str) -> None:
    assert not verify_secret("anything", bad)


def test_mosquitto_hash_format() -> None:
    encoded = mosquitto_hash("correct horse", salt=b"\x01" * 12)
    kind, iterations, salt64, hash64 = encoded.split("$")[1:]
    assert (kind, iterations) == ("7", "1000")
    assert base64.b64decode(salt64) == b"\x01" * 12  # standard base64, padded: 16 chars for 12 bytes
    assert len(salt64) == 16 and len(hash64) == 88 and hash64.endswith("==")
    want = hashlib.pbkdf2_hmac("sha512", b"correct horse", b"\x01" * 12, 1000)
    assert base64.b64decode(hash64) == want


def test_mosquitto_hash_round_trips_through_both_verifiers() -> None:
    secret = new_secret()
    encoded = mosquitto_hash(secret)
    assert verify_mosquitto(secret, encoded)
    assert verify_secret(secret, encoded)  # the broker accepts $7$ rows too
    assert not verify_mosquitto(secret[:-1], encoded)


def test_mosquitto_hash_with_2_0_defaults_verifies() -> None:
    # mosquitto_passwd 2.0 wrote 101 iterations; the count is read from the string.
    encoded = mosquitto_hash("pw-pw-pw", iterations=101)
    assert encoded.startswith("$7$101$")
    assert verify_mosquitto("pw-pw-pw", encoded)


def test_password_and_acl_files() -> None:
    code = "35020603080000017"
    text = render_password_file([(code, mosquitto_hash("a-secret-value")), ("gateway", mosquitto_hash("gw"))])
    lines = text.splitlines()
    assert lines[0].startswith(code + ":$7$1000$")
    assert len(lines) == 2
    with pytest.raises(CredentialError):
        render_password_file([(code, hash_secret("x", ScryptParams(ln=4)))])
    acl = render_acl_file(["gateway"])
    assert "pattern write citybrain/up/%u/#" in acl
    assert "pattern read citybrain/cmd/%u" in acl
    assert "user gateway\ntopic readwrite citybrain/#" in acl


def test_service_user_parsing() -> None:
    user = parse_service_user("gateway:long-enough-secret")
    assert (user.name, user.secret) == ("gateway", "long-enough-secret")
    for bad in ("gateway", "gateway:short", "35020603080000017:long-enough-secret", "1bad:long-enough-secret"):
        with pytest.raises(CredentialError):
            parse_service_user(bad)
