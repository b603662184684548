"""Read routing: which pool a read goes to, and falling back from a failed replica.

With a read replica, reads (``Runner.run(read=True)``: searches, document and source reads,
``store.replica.fetch…``) go to it, except inside ``with store.read_from_primary():``
(:func:`primary_reads`). When the replica fails (refused, reset, shutting down, a recovery
conflict, a connect timeout), :meth:`ReplicaRouter.failed` sends the read to the primary
instead, logs the outage once at WARNING, and skips the replica for
``DOCSTORE_REPLICA_RETRY_SECONDS``; the first read
that succeeds on it again logs that it is back.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import Iterator

from docstore.config import Settings
from docstore.core.pools import Pools
from docstore.errors import DocstoreError
from docstore.failures import is_transient, is_transient_query_failure
from docstore.metrics import Metrics

logger = logging.getLogger("docstore")

# Set by read_from_primary(): reads in this context skip the replica.
_PRIMARY_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "docstore_primary_only", default=False
)


@contextlib.contextmanager
def primary_reads() -> Iterator[None]:
    """Reads in this block (this task and tasks it starts) go to the primary."""
    token = _PRIMARY_ONLY.set(True)
    try:
        yield
    finally:
        _PRIMARY_ONLY.reset(token)


class ReplicaRouter:
    """Decides per read whether the replica serves it, and tracks its outages."""

    def __init__(self, pools: Pools, settings: Settings, metrics: Metrics) -> None:
        self._pools = pools
        self._settings = settings
        self._metrics = metrics
        self.down_until = 0.0
        """``time.monotonic()`` until which the replica is skipped (0: not down)."""

    def use_replica(self) -> bool:
        """Whether a read goes to the replica now (a skipped one counts as a fallback)."""
        if self._pools.replica is None or _PRIMARY_ONLY.get():
            return False
        if time.monotonic() < self.down_until:
            self._metrics.fallback()
            return False
        return True

    def use_replica_quietly(self) -> bool:
        """:meth:`use_replica` without counting a fallback (to look, not to read)."""
        return (
            self._pools.replica is not None
            and not _PRIMARY_ONLY.get()
            and time.monotonic() >= self.down_until
        )

    def succeeded(self) -> None:
        """A read succeeded on the replica: if it was down, it is back."""
        if not self.down_until:
            return
        self.down_until = 0.0
        assert self._pools.replica is not None
        logger.warning(
            "read replica %s is back: reads go to it again", self._pools.replica.redacted
        )

    def reset(self) -> None:
        """Forget an outage (the replica was replaced)."""
        self.down_until = 0.0

    async def failed(self, exc: BaseException, *, before_work: bool = False) -> bool:
        """Whether a read that failed on the replica should run on the primary instead; if
        so the replica is skipped for ``DOCSTORE_REPLICA_RETRY_SECONDS`` (logged once).
        ``before_work``: it failed before the read had a connection, so a connect timeout
        (a replica that accepts TCP and never answers) counts as an outage too."""
        if isinstance(exc, DocstoreError):
            return False  # an acquire timeout (a full pool): the primary would say the same
        transient = is_transient(exc) if before_work else is_transient_query_failure(exc)
        if not transient:
            return False  # a bad query: the primary would say the same
        replica = self._pools.replica
        assert replica is not None
        down = self.down_until != 0.0
        self.down_until = time.monotonic() + self._settings.replica_retry_seconds
        await replica.pool.expire_connections()  # reconnect, don't reuse dead sockets
        self._metrics.fallback()
        if not down:
            logger.warning(
                "read replica %s unavailable (%s): reads go to the primary; retrying the "
                "replica every %gs",
                replica.redacted,
                self._pools.describe(exc),
                self._settings.replica_retry_seconds,
            )
        return True
