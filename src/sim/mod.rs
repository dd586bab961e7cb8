//! The exchange simulator: a deterministic market per symbol, served over loopback with the
//! venue's own protocol (a personality module per venue: websocket frames and REST), plus a
//! ledger of everything it generated and delivered, which tests compare with the database.
//!
//! The market steps on a timer whether or not anyone listens. Simulated time runs `speed`
//! times faster than the wall clock so that bars of several intervals complete in a short run.

pub mod cdc_exchange;
pub mod cdc_v1;
pub mod market;
pub mod serve;
pub mod state;

pub use serve::{Personality, Server};
pub use state::{
    BadValue, Book, Compression, DepthMode, Hostile, NumberStyle, SimConfig, State, Update,
};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use market::{Bar, Market, MarketSpec, SimTrade};
use state::lock;

/// Every personality; the demo's default first.
pub const PERSONALITIES: &[&Personality] = &[
    &cdc_exchange::EXCHANGE,
    &cdc_exchange::V2,
    &cdc_v1::PERSONALITY,
];

/// The personality speaking `venue` (a `venue.kind`).
pub fn personality(venue: &str) -> Option<&'static Personality> {
    PERSONALITIES.iter().copied().find(|p| p.venue == venue)
}

/// The kinds the simulator speaks, for messages.
pub fn venues() -> String {
    PERSONALITIES
        .iter()
        .map(|p| p.venue)
        .collect::<Vec<_>>()
        .join(", ")
}

impl SimConfig {
    /// The defaults for a personality, with its demo symbols (None: not a kind the
    /// simulator speaks).
    pub fn for_venue(venue: &str) -> Option<SimConfig> {
        let p = personality(venue)?;
        Some(SimConfig {
            venue: p.venue,
            symbols: p.demo_symbols.iter().map(|s| s.to_string()).collect(),
            ..SimConfig::default()
        })
    }

    pub fn personality(&self) -> &'static Personality {
        personality(self.venue).unwrap_or(&cdc_v1::PERSONALITY)
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
    frames_sent: Arc<std::sync::atomic::AtomicU64>,
}

impl SimHandle {
    /// Market-data frames written to clients so far.
    pub fn frames_sent(&self) -> u64 {
        self.frames_sent.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Market steps taken so far (one a `step` while the market runs and keeps up).
    pub fn ticks(&self) -> u64 {
        self.state().ticks
    }

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

    /// `ws://127.0.0.1:PORT/kline-api/ws` (the personality's path; `wss` over TLS)
    pub fn ws_url(&self) -> String {
        let scheme = self.scheme("ws", "wss");
        format!(
            "{scheme}://{}{}",
            self.ws_addr,
            self.config.personality().ws_path
        )
    }

    fn scheme(&self, plain: &'static str, tls: &'static str) -> &'static str {
        if self.config.tls.is_some() {
            tls
        } else {
            plain
        }
    }

    /// The REST root the venue's methods are appended to.
    pub fn rest_url(&self) -> String {
        let scheme = self.scheme("http", "https");
        format!(
            "{scheme}://{}{}",
            self.rest_addr,
            self.config.personality().rest_path
        )
    }

    /// Heartbeat answers are lost on the way in while on: the server closes each socket at
    /// its next unanswered heartbeat (Exchange API).
    pub fn lose_heartbeat_answers(&self, on: bool) {
        self.state().lose_heartbeat_answers = on;
    }

    /// The next `n` book deltas of `symbol` skip a sequence number on every connection
    /// (Exchange API: the recorder sees `pu` that is not its last `u`).
    pub fn break_book_sequence(&self, symbol: &str, n: u32) {
        *self
            .state()
            .book_breaks
            .entry(symbol.to_string())
            .or_default() += n;
    }

