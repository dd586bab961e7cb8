//! Today's Crypto.com Exchange API (`cdc-exchange`) and its v2 dialect (`cdc-v2`, seed 002):
//! JSON-RPC text frames, `public/heartbeat`, channels `trade.{I}`, `book.{I}.{depth}` (with
//! `book.update` deltas chained by `u`/`pu` today, snapshots only in v2),
//! `candlestick.{tf}.{I}`, `ticker.{I}`. See `../shared/brief/PROTOCOL-NOTES.md`, "Venue 2".
//!
//! This module decodes frames and builds requests; it does no IO (the recorder does it, as
//! for every venue). Its simulator personality is `crate::sim::cdc_exchange`.

pub mod rest;
pub mod venue;
pub mod wire;

pub use venue::{CdcExchange, make_exchange, make_v2};

use std::collections::HashMap;
use std::sync::Arc;

use crate::decimal::Dec;
use crate::model::{
    BookDelta, BookSide, BookSnapshot, Event, Interval, Kline, Source, Span, StreamKey, Ticker,
};
use crate::venue::bars::OpenBars;
use crate::venue::numbers::short;
use crate::venue::validate::{Findings, Rules};
use crate::venue::{BookBreak, DecodeError, Frame, Reaction, Refusal, RefusalKind, VenueSession};

use self::wire::{
    Envelope, Push, WireBar, WireBook, WireBookUpdate, WireTicker, WireTrade, levels,
};

/// The `venue` column values.
pub const EXCHANGE: &str = "cdc-exchange";
pub const V2: &str = "cdc-v2";

/// Which of the two APIs a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Today's API (`/exchange/v1`): strings for decimals, `book.update` deltas with `u`/`pu`.
    Exchange,
    /// The seed's v2: bare numbers, snapshot-only books, 10xxx codes.
    V2,
}

impl Dialect {
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Exchange => EXCHANGE,
            Dialect::V2 => V2,
        }
    }

    /// Book depths a subscription may ask for.
    pub fn depths(self) -> &'static [i16] {
        match self {
            Dialect::Exchange => &[10, 50],
            Dialect::V2 => &[10, 150],
        }
    }

    /// Timeframes, by the exchange's names.
    pub fn timeframes(self) -> &'static [&'static str] {
        match self {
            Dialect::Exchange => &[
                "1m", "5m", "15m", "30m", "1h", "2h", "4h", "12h", "1D", "7D", "14D", "1M",
            ],
            Dialect::V2 => &[
                "1m", "5m", "15m", "30m", "1h", "4h", "6h", "12h", "1D", "7D", "14D", "1M",
            ],
        }
    }
}

/// The exchange opened in 2016 (as Monaco); nothing older is a real exchange time. Decimals:
/// 40 digits at most.
pub const RULES: Rules = Rules {
    earliest_ms: 1_451_606_400_000,
    max_ahead_ms: 300_000,
    skew_ms: 60_000,
    max_digits: 40,
};

/// What a timeframe name means (`1M` a calendar month; `7D`/`14D` fixed lengths on the
/// epoch grid).
pub fn interval(dialect: Dialect, name: &str) -> Option<Interval> {
    if !dialect.timeframes().contains(&name) {
        return None;
    }
    const MIN: i64 = 60_000;
    let ms = match name {
        "1M" => {
            return Some(Interval {
                name: Arc::from(name),
                span: Span::Months(1),
            });
        }
        "1m" => MIN,
        "5m" => 5 * MIN,
        "15m" => 15 * MIN,
        "30m" => 30 * MIN,
        "1h" => 60 * MIN,
        "2h" => 120 * MIN,
        "4h" => 240 * MIN,
        "6h" => 360 * MIN,
        "12h" => 720 * MIN,
        "1D" => 1440 * MIN,
        "7D" => 7 * 1440 * MIN,
        "14D" => 14 * 1440 * MIN,
        _ => return None,
    };
    Some(Interval::fixed(name, ms))
}

/// Instrument names as the exchange spells them: `BTC_USD`, `BTCUSD-PERP`, `BTCUSD-261225`.
pub fn check_symbol(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not an exchange instrument name like \"BTC_USD\" or \"BTCUSD-PERP\""
        ))
    }
}

