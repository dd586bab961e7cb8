-- Rows the recorder received but could not store as market data: rows the database refused
-- (reason 'data_error', with its message) and trades whose key is stored with other content
-- (reason 'conflict', with the stored version). Nothing is dropped silently.
CREATE TABLE rejected_rows (
    id             BIGSERIAL PRIMARY KEY,
    venue          TEXT   NOT NULL,
    symbol         TEXT   NOT NULL,
    kind           TEXT   NOT NULL,  -- the table the row was meant for
    reason         TEXT   NOT NULL CHECK (reason IN ('data_error', 'conflict')),
    error          TEXT,             -- the database's message, or what differs
    row_json       TEXT   NOT NULL,  -- the row as received (exact decimal strings)
    stored_json    TEXT,             -- conflicts: the version already stored
    row_key        TEXT   NOT NULL,  -- digest of row_json: a replayed batch adds no copy
    rejected_at_ms BIGINT NOT NULL,
    UNIQUE (reason, row_key)
);
CREATE INDEX rejected_rows_symbol ON rejected_rows (venue, symbol, rejected_at_ms);
