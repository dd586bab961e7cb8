//! One websocket connection, carrying the symbols and streams the venue's plan put on it:
//! connect, subscribe (paced as the venue asks), read frames, answer pings, route each event
//! to its symbol's marks and counters, hand events to the writer, reconnect with backoff
//! when the socket drops or goes silent.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

use super::marks::{HoleCheck, Marks};
use crate::config::Config;
use crate::model::{Event, Session, StreamKey, now_us};
use crate::runtime::backoff::ReconnectPolicy;
use crate::runtime::stagger::Stagger;
use crate::venue::{
    ConnectionPlan, DecodeError, Frame, Refusal, RefusalKind, Subscription, Venue, VenueSession,
};

pub use crate::stats::{ChannelStats, WorkerStats};

/// A close reason as a short label for metrics.
pub fn reason_class(reason: &str) -> &'static str {
    const CLASSES: [(&str, &str); 9] = [
        ("silent", "silence"),
        ("read error", "read_error"),
        ("connection ended", "cut"),
        ("closed by venue", "closed_by_venue"),
        ("subscribe failed", "send_error"),
        ("resubscribe failed", "send_error"),
        ("send failed", "send_error"),
        ("worker panicked", "panic"),
        ("writer stopped", "writer_stopped"),
    ];
    CLASSES
        .iter()
        .find(|(prefix, _)| reason.starts_with(prefix))
        .map_or("other", |(_, class)| class)
}

/// What the fleet is asked to do.
#[derive(Debug)]
pub enum Request {
    /// Symbols to record from now on (listed since start-up).
    Add(Vec<Arc<str>>),
    /// Symbols no longer listed: unsubscribed and their sessions closed with `reason`.
    Retire(Vec<Arc<str>>, String),
    /// Symbols a connection shed because the venue refused more subscriptions there: onto new
    /// connections carrying at most `streams` streams each.
    Move { feeds: Vec<Feed>, streams: usize },
}

/// One symbol a connection carries: its counters and its marks.
#[derive(Clone, Debug)]
pub struct Feed {
    pub symbol: Arc<str>,
    pub stats: Arc<WorkerStats>,
    /// How far this symbol's streams are known complete (shared with backfill).
    pub marks: Arc<Marks>,
}

/// One connection: the symbols and streams the venue's plan put on it.
#[derive(Clone)]
pub struct Worker {
    pub venue: Arc<dyn Venue>,
    pub plan: Arc<ConnectionPlan>,
    /// One per symbol of the plan, in its order.
    pub feeds: Arc<[Feed]>,
    /// Symbol -> index into `feeds`.
    index: Arc<HashMap<Arc<str>, usize>>,
    pub config: Arc<Config>,
    /// Into the writer; a full queue makes this worker wait (backpressure).
    pub tx: crate::store::queue::EventTx,
    pub shutdown: CancellationToken,
    /// Connection attempts of all workers share this rate.
    pub stagger: Arc<Stagger>,
    /// The open connection's session rows (one per symbol), so the supervisor can close them
    /// if this task dies.
    pub current: Arc<std::sync::Mutex<Vec<Session>>>,
    /// Set when shutdown starts; the close handshake fits in it.
    pub deadline: Arc<crate::runtime::deadline::Deadline>,
    /// Hands holes to the backfill task (None: backfill off).
    pub backfill: Option<mpsc::UnboundedSender<HoleCheck>>,
    /// Per feed: still carried here (a symbol delisted or moved to another connection is
    /// not; it is neither subscribed nor counted here again).
    active: Arc<[AtomicBool]>,
    /// Streams the venue refused as bad requests: never asked for again.
    refused: Arc<std::sync::Mutex<HashSet<Stream>>>,
    /// Orders from the fleet; one receiver, kept across panics.
    control: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Control>>>,
    /// Asks for new connections (symbols the venue would not take more streams of here).
    fleet: Option<mpsc::UnboundedSender<Request>>,
    tls: Arc<rustls::ClientConfig>,
}

/// One stream of one symbol.
type Stream = (Arc<str>, StreamKey);

/// What the fleet tells a running worker.
#[derive(Debug)]
pub enum Control {
    /// Stop carrying these symbols (delisted): their streams are unsubscribed and their
    /// sessions closed with the reason; a worker left with none ends.
    Retire(Vec<Arc<str>>, String),
}

/// What a worker shares with the rest of the run.
pub struct Shared {
    pub venue: Arc<dyn Venue>,
    pub config: Arc<Config>,
    pub tx: crate::store::queue::EventTx,
    pub shutdown: CancellationToken,
    pub stagger: Arc<Stagger>,
    pub deadline: Arc<crate::runtime::deadline::Deadline>,
    pub backfill: Option<mpsc::UnboundedSender<HoleCheck>>,
    /// Where workers ask for new connections (None: they cannot split).
    pub fleet: Option<mpsc::UnboundedSender<Request>>,
    /// The run's TLS trust (compiled-in roots plus `connection.ca_file`).
    pub tls: Arc<rustls::ClientConfig>,
}

/// Trade-id jumps on a live socket are checked over REST at most this often.
const ID_JUMP_CHECK_EVERY: Duration = Duration::from_secs(60);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One open connection: its socket, its frame reader, the subscriptions still to send and
/// the `sessions` rows of the symbols it carries.
struct Conn {
    ws: Ws,
    reader: Reader,
    pending: VecDeque<Subscription>,
    /// Between two subscriptions (None: the venue asks for no pacing).
    pace: Option<Duration>,
    next_send: Instant,
    rows: Vec<Session>,
    session_id: String,
    connected_at_us: i64,
}

impl Conn {
    /// Requests the venue refused for the rate are asked again, later, in order; the
    /// refusals of one burst (answers to requests already sent) make one back-off, a
    /// refusal of a request sent after it doubles it.
    fn requeue_rate_refused(&mut self) {
        let r = &mut self.reader;
        for sub in r.retry.drain(..).rev() {
            self.pending.push_front(sub);
        }
        let now = Instant::now();
        if r.rate_until.is_none_or(|t| now >= t) {
            r.rate_until = Some(now + r.rate_backoff);
            r.rate_backoff = (r.rate_backoff * 2).min(RATE_BACKOFF_MAX);
        }
        self.next_send = self.next_send.max(r.rate_until.unwrap_or(now));
    }
}

/// Why a connection's read loop ended (an empty reason: it has not).
#[derive(Default)]
struct Ending {
    reason: String,
    writer_gone: bool,
    shutdown: bool,
    retired: bool,
}

enum End {
    /// Shutdown was asked; the session closed cleanly.
    Shutdown,
    /// The connection ended; reconnect. `fresh` when it delivered market data (resets backoff).
    Dropped { fresh: bool },
    /// The writer is gone; nothing to record into.
    WriterGone,
    /// Every symbol left this connection (delisted or moved): the worker ends.
    Retired,
}

