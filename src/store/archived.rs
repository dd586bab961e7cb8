//! The archive's ledger in the database (migration 0008): parts published, how far each
//! table of each symbol is archived, the late periods the writer marked, and what a round
//! reads to cut periods. One SQL text for both backends, like `read.rs`.

use super::ledger::LateRule;
use super::{Store, StoreError, on_pool};

/// A part as the ledger records it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PartRow {
    pub tbl: String,
    pub venue: String,
    pub symbol: String,
    pub period_start_ms: i64,
    pub period_end_ms: i64,
    pub path: String,
    pub rows: i64,
    pub digest: String,
    pub bytes: i64,
    pub archived_at_ms: i64,
    /// When its rows were deleted from the database (None: they are all there).
    pub deleted_at_ms: Option<i64>,
}

/// A late period waiting to be archived again: table, venue, symbol, the writer's period
/// (start, end), the mark's time.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DirtyRow {
    pub tbl: String,
    pub venue: String,
    pub symbol: String,
    pub period_start_ms: i64,
    pub period_end_ms: i64,
    pub marked_at_ms: i64,
}

impl Store {
    /// Which rows this store's writes mark as late (the archive's period and settle time).
    pub fn set_late_rule(&self, r: LateRule) {
        match self {
            Store::Sqlite(s) => s.late.set(r),
            Store::Postgres(s) => s.late.set(r),
        }
    }

    /// How far a table of a symbol is archived (every period ending at or before it).
    pub async fn archived_through(
        &self,
        tbl: &str,
        venue: &str,
        symbol: &str,
    ) -> Result<Option<i64>, StoreError> {
        on_pool!(self, p => sqlx::query_scalar(
            "SELECT through_ms FROM archive_marks WHERE tbl = $1 AND venue = $2 AND symbol = $3")
            .bind(tbl)
            .bind(venue)
            .bind(symbol)
            .fetch_optional(p)
            .await)
        .map_err(StoreError::sql("select archive_marks"))
    }

    /// Records a verified, published part (a part written again replaces its row) and moves
    /// the symbol's mark on to `through_ms` (never back), in one transaction.
    pub async fn record_part(&self, part: &PartRow, through_ms: i64) -> Result<(), StoreError> {
        self.record_parts(&[(part.clone(), through_ms)]).await
    }

