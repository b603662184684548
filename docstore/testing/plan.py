"""The migration plan's Phase 1.1 (``/work/shared/seed/migration-plan.md``): the harmonized
schema's ``CREATE TABLE``s, indexes and triggers as the plan gives them, for the benchmark's
psql pipe into "the plan's own schema" (``bench/migrate.py``) and for tests of a target set up
by hand with it (which docstore must refuse: the tables are not its own)."""

from __future__ import annotations

import re
from pathlib import Path

PLAN_SCHEMA = """
CREATE EXTENSION IF NOT EXISTS vector;
CREATE TABLE documents (
    id SERIAL PRIMARY KEY,
    doc_type VARCHAR(50) NOT NULL DEFAULT 'rust',
    source_name VARCHAR(255) NOT NULL,
    doc_path TEXT NOT NULL,
    content TEXT NOT NULL,
    metadata JSONB DEFAULT '{}',
    embedding vector(3072),
    token_count INTEGER,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    UNIQUE(doc_type, source_name, doc_path)
);
CREATE TABLE document_sources (
    id SERIAL PRIMARY KEY,
    doc_type VARCHAR(50) NOT NULL DEFAULT 'rust',
    source_name VARCHAR(255) NOT NULL,
    config JSONB NOT NULL DEFAULT '{}',
    enabled BOOLEAN DEFAULT true,
    last_checked TIMESTAMPTZ,
    last_populated TIMESTAMPTZ,
    created_at TIMESTAMPTZ DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMPTZ DEFAULT CURRENT_TIMESTAMP,
    UNIQUE(doc_type, source_name)
);
CREATE INDEX idx_documents_doc_type ON documents(doc_type);
CREATE INDEX idx_documents_source_name ON documents(source_name);
CREATE INDEX idx_documents_type_source ON documents(doc_type, source_name);
CREATE INDEX idx_documents_metadata ON documents USING gin(metadata);
CREATE OR REPLACE FUNCTION update_updated_at_column()
RETURNS TRIGGER AS $$
BEGIN
    NEW.updated_at = CURRENT_TIMESTAMP;
    RETURN NEW;
END;
$$ language 'plpgsql';
CREATE TRIGGER update_documents_updated_at
    BEFORE UPDATE ON documents
    FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();
CREATE TRIGGER update_document_sources_updated_at
    BEFORE UPDATE ON document_sources
    FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();
"""
"""Phase 1.1's ``sql`` block, as the seed plan of 2026-12-01 gives it."""


def plan_schema_sql(plan: Path | None = None) -> str:
    """The ``sql`` block of the plan's Phase 1.1 read from ``plan`` (the migration plan's
    Markdown) when it exists, else :data:`PLAN_SCHEMA`."""
    if plan is not None and plan.exists():
        text = plan.read_text(encoding="utf-8")
        section = text[text.index("#### 1.1") :]
        found = re.search(r"```sql\n(.*?)```", section, re.S)
        if found:
            return found.group(1)
    return PLAN_SCHEMA
