"""flm.config: TOML merged under the command line, sizes, validation naming the setting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest

from flm.config import (
    Settings,
    SettingsError,
    default_data_dir,
    load_settings,
)
from flm.setting_checks import parse_size

DATA = "/srv/flm"


def toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "flm.toml"
    path.write_text(text)
    return str(path)


def load(tmp_path: Path, text: str | None = None, **cli: Any) -> Settings:
    cli.setdefault("data_dir", DATA)
    return load_settings(cli, toml(tmp_path, text) if text is not None else None)


# sizes

@pytest.mark.parametrize("value, expected", [
    (0, 0),
    (1024, 1024),
    ("1024", 1024),
    ("10b", 10),
    ("10B", 10),
    ("2GiB", 2 * 1024**3),
    ("2gib", 2 * 1024**3),
    ("2 GiB", 2 * 1024**3),
    (" 2Gi ", 2 * 1024**3),
    ("512MB", 512 * 1000**2),
    ("512 mb", 512 * 1000**2),
    ("512M", 512 * 1000**2),
    ("10MiB", 10 * 1024**2),
    ("1.5KiB", 1536),
    ("1k", 1000),
    ("1TiB", 1024**4),
    ("3TB", 3 * 1000**4),
])
def test_parse_size(value: Any, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize("value", [
    True, False, "", "lots", "2XB", "GiB", "-1GiB", "1e3", "0x10", "2 GiB B", None, [1],
])
def test_parse_size_rejects(value: Any) -> None:
    with pytest.raises(ValueError):
        parse_size(value)


# defaults and the data dir

def test_defaults() -> None:
    s = Settings(data_dir=DATA)
    assert s.admin == "tcp:8420:interface=127.0.0.1"
    assert s.backend == "http://127.0.0.1:11434"
    assert s.backend_kind == "ollama"
    assert s.max_body_bytes == 10 * 1024 * 1024
    assert s.db_path == Path(DATA) / "flm.db"


def test_max_queued_bytes(tmp_path: Path) -> None:
    assert Settings(data_dir=DATA).max_queued_bytes == 256 * 1024**2
    assert load(tmp_path, 'max_queued_bytes = "64MiB"\n').max_queued_bytes == 64 * 1024**2
    with pytest.raises(SettingsError, match="^max_queued_bytes"):
        load(tmp_path, "max_queued_bytes = 0\n")


def test_default_data_dir_from_env_else_home() -> None:
    assert default_data_dir({"FLM_DATA_DIR": "/x"}) == "/x"
    assert default_data_dir({"FLM_DATA_DIR": ""}).endswith("/.local/share/flm")
    assert default_data_dir({}) == str(Path("~/.local/share/flm").expanduser())


def test_no_file_no_cli_is_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLM_DATA_DIR", "/from/env")
    assert load_settings({}) == Settings(data_dir="/from/env")


@pytest.mark.parametrize("kind, expected", [("ollama", 1), ("openai", 4)])
def test_backend_concurrency_default_per_kind(kind: str, expected: int) -> None:
    assert Settings(data_dir=DATA, backend_kind=kind).backend_concurrency == expected
    assert Settings(data_dir=DATA, backend_kind=kind,
                    backend_max_concurrent=7).backend_concurrency == 7


# merging

def test_toml_values_are_read(tmp_path: Path) -> None:
    s = load(tmp_path, 'backend = "http://gpu:8000"\nbackend_kind = "openai"\n'
                       'max_body_bytes = "2MiB"\nmemory_limit = "1GiB"\n'
                       'grace_period_s = 0\nconnect_timeout_s = 2.5\n')
    assert s == Settings(data_dir=DATA, backend="http://gpu:8000", backend_kind="openai",
                         max_body_bytes=2 * 1024**2, memory_limit=1024**3,
                         grace_period_s=0, connect_timeout_s=2.5)


def test_command_line_wins_over_toml(tmp_path: Path) -> None:
    s = load(tmp_path, 'backend = "http://from-file:1"\ndata_dir = "/file"\n'
                       'backend_max_concurrent = 2\nadmin = "tcp:1:interface=127.0.0.1"\n',
             data_dir="/cli", backend="http://from-cli:2", backend_max_concurrent=3)
    assert s == Settings(data_dir="/cli", backend="http://from-cli:2",
                         backend_max_concurrent=3, admin="tcp:1:interface=127.0.0.1")


def test_cli_none_means_not_given(tmp_path: Path) -> None:
    s = load(tmp_path, 'backend = "http://from-file:1"\n', backend=None, admin=None)
    assert s.backend == "http://from-file:1"
    assert s.admin == Settings(data_dir=DATA).admin


def test_cli_zero_is_a_value_not_absence(tmp_path: Path) -> None:
    """The command line's 0 is taken (and refused), not mistaken for "not given"."""
    with pytest.raises(SettingsError, match="^backend_max_concurrent: must be a positive"):
        load(tmp_path, "backend_max_concurrent = 5\n", backend_max_concurrent=0)