/// Back-off after the venue refused a request for the request rate: doubled per refusal
/// within a connection, up to the cap.
const RATE_BACKOFF_FIRST: Duration = Duration::from_secs(1);
const RATE_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// What one socket read takes at most. tungstenite zero-fills this much before every read
/// (128 KiB by default: a memset per read that showed in profiles); a loaded socket still
/// returns many frames a read, and a larger frame is read whole all the same.
const READ_BUFFER_BYTES: usize = 16 * 1024;
/// Ids of unsubscribe requests start here, clear of the venue's subscription ids.
const UNSUBSCRIBE_IDS: u64 = 1 << 32;

impl Worker {
    /// The worker and the sender the fleet controls it with.
    pub fn new(
        shared: &Shared,
        plan: Arc<ConnectionPlan>,
        feeds: Vec<Feed>,
    ) -> (Worker, mpsc::UnboundedSender<Control>) {
        let index = feeds
            .iter()
            .enumerate()
            .map(|(i, f)| (f.symbol.clone(), i))
            .collect();
        let (control_tx, control) = mpsc::unbounded_channel();
        let w = Worker {
            active: feeds.iter().map(|_| AtomicBool::new(true)).collect(),
            refused: Default::default(),
            control: Arc::new(tokio::sync::Mutex::new(control)),
            fleet: shared.fleet.clone(),
            tls: shared.tls.clone(),
            venue: shared.venue.clone(),
            plan,
            feeds: feeds.into(),
            index: Arc::new(index),
            config: shared.config.clone(),
            tx: shared.tx.clone(),
            shutdown: shared.shutdown.clone(),
            stagger: shared.stagger.clone(),
            current: Default::default(),
            deadline: shared.deadline.clone(),
            backfill: shared.backfill.clone(),
        };
        (w, control_tx)
    }

    fn is_active(&self, i: usize) -> bool {
        self.active[i].load(Ordering::Relaxed)
    }

    /// Counts a happening of the connection for every symbol it carries (each of their feeds
    /// saw it: a reconnect, a skipped frame).
    fn each(&self, f: impl Fn(&WorkerStats)) {
        for (i, feed) in self.feeds.iter().enumerate() {
            if self.is_active(i) {
                f(&feed.stats);
            }
        }
    }

    /// The plan as it stands: symbols still carried, streams not refused.
    fn live_plan(&self) -> ConnectionPlan {
        let refused = lock(&self.refused);
        let carried = |s: &Arc<str>| self.index.get(s).is_some_and(|&i| self.is_active(i));
        ConnectionPlan {
            name: self.plan.name.clone(),
            symbols: self
                .plan
                .symbols
                .iter()
                .filter(|s| carried(s))
                .cloned()
                .collect(),
            streams: self
                .plan
                .streams
                .iter()
                .filter(|(s, k)| carried(s) && !refused.contains(&(s.clone(), k.clone())))
                .cloned()
                .collect(),
        }
    }

    fn decoder(&self) -> Box<dyn VenueSession> {
        self.venue.session(
            &self.live_plan().symbols,
            self.config.connection.max_frame_bytes,
            self.venue.rules().with_clocks(&self.config.record),
        )
    }

    pub async fn run(self) {
        let policy = ReconnectPolicy::from_config(&self.config.connection);
        let mut delays = policy.delays(None);
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            match self.session().await {
                End::Shutdown | End::WriterGone | End::Retired => return,
                End::Dropped { fresh } => {
                    if fresh {
                        delays = policy.delays(None);
                    }
                }
            }
            let delay = delays
                .next()
                .unwrap_or(Duration::from_secs(self.config.connection.reconnect_max_s));
            tracing::debug!(connection = %self.plan.name, delay_ms = delay.as_millis() as u64, "reconnecting after delay");
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One connection: connect, open its session rows, subscribe, read until it ends, close.
    async fn session(&self) -> End {
        let mut control = self.control.lock().await;
        self.leave_retired(&mut control);
        let plan = self.live_plan();
        if plan.symbols.is_empty() {
            return End::Retired;
        }
        let ws = match self.connect().await {
            Ok(ws) => ws,
            Err(end) => return end,
        };
        let Some(mut conn) = self.open(ws, &plan).await else {
            return End::WriterGone;
        };
        let mut ending = Ending::default();
        if let Err(reason) = self.subscribe_at_once(&mut conn).await {
            ending.reason = reason;
        }
        self.read(&mut conn, &mut control, &mut ending).await;
        if ending.shutdown {
            self.close_handshake(&mut conn, &mut ending).await;
        }
        self.close(conn, ending).await
    }

    /// Symbols retired while no socket was open leave before this one subscribes (their
    /// sessions closed with the last socket).
    fn leave_retired(&self, control: &mut mpsc::UnboundedReceiver<Control>) {
        while let Ok(Control::Retire(symbols, _)) = control.try_recv() {
            for s in &symbols {
                if let Some(&i) = self.index.get(s) {
                    self.active[i].store(false, Ordering::Relaxed);
                }
            }
        }
    }

    /// The socket, at the run's connect rate, within `connect_timeout_s`.
    async fn connect(&self) -> Result<Ws, End> {
        let c = &self.config.connection;
        let conn = &self.plan.name;
        tokio::select! {
            _ = self.shutdown.cancelled() => return Err(End::Shutdown),
            _ = self.stagger.wait() => {}
        }
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER_BYTES)
            .max_message_size(Some(c.max_frame_bytes))
            .max_frame_size(Some(c.max_frame_bytes));
        let connect = tokio_tungstenite::connect_async_tls_with_config(
            self.config.venue.ws_url.as_str(),
            Some(ws_config),
            true,
            Some(crate::runtime::tls::connector(&self.tls)),
        );
        tokio::select! {
            _ = self.shutdown.cancelled() => Err(End::Shutdown),
            r = tokio::time::timeout(Duration::from_secs(c.connect_timeout_s), connect) => match r {
                Ok(Ok((ws, _))) => Ok(ws),
                Ok(Err(e)) => {
                    tracing::warn!(connection = %conn, error = %e, "connect failed");
                    self.each(|s| s.reconnect("connect_failed"));
                    Err(End::Dropped { fresh: false })
                }
                Err(_) => {
                    tracing::warn!(connection = %conn, timeout_s = c.connect_timeout_s, "connect timed out");
                    self.each(|s| s.reconnect("connect_timeout"));
                    Err(End::Dropped { fresh: false })
                }
            }
        }
    }

