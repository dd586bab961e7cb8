//! Crypto.com Exchange v1 "kline-api" protocol (and its white-label CHAINUP relatives).
//!
//! Server frames are gzip members in binary frames (sometimes zlib, sometimes plain text);
//! client frames are plain JSON text. See `../shared/brief/PROTOCOL-NOTES.md` for the rules
//! followed where servers disagree with the docs.

pub mod channel;
pub mod inflate;
pub mod rest;
pub mod wire;

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::value::RawValue;

use self::channel::{Channel, Stream};
use self::inflate::Inflater;
use self::wire::{Envelope, Int, Num, TradeTick, WireBook, WireKline, WireTicker, WireTrade};
use crate::config::{DepthSetting, RecordConfig};
use crate::decimal::Dec;
use crate::model::{
    BookDelta, BookSide, BookSnapshot, Event, Kline, Side, Source, StreamKey, Ticker, Trade,
};
use crate::venue::validate::{Findings, Rules, Verdict};
use crate::venue::{
    ConnectionPlan, DecodeError, Frame, Reaction, SocketLimits, Subscription, Venue, VenueSession,
};

pub const NAME: &str = "cdc-v1";

/// v1's limits: no exchange time before 2010 (the protocol family's servers started later;
/// this catches 0, -1 and seconds read as milliseconds); prices and amounts carry at most
/// 40 digits (live servers pad to 16 decimals; 28-digit prices are seen).
pub const RULES: Rules = Rules {
    earliest_ms: 1_262_304_000_000,
    max_ahead_ms: 300_000,
    skew_ms: 60_000,
    max_digits: 40,
};

pub struct CdcV1;

/// The channels a worker subscribes to for one symbol.
pub fn channels(symbol: &str, record: &RecordConfig) -> Vec<Channel> {
    let mut out = Vec::new();
    if record.trades {
        out.push(Channel::new(symbol, Stream::Trades));
    }
    for iv in &record.klines {
        out.push(Channel::new(symbol, Stream::Kline(iv.clone())));
    }
    if let DepthSetting::Step(n) = record.depth {
        out.push(Channel::new(symbol, Stream::Depth(n)));
    }
    if record.ticker {
        out.push(Channel::new(symbol, Stream::Ticker));
    }
    out
}

/// The neutral stream a v1 channel carries.
fn stream_key(c: &Channel) -> StreamKey {
    match &c.stream {
        Stream::Trades => StreamKey::Trades,
        Stream::Kline(iv) => StreamKey::Kline(Arc::from(iv.as_str())),
        Stream::Depth(n) => StreamKey::Book(*n as i16),
        Stream::Ticker => StreamKey::Ticker,
    }
}

/// `{"event":"sub","params":{"channel":...,"cb_id":...}}`, with book sizes for depth.
pub fn sub_request(channel: &Channel, depth_levels: u32) -> String {
    let name = channel.name();
    let v = match channel.stream {
        Stream::Depth(_) => serde_json::json!({"event": "sub", "params": {
            "channel": name, "cb_id": channel.symbol, "asks": depth_levels, "bids": depth_levels}}),
        _ => {
            serde_json::json!({"event": "sub", "params": {"channel": name, "cb_id": channel.symbol}})
        }
    };
    v.to_string()
}

/// `{"event":"req","params":{"channel":...,"cb_id":...,"since":"<seconds>"}}`: bars after `since`.
pub fn kline_history_request(channel: &Channel, cb_id: &str, since_s: i64) -> String {
    serde_json::json!({"event": "req", "params": {
        "channel": channel.name(), "cb_id": cb_id, "since": since_s.to_string()}})
    .to_string()
}