@pytest.mark.parametrize("toml, message", [
    ("admin_allowed_hosts = [1]", "admin_allowed_hosts: must be a list of host names, got [1]"),
    ('admin_allowed_hosts = "x"', "admin_allowed_hosts: must be a list of host names, got 'x'"),
    ("backend = 5", "backend: must be a string, got 5"),
    ('request_log = "yes"', "request_log: must be true or false, got 'yes'"),
    ('metrics_public = "no"', "metrics_public: must be true or false, got 'no'"),
    ("admin_insecure = 1", "admin_insecure: must be true or false, got 1"),
    ("first_port = 80.5", "first_port: must be a whole number, got 80.5"),
    ("grace_period_s = true", "grace_period_s: must be a number, got True"),
    ('tls_cert = ["a"]', "tls_cert: must be a string, got ['a']"),
    ("backend_max_concurrent = 0", "backend_max_concurrent: must be a positive number, got 0"),
    ('database = "postgresql://u:secret@h/"', "database: must be sqlite:PATH or postgresql://"
     "USER@HOST:PORT/DB: the URL names no database"),
    ('database = "flm.db"', "database: must be sqlite:PATH or postgresql://USER@HOST:PORT/DB, "
     "got 'flm.db'"),
])
def test_a_toml_value_of_the_wrong_kind_is_one_line(tmp_path: Path, toml: str,
                                                    message: str) -> None:
    with pytest.raises(SettingsError) as e:
        load(tmp_path, toml + "\n")
    assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)


def test_database_path(tmp_path: Path) -> None:
    assert load(tmp_path, 'database = "sqlite:/x/y.db"\n').db_path == Path("/x/y.db")
    assert load(tmp_path, 'database = "sqlite:/x/y.db"\n').store_database == Path("/x/y.db")


def test_a_postgresql_database_is_its_url(tmp_path: Path) -> None:
    url = "postgresql://flm@db.example:5432/flm"
    settings = load(tmp_path, f'database = "{url}"\n')
    assert settings.on_postgresql and settings.store_database == url
    assert not load(tmp_path, "").on_postgresql


# errors name the setting

def test_unknown_setting_in_toml_is_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"^max_bodyy_bytes: unknown setting$"):
        load(tmp_path, "max_bodyy_bytes = 5\n")


def test_toml_table_is_an_unknown_setting(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"^limits: unknown setting"):
        load(tmp_path, "[limits]\nmax_queue = 3\n")


def test_unknown_cli_setting_is_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="^nope: unknown setting"):
        load_settings({"nope": 1})


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"^config: cannot read .*missing\.toml"):
        load_settings({}, str(tmp_path / "missing.toml"))


def test_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"^config: .* is not valid TOML"):
        load(tmp_path, "backend = \n")


