"""Read-only stores: what keeps writes out, on the client and on the server.

A store opened with ``READ_ONLY=true`` or ``connect(read_only=True)`` refuses docstore's write
APIs in Python (:meth:`~docstore.db.Database.ensure_writable`). Raw SQL needs more: the session
setting ``default_transaction_read_only = on`` that the store's connections start with is
only a default, and SQL can undo it (``SET TRANSACTION READ WRITE``, ``BEGIN READ WRITE; …``
in one string, ``SET default_transaction_read_only = off``, a ``DO`` block that commits).

**The client guarantee** — :class:`ReadOnlyConnection`, the connection class of a read-only
store's pools. Every statement sent through asyncpg's public API on it (``execute``,
``fetch…``, ``executemany``, prepared statements, cursors, ``copy_…``, transactions) runs

1. as **one** statement through the extended protocol (``execute()`` without arguments would
   otherwise use the simple protocol, which runs ``"COMMIT; BEGIN READ WRITE; INSERT …"``), and
2. inside a transaction PostgreSQL itself holds read-only: ``BEGIN READ ONLY`` followed at
   once by a snapshot-taking ``SELECT 1`` (one round trip), because PostgreSQL refuses to
   switch a transaction to read-write after its first snapshot or inside a subtransaction, and
   a ``DO`` block or procedure cannot commit inside a transaction block.

Outside a transaction, a plain read (``SELECT``, ``WITH``, ``VALUES``, ``TABLE``, ``SHOW``,
``EXPLAIN``: statements that cannot commit, see :func:`leading_keyword`) runs without that
wrapping, as one implicit transaction, when the server reports (PostgreSQL ≥ 14 sends
``default_transaction_read_only`` to the client whenever it changes) that the session default
is still ``on``; anything else is wrapped in ``BEGIN READ ONLY; SELECT 1`` … ``COMMIT``. After
a statement whose command tag says it ended or began a transaction (``COMMIT AND CHAIN``, …),
the guard checks the transaction again; a statement that turns the session default off is
answered with :class:`~docstore.errors.ReadOnlyError` and the default is turned back on.
``copy_to_table`` / ``copy_records_to_table`` are refused before anything is sent.

A read-only transaction keeps writes out of the database, not out of the server's
filesystem: a superuser (or a member of ``pg_write_server_files`` /
``pg_execute_server_program``, a ``REPLICATION`` role, a role granted ``lo_export``) can write
files and run programs inside one. So the guard also refuses, before sending it, a ``COPY``
other than ``COPY … TO STDOUT`` (``copy_from_query`` / ``copy_from_table`` keep working) and
any statement naming a function that writes server files (``lo_export``, adminpack's
``pg_file_write``, replication slots) — read as PostgreSQL's lexer reads it, so comments, case
and quoting do not hide them (:mod:`docstore.readonly.server_files`) — and, on a connection
whose role has such privileges (:func:`file_capabilities`), ``DO`` and ``LOAD``, whose code it
cannot read.

Its limits: code that reaches past asyncpg's public API (private attributes, calling
``asyncpg.Connection`` methods unbound, a connection of its own) is not guarded; functions
that open their own connections (``dblink``) are outside any transaction's read-only flag;
for a role that can write the server's files, SQL the server builds at run time (a function
of the database that runs ``EXECUTE`` on text, ``query_to_xml``) and superuser-only functions
PostgreSQL lets run in a read-only transaction (``pg_switch_wal``, replication origins, …) are
beyond the client, so :meth:`~docstore.db.Database.health` reports the client guarantee only
for a role without those privileges (:func:`file_capabilities` empty); and before PostgreSQL 16
``RESET transaction_read_only`` inside one statement (a ``DO`` block) could turn a read-only
transaction read-write, so it reports it only on PostgreSQL 16 and later.

**The server guarantee** — a login role that cannot write (:func:`create_reader_role`), checked
by :func:`write_capabilities`; or a hot standby, which refuses every write.
"""

from __future__ import annotations

from typing import Literal

from docstore.readonly.connection import ReadOnlyConnection
from docstore.readonly.roles import (
    DOCSTORE_TABLES,
    create_reader_role,
    file_capabilities,
    scram_verifier,
    write_capabilities,
)
from docstore.readonly.server_files import FILE_FUNCTIONS, statement_refusal
from docstore.readonly.statements import READ_KEYWORDS, leading_keyword

Guarantee = Literal["none", "client", "role", "standby"]

__all__ = [
    "DOCSTORE_TABLES",
    "FILE_FUNCTIONS",
    "READ_KEYWORDS",
    "Guarantee",
    "ReadOnlyConnection",
    "create_reader_role",
    "file_capabilities",
    "leading_keyword",
    "scram_verifier",
    "statement_refusal",
    "write_capabilities",
]