impl Venue for CdcV1 {
    fn name(&self) -> &'static str {
        NAME
    }

    fn streams(&self, symbol: &str, record: &RecordConfig) -> Vec<StreamKey> {
        channels(symbol, record).iter().map(stream_key).collect()
    }

    fn socket_limits(&self) -> SocketLimits {
        // a v1 socket carries one symbol (`cb_id` names it, the server keys by it)
        SocketLimits::ONE_SYMBOL
    }

    fn subscribe_frames(&self, conn: &ConnectionPlan, record: &RecordConfig) -> Vec<Subscription> {
        conn.symbols
            .iter()
            .flat_map(|symbol| {
                channels(symbol, record).into_iter().map(|c| Subscription {
                    frame: sub_request(&c, record.depth_levels),
                    streams: vec![(symbol.clone(), stream_key(&c))],
                })
            })
            .collect()
    }

    fn markets_path(&self) -> &'static str {
        "/v1/symbols"
    }

    fn parse_markets(&self, body: &str, now_ms: i64) -> Result<Vec<crate::model::Market>, String> {
        let list = rest::parse_symbols(body).map_err(|e| e.to_string())?;
        Ok(list
            .into_iter()
            .map(|s| crate::model::Market {
                venue: NAME,
                symbol: Arc::from(s.symbol.as_str()),
                base: s.base_coin,
                quote: s.count_coin,
                price_precision: s.price_precision.and_then(|p| i32::try_from(p.0).ok()),
                qty_precision: s.amount_precision.and_then(|p| i32::try_from(p.0).ok()),
                updated_at_ms: now_ms,
            })
            .collect())
    }

    fn recent_trades_path(&self, symbol: &str) -> String {
        format!("/v1/trades?symbol={symbol}")
    }

    fn parse_recent_trades(
        &self,
        body: &str,
        symbol: &Arc<str>,
        recv_time_us: i64,
    ) -> Result<Vec<Trade>, String> {
        rest::parse_trades(body, symbol, recv_time_us).map_err(|e| e.to_string())
    }

    fn recent_trades_limit(&self) -> usize {
        200
    }

    fn klines_path(&self, symbol: &str, interval: &str) -> Option<String> {
        let p = rest::kline_period_minutes(interval)?;
        Some(format!("/v1/klines?symbol={symbol}&period={p}"))
    }

    fn parse_klines(
        &self,
        body: &str,
        symbol: &Arc<str>,
        interval: &Arc<str>,
        recv_time_us: i64,
    ) -> Result<Vec<Kline>, String> {
        rest::parse_klines(body, symbol, interval, recv_time_us).map_err(|e| e.to_string())
    }

    fn kline_history_request(&self, symbol: &str, interval: &str, since_ms: i64) -> Option<String> {
        let ch = Channel::parse(&format!("market_{symbol}_kline_{interval}"))?;
        // `since` is in seconds; round down so the bar starting at `since_ms` is included
        Some(kline_history_request(
            &ch,
            "history",
            since_ms.div_euclid(1000),
        ))
    }

    fn rules(&self) -> Rules {
        RULES
    }

    fn session(
        &self,
        symbols: &[Arc<str>],
        max_frame_bytes: usize,
        rules: Rules,
    ) -> Box<dyn VenueSession> {
        Box::new(CdcSession::for_symbols(symbols.to_vec(), max_frame_bytes).with_rules(rules))
    }
}

/// Decoding state of one connection.
pub struct CdcSession {
    /// The symbols the connection subscribed (a channel of another is unexpected).
    symbols: Vec<Arc<str>>,
    rules: Rules,
    inflater: Inflater,
    /// Per symbol, the latest bar per interval: the venue has no closed flag, a bar is final
    /// when a later bar arrives, and then we emit it once more with `closed = true`.
    open_bars: Vec<HashMap<String, Kline>>,
}

impl CdcSession {
    pub fn new(symbol: Arc<str>, max_frame_bytes: usize) -> CdcSession {
        CdcSession::for_symbols(vec![symbol], max_frame_bytes)
    }

    /// A connection carrying several symbols (each channel names its symbol).
    pub fn for_symbols(symbols: Vec<Arc<str>>, max_frame_bytes: usize) -> CdcSession {
        CdcSession {
            open_bars: symbols.iter().map(|_| HashMap::new()).collect(),
            symbols,
            rules: RULES,
            inflater: Inflater::new(max_frame_bytes),
        }
    }

    pub fn with_rules(mut self, rules: Rules) -> CdcSession {
        self.rules = rules;
        self
    }
}

impl VenueSession for CdcSession {
    fn on_frame(
        &mut self,
        frame: Frame<'_>,
        recv_time_us: i64,
        out: &mut Vec<Event>,
    ) -> Result<Reaction, DecodeError> {
        let json = match frame {
            Frame::Text(t) => t.as_bytes(),
            Frame::Binary(b) => self.inflater.inflate(b)?,
        };
        let mut ctx = Normalizer {
            symbols: &self.symbols,
            at: 0,
            recv_time_us,
            open_bars: &mut self.open_bars,
            rules: &self.rules,
            findings: Findings::default(),
        };
        let mut r = ctx.message(json, out)?;
        r.findings = ctx.findings;
        Ok(r)
    }
}

