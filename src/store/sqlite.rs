//! SQLite backend (the embedded default): WAL, one transaction per batch, multi-row VALUES.
//!
//! Exact decimals in SQLite: a NUMERIC cell holds an INTEGER when the value is integral and
//! fits, else the nearest REAL, so `sum(qty)`, `price > x` and `ORDER BY price` work as numbers.
//! When that REAL does not spell back to the exchange's digits (more than ~15-17 significant
//! digits), the row's `exact` column keeps the digits: `{"quote_qty":"21340.08795040000000001"}`.
//! Readers take `exact` first, then the cell.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::query_builder::Separated;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Decode, QueryBuilder, Row, Sqlite, TypeInfo, ValueRef};

use super::error::{Checked, ErrorClass, StoreError};
use super::rows::{
    Range, Rejected, insert_rejected, levels_to_json, parse_book_side, parse_side, parse_source,
    req, static_venue,
};
use super::{Batch, book};
use crate::decimal::{Dec, SqliteNumber};
use crate::model::{BookDelta, BookSnapshot, Gap, Kline, Market, Session, Ticker, Trade};

/// SQLite's default bound-parameter limit (SQLITE_MAX_VARIABLE_NUMBER since 3.32).
const MAX_PARAMS: usize = 32766;
/// Rows in one multi-row statement at most.
const ROWS_PER_STATEMENT: usize = 256;

/// `rows` as statements of a few fixed sizes: as many of the largest as fit, the rest in
/// descending powers of two. A statement is prepared once per connection and text (sqlx
/// caches them); one per distinct row count would prepare nearly every batch anew and keep
/// hundreds of large statements cached per connection.
fn shaped<T>(rows: &[T], columns: usize) -> Vec<&[T]> {
    let largest = ROWS_PER_STATEMENT.min(MAX_PARAMS / columns).max(1);
    let largest = 1 << largest.ilog2();
    let mut out = Vec::new();
    let mut rest = rows;
    let mut size = largest;
    while !rest.is_empty() {
        while size > rest.len() {
            size /= 2;
        }
        let (head, tail) = rest.split_at(size);
        out.push(head);
        rest = tail;
    }
    out
}

pub struct SqliteStore {
    pool: SqlitePool,
    /// The database file (None: in memory).
    path: Option<std::path::PathBuf>,
    /// Stops the background checkpointer when the store goes.
    _checkpointer: Option<AbortOnDrop>,
    pub(crate) late: super::ledger::LateCell,
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How often the background checkpointer copies the WAL into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);
/// WAL frames (pages) past which the checkpointer also restarts the log, waiting for the
/// writer between two transactions: bounds the WAL when writes never pause (64 MiB).
const WAL_RESTART_FRAMES: i64 = 16_384;
/// SQLite's own checkpoint on commit, only a backstop behind the checkpointer (128 MiB).
const WAL_AUTOCHECKPOINT_PAGES: &str = "32768";

