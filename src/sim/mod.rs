//! The exchange simulator: a deterministic market per symbol, served over loopback with the
//! venue's own protocol (its personality module: websocket frames and REST), plus a ledger of everything
//! it generated and delivered, which tests compare with the database.
//!
//! The market steps on a timer whether or not anyone listens. Simulated time runs `speed`
//! times faster than the wall clock so that bars of several intervals complete in a short run.

pub mod cdc_v1;

/// The simulator's venue personality (the one line naming it): the venue it speaks, its
/// intervals, what the demo records from it, its servers.
pub use cdc_v1 as personality;
pub use personality::{DEMO_RECORD, INTERVALS, VENUE};
pub mod market;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use market::{Bar, Market, MarketSpec, SimTrade, StepOutput};

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
    pub ws_addr: SocketAddr,
    pub rest_addr: SocketAddr,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
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
            ping_interval: Duration::from_secs(5),
            max_missed_pongs: 2,
            rest_throttle_first: 0,
            start_halted: false,
            rest_kline_limit: 300,
            history_kline_limit: None,
            history_page: 300,
            book_history: false,
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
    clock_origin_ms: i64,
    wall_origin: std::time::Instant,
    speed: u32,
}

impl State {
    /// Simulated now, in epoch milliseconds.
    pub fn now_ms(&self) -> i64 {
        self.clock_origin_ms + self.wall_origin.elapsed().as_millis() as i64 * self.speed as i64
    }
}