    /// The same for many parts in one transaction (SQLite has one writer: a transaction a
    /// part would wait on the recorder's writer every time).
    pub async fn record_parts(&self, parts: &[(PartRow, i64)]) -> Result<(), StoreError> {
        if parts.is_empty() {
            return Ok(());
        }
        on_pool!(self, p => {
            let mut tx = p.begin().await.map_err(StoreError::sql("begin"))?;
            for (part, through_ms) in parts {
                if part.rows > 0 {
                    sqlx::query(
                        "INSERT INTO archive_parts (tbl, venue, symbol, period_start_ms, \
                         period_end_ms, path, rows, digest, bytes, archived_at_ms) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                         ON CONFLICT (tbl, venue, symbol, period_start_ms) DO UPDATE SET \
                         period_end_ms = excluded.period_end_ms, path = excluded.path, \
                         rows = excluded.rows, digest = excluded.digest, bytes = excluded.bytes, \
                         archived_at_ms = excluded.archived_at_ms")
                        .bind(&part.tbl)
                        .bind(&part.venue)
                        .bind(&part.symbol)
                        .bind(part.period_start_ms)
                        .bind(part.period_end_ms)
                        .bind(&part.path)
                        .bind(part.rows)
                        .bind(&part.digest)
                        .bind(part.bytes)
                        .bind(part.archived_at_ms)
                        .execute(&mut *tx)
                        .await
                        .map_err(StoreError::sql("insert archive_parts"))?;
                }
                sqlx::query(
                    "INSERT INTO archive_marks (tbl, venue, symbol, through_ms) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (tbl, venue, symbol) \
                     DO UPDATE SET through_ms = excluded.through_ms \
                     WHERE excluded.through_ms > archive_marks.through_ms")
                    .bind(&part.tbl)
                    .bind(&part.venue)
                    .bind(&part.symbol)
                    .bind(through_ms)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::sql("insert archive_marks"))?;
            }
            tx.commit().await.map_err(StoreError::sql("commit"))
        })
    }

    /// The recorded parts, by table, venue, symbol and period.
    pub async fn archive_parts(&self) -> Result<Vec<PartRow>, StoreError> {
        on_pool!(self, p => sqlx::query_as(
            "SELECT tbl, venue, symbol, period_start_ms, period_end_ms, path, rows, digest, bytes, \
             archived_at_ms, deleted_at_ms FROM archive_parts \
             ORDER BY tbl, venue, symbol, period_start_ms")
            .fetch_all(p)
            .await)
        .map_err(StoreError::sql("select archive_parts"))
    }

    /// The recorded part of a period, if any.
    pub async fn archive_part(
        &self,
        tbl: &str,
        venue: &str,
        symbol: &str,
        period_start_ms: i64,
    ) -> Result<Option<PartRow>, StoreError> {
        on_pool!(self, p => sqlx::query_as(
            "SELECT tbl, venue, symbol, period_start_ms, period_end_ms, path, rows, digest, bytes, \
             archived_at_ms, deleted_at_ms FROM archive_parts WHERE tbl = $1 AND venue = $2 \
             AND symbol = $3 AND period_start_ms = $4")
            .bind(tbl)
            .bind(venue)
            .bind(symbol)
            .bind(period_start_ms)
            .fetch_optional(p)
            .await)
        .map_err(StoreError::sql("select archive_parts"))
    }

    /// Parts of periods that ended by `end_ms` whose rows the database still holds (never
    /// deleted, or written again since), oldest first, at most `limit`; none overlapping a
    /// partition in `spare` (its rows leave with the partition).
    pub async fn parts_to_prune(
        &self,
        end_ms: i64,
        limit: i64,
        spare: &[super::partitions::Partition],
    ) -> Result<Vec<PartRow>, StoreError> {
        const SELECT: &str = "SELECT tbl, venue, symbol, period_start_ms, period_end_ms, path, \
             rows, digest, bytes, archived_at_ms, deleted_at_ms FROM archive_parts \
             WHERE period_end_ms <= $1 AND tbl <> 'gaps' AND tbl <> 'sessions' \
             AND (deleted_at_ms IS NULL OR archived_at_ms > deleted_at_ms)";
        const ORDER: &str = " ORDER BY period_start_ms, tbl, venue, symbol LIMIT $2";
        match self {
            Store::Postgres(s) if !spare.is_empty() => {
                let sql = format!(
                    "{SELECT} AND NOT EXISTS (SELECT 1 FROM UNNEST($3::text[], $4::bigint[], \
                     $5::bigint[]) AS x(tbl, lo, hi) WHERE x.tbl = archive_parts.tbl \
                     AND archive_parts.period_start_ms < x.hi \
                     AND archive_parts.period_end_ms > x.lo){ORDER}"
                );
                sqlx::query_as(&sql)
                    .bind(end_ms)
                    .bind(limit)
                    .bind(spare.iter().map(|p| p.of.tbl).collect::<Vec<_>>())
                    .bind(spare.iter().map(|p| p.from_ms).collect::<Vec<_>>())
                    .bind(spare.iter().map(|p| p.to_ms).collect::<Vec<_>>())
                    .fetch_all(s.pool())
                    .await
            }
            _ => {
                let sql = format!("{SELECT}{ORDER}");
                on_pool!(self, p => sqlx::query_as(&sql).bind(end_ms).bind(limit).fetch_all(p).await)
            }
        }
        .map_err(StoreError::sql("select archive_parts"))
    }

    /// Deletes up to `chunk` of a part's rows from the database (one statement, so SQLite's
    /// writer waits for one chunk at most), never while a late row of its period waits to be
    /// archived (that row's mark is committed with it: one statement sees both or neither).
    /// Returns the rows deleted.
    pub async fn delete_archived(&self, part: &PartRow, chunk: i64) -> Result<u64, StoreError> {
        let late = "NOT EXISTS (SELECT 1 FROM archive_dirty d WHERE d.tbl = $6 AND d.venue = $1 \
                    AND d.symbol = $2 AND d.period_start_ms < $4 AND d.period_end_ms > $3)";
        let sql = match part.tbl.as_str() {
            "trades" => format!(
                "DELETE FROM trades WHERE venue = $1 AND symbol = $2 AND trade_id IN (\
                 SELECT trade_id FROM trades WHERE venue = $1 AND symbol = $2 \
                 AND event_time_ms >= $3 AND event_time_ms < $4 LIMIT $5) AND {late}"
            ),
            "klines" => format!(
                "DELETE FROM klines WHERE venue = $1 AND symbol = $2 AND open_time_ms >= $3 \
                 AND open_time_ms < $4 AND $5 = $5 AND {late}"
            ),
            "book_snapshots" => format!(
                "DELETE FROM book_snapshots WHERE venue = $1 AND symbol = $2 \
                 AND (depth_step, recv_time_us) IN (SELECT depth_step, recv_time_us \
                 FROM book_snapshots WHERE venue = $1 AND symbol = $2 AND event_time_ms >= $3 \
                 AND event_time_ms < $4 LIMIT $5) AND {late}"
            ),
            "book_deltas" => format!(
                "DELETE FROM book_updates WHERE (stream, recv_time_us, first_seq) IN (\
                 SELECT u.stream, u.recv_time_us, u.first_seq FROM book_updates u \
                 JOIN book_streams s ON s.id = u.stream WHERE s.venue = $1 AND s.symbol = $2 \
                 AND u.event_time_ms >= $3 AND u.event_time_ms < $4 LIMIT $5) AND {late}"
            ),
            "tickers" => format!(
                "DELETE FROM tickers WHERE venue = $1 AND symbol = $2 AND recv_time_us IN (\
                 SELECT recv_time_us FROM tickers WHERE venue = $1 AND symbol = $2 \
                 AND event_time_ms >= $3 AND event_time_ms < $4 LIMIT $5) AND {late}"
            ),
            _ => return Ok(0),
        };
        on_pool!(self, p => sqlx::query(&sql)
            .bind(&part.venue)
            .bind(&part.symbol)
            .bind(part.period_start_ms)
            .bind(part.period_end_ms)
            .bind(chunk)
            .bind(&part.tbl)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(StoreError::sql("delete archived rows"))
    }

    /// Notes that a part's rows left the database (unless it was written again meanwhile).
    pub async fn mark_deleted(&self, part: &PartRow, at_ms: i64) -> Result<(), StoreError> {
        on_pool!(self, p => sqlx::query(
            "UPDATE archive_parts SET deleted_at_ms = $5 WHERE tbl = $1 AND venue = $2 \
             AND symbol = $3 AND period_start_ms = $4 AND archived_at_ms = $6")
            .bind(&part.tbl)
            .bind(&part.venue)
            .bind(&part.symbol)
            .bind(part.period_start_ms)
            .bind(at_ms)
            .bind(part.archived_at_ms)
            .execute(p)
            .await
            .map(|_| ()))
        .map_err(StoreError::sql("update archive_parts"))
    }

    /// Bytes inside the database file that deleted rows freed and new rows reuse before the
    /// file grows (SQLite's free pages; PostgreSQL: 0, its space is the server's business).
    pub async fn reusable_bytes(&self) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let free: i64 = sqlx::query_scalar("PRAGMA freelist_count")
                    .fetch_one(s.pool())
                    .await
                    .map_err(StoreError::sql("freelist_count"))?;
                let page: i64 = sqlx::query_scalar("PRAGMA page_size")
                    .fetch_one(s.pool())
                    .await
                    .map_err(StoreError::sql("page_size"))?;
                Ok((free.max(0) * page.max(0)) as u64)
            }
            Store::Postgres(_) => Ok(0),
        }
    }

    /// The least `through_ms` of any stream (how far the whole archive is), if any.
    pub async fn oldest_archive_mark(&self) -> Result<Option<i64>, StoreError> {
        // a symbol never archived yet counts from its first connection: an archive that
        // archives nothing falls behind too
        on_pool!(self, p => sqlx::query_scalar(
            "SELECT MIN(t) FROM (SELECT MIN(through_ms) AS t FROM archive_marks UNION ALL \
             SELECT MIN(s.connected_at_us) / 1000 AS t FROM sessions s WHERE NOT EXISTS \
             (SELECT 1 FROM archive_marks m WHERE m.tbl = 'trades' AND m.venue = s.venue \
             AND m.symbol = s.symbol)) AS x")
            .fetch_one(p)
            .await)
        .map_err(StoreError::sql("select archive_marks"))
    }

    /// Bytes the database takes: SQLite's pages (free ones included: the file's size),
    /// PostgreSQL's `pg_database_size`.
    pub async fn database_bytes(&self) -> Result<u64, StoreError> {
        let n: i64 = match self {
            Store::Sqlite(s) => sqlx::query_scalar(
                "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
            )
            .fetch_one(s.pool())
            .await
            .map_err(StoreError::sql("page_count"))?,
            Store::Postgres(s) => sqlx::query_scalar("SELECT pg_database_size(current_database())")
                .fetch_one(s.pool())
                .await
                .map_err(StoreError::sql("pg_database_size"))?,
        };
        Ok(n.max(0) as u64)
    }

    /// Late periods, oldest first.
    pub async fn dirty_periods(&self) -> Result<Vec<DirtyRow>, StoreError> {
        on_pool!(self, p => sqlx::query_as(
            "SELECT tbl, venue, symbol, period_start_ms, period_end_ms, marked_at_ms FROM archive_dirty \
             ORDER BY period_start_ms, tbl, venue, symbol")
            .fetch_all(p)
            .await)
        .map_err(StoreError::sql("select archive_dirty"))
    }

    /// Clears a late period's mark if no row marked it again since it was read.
    pub async fn clear_dirty(&self, d: &DirtyRow) -> Result<(), StoreError> {
        on_pool!(self, p => sqlx::query(
            "DELETE FROM archive_dirty WHERE tbl = $1 AND venue = $2 AND symbol = $3 \
             AND period_start_ms = $4 AND marked_at_ms = $5")
            .bind(&d.tbl)
            .bind(&d.venue)
            .bind(&d.symbol)
            .bind(d.period_start_ms)
            .bind(d.marked_at_ms)
            .execute(p)
            .await
            .map(|_| ()))
        .map_err(StoreError::sql("delete archive_dirty"))
    }

    /// The first time of a row of an archived table at or after `from_ms` (the time a part
    /// is cut by: exchange time, bars' open time, holes' start, sessions' connect time); for
    /// gaps and sessions of any symbol of the venue.
    pub async fn next_row_ms(
        &self,
        table: &str,
        venue: &str,
        symbol: &str,
        from_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        let sql = match table {
            "trades" => "SELECT MIN(event_time_ms) FROM trades WHERE venue = $1 AND symbol = $2 \
                         AND event_time_ms >= $3"
                .to_string(),
            "klines" => "SELECT MIN(open_time_ms) FROM klines WHERE venue = $1 AND symbol = $2 \
                         AND open_time_ms >= $3"
                .to_string(),
            "book_snapshots" => "SELECT MIN(event_time_ms) FROM book_snapshots WHERE venue = $1 \
                                 AND symbol = $2 AND event_time_ms >= $3"
                .to_string(),
            "book_deltas" => format!(
                "SELECT MIN(event_time_ms) FROM {} WHERE venue = $1 AND symbol = $2 \
                 AND event_time_ms >= $3",
                super::book::UPDATES
            ),
            "tickers" => "SELECT MIN(event_time_ms) FROM tickers WHERE venue = $1 AND symbol = $2 \
                          AND event_time_ms >= $3"
                .to_string(),
            "gaps" => "SELECT MIN(start_ms) FROM gaps WHERE venue = $1 AND $2 = $2 \
                       AND start_ms >= $3"
                .to_string(),
            "sessions" => "SELECT MIN(connected_at_us) / 1000 FROM sessions WHERE venue = $1 \
                           AND $2 = $2 AND connected_at_us >= $3 * 1000"
                .to_string(),
            other => return Err(StoreError::Corrupt(format!("{other} is not archived"))),
        };
        let from = from_ms.max(i64::MIN / 1000 + 1);
        on_pool!(self, p => sqlx::query_scalar::<_, Option<i64>>(&sql)
            .bind(venue)
            .bind(symbol)
            .bind(from)
            .fetch_one(p)
            .await)
        .map_err(StoreError::sql("first row to archive"))
    }

    /// Sessions of a venue that began in `[from_ms, to_ms)`, by start.
    pub async fn sessions_between(
        &self,
        venue: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<crate::model::Session>, StoreError> {
        type Row = (String, String, i64, Option<i64>, Option<String>);
        let rows: Vec<Row> = on_pool!(self, p => sqlx::query_as(
            "SELECT symbol, session_id, connected_at_us, disconnected_at_us, close_reason \
             FROM sessions WHERE venue = $1 AND connected_at_us >= $2 * 1000 \
             AND connected_at_us < $3 * 1000 ORDER BY connected_at_us, symbol, session_id")
            .bind(venue)
            .bind(from_ms)
            .bind(to_ms)
            .fetch_all(p)
            .await)
        .map_err(StoreError::sql("select sessions"))?;
        let venue = super::rows::static_venue(venue);
        Ok(rows
            .into_iter()
            .map(
                |(symbol, session_id, connected_at_us, disconnected_at_us, close_reason)| {
                    crate::model::Session {
                        venue,
                        symbol: symbol.into(),
                        session_id,
                        connected_at_us,
                        disconnected_at_us,
                        close_reason,
                    }
                },
            )
            .collect())
    }
}
