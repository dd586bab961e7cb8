//! `mdrec export`: one kind of row of one or several symbols over a time range, to CSV or
//! Parquet, in one file or one file per symbol and UTC day (hive layout).
//!
//! Rows are read in keyset pages and written as they come, so memory is bounded by a page
//! (and, for Parquet, one row group) whatever the range. Prices and quantities keep the
//! exchange's digits, never floats: CSV writes the decimal text; Parquet writes
//! `DECIMAL(38, s)` with `s` the most fraction digits the file's column holds, or the text
//! where a value would not fit 38 digits (named in the file's metadata). That takes two
//! passes over the rows for Parquet: the first measures the digits, the second writes.
//! Parquet times are `TIMESTAMP(us, UTC)`; CSV keeps the database's integers, the unit in the
//! column name. A file appears under its name only when complete; CSV to a name ending in
//! `.gz` is gzip-compressed.
//!
//! `--kind book --every D` rebuilds the book on a time grid from the stored full books and
//! changes (an incremental-depth recording is mostly changes): at each grid time, the book
//! after every change with exchange time at or before it. No row is written where the book
//! is unknown: before the first full book, from a break the recorder put on record (a hole
//! of the book stream, the rule `book --at` follows) until the next full book, and once the
//! connection the book came from closed.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use parquet::basic::Compression;
use parquet::data_type::{
    BoolType, ByteArray, ByteArrayType, FixedLenByteArray, FixedLenByteArrayType, Int64Type,
};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;

use crate::decimal::Dec;
use crate::model::{BookDelta, BookSnapshot, Kline, StreamKey, Table, Ticker, Trade};
use crate::store::{DeltaRange, Range, Store, StoreError};

/// Rows read per database round trip.
const PAGE: i64 = 20_000;
/// Rows per Parquet row group.
const ROW_GROUP: usize = 100_000;
const DAY_MS: i64 = 86_400_000;
/// Digits a Parquet `DECIMAL` holds in 16 bytes.
const PRECISION: usize = 38;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Trades,
    Klines,
    /// Stored full books; with `--every`, the book rebuilt on a time grid.
    Book,
    BookDeltas,
    Tickers,
    Gaps,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Csv,
    Parquet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Layout {
    /// One file, `--out`.
    File,
    /// `--out` is a directory: `symbol=S/date=YYYY-MM-DD/part.<format>`, one file per symbol
    /// and UTC day (exchange time).
    Hive,
}

#[derive(Debug, Clone)]
pub struct Request {
    pub kind: Kind,
    pub symbols: Vec<String>,
    /// Klines only: the venue's interval name.
    pub interval: String,
    /// `from_ms <= t < to_ms` on exchange time (bars: open time; holes: overlapping).
    pub from_ms: i64,
    pub to_ms: i64,
    pub format: Format,
    pub layout: Layout,
    pub out: PathBuf,
    /// Replace files that exist.
    pub force: bool,
    /// Books and changes: the stream (depth step); None: every stored one (the grid needs
    /// exactly one).
    pub step: Option<i16>,
    /// Books: the grid, in ms (None: the stored full books).
    pub every_ms: Option<i64>,
    /// Grid: levels per side.
    pub depth: usize,
    /// Where the rows come from (the database, password masked), for the Parquet metadata.
    pub source: String,
}

impl Request {
    /// One symbol, the whole recording, one file.
    pub fn new(kind: Kind, symbol: &str, format: Format, out: impl Into<PathBuf>) -> Request {
        Request {
            kind,
            symbols: vec![symbol.to_string()],
            interval: String::new(),
            from_ms: i64::MIN,
            to_ms: i64::MAX,
            format,
            layout: Layout::File,
            out: out.into(),
            force: false,
            step: None,
            every_ms: None,
            depth: 10,
            source: String::new(),
        }
    }

    fn grid(&self) -> Option<i64> {
        self.every_ms.filter(|_| self.kind == Kind::Book)
    }
}

fn refused(flag: &'static str, message: impl Into<String>) -> anyhow::Error {
    crate::config::UsageError::new(flag, message).into()
}

/// What is wrong with a request before anything is written: the window, the grid, the
/// output path, a symbol the database holds nothing of (with the closest names it does hold).
pub async fn check(store: &Store, venue: &str, req: &Request) -> anyhow::Result<()> {
    if req.from_ms >= req.to_ms {
        return Err(refused(
            "--from",
            "must be before --to (the window is [from, to))",
        ));
    }
    if req.symbols.is_empty() {
        return Err(refused("--symbol", "name at least one symbol"));
    }
    match req.every_ms {
        Some(_) if req.kind != Kind::Book => {
            return Err(refused(
                "--every",
                "rebuilds the book on a time grid: only with --kind book",
            ));
        }
        Some(e) if e <= 0 => return Err(refused("--every", "must be longer than 0")),
        _ => {}
    }
    if req.grid().is_some() && req.depth == 0 {
        return Err(refused("--depth", "must be at least 1 level"));
    }
    match req.layout {
        Layout::File if req.symbols.len() > 1 => {
            return Err(refused(
                "--layout",
                "several symbols are written one file per symbol and day: --layout hive \
                 with --out a directory",
            ));
        }
        Layout::File => {
            if req.out.is_dir() {
                return Err(refused(
                    "--out",
                    format!(
                        "{} is a directory: name the file to write (or --layout hive)",
                        req.out.display()
                    ),
                ));
            }
            if req.out.exists() && !req.force {
                return Err(refused(
                    "--out",
                    format!("{} exists: pass --force to replace it", req.out.display()),
                ));
            }
        }
        Layout::Hive => {
            if req.out.exists() && !req.out.is_dir() {
                return Err(refused(
                    "--out",
                    format!(
                        "{} is a file: the hive layout writes into a directory",
                        req.out.display()
                    ),
                ));
            }
        }
    }
    for symbol in &req.symbols {
        check_symbol(store, venue, symbol).await?;
        if req.grid().is_some() {
            grid_step(store, venue, symbol, req.step).await?;
        }
    }
    Ok(())
}

/// A symbol the database holds nothing of is refused, with the closest names it holds.
pub async fn check_symbol(store: &Store, venue: &str, symbol: &str) -> anyhow::Result<()> {
    if store.has_symbol(venue, symbol).await? {
        return Ok(());
    }
    let known = store.known_symbols(venue).await?;
    let names: std::collections::HashSet<&str> = known.iter().map(|s| s.as_str()).collect();
    let near = crate::config::closest_names(symbol, &names);
    let hint = if near.is_empty() {
        String::new()
    } else {
        format!(" (did you mean {}?)", near.join(" or "))
    };
    Err(refused(
        "--symbol",
        format!("the database holds nothing of {symbol:?} for {venue}{hint}"),
    ))
}

/// The one book stream a grid is rebuilt from: `--step`, else the only one stored.
async fn grid_step(
    store: &Store,
    venue: &str,
    symbol: &str,
    step: Option<i16>,
) -> anyhow::Result<i16> {
    if let Some(s) = step {
        return Ok(s);
    }
    match store.stored_depth_steps(venue, symbol).await?.as_slice() {
        [one] => Ok(i16::try_from(*one).context("stored depth step out of range")?),
        [] => Err(refused(
            "--kind",
            format!("no full {symbol} book is stored: the grid starts from one"),
        )),
        many => {
            let list: Vec<String> = many.iter().map(|s| s.to_string()).collect();
            Err(refused(
                "--step",
                format!(
                    "{symbol} has several book streams (steps {}): name one",
                    list.join(", ")
                ),
            ))
        }
    }
}