/// A running simulator. Dropping it does not stop it: call [`SimHandle::shutdown`].
pub struct SimHandle {
    pub ws_addr: SocketAddr,
    pub rest_addr: SocketAddr,
    pub config: SimConfig,
    state: Arc<Mutex<State>>,
    running: watch::Sender<bool>,
    kick: watch::Sender<u64>,
    muted: watch::Sender<bool>,
    hostile: broadcast::Sender<Hostile>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl SimHandle {
    /// While muted, open connections send nothing at all (no data, no pings) but stay open:
    /// a silent-but-open socket.
    pub fn mute(&self, on: bool) {
        self.muted.send_replace(on);
    }

    /// Withholds pushes of one channel (by name) on every connection; None lifts it.
    pub fn mute_channel(&self, name: Option<&str>) {
        self.state().muted_channel = name.map(str::to_string);
    }

    /// Sends one hostile frame to every open connection.
    pub fn inject(&self, h: Hostile) {
        let _ = self.hostile.send(h);
    }

    /// Drops every open websocket connection without a close frame (a network cut).
    pub fn cut_connections(&self) {
        self.kick.send_modify(|n| *n += 1);
    }

    /// `ws://127.0.0.1:PORT/kline-api/ws`
    pub fn ws_url(&self) -> String {
        format!("ws://{}/kline-api/ws", self.ws_addr)
    }

    pub fn rest_url(&self) -> String {
        format!("http://{}", self.rest_addr)
    }

    /// Locks the ledger for reading.
    pub fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Stops the market (no new trades, bars or book changes); connections stay open.
    pub fn halt(&self) {
        self.running.send_replace(false);
    }

    /// A quiet market: time, bars and the book go on, trades stop (or start again).
    pub fn quiet(&self, on: bool) {
        self.state().quiet = on;
    }

    /// Withholds the next `frames` trade frames of `symbol` from every connection; the
    /// trades stay in the ledger and in REST answers, so the client sees trade ids jump.
    pub fn withhold_trade_frames(&self, symbol: &str, frames: u32) {
        self.state()
            .withhold_trades
            .insert(symbol.to_string(), frames);
    }

    /// REST data endpoints answer `{"code":"10050","msg":"system busy"}` while on.
    pub fn rest_errors(&self, on: bool) {
        self.state().rest_errors = on;
    }

    /// The venue renumbers `symbol`'s trades from `next` on (ids it used before come again).
    pub fn reset_trade_ids(&self, symbol: &str, next: i64) {
        if let Some(m) = self.state().markets.get_mut(symbol) {
            m.reset_trade_ids(next);
        }
    }

    /// `/v1/trades` answers 429 with Retry-After while on (a throttled REST: backfill waits).
    pub fn throttle_rest(&self, on: bool) {
        self.state().rest_throttled = on;
    }

    /// REST texts (market listing, error messages) carry NUL and control characters.
    pub fn hostile_text(&self, on: bool) {
        self.state().hostile_text = on;
    }

    pub fn resume(&self) {
        self.running.send_replace(true);
    }

    /// Waits until at least `n` channel subscriptions are active, or the deadline passes.
    pub async fn wait_subscriptions(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.state().subscriptions >= n {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// All trades generated for a symbol, in id order.
    pub fn trades(&self, symbol: &str) -> Vec<SimTrade> {
        self.state()
            .markets
            .get(symbol)
            .map(|m| m.trades.clone())
            .unwrap_or_default()
    }

    /// Trade ids delivered to clients for a symbol.
    pub fn delivered(&self, symbol: &str) -> BTreeSet<i64> {
        self.state()
            .delivered
            .get(symbol)
            .cloned()
            .unwrap_or_default()
    }

    /// Final bars of one interval, by open time.
    pub fn bars(&self, symbol: &str, interval: &str) -> Vec<Bar> {
        self.state()
            .markets
            .get(symbol)
            .and_then(|m| m.bars.get(interval))
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The current book merged to `step`, top `levels`, best first.
    pub fn book(&self, symbol: &str, step: u8, levels: usize) -> Option<Book> {
        let st = self.state();
        let m = st.markets.get(symbol)?;
        Some(market::merge_book(
            &m.book(),
            m.spec.price_scale,
            step,
            levels,
        ))
    }

    /// The book merged to `step`, top `levels`, as it stood at simulated time `t_ms`
    /// (needs `book_history`).
    pub fn book_at(&self, symbol: &str, step: u8, levels: usize, t_ms: i64) -> Option<Book> {
        let st = self.state();
        let m = st.markets.get(symbol)?;
        let history = st.book_history.get(symbol)?;
        let i = history.partition_point(|(t, _)| *t <= t_ms);
        let (_, book) = history.get(i.checked_sub(1)?)?;
        Some(market::merge_book(book, m.spec.price_scale, step, levels))
    }

    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // a panicking connection task must not take the whole simulator down with it
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Binds the listeners and starts the market and servers.
pub async fn start(config: SimConfig) -> std::io::Result<SimHandle> {
    let ws_listener = tokio::net::TcpListener::bind(config.ws_addr).await?;
    let rest_listener = tokio::net::TcpListener::bind(config.rest_addr).await?;
    let ws_addr = ws_listener.local_addr()?;
    let rest_addr = rest_listener.local_addr()?;
    let mut markets = BTreeMap::new();
    for (i, s) in config.symbols.iter().enumerate() {
        let seed = config.seed.wrapping_mul(1_000_003).wrapping_add(i as u64);
        markets.insert(
            s.clone(),
            Market::new(MarketSpec::for_symbol(s), seed, INTERVALS),
        );
    }
    let state = Arc::new(Mutex::new(State {
        markets,
        delivered: HashMap::new(),
        seq: 0,
        subscriptions: 0,
        sub_requests: HashMap::new(),
        muted_channel: None,
        connections_total: 0,
        quiet: false,
        withhold_trades: HashMap::new(),
        rest_errors: false,
        hostile_text: false,
        rest_throttled: false,
        book_history: HashMap::new(),
        clock_origin_ms: crate::model::now_ms(),
        wall_origin: std::time::Instant::now(),
        speed: config.speed.max(1),
    }));
    if config.book_history {
        let mut st = lock(&state);
        let now = st.now_ms();
        let books: Vec<(String, Arc<Book>)> = st
            .markets
            .iter()
            .map(|(s, m)| (s.clone(), Arc::new(m.book())))
            .collect();
        for (s, b) in books {
            st.book_history.insert(s, vec![(now, b)]);
        }
    }
    let (running, running_rx) = watch::channel(!config.start_halted);
    let (updates, _) = broadcast::channel::<Arc<Update>>(16_384);
    let (kick, _) = watch::channel(0u64);
    let (muted, _) = watch::channel(false);
    let (hostile, _) = broadcast::channel(64);
    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    tasks.spawn(run_market(
        state.clone(),
        config.clone(),
        running_rx,
        updates.clone(),
        cancel.clone(),
    ));
    personality::serve(
        personality::Server {
            config: config.clone(),
            state: state.clone(),
            updates,
            kick: kick.clone(),
            muted: muted.clone(),
            hostile: hostile.clone(),
            cancel: cancel.clone(),
            tasks: tasks.clone(),
            trade_requests: Default::default(),
        },
        ws_listener,
        rest_listener,
    );
    Ok(SimHandle {
        ws_addr,
        rest_addr,
        config,
        state,
        running,
        kick,
        muted,
        hostile,
        cancel,
        tasks,
    })
}

async fn run_market(
    state: Arc<Mutex<State>>,
    config: SimConfig,
    mut running: watch::Receiver<bool>,
    updates: broadcast::Sender<Arc<Update>>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(config.step);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !*running.borrow_and_update() {
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = running.wait_for(|r| *r) => if r.is_err() { return },
            }
            continue;
        }
        let mut st = lock(&state);
        let now = st.now_ms();
        let mut batch = Vec::new();
        let symbols: Vec<String> = st.markets.keys().cloned().collect();
        let quiet = st.quiet;
        for s in symbols {
            st.seq += 1;
            let seq = st.seq;
            let Some(m) = st.markets.get_mut(&s) else {
                continue;
            };
            let out = m.step_with(now, !quiet);
            if out.trades.is_empty() && out.bars.is_empty() && out.book_changes.is_empty() {
                continue;
            }
            let book = Arc::new(m.book());
            let ticker = if out.trades.is_empty() {
                None
            } else {
                m.ticker.clone()
            };
            // counted per market step, not per connection: a reconnect cannot change how many
            let withhold_trades = !out.trades.is_empty()
                && match st.withhold_trades.get_mut(&s) {
                    Some(n) if *n > 0 => {
                        *n -= 1;
                        true
                    }
                    _ => false,
                };
            if config.book_history && !out.book_changes.is_empty() {
                st.book_history
                    .entry(s.clone())
                    .or_default()
                    .push((now, book.clone()));
            }
            batch.push(Arc::new(Update {
                seq,
                symbol: Arc::from(s.as_str()),
                time_ms: now,
                book,
                ticker,
                withhold_trades,
                out,
            }));
        }
        // send while holding the lock, so a connection's snapshot (taken under the lock)
        // is ordered exactly against the updates
        for u in batch {
            let _ = updates.send(u);
        }
        drop(st);
    }
}
