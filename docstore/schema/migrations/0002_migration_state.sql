-- Migration 2: what docstore.migrate needs on the target.
--
-- docstore_migration_checkpoints: one row per copied chunk of a legacy table, committed in
-- the same transaction as the chunk's rows, so a killed migrator resumes exactly after the
-- last committed chunk.
-- source_population_jobs: the legacy population_jobs history (history is data), linked to
-- the document source the job populated.

CREATE TABLE docstore_migration_checkpoints (
    run_id      TEXT        NOT NULL,
    table_name  TEXT        NOT NULL,
    first_key   BIGINT      NOT NULL,
    last_key    BIGINT      NOT NULL,
    rows        INTEGER     NOT NULL,
    checksum    TEXT        NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (run_id, table_name, first_key)
);

CREATE TABLE source_population_jobs (
    id             SERIAL PRIMARY KEY,
    source_id      INTEGER REFERENCES document_sources(id) ON DELETE CASCADE,
    doc_type       VARCHAR(50)  NOT NULL,
    source_name    VARCHAR(255) NOT NULL,
    status         VARCHAR(20)  NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'running', 'completed', 'failed')),
    started_at     TIMESTAMPTZ,
    completed_at   TIMESTAMPTZ,
    error_message  TEXT,
    docs_populated INTEGER DEFAULT 0,
    created_at     TIMESTAMPTZ DEFAULT CURRENT_TIMESTAMP,
    legacy_id      INTEGER,
    metadata       JSONB NOT NULL DEFAULT '{}',
    UNIQUE (doc_type, legacy_id)
);

CREATE INDEX idx_source_population_jobs_source ON source_population_jobs (source_id);
-- Validation and rollback find migrated rows by their legacy id.
-- (text, not integer: a user's metadata may hold any legacy_id value.)
CREATE INDEX idx_documents_legacy_id ON documents (doc_type, (metadata->>'legacy_id'))
    WHERE metadata ? 'legacy_id';
