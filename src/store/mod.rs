//! Storage: one backend chosen from the URL scheme, each with its own SQL and migrations.
//!
//! Only the writer task writes. Statements are idempotent by the schema's keys, so a replayed
//! batch, a trade seen on both WS and REST, or two recorders on the same symbols store one row.

pub mod archived;
pub mod batch;
pub mod book;
mod book_read;
pub mod error;
pub mod figures;
pub mod ledger;
pub mod partitions;
pub mod postgres;
pub mod queue;
pub mod read;
pub mod rows;
pub mod spool;
pub mod sqlite;
pub mod writer;

pub use batch::Batch;
pub(crate) use error::Checked;
pub use error::{ErrorClass, StoreError, classify};
use rows::insert_rejected;
pub use rows::{
    DeltaRange, Range, Rejected, apply_delta, event_json, levels_from_json, levels_to_json,
};

use crate::model::{BookSnapshot, Kline, Trade};

/// Runs `$body` with `$pool` bound to whichever pool the store has.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            Store::Sqlite(s) => {
                let $pool = s.pool();
                $body
            }
            Store::Postgres(s) => {
                let $pool = s.pool();
                $body
            }
        }
    };
}
pub(crate) use on_pool;

pub enum Store {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

impl Store {
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Store::Sqlite(sqlite::SqliteStore::connect(url).await?))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Store::Postgres(postgres::PgStore::connect(url).await?))
        } else {
            Err(StoreError::Url(crate::config::redact_url(url)))
        }
    }

    /// An existing database for reading (SQLite read-only, never created).
    pub async fn open_read(url: &str) -> Result<Store, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Store::Sqlite(sqlite::SqliteStore::open_read(url).await?))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Store::Postgres(postgres::PgStore::connect(url).await?))
        } else {
            Err(StoreError::Url(crate::config::redact_url(url)))
        }
    }

    /// Opens one connection and closes it: `Ok` when the database answers, else what to fix
    /// ([`StoreError::Open`] for PostgreSQL).
    pub async fn probe(&self, within: std::time::Duration) -> Result<(), StoreError> {
        match self {
            Store::Postgres(p) => p.probe(within).await,
            Store::Sqlite(s) => s.probe(within).await,
        }
    }

    /// Like [`Store::connect`], but nothing is opened until first use: only the URL can be
    /// wrong here.
    pub fn connect_lazy(url: &str) -> Result<Store, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Store::Sqlite(sqlite::SqliteStore::connect_lazy(url)?))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Store::Postgres(postgres::PgStore::connect_lazy(url)?))
        } else {
            Err(StoreError::Url(crate::config::redact_url(url)))
        }
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.migrate().await,
            Store::Postgres(s) => s.migrate().await,
        }
    }

    /// Writes a batch in one transaction. Returns the trade conflicts it found (keys stored,
    /// or repeated in the batch, with other content), kept in `rejected_rows` by the same
    /// transaction.
    pub async fn write(&self, batch: &Batch) -> Result<Vec<Rejected>, StoreError> {
        match self {
            Store::Sqlite(s) => s.write(batch).await,
            Store::Postgres(s) => s.write(batch).await,
        }
    }

    pub async fn table_counts(&self) -> Result<Vec<(&'static str, i64)>, StoreError> {
        let mut out = Vec::new();
        for t in crate::model::Table::ALL.map(|t| t.as_str()) {
            let sql = format!("SELECT COUNT(*) FROM {t}");
            let n: i64 = match self {
                Store::Sqlite(s) => sqlx::query_scalar(&sql).fetch_one(s.pool()).await,
                Store::Postgres(s) => sqlx::query_scalar(&sql).fetch_one(s.pool()).await,
            }
            .map_err(StoreError::sql("count rows"))?;
            out.push((t, n));
        }
        Ok(out)
    }

    /// All trades of a symbol, by trade id, with exact values.
    pub async fn load_trades(&self, venue: &str, symbol: &str) -> Result<Vec<Trade>, StoreError> {
        match self {
            Store::Sqlite(s) => s.load_trades(venue, symbol).await,
            Store::Postgres(s) => s.load_trades(venue, symbol).await,
        }
    }

    /// A page of a symbol's trades by exchange time (then id).
    pub async fn trades_page(
        &self,
        venue: &str,
        symbol: &str,
        range: &Range,
    ) -> Result<Vec<Trade>, StoreError> {
        match self {
            Store::Sqlite(s) => s.trades_page(venue, symbol, range).await,
            Store::Postgres(s) => s.trades_page(venue, symbol, range).await,
        }
    }

    /// A page of bars by open time.
    pub async fn klines_page(
        &self,
        venue: &str,
        symbol: &str,
        interval: &str,
        range: &Range,
    ) -> Result<Vec<Kline>, StoreError> {
        match self {
            Store::Sqlite(s) => s.klines_page(venue, symbol, interval, range).await,
            Store::Postgres(s) => s.klines_page(venue, symbol, interval, range).await,
        }
    }

    /// All bars of a symbol and interval, by open time.
    pub async fn load_klines(
        &self,
        venue: &str,
        symbol: &str,
        interval: &str,
    ) -> Result<Vec<Kline>, StoreError> {
        match self {
            Store::Sqlite(s) => s.load_klines(venue, symbol, interval).await,
            Store::Postgres(s) => s.load_klines(venue, symbol, interval).await,
        }
    }

    /// Up to `limit` tickers received after `after_us` with exchange time in `window`.
    pub async fn tickers_page(
        &self,
        venue: &str,
        symbol: &str,
        after_us: i64,
        window: (i64, i64),
        limit: i64,
    ) -> Result<Vec<crate::model::Ticker>, StoreError> {
        match self {
            Store::Sqlite(s) => s.tickers_page(venue, symbol, after_us, window, limit).await,
            Store::Postgres(s) => s.tickers_page(venue, symbol, after_us, window, limit).await,
        }
    }

    /// The book at the end of the recording: the last snapshot with every later delta applied.
    pub async fn load_latest_book(
        &self,
        venue: &str,
        symbol: &str,
        depth_step: i16,
    ) -> Result<Option<BookSnapshot>, StoreError> {
        self.load_book(venue, symbol, depth_step, None).await
    }

    /// Keeps rows that are not stored as market data in `rejected_rows` (one transaction;
    /// a row already kept, e.g. from a replayed spool file, is not added again).
    pub async fn write_rejected(&self, rows: &[Rejected]) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            let mut conn = Checked::acquire(pool).await?;
            let mut tx = sqlx::Connection::begin(conn.conn())
                .await
                .map_err(StoreError::sql("begin"))?;
            insert_rejected!(tx, rows);
            tx.commit().await.map_err(StoreError::sql("commit"))?;
            conn.clean();
            Ok(())
        })
    }

    /// Every row in `rejected_rows`, oldest first (tests and tools).
    pub async fn rejected_rows(&self) -> Result<Vec<Rejected>, StoreError> {
        type Row = (
            String,
            String,
            String,
            String,
            Option<String>,
            String,
            Option<String>,
            i64,
        );
        let sql = "SELECT venue, symbol, kind, reason, error, row_json, stored_json, rejected_at_ms \
                   FROM rejected_rows ORDER BY id";
        let rows: Vec<Row> = on_pool!(self, pool => sqlx::query_as(sql).fetch_all(pool).await)
            .map_err(StoreError::sql("select rejected_rows"))?;
        Ok(rows
            .into_iter()
            .map(
                |(venue, symbol, kind, reason, error, row_json, stored_json, rejected_at_ms)| {
                    Rejected {
                        venue,
                        symbol,
                        kind,
                        reason,
                        error,
                        row_json,
                        stored_json,
                        rejected_at_ms,
                    }
                },
            )
            .collect())
    }

    pub async fn close(&self) {
        match self {
            Store::Sqlite(s) => s.pool().close().await,
            Store::Postgres(s) => s.pool().close().await,
        }
    }
}