/// Checkpoints in the background, so the writer's commits append to the WAL and never wait
/// for the copy into the database file and its fsync (SQLite's automatic checkpoint runs in
/// the committing connection, once the WAL passes its threshold: under load nearly every
/// commit). Exits when the pool closes.
fn spawn_checkpointer(pool: &SqlitePool) -> Option<AbortOnDrop> {
    let rt = tokio::runtime::Handle::try_current().ok()?;
    let pool = pool.clone();
    let task = rt.spawn(async move {
        // the first checkpoint one period in: none while start-up may still refuse and
        // remove a file it just created
        let start = tokio::time::Instant::now() + CHECKPOINT_EVERY;
        let mut tick = tokio::time::interval_at(start, CHECKPOINT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut logged = false;
        loop {
            tick.tick().await;
            if pool.is_closed() {
                return;
            }
            match checkpoint(&pool).await {
                Ok(()) => logged = false,
                Err(e) if pool.is_closed() => {
                    tracing::debug!(error = %e, "checkpointer stops: pool closed");
                    return;
                }
                // the writer reports database trouble; said once per episode here
                Err(e) if !logged => {
                    logged = true;
                    tracing::debug!(error = %e, "sqlite checkpoint failed");
                }
                Err(_) => {}
            }
        }
    });
    Some(AbortOnDrop(task.abort_handle()))
}

async fn checkpoint(pool: &SqlitePool) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let (_busy, log, _done): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
        .fetch_one(&mut *conn)
        .await?;
    if log > WAL_RESTART_FRAMES {
        sqlx::query("PRAGMA wal_checkpoint(RESTART)")
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// Makes `path` ready for SQLite: its directory created (0750) when missing (its parent
/// there), the directory
/// writable (SQLite keeps its -wal and -shm files beside the database), and the file created
/// 0600 ahead of SQLite, which gives the -wal and -shm files the database file's mode (market
/// data is not world-readable under a permissive umask).
fn prepare(path: &std::path::Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let io = |op: &'static str, path: &std::path::Path| {
        let path = path.to_path_buf();
        move |cause| StoreError::Io { op, path, cause }
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    if !dir.exists() {
        // the directory it is to hold, yes; a deeper path missing is more likely a filesystem
        // not mounted yet, whose mount point must not be filled on the root filesystem
        if !dir
            .parent()
            .is_none_or(|p| p.as_os_str().is_empty() || p.exists())
        {
            return Err(StoreError::Io {
                op: "find the directory for the SQLite database (not created: its parent is missing too, a filesystem not mounted yet?)",
                path: dir.to_path_buf(),
                cause: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        std::fs::DirBuilder::new()
            .mode(0o750)
            .create(dir)
            .map_err(io("create the directory for the SQLite database", dir))?;
        tracing::info!(dir = %dir.display(), "created the directory for the SQLite database");
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let probe = dir.join(format!(".{name}.mdrec-write-check"));
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&probe)
        .map_err(io("write in the SQLite database's directory", dir))?;
    let _ = std::fs::remove_file(&probe);
    let r = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map(|_| ())
            .map_err(io("open for writing the SQLite database", path)),
        Err(e) => Err(io("create the SQLite database file", path)(e)),
    }
}

impl SqliteStore {
    pub async fn connect(url: &str) -> Result<SqliteStore, StoreError> {
        let (opts, path, created) = Self::options(url)?;
        created?;
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .map_err(StoreError::sql("open sqlite database"))?;
        let _checkpointer = spawn_checkpointer(&pool);
        Ok(SqliteStore {
            pool,
            path,
            _checkpointer,
            late: Default::default(),
        })
    }

    /// An existing database opened read-only (the reading commands: nothing is created, and
    /// a file the daemon owns can be read by whoever may read it).
    pub async fn open_read(url: &str) -> Result<SqliteStore, StoreError> {
        let opts =
            SqliteConnectOptions::from_str(url).map_err(StoreError::sql("parse sqlite url"))?;
        let path = opts.get_filename().to_path_buf();
        if !path.exists() {
            return Err(StoreError::Open {
                message: format!("no SQLite database at {}", path.display()),
                class: ErrorClass::Permission,
            });
        }
        let opts = opts
            .read_only(true)
            .create_if_missing(false)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(opts)
            .await
            .map_err(StoreError::sql("open sqlite database"))?;
        Ok(SqliteStore {
            pool,
            path: None,
            _checkpointer: None,
            late: Default::default(),
        })
    }

    /// A pool that opens the file on first use (the recorder starts while it cannot be
    /// opened yet, e.g. its directory is not mounted).
    pub fn connect_lazy(url: &str) -> Result<SqliteStore, StoreError> {
        let (opts, path, created) = Self::options(url)?;
        match created {
            // only the operator can fix permissions: no use recording into the spool
            Err(e) if e.class() == ErrorClass::Permission => return Err(e),
            Err(e) => tracing::debug!(error = %e, "sqlite file not created yet"),
            Ok(()) => {}
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_lazy_with(opts);
        let _checkpointer = spawn_checkpointer(&pool);
        Ok(SqliteStore {
            pool,
            path,
            _checkpointer,
            late: Default::default(),
        })
    }

    /// Connect options, and the outcome of preparing the file ([`prepare`]).
    #[allow(clippy::type_complexity)]
    fn options(
        url: &str,
    ) -> Result<
        (
            SqliteConnectOptions,
            Option<std::path::PathBuf>,
            Result<(), StoreError>,
        ),
        StoreError,
    > {
        let opts =
            SqliteConnectOptions::from_str(url).map_err(StoreError::sql("parse sqlite url"))?;
        let path = opts.get_filename().to_path_buf();
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        // a read-only open creates nothing
        let read_only = url.contains("mode=ro");
        let created = if in_memory || read_only {
            Ok(())
        } else {
            prepare(&path)
        };
        let path = (!in_memory && !read_only).then_some(path);
        let opts = opts
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            // a batch's pages stay in the cache instead of spilling to the WAL mid-transaction
            // (the default is 2 MiB); bounded: 32 MiB a connection at most
            .pragma("cache_size", "-32768")
            // the statement journals of multi-row upserts in memory, not in temp files
            .pragma("temp_store", "memory")
            // checkpoints are the background checkpointer's (above); after it restarts the
            // log, the WAL file is cut back to 64 MiB
            .pragma("wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)
            .pragma("journal_size_limit", "67108864");
        Ok((opts, path, created))
    }

    /// Opens one connection: what stands in the way of the file said as what to fix.
    pub async fn probe(&self, within: Duration) -> Result<(), StoreError> {
        if let Some(path) = &self.path {
            prepare(path)?;
        }
        match tokio::time::timeout(within, self.pool.acquire()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(StoreError::sql("open sqlite database")(e)),
            Err(_) => Err(StoreError::Open {
                message: format!(
                    "the SQLite database did not open within {} s",
                    within.as_secs()
                ),
                class: ErrorClass::Timeout,
            }),
        }
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        self.pack_unpacked_deltas().await
    }

    /// The per-level book changes an older version stored (migration 0007 renamed their
    /// table): packed into `book_updates` a chunk at a time, each chunk one transaction that
    /// also deletes what it packed (a start killed midway goes on where it stopped), then the
    /// empty table is dropped. Read here, not in SQL: a REAL's exact digits need the
    /// recorder's decoding.
    async fn pack_unpacked_deltas(&self) -> Result<(), StoreError> {
        let e = StoreError::sql;
        let old: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'book_deltas_unpacked'",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(e("look for book_deltas_unpacked"))?;
        if old.is_none() {
            return Ok(());
        }
        let mut packed_rows = 0usize;
        loop {
            let mut conn = Checked::acquire(&self.pool).await?;
            let mut tx = sqlx::Connection::begin(conn.conn())
                .await
                .map_err(e("begin"))?;
            let rows = sqlx::query(
                "SELECT rowid, venue, symbol, depth_step, recv_time_us, seq, event_time_ms, side, \
                 price, qty, exact, update_id, prev_update_id FROM book_deltas_unpacked \
                 ORDER BY rowid LIMIT 20000",
            )
            .fetch_all(&mut *tx)
            .await
            .map_err(e("select book_deltas_unpacked"))?;
            let Some(last) = rows.last() else { break };
            let last: i64 = last.try_get("rowid").map_err(e("read rowid"))?;
            let deltas = rows
                .iter()
                .map(unpacked_delta)
                .collect::<Result<Vec<_>, _>>()?;
            let packed = book::pack(&deltas);
            insert_rows(&mut tx, &book::streams(&packed)).await?;
            insert_rows(&mut tx, &packed).await?;
            sqlx::query("DELETE FROM book_deltas_unpacked WHERE rowid <= ?")
                .bind(last)
                .execute(&mut *tx)
                .await
                .map_err(e("delete book_deltas_unpacked"))?;
            tx.commit().await.map_err(e("commit"))?;
            conn.clean();
            packed_rows += deltas.len();
            tracing::info!(
                level_changes = packed_rows,
                "packing the book changes an older version stored"
            );
        }
        sqlx::query("DROP TABLE book_deltas_unpacked")
            .execute(&self.pool)
            .await
            .map_err(e("drop book_deltas_unpacked"))?;
        Ok(())
    }

    pub async fn write(&self, batch: &Batch) -> Result<Vec<Rejected>, StoreError> {
        let mut conn = Checked::acquire(&self.pool).await?;
        let mut tx = sqlx::Connection::begin(conn.conn())
            .await
            .map_err(StoreError::sql("begin"))?;
        // trades whose key was stored already: the same trade, or a conflict
        let seen_before = insert_rows(&mut tx, &batch.trades).await?;
        let mut conflicts: Vec<Rejected> = batch
            .trade_conflicts
            .iter()
            .map(|(new, kept)| Rejected::conflict(new, kept))
            .collect();
        conflicts.extend(stored_conflicts(&mut tx, seen_before).await?);
        insert_rejected!(tx, &conflicts);
        insert_rows(&mut tx, &batch.klines).await?;
        insert_rows(&mut tx, &batch.snapshots).await?;
        let packed = book::pack(&batch.deltas);
        insert_rows(&mut tx, &book::streams(&packed)).await?;
        insert_rows(&mut tx, &packed).await?;
        insert_rows(&mut tx, &batch.tickers).await?;
        insert_rows(&mut tx, &batch.sessions).await?;
        insert_rows(&mut tx, &batch.gaps).await?;
        insert_rows(&mut tx, &batch.markets).await?;
        super::ledger::insert_late!(tx, self.late.get(), batch);
        tx.commit().await.map_err(StoreError::sql("commit"))?;
        conn.clean();
        Ok(conflicts)
    }

    pub async fn load_trades(&self, venue: &str, symbol: &str) -> Result<Vec<Trade>, StoreError> {
        self.select_trades(venue, symbol, &Range::ALL, "trade_id")
            .await
    }

    /// Trades with `event_time_ms` in the range, after its keyset position, by time then id.
    pub async fn trades_page(
        &self,
        venue: &str,
        symbol: &str,
        range: &Range,
    ) -> Result<Vec<Trade>, StoreError> {
        self.select_trades(venue, symbol, range, "event_time_ms, trade_id")
            .await
    }

    async fn select_trades(
        &self,
        venue: &str,
        symbol: &str,
        range: &Range,
        order: &str,
    ) -> Result<Vec<Trade>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT trade_id, side, price, qty, quote_qty, event_time_ms, recv_time_us, source, exact \
             FROM trades WHERE venue = ? AND symbol = ? AND event_time_ms >= ? AND event_time_ms < ? \
             AND (event_time_ms > ? OR trade_id > ?) ORDER BY {order} LIMIT ?"
        ))
        .bind(venue)
        .bind(symbol)
        .bind(range.lower())
        .bind(range.to_ms)
        .bind(range.after.0)
        .bind(range.after.1)
        .bind(range.limit)
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::sql("select trades"))?;
        let venue = static_venue(venue);
        let sym: Arc<str> = Arc::from(symbol);
        rows.iter().map(|r| trade_row(r, venue, &sym)).collect()
    }

    pub async fn load_klines(
        &self,
        venue: &str,
        symbol: &str,
        interval: &str,
    ) -> Result<Vec<Kline>, StoreError> {
        self.klines_page(venue, symbol, interval, &Range::ALL).await
    }

    /// Bars with `open_time_ms` in the range and after `range.after.0`, by open time.
    pub async fn klines_page(
        &self,
        venue: &str,
        symbol: &str,
        interval: &str,
        range: &Range,
    ) -> Result<Vec<Kline>, StoreError> {
        let rows = sqlx::query(
            "SELECT open_time_ms, open, high, low, close, volume, quote_volume, closed, event_time_ms, \
             recv_time_us, source, exact FROM klines WHERE venue = ? AND symbol = ? AND interval = ? \
             AND open_time_ms >= ? AND open_time_ms < ? AND open_time_ms > ? \
             ORDER BY open_time_ms LIMIT ?",
        )
        .bind(venue)
        .bind(symbol)
        .bind(interval)
        .bind(range.lower())
        .bind(range.to_ms)
        .bind(range.after.0)
        .bind(range.limit)
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::sql("select klines"))?;
        let venue = static_venue(venue);
        let sym: Arc<str> = Arc::from(symbol);
        let iv: Arc<str> = Arc::from(interval);
        let e = StoreError::sql;
        rows.iter()
            .map(|r| {
                let ex = exact_map(r)?;
                Ok(Kline {
                    venue,
                    symbol: sym.clone(),
                    interval: iv.clone(),
                    open_time_ms: r.try_get("open_time_ms").map_err(e("read kline"))?,
                    open: req(get_dec(r, "open", &ex)?, "open")?,
                    high: req(get_dec(r, "high", &ex)?, "high")?,
                    low: req(get_dec(r, "low", &ex)?, "low")?,
                    close: req(get_dec(r, "close", &ex)?, "close")?,
                    volume: req(get_dec(r, "volume", &ex)?, "volume")?,
                    quote_volume: get_dec(r, "quote_volume", &ex)?,
                    closed: r.try_get::<i64, _>("closed").map_err(e("read kline"))? != 0,
                    event_time_ms: r.try_get("event_time_ms").map_err(e("read kline"))?,
                    recv_time_us: r.try_get("recv_time_us").map_err(e("read kline"))?,
                    source: parse_source(r.try_get("source").map_err(e("read kline"))?)?,
                })
            })
            .collect()
    }

    /// Tickers received after `after_us` with exchange time in `[from, to)`, in receive order.
    pub async fn tickers_page(
        &self,
        venue: &str,
        symbol: &str,
        after_us: i64,
        (from, to): (i64, i64),
        limit: i64,
    ) -> Result<Vec<Ticker>, StoreError> {
        let e = StoreError::sql;
        let rows = sqlx::query(
            "SELECT recv_time_us, event_time_ms, open, high, low, close, volume, quote_volume, change, \
             bid, bid_qty, ask, ask_qty, exact FROM tickers WHERE venue = ? AND symbol = ? AND recv_time_us > ? \
             AND event_time_ms >= ? AND event_time_ms < ? ORDER BY recv_time_us LIMIT ?",
        )
        .bind(venue)
        .bind(symbol)
        .bind(after_us)
        .bind(from)
        .bind(to)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(e("select tickers"))?;
        let venue = static_venue(venue);
        let sym: Arc<str> = Arc::from(symbol);
        rows.iter()
            .map(|t| {
                let ex = exact_map(t)?;
                Ok(Ticker {
                    venue,
                    symbol: sym.clone(),
                    event_time_ms: t.try_get("event_time_ms").map_err(e("read ticker"))?,
                    recv_time_us: t.try_get("recv_time_us").map_err(e("read ticker"))?,
                    open: get_dec(t, "open", &ex)?,
                    high: get_dec(t, "high", &ex)?,
                    low: get_dec(t, "low", &ex)?,
                    close: get_dec(t, "close", &ex)?,
                    volume: get_dec(t, "volume", &ex)?,
                    quote_volume: get_dec(t, "quote_volume", &ex)?,
                    change: get_dec(t, "change", &ex)?,
                    bid: get_dec(t, "bid", &ex)?,
                    bid_qty: get_dec(t, "bid_qty", &ex)?,
                    ask: get_dec(t, "ask", &ex)?,
                    ask_qty: get_dec(t, "ask_qty", &ex)?,
                })
            })
            .collect()
    }
}

/// Collects the digits of cells whose REAL is not exact, as a JSON object.
#[derive(Default)]
struct Exact(String);

impl Exact {
    fn add(&mut self, col: &str, d: &Dec) {
        self.0.push(if self.0.is_empty() { '{' } else { ',' });
        // column names and canonical decimals need no JSON escaping
        self.0.push('"');
        self.0.push_str(col);
        self.0.push_str("\":\"");
        self.0.push_str(d.as_str());
        self.0.push('"');
    }

    fn finish(self) -> Option<String> {
        if self.0.is_empty() {
            None
        } else {
            let mut s = self.0;
            s.push('}');
            Some(s)
        }
    }
}

/// The later word on a hole wins (see `Gap::version`); its first detection time is kept.
const GAP_UPSERT: &str = " ON CONFLICT (venue, symbol, stream, start_ms) DO UPDATE SET \
     end_ms = excluded.end_ms, status = excluded.status, \
     detected_at_ms = min(gaps.detected_at_ms, excluded.detected_at_ms), \
     resolved_at_ms = excluded.resolved_at_ms, rows_recovered = excluded.rows_recovered, \
     detail = excluded.detail \
     WHERE COALESCE(excluded.resolved_at_ms, excluded.detected_at_ms) \
         >= COALESCE(gaps.resolved_at_ms, gaps.detected_at_ms)";

/// One bound row of a multi-row statement.
type Binder<'qb, 'a> = Separated<'qb, 'a, Sqlite, &'static str>;

/// A table's multi-row insert, the one shape every table is written in: the statement's
/// head (table and columns), how a row binds, and what a key stored already does.
trait Rows: Sized {
    /// `INSERT INTO table (columns) `
    const INSERT: &'static str;
    /// Bound parameters per row.
    const COLUMNS: usize;
    /// The `ON CONFLICT` clause.
    const ON_CONFLICT: &'static str;
    /// What an error says was being done.
    const DOING: &'static str;
    fn bind<'a>(&'a self, b: &mut Binder<'_, 'a>);
}

