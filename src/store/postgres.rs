//! PostgreSQL backend: one `INSERT ... SELECT FROM UNNEST(arrays)` per table and batch.
//!
//! Decimals travel as their canonical text in `text[]` and are cast to `numeric[]` by the
//! server, so no digit is lost and no precision limit of a client-side decimal type applies.
//! One statement shape per table means one cached prepared statement, whatever the batch size.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row};

use super::error::{Checked, ErrorClass, StoreError, classify};
use super::rows::{
    Range, Rejected, insert_rejected, levels_to_json, parse_side, parse_source, req, static_venue,
};
use super::{Batch, book};
use crate::decimal::Dec;
use crate::model::{BookSnapshot, Gap, Kline, Market, Session, Source, Ticker, Trade};

pub struct PgStore {
    pool: PgPool,
    /// Flushes left that write with upserts only (see [`PgStore::write`]).
    upsert_flushes: AtomicU32,
    pub(crate) late: super::ledger::LateCell,
}

/// Flushes written with upserts only after a plain insert met a stored key.
const UPSERT_AFTER_CONFLICT: u32 = 100;

// Each table's statement with and without its conflict rule (one text each: one prepared
// statement each per connection).
macro_rules! trades_insert {
    () => {
        "INSERT INTO trades (venue, symbol, trade_id, side, price, qty, quote_qty, event_time_ms, \
         recv_time_us, source) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[]::numeric[], \
         $6::text[]::numeric[], $7::text[]::numeric[], $8::bigint[], $9::bigint[], $10::text[])"
    };
}
const TRADES_INSERT: &str = trades_insert!();
/// A trade is stored once; a later copy of the same trade only fills the quote amount a
/// REST copy lacked.
const TRADES_UPSERT: &str = concat!(
    trades_insert!(),
    " ON CONFLICT (venue, symbol, trade_id) DO UPDATE SET quote_qty = excluded.quote_qty \
     WHERE trades.quote_qty IS NULL AND excluded.quote_qty IS NOT NULL \
     AND trades.side = excluded.side AND trades.price = excluded.price \
     AND trades.qty = excluded.qty AND trades.event_time_ms = excluded.event_time_ms"
);
/// New streams only: a conflicting insert would still take a number from the identity's
/// sequence, and one per stream per flush would use up an INTEGER within weeks.
const STREAMS_INSERT: &str = "INSERT INTO book_streams (venue, symbol, depth_step) \
     SELECT k.venue, k.symbol, k.depth_step \
     FROM UNNEST($1::text[], $2::text[], $3::smallint[]) AS k(venue, symbol, depth_step) \
     WHERE NOT EXISTS (SELECT 1 FROM book_streams s WHERE s.venue = k.venue \
     AND s.symbol = k.symbol AND s.depth_step = k.depth_step) ON CONFLICT DO NOTHING";
macro_rules! updates_insert {
    () => {
        "INSERT INTO book_updates (stream, first_seq, recv_time_us, event_time_ms, update_id, \
         prev_update_id, levels) \
         SELECT s.id, u.first_seq, u.recv_time_us, u.event_time_ms, u.update_id, u.prev_update_id, \
         u.levels FROM UNNEST($1::text[], $2::text[], $3::smallint[], $4::int[], $5::bigint[], \
         $6::bigint[], $7::bigint[], $8::bigint[], $9::text[]) AS u(venue, symbol, depth_step, \
         first_seq, recv_time_us, event_time_ms, update_id, prev_update_id, levels) \
         JOIN book_streams s ON s.venue = u.venue AND s.symbol = u.symbol \
         AND s.depth_step = u.depth_step"
    };
}
const UPDATES_INSERT: &str = updates_insert!();
const UPDATES_UPSERT: &str = concat!(updates_insert!(), " ON CONFLICT DO NOTHING");
macro_rules! tickers_insert {
    () => {
        "INSERT INTO tickers (venue, symbol, recv_time_us, event_time_ms, open, high, low, close, volume, \
         quote_volume, change, bid, bid_qty, ask, ask_qty) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::text[]::numeric[], \
         $6::text[]::numeric[], $7::text[]::numeric[], $8::text[]::numeric[], $9::text[]::numeric[], \
         $10::text[]::numeric[], $11::text[]::numeric[], $12::text[]::numeric[], $13::text[]::numeric[], \
         $14::text[]::numeric[], $15::text[]::numeric[])"
    };
}
const TICKERS_INSERT: &str = tickers_insert!();
const TICKERS_UPSERT: &str = concat!(tickers_insert!(), " ON CONFLICT DO NOTHING");

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// Decimals are bound as the batch's own text (cast to numeric by the statement): borrowed,
/// no copy per value.
fn text(d: &Dec) -> &str {
    d.as_str()
}

