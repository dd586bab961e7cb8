//! Both tiers as one: the database's rows and the archive's parts of a window, merged by
//! each table's key (the database's version where both hold a row) into a private SQLite
//! file that the readers (`coverage`, `export`, `book`) read as they read any database. Per
//! table, symbol and UTC day it counts what came from where, so a reader can say whether a
//! day is in the database, the archive or both, and nothing is counted twice.
//!
//! Work is a day at a time (a part is at most a day), so memory holds one day of one
//! symbol's table.

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::Context;

use super::target::{Target, hive_decoded, hive_value};
use super::verify;
use crate::coverage::TierDay;
use crate::decimal::Dec;
use crate::export::Val;
use crate::export::archive::{self as parts, TABLES, per_venue};
use crate::model::{
    BookDelta, BookSide, BookSnapshot, Event, Gap, GapStatus, Kline, Session, Side, Source, Ticker,
    Trade,
};
use crate::store::{Batch, Store};

pub const DAY: i64 = 86_400_000;
/// Rows written to the merged file per transaction.
const CHUNK: usize = 20_000;

/// What a reader asks for: a venue, its symbols (empty: every symbol either tier holds) and
/// an exchange-time window (None: unbounded).
#[derive(Debug, Clone)]
pub struct Scope {
    pub venue: &'static str,
    pub symbols: Vec<String>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    /// Only these market-data tables (empty: every one); gaps and sessions always.
    pub tables: Vec<&'static str>,
}

/// The merged view; its file is removed when this is dropped.
pub struct Merged {
    pub store: Store,
    pub tiers: Vec<TierDay>,
    _dir: tempfile::TempDir,
}

impl Merged {
    /// Closes the view (its file goes with the value).
    pub async fn close(self) {
        self.store.close().await;
    }
}

/// The database's and the archive's rows of `scope`, merged.
pub async fn merge(db: &Store, target: &Target, scope: &Scope) -> anyhow::Result<Merged> {
    let dir = tempfile::Builder::new()
        .prefix("mdrec-tiers-")
        .tempdir()
        .context("a private directory for the merged view")?;
    let url = format!("sqlite://{}", dir.path().join("merged.db").display());
    let store = Store::connect(&url)
        .await
        .context("opening the merged view")?;
    store.migrate().await.context("preparing the merged view")?;
    let mut m = Merged {
        store,
        tiers: Vec::new(),
        _dir: dir,
    };
    let symbols = if scope.symbols.is_empty() {
        all_symbols(db, target, scope.venue).await?
    } else {
        scope.symbols.clone()
    };
    let tables: Vec<&'static str> = if scope.tables.is_empty() {
        TABLES.into_iter().filter(|t| !per_venue(t)).collect()
    } else {
        scope
            .tables
            .iter()
            .copied()
            .filter(|t| !per_venue(t))
            .collect()
    };
    for table in tables {
        for symbol in &symbols {
            merge_stream(db, target, scope, table, symbol, &mut m).await?;
        }
    }
    for table in ["gaps", "sessions"] {
        merge_stream(db, target, scope, table, "", &mut m).await?;
    }
    Ok(m)
}

/// The first and last UTC day (their starts) holding a full book of a symbol in either
/// tier (a book is rebuilt from the last full book before the time asked).
pub async fn book_days(
    db: &Store,
    target: &Target,
    venue: &'static str,
    symbol: &str,
) -> anyhow::Result<Option<(i64, i64)>> {
    let mut days: Vec<i64> = Vec::new();
    let (lo, hi) = (i64::MIN / 1000, i64::MAX / 1000);
    let snapshots = crate::model::Table::BookSnapshots;
    if let Some((first, last)) = db
        .time_bounds(snapshots, venue, symbol, "", None, lo, hi)
        .await?
    {
        days.extend([first.div_euclid(DAY) * DAY, last.div_euclid(DAY) * DAY]);
    }
    let dir = format!(
        "book_snapshots/venue={}/symbol={}/",
        hive_value(venue),
        hive_value(symbol)
    );
    for d in target.dirs(&dir).await? {
        let day = d
            .strip_prefix("date=")
            .and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|t| t.and_utc().timestamp_millis());
        days.extend(day);
    }
    Ok(days.iter().min().copied().zip(days.iter().max().copied()))
}

