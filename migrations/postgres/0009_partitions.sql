-- The market-data tables with a time in their keys partitioned by it, so that retention
-- drops a partition instead of deleting rows: klines by bar open time (the archive's period
-- of a bar), the book and tickers by receive time (their keys are unchanged: no byte more
-- per row). The existing table becomes the DEFAULT partition in place (no copy, its indexes
-- kept): rows of any time always have a home. The daemon creates range partitions ahead of
-- time and drops one once every row in it is archived and older than `db_keep_s`
-- (src/store/partitions.rs).
-- `trades` stays one table: its key is the exchange's trade id, and a partitioned table's
-- key must hold the partition column; some venues give one trade other times on REST and
-- websocket (PROTOCOL-NOTES: seconds vs milliseconds), so a time in its key would store a
-- trade twice.

DROP VIEW book_deltas;
DROP VIEW klines_utc;

ALTER TABLE klines RENAME TO klines_default;
ALTER TABLE klines_default RENAME CONSTRAINT klines_pkey TO klines_default_pkey;
CREATE TABLE klines (LIKE klines_default INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (open_time_ms);
ALTER TABLE klines ADD PRIMARY KEY (venue, symbol, interval, open_time_ms);
ALTER TABLE klines ATTACH PARTITION klines_default DEFAULT;

ALTER TABLE book_snapshots RENAME TO book_snapshots_default;
ALTER TABLE book_snapshots_default RENAME CONSTRAINT book_snapshots_pkey TO book_snapshots_default_pkey;
ALTER INDEX book_snapshots_event_time RENAME TO book_snapshots_default_event_time;
CREATE TABLE book_snapshots (LIKE book_snapshots_default INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (recv_time_us);
ALTER TABLE book_snapshots ADD PRIMARY KEY (venue, symbol, depth_step, recv_time_us);
ALTER TABLE book_snapshots ATTACH PARTITION book_snapshots_default DEFAULT;
CREATE INDEX book_snapshots_event_time ON book_snapshots (venue, symbol, depth_step, event_time_ms);

ALTER TABLE book_updates RENAME TO book_updates_default;
ALTER TABLE book_updates_default RENAME CONSTRAINT book_updates_pkey TO book_updates_default_pkey;
CREATE TABLE book_updates (LIKE book_updates_default INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (recv_time_us);
ALTER TABLE book_updates ADD PRIMARY KEY (stream, recv_time_us, first_seq);
ALTER TABLE book_updates ATTACH PARTITION book_updates_default DEFAULT;

ALTER TABLE tickers RENAME TO tickers_default;
ALTER TABLE tickers_default RENAME CONSTRAINT tickers_pkey TO tickers_default_pkey;
CREATE TABLE tickers (LIKE tickers_default INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (recv_time_us);
ALTER TABLE tickers ADD PRIMARY KEY (venue, symbol, recv_time_us);
ALTER TABLE tickers ATTACH PARTITION tickers_default DEFAULT;

CREATE VIEW klines_utc AS
SELECT venue, symbol, interval, open_time_ms,
       to_timestamp(open_time_ms / 1000) AS open_time,
       open, high, low, close, volume, quote_volume, closed, source,
       event_time_ms, recv_time_us
FROM klines;

CREATE VIEW book_deltas AS
SELECT s.venue, s.symbol, s.depth_step, u.recv_time_us, u.first_seq + (l.n - 1)::integer AS seq,
       u.event_time_ms,
       CASE left(l.level, 1) WHEN 'b' THEN 'bid' ELSE 'ask' END AS side,
       split_part(substr(l.level, 2), ':', 1)::numeric AS price,
       split_part(l.level, ':', 2)::numeric AS qty,
       NULL::text AS exact, u.update_id, u.prev_update_id
FROM book_updates u
JOIN book_streams s ON s.id = u.stream
CROSS JOIN LATERAL unnest(string_to_array(u.levels, ';')) WITH ORDINALITY AS l(level, n);