fn opt_text(d: Option<&Dec>) -> Option<&str> {
    d.map(text)
}

/// A `trades` row with decimals read as text (`price::text AS price`, ...).
fn trade_row(r: &PgRow, venue: &'static str, sym: &Arc<str>) -> Result<Trade, StoreError> {
    let e = StoreError::sql;
    Ok(Trade {
        venue,
        symbol: sym.clone(),
        trade_id: r.try_get("trade_id").map_err(e("read trade"))?,
        side: parse_side(r.try_get("side").map_err(e("read trade"))?)?,
        price: req(dec(r, "price")?, "price")?,
        qty: req(dec(r, "qty")?, "qty")?,
        quote_qty: dec(r, "quote_qty")?,
        event_time_ms: r.try_get("event_time_ms").map_err(e("read trade"))?,
        recv_time_us: r.try_get("recv_time_us").map_err(e("read trade"))?,
        source: parse_source(r.try_get("source").map_err(e("read trade"))?)?,
    })
}

impl PgStore {
    /// Connects, first with one connection of its own, so a server that refuses, a database
    /// that does not exist or a password that is wrong is said in one line at once (a pool
    /// retries until its timeout and then reports only that).
    pub async fn connect(url: &str) -> Result<PgStore, StoreError> {
        let store = PgStore::connect_lazy(url)?;
        store.probe(Duration::from_secs(10)).await?;
        Ok(store)
    }

