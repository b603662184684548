"""Compatibility: the names :mod:`docstore.db` held before the core was split up.

The code lives in :mod:`docstore.core` now (:class:`Database` in
:mod:`docstore.core.database`, :class:`Health` in :mod:`docstore.core.health`,
:func:`open_database` in :mod:`docstore.core.opener`, ...). Importing from here keeps working.
"""

from docstore.core.database import Database
from docstore.core.health import Health, ReplicaHealth
from docstore.core.opener import StoreOpener, open_database
from docstore.core.pools import REPLICA_CONNECT_TIMEOUT, Role
from docstore.core.runner import IsolationLevel
from docstore.core.surface import ReadQueries

__all__ = [
    "REPLICA_CONNECT_TIMEOUT",
    "Database",
    "Health",
    "IsolationLevel",
    "ReadQueries",
    "ReplicaHealth",
    "Role",
    "StoreOpener",
    "open_database",
]
