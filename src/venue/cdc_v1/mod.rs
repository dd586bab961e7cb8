//! Crypto.com Exchange v1 "kline-api" protocol (and its white-label CHAINUP relatives).
//!
//! Server frames are gzip members in binary frames (sometimes zlib, sometimes plain text);
//! client frames are plain JSON text. See `../shared/brief/PROTOCOL-NOTES.md` for the rules
//! followed where servers disagree with the docs.

pub mod channel;
pub mod inflate;
pub mod rest;
pub mod vocab;
pub mod wire;

pub use self::vocab::{INTERVALS, NAME};
pub use self::wire::to_ms;

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::value::RawValue;

use self::channel::{Channel, Stream};
use self::inflate::Inflater;
use self::wire::{Envelope, Int, Num, TradeTick, WireBook, WireKline, WireTicker, WireTrade};
use crate::config::{ConfigError, DepthSetting, RecordConfig, VenueOptions};
use crate::decimal::Dec;
use crate::model::{
    BookDelta, BookSide, BookSnapshot, Event, Interval, Kline, Side, Source, Span, StreamKey,
    Ticker, Trade, TradeMark,
};
use crate::venue::bars::OpenBars;
use crate::venue::validate::{Findings, Rules};
use crate::venue::{
    ConnectionPlan, DecodeError, Defaults, FetchError, Frame, HistoryRequest, KlineHistory, Reach,
    Reaction, SocketLimits, Subscription, TradeHistory, TradeIds, Venue, VenueSession,
};

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

/// The registry's constructor: v1 has no options of its own.
pub fn make(options: &VenueOptions) -> Result<Arc<dyn Venue>, ConfigError> {
    match options.keys().next() {
        Some(k) => Err(ConfigError::new(
            &format!("venue.{k}"),
            "unknown field; cdc-v1 has no options beyond kind, ws_url and rest_url",
        )),
        None => Ok(Arc::new(CdcV1)),
    }
}

/// What a v1 interval name means.
pub fn interval(name: &str) -> Option<Interval> {
    let minutes: i64 = match name {
        "1month" => {
            return Some(Interval {
                name: Arc::from(name),
                span: Span::Months(1),
            });
        }
        _ => rest::kline_period_minutes(name)?.into(),
    };
    Some(Interval::fixed(name, minutes * 60_000))
}

/// v1's book variants: `depth = "step0" | "step1" | "step2"` (aggregation steps), `true`
/// for step0, `false` for none. The step is the stored `depth_step`.
pub fn depth_step(d: &DepthSetting) -> Result<Option<u8>, String> {
    match d {
        DepthSetting::Off => Ok(None),
        DepthSetting::On => Ok(Some(0)),
        DepthSetting::Word(w) => match w.as_str() {
            "step0" => Ok(Some(0)),
            "step1" => Ok(Some(1)),
            "step2" => Ok(Some(2)),
            other => Err(format!(
                "expected \"step0\", \"step1\", \"step2\" or false, got {other:?}"
            )),
        },
        DepthSetting::Number(n) => Err(format!(
            "expected \"step0\", \"step1\", \"step2\" or false, got {n}"
        )),
    }
}

/// v1 symbols are lowercase (`btcusdt`, `e_btcusdt`).
pub fn check_symbol(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a lowercase v1 symbol like \"btcusdt\""
        ))
    }
}