    /// A pool that connects on first use (the recorder starts while the server is down).
    pub fn connect_lazy(url: &str) -> Result<PgStore, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy(url)
            .map_err(StoreError::sql("parse postgres url"))?;
        Ok(PgStore {
            pool,
            upsert_flushes: AtomicU32::new(0),
            late: Default::default(),
        })
    }

    /// Opens one connection (not from the pool) and closes it: what stands in the way, said
    /// as what to fix ([`StoreError::Open`]).
    pub async fn probe(&self, within: Duration) -> Result<(), StoreError> {
        use sqlx::ConnectOptions;
        let opts = self.pool.connect_options();
        let at = format!("PostgreSQL at {}:{}", opts.get_host(), opts.get_port());
        let open = |message: String, class| StoreError::Open { message, class };
        let conn = match tokio::time::timeout(within, opts.connect()).await {
            Err(_) => {
                return Err(open(
                    format!("{at} did not answer within {} s", within.as_secs()),
                    ErrorClass::Timeout,
                ));
            }
            Ok(r) => r,
        };
        let e = match conn {
            Ok(c) => {
                let _ = sqlx::Connection::close(c).await;
                return Ok(());
            }
            Err(e) => e,
        };
        let class = classify(&e);
        let user = opts.get_username();
        let db = opts.get_database().unwrap_or(user);
        let message = match &e {
            sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                format!("{at} refused the connection: is the server running and listening there?")
            }
            sqlx::Error::Io(io) => format!("cannot reach {at}: {io}"),
            sqlx::Error::Tls(t) => format!("TLS with {at} failed: {t}"),
            sqlx::Error::Database(d) => match d.code().as_deref() {
                Some("3D000") => format!(
                    "{at} has no database \"{db}\": create it (createdb -h {} -p {} -U {user} {db}) \
                     or correct the database URL",
                    opts.get_host(),
                    opts.get_port()
                ),
                Some("28P01") => format!(
                    "{at} refused the password of user \"{user}\": correct it in the database URL"
                ),
                Some(c) if c.starts_with("28") => {
                    format!("{at} refused user \"{user}\": {}", d.message())
                }
                _ => format!("{at}: {}", d.message()),
            },
            other => format!("{at}: {other}"),
        };
        Err(open(message, class))
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// One transaction for the batch. Trades, book deltas and tickers go in as plain inserts
    /// first: a key already stored is rare for them, and `ON CONFLICT` makes the server look
    /// each key up before inserting it (about a third of its time on this row mix). A plain
    /// insert that meets a stored key fails as a whole; the batch is then written again with
    /// the upserts, and so are the next [`UPSERT_AFTER_CONFLICT`] flushes (a replay, or two
    /// recorders on the same symbols, keep meeting keys). Batches holding REST trades
    /// (backfill, overlapping what the socket delivered) take the upsert for trades.
    pub async fn write(&self, batch: &Batch) -> Result<Vec<Rejected>, StoreError> {
        let left = self.upsert_flushes.load(Ordering::Relaxed);
        if left > 0 {
            self.upsert_flushes.store(left - 1, Ordering::Relaxed);
            return self.write_as(batch, false).await;
        }
        match self.write_as(batch, true).await {
            Err(e) if e.is_unique_violation() => {
                tracing::debug!(error = %e, "a plain insert met a stored key: writing the batch with upserts");
                self.upsert_flushes
                    .store(UPSERT_AFTER_CONFLICT, Ordering::Relaxed);
                self.write_as(batch, false).await
            }
            r => r,
        }
    }

    async fn write_as(&self, batch: &Batch, plain: bool) -> Result<Vec<Rejected>, StoreError> {
        let mut conn = Checked::acquire(&self.pool).await?;
        let mut tx = sqlx::Connection::begin(conn.conn())
            .await
            .map_err(StoreError::sql("begin"))?;
        let written = match statements(&mut tx, batch, plain).await {
            Ok(c) => late(&mut tx, self.late.get(), batch).await.map(|_| c),
            Err(e) => Err(e),
        };
        match written {
            Ok(conflicts) => {
                tx.commit().await.map_err(StoreError::sql("commit"))?;
                conn.clean();
                Ok(conflicts)
            }
            Err(e) => {
                // the connection is fine after a refused insert: roll back and keep it
                if e.is_unique_violation() && tx.rollback().await.is_ok() {
                    conn.clean();
                }
                Err(e)
            }
        }
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
        let e = StoreError::sql;
        let rows = sqlx::query(&format!(
            "SELECT trade_id, side, price::text AS price, qty::text AS qty, quote_qty::text AS quote_qty, \
             event_time_ms, recv_time_us, source FROM trades WHERE venue = $1 AND symbol = $2 \
             AND event_time_ms >= $3 AND event_time_ms < $4 AND (event_time_ms > $5 OR trade_id > $6) \
             ORDER BY {order} LIMIT $7"
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
        .map_err(e("select trades"))?;
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
        let e = StoreError::sql;
        let rows = sqlx::query(
            "SELECT open_time_ms, open::text AS open, high::text AS high, low::text AS low, close::text AS close, \
             volume::text AS volume, quote_volume::text AS quote_volume, closed, event_time_ms, recv_time_us, \
             source FROM klines WHERE venue = $1 AND symbol = $2 AND interval = $3 AND open_time_ms >= $4 \
             AND open_time_ms < $5 AND open_time_ms > $6 ORDER BY open_time_ms LIMIT $7",
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
        .map_err(e("select klines"))?;
        let venue = static_venue(venue);
        let sym: Arc<str> = Arc::from(symbol);
        let iv: Arc<str> = Arc::from(interval);
        rows.iter()
            .map(|r| {
                Ok(Kline {
                    venue,
                    symbol: sym.clone(),
                    interval: iv.clone(),
                    open_time_ms: r.try_get("open_time_ms").map_err(e("read kline"))?,
                    open: req(dec(r, "open")?, "open")?,
                    high: req(dec(r, "high")?, "high")?,
                    low: req(dec(r, "low")?, "low")?,
                    close: req(dec(r, "close")?, "close")?,
                    volume: req(dec(r, "volume")?, "volume")?,
                    quote_volume: dec(r, "quote_volume")?,
                    closed: r.try_get("closed").map_err(e("read kline"))?,
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
            "SELECT recv_time_us, event_time_ms, open::text AS open, high::text AS high, low::text AS low, \
             close::text AS close, volume::text AS volume, quote_volume::text AS quote_volume, \
             change::text AS change, bid::text AS bid, bid_qty::text AS bid_qty, ask::text AS ask, \
             ask_qty::text AS ask_qty FROM tickers WHERE venue = $1 AND symbol = $2 AND recv_time_us > $3 \
             AND event_time_ms >= $4 AND event_time_ms < $5 ORDER BY recv_time_us LIMIT $6",
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
                Ok(Ticker {
                    venue,
                    symbol: sym.clone(),
                    event_time_ms: t.try_get("event_time_ms").map_err(e("read ticker"))?,
                    recv_time_us: t.try_get("recv_time_us").map_err(e("read ticker"))?,
                    open: dec(t, "open")?,
                    high: dec(t, "high")?,
                    low: dec(t, "low")?,
                    close: dec(t, "close")?,
                    volume: dec(t, "volume")?,
                    quote_volume: dec(t, "quote_volume")?,
                    change: dec(t, "change")?,
                    bid: dec(t, "bid")?,
                    bid_qty: dec(t, "bid_qty")?,
                    ask: dec(t, "ask")?,
                    ask_qty: dec(t, "ask_qty")?,
                })
            })
            .collect()
    }
}

fn dec(r: &PgRow, col: &str) -> Result<Option<Dec>, StoreError> {
    let t: Option<&str> = r.try_get(col).map_err(StoreError::sql("read number"))?;
    t.map(|t| Dec::parse(t).map_err(|e| StoreError::Corrupt(format!("{col}: {e}"))))
        .transpose()
}

/// The batch's statements inside the caller's transaction; `plain`: see [`PgStore::write`].
async fn statements(
    tx: &mut sqlx::PgConnection,
    batch: &Batch,
    plain: bool,
) -> Result<Vec<Rejected>, StoreError> {
    let mut conflicts: Vec<Rejected> = batch
        .trade_conflicts
        .iter()
        .map(|(new, kept)| Rejected::conflict(new, kept))
        .collect();
    let t = &batch.trades;
    let changed = write_rows(tx, t, plain).await?;
    // fewer rows changed than sent: some key was stored already, as the same trade or as a
    // conflict; the stored versions are read back only then
    if (changed as usize) < t.len() {
        conflicts.extend(stored_conflicts(tx, t).await?);
    }
    insert_rejected!(tx, &conflicts);
    write_rows(tx, &batch.klines, plain).await?;
    write_rows(tx, &batch.snapshots, plain).await?;
    let packed = book::pack(&batch.deltas);
    write_rows(tx, &book::streams(&packed), plain).await?;
    write_rows(tx, &packed, plain).await?;
    write_rows(tx, &batch.tickers, plain).await?;
    write_rows(tx, &batch.sessions, plain).await?;
    write_rows(tx, &batch.gaps, plain).await?;
    write_rows(tx, &batch.markets, plain).await?;
    Ok(conflicts)
}

/// The batch's late periods (see `ledger::LateRule`), in the caller's transaction.
async fn late(
    tx: &mut sqlx::PgConnection,
    rule: super::ledger::LateRule,
    batch: &Batch,
) -> Result<(), StoreError> {
    super::ledger::insert_late!(tx, rule, batch);
    Ok(())
}

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

/// A table's write, the one shape every table is written in: one `INSERT … SELECT FROM
/// UNNEST(arrays)` statement for the whole batch, a column an array.
trait Unnest: Sized {
    /// What an error says was being done.
    const DOING: &'static str;
    /// The statement; `plain`: without `ON CONFLICT` where the table has such a variant.
    fn sql(plain: bool, rows: &[Self]) -> &'static str;
    /// The columns bound as arrays, in the statement's order.
    fn bind<'q>(q: PgQuery<'q>, rows: &'q [Self]) -> PgQuery<'q>;
}

/// Writes `rows` in one statement; returns the rows it changed.
async fn write_rows<T: Unnest>(
    tx: &mut sqlx::PgConnection,
    rows: &[T],
    plain: bool,
) -> Result<u64, StoreError> {
    if rows.is_empty() {
        return Ok(0);
    }
    Ok(T::bind(sqlx::query::<Postgres>(T::sql(plain, rows)), rows)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::sql(T::DOING))?
        .rows_affected())
}

/// Of the batch's trades whose key was stored already, those stored with other content:
/// conflicts, kept with both versions.
async fn stored_conflicts(
    tx: &mut sqlx::PgConnection,
    t: &[Trade],
) -> Result<Vec<Rejected>, StoreError> {
    let stored = sqlx::query::<Postgres>(
        "SELECT t.symbol, t.trade_id, t.side, t.price::text AS price, t.qty::text AS qty, \
         t.quote_qty::text AS quote_qty, t.event_time_ms, t.recv_time_us, t.source \
         FROM trades t JOIN UNNEST($2::text[], $3::bigint[]) AS k(symbol, trade_id) \
         ON t.symbol = k.symbol AND t.trade_id = k.trade_id WHERE t.venue = $1",
    )
    .bind(t[0].venue)
    .bind(t.iter().map(|x| &*x.symbol).collect::<Vec<_>>())
    .bind(t.iter().map(|x| x.trade_id).collect::<Vec<_>>())
    .fetch_all(&mut *tx)
    .await
    .map_err(StoreError::sql("select stored trades"))?;
    let mut by_key = std::collections::HashMap::new();
    for r in &stored {
        let sym: String = r.try_get("symbol").map_err(StoreError::sql("read trade"))?;
        let tr = trade_row(r, t[0].venue, &Arc::from(sym.as_str()))?;
        by_key.insert((sym, tr.trade_id), tr);
    }
    let mut conflicts = Vec::new();
    for x in t {
        if let Some(old) = by_key.get(&(x.symbol.to_string(), x.trade_id))
            && !super::batch::same_trade(old, x)
        {
            conflicts.push(Rejected::conflict(x, old));
        }
    }
    Ok(conflicts)
}

/// One column of `rows` as an array.
fn col<'q, T, V>(rows: &'q [T], f: impl Fn(&'q T) -> V) -> Vec<V> {
    rows.iter().map(f).collect()
}

impl Unnest for Trade {
    const DOING: &'static str = "insert trades";
    fn sql(plain: bool, rows: &[Self]) -> &'static str {
        // REST trades always take the upsert (they may fill a quote amount)
        if plain && rows.iter().all(|x| x.source == Source::Ws) {
            TRADES_INSERT
        } else {
            TRADES_UPSERT
        }
    }
    fn bind<'q>(q: PgQuery<'q>, t: &'q [Self]) -> PgQuery<'q> {
        q.bind(col(t, |x| x.venue))
            .bind(col(t, |x| &*x.symbol))
            .bind(col(t, |x| x.trade_id))
            .bind(col(t, |x| x.side.as_str()))
            .bind(col(t, |x| text(&x.price)))
            .bind(col(t, |x| text(&x.qty)))
            .bind(col(t, |x| opt_text(x.quote_qty.as_ref())))
            .bind(col(t, |x| x.event_time_ms))
            .bind(col(t, |x| x.recv_time_us))
            .bind(col(t, |x| x.source.as_str()))
    }
}

impl Unnest for Kline {
    const DOING: &'static str = "upsert klines";
    fn sql(_: bool, _: &[Self]) -> &'static str {
        "INSERT INTO klines (venue, symbol, interval, open_time_ms, open, high, low, close, volume, \
         quote_volume, closed, event_time_ms, recv_time_us, source) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[]::numeric[], \
         $6::text[]::numeric[], $7::text[]::numeric[], $8::text[]::numeric[], $9::text[]::numeric[], \
         $10::text[]::numeric[], $11::bool[], $12::bigint[], $13::bigint[], $14::text[]) \
         ON CONFLICT (venue, symbol, interval, open_time_ms) DO UPDATE SET \
         open = excluded.open, high = excluded.high, low = excluded.low, close = excluded.close, \
         volume = excluded.volume, closed = excluded.closed, \
         event_time_ms = excluded.event_time_ms, recv_time_us = excluded.recv_time_us, \
         source = excluded.source, \
         quote_volume = CASE WHEN excluded.quote_volume IS NULL AND excluded.volume = klines.volume \
             THEN klines.quote_volume ELSE excluded.quote_volume END \
         WHERE (excluded.closed, excluded.event_time_ms, excluded.recv_time_us) \
             > (klines.closed, klines.event_time_ms, klines.recv_time_us)"
    }
    fn bind<'q>(q: PgQuery<'q>, k: &'q [Self]) -> PgQuery<'q> {
        q.bind(col(k, |x| x.venue))
            .bind(col(k, |x| &*x.symbol))
            .bind(col(k, |x| &*x.interval))
            .bind(col(k, |x| x.open_time_ms))
            .bind(col(k, |x| text(&x.open)))
            .bind(col(k, |x| text(&x.high)))
            .bind(col(k, |x| text(&x.low)))
            .bind(col(k, |x| text(&x.close)))
            .bind(col(k, |x| text(&x.volume)))
            .bind(col(k, |x| opt_text(x.quote_volume.as_ref())))
            .bind(col(k, |x| x.closed))
            .bind(col(k, |x| x.event_time_ms))
            .bind(col(k, |x| x.recv_time_us))
            .bind(col(k, |x| x.source.as_str()))
    }
}

impl Unnest for BookSnapshot {
    const DOING: &'static str = "insert book_snapshots";
    fn sql(_: bool, _: &[Self]) -> &'static str {
        "INSERT INTO book_snapshots (venue, symbol, depth_step, recv_time_us, event_time_ms, bids, asks) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::smallint[], $4::bigint[], $5::bigint[], \
         $6::text[]::jsonb[], $7::text[]::jsonb[]) ON CONFLICT DO NOTHING"
    }
    fn bind<'q>(q: PgQuery<'q>, s: &'q [Self]) -> PgQuery<'q> {
        q.bind(col(s, |x| x.venue))
            .bind(col(s, |x| &*x.symbol))
            .bind(col(s, |x| x.depth_step))
            .bind(col(s, |x| x.recv_time_us))
            .bind(col(s, |x| x.event_time_ms))
            .bind(col(s, |x| levels_to_json(&x.bids)))
            .bind(col(s, |x| levels_to_json(&x.asks)))
    }
}

