//! Reads for the analyst commands and metrics (coverage, export, `/metrics`): figures, not
//! rows to rebuild state from. Like `read.rs`, one SQL text for both backends.

use super::on_pool;
use super::{Store, StoreError};
use crate::model::StreamKey;

/// Rows of one stream in a window, and the first and last time among them.
pub type Span = (i64, Option<i64>, Option<i64>);

/// One stored full book: receive time, exchange time, depth step, bids and asks as JSON.
pub type BookRow = (i64, i64, i64, String, String);

/// A book stream's rows, first and last receive time (ms) in a window: full books and each
/// level change of the packed updates.
static BOOK_SPAN: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT CAST(COALESCE(SUM(n), 0) AS BIGINT), MIN(lo) / 1000, MAX(hi) / 1000 FROM (\
         SELECT COUNT(*) AS n, MIN(recv_time_us) AS lo, MAX(recv_time_us) AS hi \
         FROM book_snapshots WHERE venue = $1 AND symbol = $2 AND recv_time_us >= $3 * 1000 \
         AND recv_time_us < $4 * 1000 AND CAST(depth_step AS TEXT) = $5 \
         UNION ALL SELECT SUM({n}), MIN(recv_time_us), MAX(recv_time_us) \
         FROM {t} WHERE venue = $1 AND symbol = $2 AND recv_time_us >= $3 * 1000 \
         AND recv_time_us < $4 * 1000 AND CAST(depth_step AS TEXT) = $5) AS b",
        n = super::book::LEVEL_COUNT,
        t = super::book::UPDATES
    )
});

/// Level changes of a symbol's books with exchange time in a window.
static DELTA_COUNT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT CAST(COALESCE(SUM({n}), 0) AS BIGINT) FROM {t} WHERE venue = $1 AND symbol = $2 \
         AND event_time_ms >= $3 AND event_time_ms < $4 AND $5 = $5",
        n = super::book::LEVEL_COUNT,
        t = super::book::UPDATES
    )
});

impl Store {
    /// Symbols with sessions, trades or bars.
    /// Whether any row of the symbol is stored (sessions, markets, or one trade, bar or
    /// book by the tables' keys: no scan).
    pub async fn has_symbol(&self, venue: &str, symbol: &str) -> Result<bool, StoreError> {
        let sql = "SELECT 1 FROM sessions WHERE venue = $1 AND symbol = $2 \
                   UNION ALL SELECT 1 FROM (SELECT 1 FROM trades WHERE venue = $1 AND symbol = $2 LIMIT 1) AS t \
                   UNION ALL SELECT 1 FROM (SELECT 1 FROM klines WHERE venue = $1 AND symbol = $2 LIMIT 1) AS k \
                   UNION ALL SELECT 1 FROM (SELECT 1 FROM book_snapshots WHERE venue = $1 AND symbol = $2 LIMIT 1) AS b \
                   LIMIT 1";
        let row: Option<(i32,)> = on_pool!(self, p => sqlx::query_as(sql)
            .bind(venue)
            .bind(symbol)
            .fetch_optional(p)
            .await)
        .map_err(StoreError::sql("has symbol"))?;
        Ok(row.is_some())
    }

    /// Symbols the small tables name (sessions, markets): names to suggest.
    pub async fn known_symbols(&self, venue: &str) -> Result<Vec<String>, StoreError> {
        let sql = "SELECT symbol FROM sessions WHERE venue = $1 UNION SELECT symbol FROM markets \
                   WHERE venue = $1 ORDER BY 1";
        on_pool!(self, p => sqlx::query_scalar::<_, String>(sql).bind(venue).fetch_all(p).await)
            .map_err(StoreError::sql("known symbols"))
    }

