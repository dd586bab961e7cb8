//! Reads that need no exact decimals (positions, gaps, coverage figures): one SQL text for
//! both backends, with `$N` parameters (SQLite accepts them too) and only BIGINT/TEXT results.

use std::sync::Arc;

use super::{Store, StoreError, on_pool};
use crate::model::{Gap, GapStatus};

pub use crate::model::TradeMark;

type GapRow = (
    String,
    String,
    i64,
    Option<i64>,
    String,
    i64,
    Option<i64>,
    i64,
    Option<String>,
);

const GAP_COLUMNS: &str = "symbol, stream, start_ms, end_ms, status, detected_at_ms, \
                           resolved_at_ms, rows_recovered, detail";

fn gap_from_row(venue: &'static str, r: GapRow) -> Result<Gap, StoreError> {
    let (symbol, stream, start_ms, end_ms, status, detected_at_ms, resolved_at_ms, rows, detail) =
        r;
    Ok(Gap {
        venue,
        symbol: Arc::from(symbol),
        stream,
        start_ms,
        end_ms,
        status: GapStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("gap status {status:?}")))?,
        detected_at_ms,
        resolved_at_ms,
        rows_recovered: rows,
        detail,
    })
}

impl Store {
    /// The newest stored trade of a symbol (by exchange time, then id), optionally at or
    /// before a time.
    pub async fn last_trade(
        &self,
        venue: &str,
        symbol: &str,
        at_or_before_ms: Option<i64>,
    ) -> Result<Option<TradeMark>, StoreError> {
        let sql = "SELECT event_time_ms, trade_id FROM trades WHERE venue = $1 AND symbol = $2 \
                   AND event_time_ms <= $3 ORDER BY event_time_ms DESC, trade_id DESC LIMIT 1";
        let row: Option<(i64, i64)> = on_pool!(self, p => sqlx::query_as(sql)
            .bind(venue)
            .bind(symbol)
            .bind(at_or_before_ms.unwrap_or(i64::MAX))
            .fetch_optional(p)
            .await)
        .map_err(StoreError::sql("select last trade"))?;
        Ok(row.map(|(time_ms, trade_id)| TradeMark { time_ms, trade_id }))
    }