/// The channels a worker subscribes to for one symbol.
pub fn channels(symbol: &str, record: &RecordConfig) -> Vec<Channel> {
    let mut out = Vec::new();
    if record.trades {
        out.push(Channel::new(symbol, Stream::Trades));
    }
    for iv in record.klines() {
        out.push(Channel::new(symbol, Stream::Kline(iv.clone())));
    }
    if let Ok(Some(n)) = depth_step(record.depth()) {
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

    fn interval(&self, name: &str) -> Option<Interval> {
        interval(name)
    }

    fn defaults(&self) -> Defaults {
        Defaults {
            ws_url: "wss://ws.crypto.com/kline-api/ws",
            rest_url: "https://api.crypto.com",
            klines: vec!["1min".into()],
            depth: DepthSetting::Word("step0".into()),
        }
    }

    fn check_record(&self, record: &RecordConfig) -> Result<(), ConfigError> {
        for s in &record.symbols {
            check_symbol(s).map_err(|m| ConfigError::new("record.symbols", m))?;
        }
        for k in record.klines() {
            if interval(k).is_none() {
                return Err(ConfigError::new(
                    "record.klines",
                    format!("unknown interval {k:?}; one of {}", INTERVALS.join(" ")),
                ));
            }
        }
        depth_step(record.depth()).map_err(|m| ConfigError::new("record.depth", m))?;
        Ok(())
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
                    id: None,
                    frame: sub_request(&c, record.depth_levels),
                    streams: vec![(symbol.clone(), stream_key(&c))],
                })
            })
            .collect()
    }

    fn markets_path(&self) -> &'static str {
        "/v1/symbols"
    }

    fn parse_listing(
        &self,
        body: &str,
        now_ms: i64,
    ) -> Result<Vec<crate::venue::Listing>, FetchError> {
        let list = rest::parse_symbols(body)?;
        Ok(list
            .into_iter()
            .map(|s| crate::venue::Listing {
                market: crate::model::Market {
                    venue: NAME,
                    symbol: Arc::from(s.symbol.as_str()),
                    base: s.base_coin,
                    quote: s.count_coin,
                    price_precision: s.price_precision.and_then(|p| i32::try_from(p.0).ok()),
                    qty_precision: s.amount_precision.and_then(|p| i32::try_from(p.0).ok()),
                    updated_at_ms: now_ms,
                },
                // the kline-api lists spot pairs only
                kind: crate::model::InstrumentType::Spot,
                tradable: true,
            })
            .collect())
    }

    fn trade_ids(&self) -> TradeIds {
        TradeIds::Consecutive
    }

    fn trade_history(
        &self,
        symbol: &Arc<str>,
        anchor: Option<TradeMark>,
        _until: Option<TradeMark>,
    ) -> Box<dyn TradeHistory> {
        Box::new(RecentTrades {
            symbol: symbol.clone(),
            anchor,
            asked: false,
            fetched: 0,
            oldest: None,
        })
    }

    fn kline_history(
        &self,
        symbol: &Arc<str>,
        interval: &Arc<str>,
        from_ms: Option<i64>,
    ) -> Option<Box<dyn KlineHistory>> {
        let period = rest::kline_period_minutes(interval)?;
        let channel = Channel::parse(&format!("market_{symbol}_kline_{interval}"))?;
        Some(Box::new(V1Klines {
            symbol: symbol.clone(),
            interval: interval.clone(),
            len: self::interval(interval).and_then(|i| i.fixed_ms()),
            rest_path: format!("/v1/klines?symbol={symbol}&period={period}"),
            channel,
            from_ms,
            stage: KlineStage::Rest,
            rest_first: None,
            answered: Vec::new(),
        }))
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

/// Websocket history pages one v1 kline check asks for at most (a page is up to 300 bars).
const MAX_HISTORY_PAGES: usize = 100;

/// Where a v1 kline history stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KlineStage {
    /// `/v1/klines`: the venue's recent bars, the newest forming.
    Rest,
    /// Waiting for a reply to the request just handed out.
    Waiting,
    /// Older than REST keeps: a websocket `req` with `since` (seconds), paged forward from
    /// the hole's start until a page meets REST's window.
    Socket {
        since_ms: i64,
        pages: usize,
    },
    Done,
}

/// v1's kline history: `/v1/klines` first, then websocket `req` pages for what is older.
struct V1Klines {
    symbol: Arc<str>,
    interval: Arc<str>,
    len: Option<i64>,
    rest_path: String,
    channel: Channel,
    from_ms: Option<i64>,
    stage: KlineStage,
    /// The oldest bar REST answered with.
    rest_first: Option<i64>,
    answered: Vec<(i64, i64)>,
}