/// How a book is subscribed: deltas after a snapshot (today's default) or full books.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BookUpdates {
    Delta,
    Snapshot,
}

/// `{"id":N,"method":"subscribe","params":{"channels":[...]},"nonce":ms}`; books with deltas
/// ask for `SNAPSHOT_AND_UPDATE` at the fastest frequency.
pub fn subscribe_request(
    id: u64,
    channels: &[String],
    book_updates: BookUpdates,
    nonce_ms: i64,
) -> String {
    let mut params = serde_json::json!({ "channels": channels });
    if book_updates == BookUpdates::Delta && channels.iter().any(|c| c.starts_with("book.")) {
        params["book_subscription_type"] = "SNAPSHOT_AND_UPDATE".into();
        params["book_update_frequency"] = 10.into();
    }
    serde_json::json!({"id": id, "method": "subscribe", "params": params, "nonce": nonce_ms})
        .to_string()
}

/// `{id, method: unsubscribe, params: {channels}, nonce}`.
pub fn unsubscribe_request(id: u64, channels: &[String], nonce_ms: i64) -> String {
    serde_json::json!({"id": id, "method": "unsubscribe", "params": {"channels": channels}, "nonce": nonce_ms})
        .to_string()
}

/// The answer to a heartbeat: its id copied digit for digit.
pub fn respond_heartbeat(id_text: &str) -> String {
    format!("{{\"id\":{id_text},\"method\":\"public/respond-heartbeat\"}}")
}

/// What a subscription name carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Channel<'a> {
    Trade {
        instrument: &'a str,
    },
    Book {
        instrument: &'a str,
        depth: i16,
    },
    Candlestick {
        timeframe: &'a str,
        instrument: &'a str,
    },
    Ticker {
        instrument: &'a str,
    },
}

impl<'a> Channel<'a> {
    /// Reads `trade.BTC_USD`, `book.BTC_USD.50`, `candlestick.1m.BTC_USD`, `ticker.BTC_USD`.
    pub fn parse(name: &'a str) -> Option<Channel<'a>> {
        let (kind, rest) = name.split_once('.')?;
        Some(match kind {
            "trade" => Channel::Trade { instrument: rest },
            "ticker" => Channel::Ticker { instrument: rest },
            "book" => {
                let (instrument, depth) = rest.rsplit_once('.')?;
                Channel::Book {
                    instrument,
                    depth: depth.parse().ok()?,
                }
            }
            "candlestick" => {
                let (timeframe, instrument) = rest.split_once('.')?;
                Channel::Candlestick {
                    timeframe,
                    instrument,
                }
            }
            _ => return None,
        })
    }

    pub fn instrument(&self) -> &'a str {
        match self {
            Channel::Trade { instrument }
            | Channel::Book { instrument, .. }
            | Channel::Candlestick { instrument, .. }
            | Channel::Ticker { instrument } => instrument,
        }
    }
}

/// Where one book stands on a connection.
#[derive(Debug, Clone, Copy, Default)]
struct BookState {
    /// The last update applied (`u` of the snapshot or delta); None before a snapshot.
    last_u: Option<i64>,
    last_ms: i64,
    /// Deltas are dropped until the next snapshot (a break was reported).
    broken: bool,
}

/// Decoding state of one connection.
pub struct ExchangeSession {
    dialect: Dialect,
    symbols: Vec<Arc<str>>,
    rules: Rules,
    books: HashMap<(usize, i16), BookState>,
    /// Candlesticks have no closed flag: a bar is final when a later one arrives.
    open_bars: OpenBars,
}

impl ExchangeSession {
    pub fn new(dialect: Dialect, symbols: Vec<Arc<str>>, rules: Rules) -> ExchangeSession {
        ExchangeSession {
            dialect,
            symbols,
            rules,
            books: HashMap::new(),
            open_bars: OpenBars::default(),
        }
    }
}

fn json_err(e: serde_json::Error) -> DecodeError {
    DecodeError::Json(e.to_string())
}

fn unexpected(msg: impl Into<String>) -> DecodeError {
    DecodeError::Unexpected(msg.into())
}

fn control() -> Reaction {
    Reaction {
        control: true,
        ..Reaction::default()
    }
}