/// One cell.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Null,
    Int(i64),
    Bool(bool),
    Text(String),
    Dec(Dec),
    /// Book levels, best first: (price, quantity).
    Levels(Vec<(Dec, Dec)>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    Int,
    OptInt,
    Bool,
    Text,
    OptText,
    Dec,
    OptDec,
    /// Epoch ms (CSV), `TIMESTAMP(us, UTC)` (Parquet).
    TimeMs,
    OptTimeMs,
    /// Epoch µs (CSV), `TIMESTAMP(us, UTC)` (Parquet).
    TimeUs,
    /// CSV: JSON `[["price","qty"],...]`; Parquet: a list of (price, qty) decimals.
    Levels,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Col {
    /// The CSV header (the database's column name).
    pub name: String,
    pub ty: Ty,
}

impl Col {
    /// Parquet names drop the unit a typed timestamp carries itself.
    pub fn parquet_name(&self) -> &str {
        match self.ty {
            Ty::TimeMs | Ty::OptTimeMs => self.name.strip_suffix("_ms").unwrap_or(&self.name),
            Ty::TimeUs => self.name.strip_suffix("_us").unwrap_or(&self.name),
            _ => &self.name,
        }
    }

    fn optional(&self) -> bool {
        matches!(
            self.ty,
            Ty::OptInt | Ty::OptText | Ty::OptDec | Ty::OptTimeMs
        )
    }
}

fn cols(list: &[(&str, Ty)]) -> Vec<Col> {
    list.iter()
        .map(|(n, ty)| Col {
            name: n.to_string(),
            ty: *ty,
        })
        .collect()
}

/// The columns of an export, in order.
pub fn columns(req: &Request) -> Vec<Col> {
    use Ty::*;
    if req.grid().is_some() {
        let mut c = cols(&[
            ("venue", Text),
            ("symbol", Text),
            ("depth_step", Int),
            ("time_ms", TimeMs),
            ("book_event_time_ms", TimeMs),
            ("book_recv_time_us", TimeUs),
        ]);
        for i in 1..=req.depth {
            for side in ["bid", "ask"] {
                for what in ["price", "qty"] {
                    c.push(Col {
                        name: format!("{side}_{i}_{what}"),
                        ty: OptDec,
                    });
                }
            }
        }
        return c;
    }
    match req.kind {
        Kind::Trades => cols(&[
            ("venue", Text),
            ("symbol", Text),
            ("trade_id", Int),
            ("side", Text),
            ("price", Dec),
            ("qty", Dec),
            ("quote_qty", OptDec),
            ("event_time_ms", TimeMs),
            ("recv_time_us", TimeUs),
            ("source", Text),
        ]),
        Kind::Klines => cols(&[
            ("venue", Text),
            ("symbol", Text),
            ("interval", Text),
            ("open_time_ms", TimeMs),
            ("open", Dec),
            ("high", Dec),
            ("low", Dec),
            ("close", Dec),
            ("volume", Dec),
            ("quote_volume", OptDec),
            ("closed", Bool),
            ("event_time_ms", TimeMs),
            ("recv_time_us", TimeUs),
            ("source", Text),
        ]),
        Kind::Book => cols(&[
            ("venue", Text),
            ("symbol", Text),
            ("depth_step", Int),
            ("recv_time_us", TimeUs),
            ("event_time_ms", TimeMs),
            ("bids", Levels),
            ("asks", Levels),
        ]),
        Kind::BookDeltas => cols(&[
            ("venue", Text),
            ("symbol", Text),
            ("depth_step", Int),
            ("recv_time_us", TimeUs),
            ("seq", Int),
            ("event_time_ms", TimeMs),
            ("side", Text),
            ("price", Dec),
            ("qty", Dec),
            ("update_id", OptInt),
            ("prev_update_id", OptInt),
        ]),
        Kind::Tickers => cols(&[
            ("venue", Text),
            ("symbol", Text),
            ("recv_time_us", TimeUs),
            ("event_time_ms", TimeMs),
            ("open", OptDec),
            ("high", OptDec),
            ("low", OptDec),
            ("close", OptDec),
            ("volume", OptDec),
            ("quote_volume", OptDec),
            ("change", OptDec),
        ]),
        Kind::Gaps => cols(&[
            ("venue", Text),
            ("symbol", Text),
            ("stream", Text),
            ("start_ms", TimeMs),
            ("end_ms", OptTimeMs),
            ("status", Text),
            ("detected_at_ms", TimeMs),
            ("resolved_at_ms", OptTimeMs),
            ("rows_recovered", Int),
            ("detail", OptText),
        ]),
    }
}

fn text(s: impl ToString) -> Val {
    Val::Text(s.to_string())
}

fn opt_text(s: Option<impl ToString>) -> Val {
    s.map_or(Val::Null, text)
}

fn opt_dec(d: Option<Dec>) -> Val {
    d.map_or(Val::Null, Val::Dec)
}

fn trade_row(t: Trade) -> Vec<Val> {
    vec![
        text(t.venue),
        text(&*t.symbol),
        Val::Int(t.trade_id),
        text(t.side.as_str()),
        Val::Dec(t.price),
        Val::Dec(t.qty),
        opt_dec(t.quote_qty),
        Val::Int(t.event_time_ms),
        Val::Int(t.recv_time_us),
        text(t.source.as_str()),
    ]
}

fn kline_row(k: Kline) -> Vec<Val> {
    vec![
        text(k.venue),
        text(&*k.symbol),
        text(&*k.interval),
        Val::Int(k.open_time_ms),
        Val::Dec(k.open),
        Val::Dec(k.high),
        Val::Dec(k.low),
        Val::Dec(k.close),
        Val::Dec(k.volume),
        opt_dec(k.quote_volume),
        Val::Bool(k.closed),
        Val::Int(k.event_time_ms),
        Val::Int(k.recv_time_us),
        text(k.source.as_str()),
    ]
}

fn delta_row(d: BookDelta) -> Vec<Val> {
    vec![
        text(d.venue),
        text(&*d.symbol),
        Val::Int(d.depth_step.into()),
        Val::Int(d.recv_time_us),
        Val::Int(d.seq.into()),
        Val::Int(d.event_time_ms),
        text(d.side.as_str()),
        Val::Dec(d.price),
        Val::Dec(d.qty),
        d.update_id.map_or(Val::Null, Val::Int),
        d.prev_update_id.map_or(Val::Null, Val::Int),
    ]
}

fn ticker_row(t: Ticker) -> Vec<Val> {
    vec![
        text(t.venue),
        text(&*t.symbol),
        Val::Int(t.recv_time_us),
        Val::Int(t.event_time_ms),
        opt_dec(t.open),
        opt_dec(t.high),
        opt_dec(t.low),
        opt_dec(t.close),
        opt_dec(t.volume),
        opt_dec(t.quote_volume),
        opt_dec(t.change),
    ]
}

/// The part of the request one file holds.
#[derive(Debug, Clone, Copy)]
struct Window {
    from: i64,
    to: i64,
    /// Holes: a hole is in the file of the day it starts on, or the first file if it began
    /// before the window, so a dataset of days holds each once.
    first: bool,
}

/// One file of an export.
#[derive(Debug, Clone)]
pub struct Part {
    pub symbol: String,
    pub path: PathBuf,
    win: Window,
}

/// A file written.
#[derive(Debug, Clone)]
pub struct Written {
    pub path: PathBuf,
    pub rows: u64,
}

/// Which table a kind's rows (and their exchange-time bounds) come from.
fn table(req: &Request) -> Option<Table> {
    match req.kind {
        Kind::Trades => Some(Table::Trades),
        Kind::Klines => Some(Table::Klines),
        Kind::Book => Some(Table::BookSnapshots),
        Kind::BookDeltas => Some(Table::BookDeltas),
        Kind::Tickers => Some(Table::Tickers),
        Kind::Gaps => None,
    }
}

/// First and last exchange time of what the request selects for a symbol.
async fn bounds(
    store: &Store,
    venue: &'static str,
    req: &Request,
    symbol: &str,
) -> Result<Option<(i64, i64)>, StoreError> {
    let Some(t) = table(req) else {
        let gaps = store.load_gaps(venue, Some(symbol)).await?;
        let mut b: Option<(i64, i64)> = None;
        // a hole is placed by where it starts in the window
        for g in gaps.iter().filter(|g| gap_in(g, req.from_ms, req.to_ms)) {
            let at = g.start_ms.max(req.from_ms);
            b = union(b, Some((at, at)));
        }
        return Ok(b);
    };
    let get = |t| {
        store.time_bounds(
            t,
            venue,
            symbol,
            &req.interval,
            req.step,
            req.from_ms,
            req.to_ms,
        )
    };
    let b = get(t).await?;
    if req.grid().is_some() {
        // changes carry the book past the last full one
        return Ok(union(b, get(Table::BookDeltas).await?));
    }
    Ok(b)
}

/// The span covering both.
fn union(a: Option<(i64, i64)>, b: Option<(i64, i64)>) -> Option<(i64, i64)> {
    match (a, b) {
        (Some((a0, a1)), Some((b0, b1))) => Some((a0.min(b0), a1.max(b1))),
        (x, None) | (None, x) => x,
    }
}

fn gap_in(g: &crate::model::Gap, from: i64, to: i64) -> bool {
    g.start_ms < to && g.end_ms.unwrap_or(i64::MAX) >= from
}

/// `symbol=BTC_USD/date=2026-11-21`, with characters a path or a hive reader would take
/// for syntax percent-encoded.
fn hive_dir(out: &Path, symbol: &str, day_ms: i64) -> PathBuf {
    let mut enc = String::new();
    for b in symbol.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
            enc.push(b as char);
        } else {
            enc.push_str(&format!("%{b:02X}"));
        }
    }
    let date = chrono::DateTime::from_timestamp_millis(day_ms)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| day_ms.to_string());
    out.join(format!("symbol={enc}"))
        .join(format!("date={date}"))
}