    /// The connection's `sessions` rows (one per symbol: analysts ask when a symbol was
    /// live, not a socket) sent, its reader, and its subscriptions queued. None: the writer
    /// is gone.
    async fn open(&self, ws: Ws, plan: &ConnectionPlan) -> Option<Conn> {
        self.each(|s| {
            s.connects.fetch_add(1, Ordering::Relaxed);
        });
        let connected_at_us = now_us();
        let session_id = format!("{connected_at_us:016x}-{:08x}", fastrand::u32(..));
        let rows: Vec<Session> = self
            .feeds
            .iter()
            .enumerate()
            .filter(|(i, _)| self.is_active(*i))
            .map(|(_, f)| Session {
                venue: self.venue.name(),
                symbol: f.symbol.clone(),
                session_id: session_id.clone(),
                connected_at_us,
                disconnected_at_us: None,
                close_reason: None,
            })
            .collect();
        for row in &rows {
            if self.tx.send(Event::Session(row.clone())).await.is_err() {
                return None;
            }
        }
        *lock(&self.current) = rows.clone();
        tracing::info!(connection = %self.plan.name, symbols = rows.len(), session = %session_id, "connected");
        let subscriptions = self.venue.subscribe_frames(plan, &self.config.record);
        let reader = self.reader(&subscriptions);
        let limits = self.venue.socket_limits();
        Some(Conn {
            ws,
            reader,
            pending: subscriptions.into(),
            pace: limits
                .sends_per_s
                .map(|r| Duration::from_secs(1) / r.max(1)),
            next_send: Instant::now() + limits.settle,
            rows,
            session_id,
            connected_at_us,
        })
    }

    /// A fresh frame reader for a connection about to send `subscriptions`.
    fn reader(&self, subscriptions: &[Subscription]) -> Reader {
        let mut subscribed: Vec<bool> = (0..self.feeds.len()).map(|i| self.is_active(i)).collect();
        for sub in subscriptions {
            for i in self.feeds_of(sub) {
                subscribed[i] = false;
            }
        }
        let n = self.feeds.len();
        Reader {
            to_check: (0..n)
                .filter(|&i| subscribed[i] && self.is_active(i))
                .collect(),
            requests: HashMap::new(),
            retry: Vec::new(),
            rate_backoff: RATE_BACKOFF_FIRST,
            rate_until: None,
            over_cap: Vec::new(),
            next_unsubscribe: UNSUBSCRIBE_IDS,
            subscribed,
            last_books: HashMap::new(),
            last_jump_check: vec![None; n],
            awaiting_first_trade: vec![None; n],
            channels: Vec::new(),
            decoder: self.decoder(),
            invalid_burst: 0,
            events: Vec::with_capacity(64),
            by_feed: vec![Vec::new(); if n > 1 { n } else { 0 }],
            last_recv_us: 0,
            fresh: false,
            error_burst: 0,
            unknown_symbols: 0,
        }
    }

    /// A venue that asks for no pacing and no pause gets every subscription before the
    /// first read. Err: why the connection ends.
    async fn subscribe_at_once(&self, conn: &mut Conn) -> Result<(), String> {
        if conn.pace.is_some() || !self.venue.socket_limits().settle.is_zero() {
            return Ok(());
        }
        while let Some(sub) = conn.pending.pop_front() {
            if let Err(e) = conn.ws.send(Message::text(sub.frame.clone())).await {
                return Err(format!("subscribe failed: {e}"));
            }
            conn.reader.sent(self, sub);
        }
        Ok(())
    }