impl KlineHistory for V1Klines {
    fn next_request(&mut self) -> Option<HistoryRequest> {
        match self.stage {
            KlineStage::Rest => {
                self.stage = KlineStage::Waiting;
                Some(HistoryRequest::Rest(self.rest_path.clone()))
            }
            KlineStage::Socket { since_ms, pages } if pages < MAX_HISTORY_PAGES => {
                self.stage = KlineStage::Socket {
                    since_ms,
                    pages: pages + 1,
                };
                // `since` is in seconds; round down so the bar starting at `since_ms` is in
                Some(HistoryRequest::Socket(kline_history_request(
                    &self.channel,
                    "history",
                    since_ms.div_euclid(1000),
                )))
            }
            _ => None,
        }
    }

    fn take_rest(&mut self, body: &str, recv_time_us: i64) -> Result<Vec<Kline>, FetchError> {
        let bars = rest::parse_klines(body, &self.symbol, &self.interval, recv_time_us)?;
        self.stage = KlineStage::Done;
        let (Some(first), Some(newest)) = (bars.first(), bars.last()) else {
            return Ok(bars);
        };
        let (first, newest) = (first.open_time_ms, newest.open_time_ms);
        self.answered.push((first, newest));
        self.rest_first = Some(first);
        if let Some(from) = self.from_ms
            && first > from
            && from < newest
        {
            // REST keeps fewer bars than the hole
            self.stage = KlineStage::Socket {
                since_ms: from,
                pages: 0,
            };
        }
        Ok(bars)
    }

    fn take_socket(&mut self, bars: &[Kline]) {
        let KlineStage::Socket { since_ms, pages } = self.stage else {
            return;
        };
        let (Some(first), Some(last)) = (
            bars.first().map(|k| k.open_time_ms),
            bars.last().map(|k| k.open_time_ms),
        ) else {
            self.stage = KlineStage::Done;
            return;
        };
        self.answered.push((first, last));
        let next = last + self.len.unwrap_or(1);
        if self.rest_first.is_none_or(|r| last >= r) || next <= since_ms {
            self.stage = KlineStage::Done;
        } else {
            self.stage = KlineStage::Socket {
                since_ms: next,
                pages,
            };
        }
    }

    fn answered(&self) -> Vec<(i64, i64)> {
        self.answered.clone()
    }
}

/// Trades v1's `/v1/trades` keeps: the newest ones, no paging.
pub const RECENT_TRADES: usize = 200;

/// v1's trade history: one `/v1/trades` answer, the venue's last [`RECENT_TRADES`].
struct RecentTrades {
    symbol: Arc<str>,
    anchor: Option<TradeMark>,
    asked: bool,
    /// Trades in the answer, valid or not (a full answer stays full).
    fetched: usize,
    oldest: Option<TradeMark>,
}

impl TradeHistory for RecentTrades {
    fn next_request(&mut self) -> Option<String> {
        if self.asked {
            return None;
        }
        self.asked = true;
        Some(format!("/v1/trades?symbol={}", self.symbol))
    }

    fn take(&mut self, body: &str, recv_time_us: i64) -> Result<Vec<Trade>, FetchError> {
        let trades = rest::parse_trades(body, &self.symbol, recv_time_us)?;
        self.fetched = trades.len();
        self.oldest = trades
            .iter()
            .map(|t| TradeMark {
                time_ms: t.event_time_ms,
                trade_id: t.trade_id,
            })
            .reduce(|a, b| {
                if TradeIds::Consecutive.is_after(a, b) {
                    b
                } else {
                    a
                }
            });
        Ok(trades)
    }

    fn reach(&self, until: Option<TradeMark>) -> Reach {
        let ids = TradeIds::Consecutive;
        let (Some(anchor), Some(oldest)) = (self.anchor, self.oldest) else {
            return Reach::Anchor; // nothing known before, or nothing traded
        };
        // the first trade known after the anchor: the answer's oldest or the socket's first
        let first_after = [Some(oldest), until]
            .into_iter()
            .flatten()
            .filter(|m| ids.is_after(*m, anchor))
            .reduce(|a, b| if ids.is_after(a, b) { b } else { a });
        let reached = !ids.is_after(oldest, anchor)
            // the next id after the anchor: nothing can lie between them
            || first_after.is_some_and(|f| ids.adjacent(anchor, f))
            // fewer than the venue keeps: that is every trade it still has
            || self.fetched < RECENT_TRADES;
        if reached {
            Reach::Anchor
        } else {
            Reach::Short {
                why: format!("older than the venue's last {RECENT_TRADES} trades"),
            }
        }
    }
}