    pub async fn symbols_with_data(&self, venue: &str) -> Result<Vec<String>, StoreError> {
        // trades and klines walked symbol to symbol through their keys' index (a seek each),
        // not read whole: a round asks this every time
        let sql = "WITH RECURSIVE \
                   t(symbol) AS (SELECT MIN(symbol) FROM trades WHERE venue = $1 UNION ALL \
                   SELECT (SELECT MIN(symbol) FROM trades WHERE venue = $1 AND symbol > t.symbol) \
                   FROM t WHERE t.symbol IS NOT NULL), \
                   k(symbol) AS (SELECT MIN(symbol) FROM klines WHERE venue = $1 UNION ALL \
                   SELECT (SELECT MIN(symbol) FROM klines WHERE venue = $1 AND symbol > k.symbol) \
                   FROM k WHERE k.symbol IS NOT NULL) \
                   SELECT symbol FROM sessions WHERE venue = $1 \
                   UNION SELECT symbol FROM t WHERE symbol IS NOT NULL \
                   UNION SELECT symbol FROM k WHERE symbol IS NOT NULL ORDER BY 1";
        on_pool!(self, p => sqlx::query_scalar::<_, String>(sql).bind(venue).fetch_all(p).await)
            .map_err(StoreError::sql("symbols with data"))
    }

    /// When the first session of the venue began, in ms.
    pub async fn first_session_ms(&self, venue: &str) -> Result<Option<i64>, StoreError> {
        let sql = "SELECT MIN(connected_at_us) / 1000 FROM sessions WHERE venue = $1";
        on_pool!(self, p => sqlx::query_scalar::<_, Option<i64>>(sql)
            .bind(venue)
            .fetch_one(p)
            .await)
        .map_err(StoreError::sql("first session"))
    }

    /// Where the recorded span ends: the last session's end, or None while one is open (the
    /// recording goes on) or none is stored.
    pub async fn last_session_end_ms(&self, venue: &str) -> Result<Option<i64>, StoreError> {
        let sql = "SELECT CASE WHEN COUNT(*) = COUNT(disconnected_at_us) \
                   THEN MAX(disconnected_at_us) / 1000 END FROM sessions WHERE venue = $1";
        on_pool!(self, p => sqlx::query_scalar::<_, Option<i64>>(sql)
            .bind(venue)
            .fetch_one(p)
            .await)
        .map_err(StoreError::sql("last session end"))
    }

    /// Stored kline intervals of a symbol.
    pub async fn stored_intervals(
        &self,
        venue: &str,
        symbol: &str,
    ) -> Result<Vec<String>, StoreError> {
        let sql =
            "SELECT DISTINCT interval FROM klines WHERE venue = $1 AND symbol = $2 ORDER BY 1";
        on_pool!(self, p => sqlx::query_scalar::<_, String>(sql)
            .bind(venue)
            .bind(symbol)
            .fetch_all(p)
            .await)
        .map_err(StoreError::sql("stored intervals"))
    }

    /// Depth steps with stored full books for a symbol.
    pub async fn stored_depth_steps(
        &self,
        venue: &str,
        symbol: &str,
    ) -> Result<Vec<i64>, StoreError> {
        self.distinct_steps("book_snapshots", venue, symbol).await
    }

    /// Depth steps with stored book changes for a symbol.
    pub async fn stored_delta_steps(
        &self,
        venue: &str,
        symbol: &str,
    ) -> Result<Vec<i64>, StoreError> {
        let sql = "SELECT CAST(depth_step AS BIGINT) FROM book_streams s WHERE venue = $1 \
                   AND symbol = $2 AND EXISTS (SELECT 1 FROM book_updates u WHERE u.stream = s.id) \
                   ORDER BY 1";
        on_pool!(self, p => sqlx::query_scalar::<_, i64>(sql)
            .bind(venue)
            .bind(symbol)
            .fetch_all(p)
            .await)
        .map_err(StoreError::sql("stored depth steps"))
    }

    async fn distinct_steps(
        &self,
        table: &'static str,
        venue: &str,
        symbol: &str,
    ) -> Result<Vec<i64>, StoreError> {
        let sql = format!(
            "SELECT DISTINCT CAST(depth_step AS BIGINT) FROM {table} WHERE venue = $1 \
             AND symbol = $2 ORDER BY 1"
        );
        on_pool!(self, p => sqlx::query_scalar::<_, i64>(&sql)
            .bind(venue)
            .bind(symbol)
            .fetch_all(p)
            .await)
        .map_err(StoreError::sql("stored depth steps"))
    }