/// The files the request writes, checked before any is: with the hive layout one per
/// symbol and UTC day that holds rows.
pub async fn plan(store: &Store, venue: &'static str, req: &Request) -> anyhow::Result<Vec<Part>> {
    check(store, venue, req).await?;
    let mut parts = Vec::new();
    if req.layout == Layout::File {
        let symbol = req.symbols[0].clone();
        let (from, to) = match req.grid() {
            // the grid needs a concrete span: the recorded one, cut to the window
            Some(_) => match bounds(store, venue, req, &symbol).await? {
                Some((lo, hi)) => (req.from_ms.max(lo), req.to_ms.min(hi.saturating_add(1))),
                None => (req.from_ms, req.from_ms),
            },
            None => (req.from_ms, req.to_ms),
        };
        parts.push(Part {
            symbol,
            path: req.out.clone(),
            win: Window {
                from,
                to,
                first: true,
            },
        });
        return Ok(parts);
    }
    let ext = match req.format {
        Format::Csv => "csv",
        Format::Parquet => "parquet",
    };
    let mut existing = Vec::new();
    for symbol in &req.symbols {
        let Some((lo, hi)) = bounds(store, venue, req, symbol).await? else {
            continue;
        };
        let mut day = lo - lo.rem_euclid(DAY_MS);
        let mut first = true;
        while day <= hi {
            let from = req.from_ms.max(day);
            let to = req.to_ms.min(day + DAY_MS);
            // the grid ends with the recording when the window is open-ended
            let to = if req.grid().is_some() {
                to.min(hi.saturating_add(1))
            } else {
                to
            };
            let path = hive_dir(&req.out, symbol, day).join(format!("part.{ext}"));
            if path.exists() && !req.force {
                existing.push(path.display().to_string());
            }
            parts.push(Part {
                symbol: symbol.clone(),
                path,
                win: Window { from, to, first },
            });
            first = false;
            day += DAY_MS;
        }
    }
    if !existing.is_empty() {
        let more = if existing.len() > 3 {
            format!(" and {} more", existing.len() - 3)
        } else {
            String::new()
        };
        existing.truncate(3);
        return Err(refused(
            "--out",
            format!(
                "{}{more} exist: pass --force to replace them",
                existing.join(", ")
            ),
        ));
    }
    Ok(parts)
}

/// Rows the request selects (books on a grid: grid times), for the progress bar.
pub async fn count(
    store: &Store,
    venue: &str,
    req: &Request,
    parts: &[Part],
) -> Result<u64, StoreError> {
    let mut n = 0u64;
    for p in parts {
        if let Some(every) = req.grid() {
            n += ((p.win.to - p.win.from).max(0) / every) as u64;
            continue;
        }
        let Some(t) = table(req) else { continue };
        n += store
            .rows_between(t, venue, &p.symbol, &req.interval, p.win.from, p.win.to)
            .await?;
    }
    Ok(n)
}

/// Where rows go: a file being written, or the digit count of the first Parquet pass.
trait Sink {
    fn write(&mut self, rows: Vec<Vec<Val>>) -> anyhow::Result<()>;
}

