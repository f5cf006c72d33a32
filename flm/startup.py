"""What must hold before FLM runs: the data dir is ours alone, and the admin endpoint listens.

``twistd`` calls ``makeService`` in the process the user started, before it daemonizes and
before it drops privileges (``--uid``/``--gid``). Checking here means a failure reaches the
user as one line and a non-zero exit status in daemon mode too, having opened nothing. What
is taken here survives the fork: the daemon inherits the locked file and the listening socket
(an ``flock`` lives as long as any descriptor of its open file does).
"""

from __future__ import annotations

import fcntl
import os
import resource
import sys
from pathlib import Path
from typing import Any, NoReturn

import attrs
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.python.failure import Failure

LOCK_FILE = "flm.lock"
# Files FLM keeps in its data dir; handed to the user twistd switches to.
OWNED_FILES = ("admin-token", LOCK_FILE, "flm.db", "flm.db-wal", "flm.db-shm")
#: What FLM before 0.2 called its database in the data dir.
OLD_DB_FILE = "flm.sqlite3"


class StartupError(Exception):
    """FLM cannot start; the message is one line that names the cause."""


def exit_with(message: str) -> NoReturn:
    """Say why in one line on stderr and exit non-zero (no usage text, no traceback)."""
    sys.stderr.write(f"flm: {message}\n")
    sys.stderr.flush()
    raise SystemExit(1)


@attrs.frozen
class Owner:
    """The user and group ``twistd --uid/--gid`` runs FLM as after start-up."""

    uid: int
    gid: int


def twistd_owner(options: Any) -> Owner | None:
    """The user twistd will switch to, from the twistd options above ours; None if none."""
    parent = getattr(options, "parent", None)
    if parent is None:
        return None
    uid, gid = parent.get("uid"), parent.get("gid")
    if uid is None and gid is None:
        return None
    if uid is None:
        uid = os.getuid()
    if gid is None:
        import pwd
        gid = pwd.getpwuid(uid).pw_gid
    return Owner(int(uid), int(gid))


def make_data_dir(data_dir: str, owner: Owner | None) -> None:
    """Create the data dir (owner only); hand it and FLM's files in it to ``owner``."""
    path = Path(data_dir)
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as e:
        raise StartupError(f"data_dir: cannot create {data_dir}: {e.strerror}") from None
    if not path.is_dir():
        raise StartupError(f"data_dir: {data_dir} is not a directory")
    if owner is not None:
        give_to(owner, data_dir)


def give_to(owner: Owner, data_dir: str) -> None:
    """chown the data dir and the files FLM keeps there, so FLM can use them after the drop."""
    path = Path(data_dir)
    for p in (path, *(path / name for name in OWNED_FILES)):
        try:
            os.chown(p, owner.uid, owner.gid)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StartupError(f"data_dir: cannot give {p} to uid {owner.uid}: "
                               f"{e.strerror}") from None


class DataDirLock:
    """An ``flock`` on ``<data-dir>/flm.lock``, which also says the holder's pid; and on
    ``<file>.lock`` beside a SQLite file kept elsewhere (``--database sqlite:PATH``), so two
    data dirs cannot share one database file either."""

    def __init__(self, paths: list[Path], fds: list[int]) -> None:
        self.path = paths[0]
        self._fds = fds

    @classmethod
    def take(cls, data_dir: str, database: Path | None = None) -> "DataDirLock":
        """Lock the data dir (and ``database``) or raise :class:`StartupError` naming the
        FLM that holds it."""
        paths = [Path(data_dir) / LOCK_FILE]
        if database is not None and database.parent.resolve() != Path(data_dir).resolve():
            paths.append(database.with_name(database.name + ".lock"))
        fds: list[int] = []
        try:
            for path, what in zip(paths, ("data_dir", "database")):
                fds.append(_flock(path, what, data_dir if what == "data_dir" else database))
        except StartupError:
            for fd in fds:
                os.close(fd)
            raise
        lock = cls(paths, fds)
        lock.write_pid()
        return lock

    def write_pid(self) -> None:
        """Name this process as the holder; called again in the daemon after the fork."""
        for fd in self._fds:
            os.ftruncate(fd, 0)
            os.pwrite(fd, b"%d\n" % os.getpid(), 0)

    def release(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []


def _flock(path: Path, what: str, name: Any) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        raise StartupError(f"{what}: cannot open {path}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        other = "--data-dir" if what == "data_dir" else "database"
        raise StartupError(f"{what}: {name} is in use by another FLM (pid {holder}); "
                           f"stop it, or give this one another {other}") from None
    return fd


def listen_now(endpoint: Any, factory: Any, description: str) -> IListeningPort:
    """Listen at once (server endpoints of the reactor listen synchronously) or raise
    :class:`StartupError` naming the admin endpoint."""
    outcome: list[Any] = []
    endpoint.listen(factory).addBoth(outcome.append)
    if not outcome:
        raise StartupError(f"admin: {description} did not listen at once")
    result = outcome[0]
    if isinstance(result, Failure):
        reason = result.value.socketError if result.check(CannotListenError) else result.value
        raise StartupError(f"admin: cannot listen on {description}: {reason}")
    return result


def raise_open_files(needed: int) -> str | None:
    """Raise the soft open-file limit to ``needed`` as far as the hard limit allows.

    Returns a one-line warning when the hard limit is lower: the connection caps could
    then meet "too many open files" (accept errors) before they are reached.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinite = resource.RLIM_INFINITY
    target = needed if hard == infinite else min(needed, hard)
    if soft != infinite and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            target = soft
    else:
        target = soft
    if target != infinite and target < needed:
        return (f"max_connections: the open-file limit is {target}, under the {needed} that "
                "one busy API port and its backend connections can need; raise it "
                "(systemd LimitNOFILE=, ulimit -n) or lower max_connections")
    return None


def adopt_old_database(data_dir: str, db_path: Path) -> None:
    """Rename ``flm.sqlite3`` (and its WAL files) to the default ``flm.db``, once, under the
    data dir lock: a data dir of an earlier FLM keeps its APIs, keys and logs."""
    old = Path(data_dir) / OLD_DB_FILE
    if db_path.exists() or not old.exists() or db_path.parent != old.parent:
        return
    for suffix in ("-wal", "-shm", ""):  # the database file last: it is what we test for
        source = old.with_name(old.name + suffix)
        if source.exists():
            source.rename(db_path.with_name(db_path.name + suffix))
