"""Keeps the SQLite write-ahead log small: a checkpoint every few minutes."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from flm.observe.periodic import PeriodicService
from flm.store import Store


class WalCheckpoints(PeriodicService):
    """Checkpoints the store's WAL every few minutes."""

    name = "wal_checkpoints"

    def __init__(self, store: Store, clock: Any, interval: float = 300.0) -> None:
        super().__init__(clock, interval)
        self._store = store

    def tick(self) -> Deferred[Any]:
        return self._store.checkpoint()