/// Reads a part's rows page by page into `sink`; returns how many.
async fn produce(
    store: &Store,
    venue: &'static str,
    req: &Request,
    part: &Part,
    sink: &mut dyn Sink,
    progress: &mut dyn FnMut(u64),
) -> anyhow::Result<u64> {
    let symbol = part.symbol.as_str();
    let win = part.win;
    let mut n = 0u64;
    let mut emit = |rows: Vec<Vec<Val>>, sink: &mut dyn Sink, n: &mut u64| -> anyhow::Result<()> {
        *n += rows.len() as u64;
        sink.write(rows)?;
        progress(*n);
        Ok(())
    };
    let range = |after| Range {
        from_ms: win.from,
        to_ms: win.to,
        after,
        limit: PAGE,
    };
    match req.kind {
        Kind::Book if req.grid().is_some() => {
            let step = grid_step(store, venue, symbol, req.step).await?;
            let every = req.grid().unwrap_or(1000);
            book_grid(store, venue, req, symbol, step, every, win, &mut |rows| {
                emit(rows, sink, &mut n)
            })
            .await?;
        }
        Kind::Trades => {
            let mut after = (i64::MIN, i64::MIN);
            loop {
                let t = store.trades_page(venue, symbol, &range(after)).await?;
                let Some(last) = t.last() else { break };
                after = (last.event_time_ms, last.trade_id);
                emit(t.into_iter().map(trade_row).collect(), sink, &mut n)?;
            }
        }
        Kind::Klines => {
            let mut after = (i64::MIN, i64::MIN);
            loop {
                let k = store
                    .klines_page(venue, symbol, &req.interval, &range(after))
                    .await?;
                let Some(last) = k.last() else { break };
                after = (last.open_time_ms, 0);
                emit(k.into_iter().map(kline_row).collect(), sink, &mut n)?;
            }
        }
        Kind::Book => {
            // one depth step at a time, in the key's order: every page an index seek
            for step in steps(store, venue, symbol, req.kind, req.step).await? {
                let mut after = i64::MIN;
                loop {
                    let rows = store
                        .book_rows_page(venue, symbol, step, after, win.from, win.to, PAGE)
                        .await?;
                    let Some(last) = rows.last() else { break };
                    after = last.0;
                    let mut out = Vec::with_capacity(rows.len());
                    for (recv, event, step, bids, asks) in rows {
                        out.push(vec![
                            text(venue),
                            text(symbol),
                            Val::Int(step),
                            Val::Int(recv),
                            Val::Int(event),
                            Val::Levels(crate::store::levels_from_json(&bids)?),
                            Val::Levels(crate::store::levels_from_json(&asks)?),
                        ]);
                    }
                    emit(out, sink, &mut n)?;
                }
            }
        }
        Kind::BookDeltas => {
            for step in steps(store, venue, symbol, req.kind, req.step).await? {
                let mut r = DeltaRange {
                    depth_step: step,
                    after: (i64::MIN, i64::MIN),
                    from_ms: win.from,
                    to_ms: win.to,
                    limit: PAGE,
                };
                loop {
                    let d = store.deltas_page(venue, symbol, &r).await?;
                    let Some(last) = d.last() else { break };
                    r.after = (last.recv_time_us, last.seq.into());
                    emit(d.into_iter().map(delta_row).collect(), sink, &mut n)?;
                }
            }
        }
        Kind::Tickers => {
            let mut after = i64::MIN;
            loop {
                let t = store
                    .tickers_page(venue, symbol, after, (win.from, win.to), PAGE)
                    .await?;
                let Some(last) = t.last() else { break };
                after = last.recv_time_us;
                emit(t.into_iter().map(ticker_row).collect(), sink, &mut n)?;
            }
        }
        Kind::Gaps => {
            let rows: Vec<Vec<Val>> = store
                .load_gaps(venue, Some(symbol))
                .await?
                .into_iter()
                .filter(|g| gap_in(g, req.from_ms, req.to_ms))
                .filter(|g| {
                    let at = g.start_ms.max(req.from_ms);
                    (at >= win.from || win.first) && at < win.to
                })
                .map(|g| {
                    vec![
                        text(g.venue),
                        text(&*g.symbol),
                        Val::Text(g.stream),
                        Val::Int(g.start_ms),
                        g.end_ms.map_or(Val::Null, Val::Int),
                        text(g.status.as_str()),
                        Val::Int(g.detected_at_ms),
                        g.resolved_at_ms.map_or(Val::Null, Val::Int),
                        Val::Int(g.rows_recovered),
                        opt_text(g.detail),
                    ]
                })
                .collect();
            if !rows.is_empty() {
                emit(rows, sink, &mut n)?;
            }
        }
    }
    Ok(n)
}

/// `--step`, else every stream of the symbol stored in the kind's table.
async fn steps(
    store: &Store,
    venue: &str,
    symbol: &str,
    kind: Kind,
    step: Option<i16>,
) -> anyhow::Result<Vec<i16>> {
    if let Some(s) = step {
        return Ok(vec![s]);
    }
    let stored = if kind == Kind::BookDeltas {
        store.stored_delta_steps(venue, symbol).await?
    } else {
        store.stored_depth_steps(venue, symbol).await?
    };
    stored
        .into_iter()
        .map(|s| i16::try_from(s).context("stored depth step out of range"))
        .collect()
}

/// A paged stream of one book stream's full books or changes, in receive order.
struct Pager<T> {
    buf: VecDeque<T>,
    done: bool,
}

impl<T> Pager<T> {
    fn new() -> Pager<T> {
        Pager {
            buf: VecDeque::new(),
            done: false,
        }
    }

    fn refill(&mut self, page: Vec<T>) {
        self.done = (page.len() as i64) < PAGE;
        self.buf.extend(page);
    }
}

/// The book being rebuilt, and until when it stands for the venue's.
struct Rebuilt {
    book: BookSnapshot,
    /// When (our clock, ms) the connection it came from closed; None: open, or unknown.
    closed_at_ms: Option<i64>,
    /// Exchange time of the first break in the stream recorded after its full book (a hole
    /// of the book stream, as `book --at` reads them): unknown from there to the next.
    broken_at_ms: Option<i64>,
}

impl Rebuilt {
    /// Until when the book stands: the recorded break, else the connection's close in
    /// exchange time (by the clock offset of the last row applied).
    fn until_ms(&self) -> i64 {
        let closed = self.closed_at_ms.map_or(i64::MAX, |c| {
            c.saturating_add(self.book.event_time_ms - self.book.recv_time_us.div_euclid(1000))
        });
        closed.min(self.broken_at_ms.unwrap_or(i64::MAX))
    }
}

