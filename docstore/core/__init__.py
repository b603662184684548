"""docstore's connection core: pools, routing, running work, reports, opening a store.

The layer under the repositories and search (:mod:`docstore.core.database` lists its parts).
Code above it is written against :class:`~docstore.core.surface.Queries`.
"""

from docstore.core.database import Database
from docstore.core.delegate import delegate
from docstore.core.health import Health, ReplicaHealth
from docstore.core.opener import StoreOpener, open_database
from docstore.core.surface import Queries, ReadQueries

__all__ = [
    "Database",
    "Health",
    "Queries",
    "ReadQueries",
    "ReplicaHealth",
    "StoreOpener",
    "delegate",
    "open_database",
]
