-- Migration 6: store `embedding` out of line without trying to compress it.
--
-- A 3,072-dimension vector (12 KB) never fits in a heap page, so PostgreSQL moves it to TOAST,
-- and with the type's default storage (EXTENDED) it first runs pglz over it. Embeddings are
-- dense floats: pglz finds a few short matches in the first kilobyte, keeps going through all
-- 12 KB and then gives up because it saved less than 25 %, so every insert paid for a
-- compression whose result was thrown away. EXTERNAL skips that attempt and stores the same
-- bytes out of line, the way pgvector's own docs suggest for large vectors. Measured on the
-- embedded server (4,133 unit vectors × 3,072, binary COPY, three rounds each): 0.44–0.52 s
-- EXTENDED, 0.36–0.39 s EXTERNAL, the same 57.4 MB on disk; reads are unchanged.
--
-- Only new and rewritten values are affected; rows stored before this migration keep the
-- uncompressed values the failed attempt left, so nothing needs rewriting.
--
-- Citus refuses ALTER COLUMN … SET STORAGE on a distributed table ("alter table command is
-- currently unsupported"), so on a database distributed before this migration the coordinator's
-- table and every shard are altered one by one (shards made later copy the coordinator's
-- definition, storage included; a database distributed after it inherits it the same way).
DO $$
DECLARE
    distributed boolean := false;
BEGIN
    IF to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL THEN  -- Citus is installed
        EXECUTE 'SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition'
                ' WHERE logicalrelid = ''documents''::regclass)' INTO distributed;
    END IF;
    IF distributed THEN
        SET LOCAL citus.enable_ddl_propagation = off;
        ALTER TABLE documents ALTER COLUMN embedding SET STORAGE EXTERNAL;
        SET LOCAL citus.enable_ddl_propagation = on;
        PERFORM run_command_on_shards(
            'documents', 'ALTER TABLE %s ALTER COLUMN embedding SET STORAGE EXTERNAL'
        );
    ELSE
        ALTER TABLE documents ALTER COLUMN embedding SET STORAGE EXTERNAL;
    END IF;
END
$$;
