"""flm.keys: API key format, hashing, bearer parsing, constant-time checks, the admin token."""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path

import pytest

from flm import keys

URLSAFE = re.compile(r"^[A-Za-z0-9_-]+$")


# new_key, hash_key, key_prefix

def test_new_key_format() -> None:
    key = keys.new_key()
    assert key.startswith("flm-")
    body = key[len("flm-"):]
    # 32 random bytes in unpadded url-safe base64: 43 characters, 256 bits.
    assert len(body) == 43
    assert URLSAFE.match(body)


def test_new_keys_differ_and_use_the_whole_alphabet() -> None:
    made = [keys.new_key() for _ in range(2000)]
    assert len(set(made)) == len(made)
    # Every position of the random part varies, and (almost) all 64 symbols appear:
    # a key that reused a fixed or low-entropy part would fail here.
    bodies = [k[4:] for k in made]
    for i in range(42):  # the last character carries only 4 random bits
        assert len({b[i] for b in bodies}) > 30, i
    assert len(set("".join(bodies))) == 64


def test_hash_key_is_sha256_hex_of_the_key_str_or_bytes() -> None:
    key = "flm-abc"
    expected = hashlib.sha256(b"flm-abc").hexdigest()
    assert keys.hash_key(key) == expected
    assert keys.hash_key(key.encode()) == expected
    assert re.match(r"^[0-9a-f]{64}$", keys.hash_key(keys.new_key()))


def test_hash_key_differs_per_key() -> None:
    assert keys.hash_key("flm-a") != keys.hash_key("flm-b")


def test_key_prefix_tells_keys_apart_and_hides_the_rest() -> None:
    key = keys.new_key()
    prefix = keys.key_prefix(key)
    assert key.startswith(prefix)
    assert prefix.startswith("flm-")
    assert len(prefix) == keys.PREFIX_LEN == 12
    # 8 random characters (48 bits) tell keys apart; the other 35 stay secret.
    assert len(key) - len(prefix) >= 32
    prefixes = {keys.key_prefix(keys.new_key()) for _ in range(1000)}
    assert len(prefixes) == 1000


# bearer_token

@pytest.mark.parametrize("header, token", [
    (b"Bearer flm-abc", b"flm-abc"),
    (b"bearer flm-abc", b"flm-abc"),
    (b"BEARER flm-abc", b"flm-abc"),
    (b"  Bearer flm-abc  ", b"flm-abc"),
    (b"Bearer   flm-abc", b"flm-abc"),
    (b"Bearer flm-abc\r", b"flm-abc"),
])
def test_bearer_token_found(header: bytes, token: bytes) -> None:
    assert keys.bearer_token(header) == token


@pytest.mark.parametrize("header", [
    None,
    b"",
    b"   ",
    b"Bearer",
    b"Bearer ",
    b"Bearer    ",
    b"Basic Zm9vOmJhcg==",
    b"Token flm-abc",
    b"Bearerflm-abc",
    b"Bearer\tflm-abc",
    b"flm-abc",
])
def test_bearer_token_absent(header: bytes | None) -> None:
    assert keys.bearer_token(header) is None


# matches

def test_matches_the_right_key_only() -> None:
    key = keys.new_key()
    stored = keys.hash_key(key)
    assert keys.matches(key.encode(), stored)
    assert not keys.matches(keys.new_key().encode(), stored)
    assert not keys.matches(key.encode()[:-1], stored)
    assert not keys.matches(key.encode() + b"x", stored)
    assert not keys.matches(key.upper().encode(), stored)


def test_matches_none_is_false_even_against_the_hash_of_nothing() -> None:
    assert not keys.matches(None, keys.hash_key(b""))
    assert not keys.matches(None, keys.hash_key(keys.new_key()))


def test_matches_always_goes_through_the_constant_time_compare(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing key, a wrong key and the right key all take the same path."""
    calls: list[tuple[str, str]] = []
    real = keys.hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        calls.append((a, b))
        return real(a, b)
    monkeypatch.setattr(keys.hmac, "compare_digest", spy)
    key = keys.new_key()
    stored = keys.hash_key(key)
    assert keys.matches(key.encode(), stored)
    assert not keys.matches(b"flm-wrong", stored)
    assert not keys.matches(None, stored)
    assert len(calls) == 3
    # What is compared is always a full digest, never the key itself.
    assert all(len(a) == 64 and b == stored for a, b in calls)


# the admin token

def test_admin_token_from_the_environment_wins(tmp_path: Path) -> None:
    (tmp_path / "admin-token").write_text("from-file\n")
    assert keys.load_admin_token(str(tmp_path), "from-env") == "from-env"


def test_admin_token_from_the_environment_writes_no_file(tmp_path: Path) -> None:
    assert keys.load_admin_token(str(tmp_path), "from-env") == "from-env"
    assert not (tmp_path / "admin-token").exists()


def test_empty_env_token_falls_back_to_the_file(tmp_path: Path) -> None:
    token = keys.load_admin_token(str(tmp_path), "")
    assert (tmp_path / "admin-token").read_text().strip() == token


def test_admin_token_created_0600_and_reused(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        token = keys.load_admin_token(str(tmp_path), None)
    finally:
        os.umask(old)
    path = tmp_path / "admin-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == token + "\n"
    assert len(token) >= 43 and URLSAFE.match(token)
    assert keys.load_admin_token(str(tmp_path), None) == token
    assert keys.load_admin_token(str(tmp_path), None) == token


def test_admin_token_written_by_hand_is_used_stripped(tmp_path: Path) -> None:
    (tmp_path / "admin-token").write_text("  my-token \n\n")
    assert keys.load_admin_token(str(tmp_path), None) == "my-token"


def test_empty_admin_token_file_is_replaced_and_made_private(tmp_path: Path) -> None:
    path = tmp_path / "admin-token"
    path.write_text("\n")
    path.chmod(0o644)
    token = keys.load_admin_token(str(tmp_path), None)
    assert token and path.read_text().strip() == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_ensure_data_dir_is_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        keys.ensure_data_dir(str(tmp_path / "a" / "b"))
        keys.ensure_data_dir(str(tmp_path / "a" / "b"))  # again: no error
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o700
