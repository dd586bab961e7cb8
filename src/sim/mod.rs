//! The exchange simulator: a deterministic market per symbol, served over loopback with the
//! venue's own protocol (a personality module per venue: websocket frames and REST), plus a
//! ledger of everything it generated and delivered, which tests compare with the database.
//!
//! The market steps on a timer whether or not anyone listens. Simulated time runs `speed`
//! times faster than the wall clock so that bars of several intervals complete in a short run.

pub mod cdc_exchange;
pub mod cdc_v1;
pub mod market;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use market::{Bar, Intervals, Market, MarketSpec, SimTrade, StepOutput};

/// A venue the simulator speaks: its servers and what its markets look like.
pub struct Personality {
    /// The `venue.kind` it speaks.
    pub venue: &'static str,
    /// Interval names with the lengths bars are built on.
    pub intervals: Intervals,
    /// What `mdrec demo` records from it besides trades and tickers (`[record]` lines).
    pub demo_record: &'static str,
    /// The symbols `mdrec demo` and `mdrec simulate` use by default.
    pub demo_symbols: &'static [&'static str],
    /// Book levels per side.
    pub book_levels: usize,
    /// Trade ids grow by random steps (numbered across markets), not by one.
    pub id_jumps: bool,
    /// Path of the websocket URL and the REST root.
    pub ws_path: &'static str,
    pub rest_path: &'static str,
    /// Serves the websocket and REST APIs on the listeners, as tasks of the simulator.
    pub serve: fn(Server, tokio::net::TcpListener, tokio::net::TcpListener),
}

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

/// What every personality's server shares with the market and the handle.
pub struct Server {
    pub config: SimConfig,
    pub personality: &'static Personality,
    pub state: Arc<Mutex<State>>,
    /// Bumped to cut every open connection (fault injection).
    pub kick: watch::Sender<u64>,
    /// Hostile frames to send to every connection (fault injection).
    pub hostile: broadcast::Sender<Hostile>,
    /// True: connections send nothing but stay open (fault injection).
    pub muted: watch::Sender<bool>,
    pub cancel: CancellationToken,
    pub tasks: TaskTracker,
    /// Trade history requests answered so far (for the 429 switch).
    pub trade_requests: std::sync::atomic::AtomicU32,
    /// Websocket frames written to clients (a load generator's output).
    pub frames_sent: Arc<std::sync::atomic::AtomicU64>,
}

/// What one simulated connection of a personality answers; [`drive`] runs what every
/// connection shares (shutdown, cuts, hostile frames, the mute switch, market steps, the
/// client's close).
pub(crate) trait Handler: Send {
    /// When the personality's own timer (pings, heartbeats, quiet books) fires next.
    fn next_timer(&self) -> Option<tokio::time::Instant>;
    /// That timer fired; `muted`: the server sends nothing now.
    fn on_timer(&mut self, muted: bool) -> anyhow::Result<Reply>;
    /// A text frame from the client.
    fn on_text(&mut self, text: &str) -> anyhow::Result<Vec<Message>>;
    /// One market step: the frames to send, each with the trade ids it delivers.
    fn on_update(&mut self, u: &Update) -> anyhow::Result<Vec<(Message, Vec<i64>)>>;
    fn hostile_frame(&self, h: Hostile) -> anyhow::Result<Message>;
    /// Channels the connection holds (released from the count when it ends).
    fn subscriptions(&self) -> usize;
}

/// What a handler's timer asks for.
pub(crate) enum Reply {
    Send(Vec<Message>),
    /// Send this frame, then end the connection.
    Close(Message),
}

/// A connection's bytes: plain TCP, or TLS over it when the simulator serves TLS.
pub(crate) trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}
pub(crate) type Socket = Box<dyn Io>;

/// How long a client may take over its TLS handshake.
const TLS_HANDSHAKE: Duration = Duration::from_secs(5);

