"""Test and benchmark tooling: nothing in here runs in a deployment.

- :mod:`docstore.testing.replica`: streaming hot-standby replicas of an embedded server
  (:class:`~docstore.testing.replica.EmbeddedReplica`, made by
  :func:`~docstore.testing.replica.start_replica`) and
  :func:`~docstore.testing.replica.wait_for_replay`, for read-replica, fallback and failover
  tests and for ``bench/scale.py``.
- :mod:`docstore.testing.citus`: :func:`~docstore.testing.citus.printed_vector`, a Citus
  search statement in the form that printed its query vector into every shard's SQL.
- :mod:`docstore.testing.plan`: the migration plan's Phase 1.1 schema
  (:data:`~docstore.testing.plan.PLAN_SCHEMA`), for ``bench/migrate.py``'s pipe into the plan's
  own schema and for tests of a target set up by hand with it.

docstore's runtime modules do not import this package (``lint-imports`` checks it).
"""

from docstore.testing.citus import printed_vector
from docstore.testing.replica import EmbeddedReplica, start_replica, wait_for_replay

__all__ = ["EmbeddedReplica", "printed_vector", "start_replica", "wait_for_replay"]