/// Writes `rows` in statements of a few fixed sizes; returns the rows of every statement
/// that changed fewer rows than it was sent (some key was stored already).
async fn insert_rows<'a, T: Rows>(
    tx: &mut sqlx::SqliteConnection,
    rows: &'a [T],
) -> Result<Vec<&'a T>, StoreError> {
    let mut seen_before = Vec::new();
    for chunk in shaped(rows, T::COLUMNS) {
        let mut qb = QueryBuilder::<Sqlite>::new(T::INSERT);
        qb.push_values(chunk, |mut b, row| row.bind(&mut b));
        qb.push(T::ON_CONFLICT);
        let changed = qb
            .build()
            .execute(&mut *tx)
            .await
            .map_err(StoreError::sql(T::DOING))?
            .rows_affected();
        if (changed as usize) < chunk.len() {
            seen_before.extend(chunk);
        }
    }
    Ok(seen_before)
}

/// Of trades whose key was stored already, those stored with other content: conflicts,
/// kept with both versions. Read back only when a statement changed fewer rows than it was
/// sent, which keeps the common batch as cheap as a plain insert.
async fn stored_conflicts(
    tx: &mut sqlx::SqliteConnection,
    seen_before: Vec<&Trade>,
) -> Result<Vec<Rejected>, StoreError> {
    let mut conflicts = Vec::new();
    for t in seen_before {
        let r = sqlx::query(
            "SELECT trade_id, side, price, qty, quote_qty, event_time_ms, recv_time_us, source, exact \
             FROM trades WHERE venue = ? AND symbol = ? AND trade_id = ?",
        )
        .bind(t.venue)
        .bind(&*t.symbol)
        .bind(t.trade_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(StoreError::sql("select stored trade"))?;
        if let Some(r) = r {
            let stored = trade_row(&r, t.venue, &t.symbol)?;
            if !super::batch::same_trade(&stored, t) {
                conflicts.push(Rejected::conflict(t, &stored));
            }
        }
    }
    Ok(conflicts)
}

impl Rows for Trade {
    const INSERT: &'static str = "INSERT INTO trades (venue, symbol, trade_id, side, price, qty, \
         quote_qty, event_time_ms, recv_time_us, source, exact) ";
    const COLUMNS: usize = 11;
    // a trade is stored once; a later copy of the same trade only fills the quote amount a
    // REST copy lacked (a copy with other content is a conflict, found by the caller)
    const ON_CONFLICT: &'static str = " ON CONFLICT (venue, symbol, trade_id) DO UPDATE SET quote_qty = excluded.quote_qty, \
         exact = CASE WHEN trades.exact IS NULL THEN excluded.exact \
                      WHEN excluded.exact IS NULL THEN trades.exact \
                      ELSE json_patch(trades.exact, excluded.exact) END \
         WHERE trades.quote_qty IS NULL AND excluded.quote_qty IS NOT NULL \
         AND trades.side = excluded.side AND trades.price = excluded.price \
         AND trades.qty = excluded.qty AND trades.event_time_ms = excluded.event_time_ms";
    const DOING: &'static str = "insert trades";
    fn bind<'a>(&'a self, b: &mut Binder<'_, 'a>) {
        let mut ex = Exact::default();
        b.push_bind(self.venue)
            .push_bind(&*self.symbol)
            .push_bind(self.trade_id)
            .push_bind(self.side.as_str());
        bind_dec(b, &mut ex, "price", Some(&self.price));
        bind_dec(b, &mut ex, "qty", Some(&self.qty));
        bind_dec(b, &mut ex, "quote_qty", self.quote_qty.as_ref());
        b.push_bind(self.event_time_ms)
            .push_bind(self.recv_time_us)
            .push_bind(self.source.as_str())
            .push_bind(ex.finish());
    }
}

