-- mdrec schema, PostgreSQL flavour. Same tables and columns as migrations/sqlite/0001_initial.sql.
-- NUMERIC holds every digit the exchange sent, so `exact` (kept for parity with SQLite) stays NULL.
-- Times are integer epoch values, unit in the column name.

CREATE TABLE markets (
    venue           TEXT    NOT NULL,
    symbol          TEXT    NOT NULL,
    base            TEXT,
    quote           TEXT,
    price_precision INTEGER,
    qty_precision   INTEGER,
    updated_at_ms   BIGINT  NOT NULL,
    PRIMARY KEY (venue, symbol)
);

CREATE TABLE trades (
    venue         TEXT    NOT NULL,
    symbol        TEXT    NOT NULL,
    trade_id      BIGINT  NOT NULL,
    side          TEXT    NOT NULL CHECK (side IN ('buy', 'sell')),
    price         NUMERIC NOT NULL,
    qty           NUMERIC NOT NULL,
    quote_qty     NUMERIC,
    event_time_ms BIGINT  NOT NULL,
    recv_time_us  BIGINT  NOT NULL,
    source        TEXT    NOT NULL CHECK (source IN ('ws', 'rest')),
    exact         TEXT,
    PRIMARY KEY (venue, symbol, trade_id)
);
CREATE INDEX trades_time ON trades (venue, symbol, event_time_ms);

CREATE TABLE klines (
    venue         TEXT    NOT NULL,
    symbol        TEXT    NOT NULL,
    interval      TEXT    NOT NULL,
    open_time_ms  BIGINT  NOT NULL,
    open          NUMERIC NOT NULL,
    high          NUMERIC NOT NULL,
    low           NUMERIC NOT NULL,
    close         NUMERIC NOT NULL,
    volume        NUMERIC NOT NULL,
    quote_volume  NUMERIC,
    closed        BOOLEAN NOT NULL,
    event_time_ms BIGINT  NOT NULL,
    recv_time_us  BIGINT  NOT NULL,
    source        TEXT    NOT NULL CHECK (source IN ('ws', 'rest')),
    exact         TEXT,
    PRIMARY KEY (venue, symbol, interval, open_time_ms)
);

CREATE TABLE book_snapshots (
    venue         TEXT     NOT NULL,
    symbol        TEXT     NOT NULL,
    depth_step    SMALLINT NOT NULL,
    recv_time_us  BIGINT   NOT NULL,
    event_time_ms BIGINT   NOT NULL,
    bids          JSONB    NOT NULL, -- [["price","qty"],...], best first, exact strings
    asks          JSONB    NOT NULL,
    PRIMARY KEY (venue, symbol, depth_step, recv_time_us)
);

CREATE TABLE book_deltas (
    venue         TEXT     NOT NULL,
    symbol        TEXT     NOT NULL,
    depth_step    SMALLINT NOT NULL,
    recv_time_us  BIGINT   NOT NULL,
    seq           INTEGER  NOT NULL,
    event_time_ms BIGINT   NOT NULL,
    side          TEXT     NOT NULL CHECK (side IN ('bid', 'ask')),
    price         NUMERIC  NOT NULL,
    qty           NUMERIC  NOT NULL, -- 0 = level removed
    exact         TEXT,
    PRIMARY KEY (venue, symbol, depth_step, recv_time_us, seq)
);

CREATE TABLE tickers (
    venue         TEXT    NOT NULL,
    symbol        TEXT    NOT NULL,
    recv_time_us  BIGINT  NOT NULL,
    event_time_ms BIGINT  NOT NULL,
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
    venue              TEXT   NOT NULL,
    symbol             TEXT   NOT NULL,
    session_id         TEXT   NOT NULL,
    connected_at_us    BIGINT NOT NULL,
    disconnected_at_us BIGINT,
    close_reason       TEXT,
    PRIMARY KEY (venue, symbol, session_id)
);

CREATE TABLE gaps (
    venue          TEXT   NOT NULL,
    symbol         TEXT   NOT NULL,
    stream         TEXT   NOT NULL,
    start_ms       BIGINT NOT NULL,
    end_ms         BIGINT,
    status         TEXT   NOT NULL CHECK (status IN ('open', 'filled', 'unrecoverable')),
    detected_at_ms BIGINT NOT NULL,
    resolved_at_ms BIGINT,
    rows_recovered BIGINT NOT NULL DEFAULT 0,
    detail         TEXT,
    PRIMARY KEY (venue, symbol, stream, start_ms)
);
