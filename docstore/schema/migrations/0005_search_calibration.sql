-- Migration 5: where calibrated search settings and recent query vectors are kept.
--
-- docstore_search_calibration: one row per distance metric, the ANN settings measured on this
-- database's data (docstore.search.tuning.Calibration as JSON), so every process and every
-- read replica searches with the same settings.
--
-- docstore_search_queries: a bounded sample (docstore keeps the newest 512) of recent query
-- vectors, written when a calibration runs, so a calibration made by another process (the
-- `docstore index calibrate` command) measures on real queries, not only on probes.
-- DOCSTORE_SEARCH_KEEP_QUERIES=false keeps none.
CREATE TABLE docstore_search_calibration (
    metric      TEXT PRIMARY KEY,
    calibration JSONB NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE docstore_search_queries (
    id         BIGSERIAL PRIMARY KEY,
    metric     TEXT NOT NULL,
    embedding  vector(__EMBEDDING_DIM__) NOT NULL,
    added_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
