"""Moving to PostgreSQL: copy a SQLite database into an empty PostgreSQL one, every table
and every row, ids kept, the id sequences set after.

``python -m flm.store.copy --from sqlite:PATH --to postgresql://...`` (also ``flm db
copy``). Runs locally, not through the admin API; stop FLM first (the copy reads one
snapshot, but rows written after it would not be copied). The source is migrated to the
newest schema first (what the next start would do); the target gets the same schema and
must have no rows. The whole copy is one PostgreSQL transaction: all of it or nothing.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any, Callable

from flm.store.pg import connect, is_postgresql, migrate, redact
from flm.store.pool import SQLiteEngine

BATCH = 5000
#: Tables the schema itself fills (a migration's INSERT): replaced by the source's rows.
SEEDED = frozenset({"config_version"})


class CopyError(Exception):
    """Why the copy did not start (one line)."""


def tables_in_order(src: sqlite3.Connection) -> list[str]:
    """Every table of the source, each after the tables its foreign keys name."""
    names = sorted(r[0] for r in src.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"))
    parents = {t: {r[2] for r in src.execute(f'PRAGMA foreign_key_list("{t}")')} - {t}
               for t in names}
    ordered: list[str] = []
    while len(ordered) < len(names):
        ready = [t for t in names if t not in ordered and parents[t] <= set(ordered)]
        if not ready:
            raise CopyError(f"foreign keys in a cycle: {sorted(set(names) - set(ordered))}")
        ordered += ready
    return ordered


def _columns(src: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in src.execute(f'PRAGMA table_info("{table}")')]


def _identity_start(src: sqlite3.Connection, table: str) -> int:
    """The highest id the table ever gave (AUTOINCREMENT remembers deleted ones)."""
    seq = 0
    if src.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").fetchone():
        row = src.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
        seq = int(row[0]) if row else 0
    top = src.execute(f'SELECT coalesce(max(id), 0) FROM "{table}"').fetchone()[0]
    return max(seq, int(top))


def _refuse_in_use(path: Path) -> None:
    """A running FLM holds the lock of its data dir (``flm.lock`` beside the file, or
    ``<file>.lock``): rows it writes after the copy's snapshot would be left behind."""
    for lock in (path.parent / "flm.lock", path.with_name(path.name + ".lock")):
        if not lock.exists():
            continue
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise CopyError(f"{path} is in use by a running FLM (pid {holder}): stop it "
                            "first") from None
        finally:
            os.close(fd)


def copy_database(source: str, target: str,
                  progress: Callable[[str, int], None] = lambda table, n: None
                  ) -> dict[str, int]:
    """Copy every table of the SQLite ``source`` into the PostgreSQL ``target``; the
    number of rows copied per table."""
    if is_postgresql(source) or not is_postgresql(target):
        raise CopyError("copy goes from sqlite:PATH to postgresql://...")
    path = Path(source.removeprefix("sqlite:")).expanduser()
    if not path.is_file():
        raise CopyError(f"no SQLite database at {path}")
    _refuse_in_use(path)
    SQLiteEngine(path).prepare(lambda c: None)  # checked and at the newest schema
    src = sqlite3.connect(path.absolute().as_uri() + "?mode=ro", uri=True,
                          isolation_level=None)
    dst = connect(target, autocommit=True)
    try:
        migrate(dst)
        src.execute("BEGIN")  # one snapshot of the source
        tables = tables_in_order(src)
        counts: dict[str, int] = {}
        with dst.transaction():
            for table in tables:
                if table in SEEDED:
                    dst.execute(f'DELETE FROM "{table}"')
                elif dst.execute(f'SELECT EXISTS (SELECT 1 FROM "{table}")').fetchone()[0]:
                    raise CopyError(f"{redact(target)} is not empty (table {table} has "
                                    "rows); copy into a new database")
            for table in tables:
                counts[table] = _copy_table(src, dst, table, progress)
            _set_sequences(src, dst, tables)
        return counts
    finally:
        src.close()
        dst.close()


def _copy_table(src: sqlite3.Connection, dst: Any, table: str,
                progress: Callable[[str, int], None]) -> int:
    cols = _columns(src, table)
    wanted = {r[0] for r in dst.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = "
        "current_schema() AND table_name = %s", (table,))}
    missing = [c for c in cols if c not in wanted]
    if missing:
        raise CopyError(f"table {table}: PostgreSQL has no column {', '.join(missing)}")
    names = ", ".join(f'"{c}"' for c in cols)
    n = 0
    with dst.cursor().copy(f'COPY "{table}" ({names}) FROM STDIN') as copy:
        rows = src.execute(f'SELECT {names} FROM "{table}" ORDER BY rowid'
                           if _has_rowid(src, table) else f'SELECT {names} FROM "{table}"')
        while batch := rows.fetchmany(BATCH):
            for row in batch:
                copy.write_row(row)
            n += len(batch)
            progress(table, n)
    return n


def _has_rowid(src: sqlite3.Connection, table: str) -> bool:
    try:
        src.execute(f'SELECT rowid FROM "{table}" LIMIT 0')
        return True
    except sqlite3.OperationalError:  # WITHOUT ROWID
        return False


def _set_sequences(src: sqlite3.Connection, dst: Any, tables: list[str]) -> None:
    """Each identity column's next value follows the ids copied (and those SQLite gave
    to rows deleted since), so no id is given twice."""
    for table in tables:
        seq = dst.execute("SELECT pg_get_serial_sequence(%s, 'id')", (f'"{table}"',)
                          ).fetchone()[0] if "id" in _columns(src, table) else None
        if seq:
            top = _identity_start(src, table)
            called = "true" if top > 0 else "false"  # false: the next id is 1
            dst.execute(f"SELECT setval(%s::regclass, %s::bigint, {called})",
                        (seq, max(top, 1)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flm db copy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="source", required=True, metavar="sqlite:PATH")
    parser.add_argument("--to", dest="target", required=True, metavar="postgresql://...")
    args = parser.parse_args(argv)
    try:
        counts = copy_database(args.source, args.target)
    except (CopyError, RuntimeError) as e:
        print(f"flm: error: {e}", file=sys.stderr)
        return 1
    for table, n in counts.items():
        print(f"{table}: {n} rows")
    print(f"copied into {redact(args.target)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
