"""``flm db copy``: moving a SQLite database into PostgreSQL. It runs here, on the files
and servers this machine reaches, not through the admin API: the work is done by
``python -m flm.store.copy`` (the CLI itself knows nothing of the store)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from typing import Any


def db_copy(client: Any, args: argparse.Namespace) -> int:
    """Copy every table of ``--from`` into the empty ``--to``; its exit code."""
    return subprocess.run([sys.executable, "-m", "flm.store.copy", "--from", args.source,
                           "--to", args.target], check=False).returncode


DB_COMMANDS: list[tuple[str, str, list[Any], Any]] = [
    ("copy", "copy a SQLite database into an empty PostgreSQL one (runs locally)", [
        (("--from",), {"dest": "source", "required": True, "metavar": "sqlite:PATH"}),
        (("--to",), {"dest": "target", "required": True, "metavar": "postgresql://..."})],
     db_copy),
]