    /// The venue lists a new market (it trades from the next step; the listing names it).
    pub fn list(&self, symbol: &str) {
        let p = self.config.personality();
        let seed = self.config.seed.wrapping_mul(1_000_003).wrapping_add(
            symbol
                .bytes()
                .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)),
        );
        let market = Market::with_shape(
            MarketSpec::for_symbol(symbol),
            seed,
            p.intervals,
            p.book_levels,
            p.id_jumps,
        );
        let mut st = self.state();
        if self.config.book_history {
            let now = st.now_ms();
            st.book_history
                .insert(symbol.to_string(), vec![(now, Arc::new(market.book()))]);
        }
        st.markets.insert(symbol.to_string(), market);
    }

    /// The venue delists a market: it stops trading and leaves the listing; subscribing to
    /// it is refused as an unknown instrument. Its ledger is returned.
    pub fn delist(&self, symbol: &str) -> Option<Market> {
        self.state().markets.remove(symbol)
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

    /// `symbol`'s market goes on from `last` (see `Market::continue_after`).
    pub fn continue_after(&self, symbol: &str, last: SimTrade) {
        if let Some(m) = self.state().markets.get_mut(symbol) {
            m.continue_after(last);
        }
    }

    /// `symbol`'s market goes on from `bar` (see `Market::continue_bar`).
    pub fn continue_bar(&self, symbol: &str, interval: &str, bar: Bar) {
        if let Some(m) = self.state().markets.get_mut(symbol) {
            m.continue_bar(interval, bar);
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

/// Binds the listeners and starts the market and servers.
pub async fn start(config: SimConfig) -> std::io::Result<SimHandle> {
    let ws_listener = tokio::net::TcpListener::bind(config.ws_addr).await?;
    let rest_listener = tokio::net::TcpListener::bind(config.rest_addr).await?;
    let ws_addr = ws_listener.local_addr()?;
    let rest_addr = rest_listener.local_addr()?;
    let mut markets = BTreeMap::new();
    let personality = config.personality();
    for (i, s) in config.symbols.iter().enumerate() {
        let seed = config.seed.wrapping_mul(1_000_003).wrapping_add(i as u64);
        markets.insert(
            s.clone(),
            Market::with_shape(
                MarketSpec::for_symbol(s),
                seed,
                personality.intervals,
                personality.book_levels,
                personality.id_jumps,
            ),
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
        rate_refusals: 0,
        cap_refusals: 0,
        bad_channel_refusals: 0,
        heartbeat_closes: 0,
        lose_heartbeat_answers: false,
        book_breaks: HashMap::new(),
        max_conn_subscriptions: 0,
        taps: HashMap::new(),
        next_tap: 0,
        ticks: 0,
        clock_origin_ms: config.clock_start_ms.unwrap_or_else(crate::model::now_ms),
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
    let (kick, _) = watch::channel(0u64);
    let (muted, _) = watch::channel(false);
    let (hostile, _) = broadcast::channel(64);
    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    let frames_sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    tasks.spawn(run_market(
        state.clone(),
        config.clone(),
        running_rx,
        cancel.clone(),
    ));
    (personality.serve)(
        Server {
            config: config.clone(),
            personality,
            state: state.clone(),
            kick: kick.clone(),
            muted: muted.clone(),
            hostile: hostile.clone(),
            cancel: cancel.clone(),
            tasks: tasks.clone(),
            trade_requests: Default::default(),
            frames_sent: frames_sent.clone(),
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
        frames_sent,
    })
}

async fn run_market(
    state: Arc<Mutex<State>>,
    config: SimConfig,
    mut running: watch::Receiver<bool>,
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
        st.ticks += 1;
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
            let break_books = !out.book_changes.is_empty()
                && match st.book_breaks.get_mut(&s) {
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
                break_books,
                out,
            }));
        }
        // send while holding the lock, so a connection's snapshot (taken under the lock)
        // is ordered exactly against the updates
        for u in batch {
            if let Some(taps) = st.taps.get(&*u.symbol) {
                for t in taps {
                    if let Err(tokio::sync::mpsc::error::TrySendError::Full(_)) =
                        t.tx.try_send(u.clone())
                    {
                        t.slow.cancel();
                    }
                }
            }
        }
        drop(st);
    }
}
