//! Storage: one backend chosen from the URL scheme, each with its own SQL and migrations.
//!
//! Only the writer task writes. Statements are idempotent by the schema's keys, so a replayed
//! batch, a trade seen on both WS and REST, or two recorders on the same symbols store one row.

pub mod batch;
pub mod figures;
pub mod postgres;
pub mod queue;
pub mod read;
pub mod spool;
pub mod sqlite;
pub mod writer;

pub use batch::Batch;

use crate::decimal::Dec;
use crate::model::{BookSnapshot, Event, Kline, Trade};

// Causes are printed in the message and not exposed as `source()`: an error chain printed
// whole (`{:#}`) would repeat each cause once per level.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {op}: {cause}")]
    Sql {
        op: &'static str,
        cause: sqlx::Error,
    },
    #[error("migration failed: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    #[error("unsupported database URL {0:?}: use sqlite:PATH or postgres://...")]
    Url(String),
    #[error("stored value unreadable: {0}")]
    Corrupt(String),
    #[error("cannot {op} {}: {cause}", path.display())]
    Io {
        op: &'static str,
        path: std::path::PathBuf,
        cause: std::io::Error,
    },
    /// The database could not be opened; the message says what to fix.
    #[error("{message}")]
    Open { message: String, class: ErrorClass },
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> StoreError {
        StoreError::Migrate(e)
    }
}

impl StoreError {
    /// Wraps a sqlx error with the operation it interrupted.
    pub fn sql(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
        move |cause| StoreError::Sql { op, cause }
    }

    /// A unique key met a stored row (PostgreSQL `unique_violation`).
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, StoreError::Sql { cause: sqlx::Error::Database(e), .. } if e.is_unique_violation())
    }

    /// What kind of failure this is, which decides what the writer does with the batch.
    pub fn class(&self) -> ErrorClass {
        match self {
            StoreError::Sql { cause, .. } => classify(cause),
            // a migration that could not run because the database is away is no schema fault
            StoreError::Migrate(
                sqlx::migrate::MigrateError::Execute(e)
                | sqlx::migrate::MigrateError::ExecuteMigration(e, _),
            ) => classify(e),
            StoreError::Migrate(_) => ErrorClass::Schema,
            StoreError::Url(_) => ErrorClass::Permission,
            StoreError::Corrupt(_) => ErrorClass::Data,
            StoreError::Io { cause, .. } => match cause.kind() {
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
                    ErrorClass::Permission
                }
                _ => ErrorClass::Unavailable,
            },
            StoreError::Open { class, .. } => *class,
        }
    }
}

/// Database failures by what can be done about them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorClass {
    /// Not reachable, connection broken, disk full, out of resources: spool and retry.
    Unavailable,
    /// No answer in time, locked, deadlock: spool and retry.
    Timeout,
    /// The database refused some row (constraint, encoding, range): split the batch, store
    /// every good row, quarantine the bad ones.
    Data,
    /// Authentication or privileges: spool and retry until the operator fixes it.
    Permission,
    /// A table or column is missing or different: spool and retry until fixed.
    Schema,
}

impl ErrorClass {
    pub const ALL: [ErrorClass; 5] = [
        ErrorClass::Unavailable,
        ErrorClass::Timeout,
        ErrorClass::Data,
        ErrorClass::Permission,
        ErrorClass::Schema,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Unavailable => "unavailable",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Data => "data",
            ErrorClass::Permission => "permission",
            ErrorClass::Schema => "schema",
        }
    }
}

/// Classifies by SQLSTATE (PostgreSQL) or result code (SQLite). Anything unknown counts as
/// unavailable: retrying is safe, while quarantining a good row is not.
pub fn classify(e: &sqlx::Error) -> ErrorClass {
    use sqlx::Error as E;
    match e {
        E::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            if db
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .is_some()
            {
                pg_class(&code)
            } else {
                let primary = code.parse::<i64>().map(|c| c & 0xff).unwrap_or(-1);
                sqlite_class(primary, db.message())
            }
        }
        E::Encode(_) | E::TypeNotFound { .. } => ErrorClass::Data,
        E::ColumnNotFound(_) | E::ColumnIndexOutOfBounds { .. } => ErrorClass::Schema,
        E::Configuration(_) | E::Tls(_) => ErrorClass::Permission,
        // PoolTimedOut included: no connection could be opened in time (refused, unreachable)
        _ => ErrorClass::Unavailable,
    }
}

