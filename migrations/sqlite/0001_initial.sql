-- mdrec schema, SQLite flavour. Same tables and columns as migrations/postgres/0001_initial.sql.
-- Prices and quantities are NUMERIC cells holding an INTEGER or a REAL, so numeric SQL works;
-- where a REAL cannot hold every digit the exchange sent, the exact decimal text is kept in the
-- row's `exact` JSON object ({"column": "digits"}), NULL when every number is exact.
-- Times are integer epoch values, unit in the column name.

CREATE TABLE markets (
    venue           TEXT    NOT NULL,
    symbol          TEXT    NOT NULL,
    base            TEXT,
    quote           TEXT,
    price_precision INTEGER,
    qty_precision   INTEGER,
    updated_at_ms   INTEGER NOT NULL,
    PRIMARY KEY (venue, symbol)
);

CREATE TABLE trades (
    venue         TEXT    NOT NULL,
    symbol        TEXT    NOT NULL,
    trade_id      INTEGER NOT NULL,
    side          TEXT    NOT NULL CHECK (side IN ('buy', 'sell')),
    price         NUMERIC NOT NULL,
    qty           NUMERIC NOT NULL,
    quote_qty     NUMERIC,
    event_time_ms INTEGER NOT NULL,
    recv_time_us  INTEGER NOT NULL,
    source        TEXT    NOT NULL CHECK (source IN ('ws', 'rest')),
    exact         TEXT,
    PRIMARY KEY (venue, symbol, trade_id)
) WITHOUT ROWID;
CREATE INDEX trades_time ON trades (venue, symbol, event_time_ms);

CREATE TABLE klines (
    venue         TEXT    NOT NULL,
    symbol        TEXT    NOT NULL,
    interval      TEXT    NOT NULL,
    open_time_ms  INTEGER NOT NULL,
    open          NUMERIC NOT NULL,
    high          NUMERIC NOT NULL,
    low           NUMERIC NOT NULL,
    close         NUMERIC NOT NULL,
    volume        NUMERIC NOT NULL,
    quote_volume  NUMERIC,
    closed        INTEGER NOT NULL CHECK (closed IN (0, 1)),
    event_time_ms INTEGER NOT NULL,
    recv_time_us  INTEGER NOT NULL,
    source        TEXT    NOT NULL CHECK (source IN ('ws', 'rest')),
    exact         TEXT,
    PRIMARY KEY (venue, symbol, interval, open_time_ms)
) WITHOUT ROWID;

CREATE TABLE book_snapshots (
    venue         TEXT    NOT NULL,
    symbol        TEXT    NOT NULL,
    depth_step    INTEGER NOT NULL,
    recv_time_us  INTEGER NOT NULL,
    event_time_ms INTEGER NOT NULL,
    bids          TEXT    NOT NULL, -- JSON [["price","qty"],...], best first, exact strings
    asks          TEXT    NOT NULL,
    PRIMARY KEY (venue, symbol, depth_step, recv_time_us)
);

CREATE TABLE book_deltas (
    venue         TEXT    NOT NULL,
    symbol        TEXT    NOT NULL,
    depth_step    INTEGER NOT NULL,
    recv_time_us  INTEGER NOT NULL,
    seq           INTEGER NOT NULL,
    event_time_ms INTEGER NOT NULL,
    side          TEXT    NOT NULL CHECK (side IN ('bid', 'ask')),
    price         NUMERIC NOT NULL,
    qty           NUMERIC NOT NULL, -- 0 = level removed
    exact         TEXT,
    PRIMARY KEY (venue, symbol, depth_step, recv_time_us, seq)
);

CREATE TABLE tickers (
    venue         TEXT    NOT NULL,
    symbol        TEXT    NOT NULL,
    recv_time_us  INTEGER NOT NULL,
    event_time_ms INTEGER NOT NULL,
    open          NUMERIC,
    high          NUMERIC,
    low           NUMERIC,
    close         NUMERIC,
    volume        NUMERIC,
    quote_volume  NUMERIC,
    change        NUMERIC,
    exact         TEXT,
    PRIMARY KEY (venue, symbol, recv_time_us)
);

CREATE TABLE sessions (
    venue              TEXT    NOT NULL,
    symbol             TEXT    NOT NULL,
    session_id         TEXT    NOT NULL,
    connected_at_us    INTEGER NOT NULL,
    disconnected_at_us INTEGER,
    close_reason       TEXT,
    PRIMARY KEY (venue, symbol, session_id)
);

CREATE TABLE gaps (
    venue          TEXT    NOT NULL,
    symbol         TEXT    NOT NULL,
    stream         TEXT    NOT NULL,
    start_ms       INTEGER NOT NULL,
    end_ms         INTEGER,
    status         TEXT    NOT NULL CHECK (status IN ('open', 'filled', 'unrecoverable')),
    detected_at_ms INTEGER NOT NULL,
    resolved_at_ms INTEGER,
    rows_recovered INTEGER NOT NULL DEFAULT 0,
    detail         TEXT,
    PRIMARY KEY (venue, symbol, stream, start_ms)
);