/// Symbols with rows in the database or a directory in the archive.
async fn all_symbols(
    db: &Store,
    target: &Target,
    venue: &'static str,
) -> anyhow::Result<Vec<String>> {
    let mut all: BTreeSet<String> = db.symbols_with_data(venue).await?.into_iter().collect();
    for table in TABLES.into_iter().filter(|t| !per_venue(t)) {
        let prefix = format!("{table}/venue={}/", hive_value(venue));
        for d in target.dirs(&prefix).await? {
            if let Some(s) = d.strip_prefix("symbol=").and_then(hive_decoded) {
                all.insert(s);
            }
        }
    }
    Ok(all.into_iter().collect())
}

/// The archive's parts of one stream (gaps, sessions: of the venue) that may hold rows of
/// the window: (path, period start).
async fn parts_of(
    target: &Target,
    scope: &Scope,
    table: &str,
    symbol: &str,
) -> anyhow::Result<Vec<(String, i64)>> {
    let mut dir = format!("{table}/venue={}/", hive_value(scope.venue));
    if !symbol.is_empty() {
        dir.push_str(&format!("symbol={}/", hive_value(symbol)));
    }
    // a part covers at most a day: one that starts the day before may reach in
    let lo = scope.from_ms.map(|f| f.div_euclid(DAY) * DAY - DAY);
    let listed = match (lo, scope.to_ms) {
        (Some(lo), Some(hi)) if hi - lo <= 62 * DAY => {
            let mut all = Vec::new();
            let mut d = lo;
            while d < hi {
                all.extend(
                    target
                        .list(&format!("{dir}date={}/", super::target::date(d)))
                        .await?,
                );
                d += DAY;
            }
            all
        }
        _ => target.list(&dir).await?,
    };
    let mut out = Vec::new();
    for (path, _) in listed {
        let Some(start) = part_start(&path) else {
            tracing::warn!(path, "not an archive part's name: skipped");
            continue;
        };
        if lo.is_some_and(|lo| start < lo) || scope.to_ms.is_some_and(|t| start >= t) {
            continue;
        }
        out.push((path, start));
    }
    Ok(out)
}

/// A part's period start from its path (`.../date=YYYY-MM-DD/part-HHMMSS.parquet`).
fn part_start(path: &str) -> Option<i64> {
    let mut it = path.rsplit('/');
    let name = it.next()?.strip_prefix("part-")?.strip_suffix(".parquet")?;
    let date = it.next()?.strip_prefix("date=")?;
    let t =
        chrono::NaiveDateTime::parse_from_str(&format!("{date} {name}"), "%Y-%m-%d %H%M%S").ok()?;
    Some(t.and_utc().timestamp_millis())
}

/// One stream, a day at a time: the archive's rows of the day and the database's, merged
/// into the view.
async fn merge_stream(
    db: &Store,
    target: &Target,
    scope: &Scope,
    table: &'static str,
    symbol: &str,
    m: &mut Merged,
) -> anyhow::Result<()> {
    let parts = parts_of(target, scope, table, symbol).await?;
    let (from, to) = (
        scope.from_ms.unwrap_or(i64::MIN / 1000 + 1),
        scope.to_ms.unwrap_or(i64::MAX / 1000),
    );
    if per_venue(table) {
        // small: the database's whole table and every part of the window at once
        let db_rows = parts::collect(
            db,
            scope.venue,
            table,
            "",
            (i64::MIN / 1000 + 1, i64::MAX / 1000),
        )
        .await?;
        let mut old = Vec::new();
        for (path, _) in &parts {
            old.extend(read_part(target, table, path).await?);
        }
        let (rows, _) = parts::merge_counted(table, old, db_rows);
        return write_rows(&m.store, scope.venue, table, symbol, rows).await;
    }
    let mut days: BTreeSet<i64> = parts.iter().map(|(_, s)| s.div_euclid(DAY) * DAY).collect();
    let mut at = from;
    while at < to {
        let Some(t) = db.next_row_ms(table, scope.venue, symbol, at).await? else {
            break;
        };
        if t >= to {
            break;
        }
        let day = t.div_euclid(DAY) * DAY;
        days.insert(day);
        at = day + DAY;
    }
    for day in days {
        let db_rows = parts::collect(db, scope.venue, table, symbol, (day, day + DAY)).await?;
        let mut old = Vec::new();
        for (path, _) in parts.iter().filter(|(_, s)| s.div_euclid(DAY) * DAY == day) {
            old.extend(read_part(target, table, path).await?);
        }
        let (database_rows, archive_rows) = (db_rows.len() as u64, old.len() as u64);
        let (rows, both) = parts::merge_counted(table, old, db_rows);
        m.tiers.push(TierDay::new(
            symbol,
            table,
            super::target::date(day),
            (database_rows, archive_rows, both as u64),
        ));
        write_rows(&m.store, scope.venue, table, symbol, rows).await?;
    }
    Ok(())
}