    /// The venues this database holds rows of (from the small tables every run writes, and
    /// one trade row: no scan of the market-data tables).
    pub async fn venues(&self) -> Result<Vec<String>, StoreError> {
        let sql = "SELECT venue FROM sessions UNION SELECT venue FROM markets \
                   UNION SELECT venue FROM gaps UNION SELECT * FROM (SELECT venue FROM trades LIMIT 1) AS t \
                   ORDER BY 1";
        let rows: Vec<(String,)> = on_pool!(self, p => sqlx::query_as(sql).fetch_all(p).await)
            .map_err(StoreError::sql("select venues"))?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// The first stored trade at or after a time (by exchange time, then id).
    pub async fn first_trade_from(
        &self,
        venue: &str,
        symbol: &str,
        from_ms: i64,
    ) -> Result<Option<TradeMark>, StoreError> {
        let sql = "SELECT event_time_ms, trade_id FROM trades WHERE venue = $1 AND symbol = $2 \
                   AND event_time_ms >= $3 ORDER BY event_time_ms, trade_id LIMIT 1";
        let row: Option<(i64, i64)> = on_pool!(self, p => sqlx::query_as(sql)
            .bind(venue)
            .bind(symbol)
            .bind(from_ms)
            .fetch_optional(p)
            .await)
        .map_err(StoreError::sql("select first trade from"))?;
        Ok(row.map(|(time_ms, trade_id)| TradeMark { time_ms, trade_id }))
    }

    /// The first stored trade after `m` (by id where the venue's ids order its trades, else
    /// by time: [`crate::venue::TradeIds::is_after`]).
    pub async fn next_trade(
        &self,
        venue: &str,
        symbol: &str,
        m: TradeMark,
        ids: crate::venue::TradeIds,
    ) -> Result<Option<TradeMark>, StoreError> {
        let sql = if m.trade_id >= 0 && ids != crate::venue::TradeIds::Unordered {
            "SELECT event_time_ms, trade_id FROM trades WHERE venue = $1 AND symbol = $2 \
             AND trade_id > $4 AND $3 = $3 ORDER BY trade_id LIMIT 1"
        } else {
            "SELECT event_time_ms, trade_id FROM trades WHERE venue = $1 AND symbol = $2 \
             AND (event_time_ms > $3 OR (event_time_ms = $3 AND trade_id > $4)) \
             ORDER BY event_time_ms, trade_id LIMIT 1"
        };
        let row: Option<(i64, i64)> = on_pool!(self, p => sqlx::query_as(sql)
            .bind(venue)
            .bind(symbol)
            .bind(m.time_ms)
            .bind(m.trade_id)
            .fetch_optional(p)
            .await)
        .map_err(StoreError::sql("select next trade"))?;
        Ok(row.map(|(time_ms, trade_id)| TradeMark { time_ms, trade_id }))
    }

    /// Open time of the newest stored bar and whether it is final.
    pub async fn last_bar(
        &self,
        venue: &str,
        symbol: &str,
        interval: &str,
    ) -> Result<Option<(i64, bool)>, StoreError> {
        let sql = "SELECT open_time_ms, CAST(CASE WHEN closed THEN 1 ELSE 0 END AS BIGINT) \
                   FROM klines WHERE venue = $1 AND symbol = $2 AND interval = $3 \
                   ORDER BY open_time_ms DESC LIMIT 1";
        let row: Option<(i64, i64)> = on_pool!(self, p => sqlx::query_as(sql)
            .bind(venue)
            .bind(symbol)
            .bind(interval)
            .fetch_optional(p)
            .await)
        .map_err(StoreError::sql("select last bar"))?;
        Ok(row.map(|(t, c)| (t, c != 0)))
    }

    /// Exchange time of the newest stored full book at or before `at_ms` (None: any).
    pub async fn snapshot_time(
        &self,
        venue: &str,
        symbol: &str,
        depth_step: i16,
        at_ms: Option<i64>,
    ) -> Result<Option<i64>, StoreError> {
        let sql = "SELECT MAX(event_time_ms) FROM book_snapshots WHERE venue = $1 AND symbol = $2 \
                   AND depth_step = $3 AND event_time_ms <= $4";
        on_pool!(self, p => sqlx::query_scalar::<_, Option<i64>>(sql)
            .bind(venue)
            .bind(symbol)
            .bind(depth_step)
            .bind(at_ms.unwrap_or(i64::MAX))
            .fetch_one(p)
            .await)
        .map_err(StoreError::sql("select snapshot time"))
    }

    /// Exchange time of the first full book stored for a symbol's stream.
    pub async fn first_snapshot_time(
        &self,
        venue: &str,
        symbol: &str,
        depth_step: i16,
    ) -> Result<Option<i64>, StoreError> {
        let sql = "SELECT MIN(event_time_ms) FROM book_snapshots WHERE venue = $1 AND symbol = $2 \
                   AND depth_step = $3";
        on_pool!(self, p => sqlx::query_scalar::<_, Option<i64>>(sql)
            .bind(venue)
            .bind(symbol)
            .bind(depth_step)
            .fetch_one(p)
            .await)
        .map_err(StoreError::sql("select first snapshot time"))
    }

    /// (open time, final) of the stored bars of a symbol and interval from `from_ms` on,
    /// oldest first, at most `limit`.
    pub async fn bar_states(
        &self,
        venue: &str,
        symbol: &str,
        interval: &str,
        from_ms: i64,
        limit: i64,
    ) -> Result<Vec<(i64, bool)>, StoreError> {
        let sql = "SELECT open_time_ms, CAST(CASE WHEN closed THEN 1 ELSE 0 END AS BIGINT) \
                   FROM klines WHERE venue = $1 AND symbol = $2 AND interval = $3 \
                   AND open_time_ms >= $4 ORDER BY open_time_ms LIMIT $5";
        let rows: Vec<(i64, i64)> = on_pool!(self, p => sqlx::query_as(sql)
            .bind(venue)
            .bind(symbol)
            .bind(interval)
            .bind(from_ms)
            .bind(limit)
            .fetch_all(p)
            .await)
        .map_err(StoreError::sql("select bars"))?;
        Ok(rows.into_iter().map(|(t, c)| (t, c != 0)).collect())
    }

    /// Gap rows, by symbol, stream and start; `symbol` None for all.
    pub async fn load_gaps(
        &self,
        venue: &'static str,
        symbol: Option<&str>,
    ) -> Result<Vec<Gap>, StoreError> {
        let sql = format!(
            "SELECT {GAP_COLUMNS} FROM gaps WHERE venue = $1 AND ($2 = '' OR symbol = $2) \
             ORDER BY symbol, stream, start_ms"
        );
        let rows: Vec<GapRow> = on_pool!(self, p => sqlx::query_as(&sql)
            .bind(venue)
            .bind(symbol.unwrap_or(""))
            .fetch_all(p)
            .await)
        .map_err(StoreError::sql("select gaps"))?;
        rows.into_iter().map(|r| gap_from_row(venue, r)).collect()
    }

    /// Sessions a run that ended without closing them (SIGKILL, a crash, power loss) left
    /// open for these symbols, each closed at the last time that run is known to have been
    /// alive: its newest row received on the symbol after the connection opened (and before
    /// the symbol's next connection), else the connection time.
    pub async fn orphan_sessions(
        &self,
        venue: &'static str,
        symbols: &[String],
    ) -> Result<Vec<crate::model::Session>, StoreError> {
        let open: Vec<(String, String, i64)> = on_pool!(self, p => sqlx::query_as(
            "SELECT symbol, session_id, connected_at_us FROM sessions \
             WHERE venue = $1 AND disconnected_at_us IS NULL ORDER BY symbol, connected_at_us")
            .bind(venue)
            .fetch_all(p)
            .await)
        .map_err(StoreError::sql("select open sessions"))?;
        let mut out = Vec::new();
        for (symbol, session_id, connected_at_us) in open {
            if !symbols.contains(&symbol) {
                continue; // another recorder's symbols are its own business
            }
            let next: Option<i64> = on_pool!(self, p => sqlx::query_scalar(
                "SELECT MIN(connected_at_us) FROM sessions WHERE venue = $1 AND symbol = $2 \
                 AND connected_at_us > $3")
                .bind(venue)
                .bind(&symbol)
                .bind(connected_at_us)
                .fetch_one(p)
                .await)
            .map_err(StoreError::sql("select next session"))?;
            let upper = next.unwrap_or(i64::MAX);
            let mut last = connected_at_us;
            // trades through their time index: a trade is received within an hour of its time
            for (table, extra) in [
                ("trades", "AND event_time_ms >= $5"),
                ("tickers", ""),
                ("book_snapshots", ""),
                (super::book::UPDATES, ""),
                ("klines", "AND open_time_ms >= $5"),
            ] {
                let sql = format!(
                    "SELECT MAX(recv_time_us) FROM {table} WHERE venue = $1 AND symbol = $2 \
                     AND recv_time_us >= $3 AND recv_time_us < $4 {extra}"
                );
                let from_ms = connected_at_us / 1000 - 86_400_000;
                let t: Option<i64> = on_pool!(self, p => {
                    let q = sqlx::query_scalar(&sql)
                        .bind(venue)
                        .bind(&symbol)
                        .bind(connected_at_us)
                        .bind(upper);
                    let q = if extra.is_empty() { q } else { q.bind(from_ms) };
                    q.fetch_one(p).await
                })
                .map_err(StoreError::sql("select last row of a session"))?;
                last = last.max(t.unwrap_or(connected_at_us));
            }
            out.push(crate::model::Session {
                venue,
                symbol: Arc::from(symbol),
                session_id,
                connected_at_us,
                disconnected_at_us: Some(last),
                close_reason: Some(ORPHAN_REASON.into()),
            });
        }
        Ok(out)
    }
}

/// Close reason of a session closed at the next start (see [`Store::orphan_sessions`]).
pub const ORPHAN_REASON: &str = "recorder ended without closing the connection (killed or crashed); closed at its last stored row";