/// What an error code says about the request it answers: today's codes and v2's.
pub fn refusal_kind(code: i64) -> RefusalKind {
    match code {
        42901 | 10006 => RefusalKind::RateLimited,
        40107 => RefusalKind::TooManyStreams,
        // bad request, bad argument, unknown method (docs 40002, wire 40003); v2's 10xxx
        40001..=40006 | 10001..=10005 | 10008 => RefusalKind::BadRequest,
        _ => RefusalKind::Other,
    }
}

/// The stream a channel name opens, for a symbol this connection carries.
pub fn stream_of(symbols: &[Arc<str>], name: &str) -> Option<(Arc<str>, StreamKey)> {
    let ch = Channel::parse(name)?;
    let symbol = symbols.iter().find(|s| ***s == *ch.instrument())?.clone();
    let key = match ch {
        Channel::Trade { .. } => StreamKey::Trades,
        Channel::Book { depth, .. } => StreamKey::Book(depth),
        Channel::Candlestick { timeframe, .. } => StreamKey::Kline(Arc::from(timeframe)),
        Channel::Ticker { .. } => StreamKey::Ticker,
    };
    Some((symbol, key))
}

impl ExchangeSession {
    fn refusal(&self, env: &Envelope<'_>, code: i64, method: &str) -> Refusal {
        // requests without an id are answered with -1 (today) or 0 (v2): none of ours
        let request = env
            .id
            .and_then(|r| r.get().parse::<u64>().ok())
            .filter(|&id| id > 0);
        let channel = env.channel.as_deref();
        let streams = channel
            .and_then(|c| stream_of(&self.symbols, c))
            .into_iter()
            .collect();
        Refusal {
            request,
            streams,
            kind: refusal_kind(code),
            detail: format!(
                "venue error {code} on {} request {}: {}{}",
                if method.is_empty() {
                    "a".into()
                } else {
                    short(method)
                },
                env.id.map_or("-", |r| r.get()),
                env.message.as_deref().map(short).unwrap_or_default(),
                channel
                    .map(|c| format!(" (channel {})", short(c)))
                    .unwrap_or_default()
            ),
        }
    }
}

impl VenueSession for ExchangeSession {
    fn on_frame(
        &mut self,
        frame: Frame<'_>,
        recv_time_us: i64,
        out: &mut Vec<Event>,
    ) -> Result<Reaction, DecodeError> {
        let bytes = match frame {
            Frame::Text(t) => t.as_bytes(),
            // the exchange sends text; a binary frame is read as the same JSON
            Frame::Binary(b) => b,
        };
        let env: Envelope = serde_json::from_slice(bytes).map_err(json_err)?;
        let method = env.method.as_deref().unwrap_or("");
        if method == "public/heartbeat" {
            let id = env
                .id
                .map(|r| r.get())
                .ok_or_else(|| unexpected("heartbeat without id"))?;
            return Ok(Reaction {
                reply: Some(respond_heartbeat(id)),
                control: true,
                ..Reaction::default()
            });
        }
        if method == "public/respond-heartbeat" {
            return Err(unexpected("a client's heartbeat answer echoed back"));
        }
        let code = env.code.map_or(0, |c| c.0);
        if code != 0 {
            return Ok(Reaction {
                control: true,
                refusals: vec![self.refusal(&env, code, method)],
                ..Reaction::default()
            });
        }
        let Some(push) = env.result else {
            // acks: a bare `{id, method, code:0[, channel]}` per request or per book channel
            return match method {
                "subscribe" | "unsubscribe" if env.code.is_some() => Ok(control()),
                _ => Err(unexpected(format!(
                    "frame without result (method {:?})",
                    short(method)
                ))),
            };
        };
        let Some(data) = push.data.filter(|d| d.get() != "null") else {
            return Ok(control()); // a reply without rows
        };
        let mut n = Normalizer {
            s: self,
            recv_time_us,
            findings: Findings::default(),
            breaks: Vec::new(),
            alive: Vec::new(),
        };
        n.push(&push, data, out)?;
        let (findings, breaks, alive) = (n.findings, n.breaks, n.alive);
        Ok(Reaction {
            findings,
            breaks,
            control: !alive.is_empty() && out.is_empty(),
            alive,
            ..Reaction::default()
        })
    }
}

