"""Persistence: one SQLite database, one repository per table, forward-only migrations.

The store writes exactly what it is told, inside the transaction it is given; it records no
events of its own and calls nobody back. ``Store`` bundles the repositories.
"""

from server.store.database import Database, StoreTransactionError, utcnow
from server.store.store import SCHEMA_VERSION, Store

__all__ = ["SCHEMA_VERSION", "Database", "Store", "StoreTransactionError", "utcnow"]
