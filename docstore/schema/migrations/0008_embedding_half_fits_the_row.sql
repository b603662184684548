-- Migration 8: keep `embedding_half` in line only while the rest of a row still fits beside it.
--
-- Migration 3 stores `embedding_half` PLAIN (never moved out of the row) up to 4,000
-- dimensions. A row is at most 8,160 bytes; a halfvec takes 8 + 2 × dimensions. Every other
-- column can shrink to at most ~24 bytes in the row (longer values move to TOAST), but with
-- the tuple header, the fixed-width columns and the embedding's TOAST pointer that is up to
-- ~250 bytes: at 4,000 dimensions (8,008 bytes) an ordinary document failed with "row is too
-- big", and above ~3,950 it depended on the lengths of its text fields. Above 3,800
-- dimensions the column is MAIN instead: kept in line whenever it fits (which is always, with
-- short fields), moved out only as a last resort, so every document can be written. At 3,800
-- and below nothing changes.

DO $$
BEGIN
    IF __EMBEDDING_DIM__ > 3800 AND __EMBEDDING_DIM__ <= 4000 THEN
        ALTER TABLE documents ALTER COLUMN embedding_half SET STORAGE MAIN;
    END IF;
END
$$;