impl Rows for Kline {
    const INSERT: &'static str = "INSERT INTO klines (venue, symbol, interval, open_time_ms, open, \
         high, low, close, volume, quote_volume, closed, event_time_ms, recv_time_us, source, exact) ";
    const COLUMNS: usize = 15;
    const ON_CONFLICT: &'static str = " ON CONFLICT (venue, symbol, interval, open_time_ms) DO UPDATE SET \
         open = excluded.open, high = excluded.high, low = excluded.low, close = excluded.close, \
         volume = excluded.volume, closed = excluded.closed, \
         event_time_ms = excluded.event_time_ms, recv_time_us = excluded.recv_time_us, \
         source = excluded.source, \
         quote_volume = CASE WHEN excluded.quote_volume IS NULL AND excluded.volume = klines.volume \
             THEN klines.quote_volume ELSE excluded.quote_volume END, \
         exact = CASE WHEN excluded.quote_volume IS NULL AND excluded.volume = klines.volume \
             AND json_extract(klines.exact, '$.quote_volume') IS NOT NULL \
             THEN json_set(COALESCE(excluded.exact, '{}'), '$.quote_volume', \
                 json_extract(klines.exact, '$.quote_volume')) \
             ELSE excluded.exact END \
         WHERE (excluded.closed, excluded.event_time_ms, excluded.recv_time_us) \
             > (klines.closed, klines.event_time_ms, klines.recv_time_us)";
    const DOING: &'static str = "upsert klines";
    fn bind<'a>(&'a self, b: &mut Binder<'_, 'a>) {
        let mut ex = Exact::default();
        b.push_bind(self.venue)
            .push_bind(&*self.symbol)
            .push_bind(&*self.interval)
            .push_bind(self.open_time_ms);
        bind_dec(b, &mut ex, "open", Some(&self.open));
        bind_dec(b, &mut ex, "high", Some(&self.high));
        bind_dec(b, &mut ex, "low", Some(&self.low));
        bind_dec(b, &mut ex, "close", Some(&self.close));
        bind_dec(b, &mut ex, "volume", Some(&self.volume));
        bind_dec(b, &mut ex, "quote_volume", self.quote_volume.as_ref());
        b.push_bind(self.closed as i64)
            .push_bind(self.event_time_ms)
            .push_bind(self.recv_time_us)
            .push_bind(self.source.as_str())
            .push_bind(ex.finish());
    }
}