/// The book at every multiple of `every` in the window (see the module comment).
#[allow(clippy::too_many_arguments)]
async fn book_grid(
    store: &Store,
    venue: &'static str,
    req: &Request,
    symbol: &str,
    step: i16,
    every: i64,
    win: Window,
    emit: &mut dyn FnMut(Vec<Vec<Val>>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let sessions = store.session_spans(venue, symbol).await?;
    // when (our clock) the connection a full book came from closed
    let closed_at = |recv_us: i64| {
        let at = recv_us.div_euclid(1000);
        sessions
            .iter()
            .rev()
            .find(|(c, d)| *c <= at && d.is_none_or(|d| at <= d))
            .and_then(|(_, d)| *d)
    };
    let stream = StreamKey::Book(step).name();
    let mut breaks: Vec<i64> = store
        .load_gaps(venue, Some(symbol))
        .await?
        .into_iter()
        .filter(|g| g.stream == stream)
        .map(|g| g.start_ms)
        .collect();
    breaks.sort_unstable();
    let mut g = align_up(win.from, every);
    // the full book in force at the first grid time, then everything received after it
    let base = store.snapshot_before(venue, symbol, step, g).await?;
    let mut snap_after = base.map_or(i64::MIN, |r| r - 1);
    let mut delta_range = DeltaRange {
        depth_step: step,
        after: (base.unwrap_or(i64::MIN), i64::MAX),
        from_ms: i64::MIN,
        to_ms: win.to,
        limit: PAGE,
    };
    let mut snaps: Pager<crate::store::figures::BookRow> = Pager::new();
    let mut deltas: Pager<BookDelta> = Pager::new();
    let mut state: Option<Rebuilt> = None;
    let mut out: Vec<Vec<Val>> = Vec::new();
    loop {
        if snaps.buf.is_empty() && !snaps.done {
            let page = store
                .book_rows_page(venue, symbol, step, snap_after, i64::MIN, win.to, PAGE)
                .await?;
            if let Some(last) = page.last() {
                snap_after = last.0;
            }
            snaps.refill(page);
        }
        if deltas.buf.is_empty() && !deltas.done {
            let page = store.deltas_page(venue, symbol, &delta_range).await?;
            if let Some(last) = page.last() {
                delta_range.after = (last.recv_time_us, last.seq.into());
            }
            deltas.refill(page);
        }
        // at one receive time the changes come first: a full book stored with them
        // already holds them
        let take_delta = match (deltas.buf.front(), snaps.buf.front()) {
            (Some(d), Some(s)) => d.recv_time_us <= s.0,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        let t = if take_delta {
            deltas.buf.front().map(|d| d.event_time_ms)
        } else {
            snaps.buf.front().map(|s| s.1)
        }
        .unwrap_or(i64::MAX);
        g = fill(&state, g, t.min(win.to), every, req, &mut out);
        if out.len() >= PAGE as usize {
            emit(std::mem::take(&mut out))?;
        }
        if take_delta {
            let Some(d) = deltas.buf.pop_front() else {
                continue;
            };
            if let Some(s) = state.as_mut() {
                crate::store::apply_delta(&mut s.book, d.side, d.price, d.qty);
                s.book.event_time_ms = d.event_time_ms;
                s.book.recv_time_us = d.recv_time_us;
            }
        } else {
            let Some((recv, event, _, bids, asks)) = snaps.buf.pop_front() else {
                continue;
            };
            state = Some(Rebuilt {
                book: BookSnapshot {
                    venue,
                    symbol: Arc::from(symbol),
                    depth_step: step,
                    event_time_ms: event,
                    recv_time_us: recv,
                    bids: crate::store::levels_from_json(&bids)?,
                    asks: crate::store::levels_from_json(&asks)?,
                },
                closed_at_ms: closed_at(recv),
                broken_at_ms: breaks.iter().copied().find(|b| *b >= event),
            });
        }
    }
    fill(&state, g, win.to, every, req, &mut out);
    if !out.is_empty() {
        emit(out)?;
    }
    Ok(())
}

/// Rows for the grid times from `g` up to (not including) `limit`; returns the next grid
/// time. Where the book is unknown the times are skipped.
fn fill(
    state: &Option<Rebuilt>,
    mut g: i64,
    limit: i64,
    every: i64,
    req: &Request,
    out: &mut Vec<Vec<Val>>,
) -> i64 {
    while g < limit {
        let Some(s) = state.as_ref().filter(|s| g < s.until_ms()) else {
            // nothing changes before the next row: jump there
            return align_up(limit, every).max(g);
        };
        let b = &s.book;
        let mut row = Vec::with_capacity(6 + 4 * req.depth);
        row.extend([
            text(b.venue),
            text(&*b.symbol),
            Val::Int(b.depth_step.into()),
            Val::Int(g),
            Val::Int(b.event_time_ms),
            Val::Int(b.recv_time_us),
        ]);
        for i in 0..req.depth {
            for side in [&b.bids, &b.asks] {
                match side.get(i) {
                    Some((p, q)) => row.extend([Val::Dec(p.clone()), Val::Dec(q.clone())]),
                    None => row.extend([Val::Null, Val::Null]),
                }
            }
        }
        out.push(row);
        g = g.saturating_add(every);
    }
    g
}

/// The first multiple of `every` at or after `t`.
fn align_up(t: i64, every: i64) -> i64 {
    let r = t.rem_euclid(every);
    if r == 0 {
        t
    } else {
        t.saturating_add(every - r)
    }
}

/// Digits of a decimal: (before the point, after it).
fn digits(d: &Dec) -> (usize, usize) {
    let s = d.as_str().trim_start_matches('-');
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let int = if int.trim_start_matches('0').is_empty() {
        0
    } else {
        int.len()
    };
    (int, frac.len())
}

/// The unscaled value of `d` at `scale` fraction digits (`scale` >= its own, digits fit).
fn unscaled(d: &Dec, scale: usize) -> Option<i128> {
    let s = d.as_str();
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > scale {
        return None;
    }
    let mut all = String::with_capacity(int.len() + scale);
    all.push_str(int);
    all.push_str(frac);
    all.extend(std::iter::repeat_n('0', scale - frac.len()));
    let v: i128 = all.parse().ok()?;
    Some(if neg { -v } else { v })
}

/// What the first Parquet pass learns of each decimal leaf: most digits before and after
/// the point.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Digits {
    int: usize,
    frac: usize,
}

/// How a decimal leaf is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DecPlan {
    Decimal {
        scale: usize,
    },
    /// Some value needs more than 38 digits at the column's scale.
    Text,
}

impl Digits {
    fn add(&mut self, d: &Dec) {
        let (i, f) = digits(d);
        self.int = self.int.max(i);
        self.frac = self.frac.max(f);
    }

    fn plan(self) -> DecPlan {
        if self.int + self.frac <= PRECISION {
            DecPlan::Decimal { scale: self.frac }
        } else {
            DecPlan::Text
        }
    }
}

/// The decimal leaves of the columns: one per decimal column, two (price, quantity) per
/// levels column; `leaf[i]` is column i's first.
fn leaves(cols: &[Col]) -> (Vec<Option<usize>>, usize) {
    let mut n = 0;
    let first = cols
        .iter()
        .map(|c| match c.ty {
            Ty::Dec | Ty::OptDec => {
                n += 1;
                Some(n - 1)
            }
            Ty::Levels => {
                n += 2;
                Some(n - 2)
            }
            _ => None,
        })
        .collect();
    (first, n)
}

/// The first Parquet pass: digits per decimal leaf, rows.
struct Measure {
    first: Vec<Option<usize>>,
    digits: Vec<Digits>,
    rows: u64,
}

impl Sink for Measure {
    fn write(&mut self, rows: Vec<Vec<Val>>) -> anyhow::Result<()> {
        for row in &rows {
            for (cell, leaf) in row.iter().zip(&self.first) {
                let Some(leaf) = *leaf else { continue };
                match cell {
                    Val::Dec(d) => self.digits[leaf].add(d),
                    Val::Levels(l) => {
                        for (p, q) in l {
                            self.digits[leaf].add(p);
                            self.digits[leaf + 1].add(q);
                        }
                    }
                    _ => {}
                }
            }
        }
        self.rows += rows.len() as u64;
        Ok(())
    }
}

/// Where CSV goes: the file, or a gzip stream over it (`.gz`), ended and synced at the end.
trait Finish: Write {
    fn finish(self) -> std::io::Result<()>;
}

impl Finish for BufWriter<File> {
    fn finish(mut self) -> std::io::Result<()> {
        self.flush()?;
        self.get_ref().sync_all()
    }
}

impl Finish for flate2::write::GzEncoder<BufWriter<File>> {
    fn finish(self) -> std::io::Result<()> {
        // the gzip trailer (CRC, length) is written here, not on drop, so its errors count
        let inner = flate2::write::GzEncoder::finish(self)?;
        Finish::finish(inner)
    }
}

/// A file sink: rows in, then the file ended and synced.
trait FileSink: Sink {
    fn finish(self: Box<Self>) -> anyhow::Result<()>;
}

