//! An export's columns and cells, the rows of each table as cells, and where rows go.

use super::request::{Kind, Layout, Request};
use crate::decimal::Dec;
use crate::model::{BookDelta, Gap, Kline, Ticker, Trade};

/// Rows read per database round trip.
pub(super) const PAGE: i64 = 20_000;

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
    OptTimeUs,
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
            Ty::TimeUs | Ty::OptTimeUs => self.name.strip_suffix("_us").unwrap_or(&self.name),
            _ => &self.name,
        }
    }

    pub(super) fn optional(&self) -> bool {
        matches!(
            self.ty,
            Ty::OptInt | Ty::OptText | Ty::OptDec | Ty::OptTimeMs | Ty::OptTimeUs
        )
    }
}

pub(super) fn cols(list: &[(&str, Ty)]) -> Vec<Col> {
    list.iter()
        .map(|(n, ty)| Col {
            name: n.to_string(),
            ty: *ty,
        })
        .collect()
}

/// The columns of an export, in order. In a hive layout the symbol is the directory's key
/// (`symbol=...`), not a column: readers take it from the path, and a column of the same
/// name would clash with it.
pub fn columns(req: &Request) -> Vec<Col> {
    let mut cols = all_columns(req);
    if let Some(i) = hive_key(req) {
        cols.remove(i);
    }
    cols
}

/// Where the symbol column is among the rows' cells when the layout leaves it out.
pub(super) fn hive_key(req: &Request) -> Option<usize> {
    if req.layout != Layout::Hive {
        return None;
    }
    all_columns(req).iter().position(|c| c.name == "symbol")
}

/// Every column the rows carry.
fn all_columns(req: &Request) -> Vec<Col> {
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
            ("bid", OptDec),
            ("bid_qty", OptDec),
            ("ask", OptDec),
            ("ask_qty", OptDec),
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

pub(super) fn text(s: impl ToString) -> Val {
    Val::Text(s.to_string())
}

pub(super) fn opt_text(s: Option<impl ToString>) -> Val {
    s.map_or(Val::Null, text)
}

pub(super) fn opt_dec(d: Option<Dec>) -> Val {
    d.map_or(Val::Null, Val::Dec)
}

pub(super) fn trade_row(t: Trade) -> Vec<Val> {
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

pub(super) fn kline_row(k: Kline) -> Vec<Val> {
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

pub(super) fn delta_row(d: BookDelta) -> Vec<Val> {
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

pub(super) fn ticker_row(t: Ticker) -> Vec<Val> {
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
        opt_dec(t.bid),
        opt_dec(t.bid_qty),
        opt_dec(t.ask),
        opt_dec(t.ask_qty),
    ]
}

pub(super) fn gap_row(g: Gap) -> Vec<Val> {
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
}

/// Where rows go: a file being written, or the digit count of the first Parquet pass.
pub(crate) trait Sink {
    fn write(&mut self, rows: Vec<Vec<Val>>) -> anyhow::Result<()>;
}

/// A file sink: rows in, then the file ended and synced.
pub(super) trait FileSink: Sink {
    fn finish(self: Box<Self>) -> anyhow::Result<()>;
}
