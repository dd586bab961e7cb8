-- The time-keyed market-data tables partitioned by exchange time (the archive's period of a
-- row), so that retention drops a partition instead of deleting rows. The existing table
-- becomes the DEFAULT partition in place (no copy; its new key index is built): rows of any
-- time always have a home. The daemon creates range partitions ahead of time and drops them
-- once every row in them is archived and older than `db_keep_s` (src/store/partitions.rs).
-- A partitioned table's keys must hold the partition column: the book and ticker keys gain
-- event_time_ms (a frame's receive time already identifies it; its exchange time comes
-- from the same frame). `trades` stays one table: a trade is identified by the exchange's
-- id alone, and some venues give one trade other times on REST and websocket
-- (PROTOCOL-NOTES: seconds vs milliseconds); a time in its key would store it twice.

DROP VIEW book_deltas;
DROP VIEW klines_utc;

ALTER TABLE klines RENAME TO klines_default;
ALTER TABLE klines_default DROP CONSTRAINT klines_pkey;
CREATE TABLE klines (LIKE klines_default INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (open_time_ms);
ALTER TABLE klines ADD PRIMARY KEY (venue, symbol, interval, open_time_ms);
ALTER TABLE klines ATTACH PARTITION klines_default DEFAULT;

ALTER TABLE book_snapshots RENAME TO book_snapshots_default;
ALTER TABLE book_snapshots_default DROP CONSTRAINT book_snapshots_pkey;
ALTER INDEX book_snapshots_event_time RENAME TO book_snapshots_default_event_time;
CREATE TABLE book_snapshots (LIKE book_snapshots_default INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (event_time_ms);
ALTER TABLE book_snapshots ADD PRIMARY KEY (venue, symbol, depth_step, recv_time_us, event_time_ms);
ALTER TABLE book_snapshots ATTACH PARTITION book_snapshots_default DEFAULT;
CREATE INDEX book_snapshots_event_time ON book_snapshots (venue, symbol, depth_step, event_time_ms);

ALTER TABLE book_updates RENAME TO book_updates_default;
ALTER TABLE book_updates_default DROP CONSTRAINT book_updates_pkey;
CREATE TABLE book_updates (LIKE book_updates_default INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (event_time_ms);
ALTER TABLE book_updates ADD PRIMARY KEY (stream, recv_time_us, first_seq, event_time_ms);
ALTER TABLE book_updates ATTACH PARTITION book_updates_default DEFAULT;

ALTER TABLE tickers RENAME TO tickers_default;
ALTER TABLE tickers_default DROP CONSTRAINT tickers_pkey;
CREATE TABLE tickers (LIKE tickers_default INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (event_time_ms);
ALTER TABLE tickers ADD PRIMARY KEY (venue, symbol, recv_time_us, event_time_ms);
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