/// Accepts websocket connections until the simulator stops, each run by `connection` in a
/// task of its own (after its TLS handshake when the simulator serves TLS).
pub(crate) async fn accept<F, Fut>(
    server: &Server,
    listener: tokio::net::TcpListener,
    connection: F,
) where
    F: Fn(Socket) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let tls = server
        .config
        .tls
        .clone()
        .map(tokio_rustls::TlsAcceptor::from);
    let connection = Arc::new(connection);
    loop {
        let accepted = tokio::select! {
            _ = server.cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((tcp, _)) => {
                let _ = tcp.set_nodelay(true);
                let (tls, connection) = (tls.clone(), connection.clone());
                server.tasks.spawn(async move {
                    let socket: Socket = match tls {
                        None => Box::new(tcp),
                        Some(tls) => {
                            match tokio::time::timeout(TLS_HANDSHAKE, tls.accept(tcp)).await {
                                Ok(Ok(s)) => Box::new(s),
                                Ok(Err(e)) => {
                                    tracing::debug!(error = %e, "simulator TLS handshake failed");
                                    return;
                                }
                                Err(_) => return,
                            }
                        }
                    };
                    if let Err(e) = connection(socket).await {
                        tracing::debug!(error = %e, "simulator connection ended");
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "simulator accept failed"),
        }
    }
}

/// TCP with a TLS handshake per accepted connection, for the REST server.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, SocketAddr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                // out of descriptors or the like: do not spin on it
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            // a client that fails its handshake is its own problem; the next one is served
            if let Ok(Ok(s)) = tokio::time::timeout(TLS_HANDSHAKE, self.tls.accept(tcp)).await {
                return (s, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// Serves a personality's REST routes until the simulator stops (over TLS when it serves TLS).
pub(crate) async fn serve_http(
    server: &Server,
    listener: tokio::net::TcpListener,
    app: axum::Router,
) {
    let cancel = server.cancel.clone();
    let stop = async move { cancel.cancelled().await };
    let r = match server.config.tls.clone() {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
        }
        Some(tls) => {
            let listener = TlsListener {
                tcp: listener,
                tls: tokio_rustls::TlsAcceptor::from(tls),
            };
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
        }
    };
    if let Err(e) = r {
        tracing::warn!(error = %e, "simulator REST server stopped");
    }
}

/// Steps a connection may have waiting before it is hung up on as too slow (as a real server
/// drops slow consumers).
const TAP_CAPACITY: usize = 16_384;

/// A connection's place in the market's fan-out: each market step goes only to the
/// connections holding a channel of its symbol (not to every connection to filter), so the
/// simulator's cost grows with what is subscribed, not with symbols times connections.
#[derive(Clone)]
pub(crate) struct Tap {
    id: u64,
    tx: tokio::sync::mpsc::Sender<Arc<Update>>,
    /// Cancelled when the connection fell [`TAP_CAPACITY`] steps behind.
    slow: CancellationToken,
}

/// What [`drive`] reads a connection's market steps from.
pub(crate) struct TapRx {
    id: u64,
    rx: tokio::sync::mpsc::Receiver<Arc<Update>>,
    slow: CancellationToken,
}

impl Tap {
    pub(crate) fn new(server: &Server) -> (Tap, TapRx) {
        let (tx, rx) = tokio::sync::mpsc::channel(TAP_CAPACITY);
        let id = {
            let mut st = lock(&server.state);
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

/// Runs one accepted connection with its personality's handler until either side ends it.
pub(crate) async fn drive<S>(
    server: &Server,
    mut ws: S,
    h: &mut dyn Handler,
    mut steps: TapRx,
) -> anyhow::Result<()>
where
    S: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error>
        + futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + Unpin,
{
    use futures_util::{SinkExt, StreamExt};
    let mut kick = server.kick.subscribe();
    let mut hostile = server.hostile.subscribe();
    let result: anyhow::Result<()> = async {
        loop {
            let timer = h.next_timer();
            tokio::select! {
                _ = server.cancel.cancelled() => {
                    let _ = ws.close().await;
                    return Ok(());
                }
                _ = kick.changed() => anyhow::bail!("connection cut by fault injection"),
                _ = steps.slow.cancelled() => anyhow::bail!("client too slow, {TAP_CAPACITY} steps behind"),
                m = hostile.recv() => {
                    if let Ok(m) = m {
                        ws.send(h.hostile_frame(m)?).await?;
                        if m == Hostile::CloseWithNul {
                            let _ = ws.flush().await;
                            return Ok(());
                        }
                    }
                }
                _ = tokio::time::sleep_until(timer.unwrap_or_else(tokio::time::Instant::now)), if timer.is_some() => {
                    let muted = *server.muted.borrow();
                    match h.on_timer(muted)? {
                        Reply::Send(frames) => {
                            for f in frames {
                                ws.send(f).await?;
                            }
                        }
                        Reply::Close(f) => {
                            ws.send(f).await?;
                            let _ = ws.flush().await;
                            return Ok(());
                        }
                    }
                }
                msg = ws.next() => {
                    let Some(msg) = msg else { return Ok(()) };
                    match msg? {
                        Message::Text(t) => {
                            for f in h.on_text(&t)? {
                                ws.send(f).await?;
                            }
                        }
                        Message::Close(_) => {
                            // tungstenite queues the close reply; flush it and stop sending
                            let _ = ws.flush().await;
                            return Ok(());
                        }
                        _ => {}
                    }
                }
                u = steps.rx.recv() => {
                    let Some(u) = u else { return Ok(()) };
                    if *server.muted.borrow() {
                        continue;
                    }
                    for (frame, trade_ids) in h.on_update(&u)? {
                        ws.feed(frame).await?;
                        server.frames_sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if !trade_ids.is_empty() {
                            lock(&server.state).delivered.entry(u.symbol.to_string()).or_default().extend(trade_ids);
                        }
                    }
                    // one write for the step's frames
                    ws.flush().await?;
                }
            }
        }
    }
    .await;
    let mut st = lock(&server.state);
    st.subscriptions -= h.subscriptions();
    for taps in st.taps.values_mut() {
        taps.retain(|t| t.id != steps.id);
    }
    result
}

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

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            venue: cdc_v1::VENUE,
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
    taps: HashMap<String, Vec<Tap>>,
    next_tap: u64,
    /// Market steps taken (each steps every market).
    pub ticks: u64,
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