struct CsvSink<W: Finish>(csv::Writer<W>);

impl<W: Finish> CsvSink<W> {
    fn new(w: W, cols: &[Col]) -> anyhow::Result<CsvSink<W>> {
        let mut w = csv::Writer::from_writer(w);
        w.write_record(cols.iter().map(|c| c.name.as_str()))?;
        Ok(CsvSink(w))
    }
}

impl<W: Finish> Sink for CsvSink<W> {
    fn write(&mut self, rows: Vec<Vec<Val>>) -> anyhow::Result<()> {
        for row in rows {
            self.0.write_record(row.iter().map(|v| match v {
                Val::Null => String::new(),
                Val::Int(i) => i.to_string(),
                Val::Bool(b) => b.to_string(),
                Val::Text(t) => t.clone(),
                Val::Dec(d) => d.to_string(),
                Val::Levels(l) => crate::store::levels_to_json(l),
            }))?;
        }
        Ok(())
    }
}

impl<W: Finish> FileSink for CsvSink<W> {
    fn finish(self: Box<Self>) -> anyhow::Result<()> {
        let inner = self.0.into_inner().map_err(|e| e.into_error())?;
        Finish::finish(inner)?;
        Ok(())
    }
}

struct ParquetSink {
    writer: SerializedFileWriter<File>,
    cols: Vec<Col>,
    first: Vec<Option<usize>>,
    plans: Vec<DecPlan>,
    buf: Vec<Vec<Val>>,
}

/// The Parquet type of a decimal leaf.
fn dec_field(name: &str, rep: &str, plan: DecPlan) -> String {
    match plan {
        DecPlan::Decimal { scale } => {
            format!("{rep} fixed_len_byte_array(16) {name} (DECIMAL({PRECISION},{scale}));")
        }
        DecPlan::Text => format!("{rep} binary {name} (STRING);"),
    }
}

/// The Parquet schema of the columns, decimals as planned.
fn parquet_schema(cols: &[Col], first: &[Option<usize>], plans: &[DecPlan]) -> String {
    let fields: Vec<String> = cols
        .iter()
        .zip(first)
        .map(|(c, leaf)| {
            let name = c.parquet_name();
            let rep = if c.optional() { "optional" } else { "required" };
            let plan = |i: usize| leaf.map_or(DecPlan::Text, |l| plans[l + i]);
            match c.ty {
                Ty::Int | Ty::OptInt => format!("{rep} int64 {name};"),
                Ty::Bool => format!("{rep} boolean {name};"),
                Ty::Text | Ty::OptText => format!("{rep} binary {name} (STRING);"),
                Ty::TimeMs | Ty::OptTimeMs | Ty::TimeUs => {
                    format!("{rep} int64 {name} (TIMESTAMP(MICROS,true));")
                }
                Ty::Dec | Ty::OptDec => dec_field(name, rep, plan(0)),
                Ty::Levels => format!(
                    "required group {name} (LIST) {{ repeated group list {{ required group element {{ {} {} }} }} }}",
                    dec_field("price", "required", plan(0)),
                    dec_field("qty", "required", plan(1)),
                ),
            }
        })
        .collect();
    format!("message mdrec_export {{ {} }}", fields.join(" "))
}

impl ParquetSink {
    fn new(
        file: File,
        cols: Vec<Col>,
        digits: &[Digits],
        meta: Vec<KeyValue>,
    ) -> anyhow::Result<ParquetSink> {
        let (first, _) = leaves(&cols);
        let plans: Vec<DecPlan> = digits.iter().map(|d| d.plan()).collect();
        let schema =
            parquet::schema::parser::parse_message_type(&parquet_schema(&cols, &first, &plans))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_created_by(concat!("mdrec ", env!("CARGO_PKG_VERSION")).into())
            .set_key_value_metadata(Some(meta))
            .build();
        Ok(ParquetSink {
            writer: SerializedFileWriter::new(file, Arc::new(schema), Arc::new(props))?,
            cols,
            first,
            plans,
            buf: Vec::new(),
        })
    }

    fn flush_group(&mut self) -> anyhow::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let mut group = self.writer.next_row_group()?;
        for (i, c) in self.cols.iter().enumerate() {
            let cells = self.buf.iter().map(|r| &r[i]);
            if c.ty == Ty::Levels {
                let leaf = self.first[i].unwrap_or(0);
                for part in 0..2 {
                    let mut col = group
                        .next_column()?
                        .context("parquet schema has fewer columns than the export")?;
                    let (mut defs, mut reps, mut vals) = (Vec::new(), Vec::new(), Vec::new());
                    for cell in cells.clone() {
                        let levels = match cell {
                            Val::Levels(l) => l.as_slice(),
                            _ => &[],
                        };
                        if levels.is_empty() {
                            defs.push(0);
                            reps.push(0);
                        }
                        for (k, (p, q)) in levels.iter().enumerate() {
                            defs.push(1);
                            reps.push(i16::from(k > 0));
                            vals.push(if part == 0 { p } else { q });
                        }
                    }
                    write_decimals(
                        &mut col,
                        self.plans[leaf + part],
                        &vals,
                        Some(&defs),
                        Some(&reps),
                    )?;
                    col.close()?;
                }
                continue;
            }
            let mut col = group
                .next_column()?
                .context("parquet schema has fewer columns than the export")?;
            let defs: Vec<i16> = cells
                .clone()
                .map(|v| i16::from(!matches!(v, Val::Null)))
                .collect();
            let defs = c.optional().then_some(defs.as_slice());
            match c.ty {
                Ty::Int | Ty::OptInt | Ty::TimeUs => {
                    let v: Vec<i64> = cells
                        .filter_map(|v| match v {
                            Val::Int(i) => Some(*i),
                            _ => None,
                        })
                        .collect();
                    col.typed::<Int64Type>().write_batch(&v, defs, None)?;
                }
                Ty::TimeMs | Ty::OptTimeMs => {
                    let mut v = Vec::with_capacity(self.buf.len());
                    for cell in cells {
                        if let Val::Int(ms) = cell {
                            v.push(ms.checked_mul(1000).with_context(|| {
                                format!("{}: {ms} ms is beyond a timestamp", c.name)
                            })?);
                        }
                    }
                    col.typed::<Int64Type>().write_batch(&v, defs, None)?;
                }
                Ty::Bool => {
                    let v: Vec<bool> = cells.map(|v| matches!(v, Val::Bool(true))).collect();
                    col.typed::<BoolType>().write_batch(&v, None, None)?;
                }
                Ty::Text | Ty::OptText => {
                    let v: Vec<ByteArray> = cells
                        .filter_map(|v| match v {
                            Val::Text(t) => Some(ByteArray::from(t.as_str())),
                            _ => None,
                        })
                        .collect();
                    col.typed::<ByteArrayType>().write_batch(&v, defs, None)?;
                }
                Ty::Dec | Ty::OptDec => {
                    let vals: Vec<&Dec> = cells
                        .filter_map(|v| match v {
                            Val::Dec(d) => Some(d),
                            _ => None,
                        })
                        .collect();
                    let plan = self.plans[self.first[i].unwrap_or(0)];
                    write_decimals(&mut col, plan, &vals, defs, None)?;
                }
                Ty::Levels => {}
            }
            col.close()?;
        }
        group.close()?;
        self.buf.clear();
        Ok(())
    }
}

