"""The ``documents`` table's size as SQL expressions: what a ``TABLESAMPLE``'s share is
taken of (the filter sizer's sample, :mod:`docstore.search.filter_size`; the growth check's
row count, :mod:`docstore.search.growth`) and the planner's row count beside it."""

PAGES = """
(SELECT CASE t.relkind
        WHEN 'r' THEN pg_relation_size(t.oid)
        WHEN 'p' THEN (SELECT coalesce(sum(pg_relation_size(p.relid)), 0)::bigint
                         FROM pg_partition_tree(t.oid) p WHERE p.isleaf)
        ELSE 0 END / current_setting('block_size')::int
   FROM pg_class t WHERE t.oid = 'documents'::regclass)"""
"""The table's pages now — what a ``TABLESAMPLE``'s share is of: its partitions' on a
partitioned table (whose own relation is empty); 0 on a Citus coordinator, whose shell table
holds no rows (:data:`SHARD_PAGES` there)."""
RELTUPLES = "(SELECT reltuples FROM pg_class WHERE oid = 'documents'::regclass)"
"""The table's rows as the planner's statistics have them (-1: never analyzed)."""
TABLE_SIZE = f"SELECT {RELTUPLES} AS rows, {PAGES} AS pages"
"""The table's rows from the planner's statistics and its pages now."""
SHARD_PAGES = "(citus_relation_size('documents') / current_setting('block_size')::int)"
"""A Citus distributed table's pages: its shards' (main fork), asked of every active node."""