impl Rows for BookSnapshot {
    const INSERT: &'static str = "INSERT INTO book_snapshots (venue, symbol, depth_step, \
         recv_time_us, event_time_ms, bids, asks) ";
    const COLUMNS: usize = 7;
    const ON_CONFLICT: &'static str = " ON CONFLICT DO NOTHING";
    const DOING: &'static str = "insert book_snapshots";
    fn bind<'a>(&'a self, b: &mut Binder<'_, 'a>) {
        b.push_bind(self.venue)
            .push_bind(&*self.symbol)
            .push_bind(self.depth_step as i64)
            .push_bind(self.recv_time_us)
            .push_bind(self.event_time_ms)
            .push_bind(levels_to_json(&self.bids))
            .push_bind(levels_to_json(&self.asks));
    }
}

impl Rows for book::StreamRow<'_> {
    const INSERT: &'static str = "INSERT INTO book_streams (venue, symbol, depth_step) ";
    const COLUMNS: usize = 3;
    const ON_CONFLICT: &'static str = " ON CONFLICT DO NOTHING";
    const DOING: &'static str = "insert book_streams";
    fn bind<'a>(&'a self, b: &mut Binder<'_, 'a>) {
        b.push_bind(self.0)
            .push_bind(self.1)
            .push_bind(self.2 as i64);
    }
}