/// Decoding state of one connection.
pub struct CdcSession {
    /// The symbols the connection subscribed (a channel of another is unexpected).
    symbols: Vec<Arc<str>>,
    rules: Rules,
    inflater: Inflater,
    /// The venue has no closed flag: a bar is final when a later one arrives.
    open_bars: OpenBars,
}

impl CdcSession {
    pub fn new(symbol: Arc<str>, max_frame_bytes: usize) -> CdcSession {
        CdcSession::for_symbols(vec![symbol], max_frame_bytes)
    }

    /// A connection carrying several symbols (each channel names its symbol).
    pub fn for_symbols(symbols: Vec<Arc<str>>, max_frame_bytes: usize) -> CdcSession {
        CdcSession {
            open_bars: OpenBars::default(),
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
    open_bars: &'s mut OpenBars,
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

impl Normalizer<'_> {
    /// Validates an event; true when it may be emitted (invalid ones are only counted).
    fn valid(&mut self, ev: &Event) -> bool {
        self.findings
            .admit(self.rules, ev, self.recv_time_us / 1000)
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
            let recv_ms = self.recv_time_us / 1000;
            let (rules, findings) = (self.rules, &mut self.findings);
            self.open_bars
                .push(self.at, k, |ev| findings.admit(rules, ev, recv_ms), out);
        }
        Ok(())
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
                    // v1 numbers no book updates
                    update_id: None,
                    prev_update_id: None,
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
            bid: None,
            bid_qty: None,
            ask: None,
            ask_qty: None,
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

#[cfg(test)]
mod history_tests {
    use super::*;

    /// A `/v1/trades` answer with ids `from..from + n`, newest first as the venue sends them.
    fn answer(from: i64, n: i64) -> String {
        let items: Vec<String> = (from..from + n)
            .rev()
            .map(|id| {
                format!(
                    r#"{{"id":{id},"price":"1.5","amount":"2","type":"buy","ctime":{}}}"#,
                    1_700_000_000_000 + id
                )
            })
            .collect();
        format!(r#"{{"code":"0","msg":"suc","data":[{}]}}"#, items.join(","))
    }

    fn mark(id: i64) -> TradeMark {
        TradeMark {
            time_ms: 1_700_000_000_000 + id,
            trade_id: id,
        }
    }

    fn reach(anchor: Option<i64>, from: i64, n: i64, until: Option<i64>) -> Reach {
        let mut h = CdcV1.trade_history(&Arc::from("btcusdt"), anchor.map(mark), None);
        let path = h.next_request().expect("one request");
        assert_eq!(path, "/v1/trades?symbol=btcusdt");
        let trades = h.take(&answer(from, n), 1).expect("parses");
        assert_eq!(trades.len() as i64, n);
        assert!(
            trades.windows(2).all(|w| w[0].trade_id < w[1].trade_id),
            "oldest first"
        );
        assert_eq!(h.next_request(), None, "v1 does not page");
        h.reach(until.map(mark))
    }

    #[test]
    fn recent_trades_verdicts() {
        let full = RECENT_TRADES as i64;
        // nothing recorded before: no hole to reach
        assert_eq!(reach(None, 500, full, None), Reach::Anchor);
        // reaches back over the anchor
        assert_eq!(reach(Some(100), 90, full, None), Reach::Anchor);
        // a short answer is everything the venue has
        assert_eq!(reach(Some(100), 300, 10, None), Reach::Anchor);
        // the next id after the anchor: nothing lies between (REST's or the socket's first)
        assert_eq!(reach(Some(100), 101, full, None), Reach::Anchor);
        assert_eq!(reach(Some(100), 150, full, Some(101)), Reach::Anchor);
        // a full answer starting past the anchor: the trades before it are gone
        assert!(matches!(
            reach(Some(100), 150, full, Some(400)),
            Reach::Short { why } if why.contains("200")
        ));
    }
}

#[cfg(test)]
mod kline_history_tests {
    use super::*;

    const MIN: i64 = 60_000;
    const T0: i64 = 1_700_000_040_000; // on the minute grid

    /// A `/v1/klines` answer with bars at the given minutes after `T0`.
    fn rest_answer(minutes: &[i64]) -> String {
        let rows: Vec<String> = minutes
            .iter()
            .map(|m| format!(r#"[{},"1","2","0.5","1.5","3"]"#, (T0 + m * MIN) / 1000))
            .collect();
        format!(r#"{{"code":"0","msg":"suc","data":[{}]}}"#, rows.join(","))
    }

    fn bars(minutes: std::ops::Range<i64>) -> Vec<Kline> {
        let body = rest_answer(&minutes.collect::<Vec<_>>());
        rest::parse_klines(&body, &Arc::from("btcusdt"), &Arc::from("1min"), 1).unwrap()
    }

    fn since_of(req: Option<HistoryRequest>) -> i64 {
        match req {
            Some(HistoryRequest::Socket(f)) => {
                let v: serde_json::Value = serde_json::from_str(&f).unwrap();
                v["params"]["since"]
                    .as_str()
                    .unwrap()
                    .parse::<i64>()
                    .unwrap()
                    * 1000
            }
            other => panic!("expected a socket request, got {other:?}"),
        }
    }

    fn history(from: Option<i64>) -> Box<dyn KlineHistory> {
        CdcV1
            .kline_history(&Arc::from("btcusdt"), &Arc::from("1min"), from)
            .expect("1min has history")
    }

    #[test]
    fn rest_then_socket_pages_until_they_meet_rest() {
        // a hole from minute 0; REST keeps minutes 20..=22 (22 forming)
        let mut h = history(Some(T0));
        assert_eq!(
            h.next_request(),
            Some(HistoryRequest::Rest(
                "/v1/klines?symbol=btcusdt&period=1".into()
            ))
        );
        let got = h.take_rest(&rest_answer(&[20, 21, 22]), 1).unwrap();
        assert_eq!(got.len(), 3);
        // pages of 8 from the hole's start, each from after the last
        assert_eq!(since_of(h.next_request()), T0);
        h.take_socket(&bars(0..8));
        assert_eq!(since_of(h.next_request()), T0 + 8 * MIN);
        h.take_socket(&bars(8..16));
        assert_eq!(since_of(h.next_request()), T0 + 16 * MIN);
        h.take_socket(&bars(16..22));
        assert_eq!(h.next_request(), None, "the page met REST's window");
        assert_eq!(
            h.answered(),
            [
                (T0 + 20 * MIN, T0 + 22 * MIN),
                (T0, T0 + 7 * MIN),
                (T0 + 8 * MIN, T0 + 15 * MIN),
                (T0 + 16 * MIN, T0 + 21 * MIN)
            ]
        );
    }

    #[test]
    fn history_stops_where_the_venue_has_nothing_and_rest_alone_when_it_reaches() {
        // the venue's history has nothing from the hole's start: an empty page ends it
        let mut h = history(Some(T0));
        h.next_request();
        h.take_rest(&rest_answer(&[20, 21]), 1).unwrap();
        assert_eq!(since_of(h.next_request()), T0);
        h.take_socket(&[]);
        assert_eq!(h.next_request(), None);
        assert_eq!(h.answered(), [(T0 + 20 * MIN, T0 + 21 * MIN)]);
        // REST reaches back over the hole: no socket request
        let mut h = history(Some(T0 + 20 * MIN));
        h.next_request();
        h.take_rest(&rest_answer(&[19, 20, 21]), 1).unwrap();
        assert_eq!(h.next_request(), None);
        // nothing recorded yet: REST's recent bars only
        let mut h = history(None);
        h.next_request();
        h.take_rest(&rest_answer(&[19, 20, 21]), 1).unwrap();
        assert_eq!(h.next_request(), None);
        // an interval v1 has no REST period for has no history
        assert!(
            CdcV1
                .kline_history(&Arc::from("btcusdt"), &Arc::from("2min"), None)
                .is_none()
        );
    }
}
