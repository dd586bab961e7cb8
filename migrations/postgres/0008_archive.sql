-- The archive's ledger (see src/archive): what has been written to the archive, and which
-- archived periods received rows afterwards. The archive is the files; these rows say which
-- files are verified and complete.

-- One row per published part: a table's rows of one venue, symbol (gaps and sessions: '')
-- and period of exchange time, read back and compared before this row was written.
CREATE TABLE archive_parts (
    tbl             TEXT    NOT NULL,
    venue           TEXT    NOT NULL,
    symbol          TEXT    NOT NULL,
    period_start_ms BIGINT  NOT NULL,
    period_end_ms   BIGINT  NOT NULL,
    path            TEXT    NOT NULL, -- under the archive's URL
    rows            BIGINT  NOT NULL,
    digest          TEXT    NOT NULL,
    bytes           BIGINT  NOT NULL,
    archived_at_ms  BIGINT  NOT NULL,
    -- when the part's rows were deleted from the database (NULL: still there); a part
    -- written again after that holds its earlier rows and the late ones
    deleted_at_ms   BIGINT,
    PRIMARY KEY (tbl, venue, symbol, period_start_ms)
);

-- Per table, venue and symbol: every period ending at or before `through_ms` is archived
-- (a period without rows has no part).
CREATE TABLE archive_marks (
    tbl        TEXT    NOT NULL,
    venue      TEXT    NOT NULL,
    symbol     TEXT    NOT NULL,
    through_ms BIGINT  NOT NULL,
    PRIMARY KEY (tbl, venue, symbol)
);

-- Periods that rows reached after the archive's horizon had passed them (a late REST
-- backfill, a replayed spool, a hole's row resolved): their part is written again, with the
-- rows it held and the new ones, before any of their rows leave the database. Marked by the
-- writer in the transaction that stores the rows.
CREATE TABLE archive_dirty (
    tbl             TEXT    NOT NULL,
    venue           TEXT    NOT NULL,
    symbol          TEXT    NOT NULL,
    period_start_ms BIGINT  NOT NULL,
    period_end_ms   BIGINT  NOT NULL, -- the writer's period; the archiver's may differ
    marked_at_ms    BIGINT  NOT NULL,
    PRIMARY KEY (tbl, venue, symbol, period_start_ms)
);