    /// Rows of one stream of a symbol in `[from, to)` ms (as export counts them), with the
    /// first and last time: exchange time for trades, open time for bars, receive time for
    /// books (full books and deltas) and tickers.
    pub async fn stream_span(
        &self,
        venue: &str,
        symbol: &str,
        stream: &StreamKey,
        from: i64,
        to: i64,
    ) -> Result<Span, StoreError> {
        let (sql, extra) = match stream {
            StreamKey::Trades => (
                "SELECT COUNT(*), MIN(event_time_ms), MAX(event_time_ms) FROM trades \
                 WHERE venue = $1 AND symbol = $2 AND event_time_ms >= $3 AND event_time_ms < $4",
                None,
            ),
            StreamKey::Kline(iv) => (
                "SELECT COUNT(*), MIN(open_time_ms), MAX(open_time_ms) FROM klines WHERE venue = $1 \
                 AND symbol = $2 AND open_time_ms >= $3 AND open_time_ms < $4 AND interval = $5",
                Some(iv.to_string()),
            ),
            StreamKey::Book(step) => (
                // full books and level changes alike: an incremental stream is mostly changes
                BOOK_SPAN.as_str(),
                Some(step.to_string()),
            ),
            StreamKey::Ticker => (
                "SELECT COUNT(*), MIN(recv_time_us) / 1000, MAX(recv_time_us) / 1000 FROM tickers \
                 WHERE venue = $1 AND symbol = $2 AND recv_time_us >= $3 * 1000 AND recv_time_us < $4 * 1000",
                None,
            ),
        };
        on_pool!(self, p => {
            let q = sqlx::query_as::<_, Span>(sql).bind(venue).bind(symbol).bind(from).bind(to);
            let q = match extra { Some(x) => q.bind(x), None => q };
            q.fetch_one(p).await
        })
        .map_err(StoreError::sql("stream span"))
    }

    /// (connected, disconnected) ms of a symbol's sessions, oldest first (None: still open).
    pub async fn session_spans(
        &self,
        venue: &str,
        symbol: &str,
    ) -> Result<Vec<(i64, Option<i64>)>, StoreError> {
        let sql = "SELECT connected_at_us / 1000, disconnected_at_us / 1000 FROM sessions \
                   WHERE venue = $1 AND symbol = $2 ORDER BY connected_at_us";
        on_pool!(self, p => sqlx::query_as(sql)
            .bind(venue)
            .bind(symbol)
            .fetch_all(p)
            .await)
        .map_err(StoreError::sql("session spans"))
    }

    /// Rows of `table` for a symbol in `[from, to)` by its time column (`interval` narrows
    /// klines), for an export's progress.
    pub async fn rows_between(
        &self,
        table: crate::model::Table,
        venue: &str,
        symbol: &str,
        interval: &str,
        from: i64,
        to: i64,
    ) -> Result<u64, StoreError> {
        use crate::model::Table;
        let sql = match table {
            Table::Trades => {
                "SELECT COUNT(*) FROM trades WHERE venue = $1 AND symbol = $2 \
                 AND event_time_ms >= $3 AND event_time_ms < $4 AND $5 = $5"
            }
            Table::Klines => {
                "SELECT COUNT(*) FROM klines WHERE venue = $1 AND symbol = $2 \
                 AND open_time_ms >= $3 AND open_time_ms < $4 AND interval = $5"
            }
            Table::BookSnapshots => {
                "SELECT COUNT(*) FROM book_snapshots WHERE venue = $1 AND symbol = $2 \
                 AND event_time_ms >= $3 AND event_time_ms < $4 AND $5 = $5"
            }
            Table::BookDeltas => DELTA_COUNT.as_str(),
            Table::Tickers => {
                "SELECT COUNT(*) FROM tickers WHERE venue = $1 AND symbol = $2 \
                 AND event_time_ms >= $3 AND event_time_ms < $4 AND $5 = $5"
            }
            _ => return Ok(0),
        };
        let n: i64 = on_pool!(self, p => sqlx::query_scalar(sql)
            .bind(venue)
            .bind(symbol)
            .bind(from)
            .bind(to)
            .bind(interval)
            .fetch_one(p)
            .await)
        .map_err(StoreError::sql("count rows"))?;
        Ok(n.max(0) as u64)
    }