/// Each row's stream number looked up by its key (the streams are inserted first).
impl Rows for book::Packed<'_> {
    const INSERT: &'static str = "INSERT INTO book_updates (stream, recv_time_us, first_seq, \
         event_time_ms, update_id, prev_update_id, levels) SELECT s.id, v.column4, v.column5, \
         v.column6, v.column7, v.column8, v.column9 FROM (";
    const COLUMNS: usize = 9;
    const ON_CONFLICT: &'static str = ") AS v JOIN book_streams s ON s.venue = v.column1 \
         AND s.symbol = v.column2 AND s.depth_step = v.column3 WHERE true ON CONFLICT DO NOTHING";
    const DOING: &'static str = "insert book_updates";
    fn bind<'a>(&'a self, b: &mut Binder<'_, 'a>) {
        b.push_bind(self.venue)
            .push_bind(self.symbol)
            .push_bind(self.depth_step as i64)
            .push_bind(self.recv_time_us)
            .push_bind(self.first_seq as i64)
            .push_bind(self.event_time_ms)
            .push_bind(self.update_id)
            .push_bind(self.prev_update_id)
            .push_bind(&self.levels);
    }
}

impl Rows for Ticker {
    const INSERT: &'static str = "INSERT INTO tickers (venue, symbol, recv_time_us, event_time_ms, \
         open, high, low, close, volume, quote_volume, change, bid, bid_qty, ask, ask_qty, exact) ";
    const COLUMNS: usize = 16;
    const ON_CONFLICT: &'static str = " ON CONFLICT DO NOTHING";
    const DOING: &'static str = "insert tickers";
    fn bind<'a>(&'a self, b: &mut Binder<'_, 'a>) {
        let mut ex = Exact::default();
        b.push_bind(self.venue)
            .push_bind(&*self.symbol)
            .push_bind(self.recv_time_us)
            .push_bind(self.event_time_ms);
        bind_dec(b, &mut ex, "open", self.open.as_ref());
        bind_dec(b, &mut ex, "high", self.high.as_ref());
        bind_dec(b, &mut ex, "low", self.low.as_ref());
        bind_dec(b, &mut ex, "close", self.close.as_ref());
        bind_dec(b, &mut ex, "volume", self.volume.as_ref());
        bind_dec(b, &mut ex, "quote_volume", self.quote_volume.as_ref());
        bind_dec(b, &mut ex, "change", self.change.as_ref());
        bind_dec(b, &mut ex, "bid", self.bid.as_ref());
        bind_dec(b, &mut ex, "bid_qty", self.bid_qty.as_ref());
        bind_dec(b, &mut ex, "ask", self.ask.as_ref());
        bind_dec(b, &mut ex, "ask_qty", self.ask_qty.as_ref());
        b.push_bind(ex.finish());
    }
}

