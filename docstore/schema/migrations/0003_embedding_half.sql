-- Migration 3: a half-precision copy of each embedding, stored in the row itself.
--
-- A 3,072-dimension `vector` is 12 KB, more than a heap page holds, so PostgreSQL keeps it
-- out of line in the TOAST table: scoring a row means a TOAST index lookup and ~7 chunk
-- reads. That dominated the per-source searches the Doc Server runs (bench/compat.py: ~10 µs
-- a row, ~1.3 ms for a 100-document crate). `embedding_half` (6 KB at 3,072 dimensions) is
-- stored PLAIN (never compressed, never moved out of line), so a scoped search can rank a
-- source's documents by reading only heap pages and re-rank the few best on the exact
-- vectors. Above 4,000 dimensions a halfvec no longer fits in a page beside the other
-- columns; there it is MAIN (kept in line when it fits, moved out only as a last resort).
--
-- toast_tuple_target = 8160 (a whole page): with the default (2 KB) a row holding a 6 KB
-- halfvec never gets under the target, so PostgreSQL would also move every small field
-- (metadata, doc_path, content) out of line, and reading metadata would cost a TOAST lookup
-- (the legacy views' id column measured 1.9x slower that way). With a page as the target only
-- what does not fit (the 12 KB vector, long content) goes to TOAST.
--
-- Generated, so it can never disagree with `embedding`; NULL where `embedding` is NULL.
-- Values beyond ±65,504 cannot be represented in halfvec: docstore's validation rejects them
-- before they reach the database.

DO $$
BEGIN
    IF __EMBEDDING_DIM__ <= 4000 THEN
        ALTER TABLE documents
            SET (toast_tuple_target = 8160),
            ADD COLUMN embedding_half halfvec(__EMBEDDING_DIM__)
                GENERATED ALWAYS AS (embedding::halfvec(__EMBEDDING_DIM__)) STORED,
            ALTER COLUMN embedding_half SET STORAGE PLAIN;
    ELSE
        ALTER TABLE documents
            ADD COLUMN embedding_half halfvec(__EMBEDDING_DIM__)
                GENERATED ALWAYS AS (embedding::halfvec(__EMBEDDING_DIM__)) STORED,
            ALTER COLUMN embedding_half SET STORAGE MAIN;
    END IF;
END
$$;
