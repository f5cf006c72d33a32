"""``flm keys``: what each command sends (over a loopback admin stand-in) and how it reads.

The end-to-end run against the real service is in tests/e2e/test_keys_cli.py."""

from __future__ import annotations

import argparse
from datetime import datetime, timezone

import pytest

from flm.cli import keys as cli_keys
from flm.cli.parser import build_parser

NOW = datetime(2026, 1, 31, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("15m", 900), ("12h", 43200),
                                           ("30d", 2592000), ("2w", 1209600), ("45", 45)])
def test_durations(text: str, seconds: int) -> None:
    assert cli_keys.duration_s(text) == seconds


@pytest.mark.parametrize("text", ["", "3y", "-1d", "1.5h", "d"])
def test_wrong_durations_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        cli_keys.duration_s(text)


def test_expiry_from_a_duration_an_iso_time_or_never() -> None:
    assert cli_keys.expiry("30d", now=lambda: NOW) == "2026-03-02T12:00:00Z"
    assert cli_keys.expiry("2027-01-01T00:00:00Z") == "2027-01-01T00:00:00Z"
    assert cli_keys.expiry("never") is None


def test_create_sends_only_what_is_given() -> None:
    args = build_parser().parse_args(["keys", "create", "chat", "ci", "--rpm", "60",
                                      "--daily-tokens", "none"])
    assert cli_keys.key_path(args) == "/api/apis/chat/keys"
    assert cli_keys._body(args) == {"name": "ci", "rate_limit_rpm": 60,
                                    "daily_token_budget": None}


def test_update_renames_and_paths_name_the_key() -> None:
    args = build_parser().parse_args(["keys", "update", "chat", "c i", "--name", "ci2"])
    assert cli_keys.key_path(args) == "/api/apis/chat/keys/c%20i"
    assert cli_keys._body(args) == {"name": "ci2"}


def test_rotate_sends_the_grace_in_seconds() -> None:
    args = build_parser().parse_args(["keys", "rotate", "chat", "default", "--grace", "1h"])
    assert cli_keys.key_path(args, "/rotate") == "/api/apis/chat/keys/default/rotate"
    assert args.grace_s == 3600


def test_the_list_reads_usage_and_never_the_secret() -> None:
    text = cli_keys.keys_table({"items": [{
        "name": "ci", "id": 3, "status": "active", "prefix": "flm-abcd1234",
        "expires_at": None, "last_used_at": None, "key": "flm-secret",
        "usage": {"requests_today": 5, "tokens_today": 120, "tokens_month": 900}}]})
    assert "flm-secret" not in text and "never" in text and "900" in text


def test_an_expiry_too_far_away_is_a_usage_error_not_a_traceback() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="too far in the future"):
        cli_keys.expiry("99999999d")


def test_an_expiry_that_is_neither_says_what_it_takes() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not a duration"):
        cli_keys.expiry("tomorrow")
