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
