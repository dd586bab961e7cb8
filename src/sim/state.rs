//! The simulator's state and switches: its configuration, the faults tests inject, what the
//! market generated and delivered, and each connection's tap into the market's steps.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::market::{self, Market, StepOutput};

/// How numbers appear on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumberStyle {
    /// JSON numbers, as in the seed docs.
    Numbers,
    /// JSON strings, as live servers send trades and tickers.
    Strings,
    /// Prices as strings, quantities as numbers.
    Mixed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DepthMode {
    /// Every change resends the book (what live servers do).
    Full,
    /// A snapshot on subscribe, then one `{"side","price","volume"}` frame per change (seed 001).
    Incremental,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zlib,
    /// Plain JSON in text frames.
    None,
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The venue kind spoken (see [`PERSONALITIES`]).
    pub venue: &'static str,
    pub seed: u64,
    pub symbols: Vec<String>,
    pub numbers: NumberStyle,
    pub upper_sides: bool,
    /// Send subscription acks (some live servers send none).
    pub acks: bool,
    pub depth_mode: DepthMode,
    pub compression: Compression,
    /// Pad quantities and amounts with trailing zeros to 16 decimals, as live servers do.
    pub pad_decimals: bool,
    /// Wall-clock time between market steps.
    pub step: Duration,
    /// Simulated milliseconds per wall millisecond.
    pub speed: u32,
    /// The simulated clock's start, epoch ms (None: now).
    pub clock_start_ms: Option<i64>,
    pub ping_interval: Duration,
    /// Pings left unanswered before the server hangs up.
    pub max_missed_pongs: u32,
    /// Answer this many `/v1/trades` requests with 429 and a non-JSON body first.
    pub rest_throttle_first: u32,
    /// Start with the market halted (tests resume it once the recorder has subscribed).
    pub start_halted: bool,
    /// Bars per interval `/v1/klines` answers with (the newest ones).
    pub rest_kline_limit: usize,
    /// How many of the newest bars a websocket `req` can reach (live servers keep about an
    /// hour of one-minute bars); None: all.
    pub history_kline_limit: Option<usize>,
    /// Bars one websocket `req` with `since` answers with at most (v1 documents 300).
    pub history_page: usize,
    /// Keep every book the market had, with its time, for [`SimHandle::book_at`] (tests).
    pub book_history: bool,
    /// Exchange API: time between `public/heartbeat`s, and how long an answer may take
    /// before the server closes the socket (1000).
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    /// Exchange API: a delta book unchanged this long gets an empty delta (liveness).
    pub empty_delta_interval: Duration,
    /// Exchange API: after connecting, requests are refused this long (the calendar-second
    /// rule), then at most `requests_per_s` a second per connection.
    pub connect_settle: Duration,
    pub requests_per_s: usize,
    /// Exchange API: channels one connection may hold (the 401st is refused with 40107).
    pub max_subscriptions: usize,
    /// Exchange API: how far back (simulated ms) `public/get-trades` reaches; None: all.
    pub trade_history_ms: Option<i64>,
    pub ws_addr: SocketAddr,
    pub rest_addr: SocketAddr,
    /// Serve websockets and REST over TLS with this identity (clients must trust its CA).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            venue: crate::venue::cdc_v1::NAME,
            seed: 1,
            symbols: vec!["btcusdt".into(), "ethusdt".into()],
            numbers: NumberStyle::Strings,
            upper_sides: true,
            acks: true,
            depth_mode: DepthMode::Full,
            compression: Compression::Gzip,
            pad_decimals: true,
            step: Duration::from_millis(20),
            speed: 60,
            clock_start_ms: None,
            ping_interval: Duration::from_secs(5),
            max_missed_pongs: 2,
            rest_throttle_first: 0,
            start_halted: false,
            rest_kline_limit: 300,
            history_kline_limit: None,
            history_page: 300,
            book_history: false,
            heartbeat_interval: Duration::from_secs(30),
            heartbeat_timeout: Duration::from_secs(5),
            empty_delta_interval: Duration::from_secs(5),
            connect_settle: Duration::from_secs(1),
            requests_per_s: 100,
            max_subscriptions: 400,
            trade_history_ms: None,
            tls: None,
            ws_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            rest_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }
}

