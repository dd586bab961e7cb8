//! One connection in named steps: connect, open its session rows, subscribe (at once or
//! paced as the venue asks), read until it ends (frames, the fleet's requests, silence, the
//! periodic checks), close; reconnect with backoff.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::reader::{Handled, Reader};
use super::state::{Control, Feed, Request, Worker};
use crate::model::{Event, Session, StreamKey, now_us};
use crate::runtime::backoff::ReconnectPolicy;
use crate::runtime::lock;
use crate::venue::{ConnectionPlan, Subscription};

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
                    tracing::warn!(connection = %conn, url = %self.config.venue.ws_url, error = %e, "connect failed");
                    self.each(|s| s.reconnect("connect_failed"));
                    Err(End::Dropped { fresh: false })
                }
                Err(_) => {
                    tracing::warn!(connection = %conn, url = %self.config.venue.ws_url, timeout_s = c.connect_timeout_s, "connect timed out");
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

#[cfg(test)]
mod tests {
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
}