    /// Reads until the connection ends: frames, paced subscriptions, the fleet's requests,
    /// silence and the periodic checks.
    async fn read(
        &self,
        conn: &mut Conn,
        control: &mut mpsc::UnboundedReceiver<Control>,
        end: &mut Ending,
    ) {
        let c = &self.config.connection;
        let silence = c.silence_timeout();
        let channel_silence = Duration::from_secs(c.channel_silence_s);
        let mut check = tokio::time::interval(Duration::from_secs(1).min(channel_silence));
        let mut last_frame = Instant::now();
        while end.reason.is_empty() {
            let next = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => {
                    end.shutdown = true;
                    end.reason = "shutdown".into();
                    break;
                }
                r = conn.ws.next() => r,
                _ = tokio::time::sleep_until(last_frame + silence) => {
                    end.reason = format!("silent for {}s", silence.as_secs());
                    break;
                }
                _ = tokio::time::sleep_until(conn.next_send), if !conn.pending.is_empty() => {
                    self.send_next(conn, end).await;
                    continue;
                }
                Some(cmd) = control.recv() => {
                    self.on_control(conn, cmd, end).await;
                    continue;
                }
                _ = check.tick() => {
                    self.on_tick(conn, channel_silence, end).await;
                    continue;
                }
            };
            last_frame = Instant::now();
            match next {
                None => end.reason = "connection ended without close frame".into(),
                Some(Err(e)) => end.reason = format!("read error: {e}"),
                Some(Ok(msg)) => self.on_message(conn, &msg, end).await,
            }
        }
    }

    /// The next paced subscription goes out.
    async fn send_next(&self, conn: &mut Conn, end: &mut Ending) {
        if let Some(sub) = conn.pending.pop_front() {
            if let Err(e) = conn.ws.send(Message::text(sub.frame.clone())).await {
                end.reason = format!("subscribe failed: {e}");
            }
            conn.reader.sent(self, sub);
        }
        conn.next_send = Instant::now() + conn.pace.unwrap_or_default();
    }

    /// The fleet retires symbols (delisted): they leave this connection.
    async fn on_control(&self, conn: &mut Conn, cmd: Control, end: &mut Ending) {
        let Control::Retire(symbols, why) = cmd;
        let feeds = symbols
            .iter()
            .filter_map(|s| self.index.get(s).copied())
            .collect();
        let left = self
            .retire(&mut conn.reader, &mut conn.rows, feeds, &why)
            .await;
        if let Some(e) = departed(&mut conn.ws, left, conn.rows.is_empty(), &why).await {
            (end.reason, end.writer_gone, end.retired) = e;
        }
    }

    /// The periodic check: streams refused for the venue's cap are shed to other
    /// connections; channels silent while others deliver are subscribed again.
    async fn on_tick(&self, conn: &mut Conn, channel_silence: Duration, end: &mut Ending) {
        if !conn.reader.over_cap.is_empty() {
            let left = self
                .shed(&mut conn.reader, &mut conn.rows, &mut conn.pending)
                .await;
            let why = "all moved to other connections";
            if let Some(e) = departed(&mut conn.ws, left, conn.rows.is_empty(), why).await {
                (end.reason, end.writer_gone, end.retired) = e;
            }
        }
        for frame in conn.reader.stale_channels(channel_silence) {
            self.feeds_of_frame(&conn.reader, &frame);
            if let Err(e) = conn.ws.send(Message::text(frame)).await {
                end.reason = format!("resubscribe failed: {e}");
            }
        }
    }

    /// A frame read: handled, its replies sent, requests refused for the rate queued again.
    async fn on_message(&self, conn: &mut Conn, msg: &Message, end: &mut Ending) {
        match conn.reader.handle(self, msg).await {
            Handled::Continue(replies) => {
                for reply in replies {
                    if let Err(e) = conn.ws.send(Message::text(reply)).await {
                        end.reason = format!("send failed: {e}");
                        break;
                    }
                }
                if !conn.reader.retry.is_empty() {
                    conn.requeue_rate_refused();
                }
            }
            Handled::Closed(r) => end.reason = r,
            Handled::WriterGone => {
                end.writer_gone = true;
                end.reason = "writer stopped".into();
            }
        }
    }

    /// Close handshake at shutdown: everything the venue sent before answering our close
    /// frame is read and recorded, so nothing received is lost.
    async fn close_handshake(&self, conn: &mut Conn, end: &mut Ending) {
        let _ = conn.ws.close(None).await;
        // half of what is left at most: the writer needs the rest
        let grace = Duration::from_millis(self.config.connection.close_grace_ms);
        let grace = grace.min(self.deadline.remaining().map(|r| r / 2).unwrap_or(grace));
        let deadline = Instant::now() + grace;
        while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, conn.ws.next()).await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
            if let Handled::WriterGone = conn.reader.handle(self, &msg).await {
                end.writer_gone = true;
                break;
            }
        }
    }

    /// The connection's session rows closed with the reason; what the worker does next.
    async fn close(&self, conn: Conn, end: Ending) -> End {
        let Conn {
            mut rows,
            session_id,
            connected_at_us,
            reader,
            ..
        } = conn;
        let reason = end.reason;
        lock(&self.current).clear();
        let closed_at = now_us().max(connected_at_us);
        let c = &self.plan.name;
        // a stop's own closing is routine; every other departure is worth a look
        if reason == "shutdown" {
            tracing::info!(connection = %c, session = %session_id, reason = %reason, "disconnected");
        } else {
            tracing::warn!(connection = %c, session = %session_id, reason = %reason, "disconnected");
        }
        for row in &mut rows {
            row.disconnected_at_us = Some(closed_at);
            row.close_reason = Some(reason.clone());
        }
        if end.writer_gone {
            return End::WriterGone;
        }
        for row in rows {
            if self.tx.send(Event::Session(row)).await.is_err() {
                return End::WriterGone;
            }
        }
        if end.shutdown {
            End::Shutdown
        } else if end.retired {
            End::Retired
        } else {
            self.each(|s| s.reconnect(reason_class(&reason)));
            End::Dropped {
                fresh: reader.fresh,
            }
        }
    }

    /// Stops carrying `feeds` on this connection: their channels are no longer watched, their
    /// session rows close with `why`; returns the frame that unsubscribes their streams.
    /// Err: the writer is gone.
    async fn retire(
        &self,
        reader: &mut Reader,
        rows: &mut Vec<Session>,
        feeds: Vec<usize>,
        why: &str,
    ) -> Result<Vec<String>, ()> {
        let mut streams: Vec<(Arc<str>, StreamKey)> = Vec::new();
        let closed_at = now_us();
        for i in feeds {
            if !self.active[i].swap(false, Ordering::Relaxed) {
                continue;
            }
            let symbol = &self.feeds[i].symbol;
            for c in reader.channels.iter().filter(|c| c.feed == i) {
                let s = (symbol.clone(), c.key.clone());
                if !streams.contains(&s) {
                    streams.push(s);
                }
            }
            reader.channels.retain(|c| c.feed != i);
            reader.to_check.retain(|&j| j != i);
            reader.last_books.retain(|(j, _), _| *j != i);
            lock(&self.current).retain(|r| r.symbol != *symbol);
            tracing::info!(connection = %self.plan.name, %symbol, reason = why, "symbol leaves this connection");
            if let Some(pos) = rows.iter().position(|r| r.symbol == *symbol) {
                let mut row = rows.remove(pos);
                row.disconnected_at_us = Some(closed_at.max(row.connected_at_us));
                row.close_reason = Some(why.to_string());
                if self.tx.send(Event::Session(row)).await.is_err() {
                    return Err(());
                }
            }
        }
        if streams.is_empty() || rows.is_empty() {
            return Ok(Vec::new()); // a connection left with nothing closes instead
        }
        reader.next_unsubscribe += 1;
        Ok(self
            .venue
            .unsubscribe_frame(reader.next_unsubscribe, &streams)
            .into_iter()
            .collect())
    }

    /// The venue refused streams for its subscription cap: this connection keeps, in plan
    /// order, as many symbols as the streams it holds cover (their refused streams asked for
    /// again once the others leave); the rest move to new connections carrying at most as
    /// many streams as this one holds.
    async fn shed(
        &self,
        reader: &mut Reader,
        rows: &mut Vec<Session>,
        pending: &mut std::collections::VecDeque<Subscription>,
    ) -> Result<Vec<String>, ()> {
        let over: HashSet<(Arc<str>, StreamKey)> = reader.over_cap.drain(..).collect();
        let Some(fleet) = &self.fleet else {
            return Ok(Vec::new());
        };
        let plan = self.live_plan();
        let sent = reader.channels.len();
        let held = sent.saturating_sub(over.len()).max(1);
        let mut kept = 0;
        let mut moving: Vec<usize> = Vec::new();
        for symbol in &plan.symbols {
            let Some(&i) = self.index.get(symbol) else {
                continue;
            };
            let n = plan.streams.iter().filter(|(s, _)| s == symbol).count();
            if moving.is_empty() && kept + n <= held {
                kept += n;
            } else {
                moving.push(i);
            }
        }
        if moving.len() == plan.symbols.len() {
            moving.remove(0); // the first symbol stays, whatever it holds
        }
        if moving.is_empty() {
            // everything fits by the count, yet the venue refused: asking again would loop
            let mut refused = lock(&self.refused);
            for (symbol, key) in over {
                tracing::error!(connection = %self.plan.name, %symbol, stream = %key.name(),
                    "the venue refused this stream for its subscription cap though the connection holds fewer: not asked for again");
                reader
                    .channels
                    .retain(|c| !(self.feeds[c.feed].symbol == symbol && c.key == key));
                refused.insert((symbol, key));
            }
            return Ok(Vec::new());
        }
        let moved: Vec<Feed> = moving.iter().map(|&i| self.feeds[i].clone()).collect();
        tracing::warn!(connection = %self.plan.name, moving = moved.len(), streams_held = held,
            "the venue refused more subscriptions on this connection: moving symbols to a new one");
        let frames = self
            .retire(
                reader,
                rows,
                moving,
                "moved to another connection (the venue refused more subscriptions on this one)",
            )
            .await?;
        // what is still to be sent, and what was refused, for the symbols that stay
        let carried = |s: &Arc<str>| self.index.get(s).is_some_and(|&i| self.is_active(i));
        let mut again: Vec<(Arc<str>, StreamKey)> =
            over.into_iter().filter(|(s, _)| carried(s)).collect();
        for sub in pending.drain(..) {
            again.extend(sub.streams.into_iter().filter(|(s, _)| carried(s)));
        }
        again.sort_by(|a, b| (&*a.0, a.1.name()).cmp(&(&*b.0, b.1.name())));
        again.dedup();
        if !again.is_empty() {
            let conn = ConnectionPlan {
                name: plan.name.clone(),
                symbols: plan
                    .symbols
                    .iter()
                    .filter(|s| carried(s))
                    .cloned()
                    .collect(),
                streams: again,
            };
            pending.extend(self.venue.subscribe_frames(&conn, &self.config.record));
        }
        if !moved.is_empty() {
            let _ = fleet.send(Request::Move {
                feeds: moved,
                streams: held,
            });
        }
        Ok(frames)
    }

    /// The feeds a subscription opens streams of, each once.
    fn feeds_of(&self, sub: &Subscription) -> Vec<usize> {
        let mut out: Vec<usize> = sub
            .streams
            .iter()
            .filter_map(|(s, _)| self.index.get(s).copied())
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Counts a resubscription for the symbols whose channel fell silent.
    fn feeds_of_frame(&self, reader: &Reader, frame: &str) {
        for ch in reader.channels.iter().filter(|c| c.frame == frame) {
            self.feeds[ch.feed]
                .stats
                .resubscribes
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// When a subscribed channel last delivered, and how to subscribe to it again.
struct ChannelSeen {
    feed: usize,
    key: StreamKey,
    frame: String,
    seen: Instant,
}

struct Reader {
    /// Subscriptions sent, by request id: what a refusal naming the id refused.
    requests: HashMap<u64, Subscription>,
    /// Subscriptions refused for the request rate, to send again after `rate_backoff`.
    retry: Vec<Subscription>,
    rate_backoff: Duration,
    /// End of the back-off the last burst of rate refusals started.
    rate_until: Option<Instant>,
    /// Streams the venue refused for the subscription cap, dealt with at the next tick
    /// (refusals come one per channel: they are gathered first).
    over_cap: Vec<(Arc<str>, StreamKey)>,
    /// Id of the last unsubscribe request.
    next_unsubscribe: u64,
    /// Per feed: a subscription frame of it went out. Its hole is checked at the next frame
    /// read, before that frame's events can move its marks (from then on its data arrives
    /// on this socket).
    subscribed: Vec<bool>,
    /// Feeds subscribed whose hole is to be checked at the next frame.
    to_check: Vec<usize>,
    /// Per (feed, depth step): the fingerprint of the last full book stored on this
    /// connection (`depth_dedupe`; a 128-bit hash, not a copy of the book).
    last_books: HashMap<(usize, i16), u128>,
    /// Per feed: when its trade-id jump was last handed to backfill.
    last_jump_check: Vec<Option<Instant>>,
    /// Per feed: the `open` trades row of its hole, until this connection's first trade
    /// bounds it (see `deliver`).
    awaiting_first_trade: Vec<Option<crate::model::Gap>>,
    channels: Vec<ChannelSeen>,
    decoder: Box<dyn VenueSession>,
    events: Vec<Event>,
    /// Per feed, when the connection carries several: the frame's events of that symbol.
    by_feed: Vec<Vec<Event>>,
    /// Receive times strictly increase per connection, so rows keyed by receive time
    /// (book snapshots, deltas, tickers) never collide when frames arrive in the same µs.
    last_recv_us: i64,
    fresh: bool,
    error_burst: u64,
    /// Invalid messages since the last frame without any (logged once per burst).
    invalid_burst: u64,
    /// Events for symbols this connection does not carry (dropped; logged once).
    unknown_symbols: u64,
}

impl Reader {
    /// A subscription frame went out: its streams are watched from now on.
    fn sent(&mut self, w: &Worker, sub: Subscription) {
        let now = Instant::now();
        if let Some(id) = sub.id {
            self.requests.insert(id, sub.clone());
        }
        for i in w.feeds_of(&sub) {
            if !self.subscribed[i] {
                self.subscribed[i] = true;
                self.to_check.push(i);
            }
        }
        for (symbol, key) in sub.streams {
            let Some(&feed) = w.index.get(&symbol) else {
                continue;
            };
            // exported from the subscription on: a channel that never delivers shows its age
            // (an alert on it sees a value, not "no data")
            lock(&w.feeds[feed].stats.channels)
                .entry(key.clone())
                .or_insert(ChannelStats {
                    messages: 0,
                    last: now,
                });
            // a request sent again (after a rate refusal) watches the same channels
            match self
                .channels
                .iter_mut()
                .find(|c| c.feed == feed && c.key == key)
            {
                Some(c) => {
                    c.frame = sub.frame.clone();
                    c.seen = now;
                }
                None => self.channels.push(ChannelSeen {
                    feed,
                    key,
                    frame: sub.frame.clone(),
                    seen: now,
                }),
            }
        }
    }

    /// Frames to resend for channels silent past `limit` while another channel delivers
    /// (a wholly silent socket is the silence timeout's business). Marks them as just asked.
    fn stale_channels(&mut self, limit: Duration) -> Vec<String> {
        let now = Instant::now();
        if !self.channels.iter().any(|c| now - c.seen < limit) {
            return Vec::new();
        }
        let mut out: Vec<String> = Vec::new();
        for c in self.channels.iter_mut().filter(|c| now - c.seen >= limit) {
            tracing::warn!(channel = %c.key.name(), silent_s = (now - c.seen).as_secs(), "channel silent while others deliver; subscribing again");
            c.seen = now;
            if !out.contains(&c.frame) {
                out.push(c.frame.clone());
            }
        }
        out
    }
}

enum Handled {
    /// Frames to send back (a pong, re-sync requests).
    Continue(Vec<String>),
    Closed(String),
    WriterGone,
}

impl Reader {
    /// Counts what validation found (for every symbol of the connection: the decoder's
    /// findings are per frame); the first invalid message of a burst is logged.
    fn tally(&mut self, w: &Worker, f: &crate::venue::validate::Findings) {
        if f.skewed > 0 {
            w.each(|s| {
                s.clock_skew.fetch_add(f.skewed as u64, Ordering::Relaxed);
            });
        }
        let Some(first) = f.first else {
            if self.invalid_burst > 1 {
                tracing::warn!(connection = %w.plan.name, dropped = self.invalid_burst, "burst of invalid messages ended");
            }
            self.invalid_burst = 0;
            return;
        };
        for (i, n) in f.invalid.iter().enumerate() {
            if *n > 0 {
                w.each(|s| {
                    s.invalid_by_kind[i].fetch_add(*n as u64, Ordering::Relaxed);
                });
            }
        }
        if self.invalid_burst == 0 {
            tracing::warn!(connection = %w.plan.name, kind = first.kind(), "invalid market data dropped (not stored)");
        }
        self.invalid_burst += f.invalid_total() as u64;
    }

    /// One frame read: holes of newly subscribed symbols on record first, then the frame
    /// decoded, the venue's reaction dealt with, and its events delivered per symbol.
    async fn handle(&mut self, w: &Worker, msg: &Message) -> Handled {
        let recv = now_us().max(self.last_recv_us + 1);
        self.last_recv_us = recv;
        let frame = match frame_of(msg) {
            Ok(f) => f,
            Err(h) => return h,
        };
        if let Err(gone) = self.check_holes(w).await {
            return gone;
        }
        let mut send = Vec::new();
        match self.decode(w, frame, recv) {
            Ok(reaction) => {
                if let Err(gone) = self.react(w, reaction, &mut send).await {
                    return gone;
                }
            }
            Err(e) => self.skipped(w, e),
        }
        if self.events.is_empty() {
            // a heartbeat, an ack, a skipped frame: a frame on every symbol's socket
            w.each(|s| {
                s.frames.fetch_add(1, Ordering::Relaxed);
            });
            return Handled::Continue(send);
        }
        self.fresh = true;
        match self.route(w).await {
            Ok(()) => Handled::Continue(send),
            Err(gone) => gone,
        }
    }

    /// Each symbol subscribed since the last frame is live: its data from now on arrives
    /// here, and the hole behind its marks is backfill's (taken before this frame moves the
    /// marks).
    async fn check_holes(&mut self, w: &Worker) -> Result<(), Handled> {
        for i in std::mem::take(&mut self.to_check) {
            let feed = &w.feeds[i];
            let mut check = feed.marks.check_at_connect(&feed.symbol);
            if let Some(b) = &w.backfill {
                // the hole goes on record ahead of anything this connection delivers: the
                // queue is FIFO and a batch one transaction, so a crash at any moment leaves
                // the hole recorded or nothing after it stored
                for g in check.open_rows(w.venue.name(), &w.config.record) {
                    if g.stream == StreamKey::Trades.name() {
                        self.awaiting_first_trade[i] = Some(g.clone());
                    }
                    if w.tx.send(Event::Gap(g)).await.is_err() {
                        return Err(Handled::WriterGone);
                    }
                }
                check.recorded = true;
                let _ = b.send(check);
            }
        }
        Ok(())
    }

    /// The frame's events into `self.events`; a decoder bug costs one frame, not the
    /// connection: the decoder starts again from fresh state.
    fn decode(
        &mut self,
        w: &Worker,
        frame: Frame<'_>,
        recv: i64,
    ) -> Result<crate::venue::Reaction, DecodeError> {
        self.events.clear();
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.decoder.on_frame(frame, recv, &mut self.events)
        }))
        .unwrap_or_else(|p| {
            self.decoder = w.decoder();
            self.events.clear();
            Err(DecodeError::Panic(panic_message(p.as_ref())))
        })
    }

    /// What the venue's frame asks of the connection: pongs counted, findings tallied,
    /// streams alive, refusals, book breaks (their re-sync frames added to `send`).
    async fn react(
        &mut self,
        w: &Worker,
        reaction: crate::venue::Reaction,
        send: &mut Vec<String>,
    ) -> Result<(), Handled> {
        if self.error_burst > 1 {
            tracing::warn!(connection = %w.plan.name, skipped = self.error_burst, "burst of bad frames ended");
        }
        self.error_burst = 0;
        if reaction.reply.is_some() {
            w.each(|s| {
                s.pings_answered.fetch_add(1, Ordering::Relaxed);
            });
        }
        self.tally(w, &reaction.findings);
        self.alive(w, &reaction.alive);
        for r in reaction.refusals {
            self.refusal(w, r);
        }
        send.extend(reaction.reply);
        for b in reaction.breaks {
            send.extend(self.book_break(w, b).await?);
        }
        Ok(())
    }

    /// A frame the venue session could not decode: counted by kind for every symbol of the
    /// socket; the first of a burst is logged, the burst's size when it ends.
    fn skipped(&mut self, w: &Worker, e: DecodeError) {
        w.each(|s| {
            s.decode_errors.fetch_add(1, Ordering::Relaxed);
            s.decode_errors_by_kind[e.index()].fetch_add(1, Ordering::Relaxed);
        });
        self.error_burst += 1;
        if self.error_burst == 1 {
            tracing::warn!(connection = %w.plan.name, kind = e.kind(), error = %e, "frame skipped");
        }
    }

    /// The frame's events to their symbols (marks, stats and sessions are per symbol);
    /// events of symbols that left the connection or it never carried are dropped.
    async fn route(&mut self, w: &Worker) -> Result<(), Handled> {
        if w.feeds.len() == 1 {
            let mut events = std::mem::take(&mut self.events);
            let r = self.deliver(w, 0, &mut events).await;
            self.events = events;
            return r;
        }
        let mut touched: Vec<usize> = Vec::new();
        for ev in self.events.drain(..) {
            let (_, symbol) = ev.venue_symbol();
            match w.index.get(symbol) {
                Some(&i) if !w.is_active(i) => {} // left this connection; unsubscribed
                Some(&i) => {
                    if self.by_feed[i].is_empty() {
                        touched.push(i);
                    }
                    self.by_feed[i].push(ev);
                }
                None => {
                    if self.unknown_symbols == 0 {
                        tracing::warn!(connection = %w.plan.name, %symbol, "data for a symbol this connection did not subscribe to (dropped)");
                    }
                    self.unknown_symbols += 1;
                }
            }
        }
        for i in touched {
            let mut events = std::mem::take(&mut self.by_feed[i]);
            let r = self.deliver(w, i, &mut events).await;
            events.clear();
            self.by_feed[i] = events;
            r?;
        }
        Ok(())
    }

    /// A request the venue refused: sent again later (request rate), its symbols moved
    /// (subscription cap), or its streams never asked for again (bad request).
    fn refusal(&mut self, w: &Worker, r: Refusal) {
        let sub = r.request.and_then(|id| self.requests.get(&id));
        let streams: Vec<(Arc<str>, StreamKey)> = if r.streams.is_empty() {
            sub.map(|s| s.streams.clone()).unwrap_or_default()
        } else {
            r.streams.clone()
        };
        let mut feeds: Vec<usize> = streams
            .iter()
            .filter_map(|(s, _)| w.index.get(s).copied())
            .collect();
        feeds.sort_unstable();
        feeds.dedup();
        if !streams.is_empty() && !feeds.iter().any(|&i| w.is_active(i)) {
            return; // about symbols that left this connection
        }
        feeds.retain(|&i| w.is_active(i));
        let k = r.kind.index();
        if feeds.is_empty() {
            w.each(|s| {
                s.refusals_by_kind[k].fetch_add(1, Ordering::Relaxed);
            });
        }
        for &i in &feeds {
            w.feeds[i].stats.refusals_by_kind[k].fetch_add(1, Ordering::Relaxed);
        }
        let active = (0..w.feeds.len()).filter(|&i| w.is_active(i)).count();
        match r.kind {
            RefusalKind::RateLimited => {
                if let Some(sub) = sub
                    && !self.retry.iter().any(|s| s.id == sub.id)
                {
                    if self.retry.is_empty() {
                        tracing::warn!(connection = %w.plan.name, detail = %r.detail, backoff_ms = self.rate_backoff.as_millis() as u64,
                            "the venue refused a request for the request rate: asking again after a back-off");
                    }
                    self.retry.push(sub.clone());
                }
            }
            RefusalKind::TooManyStreams if active > 1 && !feeds.is_empty() => {
                self.over_cap.extend(streams);
            }
            RefusalKind::TooManyStreams | RefusalKind::BadRequest => {
                let mut refused = lock(&w.refused);
                for (symbol, key) in streams {
                    let Some(&i) = w.index.get(&symbol) else {
                        continue;
                    };
                    if refused.insert((symbol.clone(), key.clone())) {
                        tracing::error!(connection = %w.plan.name, %symbol, stream = %key.name(), detail = %r.detail,
                            "the venue refused this stream: not asked for again (check the symbol and the [record] keys)");
                    }
                    self.channels.retain(|c| !(c.feed == i && c.key == key));
                }
                if feeds.is_empty() {
                    tracing::error!(connection = %w.plan.name, detail = %r.detail, "the venue refused a request");
                }
            }
            RefusalKind::Other => {
                tracing::warn!(connection = %w.plan.name, detail = %r.detail, "the venue answered a request with an error");
            }
        }
    }

    /// Streams the venue showed alive without rows are not silent: no resubscription.
    fn alive(&mut self, w: &Worker, streams: &[(Arc<str>, StreamKey)]) {
        if streams.is_empty() {
            return;
        }
        let now = Instant::now();
        for (symbol, key) in streams {
            let Some(&i) = w.index.get(symbol) else {
                continue;
            };
            for c in self
                .channels
                .iter_mut()
                .filter(|c| c.feed == i && c.key == *key)
            {
                c.seen = now;
            }
        }
    }

    /// A book stream lost updates: the stretch goes on record as an unrecoverable hole of
    /// that stream (books cannot be fetched back), and the frames that re-sync it are
    /// returned (the venue's, else the stream's subscription again).
    async fn book_break(
        &mut self,
        w: &Worker,
        b: crate::venue::BookBreak,
    ) -> Result<Vec<String>, Handled> {
        let Some(&i) = w.index.get(&b.symbol) else {
            return Ok(Vec::new());
        };
        let feed = &w.feeds[i];
        feed.stats.book_breaks.fetch_add(1, Ordering::Relaxed);
        let key = StreamKey::Book(b.depth_step);
        tracing::warn!(symbol = %b.symbol, stream = %key.name(), detail = %b.detail,
            "book updates lost: recorded as a hole, re-syncing the book");
        let now = crate::model::now_ms();
        let gap = crate::model::Gap {
            venue: w.venue.name(),
            symbol: feed.symbol.clone(),
            stream: key.name(),
            start_ms: b.last_ms,
            end_ms: Some(b.at_ms.max(b.last_ms)),
            status: crate::model::GapStatus::Unrecoverable,
            detected_at_ms: now,
            resolved_at_ms: Some(now),
            rows_recovered: 0,
            detail: Some(format!(
                "book sequence break: {}; the book is whole again from the next snapshot",
                b.detail
            )),
        };
        if w.tx.send(Event::Gap(gap)).await.is_err() {
            return Err(Handled::WriterGone);
        }
        // the snapshot that re-syncs is stored even if it equals the last one
        self.last_books.remove(&(i, b.depth_step));
        if !b.resync.is_empty() {
            return Ok(b.resync);
        }
        let mut frames: Vec<String> = Vec::new();
        for c in self.channels.iter().filter(|c| c.feed == i && c.key == key) {
            if !frames.contains(&c.frame) {
                frames.push(c.frame.clone());
            }
        }
        feed.stats
            .resubscribes
            .fetch_add(frames.len() as u64, Ordering::Relaxed);
        Ok(frames)
    }

    /// One symbol's events of a frame: counters, marks, hole hints, then the writer.
    async fn deliver(
        &mut self,
        w: &Worker,
        i: usize,
        events: &mut Vec<Event>,
    ) -> Result<(), Handled> {
        let feed = &w.feeds[i];
        let stats = &feed.stats;
        stats.frames.fetch_add(1, Ordering::Relaxed);
        stats
            .last_data_ms
            .store(crate::model::now_ms(), Ordering::Relaxed);
        let now = Instant::now();
        count_channels(stats, events, now);
        let seen = feed.marks.saw(&feed.symbol, events);
        self.bound_first_trade(w, i).await?;
        if let Some((before, after)) = seen.id_reset {
            id_reset(w, feed, before, after).await?;
        }
        self.hint_backfill(w, i, seen);
        for ev in events.iter() {
            if matches!(ev, Event::Trade(_)) {
                stats.trades.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(key) = ev.stream()
                && let Some(ch) = self
                    .channels
                    .iter_mut()
                    .find(|c| c.feed == i && c.key == key)
            {
                ch.seen = now;
            }
        }
        stats
            .events
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        if w.config.record.depth_dedupe {
            self.dedupe_books(i, stats, events);
        }
        // a resent, unchanged book still proved the channel alive (counted above)
        for ev in events.drain(..) {
            if w.tx.send(ev).await.is_err() {
                return Err(Handled::WriterGone);
            }
        }
        Ok(())
    }

    /// The hole ends at this connection's first trade: said in its row, still open, ahead of
    /// the trade, so a run killed before backfill answers leaves the bound on record. What
    /// is stored after the anchor is no bound: a killed run's last transaction can commit
    /// after the next run read where the stored trades end.
    async fn bound_first_trade(&mut self, w: &Worker, i: usize) -> Result<(), Handled> {
        if self.awaiting_first_trade[i].is_some()
            && let Some(first) = w.feeds[i].marks.conn_first_trade()
            && let Some(mut g) = self.awaiting_first_trade[i].take()
        {
            g.end_ms = Some(first.time_ms);
            if w.tx.send(Event::Gap(g)).await.is_err() {
                return Err(Handled::WriterGone);
            }
        }
        Ok(())
    }

    /// Hints for backfill: a trade-id jump (venues that number trades across markets skip
    /// ids all the time: checked at most once a minute), bars backfill stored while forming.
    fn hint_backfill(&mut self, w: &Worker, i: usize, seen: super::marks::Seen) {
        let Some(b) = &w.backfill else {
            return;
        };
        if let Some(jump) = seen.id_jump
            && self.last_jump_check[i].is_none_or(|t| t.elapsed() >= ID_JUMP_CHECK_EVERY)
        {
            self.last_jump_check[i] = Some(Instant::now());
            let _ = b.send(jump);
        }
        if let Some(seams) = seen.seams {
            let _ = b.send(seams);
        }
    }

    /// `depth_dedupe`: a full book equal to the last one stored on this connection is not
    /// stored again.
    fn dedupe_books(&mut self, i: usize, stats: &WorkerStats, events: &mut Vec<Event>) {
        let books = &mut self.last_books;
        events.retain(|ev| match ev {
            Event::BookSnapshot(b) => {
                let fp = book_fingerprint(b);
                if books.insert((i, b.depth_step), fp) == Some(fp) {
                    stats.books_deduped.fetch_add(1, Ordering::Relaxed);
                    false
                } else {
                    true
                }
            }
            // after a delta the book differs from the last snapshot stored
            Event::BookDelta(d) => {
                books.remove(&(i, d.depth_step));
                true
            }
            _ => true,
        });
    }
}

/// The frame a message carries; a close or a control frame is handled already.
fn frame_of(msg: &Message) -> Result<Frame<'_>, Handled> {
    match msg {
        Message::Binary(b) => Ok(Frame::Binary(b)),
        Message::Text(t) => Ok(Frame::Text(t.as_str())),
        Message::Close(f) => Err(Handled::Closed(match f {
            Some(f) => format!("closed by venue: {} {}", f.code, f.reason),
            None => "closed by venue".into(),
        })),
        // tungstenite answers websocket pings itself
        _ => Err(Handled::Continue(Vec::new())),
    }
}

