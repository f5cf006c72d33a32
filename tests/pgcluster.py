"""A PostgreSQL server of the test's own: ``initdb`` into a temp dir, started on a free
loopback port, restarted or stopped by the test (the shared server on 5432 must never be
restarted by a test). Needs PostgreSQL's server binaries; as root they run as ``postgres``.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.flmproc import HOST, free_port


def server_bin() -> Path | None:
    """The newest installed PostgreSQL's bin directory (Debian's layout), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


class Cluster:
    """One throwaway server: ``start()``, ``restart()``, ``stop()``; ``url(db)``."""

    def __init__(self) -> None:
        bindir = server_bin()
        if bindir is None:
            raise RuntimeError("no PostgreSQL server binaries (pg_ctl) on this machine")
        self.bin = bindir
        # its own temp dir: as root the server runs as ``postgres`` (initdb refuses root),
        # which cannot enter pytest's private temp dirs
        self.root = Path(tempfile.mkdtemp(prefix="flm-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.root, "postgres")

    def _run(self, *args: str) -> None:
        done = subprocess.run([*self._as, *args], capture_output=True, timeout=60)
        if done.returncode:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({done.returncode}): "
                               f"{(done.stdout + done.stderr).decode(errors='replace')[-2000:]}")

    def _ctl(self, *args: str) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses={HOST} -c fsync=off"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-t", "30",
                  "-l", str(self.root / "server.log"), "-o", options, *args)

    def start(self) -> "Cluster":
        if not self.data.exists():
            self._run(str(self.bin / "initdb"), "-D", str(self.data), "--auth=trust",
                      "-U", "postgres")
        self._ctl("start")
        return self

    def restart(self) -> None:
        self._ctl("-m", "fast", "restart")

    def stop(self) -> None:
        """Stop at once and remove everything."""
        try:
            self._ctl("-m", "immediate", "stop")
        except RuntimeError:
            pass  # not running
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/{database}"