struct Normalizer<'s> {
    symbols: &'s [Arc<str>],
    /// The message's symbol, as an index into `symbols` (and `open_bars`).
    at: usize,
    recv_time_us: i64,
    open_bars: &'s mut [HashMap<String, Kline>],
    rules: &'s Rules,
    findings: Findings,
}

fn json_err(e: serde_json::Error) -> DecodeError {
    DecodeError::Json(e.to_string())
}

fn unexpected(msg: impl Into<String>) -> DecodeError {
    DecodeError::Unexpected(msg.into())
}

/// Present and not JSON `null`.
fn non_null(v: Option<&RawValue>) -> Option<&RawValue> {
    v.filter(|r| r.get() != "null")
}

/// Venue timestamps are milliseconds on most servers, whole seconds on some.
pub fn to_ms(t: i64) -> i64 {
    // unsigned_abs: `abs` overflows on i64::MIN, which a hostile venue can send
    if t.unsigned_abs() < 100_000_000_000 {
        t * 1000
    } else {
        t
    }
}

impl Normalizer<'_> {
    /// Validates an event; true when it may be emitted (invalid ones are only counted).
    fn valid(&mut self, ev: &Event) -> bool {
        match self.rules.check(ev, self.recv_time_us / 1000) {
            Verdict::Valid => true,
            Verdict::Skewed => {
                self.findings.skewed += 1;
                true
            }
            Verdict::Invalid(kind) => {
                self.findings.invalid[kind.index()] += 1;
                self.findings.first.get_or_insert(kind);
                false
            }
        }
    }

    fn emit(&mut self, ev: Event, out: &mut Vec<Event>) {
        if self.valid(&ev) {
            out.push(ev);
        }
    }

    fn message(&mut self, json: &[u8], out: &mut Vec<Event>) -> Result<Reaction, DecodeError> {
        let env: Envelope = serde_json::from_slice(json).map_err(json_err)?;
        if let Some(n) = env.ping {
            // echo the value exactly as received (seconds or milliseconds, number or string)
            return Ok(Reaction {
                reply: Some(format!("{{\"pong\":{}}}", n.get())),
                control: true,
                ..Reaction::default()
            });
        }
        if env.pong.is_some() {
            return Ok(control());
        }
        if let Some(ev) = env.event {
            return Err(unexpected(format!("server echoed a client event {ev:?}")));
        }
        let tick = non_null(env.tick);
        let data = non_null(env.data);
        let Some(name) = env.channel else {
            return Err(unexpected(if tick.is_some() || data.is_some() {
                "market data without a channel"
            } else {
                "message without channel"
            }));
        };
        if name == "review" {
            return Ok(control());
        }
        let ch =
            Channel::parse(&name).ok_or_else(|| unexpected(format!("unknown channel {name:?}")))?;
        self.at = self
            .symbols
            .iter()
            .position(|s| **s == *ch.symbol)
            .ok_or_else(|| {
                unexpected(format!(
                    "channel {name:?} on the {} connection",
                    self.symbols.join(",")
                ))
            })?;
        let payload = match (tick, data) {
            (Some(t), _) => Payload::Tick(t),
            (None, Some(d)) => Payload::Reply(d),
            (None, None) => {
                if let Some(s) = env.status.as_deref()
                    && !s.eq_ignore_ascii_case("ok")
                {
                    return Err(unexpected(format!(
                        "channel {name:?} answered status {s:?}"
                    )));
                }
                return Ok(control()); // subscription ack
            }
        };
        let event_ms = env
            .ts
            .map(|t| to_ms(t.0))
            .unwrap_or(self.recv_time_us / 1000);
        match ch.stream {
            Stream::Trades => self.trades(payload, event_ms, out)?,
            Stream::Kline(iv) => self.klines(&iv, payload, event_ms, out)?,
            Stream::Depth(step) => self.depth(step, payload, event_ms, out)?,
            Stream::Ticker => self.ticker(payload, event_ms, out)?,
        }
        Ok(Reaction::default())
    }

    fn trades(
        &mut self,
        p: Payload<'_>,
        event_ms: i64,
        out: &mut Vec<Event>,
    ) -> Result<(), DecodeError> {
        let (items, tick_ts): (Vec<WireTrade<'_>>, Option<Int>) = match p {
            Payload::Tick(t) => {
                let tick: TradeTick = serde_json::from_str(t.get()).map_err(json_err)?;
                (tick.data, tick.ts)
            }
            Payload::Reply(d) => (serde_json::from_str(d.get()).map_err(json_err)?, None),
        };
        let mut seen: HashMap<(i64, Dec, Dec, Side), u32> = HashMap::new();
        // newest first on the wire: store oldest first
        for t in items.into_iter().rev() {
            let side = Side::parse(&t.side)
                .ok_or_else(|| unexpected(format!("trade side {:?}", wire::short(&t.side))))?;
            let time_ms = t.ts.or(tick_ts).map(|x| to_ms(x.0)).unwrap_or(event_ms);
            let trade_id = match t.id {
                Some(Int(id)) => id,
                None => {
                    let k = (time_ms, t.price.0.clone(), t.vol.0.clone(), side);
                    let n = seen.entry(k).or_insert(0);
                    *n += 1;
                    synthetic_trade_id(time_ms, &t.price.0, &t.vol.0, side, *n)
                }
            };
            let trade = Event::Trade(Trade {
                venue: NAME,
                symbol: self.symbols[self.at].clone(),
                trade_id,
                side,
                price: t.price.0,
                qty: t.vol.0,
                quote_qty: t.amount.map(|a| a.0),
                event_time_ms: time_ms,
                recv_time_us: self.recv_time_us,
                source: Source::Ws,
            });
            self.emit(trade, out);
        }
        Ok(())
    }

    fn klines(
        &mut self,
        interval: &str,
        p: Payload<'_>,
        event_ms: i64,
        out: &mut Vec<Event>,
    ) -> Result<(), DecodeError> {
        let mut bars: Vec<WireKline> = match p {
            Payload::Tick(t) => vec![serde_json::from_str(t.get()).map_err(json_err)?],
            Payload::Reply(d) => serde_json::from_str(d.get()).map_err(json_err)?,
        };
        bars.sort_by_key(|b| b.id.0);
        let iv: Arc<str> = Arc::from(interval);
        for b in bars {
            let k = Kline {
                venue: NAME,
                symbol: self.symbols[self.at].clone(),
                interval: iv.clone(),
                open_time_ms: to_ms(b.id.0),
                open: b.open.0,
                high: b.high.0,
                low: b.low.0,
                close: b.close.0,
                volume: b.vol.0,
                quote_volume: b.amount.map(|a| a.0),
                closed: false,
                event_time_ms: event_ms,
                recv_time_us: self.recv_time_us,
                source: Source::Ws,
            };
            // before the bar can become this connection's open bar
            let k = Event::Kline(k);
            if self.valid(&k)
                && let Event::Kline(k) = k
            {
                self.push_bar(k, out);
            }
        }
        Ok(())
    }

    fn push_bar(&mut self, mut k: Kline, out: &mut Vec<Event>) {
        match self.open_bars[self.at].get_mut(&*k.interval) {
            Some(last) if last.open_time_ms < k.open_time_ms => {
                let mut done = std::mem::replace(last, k.clone());
                done.closed = true;
                out.push(Event::Kline(done));
                out.push(Event::Kline(k));
            }
            Some(last) if last.open_time_ms > k.open_time_ms => {
                k.closed = true; // an older bar (history reply): final
                out.push(Event::Kline(k));
            }
            Some(last) => {
                *last = k.clone();
                out.push(Event::Kline(k));
            }
            None => {
                self.open_bars[self.at].insert(k.interval.to_string(), k.clone());
                out.push(Event::Kline(k));
            }
        }
    }

    fn depth(
        &mut self,
        step: u8,
        p: Payload<'_>,
        event_ms: i64,
        out: &mut Vec<Event>,
    ) -> Result<(), DecodeError> {
        #[derive(serde::Deserialize)]
        struct DepthTick<'a> {
            #[serde(default)]
            asks: Option<Vec<(Num, Num)>>,
            #[serde(default, alias = "bids")]
            buys: Option<Vec<(Num, Num)>>,
            #[serde(borrow, default)]
            side: Option<std::borrow::Cow<'a, str>>,
            #[serde(default)]
            price: Option<Num>,
            #[serde(default)]
            volume: Option<Num>,
        }
        let raw = match p {
            Payload::Tick(t) | Payload::Reply(t) => t,
        };
        let t: DepthTick = serde_json::from_str(raw.get()).map_err(json_err)?;
        let step = step as i16;
        match t {
            DepthTick {
                side: Some(side),
                price: Some(price),
                volume: Some(volume),
                ..
            } => {
                let side = match &*side {
                    s if s.eq_ignore_ascii_case("asks") || s.eq_ignore_ascii_case("ask") => {
                        BookSide::Ask
                    }
                    s if s.eq_ignore_ascii_case("buys")
                        || s.eq_ignore_ascii_case("bids")
                        || s.eq_ignore_ascii_case("bid") =>
                    {
                        BookSide::Bid
                    }
                    other => return Err(unexpected(format!("book side {:?}", wire::short(other)))),
                };
                let delta = Event::BookDelta(BookDelta {
                    venue: NAME,
                    symbol: self.symbols[self.at].clone(),
                    depth_step: step,
                    event_time_ms: event_ms,
                    recv_time_us: self.recv_time_us,
                    seq: 0,
                    side,
                    price: price.0,
                    qty: volume.0,
                });
                self.emit(delta, out);
            }
            DepthTick {
                asks: None,
                buys: None,
                ..
            } => {
                return Err(unexpected("depth tick with neither a book nor a change"));
            }
            DepthTick { asks, buys, .. } => {
                let book = WireBook {
                    asks: asks.unwrap_or_default(),
                    buys: buys.unwrap_or_default(),
                };
                let levels = |v: Vec<(Num, Num)>| v.into_iter().map(|(p, q)| (p.0, q.0)).collect();
                let snapshot = Event::BookSnapshot(BookSnapshot {
                    venue: NAME,
                    symbol: self.symbols[self.at].clone(),
                    depth_step: step,
                    event_time_ms: event_ms,
                    recv_time_us: self.recv_time_us,
                    bids: levels(book.buys),
                    asks: levels(book.asks),
                });
                self.emit(snapshot, out);
            }
        }
        Ok(())
    }

    fn ticker(
        &mut self,
        p: Payload<'_>,
        event_ms: i64,
        out: &mut Vec<Event>,
    ) -> Result<(), DecodeError> {
        let raw = match p {
            Payload::Tick(t) => t,
            Payload::Reply(_) => return Err(unexpected("ticker reply without tick")),
        };
        let t: WireTicker = serde_json::from_str(raw.get()).map_err(json_err)?;
        let d = |n: Option<Num>| n.map(|n| n.0);
        let ticker = Event::Ticker(Ticker {
            venue: NAME,
            symbol: self.symbols[self.at].clone(),
            event_time_ms: t.ts.map(|x| to_ms(x.0)).unwrap_or(event_ms),
            recv_time_us: self.recv_time_us,
            open: d(t.open),
            high: d(t.high),
            low: d(t.low),
            close: d(t.close),
            volume: d(t.vol),
            quote_volume: d(t.amount),
            change: d(t.rose),
        });
        self.emit(ticker, out);
        Ok(())
    }
}

enum Payload<'a> {
    /// A push: `tick` holds one item.
    Tick(&'a RawValue),
    /// A `req` reply: `data` holds a list.
    Reply(&'a RawValue),
}

fn control() -> Reaction {
    Reaction {
        control: true,
        ..Reaction::default()
    }
}

/// A stable id for a trade the venue sent without one: negative (never a venue id), from
/// FNV-1a over time, price, quantity, side and the occurrence number of an identical trade in
/// the same frame. The same trade seen twice (a replay, a second recorder) gets the same id.
pub fn synthetic_trade_id(
    time_ms: i64,
    price: &Dec,
    qty: &Dec,
    side: Side,
    occurrence: u32,
) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(&time_ms.to_le_bytes());
    eat(price.as_str().as_bytes());
    eat(&[0]);
    eat(qty.as_str().as_bytes());
    eat(&[0]);
    eat(side.as_str().as_bytes());
    eat(&occurrence.to_le_bytes());
    -((h >> 1) as i64) - 1
}