/// Per channel of the symbol: messages and when the last arrived.
fn count_channels(stats: &WorkerStats, events: &[Event], now: Instant) {
    let mut channels = lock(&stats.channels);
    for ev in events {
        if let Some(key) = ev.stream() {
            let c = channels.entry(key).or_insert(ChannelStats {
                messages: 0,
                last: now,
            });
            c.messages += 1;
            c.last = now;
        }
    }
}

/// Trade ids went backwards: the venue renumbered. The ambiguous stretch goes on record
/// (unrecoverable) before the trades that may reuse ids are.
async fn id_reset(
    w: &Worker,
    feed: &Feed,
    before: crate::model::TradeMark,
    after: crate::model::TradeMark,
) -> Result<(), Handled> {
    feed.stats.id_resets.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(symbol = %feed.symbol, last_id = before.trade_id, new_id = after.trade_id,
        "trade ids went backwards: the venue renumbered; trades reusing stored ids are kept as conflicts");
    let now = crate::model::now_ms();
    let gap = crate::model::Gap {
        venue: w.venue.name(),
        symbol: feed.symbol.clone(),
        stream: StreamKey::Trades.name(),
        start_ms: before.time_ms,
        end_ms: Some(after.time_ms),
        status: crate::model::GapStatus::Unrecoverable,
        detected_at_ms: now,
        resolved_at_ms: Some(now),
        rows_recovered: 0,
        detail: Some(format!(
            "trade id reset: id {} at {} ms came after id {} at {} ms; later trades \
             reusing ids stored before are kept as conflicts in rejected_rows",
            after.trade_id, after.time_ms, before.trade_id, before.time_ms
        )),
    };
    if w.tx.send(Event::Gap(gap)).await.is_err() {
        return Err(Handled::WriterGone);
    }
    Ok(())
}

