"""Persistence: every SQL statement of FLM lives in this package."""

from flm.store.apis import Conflict
from flm.store.db import Store
from flm.store.records import API_FIELDS, ApiRecord, utc_iso

__all__ = ["API_FIELDS", "ApiRecord", "Conflict", "Store", "utc_iso"]