/// Hostile frames the simulator can send to every open connection (fault injection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hostile {
    /// A gzip member with a broken deflate stream.
    CorruptGzip,
    /// A small gzip frame that inflates to `n` bytes.
    Bomb(usize),
    /// Gzip of text that is not JSON.
    MalformedJson,
    /// A websocket message of `n` bytes (past the client's limit it ends the connection).
    Oversized(usize),
    /// An echo of an unknown client event, uncompressed, as some servers send.
    UnknownEvent,
    /// Well-formed btcusdt market data with an invalid value (never in the ledger).
    Invalid(BadValue),
    /// A close frame whose reason holds NUL and control characters; the server hangs up.
    CloseWithNul,
}

/// Invalid values a hostile venue sends in otherwise well-formed frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadValue {
    TradePriceZero,
    TradeQtyZero,
    TradeQtyNegative,
    TradeTimeZero,
    TradeTimeNegative,
    TradeTimeMax,
    TradeHugeDecimal,
    KlineOpenTimeZero,
    KlineOpenTimeNegative,
    KlineHighBelowLow,
    KlineHighZero,
}

impl BadValue {
    pub const ALL: [BadValue; 11] = [
        BadValue::TradePriceZero,
        BadValue::TradeQtyZero,
        BadValue::TradeQtyNegative,
        BadValue::TradeTimeZero,
        BadValue::TradeTimeNegative,
        BadValue::TradeTimeMax,
        BadValue::TradeHugeDecimal,
        BadValue::KlineOpenTimeZero,
        BadValue::KlineOpenTimeNegative,
        BadValue::KlineHighBelowLow,
        BadValue::KlineHighZero,
    ];

    /// The validation kind the recorder must count it under.
    pub fn kind(self) -> &'static str {
        use BadValue::*;
        match self {
            TradePriceZero | KlineHighZero => "price",
            TradeQtyZero | TradeQtyNegative => "quantity",
            TradeTimeZero
            | TradeTimeNegative
            | TradeTimeMax
            | KlineOpenTimeZero
            | KlineOpenTimeNegative => "time",
            TradeHugeDecimal => "digits",
            KlineHighBelowLow => "bar_range",
        }
    }
}

/// One market step as broadcast to connections.
#[derive(Debug)]
pub struct Update {
    pub seq: u64,
    pub symbol: Arc<str>,
    pub time_ms: i64,
    pub out: StepOutput,
    /// The whole step-0 book after this step.
    pub book: Arc<Book>,
    pub ticker: Option<market::TickerStats>,
    /// This step's trade frame is withheld from every connection (see
    /// [`SimHandle::withhold_trade_frames`]).
    pub withhold_trades: bool,
    /// This step's book deltas skip a sequence number on every connection (see
    /// [`SimHandle::break_book_sequence`]).
    pub break_books: bool,
}

pub type Book = (
    Vec<(rust_decimal::Decimal, rust_decimal::Decimal)>,
    Vec<(rust_decimal::Decimal, rust_decimal::Decimal)>,
);