impl Rows for Session {
    const INSERT: &'static str = "INSERT INTO sessions (venue, symbol, session_id, connected_at_us, \
         disconnected_at_us, close_reason) ";
    const COLUMNS: usize = 6;
    const ON_CONFLICT: &'static str = " ON CONFLICT (venue, symbol, session_id) DO UPDATE SET \
         disconnected_at_us = COALESCE(excluded.disconnected_at_us, sessions.disconnected_at_us), \
         close_reason = COALESCE(excluded.close_reason, sessions.close_reason)";
    const DOING: &'static str = "upsert sessions";
    fn bind<'a>(&'a self, b: &mut Binder<'_, 'a>) {
        b.push_bind(self.venue)
            .push_bind(&*self.symbol)
            .push_bind(self.session_id.as_str())
            .push_bind(self.connected_at_us)
            .push_bind(self.disconnected_at_us)
            .push_bind(self.close_reason.as_deref());
    }
}

impl Rows for Gap {
    const INSERT: &'static str = "INSERT INTO gaps (venue, symbol, stream, start_ms, end_ms, status, \
         detected_at_ms, resolved_at_ms, rows_recovered, detail) ";
    const COLUMNS: usize = 10;
    const ON_CONFLICT: &'static str = GAP_UPSERT;
    const DOING: &'static str = "upsert gaps";
    fn bind<'a>(&'a self, b: &mut Binder<'_, 'a>) {
        b.push_bind(self.venue)
            .push_bind(&*self.symbol)
            .push_bind(self.stream.as_str())
            .push_bind(self.start_ms)
            .push_bind(self.end_ms)
            .push_bind(self.status.as_str())
            .push_bind(self.detected_at_ms)
            .push_bind(self.resolved_at_ms)
            .push_bind(self.rows_recovered)
            .push_bind(self.detail.as_deref());
    }
}

impl Rows for Market {
    const INSERT: &'static str = "INSERT INTO markets (venue, symbol, base, quote, price_precision, \
         qty_precision, updated_at_ms) ";
    const COLUMNS: usize = 7;
    const ON_CONFLICT: &'static str = " ON CONFLICT (venue, symbol) DO UPDATE SET base = excluded.base, \
         quote = excluded.quote, price_precision = excluded.price_precision, \
         qty_precision = excluded.qty_precision, updated_at_ms = excluded.updated_at_ms";
    const DOING: &'static str = "upsert markets";
    fn bind<'a>(&'a self, b: &mut Binder<'_, 'a>) {
        b.push_bind(self.venue)
            .push_bind(&*self.symbol)
            .push_bind(self.base.as_deref())
            .push_bind(self.quote.as_deref())
            .push_bind(self.price_precision)
            .push_bind(self.qty_precision)
            .push_bind(self.updated_at_ms);
    }
}

fn bind_dec<'q>(
    b: &mut Separated<'_, 'q, Sqlite, &'static str>,
    ex: &mut Exact,
    col: &str,
    d: Option<&'q Dec>,
) {
    match d.map(|d| (d, d.to_sqlite_number())) {
        None => {
            b.push_bind(None::<f64>);
        }
        Some((_, SqliteNumber::Integer(i))) => {
            b.push_bind(i);
        }
        Some((d, SqliteNumber::Real { value, exact })) => {
            b.push_bind(value);
            if !exact {
                ex.add(col, d);
            }
        }
    }
}

