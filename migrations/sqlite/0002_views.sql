-- Views for people reading the database: UTC timestamps next to the integer epochs, and
-- 1-minute OHLCV computed from the stored trades. Same names and columns as
-- migrations/postgres/0002_views.sql. Prices here are the numeric cells (exact digits, where a
-- REAL cannot hold them, are in the tables' `exact` column; see docs/SCHEMA.md).

CREATE VIEW trades_utc AS
SELECT venue, symbol, trade_id, side, price, qty, quote_qty, source,
       event_time_ms, recv_time_us,
       strftime('%Y-%m-%dT%H:%M:%fZ', event_time_ms / 1000.0, 'unixepoch') AS event_time,
       strftime('%Y-%m-%dT%H:%M:%fZ', recv_time_us / 1000000.0, 'unixepoch') AS recv_time,
       recv_time_us / 1000 - event_time_ms AS latency_ms
FROM trades;

CREATE VIEW klines_utc AS
SELECT venue, symbol, interval, open_time_ms,
       strftime('%Y-%m-%dT%H:%M:%SZ', open_time_ms / 1000, 'unixepoch') AS open_time,
       open, high, low, close, volume, quote_volume, closed, source,
       event_time_ms, recv_time_us
FROM klines;

CREATE VIEW ohlcv_1m AS
WITH t AS (
    SELECT venue, symbol, event_time_ms - event_time_ms % 60000 AS minute_ms, price, qty,
           ROW_NUMBER() OVER (PARTITION BY venue, symbol, event_time_ms - event_time_ms % 60000
                              ORDER BY event_time_ms, trade_id) AS first_rank,
           ROW_NUMBER() OVER (PARTITION BY venue, symbol, event_time_ms - event_time_ms % 60000
                              ORDER BY event_time_ms DESC, trade_id DESC) AS last_rank
    FROM trades
)
SELECT venue, symbol, minute_ms,
       strftime('%Y-%m-%dT%H:%M:%SZ', minute_ms / 1000, 'unixepoch') AS minute,
       MAX(CASE WHEN first_rank = 1 THEN price END) AS open,
       MAX(price) AS high,
       MIN(price) AS low,
       MAX(CASE WHEN last_rank = 1 THEN price END) AS close,
       SUM(qty) AS volume,
       SUM(price * qty) AS quote_volume,
       COUNT(*) AS trades
FROM t
GROUP BY venue, symbol, minute_ms;
