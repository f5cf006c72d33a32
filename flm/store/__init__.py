"""Persistence: every SQL statement of FLM lives in this package."""

from flm.records import API_FIELDS, ApiRecord, utc_iso
from flm.store.apis import Conflict
from flm.store.db import Store

__all__ = ["API_FIELDS", "ApiRecord", "Conflict", "Store", "utc_iso"]
