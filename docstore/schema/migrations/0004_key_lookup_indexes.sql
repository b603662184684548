-- Migration 4: one index for every key lookup — drop the B-tree indexes that compete with the
-- unique key (doc_type, source_name, doc_path).
--
-- The plan's schema also indexes (doc_type), (doc_type, source_name) and (source_name). On a
-- table that has no statistics yet — a new deployment, a new doc_type, every first load —
-- PostgreSQL estimates about one row for `doc_type = $1 AND source_name = $2` (or for
-- `source_name = $2`) as for the full key, and between indexes that all look like "one row"
-- it takes the smallest. A statement prepared then keeps that plan on its pooled connection
-- (a generic plan is only re-made when the table's statistics change), so after a large load
-- every key lookup walked a whole source and filtered on doc_path. Measured on a fresh
-- database: 2,000 batch key lookups against 4,000 rows of one source read 8,010,000 buffers
-- (9.4 s); the per-row guarded UPDATE read the whole source (3,033 buffers a row) through
-- idx_documents_source_name. With the unique key as the only B-tree on these columns, every
-- lookup by key uses it whatever the statistics say, and scans scoped by doc_type or by
-- (doc_type, source_name) use its leading columns. Fewer indexes also make every insert
-- cheaper. Queries by source_name alone (no doc_type) no longer have an index of their own;
-- docstore never issues them.
DROP INDEX IF EXISTS idx_documents_type_source;
DROP INDEX IF EXISTS idx_documents_doc_type;
DROP INDEX IF EXISTS idx_documents_source_name;
