"""Start-up's own steps that need no process: adopting an earlier FLM's database file."""

from __future__ import annotations

from pathlib import Path

import pytest

from flm.config import Settings
from flm.startup import DataDirLock, StartupError, adopt_old_database


def test_an_earlier_database_file_is_renamed_with_its_wal(tmp_path: Path) -> None:
    for name in ("flm.sqlite3", "flm.sqlite3-wal", "flm.sqlite3-shm"):
        (tmp_path / name).write_text(name)
    settings = Settings(data_dir=str(tmp_path))
    adopt_old_database(str(tmp_path), settings.db_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flm.db", "flm.db-shm", "flm.db-wal"]
    assert (tmp_path / "flm.db-wal").read_text() == "flm.sqlite3-wal"


def test_a_present_database_is_never_replaced(tmp_path: Path) -> None:
    (tmp_path / "flm.sqlite3").write_text("old")
    (tmp_path / "flm.db").write_text("new")
    adopt_old_database(str(tmp_path), tmp_path / "flm.db")
    assert (tmp_path / "flm.db").read_text() == "new"
    assert (tmp_path / "flm.sqlite3").read_text() == "old"


def test_a_database_elsewhere_leaves_the_data_dir_alone(tmp_path: Path) -> None:
    (tmp_path / "flm.sqlite3").write_text("old")
    elsewhere = tmp_path / "other" / "x.db"
    adopt_old_database(str(tmp_path), elsewhere)
    assert (tmp_path / "flm.sqlite3").exists() and not elsewhere.exists()


def test_two_data_dirs_cannot_share_one_sqlite_file(tmp_path: Path) -> None:
    shared = tmp_path / "shared" / "flm.db"
    shared.parent.mkdir()
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    first = DataDirLock.take(str(tmp_path / "a"), shared)
    try:
        with pytest.raises(StartupError) as e:
            DataDirLock.take(str(tmp_path / "b"), shared)
        assert str(e.value).startswith(f"database: {shared} is in use by another FLM (pid ")
        # the data dir it did lock is free again: it gave up having opened nothing
        DataDirLock.take(str(tmp_path / "b")).release()
    finally:
        first.release()
    DataDirLock.take(str(tmp_path / "b"), shared).release()


def test_the_default_database_takes_the_data_dir_lock_alone(tmp_path: Path) -> None:
    lock = DataDirLock.take(str(tmp_path), tmp_path / "flm.db")
    try:
        assert not (tmp_path / "flm.db.lock").exists()
        with pytest.raises(StartupError, match="data_dir: .* is in use"):
            DataDirLock.take(str(tmp_path))
    finally:
        lock.release()