async fn read_part(target: &Target, table: &str, path: &str) -> anyhow::Result<Vec<Vec<Val>>> {
    let bytes = target.get(path).await?;
    verify::read_rows(table, &bytes).with_context(|| format!("reading {path} of {}", target.url))
}

async fn write_rows(
    store: &Store,
    venue: &'static str,
    table: &str,
    symbol: &str,
    rows: Vec<Vec<Val>>,
) -> anyhow::Result<()> {
    let symbol: Arc<str> = Arc::from(symbol);
    for chunk in rows.chunks(CHUNK) {
        let mut b = Batch::default();
        for r in chunk {
            b.push(event(table, venue, &symbol, r).with_context(|| format!("a row of {table}"))?);
        }
        store.write(&b).await.context("writing the merged view")?;
    }
    Ok(())
}

/// Reads cells in order, each as the type its column holds.
struct Cells<'a>(std::slice::Iter<'a, Val>);

impl Cells<'_> {
    fn next(&mut self) -> anyhow::Result<&Val> {
        self.0.next().context("a row with too few cells")
    }
    fn int(&mut self) -> anyhow::Result<i64> {
        match self.next()? {
            Val::Int(i) => Ok(*i),
            v => anyhow::bail!("{v:?} where a number belongs"),
        }
    }
    fn opt_int(&mut self) -> anyhow::Result<Option<i64>> {
        match self.next()? {
            Val::Null => Ok(None),
            Val::Int(i) => Ok(Some(*i)),
            v => anyhow::bail!("{v:?} where a number belongs"),
        }
    }
    fn text(&mut self) -> anyhow::Result<String> {
        match self.next()? {
            Val::Text(t) => Ok(t.clone()),
            v => anyhow::bail!("{v:?} where text belongs"),
        }
    }
    fn opt_text(&mut self) -> anyhow::Result<Option<String>> {
        match self.next()? {
            Val::Null => Ok(None),
            Val::Text(t) => Ok(Some(t.clone())),
            v => anyhow::bail!("{v:?} where text belongs"),
        }
    }
    fn dec(&mut self) -> anyhow::Result<Dec> {
        self.opt_dec()?.context("an empty decimal")
    }
    fn opt_dec(&mut self) -> anyhow::Result<Option<Dec>> {
        match self.next()? {
            Val::Null => Ok(None),
            Val::Dec(d) => Ok(Some(d.clone())),
            v => anyhow::bail!("{v:?} where a decimal belongs"),
        }
    }
    fn bool(&mut self) -> anyhow::Result<bool> {
        match self.next()? {
            Val::Bool(b) => Ok(*b),
            v => anyhow::bail!("{v:?} where true or false belongs"),
        }
    }
    fn levels(&mut self) -> anyhow::Result<Vec<(Dec, Dec)>> {
        match self.next()? {
            Val::Levels(l) => Ok(l.clone()),
            v => anyhow::bail!("{v:?} where book levels belong"),
        }
    }
    fn source(&mut self) -> anyhow::Result<Source> {
        match self.text()?.as_str() {
            "ws" => Ok(Source::Ws),
            "rest" => Ok(Source::Rest),
            s => anyhow::bail!("source {s:?}"),
        }
    }
    fn step(&mut self) -> anyhow::Result<i16> {
        let s = self.int()?;
        i16::try_from(s).with_context(|| format!("depth step {s}"))
    }
}