fn pg_class(sqlstate: &str) -> ErrorClass {
    match sqlstate.get(..2).unwrap_or("") {
        // data exception, integrity constraint, program limit (e.g. index row too large)
        "22" | "23" | "54" => ErrorClass::Data,
        // invalid authorization; invalid catalog name (no such database)
        "28" | "3D" => ErrorClass::Permission,
        "42" if sqlstate == "42501" => ErrorClass::Permission,
        "42" | "3F" => ErrorClass::Schema,
        // query canceled (statement_timeout), transaction rollback (deadlock, serialization)
        "57" if sqlstate == "57014" => ErrorClass::Timeout,
        "40" | "55" => ErrorClass::Timeout,
        _ => ErrorClass::Unavailable,
    }
}

fn sqlite_class(primary: i64, message: &str) -> ErrorClass {
    match primary {
        18 | 19 | 20 | 25 => ErrorClass::Data, // TOOBIG, CONSTRAINT, MISMATCH, RANGE
        5 | 6 => ErrorClass::Timeout,          // BUSY, LOCKED
        3 | 8 | 23 => ErrorClass::Permission,  // PERM, READONLY, AUTH
        1 if message.contains("no such") || message.contains("has no column") => ErrorClass::Schema,
        _ => ErrorClass::Unavailable, // FULL, IOERR, CANTOPEN, CORRUPT, NOMEM, ...
    }
}

const REJECT_SQL: &str = "INSERT INTO rejected_rows (venue, symbol, kind, reason, error, row_json, \
                          stored_json, row_key, rejected_at_ms) \
                          VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                          ON CONFLICT (reason, row_key) DO NOTHING";

/// Inserts `Rejected` rows in an open transaction of either backend.
macro_rules! insert_rejected {
    ($tx:expr, $rows:expr) => {
        for r in $rows {
            sqlx::query($crate::store::REJECT_SQL)
                .bind(&r.venue)
                .bind(&r.symbol)
                .bind(&r.kind)
                .bind(&r.reason)
                .bind(r.error.as_deref())
                .bind(&r.row_json)
                .bind(r.stored_json.as_deref())
                .bind(r.row_key())
                .bind(r.rejected_at_ms)
                .execute(&mut *$tx)
                .await
                .map_err($crate::store::StoreError::sql("insert rejected_rows"))?;
        }
    };
}
pub(crate) use insert_rejected;

/// A row the database would not store as market data, kept with the reason (the
/// `rejected_rows` table, or the quarantine file when the database refuses even that).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Rejected {
    pub venue: String,
    pub symbol: String,
    /// The table the row was meant for.
    pub kind: String,
    /// `data_error` or `conflict`.
    pub reason: String,
    pub error: Option<String>,
    pub row_json: String,
    pub stored_json: Option<String>,
    pub rejected_at_ms: i64,
}

impl Rejected {
    /// A row the database refused, with the database's message.
    pub fn data_error(ev: &Event, error: &str) -> Rejected {
        let (venue, symbol) = ev.venue_symbol();
        Rejected {
            venue: venue.to_string(),
            symbol: crate::model::safe_text(symbol, crate::model::MAX_TEXT_BYTES).into_owned(),
            kind: ev.table().as_str().to_string(),
            reason: "data_error".into(),
            error: Some(crate::model::safe_text(error, 2048).into_owned()),
            row_json: event_json(ev),
            stored_json: None,
            rejected_at_ms: crate::model::now_ms(),
        }
    }