/// Sends the frames symbols leaving a connection asked for (their unsubscribe); how the
/// connection ends, if it does: (close reason, writer gone, no symbols left).
async fn departed<S>(
    ws: &mut S,
    left: Result<Vec<String>, ()>,
    none_left: bool,
    why: &str,
) -> Option<(String, bool, bool)>
where
    S: futures_util::Sink<Message> + Unpin,
    S::Error: std::fmt::Display,
{
    let Ok(frames) = left else {
        return Some(("writer stopped".into(), true, false));
    };
    for f in frames {
        if let Err(e) = ws.send(Message::text(f)).await {
            return Some((format!("send failed: {e}"), false, false));
        }
    }
    none_left.then(|| (format!("no symbols left: {why}"), false, true))
}

pub use crate::runtime::lock;

/// The text of a panic payload.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Runs a worker, restarting it after a panic with backoff; the other workers never notice.
/// Session rows the dead task left open are closed with the panic as their reason.
pub async fn supervise(w: Worker) {
    let mut delays = ReconnectPolicy::from_config(&w.config.connection).delays(None);
    loop {
        let task = tokio::spawn(w.clone().run());
        let err = match task.await {
            Ok(()) => return,
            Err(e) if e.is_panic() => panic_message(e.into_panic().as_ref()),
            Err(_) => return, // cancelled: the runtime is shutting down
        };
        w.each(|s| {
            s.restarts.fetch_add(1, Ordering::Relaxed);
            s.reconnect("panic");
        });
        tracing::error!(connection = %w.plan.name, error = %err, "worker panicked; restarting it");
        let open = std::mem::take(&mut *lock(&w.current));
        for mut s in open {
            s.disconnected_at_us = Some(now_us().max(s.connected_at_us));
            s.close_reason = Some(format!("worker panicked: {err}"));
            if w.tx.send(Event::Session(s)).await.is_err() {
                return;
            }
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(1));
        tokio::select! {
            _ = w.shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// A book's levels as one 128-bit hash (xxh3) for `depth_dedupe`: two books with the same
/// fingerprint are taken as equal (a collision, which would drop a changed book, has odds of
/// about 2^-128 per comparison). Separators keep `1.2/3` apart from `1/2.3`.
fn book_fingerprint(b: &crate::model::BookSnapshot) -> u128 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for (side, levels) in [(b"b", &b.bids), (b"a", &b.asks)] {
        h.update(side);
        for (p, q) in levels {
            h.update(p.as_str().as_bytes());
            h.update(b"/");
            h.update(q.as_str().as_bytes());
            h.update(b";");
        }
    }
    h.digest128()
}

#[cfg(test)]
mod tests {
    use super::book_fingerprint;

    #[test]
    fn every_reason_class_is_exported_from_the_start() {
        for reason in [
            "silent for 30 s",
            "read error: reset",
            "connection ended",
            "closed by venue",
            "subscribe failed",
            "resubscribe failed",
            "send failed",
            "worker panicked",
            "writer stopped",
            "something new",
        ] {
            let class = super::reason_class(reason);
            assert!(
                crate::stats::RECONNECT_REASONS.contains(&class),
                "{class} (from {reason:?}) is not in RECONNECT_REASONS"
            );
        }
    }
    use crate::decimal::Dec;
    use crate::model::BookSnapshot;

    fn book(bids: &[(&str, &str)], asks: &[(&str, &str)]) -> BookSnapshot {
        let side = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(p, q)| (Dec::parse(p).unwrap(), Dec::parse(q).unwrap()))
                .collect()
        };
        BookSnapshot {
            venue: "cdc-exchange",
            symbol: "BTC_USD".into(),
            depth_step: 10,
            event_time_ms: 1,
            recv_time_us: 1,
            bids: side(bids),
            asks: side(asks),
        }
    }

    #[test]
    fn fingerprints_tell_books_apart_by_levels_only() {
        let a = book(&[("100.5", "1")], &[("101", "2.5")]);
        // other times, same levels: the same book
        let mut same = a.clone();
        same.event_time_ms = 99;
        assert_eq!(book_fingerprint(&a), book_fingerprint(&same));
        for other in [
            book(&[("100.5", "1.1")], &[("101", "2.5")]),
            book(&[], &[("100.5", "1"), ("101", "2.5")]),
            book(&[("100.5", "1"), ("101", "2.5")], &[]),
            book(&[("100", "5.1")], &[("101", "2.5")]),
            book(&[("100.5", "1")], &[("101", "2.5"), ("102", "1")]),
        ] {
            assert_ne!(book_fingerprint(&a), book_fingerprint(&other), "{other:?}");
        }
    }
}