/// An archived row (cells in the order `archive_columns` names them) as the event that
/// stores it.
fn event(
    table: &str,
    venue: &'static str,
    symbol: &Arc<str>,
    row: &[Val],
) -> anyhow::Result<Event> {
    let mut c = Cells(row.iter());
    let symbol = symbol.clone();
    Ok(match table {
        "trades" => Event::Trade(Trade {
            venue,
            symbol,
            trade_id: c.int()?,
            side: {
                let s = c.text()?;
                Side::parse(&s).with_context(|| format!("side {s:?}"))?
            },
            price: c.dec()?,
            qty: c.dec()?,
            quote_qty: c.opt_dec()?,
            event_time_ms: c.int()?,
            recv_time_us: c.int()?,
            source: c.source()?,
        }),
        "klines" => Event::Kline(Kline {
            venue,
            symbol,
            interval: Arc::from(c.text()?.as_str()),
            open_time_ms: c.int()?,
            open: c.dec()?,
            high: c.dec()?,
            low: c.dec()?,
            close: c.dec()?,
            volume: c.dec()?,
            quote_volume: c.opt_dec()?,
            closed: c.bool()?,
            event_time_ms: c.int()?,
            recv_time_us: c.int()?,
            source: c.source()?,
        }),
        "book_snapshots" => Event::BookSnapshot(BookSnapshot {
            venue,
            symbol,
            depth_step: c.step()?,
            recv_time_us: c.int()?,
            event_time_ms: c.int()?,
            bids: c.levels()?,
            asks: c.levels()?,
        }),
        "book_deltas" => Event::BookDelta(BookDelta {
            venue,
            symbol,
            depth_step: c.step()?,
            recv_time_us: c.int()?,
            seq: {
                let s = c.int()?;
                i32::try_from(s).with_context(|| format!("seq {s}"))?
            },
            event_time_ms: c.int()?,
            side: match c.text()?.as_str() {
                "bid" => BookSide::Bid,
                "ask" => BookSide::Ask,
                s => anyhow::bail!("book side {s:?}"),
            },
            price: c.dec()?,
            qty: c.dec()?,
            update_id: c.opt_int()?,
            prev_update_id: c.opt_int()?,
        }),
        "tickers" => Event::Ticker(Ticker {
            venue,
            symbol,
            recv_time_us: c.int()?,
            event_time_ms: c.int()?,
            open: c.opt_dec()?,
            high: c.opt_dec()?,
            low: c.opt_dec()?,
            close: c.opt_dec()?,
            volume: c.opt_dec()?,
            quote_volume: c.opt_dec()?,
            change: c.opt_dec()?,
            bid: c.opt_dec()?,
            bid_qty: c.opt_dec()?,
            ask: c.opt_dec()?,
            ask_qty: c.opt_dec()?,
        }),
        "gaps" => Event::Gap(Gap {
            venue,
            symbol: Arc::from(c.text()?.as_str()),
            stream: c.text()?,
            start_ms: c.int()?,
            end_ms: c.opt_int()?,
            status: {
                let s = c.text()?;
                GapStatus::parse(&s).with_context(|| format!("status {s:?}"))?
            },
            detected_at_ms: c.int()?,
            resolved_at_ms: c.opt_int()?,
            rows_recovered: c.int()?,
            detail: c.opt_text()?,
        }),
        "sessions" => Event::Session(Session {
            venue,
            symbol: Arc::from(c.text()?.as_str()),
            session_id: c.text()?,
            connected_at_us: c.int()?,
            disconnected_at_us: c.opt_int()?,
            close_reason: c.opt_text()?,
        }),
        other => anyhow::bail!("{other} is not an archived table"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_starts_where_its_path_says() {
        let p = "trades/venue=cdc-v1/symbol=btcusdt/date=2026-12-07/part-130500.parquet";
        assert_eq!(part_start(p), Some(1_796_648_700_000));
        assert_eq!(
            part_start("trades/venue=x/date=2026-12-07/other.parquet"),
            None
        );
        assert_eq!(part_start("part-130500.parquet"), None);
    }

    #[test]
    fn a_day_is_where_its_rows_are() {
        let t = |db, ar, both| TierDay::new("x", "trades", "1970-01-01".into(), (db, ar, both));
        assert_eq!(t(3, 0, 0).tier, "database");
        assert_eq!(t(0, 3, 0).tier, "archive");
        assert_eq!(t(2, 3, 2).tier, "both");
        assert_eq!(t(2, 3, 2).rows(), 3);
    }
}