/// A row of the per-level table older versions wrote, with exact decimals.
fn unpacked_delta(d: &SqliteRow) -> Result<BookDelta, StoreError> {
    let e = StoreError::sql;
    let ex = exact_map(d)?;
    let step: i64 = d.try_get("depth_step").map_err(e("read delta"))?;
    Ok(BookDelta {
        venue: static_venue(d.try_get("venue").map_err(e("read delta"))?),
        symbol: Arc::from(d.try_get::<&str, _>("symbol").map_err(e("read delta"))?),
        depth_step: i16::try_from(step)
            .map_err(|_| StoreError::Corrupt(format!("depth_step {step}")))?,
        event_time_ms: d.try_get("event_time_ms").map_err(e("read delta"))?,
        recv_time_us: d.try_get("recv_time_us").map_err(e("read delta"))?,
        seq: d.try_get("seq").map_err(e("read delta"))?,
        side: parse_book_side(d.try_get("side").map_err(e("read delta"))?)?,
        price: req(get_dec(d, "price", &ex)?, "price")?,
        qty: req(get_dec(d, "qty", &ex)?, "qty")?,
        update_id: d.try_get("update_id").map_err(e("read delta"))?,
        prev_update_id: d.try_get("prev_update_id").map_err(e("read delta"))?,
    })
}

/// A `trades` row (columns trade_id, side, price, qty, quote_qty, event_time_ms,
/// recv_time_us, source, exact) with exact decimals.
fn trade_row(r: &SqliteRow, venue: &'static str, sym: &Arc<str>) -> Result<Trade, StoreError> {
    let e = StoreError::sql;
    let ex = exact_map(r)?;
    Ok(Trade {
        venue,
        symbol: sym.clone(),
        trade_id: r.try_get("trade_id").map_err(e("read trade"))?,
        side: parse_side(r.try_get("side").map_err(e("read trade"))?)?,
        price: req(get_dec(r, "price", &ex)?, "price")?,
        qty: req(get_dec(r, "qty", &ex)?, "qty")?,
        quote_qty: get_dec(r, "quote_qty", &ex)?,
        event_time_ms: r.try_get("event_time_ms").map_err(e("read trade"))?,
        recv_time_us: r.try_get("recv_time_us").map_err(e("read trade"))?,
        source: parse_source(r.try_get("source").map_err(e("read trade"))?)?,
    })
}

fn exact_map(r: &SqliteRow) -> Result<Option<HashMap<String, String>>, StoreError> {
    let raw: Option<&str> = r.try_get("exact").map_err(StoreError::sql("read exact"))?;
    raw.map(|t| {
        serde_json::from_str(t).map_err(|e| StoreError::Corrupt(format!("exact column: {e}")))
    })
    .transpose()
}

/// A numeric cell as an exact decimal: the `exact` digits when present, else the cell.
fn get_dec(
    r: &SqliteRow,
    col: &str,
    ex: &Option<HashMap<String, String>>,
) -> Result<Option<Dec>, StoreError> {
    let corrupt = |m: String| StoreError::Corrupt(format!("{col}: {m}"));
    if let Some(digits) = ex.as_ref().and_then(|m| m.get(col)) {
        return Dec::parse(digits)
            .map(Some)
            .map_err(|e| corrupt(e.to_string()));
    }
    let raw = r.try_get_raw(col).map_err(StoreError::sql("read number"))?;
    if raw.is_null() {
        return Ok(None);
    }
    let kind = raw.type_info().name().to_string();
    let text = match kind.as_str() {
        "INTEGER" => <i64 as Decode<Sqlite>>::decode(raw)
            .map_err(|e| corrupt(e.to_string()))?
            .to_string(),
        "REAL" => {
            let f = <f64 as Decode<Sqlite>>::decode(raw).map_err(|e| corrupt(e.to_string()))?;
            return Dec::from_f64_shortest(f)
                .map(Some)
                .ok_or_else(|| corrupt("not finite".into()));
        }
        _ => <String as Decode<Sqlite>>::decode(raw).map_err(|e| corrupt(e.to_string()))?,
    };
    Dec::parse(&text)
        .map(Some)
        .map_err(|e| corrupt(e.to_string()))
}

#[cfg(test)]
mod shape_tests {
    #[test]
    fn batches_become_statements_of_few_sizes() {
        let rows: Vec<u32> = (0..1000).collect();
        let sizes: Vec<usize> = super::shaped(&rows, 11).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [256, 256, 256, 128, 64, 32, 8]);
        let flat: Vec<u32> = super::shaped(&rows, 11).concat();
        assert_eq!(flat, rows, "in order, each row once");
        assert!(super::shaped(&rows[..0], 11).is_empty());
        // wide rows: fewer per statement, still a power of two under the parameter limit
        assert!(super::shaped(&rows, 200).iter().all(|c| c.len() <= 128));
    }
}
