-- Migration 9: extended statistics on (doc_type, source_name), so the planner estimates a
-- doc_type/source_name scope from the pairs it saw instead of taking the two as independent.
--
-- A search scoped past 3,000 rows is sized by the planner's estimate of
-- `doc_type = $1 AND source_name = $2` (docstore.search.scopes). Taken as independent, a crate
-- that is a whole doc_type holding 20 % of the table was estimated at 20 % x 20 % = 4 % and
-- scanned on embedding_half instead of the index (60,000 rows of 400,000: ~150 ms against ~4 ms);
-- estimated from each condition alone, a source name several doc_types use was taken as all
-- of their rows. With the pairs' most common values (mcv) and the functional dependency of
-- doc_type on source_name (dependencies), ANALYZE gives the planner both cases right. Citus
-- propagates the statistics object to the shards of a distributed table.

CREATE STATISTICS IF NOT EXISTS documents_scope_statistics (dependencies, mcv)
    ON doc_type, source_name FROM documents;

-- filled now, not at the next ANALYZE (autovacuum's comes after ~10 % of the rows changed):
-- an empty statistics object leaves the planner taking the columns as independent. Two
-- columns sampled, ~0.1 s at 100,000 rows. Not on a Citus distributed table, whose estimate
-- docstore does not use (its coordinator cannot see the shards), nor on an empty one.
DO $$
DECLARE
    distributed boolean := false;
BEGIN
    IF to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL THEN  -- Citus is installed
        EXECUTE 'SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition'
                ' WHERE logicalrelid = ''documents''::regclass)' INTO distributed;
    END IF;
    -- not an empty table: analyzed, it would tell the planner "0 rows" (reltuples 0, where a
    -- table never analyzed says -1: unknown), and a bulk load after it would be planned as
    -- into an empty table until autovacuum analyzes it
    IF NOT distributed AND EXISTS (SELECT 1 FROM documents) THEN
        ANALYZE documents (doc_type, source_name);
    END IF;
END
$$;