struct Normalizer<'s> {
    s: &'s mut ExchangeSession,
    recv_time_us: i64,
    findings: Findings,
    breaks: Vec<BookBreak>,
    /// Streams the frame proved alive without rows (an idle book's empty delta).
    alive: Vec<(Arc<str>, StreamKey)>,
}

impl Normalizer<'_> {
    /// Passes `ev` on if it is valid; false: dropped (counted).
    fn emit(&mut self, ev: Event, out: &mut Vec<Event>) -> bool {
        let ok = self.admit(&ev);
        if ok {
            out.push(ev);
        }
        ok
    }

    fn admit(&mut self, ev: &Event) -> bool {
        self.findings
            .admit(&self.s.rules, ev, self.recv_time_us / 1000)
    }

    fn push(
        &mut self,
        push: &Push<'_>,
        data: &serde_json::value::RawValue,
        out: &mut Vec<Event>,
    ) -> Result<(), DecodeError> {
        let sub = push
            .subscription
            .as_deref()
            .ok_or_else(|| unexpected("push without subscription"))?;
        let ch = Channel::parse(sub)
            .ok_or_else(|| unexpected(format!("channel {:?} not recorded", short(sub))))?;
        let at = self
            .s
            .symbols
            .iter()
            .position(|s| **s == *ch.instrument())
            .ok_or_else(|| {
                unexpected(format!(
                    "{} is not subscribed on this connection",
                    short(sub)
                ))
            })?;
        let kind = push.channel.as_deref().unwrap_or("");
        match ch {
            Channel::Trade { .. } => self.trades(at, data, out),
            Channel::Book { depth, .. } if kind == "book.update" => {
                self.book_update(at, depth, data, out)
            }
            Channel::Book { depth, .. } => self.book(at, depth, data, out),
            Channel::Candlestick { timeframe, .. } => self.bars(at, timeframe, data, out),
            Channel::Ticker { .. } => self.ticker(at, data, out),
        }
    }

    fn trades(
        &mut self,
        at: usize,
        data: &serde_json::value::RawValue,
        out: &mut Vec<Event>,
    ) -> Result<(), DecodeError> {
        let rows: Vec<WireTrade> = serde_json::from_str(data.get()).map_err(json_err)?;
        let symbol = self.s.symbols[at].clone();
        let mut trades = Vec::with_capacity(rows.len());
        for t in rows {
            let t = t
                .into_trade(
                    self.s.dialect.name(),
                    &symbol,
                    self.recv_time_us,
                    Source::Ws,
                )
                .map_err(unexpected)?;
            trades.push(t);
        }
        // newest first on the wire: stored oldest first
        trades.sort_by_key(|t| (t.event_time_ms, t.trade_id));
        for t in trades {
            self.emit(Event::Trade(t), out);
        }
        Ok(())
    }

    fn book(
        &mut self,
        at: usize,
        depth: i16,
        data: &serde_json::value::RawValue,
        out: &mut Vec<Event>,
    ) -> Result<(), DecodeError> {
        let rows: Vec<WireBook> = serde_json::from_str(data.get()).map_err(json_err)?;
        for b in rows {
            let snap = BookSnapshot {
                venue: self.s.dialect.name(),
                symbol: self.s.symbols[at].clone(),
                depth_step: depth,
                event_time_ms: b.t.0,
                recv_time_us: self.recv_time_us,
                bids: levels(b.bids),
                asks: levels(b.asks),
            };
            // a full book makes the stream whole again
            self.s.books.insert(
                (at, depth),
                BookState {
                    last_u: b.u.map(|u| u.0),
                    last_ms: b.t.0,
                    broken: false,
                },
            );
            self.emit(Event::BookSnapshot(snap), out);
        }
        Ok(())
    }

    fn book_update(
        &mut self,
        at: usize,
        depth: i16,
        data: &serde_json::value::RawValue,
        out: &mut Vec<Event>,
    ) -> Result<(), DecodeError> {
        let rows: Vec<WireBookUpdate> = serde_json::from_str(data.get()).map_err(json_err)?;
        for d in rows {
            let state = self.s.books.entry((at, depth)).or_default();
            if state.broken {
                continue; // waiting for the snapshot the re-sync brings
            }
            let Some(pu) = d.pu else {
                return Err(unexpected(
                    "book.update without pu cannot be chained (waiting for a full book)",
                ));
            };
            let chained = state.last_u.is_some_and(|u| u == pu.0);
            if !chained {
                let detail = match state.last_u {
                    Some(u) => format!(
                        "update {} follows {}, the last applied was {u}",
                        d.u.0, pu.0
                    ),
                    None => format!("update {} before any full book", d.u.0),
                };
                let last_ms = if state.last_u.is_some() {
                    state.last_ms
                } else {
                    d.t.0
                };
                state.broken = true;
                self.breaks.push(BookBreak {
                    symbol: self.s.symbols[at].clone(),
                    depth_step: depth,
                    last_ms,
                    at_ms: d.t.0,
                    detail,
                    resync: Vec::new(),
                });
                continue;
            }
            state.last_u = Some(d.u.0);
            state.last_ms = d.t.0;
            if d.update.bids.is_empty() && d.update.asks.is_empty() {
                // an idle book's heartbeat
                self.alive
                    .push((self.s.symbols[at].clone(), StreamKey::Book(depth)));
                continue;
            }
            let changes = levels(d.update.bids)
                .into_iter()
                .map(|l| (BookSide::Bid, l))
                .chain(
                    levels(d.update.asks)
                        .into_iter()
                        .map(|l| (BookSide::Ask, l)),
                );
            for (seq, (side, (price, qty))) in changes.enumerate() {
                let delta = BookDelta {
                    venue: self.s.dialect.name(),
                    symbol: self.s.symbols[at].clone(),
                    depth_step: depth,
                    event_time_ms: d.t.0,
                    recv_time_us: self.recv_time_us,
                    seq: seq as i32,
                    side,
                    price,
                    qty,
                    update_id: Some(d.u.0),
                    prev_update_id: Some(pu.0),
                };
                self.emit(Event::BookDelta(delta), out);
            }
        }
        Ok(())
    }

    fn bars(
        &mut self,
        at: usize,
        timeframe: &str,
        data: &serde_json::value::RawValue,
        out: &mut Vec<Event>,
    ) -> Result<(), DecodeError> {
        let mut rows: Vec<WireBar> = serde_json::from_str(data.get()).map_err(json_err)?;
        rows.sort_by_key(|b| b.t.0);
        let interval: Arc<str> = Arc::from(timeframe);
        for b in rows {
            let k = Kline {
                venue: self.s.dialect.name(),
                symbol: self.s.symbols[at].clone(),
                interval: interval.clone(),
                open_time_ms: b.t.0,
                open: b.o.0,
                high: b.h.0,
                low: b.l.0,
                close: b.c.0,
                volume: b.v.0,
                quote_volume: None,
                closed: false,
                event_time_ms: b.ut.map_or(b.t.0, |u| u.0),
                recv_time_us: self.recv_time_us,
                source: Source::Ws,
            };
            let recv_ms = self.recv_time_us / 1000;
            let (s, findings) = (&mut *self.s, &mut self.findings);
            s.open_bars
                .push(at, k, |ev| findings.admit(&s.rules, ev, recv_ms), out);
        }
        Ok(())
    }

    fn ticker(
        &mut self,
        at: usize,
        data: &serde_json::value::RawValue,
        out: &mut Vec<Event>,
    ) -> Result<(), DecodeError> {
        let rows: Vec<WireTicker> = serde_json::from_str(data.get()).map_err(json_err)?;
        let d = |n: Option<crate::venue::numbers::Num>| -> Option<Dec> { n.map(|x| x.0) };
        for t in rows {
            let tick = Ticker {
                venue: self.s.dialect.name(),
                symbol: self.s.symbols[at].clone(),
                event_time_ms: t.t.0,
                recv_time_us: self.recv_time_us,
                open: None,
                high: d(t.h),
                low: d(t.l),
                close: d(t.a),
                volume: d(t.v),
                quote_volume: d(t.vv),
                change: d(t.c),
                bid: d(t.b),
                bid_qty: d(t.bs),
                ask: d(t.k),
                ask_qty: d(t.ks),
            };
            self.emit(Event::Ticker(tick), out);
        }
        Ok(())
    }
}