    /// A trade whose key is stored with other content: both versions kept.
    pub fn conflict(new: &Trade, stored: &Trade) -> Rejected {
        let mut what = Vec::new();
        if new.side != stored.side {
            what.push(format!(
                "side {} -> {}",
                stored.side.as_str(),
                new.side.as_str()
            ));
        }
        if new.price != stored.price {
            what.push(format!(
                "price {} -> {}",
                stored.price.as_str(),
                new.price.as_str()
            ));
        }
        if new.qty != stored.qty {
            what.push(format!(
                "qty {} -> {}",
                stored.qty.as_str(),
                new.qty.as_str()
            ));
        }
        if new.event_time_ms != stored.event_time_ms {
            what.push(format!(
                "event_time_ms {} -> {}",
                stored.event_time_ms, new.event_time_ms
            ));
        }
        Rejected {
            venue: new.venue.to_string(),
            symbol: new.symbol.to_string(),
            kind: "trades".into(),
            reason: "conflict".into(),
            error: Some(format!(
                "trade id {} is stored with other content: {}",
                new.trade_id,
                what.join(", ")
            )),
            row_json: event_json(&Event::Trade(new.clone())),
            stored_json: Some(event_json(&Event::Trade(stored.clone()))),
            rejected_at_ms: crate::model::now_ms(),
        }
    }

    /// Identifies the row across replays: FNV-1a 64 over its JSON, and the JSON's length.
    pub fn row_key(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in self.row_json.as_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("{h:016x}-{}", self.row_json.len())
    }
}

/// An event as JSON text that any database takes: NUL is escaped by serde_json (`\u0000`),
/// never raw.
pub fn event_json(ev: &Event) -> String {
    serde_json::to_string(ev)
        .unwrap_or_else(|e| format!("{{\"unserializable\":{:?}}}", e.to_string()))
}

/// Where a page of book changes starts: one depth step, after (receive time, seq), with
/// exchange time in `[from_ms, to_ms)`.
#[derive(Debug, Clone, Copy)]
pub struct DeltaRange {
    pub depth_step: i16,
    pub after: (i64, i64),
    pub from_ms: i64,
    pub to_ms: i64,
    pub limit: i64,
}

pub(crate) fn parse_book_side(s: &str) -> Result<crate::model::BookSide, StoreError> {
    match s {
        "bid" => Ok(crate::model::BookSide::Bid),
        "ask" => Ok(crate::model::BookSide::Ask),
        other => Err(StoreError::Corrupt(format!("book side {other:?}"))),
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

    /// A page of one book stream's changes (see [`DeltaRange`]).
    pub async fn deltas_page(
        &self,
        venue: &str,
        symbol: &str,
        range: &DeltaRange,
    ) -> Result<Vec<crate::model::BookDelta>, StoreError> {
        match self {
            Store::Sqlite(s) => s.deltas_page(venue, symbol, range).await,
            Store::Postgres(s) => s.deltas_page(venue, symbol, range).await,
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

    /// Keeps rows that are not stored as market data in `rejected_rows` (one transaction;
    /// a row already kept, e.g. from a replayed spool file, is not added again).
    pub async fn write_rejected(&self, rows: &[Rejected]) -> Result<(), StoreError> {
        read::on_pool!(self, pool => {
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
        let rows: Vec<Row> =
            read::on_pool!(self, pool => sqlx::query_as(sql).fetch_all(pool).await)
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

/// A pooled connection that goes back to the pool only when the work on it finished cleanly:
/// after an error, or a write abandoned at a timeout, its state is unknown (a transaction
/// the database may have rolled back by itself, a half-read reply), so it is closed and the
/// pool opens a fresh one.
pub(crate) struct Checked<DB: sqlx::Database> {
    conn: sqlx::pool::PoolConnection<DB>,
    clean: bool,
}

impl<DB: sqlx::Database> Checked<DB> {
    pub async fn acquire(pool: &sqlx::Pool<DB>) -> Result<Self, StoreError> {
        let conn = pool
            .acquire()
            .await
            .map_err(StoreError::sql("acquire a connection"))?;
        Ok(Checked { conn, clean: false })
    }

    /// The work finished (committed or cleanly rolled back): the connection may be reused.
    pub fn clean(&mut self) {
        self.clean = true;
    }

    pub fn conn(&mut self) -> &mut DB::Connection {
        &mut self.conn
    }
}

impl<DB: sqlx::Database> Drop for Checked<DB> {
    fn drop(&mut self) {
        if !self.clean {
            self.conn.close_on_drop();
        }
    }
}
