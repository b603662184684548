-- Migration 2: full-text search over content (store.search_text / hybrid_search).
-- An expression index, so no column is added and upserts write nothing extra but the index.
-- The expression must stay identical to docstore.search.queries.text_vector_expression():
-- only the first 100,000 characters are indexed, so no document can exceed PostgreSQL's
-- 1 MB tsvector limit (content may be up to 10,000,000 characters).

CREATE INDEX idx_documents_content_fts ON documents
    USING gin (to_tsvector('english'::regconfig, left(content, 100000)));