    /// Up to `limit` full books of one depth step received after `after_us`, with exchange
    /// time in `[from, to)`, in receive order (the key's order: every page an index seek).
    #[allow(clippy::too_many_arguments)]
    pub async fn book_rows_page(
        &self,
        venue: &str,
        symbol: &str,
        depth_step: i16,
        after_us: i64,
        from: i64,
        to: i64,
        limit: i64,
    ) -> Result<Vec<BookRow>, StoreError> {
        let sql = "SELECT recv_time_us, event_time_ms, CAST(depth_step AS BIGINT), \
                   CAST(bids AS TEXT), CAST(asks AS TEXT) FROM book_snapshots \
                   WHERE venue = $1 AND symbol = $2 AND depth_step = $3 \
                   AND recv_time_us > $4 AND event_time_ms >= $5 AND event_time_ms < $6 \
                   ORDER BY recv_time_us LIMIT $7";
        on_pool!(self, p => sqlx::query_as(sql)
            .bind(venue)
            .bind(symbol)
            .bind(depth_step)
            .bind(after_us)
            .bind(from)
            .bind(to)
            .bind(limit)
            .fetch_all(p)
            .await)
        .map_err(StoreError::sql("select book_snapshots"))
    }

    /// First and last exchange time (bars: open time) of a symbol's rows of `table` in
    /// `[from, to)`; `interval` narrows bars, `depth_step` books. None: no row.
    #[allow(clippy::too_many_arguments)]
    pub async fn time_bounds(
        &self,
        table: crate::model::Table,
        venue: &str,
        symbol: &str,
        interval: &str,
        depth_step: Option<i16>,
        from: i64,
        to: i64,
    ) -> Result<Option<(i64, i64)>, StoreError> {
        use crate::model::Table;
        let (name, col) = match table {
            Table::Trades => ("trades", "event_time_ms"),
            Table::Klines => ("klines", "open_time_ms"),
            Table::BookSnapshots => ("book_snapshots", "event_time_ms"),
            Table::BookDeltas => (super::book::UPDATES, "event_time_ms"),
            Table::Tickers => ("tickers", "event_time_ms"),
            _ => return Ok(None),
        };
        let narrow = match table {
            Table::Klines => " AND interval = $5",
            Table::BookSnapshots | Table::BookDeltas => {
                " AND ($5 = '' OR CAST(depth_step AS TEXT) = $5)"
            }
            _ => " AND $5 = $5",
        };
        let sql = format!(
            "SELECT MIN({col}), MAX({col}) FROM {name} WHERE venue = $1 AND symbol = $2 \
             AND {col} >= $3 AND {col} < $4{narrow}"
        );
        let extra = match table {
            Table::Klines => interval.to_string(),
            Table::BookSnapshots | Table::BookDeltas => {
                depth_step.map(|d| d.to_string()).unwrap_or_default()
            }
            _ => String::new(),
        };
        let row: (Option<i64>, Option<i64>) = on_pool!(self, p => sqlx::query_as(&sql)
            .bind(venue)
            .bind(symbol)
            .bind(from)
            .bind(to)
            .bind(&extra)
            .fetch_one(p)
            .await)
        .map_err(StoreError::sql("time bounds"))?;
        Ok(row.0.zip(row.1))
    }

    /// Receive time of the full book a rebuild at exchange time `at_ms` starts from: the
    /// newest at or before it.
    pub async fn snapshot_before(
        &self,
        venue: &str,
        symbol: &str,
        depth_step: i16,
        at_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        let sql = "SELECT recv_time_us FROM book_snapshots WHERE venue = $1 AND symbol = $2 \
                   AND depth_step = $3 AND event_time_ms <= $4 \
                   ORDER BY event_time_ms DESC, recv_time_us DESC LIMIT 1";
        on_pool!(self, p => sqlx::query_scalar::<_, i64>(sql)
            .bind(venue)
            .bind(symbol)
            .bind(depth_step)
            .bind(at_ms)
            .fetch_optional(p)
            .await)
        .map_err(StoreError::sql("select snapshot before"))
    }

    /// Gap rows per status.
    pub async fn gap_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let sql = "SELECT status, COUNT(*) FROM gaps GROUP BY status";
        on_pool!(self, p => sqlx::query_as::<_, (String, i64)>(sql).fetch_all(p).await)
            .map_err(StoreError::sql("gap counts"))
    }
}