impl Unnest for book::StreamRow<'_> {
    const DOING: &'static str = "insert book_streams";
    fn sql(_: bool, _: &[Self]) -> &'static str {
        STREAMS_INSERT
    }
    fn bind<'q>(q: PgQuery<'q>, k: &'q [Self]) -> PgQuery<'q> {
        q.bind(col(k, |x| x.0))
            .bind(col(k, |x| x.1))
            .bind(col(k, |x| x.2))
    }
}

impl Unnest for book::Packed<'_> {
    const DOING: &'static str = "insert book_updates";
    fn sql(plain: bool, _: &[Self]) -> &'static str {
        if plain {
            UPDATES_INSERT
        } else {
            UPDATES_UPSERT
        }
    }
    fn bind<'q>(q: PgQuery<'q>, u: &'q [Self]) -> PgQuery<'q> {
        q.bind(col(u, |x| x.venue))
            .bind(col(u, |x| x.symbol))
            .bind(col(u, |x| x.depth_step))
            .bind(col(u, |x| x.first_seq))
            .bind(col(u, |x| x.recv_time_us))
            .bind(col(u, |x| x.event_time_ms))
            .bind(col(u, |x| x.update_id))
            .bind(col(u, |x| x.prev_update_id))
            .bind(col(u, |x| x.levels.as_str()))
    }
}

