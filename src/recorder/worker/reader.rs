//! A connection's frames: decoded by the venue's session, the venue's reaction dealt with
//! (pongs, refusals, book breaks), holes of newly subscribed symbols put on record, and each
//! symbol's events through its marks and counters to the writer.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::state::{Feed, Worker, panic_message};
use crate::model::{Event, StreamKey, now_us};
use crate::runtime::lock;
use crate::stats::{ChannelStats, WorkerStats};
use crate::venue::{DecodeError, Frame, Refusal, RefusalKind, Subscription, VenueSession};

/// Trade-id jumps on a live socket are checked over REST at most this often.
const ID_JUMP_CHECK_EVERY: Duration = Duration::from_secs(60);

/// When a subscribed channel last delivered, and how to subscribe to it again.
pub(super) struct ChannelSeen {
    pub(super) feed: usize,
    pub(super) key: StreamKey,
    pub(super) frame: String,
    pub(super) seen: Instant,
}

pub(super) struct Reader {
    /// Subscriptions sent, by request id: what a refusal naming the id refused.
    pub(super) requests: HashMap<u64, Subscription>,
    /// Subscriptions refused for the request rate, to send again after `rate_backoff`.
    pub(super) retry: Vec<Subscription>,
    pub(super) rate_backoff: Duration,
    /// End of the back-off the last burst of rate refusals started.
    pub(super) rate_until: Option<Instant>,
    /// Streams the venue refused for the subscription cap, dealt with at the next tick
    /// (refusals come one per channel: they are gathered first).
    pub(super) over_cap: Vec<(Arc<str>, StreamKey)>,
    /// Id of the last unsubscribe request.
    pub(super) next_unsubscribe: u64,
    /// Per feed: a subscription frame of it went out. Its hole is checked at the next frame
    /// read, before that frame's events can move its marks (from then on its data arrives
    /// on this socket).
    pub(super) subscribed: Vec<bool>,
    /// Feeds subscribed whose hole is to be checked at the next frame.
    pub(super) to_check: Vec<usize>,
    /// Per (feed, depth step): the fingerprint of the last full book stored on this
    /// connection (`depth_dedupe`; a 128-bit hash, not a copy of the book).
    pub(super) last_books: HashMap<(usize, i16), u128>,
    /// Per feed: when its trade-id jump was last handed to backfill.
    pub(super) last_jump_check: Vec<Option<Instant>>,
    /// Per feed: the `open` trades row of its hole, until this connection's first trade
    /// bounds it (see `deliver`).
    pub(super) awaiting_first_trade: Vec<Option<crate::model::Gap>>,
    pub(super) channels: Vec<ChannelSeen>,
    pub(super) decoder: Box<dyn VenueSession>,
    pub(super) events: Vec<Event>,
    /// Per feed, when the connection carries several: the frame's events of that symbol.
    pub(super) by_feed: Vec<Vec<Event>>,
    /// Receive times strictly increase per connection, so rows keyed by receive time
    /// (book snapshots, deltas, tickers) never collide when frames arrive in the same µs.
    pub(super) last_recv_us: i64,
    pub(super) fresh: bool,
    pub(super) error_burst: u64,
    /// Invalid messages since the last frame without any (logged once per burst).
    pub(super) invalid_burst: u64,
    /// Events for symbols this connection does not carry (dropped; logged once).
    pub(super) unknown_symbols: u64,
}

impl Reader {
    /// A subscription frame went out: its streams are watched from now on.
    pub(super) fn sent(&mut self, w: &Worker, sub: Subscription) {
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
    pub(super) fn stale_channels(&mut self, limit: Duration) -> Vec<String> {
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

pub(super) enum Handled {
    /// Frames to send back (a pong, re-sync requests).
    Continue(Vec<String>),
    Closed(String),
    WriterGone,
}

impl Reader {
    /// Counts what validation found (for every symbol of the connection: the decoder's
    /// findings are per frame); the first invalid message of a burst is logged.
    pub(super) fn tally(&mut self, w: &Worker, f: &crate::venue::validate::Findings) {
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
        // charged to the message's symbol (one this connection does not carry: to all it does)
        let now = crate::model::now_ms();
        for (symbol, counts) in &f.invalid_by_symbol {
            let charge = |s: &WorkerStats| {
                for (k, n) in counts.iter().enumerate().filter(|(_, n)| **n > 0) {
                    s.invalid_by_kind[k].fetch_add(*n as u64, Ordering::Relaxed);
                }
                s.last_invalid_ms.store(now, Ordering::Relaxed);
            };
            match w.index.get(symbol.as_str()) {
                Some(&i) => charge(&w.feeds[i].stats),
                None => w.each(charge),
            }
        }
        if self.invalid_burst == 0 {
            let symbol = f.first_symbol.as_deref().unwrap_or("");
            match f.first_offset_ms {
                Some(off) => tracing::warn!(connection = %w.plan.name, symbol, kind = first.kind(),
                    exchange_time_ahead_s = off as f64 / 1000.0,
                    "invalid market data dropped (not stored): its exchange time is outside the accepted window (see [record] max_time_ahead_s)"),
                None => tracing::warn!(connection = %w.plan.name, symbol, kind = first.kind(),
                    "invalid market data dropped (not stored)"),
            }
        }
        self.invalid_burst += f.invalid_total() as u64;
    }

    /// One frame read: holes of newly subscribed symbols on record first, then the frame
    /// decoded, the venue's reaction dealt with, and its events delivered per symbol.
    pub(super) async fn handle(&mut self, w: &Worker, msg: &Message) -> Handled {
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
    pub(super) async fn check_holes(&mut self, w: &Worker) -> Result<(), Handled> {
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
    pub(super) fn decode(
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
    pub(super) async fn react(
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
    pub(super) fn skipped(&mut self, w: &Worker, e: DecodeError) {
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
    pub(super) async fn route(&mut self, w: &Worker) -> Result<(), Handled> {
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
    pub(super) fn refusal(&mut self, w: &Worker, r: Refusal) {
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
    pub(super) fn alive(&mut self, w: &Worker, streams: &[(Arc<str>, StreamKey)]) {
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
    pub(super) async fn book_break(
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
    pub(super) async fn deliver(
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
    pub(super) async fn bound_first_trade(&mut self, w: &Worker, i: usize) -> Result<(), Handled> {
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
    pub(super) fn hint_backfill(
        &mut self,
        w: &Worker,
        i: usize,
        seen: crate::recorder::marks::Seen,
    ) {
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
    pub(super) fn dedupe_books(&mut self, i: usize, stats: &WorkerStats, events: &mut Vec<Event>) {
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