/// Everything the simulator generated, and which trades reached a client.
pub struct State {
    pub markets: BTreeMap<String, Market>,
    /// Trade ids written to at least one client socket, per symbol.
    pub delivered: HashMap<String, BTreeSet<i64>>,
    /// Number of the last step broadcast.
    pub seq: u64,
    /// Active channel subscriptions over all connections.
    pub subscriptions: usize,
    /// `sub` requests received, per channel name.
    pub sub_requests: HashMap<String, u32>,
    /// A channel whose pushes are withheld (fault injection: one silent channel).
    pub muted_channel: Option<String>,
    pub connections_total: u64,
    /// Nobody trades while set (see [`SimHandle::quiet`]).
    pub quiet: bool,
    /// Per symbol: trade frames still to withhold from every connection (a venue dropping
    /// messages on a live socket).
    pub withhold_trades: HashMap<String, u32>,
    /// `/v1/trades` and `/v1/klines` answer an error envelope while set.
    pub rest_errors: bool,
    /// `/v1/symbols` names and error envelopes carry NUL and control characters while set.
    pub hostile_text: bool,
    /// `/v1/trades` answers 429 (Retry-After: 1) while set.
    pub rest_throttled: bool,
    /// Per symbol, with `book_history`: (time, whole step-0 book) after every change.
    pub book_history: HashMap<String, Vec<(i64, Arc<Book>)>>,
    /// Requests refused for the request rate (the connect-second rule included).
    pub rate_refusals: u64,
    /// Channels refused for the per-connection cap (40107).
    pub cap_refusals: u64,
    /// Channels refused as unknown (instrument or channel name).
    pub bad_channel_refusals: u64,
    /// Connections closed for an unanswered heartbeat.
    pub heartbeat_closes: u64,
    /// Heartbeat answers are lost on the way in while set (the server closes the socket).
    pub lose_heartbeat_answers: bool,
    /// Per symbol: book sequence breaks still to inject (a delta the server skips).
    pub book_breaks: HashMap<String, u32>,
    /// Most channels one connection held at once.
    pub max_conn_subscriptions: usize,
    /// Per symbol: the connections holding a channel of it.
    pub(super) taps: HashMap<String, Vec<Tap>>,
    pub(super) next_tap: u64,
    /// Market steps taken (each steps every market).
    pub ticks: u64,
    pub(super) clock_origin_ms: i64,
    pub(super) wall_origin: std::time::Instant,
    pub(super) speed: u32,
}

impl State {
    /// Simulated now, in epoch milliseconds.
    pub fn now_ms(&self) -> i64 {
        self.clock_origin_ms + self.wall_origin.elapsed().as_millis() as i64 * self.speed as i64
    }
}

pub(crate) fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // a panicking connection task must not take the whole simulator down with it
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Steps a connection may have waiting before it is hung up on as too slow (as a real server
/// drops slow consumers).
pub(crate) const TAP_CAPACITY: usize = 16_384;

/// A connection's place in the market's fan-out: each market step goes only to the
/// connections holding a channel of its symbol (not to every connection to filter), so the
/// simulator's cost grows with what is subscribed, not with symbols times connections.
#[derive(Clone)]
pub(crate) struct Tap {
    pub(super) id: u64,
    pub(super) tx: tokio::sync::mpsc::Sender<Arc<Update>>,
    /// Cancelled when the connection fell [`TAP_CAPACITY`] steps behind.
    pub(super) slow: CancellationToken,
}

/// What [`drive`] reads a connection's market steps from.
pub(crate) struct TapRx {
    pub(super) id: u64,
    pub(super) rx: tokio::sync::mpsc::Receiver<Arc<Update>>,
    pub(super) slow: CancellationToken,
}

impl Tap {
    pub(crate) fn new(state: &Mutex<State>) -> (Tap, TapRx) {
        let (tx, rx) = tokio::sync::mpsc::channel(TAP_CAPACITY);
        let id = {
            let mut st = lock(state);
            st.next_tap += 1;
            st.next_tap
        };
        let slow = CancellationToken::new();
        (
            Tap {
                id,
                tx,
                slow: slow.clone(),
            },
            TapRx { id, rx, slow },
        )
    }

    /// From now on this connection gets `symbol`'s steps. Called under the state lock before
    /// a subscription's snapshot is read, so no step after the snapshot is missed.
    pub(crate) fn watch(&self, st: &mut State, symbol: &str) {
        let taps = st.taps.entry(symbol.to_string()).or_default();
        if !taps.iter().any(|t| t.id == self.id) {
            taps.push(self.clone());
        }
    }
}