impl Unnest for Ticker {
    const DOING: &'static str = "insert tickers";
    fn sql(plain: bool, _: &[Self]) -> &'static str {
        if plain {
            TICKERS_INSERT
        } else {
            TICKERS_UPSERT
        }
    }
    fn bind<'q>(q: PgQuery<'q>, t: &'q [Self]) -> PgQuery<'q> {
        q.bind(col(t, |x| x.venue))
            .bind(col(t, |x| &*x.symbol))
            .bind(col(t, |x| x.recv_time_us))
            .bind(col(t, |x| x.event_time_ms))
            .bind(col(t, |x| opt_text(x.open.as_ref())))
            .bind(col(t, |x| opt_text(x.high.as_ref())))
            .bind(col(t, |x| opt_text(x.low.as_ref())))
            .bind(col(t, |x| opt_text(x.close.as_ref())))
            .bind(col(t, |x| opt_text(x.volume.as_ref())))
            .bind(col(t, |x| opt_text(x.quote_volume.as_ref())))
            .bind(col(t, |x| opt_text(x.change.as_ref())))
            .bind(col(t, |x| opt_text(x.bid.as_ref())))
            .bind(col(t, |x| opt_text(x.bid_qty.as_ref())))
            .bind(col(t, |x| opt_text(x.ask.as_ref())))
            .bind(col(t, |x| opt_text(x.ask_qty.as_ref())))
    }
}