fn write_decimals(
    col: &mut parquet::file::writer::SerializedColumnWriter<'_>,
    plan: DecPlan,
    vals: &[&Dec],
    defs: Option<&[i16]>,
    reps: Option<&[i16]>,
) -> anyhow::Result<()> {
    match plan {
        DecPlan::Decimal { scale } => {
            let mut v = Vec::with_capacity(vals.len());
            for d in vals {
                let n = unscaled(d, scale)
                    .with_context(|| format!("{d} does not fit DECIMAL(38,{scale})"))?;
                v.push(FixedLenByteArray::from(n.to_be_bytes().to_vec()));
            }
            col.typed::<FixedLenByteArrayType>()
                .write_batch(&v, defs, reps)?;
        }
        DecPlan::Text => {
            let v: Vec<ByteArray> = vals.iter().map(|d| ByteArray::from(d.as_str())).collect();
            col.typed::<ByteArrayType>().write_batch(&v, defs, reps)?;
        }
    }
    Ok(())
}

impl Sink for ParquetSink {
    fn write(&mut self, rows: Vec<Vec<Val>>) -> anyhow::Result<()> {
        self.buf.extend(rows);
        if self.buf.len() >= ROW_GROUP {
            self.flush_group()?;
        }
        Ok(())
    }
}

impl FileSink for ParquetSink {
    fn finish(mut self: Box<Self>) -> anyhow::Result<()> {
        self.flush_group()?;
        let file = self.writer.into_inner()?;
        file.sync_all()?;
        Ok(())
    }
}

/// The key-value metadata of a Parquet file: what it holds, from where, and how complete
/// the recording is over its window.
async fn metadata(
    store: &Store,
    venue: &'static str,
    req: &Request,
    part: &Part,
    cols: &[Col],
    digits: &[Digits],
    rows: u64,
) -> anyhow::Result<Vec<KeyValue>> {
    let (first, _) = leaves(cols);
    let mut decimals = Vec::new();
    let mut strings = Vec::new();
    for (c, leaf) in cols.iter().zip(&first) {
        let Some(leaf) = *leaf else { continue };
        let subs: &[&str] = if c.ty == Ty::Levels {
            &["price", "qty"]
        } else {
            &[""]
        };
        for (k, sub) in subs.iter().enumerate() {
            let name = if sub.is_empty() {
                c.parquet_name().to_string()
            } else {
                format!("{}.{sub}", c.parquet_name())
            };
            match digits[leaf + k].plan() {
                DecPlan::Decimal { scale } => {
                    decimals.push(format!("{name}=DECIMAL({PRECISION},{scale})"))
                }
                DecPlan::Text => strings.push(name),
            }
        }
    }
    let kv = |k: &str, v: String| KeyValue::new(format!("mdrec.{k}"), v);
    let mut meta = vec![
        kv("venue", venue.to_string()),
        kv("symbol", part.symbol.clone()),
        kv("kind", kind_name(req.kind)),
        kv("source", req.source.clone()),
        kv("rows", rows.to_string()),
        kv("decimals", decimals.join(",")),
        // decimals written as text: some value needs more than 38 digits at the column's scale
        kv("decimal_strings", strings.join(",")),
    ];
    if req.kind == Kind::Klines {
        meta.push(kv("interval", req.interval.clone()));
    }
    if let Some(every) = req.grid() {
        meta.push(kv("every_ms", every.to_string()));
        meta.push(kv("depth", req.depth.to_string()));
    }
    meta.push(kv(
        "coverage",
        coverage_json(store, venue, req, part).await?.to_string(),
    ));
    Ok(meta)
}

/// The kind as `--kind` spells it.
fn kind_name(kind: Kind) -> String {
    use clap::ValueEnum;
    kind.to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
}

/// The recorder's word on the file's window: the live share, and per stream the verdict
/// and the holes on record.
async fn coverage_json(
    store: &Store,
    venue: &'static str,
    req: &Request,
    part: &Part,
) -> anyhow::Result<serde_json::Value> {
    // an open-ended window is the recorded span
    let (from, to) = match bounds(store, venue, req, &part.symbol).await? {
        Some((lo, hi)) => (part.win.from.max(lo), part.win.to.min(hi.saturating_add(1))),
        None => (part.win.from, part.win.to),
    };
    if from >= to || from == i64::MIN || to == i64::MAX {
        return Ok(serde_json::json!({ "from": null, "to": null, "streams": [] }));
    }
    // what coverage reads, for this symbol and window only: its sockets and its holes
    let symbol = part.symbol.as_str();
    let (_, live_ms, live) = crate::coverage::live(store, venue, symbol, from, to).await?;
    let gaps: Vec<crate::model::Gap> = store
        .load_gaps(venue, Some(symbol))
        .await?
        .into_iter()
        .filter(|g| g.start_ms < to && g.end_ms.is_none_or(|e| e >= from))
        .collect();
    let mut wanted: Vec<String> = match req.kind {
        Kind::Trades => vec![StreamKey::Trades.name()],
        Kind::Klines => vec![StreamKey::Kline(Arc::from(req.interval.as_str())).name()],
        Kind::Tickers => vec![StreamKey::Ticker.name()],
        Kind::Book | Kind::BookDeltas => steps(store, venue, symbol, req.kind, req.step)
            .await?
            .into_iter()
            .map(|s| StreamKey::Book(s).name())
            .collect(),
        Kind::Gaps => {
            let mut w = vec![StreamKey::Trades.name()];
            w.extend(gaps.iter().map(|g| g.stream.clone()));
            w
        }
    };
    wanted.sort();
    wanted.dedup();
    let streams: Vec<serde_json::Value> = wanted
        .iter()
        .map(|stream| {
            let holes: Vec<&crate::model::Gap> =
                gaps.iter().filter(|g| &g.stream == stream).collect();
            // one period: the whole window (any length longer than it, aligned before it)
            let verdict = crate::coverage::verdicts(stream, from, to, 1 << 60, &live, &holes)
                .first()
                .map(|p| p.verdict);
            let holes: Vec<serde_json::Value> = holes
                .iter()
                .map(|g| {
                    serde_json::json!({
                        "start": crate::coverage::format_time(g.start_ms),
                        "end": g.end_ms.map(crate::coverage::format_time),
                        "status": g.status.as_str(),
                    })
                })
                .collect();
            serde_json::json!({ "stream": stream, "verdict": verdict, "holes": holes })
        })
        .collect();
    let share = live_ms as f64 / (to - from) as f64;
    Ok(serde_json::json!({
        "from": crate::coverage::format_time(from),
        "to": crate::coverage::format_time(to),
        "live_share": (share * 1e4).round() / 1e4,
        "streams": streams,
    }))
}

/// Writes the export: every planned file. `progress` is called with the rows written so
/// far. A hive part without rows is not written.
pub async fn export(
    store: &Store,
    venue: &'static str,
    req: &Request,
    progress: impl FnMut(u64),
) -> anyhow::Result<Vec<Written>> {
    let parts = plan(store, venue, req).await?;
    export_parts(store, venue, req, &parts, progress).await
}