@pytest.mark.parametrize("line, name", [
    ("first_port = 0", "first_port"),
    ("first_port = -1", "first_port"),
    ("first_port = true", "first_port"),
    ('first_port = "8080"', "first_port"),
    ("connect_timeout_s = 0", "connect_timeout_s"),
    ("grace_period_s = -1", "grace_period_s"),
    ("backend_max_concurrent = -1", "backend_max_concurrent"),
    ("log_batch_rows = 0", "log_batch_rows"),
    ("max_body_bytes = 0", "max_body_bytes"),
    ("max_body_bytes = -5", "max_body_bytes"),
    ('backend_kind = "vllm"', "backend_kind"),
])
def test_out_of_range_values_name_the_setting(tmp_path: Path, line: str, name: str) -> None:
    with pytest.raises(SettingsError, match=rf"\b{name}\b"):
        load(tmp_path, line + "\n")


@pytest.mark.parametrize("line, name", [
    ('memory_limit = "lots"', "memory_limit"),
    ('max_body_bytes = "10 parsecs"', "max_body_bytes"),
    ("admin_max_body_bytes = true", "admin_max_body_bytes"),
])
def test_bad_sizes_name_the_setting(tmp_path: Path, line: str, name: str) -> None:
    with pytest.raises(SettingsError, match=rf"^{name}: "):
        load(tmp_path, line + "\n")


@pytest.mark.parametrize("line, name", [
    ("log_batch_rows = 2.5", "log_batch_rows"),
    ("first_port = 8080.5", "first_port"),
    ("backend_max_concurrent = 1.5", "backend_max_concurrent"),
    ("config_cache_size = 0.5", "config_cache_size"),
])
def test_integer_settings_refuse_fractions(tmp_path: Path, line: str, name: str) -> None:
    with pytest.raises(SettingsError, match=rf"^{name}: "):
        load(tmp_path, line + "\n")


def test_settings_are_frozen() -> None:
    s = Settings(data_dir=DATA)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        s.backend = "x"  # type: ignore[misc]


def test_metrics_public_and_where_the_admin_listens() -> None:
    from flm.config import Settings
    assert Settings().admin_on_loopback and not Settings().metrics_public
    assert Settings(admin="unix:/tmp/flm.sock").admin_on_loopback
    wide = Settings(admin="tcp:8420:interface=0.0.0.0", admin_insecure=True)
    assert not wide.admin_on_loopback
    assert not Settings(admin="tcp:8420", admin_insecure=True).admin_on_loopback
    assert Settings(metrics_public=True).metrics_public


def test_tls_cert_and_key_go_together() -> None:
    import pytest

    from flm.config import Settings, SettingsError
    assert Settings(tls_cert="/c.pem", tls_key="/k.pem").tls_cert == "/c.pem"
    with pytest.raises(SettingsError, match="^tls_cert:"):
        Settings(tls_cert="/c.pem")
    with pytest.raises(SettingsError, match="^tls_cert:"):
        Settings(tls_key="/k.pem")


@pytest.mark.parametrize("field, value", [
    ("backend", "localhost:11434"),
    ("backend", "127.0.0.1:11434"),
    ("backend", "ftp://127.0.0.1/"),
    ("backend", "http://"),
    ("backend", "http://host:99999"),
    ("backend_kind", "llama"),
    ("admin", "tcp:notaport"),
    ("admin", "bogus:8420"),
    ("admin", "8420"),
    ("api_host", "not an address"),
    ("first_port", 70000),
])
def test_wrong_values_are_one_line_naming_the_setting(field: str, value: Any) -> None:
    with pytest.raises(SettingsError) as e:
        Settings(**{field: value})
    message = str(e.value)
    assert message.startswith(f"{field}: ") and "\n" not in message, message
    assert "Attribute(" not in message, message


@pytest.mark.parametrize("field, value", [
    ("backend", "https://gpu.example:8000/v1"),
    ("backend", "http://[::1]:11434"),
    ("admin", "unix:/tmp/flm.sock"),
    ("admin", "tcp6:8420:interface=\\:\\:1"),
    ("api_host", "::1"),
])
def test_right_values_pass(field: str, value: Any) -> None:
    assert getattr(Settings(**{field: value}), field) == value
