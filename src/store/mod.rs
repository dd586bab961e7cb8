//! Storage: one backend chosen from the URL scheme, each with its own SQL and migrations.
//!
//! Only the writer task writes. Statements are idempotent by the schema's keys, so a replayed
//! batch, a trade seen on both WS and REST, or two recorders on the same symbols store one row.

pub mod batch;
pub mod postgres;
pub mod read;
pub mod spool;
pub mod sqlite;
pub mod writer;

pub use batch::Batch;

use crate::decimal::Dec;
use crate::model::{BookSnapshot, Kline, Trade};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {op}: {source}")]
    Sql {
        op: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL {0:?}: use sqlite:PATH or postgres://...")]
    Url(String),
    #[error("stored value unreadable: {0}")]
    Corrupt(String),
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// Wraps a sqlx error with the operation it interrupted.
    pub fn sql(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
        move |source| StoreError::Sql { op, source }
    }
}

/// A page of rows by time: `from_ms <= t < to_ms`, strictly after the keyset position `after`
/// (time, id; for bars only the time counts), at most `limit` rows.
#[derive(Debug, Clone, Copy)]
pub struct Range {
    pub from_ms: i64,
    pub to_ms: i64,
    pub after: (i64, i64),
    pub limit: i64,
}

impl Range {
    /// Where an index scan starts: the later of the range start and the keyset position (a
    /// separate `(time, id) > (..)` filter would not seek, and every page would rescan).
    pub fn lower(&self) -> i64 {
        self.from_ms.max(self.after.0)
    }

    pub const ALL: Range = Range {
        from_ms: i64::MIN,
        to_ms: i64::MAX,
        after: (i64::MIN, i64::MIN),
        limit: i64::MAX,
    };
}

pub enum Store {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

/// Row counts per table, in schema order.
pub const TABLES: [&str; 8] = [
    "markets",
    "trades",
    "klines",
    "book_snapshots",
    "book_deltas",
    "tickers",
    "sessions",
    "gaps",
];

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

    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.migrate().await,
            Store::Postgres(s) => s.migrate().await,
        }
    }

    /// Writes a batch in one transaction.
    pub async fn write(&self, batch: &Batch) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.write(batch).await,
            Store::Postgres(s) => s.write(batch).await,
        }
    }

    pub async fn table_counts(&self) -> Result<Vec<(&'static str, i64)>, StoreError> {
        let mut out = Vec::new();
        for t in TABLES {
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

    /// The book at the end of the recording: the last snapshot with every later delta applied.
    pub async fn load_latest_book(
        &self,
        venue: &str,
        symbol: &str,
        depth_step: i16,
    ) -> Result<Option<BookSnapshot>, StoreError> {
        self.load_book(venue, symbol, depth_step, None).await
    }

    /// The order book as it stood at exchange time `at_ms` (None: the newest): the last full
    /// snapshot at or before it with the deltas after it applied. `event_time_ms` and
    /// `recv_time_us` of the result are those of the last row applied.
    pub async fn load_book(
        &self,
        venue: &str,
        symbol: &str,
        depth_step: i16,
        at_ms: Option<i64>,
    ) -> Result<Option<BookSnapshot>, StoreError> {
        match self {
            Store::Sqlite(s) => s.load_book(venue, symbol, depth_step, at_ms).await,
            Store::Postgres(s) => s.load_book(venue, symbol, depth_step, at_ms).await,
        }
    }

    pub async fn close(&self) {
        match self {
            Store::Sqlite(s) => s.pool().close().await,
            Store::Postgres(s) => s.pool().close().await,
        }
    }
}

/// `[["price","qty"],...]` with exact strings.
pub fn levels_to_json(levels: &[(Dec, Dec)]) -> String {
    let v: Vec<[&str; 2]> = levels
        .iter()
        .map(|(p, q)| [p.as_str(), q.as_str()])
        .collect();
    serde_json::to_string(&v).unwrap_or_else(|_| "[]".into())
}

pub fn levels_from_json(text: &str) -> Result<Vec<(Dec, Dec)>, StoreError> {
    let v: Vec<[String; 2]> =
        serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("book levels: {e}")))?;
    v.into_iter()
        .map(|[p, q]| {
            Ok((
                Dec::parse(&p).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                Dec::parse(&q).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            ))
        })
        .collect()
}

/// Applies a level change: qty zero removes the level; levels stay best first.
pub fn apply_delta(book: &mut BookSnapshot, side: crate::model::BookSide, price: Dec, qty: Dec) {
    use crate::model::BookSide;
    let levels = match side {
        BookSide::Bid => &mut book.bids,
        BookSide::Ask => &mut book.asks,
    };
    let pos = levels.iter().position(|(p, _)| *p == price);
    match (pos, qty.is_zero()) {
        (Some(i), true) => {
            levels.remove(i);
        }
        (Some(i), false) => levels[i].1 = qty,
        (None, true) => {}
        (None, false) => {
            let at = levels
                .iter()
                .position(|(p, _)| match side {
                    BookSide::Bid => *p < price,
                    BookSide::Ask => *p > price,
                })
                .unwrap_or(levels.len());
            levels.insert(at, (price, qty));
        }
    }
}
