-- Migration 7: keep out the timestamps that Python cannot read back.
--
-- PostgreSQL stores timestamps from 4713 BC to 294276 AD; Python's datetime, which asyncpg
-- decodes them to, holds the years 1 to 9999. A row holding anything outside that range (a BC
-- date written by raw SQL, say) could be stored but never read again: every get, search and
-- iteration touching it failed with "date value out of range". docstore's own writes cannot
-- produce such values (they come from Python datetimes), and the Migrator's preflight blocks
-- legacy rows holding them, so these constraints only stop raw SQL; ±infinity, which asyncpg
-- reads as datetime.max/min, stays allowed.
--
-- NOT VALID: existing rows are not scanned (that would read the whole table while `connect()`
-- applies the migration, and fail it if one such row exists); every row written from now on
-- is checked. The bounds are constants, so each check is two comparisons per column.
ALTER TABLE documents
    ADD CONSTRAINT documents_created_at_readable CHECK (
        NOT isfinite(created_at)
        OR (created_at >= '0001-01-01' AND created_at < '10000-01-01')
    ) NOT VALID,
    ADD CONSTRAINT documents_updated_at_readable CHECK (
        NOT isfinite(updated_at)
        OR (updated_at >= '0001-01-01' AND updated_at < '10000-01-01')
    ) NOT VALID;

ALTER TABLE document_sources
    ADD CONSTRAINT document_sources_last_checked_readable CHECK (
        NOT isfinite(last_checked)
        OR (last_checked >= '0001-01-01 00:00:00+00' AND last_checked < '10000-01-01 00:00:00+00')
    ) NOT VALID,
    ADD CONSTRAINT document_sources_last_populated_readable CHECK (
        NOT isfinite(last_populated)
        OR (last_populated >= '0001-01-01 00:00:00+00'
            AND last_populated < '10000-01-01 00:00:00+00')
    ) NOT VALID,
    ADD CONSTRAINT document_sources_created_at_readable CHECK (
        NOT isfinite(created_at)
        OR (created_at >= '0001-01-01 00:00:00+00' AND created_at < '10000-01-01 00:00:00+00')
    ) NOT VALID,
    ADD CONSTRAINT document_sources_updated_at_readable CHECK (
        NOT isfinite(updated_at)
        OR (updated_at >= '0001-01-01 00:00:00+00' AND updated_at < '10000-01-01 00:00:00+00')
    ) NOT VALID;