/// Writes the files [`plan`] made.
pub async fn export_parts(
    store: &Store,
    venue: &'static str,
    req: &Request,
    parts: &[Part],
    mut progress: impl FnMut(u64),
) -> anyhow::Result<Vec<Written>> {
    let mut written = Vec::new();
    let mut done = 0u64;
    for part in parts {
        if let Some(parent) = part.path.parent().filter(|_| req.layout == Layout::Hive) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let tmp = partial_path(&part.path);
        let base = done;
        let mut each = |n: u64| progress(base + n);
        // whatever goes wrong from here, no half-written file is left behind
        let r = write_part(store, venue, req, part, &tmp, &mut each).await;
        match r {
            Ok(rows) => {
                done += rows;
                if rows > 0 || req.layout == Layout::File {
                    written.push(Written {
                        path: part.path.clone(),
                        rows,
                    });
                }
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        }
    }
    Ok(written)
}

/// One file: to `tmp`, then renamed to its name (a hive part without rows: nothing).
async fn write_part(
    store: &Store,
    venue: &'static str,
    req: &Request,
    part: &Part,
    tmp: &Path,
    progress: &mut dyn FnMut(u64),
) -> anyhow::Result<u64> {
    let cols = columns(req);
    let skip_empty = req.layout == Layout::Hive;
    let mut sink: Box<dyn FileSink> = match req.format {
        Format::Csv => {
            let file = File::create(tmp).with_context(|| format!("creating {}", tmp.display()))?;
            let w = BufWriter::with_capacity(1 << 20, file);
            if gzipped(&part.path) {
                let gz = flate2::write::GzEncoder::new(w, flate2::Compression::default());
                Box::new(CsvSink::new(gz, &cols)?)
            } else {
                Box::new(CsvSink::new(w, &cols)?)
            }
        }
        Format::Parquet => {
            // first pass: the digits each decimal column needs
            let (first, n) = leaves(&cols);
            let mut m = Measure {
                first,
                digits: vec![Digits::default(); n],
                rows: 0,
            };
            produce(store, venue, req, part, &mut m, &mut |_| {}).await?;
            if skip_empty && m.rows == 0 {
                return Ok(0);
            }
            let meta = metadata(store, venue, req, part, &cols, &m.digits, m.rows).await?;
            let file = File::create(tmp).with_context(|| format!("creating {}", tmp.display()))?;
            Box::new(ParquetSink::new(file, cols, &m.digits, meta)?)
        }
    };
    let rows = produce(store, venue, req, part, sink.as_mut(), progress).await?;
    sink.finish()
        .with_context(|| format!("writing {}", tmp.display()))?;
    if skip_empty && rows == 0 {
        std::fs::remove_file(tmp).with_context(|| format!("removing {}", tmp.display()))?;
        return Ok(0);
    }
    std::fs::rename(tmp, &part.path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), part.path.display()))?;
    Ok(rows)
}

/// CSV to a name ending in `.gz` is written gzip-compressed.
fn gzipped(out: &Path) -> bool {
    out.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"))
}

/// `out.partial` next to the target, so a half-written export never has the final name.
pub fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    out.with_file_name(name)
}

/// Parses a grid step: `500ms`, `1s`, `5m`, `1h` (a bare number is ms).
pub fn parse_every(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: i64 = n
        .parse()
        .map_err(|_| format!("{s:?}: expected a duration like 500ms, 1s, 5m, 1h"))?;
    let mul = match unit {
        "" | "ms" => 1,
        "s" => 1000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("{s:?}: the unit is one of ms, s, m, h")),
    };
    n.checked_mul(mul)
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("{s:?}: must be longer than 0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Dec {
        Dec::parse(s).unwrap()
    }

    #[test]
    fn unscaled_values_keep_every_digit() {
        assert_eq!(unscaled(&d("50000.5"), 8), Some(5_000_050_000_000));
        assert_eq!(unscaled(&d("-0.00000001"), 8), Some(-1));
        assert_eq!(unscaled(&d("7"), 0), Some(7));
        assert_eq!(unscaled(&d("0.123"), 2), None);
        assert_eq!(digits(&d("0.000123")), (0, 6));
        assert_eq!(digits(&d("-12345.6")), (5, 1));
    }

    #[test]
    fn a_column_beyond_38_digits_is_text() {
        let mut g = Digits::default();
        g.add(&d("21340.08795040000000001"));
        assert_eq!(g.plan(), DecPlan::Decimal { scale: 17 });
        g.add(&d("1234567890123456789012345"));
        assert_eq!(g.plan(), DecPlan::Text);
    }

    #[test]
    fn a_column_beyond_38_digits_is_written_as_text_the_rest_as_decimals() {
        use parquet::basic::{LogicalType, Type as Physical};
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let cols = vec![
            Col {
                name: "price".into(),
                ty: Ty::Dec,
            },
            Col {
                name: "qty".into(),
                ty: Ty::OptDec,
            },
        ];
        let wide = "1234567890123456789012345.123456789012345";
        let rows = vec![
            vec![Val::Dec(d(wide)), Val::Dec(d("0.5"))],
            vec![Val::Dec(d("-1.25")), Val::Null],
        ];
        let (first, n) = leaves(&cols);
        let mut m = Measure {
            first,
            digits: vec![Digits::default(); n],
            rows: 0,
        };
        m.write(rows.clone()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.parquet");
        let mut sink = Box::new(
            ParquetSink::new(File::create(&path).unwrap(), cols, &m.digits, vec![]).unwrap(),
        );
        sink.write(rows).unwrap();
        FileSink::finish(sink).unwrap();
        let r = SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
        let schema = r.metadata().file_metadata().schema_descr_ptr();
        let price = schema.column(0);
        assert_eq!(price.physical_type(), Physical::BYTE_ARRAY);
        assert_eq!(price.logical_type_ref(), Some(&LogicalType::String));
        let qty = schema.column(1);
        assert_eq!(qty.physical_type(), Physical::FIXED_LEN_BYTE_ARRAY);
        assert_eq!((qty.type_precision(), qty.type_scale()), (38, 1));
        let got: Vec<String> = r
            .get_row_iter(None)
            .unwrap()
            .map(|row| row.unwrap().get_column_iter().next().unwrap().1.to_string())
            .collect();
        assert_eq!(got, [format!("\"{wide}\""), "\"-1.25\"".to_string()]);
    }

    #[test]
    fn grid_steps_parse() {
        assert_eq!(parse_every("1s"), Ok(1000));
        assert_eq!(parse_every("250ms"), Ok(250));
        assert_eq!(parse_every("5m"), Ok(300_000));
        assert!(parse_every("0s").is_err());
        assert!(parse_every("1d").is_err());
        assert_eq!(align_up(1001, 1000), 2000);
        assert_eq!(align_up(-1, 1000), 0);
        assert_eq!(align_up(3000, 1000), 3000);
    }

    #[test]
    fn hive_paths_escape_what_a_reader_would_split_on() {
        let p = hive_dir(Path::new("/x"), "BTC_USD", 1_763_683_200_000);
        assert_eq!(p, Path::new("/x/symbol=BTC_USD/date=2025-11-21"));
        let p = hive_dir(Path::new("/x"), "A/B=C", 0);
        assert_eq!(p, Path::new("/x/symbol=A%2FB%3DC/date=1970-01-01"));
    }
}
