"""flm.tap: ``twistd flm`` options (the whole parsed result), the plugin, the service tree."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
from twisted.application.service import IServiceMaker, MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python import usage

from flm import tap
from flm.config import Settings


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLM_DATA_DIR", str(tmp_path / "env-data"))
    monkeypatch.setenv("FLM_ADMIN_TOKEN", "test-admin-token")


def parse(*argv: str) -> Settings:
    options = tap.Options()
    options.parseOptions(list(argv))
    return options["settings"]


def test_no_options_is_the_defaults(tmp_path: Path) -> None:
    assert parse() == Settings(data_dir=str(tmp_path / "env-data"))


def test_every_long_option() -> None:
    assert parse("--data-dir", "/d", "--admin", "tcp:9000:interface=127.0.0.1",
                 "--backend", "http://b:1", "--backend-kind", "openai",
                 "--backend-max-concurrent", "3") == Settings(
        data_dir="/d", admin="tcp:9000:interface=127.0.0.1", backend="http://b:1",
        backend_kind="openai",
        backend_max_concurrent=3)


def test_every_short_option() -> None:
    assert parse("-d", "/d", "-a", "unix:/tmp/s", "-b", "http://b:1", "-k", "ollama",
                 "-m", "2") == Settings(data_dir="/d", admin="unix:/tmp/s",
                                        backend="http://b:1", backend_max_concurrent=2)


def test_config_file_and_command_line_wins(tmp_path: Path) -> None:
    config = tmp_path / "flm.toml"
    config.write_text('backend = "http://file:1"\nbackend_kind = "openai"\n'
                      'max_body_bytes = "1MiB"\nfirst_port = 9000\n')
    assert parse("--config", str(config), "--backend", "http://cli:2") == Settings(
        data_dir=str(tmp_path / "env-data"), backend="http://cli:2", backend_kind="openai",
        max_body_bytes=1024**2, first_port=9000)


@pytest.mark.parametrize("argv, message", [
    (["--backend-kind", "vllm"], "backend_kind"),
    (["--backend-max-concurrent", "-1"], "backend_max_concurrent: must be a positive number"),
    (["--backend-max-concurrent", "lots"], "'lots'"),  # Twisted's own message
    (["--config", "/nonexistent/flm.toml"], "config: cannot read /nonexistent/flm.toml"),
    (["--no-such-option"], "no-such-option"),
    (["extra-argument"], "Wrong number of arguments"),
])
def test_usage_errors(argv: list[str], message: str) -> None:
    with pytest.raises(usage.UsageError) as e:
        parse(*argv)
    assert message in str(e.value)


def test_unknown_setting_in_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "flm.toml"
    config.write_text("max_queue = 3\n")
    with pytest.raises(usage.UsageError, match="^max_queue: unknown setting$"):
        parse("--config", str(config))


def test_the_plugin_is_found_once_as_flm() -> None:
    makers = [m for m in getPlugins(IServiceMaker) if m.tapname == "flm"]
    assert len(makers) == 1
    maker = makers[0]
    assert maker.options is tap.Options
    assert maker.makeService == tap.makeService
    assert maker.description


def test_make_service_builds_the_tree_store_first(tmp_path: Path) -> None:
    data = tmp_path / "data"
    options = tap.Options()
    options.parseOptions(["--data-dir", str(data), "--admin", "tcp:0:interface=127.0.0.1"])
    service = tap.makeService(options, MemoryReactorClock())
    assert isinstance(service, MultiService)
    children = list(service)
    assert children[0] is service.store
    names = [getattr(child, "name", None) for child in children]
    assert names[0] == "store"
    # what writes to the store stops before it: after it in the list
    assert {"logbuffer", "registry"} <= set(names[1:])
    assert names.index("logbuffer") < names.index("registry")
    assert not service.running
    # The data dir exists (private) but nothing was started: no database yet.
    assert data.is_dir()
    assert not (data / "flm.db").exists()


def test_long_lived_objects_are_frozen_once_the_services_have_started(
        tmp_path: Path) -> None:
    """Out of the cycle collector's sight: its full collections cost the reactor ~4% of
    the proxy's throughput (bench.ab)."""
    options = tap.Options()
    options.parseOptions(["--data-dir", str(tmp_path / "d")])
    reactor = MemoryReactorClock()
    tap.makeService(options, reactor)
    gc.unfreeze()
    thresholds = gc.get_threshold()
    try:
        for hook, args, kwargs in reactor.whenRunningHooks:
            hook(*args, **kwargs)
        assert gc.get_freeze_count() == 0  # not during the startup hooks
        reactor.advance(0)
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == 7000
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def test_make_service_writes_the_admin_token_without_env(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLM_ADMIN_TOKEN")
    options = tap.Options()
    options.parseOptions(["--data-dir", str(tmp_path / "d")])
    tap.makeService(options, MemoryReactorClock())
    token = (tmp_path / "d" / "admin-token").read_text().strip()
    assert len(token) >= 43
    assert (tmp_path / "d" / "admin-token").stat().st_mode & 0o777 == 0o600


def test_under_twistd_a_wrong_setting_is_one_line_and_exit_1(
        capsys: pytest.CaptureFixture[str]) -> None:
    from twisted.scripts.twistd import ServerOptions
    config = ServerOptions()
    with pytest.raises(SystemExit) as e:
        config.parseOptions(["-n", "flm", "--backend", "localhost:11434"])
    assert e.value.code == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.startswith("flm: backend: ") and out.err.count("\n") == 1, out.err


@pytest.mark.parametrize("toml, expected", [("", 4.0), ("backend_idle_timeout_s = 1.5\n", 1.5)])
def test_idle_backend_connections_close_before_the_backend_closes_them(
        tmp_path: Path, toml: str, expected: float) -> None:
    """uvicorn (vLLM) closes idle keep-alive connections after 5 s; Twisted keeps them 240 s."""
    config = tmp_path / "flm.toml"
    config.write_text(toml)
    options = tap.Options()
    options.parseOptions(["--data-dir", str(tmp_path / "d"), "--config", str(config),
                          "--admin", "tcp:0:interface=127.0.0.1"])
    service = tap.makeService(options, MemoryReactorClock())
    pools = next(child.pools for child in service if hasattr(child, "pools"))
    assert [p.cachedConnectionTimeout for p in pools] == [expected] * len(pools)