impl Unnest for Session {
    const DOING: &'static str = "upsert sessions";
    fn sql(_: bool, _: &[Self]) -> &'static str {
        "INSERT INTO sessions (venue, symbol, session_id, connected_at_us, disconnected_at_us, close_reason) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::text[]) \
         ON CONFLICT (venue, symbol, session_id) DO UPDATE SET \
         disconnected_at_us = COALESCE(excluded.disconnected_at_us, sessions.disconnected_at_us), \
         close_reason = COALESCE(excluded.close_reason, sessions.close_reason)"
    }
    fn bind<'q>(q: PgQuery<'q>, s: &'q [Self]) -> PgQuery<'q> {
        q.bind(col(s, |x| x.venue))
            .bind(col(s, |x| &*x.symbol))
            .bind(col(s, |x| x.session_id.as_str()))
            .bind(col(s, |x| x.connected_at_us))
            .bind(col(s, |x| x.disconnected_at_us))
            .bind(col(s, |x| x.close_reason.as_deref()))
    }
}

impl Unnest for Gap {
    const DOING: &'static str = "upsert gaps";
    fn sql(_: bool, _: &[Self]) -> &'static str {
        "INSERT INTO gaps (venue, symbol, stream, start_ms, end_ms, status, detected_at_ms, \
         resolved_at_ms, rows_recovered, detail) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], \
         $6::text[], $7::bigint[], $8::bigint[], $9::bigint[], $10::text[]) \
         ON CONFLICT (venue, symbol, stream, start_ms) DO UPDATE SET \
         end_ms = excluded.end_ms, status = excluded.status, \
         detected_at_ms = LEAST(gaps.detected_at_ms, excluded.detected_at_ms), \
         resolved_at_ms = excluded.resolved_at_ms, rows_recovered = excluded.rows_recovered, \
         detail = excluded.detail \
         WHERE COALESCE(excluded.resolved_at_ms, excluded.detected_at_ms) \
             >= COALESCE(gaps.resolved_at_ms, gaps.detected_at_ms)"
    }
    fn bind<'q>(q: PgQuery<'q>, g: &'q [Self]) -> PgQuery<'q> {
        q.bind(col(g, |x| x.venue))
            .bind(col(g, |x| &*x.symbol))
            .bind(col(g, |x| x.stream.as_str()))
            .bind(col(g, |x| x.start_ms))
            .bind(col(g, |x| x.end_ms))
            .bind(col(g, |x| x.status.as_str()))
            .bind(col(g, |x| x.detected_at_ms))
            .bind(col(g, |x| x.resolved_at_ms))
            .bind(col(g, |x| x.rows_recovered))
            .bind(col(g, |x| x.detail.as_deref()))
    }
}

impl Unnest for Market {
    const DOING: &'static str = "upsert markets";
    fn sql(_: bool, _: &[Self]) -> &'static str {
        "INSERT INTO markets (venue, symbol, base, quote, price_precision, qty_precision, updated_at_ms) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::int[], $7::bigint[]) \
         ON CONFLICT (venue, symbol) DO UPDATE SET base = excluded.base, quote = excluded.quote, \
         price_precision = excluded.price_precision, qty_precision = excluded.qty_precision, \
         updated_at_ms = excluded.updated_at_ms"
    }
    fn bind<'q>(q: PgQuery<'q>, m: &'q [Self]) -> PgQuery<'q> {
        q.bind(col(m, |x| x.venue))
            .bind(col(m, |x| &*x.symbol))
            .bind(col(m, |x| x.base.as_deref()))
            .bind(col(m, |x| x.quote.as_deref()))
            .bind(col(m, |x| x.price_precision))
            .bind(col(m, |x| x.qty_precision))
            .bind(col(m, |x| x.updated_at_ms))
    }
}
