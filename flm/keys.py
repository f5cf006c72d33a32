"""API keys and the admin token: generated here, stored only as hashes, compared in constant time.

The keys are 256-bit random strings, so a fast hash (SHA-256) is enough: there is nothing
to brute-force that a slow password hash would protect.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

KEY_PREFIX = "flm-"
PREFIX_LEN = len(KEY_PREFIX) + 8


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str | bytes) -> str:
    if isinstance(key, str):
        key = key.encode()
    return hashlib.sha256(key).hexdigest()


def key_prefix(key: str) -> str:
    """Enough of the key to tell keys apart in a list; useless for guessing the rest."""
    return key[:PREFIX_LEN]


def bearer_token(header: bytes | None) -> bytes | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    return token.strip() or None


def matches(presented: bytes | None, stored_hash: str) -> bool:
    """Constant-time check of a presented key against a stored hash."""
    digest = hashlib.sha256(presented or b"").hexdigest()
    return hmac.compare_digest(digest, stored_hash) and presented is not None


def load_admin_token(data_dir: str, env_token: str | None) -> str:
    """``$FLM_ADMIN_TOKEN`` if set, else ``<data-dir>/admin-token``, created 0600 on first use."""
    if env_token:
        return env_token
    path = Path(data_dir) / "admin-token"
    try:
        token = path.read_text().strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing (empty) file keeps its mode otherwise
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def ensure_data_dir(data_dir: str) -> None:
    """Create the data dir readable by its owner only (it holds the token and the database)."""
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
