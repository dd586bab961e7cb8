//! Backfill: turns holes into REST (and websocket history) requests and records each hole in
//! `gaps`.
//!
//! A hole is checked when a socket comes back (and at start-up, when the recorder itself was
//! the outage), from the marks of what was known before it: the last trade and, per interval,
//! the first bar not held final. Trade ids that skip ahead on a live socket are only a hint: a
//! check, and a row only if REST then shows trades were missing.
//!
//! Rows go through the writer like websocket rows (same keys, so overlaps are one row). A
//! REST failure leaves the hole `open` and the check is retried later; no worker waits on it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::marks::{HoleCheck, Marks, Reason, mark_of};
use super::rest::RestClient;
use crate::config::Config;
use crate::coverage::format_time;
use crate::model::{Event, Gap, GapStatus, Kline, StreamKey, Trade, now_ms, now_us};
use crate::runtime::stagger::Stagger;
use crate::store::Store;
use crate::store::read::TradeMark;
use crate::venue::{
    FetchError, Frame, HistoryRequest, KlineHistory, Reach, TradeHistory, TradeIds, Venue,
};

pub use crate::stats::BackfillStats;

pub struct Backfill {
    pub venue: Arc<dyn Venue>,
    pub rest: Arc<RestClient>,
    pub config: Arc<Config>,
    pub tx: crate::store::queue::EventTx,
    pub marks: super::fleet::MarksMap,
    pub stagger: Arc<Stagger>,
    pub stats: Arc<BackfillStats>,
    pub shutdown: CancellationToken,
    /// Read by the kline audit (the writer alone writes).
    pub store: Arc<Store>,
    /// Per symbol and interval: grid slots the venue has no bar for (an audit asked).
    pub empty_slots: std::sync::Mutex<EmptySlots>,
}

/// Per symbol and interval: open times of grid slots the venue has no bar for.
pub type EmptySlots = HashMap<(Arc<str>, Arc<str>), std::collections::BTreeSet<i64>>;

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The writer is gone (shutdown): nothing more can be recorded.
struct WriterGone;

enum Failed {
    Writer(WriterGone),
    /// REST or history failed: retry the check later (soon when the error is retryable).
    Source(FetchError),
    /// Reading the database failed (the audit's and hints' reads): retry later.
    Store(String),
}

impl From<WriterGone> for Failed {
    fn from(w: WriterGone) -> Failed {
        Failed::Writer(w)
    }
}

/// Bars one audit reads per symbol and interval.
/// Bars one audit reads per symbol and interval: the newest ones.
const AUDIT_BARS: i64 = 1_000;

/// The first slot of a stored grid (oldest first, the last entry still forming) that lacks a
/// final bar and is not inside a hole already recorded as unrecoverable (`known`).
fn first_problem(rows: &[(i64, bool)], len: i64, known: &[(i64, i64)]) -> Option<i64> {
    let (&(newest, _), closed_range) = rows.split_last()?;
    let first = closed_range.first()?.0;
    let held: HashMap<i64, bool> = closed_range.iter().copied().collect();
    let mut t = first;
    // bounded: a stray bar far from the rest must not make this loop long
    for _ in 0..(2 * AUDIT_BARS) {
        if t >= newest {
            break;
        }
        let fine = held.get(&t).copied().unwrap_or(false);
        if !fine && !known.iter().any(|&(s, e)| s <= t && t < e) {
            return Some(t);
        }
        t += len;
    }
    None
}

/// The trades a history walk fetched so far: the oldest and newest, and how many fell inside
/// the hole (after the anchor, before the first trade known after it).
#[derive(Default)]
struct Walked {
    oldest: Option<TradeMark>,
    newest: Option<TradeMark>,
    recovered: i64,
}

impl Walked {
    fn add(
        &mut self,
        m: TradeMark,
        anchor: Option<TradeMark>,
        until: Option<TradeMark>,
        ids: TradeIds,
    ) {
        if self.oldest.is_none_or(|o| ids.is_after(o, m)) {
            self.oldest = Some(m);
        }
        if self.newest.is_none_or(|n| ids.is_after(m, n)) {
            self.newest = Some(m);
        }
        if let Some(a) = anchor
            && ids.is_after(m, a)
            && until.is_none_or(|u| ids.is_after(u, m))
        {
            self.recovered += 1;
        }
    }
}

/// What a trade fetch for a hole found: the anchor before it, the first trade known after
/// it, the oldest and newest fetched, how many fell inside, and how far the history reached.
struct Fetched {
    anchor: TradeMark,
    until: Option<TradeMark>,
    oldest: Option<TradeMark>,
    newest: Option<TradeMark>,
    recovered: i64,
    reach: Reach,
}

/// The stretch of an unrecoverable trade hole that REST did recover (from its oldest trade to
/// the first known after the hole), as a `filled` row of its own: the unrecoverable row ends
/// where it starts, and the recovered trades are counted here. None when nothing was
/// recovered or the stretch has no length (the rows' keys would collide).
fn recovered_part(g: &Gap, f: &Fetched, ids: TradeIds, reason: &str) -> Option<Gap> {
    if g.status != GapStatus::Unrecoverable || f.recovered == 0 {
        return None;
    }
    let start = g.end_ms.filter(|&s| s > g.start_ms)?;
    let end = [f.until, f.newest]
        .into_iter()
        .flatten()
        .find(|m| f.oldest.is_some_and(|o| ids.is_after(*m, o)))?;
    if end.time_ms <= start {
        return None;
    }
    let mut part = g.clone();
    part.start_ms = start;
    part.end_ms = Some(end.time_ms);
    part.status = GapStatus::Filled;
    part.rows_recovered = f.recovered;
    part.detail = Some(format!(
        "{reason}: {} trades recovered from REST after the unrecoverable part of the hole, up to id {}",
        f.recovered, end.trade_id
    ));
    Some(part)
}

/// Slots of a kline hole the venue did not answer for.
#[derive(Debug, PartialEq, Eq)]
struct Missing {
    first: i64,
    last: i64,
    count: usize,
}

/// The slots in `[from, until)` with no bar in `have` and outside every range the venue
/// answered (`answered`: first and last bar of one reply; a slot between them without a bar
/// is one the venue has none for). Calendar intervals (`len` None) have no slots to walk:
/// covered when an answer reaches back to `from`.
fn missing_slots(
    from: i64,
    until: i64,
    len: Option<i64>,
    have: &BTreeMap<i64, Kline>,
    answered: &[(i64, i64)],
) -> Option<Missing> {
    let inside = |t: i64| answered.iter().any(|&(a, b)| a <= t && t <= b);
    let Some(len) = len.filter(|l| *l > 0) else {
        let reached = have.contains_key(&from) || answered.iter().any(|&(a, _)| a <= from);
        return (!reached && from < until).then_some(Missing {
            first: from,
            last: from,
            count: 1,
        });
    };
    let mut out: Option<Missing> = None;
    let mut t = from;
    while t < until {
        if !have.contains_key(&t) && !inside(t) {
            match &mut out {
                Some(m) => {
                    m.last = t;
                    m.count += 1;
                }
                None => {
                    out = Some(Missing {
                        first: t,
                        last: t,
                        count: 1,
                    })
                }
            }
        }
        t += len;
    }
    out
}

/// First retry of a failed check after this; doubles up to `RETRY_MAX`.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(600);

pub async fn run(b: Backfill, mut requests: mpsc::UnboundedReceiver<HoleCheck>) {
    // per symbol, in arrival order: several reconnects of one symbol are one check
    let mut pending: Vec<HoleCheck> = Vec::new();
    let mut retries: Vec<(Instant, u32, HoleCheck)> = Vec::new();
    let mut attempts: HashMap<Arc<str>, u32> = HashMap::new();
    let audit_every = Duration::from_secs(b.config.backfill.audit_interval_s);
    let mut next_audit = (!audit_every.is_zero()).then(|| Instant::now() + audit_every);
    loop {
        if pending.is_empty() {
            let next_retry = retries.iter().map(|r| r.0).min();
            tokio::select! {
                _ = b.shutdown.cancelled() => return,
                r = requests.recv() => match r {
                    Some(c) => add(&mut pending, c),
                    None => return,
                },
                _ = sleep_until(next_retry) => {}
                _ = sleep_until(next_audit) => {}
            }
        }
        if next_audit.is_some_and(|t| t <= Instant::now()) {
            for c in b.audit().await {
                add(&mut pending, c);
            }
            next_audit = Some(Instant::now() + audit_every);
        }
        while let Ok(c) = requests.try_recv() {
            add(&mut pending, c);
        }
        let now = Instant::now();
        let mut i = 0;
        while i < retries.len() {
            if retries[i].0 <= now {
                let (_, n, c) = retries.swap_remove(i);
                attempts.insert(c.symbol.clone(), n);
                add(&mut pending, c);
            } else {
                i += 1;
            }
        }
        if pending.is_empty() {
            continue;
        }
        let check = pending.remove(0);
        b.stats.runs.fetch_add(1, Ordering::Relaxed);
        let resolved = tokio::select! {
            _ = b.shutdown.cancelled() => return,
            r = b.resolve(&check) => r,
        };
        match resolved {
            Ok(()) => {
                attempts.remove(&check.symbol);
            }
            Err(Failed::Writer(WriterGone)) => return,
            Err(Failed::Source(e)) => {
                b.stats.failures.fetch_add(1, Ordering::Relaxed);
                let n = attempts.remove(&check.symbol).unwrap_or(0);
                // a venue's "no" (a 4xx, a refusal it does not call busy, a body it should
                // not send) will not change soon: ask again, but rarely
                let mut wait = if e.retryable() {
                    RETRY_FIRST.saturating_mul(1 << n.min(10)).min(RETRY_MAX)
                } else {
                    RETRY_MAX
                };
                if let FetchError::RateLimited {
                    retry_after: Some(after),
                } = &e
                {
                    wait = wait.max(*after);
                }
                tracing::warn!(symbol = %check.symbol, kind = e.kind(), retryable = e.retryable(),
                    error = %e, retry_in_s = wait.as_secs(),
                    "backfill failed; the hole stays open and the socket keeps recording");
                retries.push((Instant::now() + wait, n + 1, check));
            }
            Err(Failed::Store(e)) => {
                b.stats.failures.fetch_add(1, Ordering::Relaxed);
                let n = attempts.remove(&check.symbol).unwrap_or(0);
                let wait = RETRY_FIRST.saturating_mul(1 << n.min(10)).min(RETRY_MAX);
                tracing::warn!(symbol = %check.symbol, error = %e, retry_in_s = wait.as_secs(),
                    "backfill could not read the database; the hole stays open");
                retries.push((Instant::now() + wait, n + 1, check));
            }
        }
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

fn add(pending: &mut Vec<HoleCheck>, c: HoleCheck) {
    let alone = |p: &HoleCheck| p.row_start.is_some() || p.recorded;
    let mergeable = |p: &HoleCheck| p.symbol == c.symbol && !alone(p);
    match pending.iter_mut().find(|p| !alone(&c) && mergeable(p)) {
        Some(p) => p.merge(c),
        None => pending.push(c),
    }
}

impl Backfill {
    /// Rows from REST that pass the venue's validation; the rest are counted and logged.
    fn valid_only<T>(
        &self,
        rows: Vec<T>,
        wrap: impl Fn(T) -> Event,
        unwrap: impl Fn(Event) -> Option<T>,
    ) -> Vec<T> {
        let rules = self.venue.rules().with_clocks(&self.config.record);
        let mut events: Vec<Event> = rows.into_iter().map(wrap).collect();
        let mut f = crate::venue::validate::Findings::default();
        crate::venue::validate::retain_valid(&rules, &mut events, 0, now_us() / 1000, &mut f);
        if let Some(kind) = f.first {
            for (i, n) in f.invalid.iter().enumerate() {
                self.stats.invalid_by_kind[i].fetch_add(*n as u64, Ordering::Relaxed);
            }
            tracing::warn!(
                kind = kind.kind(),
                dropped = f.invalid_total(),
                "invalid rows in a REST answer dropped (not stored)"
            );
        }
        events.into_iter().filter_map(unwrap).collect()
    }

    fn marks(&self, symbol: &Arc<str>) -> Arc<Marks> {
        super::fleet::marks_of(&self.marks, symbol, self.venue.trade_ids())
    }

    async fn send(&self, ev: Event) -> Result<(), WriterGone> {
        self.tx.send(ev).await.map_err(|_| WriterGone)
    }

    fn gap(&self, c: &HoleCheck, stream: &str, start_ms: i64) -> Gap {
        c.row(self.venue.name(), stream, start_ms)
    }

    /// Writes the resolution of a hole.
    async fn resolved(&self, c: &HoleCheck, g: Gap) -> Result<(), WriterGone> {
        match g.status {
            GapStatus::Filled => self.stats.gaps_filled.fetch_add(1, Ordering::Relaxed),
            GapStatus::Unrecoverable => self
                .stats
                .gaps_unrecoverable
                .fetch_add(1, Ordering::Relaxed),
            GapStatus::Open => 0, // never passed here: a resolution is filled or unrecoverable
        };
        if g.status == GapStatus::Unrecoverable {
            tracing::warn!(symbol = %g.symbol, stream = %g.stream, start_ms = g.start_ms,
                end_ms = g.end_ms, detail = g.detail.as_deref(), "hole beyond the venue's history: recorded as unrecoverable");
        } else {
            tracing::info!(symbol = %g.symbol, stream = %g.stream, rows = g.rows_recovered,
                reason = c.reason.as_str(), "hole filled");
        }
        self.send(Event::Gap(g)).await
    }

    async fn resolve(&self, c: &HoleCheck) -> Result<(), Failed> {
        let record = &self.config.record;
        // rows saying "checking" first, so a hole whose check never finishes is still on record
        // (a connection's worker wrote them already, ahead of its first rows)
        if !c.recorded {
            for g in c.open_rows(self.venue.name(), record) {
                self.send(Event::Gap(g)).await?;
            }
        }
        if record.trades && (c.trade.is_some() || c.reason != Reason::Audit) {
            self.trades(c).await?;
        }
        for (iv, from) in &c.bars {
            if record.klines().iter().any(|k| k.as_str() == &**iv) {
                self.klines(c, iv, *from).await?;
            }
        }
        Ok(())
    }

    async fn trades(&self, c: &HoleCheck) -> Result<(), Failed> {
        let marks = self.marks(&c.symbol);
        let ids = self.venue.trade_ids();
        let until = c
            .trade_until
            .or_else(|| marks.conn_first_trade())
            .filter(|u| c.trade.is_none_or(|a| ids.is_after(*u, a)));
        let mut history = self.venue.trade_history(&c.symbol, c.trade, until);
        // page by page to the writer: a long hole's pages are never all held at once
        let mut walked = Walked::default();
        while let Some(path) = history.next_request() {
            for t in self.trade_page(history.as_mut(), &path).await? {
                walked.add(mark_of(&t), c.trade, until, ids);
                self.send(Event::Trade(t)).await?;
            }
        }
        let Walked {
            oldest,
            newest,
            recovered,
        } = walked;
        let reach = history.reach(until);
        if let Some(n) = newest {
            let from = if reach == Reach::Anchor {
                c.trade
            } else {
                None
            };
            marks.saw_rest_trade(from, n);
        }
        self.stats
            .trades_recovered
            .fetch_add(recovered as u64, Ordering::Relaxed);
        let Some(anchor) = c.trade else {
            return Ok(()); // nothing recorded before: no hole, only earlier history
        };
        let fetched = Fetched {
            anchor,
            until,
            oldest,
            newest,
            recovered,
            reach,
        };
        if let Some(mut g) = self.trade_hole(c, &fetched).await {
            let filled = recovered_part(&g, &fetched, ids, c.reason.as_str());
            if filled.is_some() {
                g.rows_recovered = 0; // counted by the filled row
            }
            self.resolved(c, g).await?;
            if let Some(f) = filled {
                self.resolved(c, f).await?;
            }
        }
        Ok(())
    }

    /// One page of the venue's trade history, the invalid left out.
    async fn trade_page(
        &self,
        history: &mut dyn TradeHistory,
        path: &str,
    ) -> Result<Vec<Trade>, Failed> {
        let body = self
            .rest
            .get(path)
            .await
            .map_err(|e| Failed::Source(e.context("trades")))?;
        let page = history.take(&body, now_us()).map_err(|e| {
            self.rest.stats.outcome(path, "bad_body");
            Failed::Source(e.context("trades"))
        })?;
        self.stats
            .trades_fetched
            .fetch_add(page.len() as u64, Ordering::Relaxed);
        Ok(self.valid_only(page, Event::Trade, |e| match e {
            Event::Trade(t) => Some(t),
            _ => None,
        }))
    }

    /// The hole's row as the fetch resolved it: filled when the history reached the anchor,
    /// else unrecoverable up to the first trade known after it. None: nothing to record (a
    /// hint whose ids skipped with no trade missing, or that REST cannot tell).
    async fn trade_hole(&self, c: &HoleCheck, f: &Fetched) -> Option<Gap> {
        let (anchor, recovered) = (f.anchor, f.recovered);
        let mut g = self.gap(c, &StreamKey::Trades.name(), anchor.time_ms);
        g.resolved_at_ms = Some(now_ms());
        g.rows_recovered = recovered;
        if f.reach == Reach::Anchor {
            if c.reason.is_hint() && recovered == 0 {
                return None; // the ids skip, no trade was missing
            }
            g.status = GapStatus::Filled;
            g.end_ms = Some(
                f.until
                    .or(f.newest)
                    .map(|m| m.time_ms)
                    .unwrap_or(anchor.time_ms),
            );
            g.detail = Some(format!(
                "{}: {recovered} trades after trade {} recovered from REST",
                c.reason.as_str(),
                anchor.trade_id
            ));
            return Some(g);
        }
        let first = self.first_after(c, f).await?;
        if self.venue.trade_ids().adjacent(anchor, first) {
            // the venue's history ends after the anchor, but the next trade known is the
            // anchor's successor: nothing is missing (a venue restarted, a quiet stretch)
            if c.reason.is_hint() {
                return None;
            }
            g.status = GapStatus::Filled;
            g.end_ms = Some(first.time_ms);
            g.detail = Some(format!(
                "{}: no trade missing, trade {} follows trade {} ({recovered} recovered after it)",
                c.reason.as_str(),
                first.trade_id,
                anchor.trade_id
            ));
            return Some(g);
        }
        if c.reason.is_hint() {
            tracing::warn!(symbol = %c.symbol, from = anchor.trade_id, to = c.trade_until.map(|t| t.trade_id),
                "trade ids jumped and REST does not reach back that far: cannot tell whether trades are missing");
            return None;
        }
        g.status = GapStatus::Unrecoverable;
        g.end_ms = Some(first.time_ms);
        let why = match &f.reach {
            Reach::Short { why } => why.as_str(),
            Reach::Anchor => "beyond the venue's history",
        };
        g.detail = Some(format!(
            "{}: trades after id {} up to id {} are {why}; {recovered} recovered after them",
            c.reason.as_str(),
            anchor.trade_id,
            first.trade_id,
        ));
        Some(g)
    }

    /// The first trade known after the anchor: the oldest fetched, the socket's first, or one
    /// an earlier check of this hole stored nearer its start (the venue's history window
    /// moves on), whichever comes first.
    async fn first_after(&self, c: &HoleCheck, f: &Fetched) -> Option<TradeMark> {
        let ids = self.venue.trade_ids();
        let stored = match self
            .store
            .next_trade(self.venue.name(), &c.symbol, f.anchor, ids)
            .await
        {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(symbol = %c.symbol, error = %e, "could not read the first stored trade after a hole; bounding it by this answer");
                None
            }
        };
        [f.oldest, f.until, stored]
            .into_iter()
            .flatten()
            .filter(|m| ids.is_after(*m, f.anchor))
            .reduce(|a, b| if ids.is_after(a, b) { b } else { a })
    }

    async fn klines(
        &self,
        c: &HoleCheck,
        iv: &Arc<str>,
        need_from: Option<i64>,
    ) -> Result<(), Failed> {
        let Some(mut history) = self.venue.kline_history(&c.symbol, iv, need_from) else {
            return Ok(());
        };
        let mut all = self.fetch_bars(c, iv, history.as_mut()).await?;
        // the newest bar is still forming: stored open (the socket's later pushes replace it,
        // and a socket that never sees it close leaves it to the audit); the rest are final
        let forming = all.pop_last().map(|(_, mut k)| {
            k.closed = false;
            k
        });
        for k in all.values_mut() {
            k.closed = true;
        }
        let Some(need_from) = need_from else {
            // nothing recorded yet: the venue's recent bars are history, there is no hole
            return self.bars_as_history(c, iv, all, forming).await;
        };
        let stream = StreamKey::Kline(iv.clone()).name();
        let mut g = self.gap(c, &stream, need_from);
        g.resolved_at_ms = Some(now_ms());
        let Some(forming) = forming else {
            g.status = GapStatus::Filled;
            g.detail = Some(format!("{}: the venue has no bars", c.reason.as_str()));
            if !c.reason.is_hint() {
                self.resolved(c, g).await?;
            }
            return Ok(());
        };
        let current = forming.open_time_ms;
        let len = self.venue.interval(iv).and_then(|i| i.fixed_ms());
        let have: BTreeMap<i64, Kline> = all.split_off(&need_from);
        let missing = missing_slots(need_from, current, len, &have, &history.answered());
        let held = self.held_final(c, iv, need_from).await?;
        let recovered = have.keys().filter(|t| !held.contains(t)).count() as i64;
        for k in have.values() {
            self.send(Event::Kline(k.clone())).await?;
        }
        self.send(Event::Kline(forming)).await?;
        self.marks(&c.symbol).saw_forming(iv, current);
        self.stats
            .bars_recovered
            .fetch_add(recovered as u64, Ordering::Relaxed);
        g.rows_recovered = recovered;
        if c.reason.is_hint() && missing.is_none() && recovered == 0 {
            // the venue has no bar there either: not a hole, and not worth asking again
            lock(&self.empty_slots)
                .entry((c.symbol.clone(), iv.clone()))
                .or_default()
                .insert(need_from);
            return Ok(());
        }
        match missing {
            None => {
                g.status = GapStatus::Filled;
                g.end_ms = Some(current);
                g.detail = Some(format!(
                    "{}: {recovered} final bars from the venue's history",
                    c.reason.as_str()
                ));
            }
            Some(m) => {
                g.status = GapStatus::Unrecoverable;
                // up to the first bar recovered after the last slot the venue did not answer
                g.end_ms = Some(have.range(m.last + 1..).next().map_or(current, |(t, _)| *t));
                g.detail = Some(format!(
                    "{}: {} bar slots from {} to {} are beyond the venue's REST and websocket \
                     history; {recovered} recovered",
                    c.reason.as_str(),
                    m.count,
                    format_time(m.first),
                    format_time(m.last)
                ));
            }
        }
        self.resolved(c, g).await?;
        Ok(())
    }

    /// Every answer the venue's bar history plan asks for, by open time; a later answer's
    /// version of a bar replaces an earlier one's (the venue's socket history carries the
    /// quote volume REST lacks).
    async fn fetch_bars(
        &self,
        c: &HoleCheck,
        iv: &Arc<str>,
        history: &mut dyn KlineHistory,
    ) -> Result<BTreeMap<i64, Kline>, Failed> {
        let mut all: BTreeMap<i64, Kline> = BTreeMap::new();
        while let Some(req) = history.next_request() {
            let bars = match req {
                HistoryRequest::Rest(path) => {
                    let body = self
                        .rest
                        .get(&path)
                        .await
                        .map_err(|e| Failed::Source(e.context(&format!("{iv} bars"))))?;
                    let bars = history.take_rest(&body, now_us()).map_err(|e| {
                        self.rest.stats.outcome(&path, "bad_body");
                        Failed::Source(e.context(&format!("{iv} bars")))
                    })?;
                    self.valid_only(bars, Event::Kline, |e| match e {
                        Event::Kline(k) => Some(k),
                        _ => None,
                    })
                }
                HistoryRequest::Socket(frame) => {
                    // decoded (and validated) by the venue's session
                    let bars = self.socket_history(&c.symbol, iv, frame).await?;
                    history.take_socket(&bars);
                    bars
                }
            };
            for k in bars {
                all.insert(k.open_time_ms, k);
            }
        }
        Ok(all)
    }

    /// Nothing recorded yet: the venue's recent bars are stored as history, no hole.
    async fn bars_as_history(
        &self,
        c: &HoleCheck,
        iv: &Arc<str>,
        all: BTreeMap<i64, Kline>,
        forming: Option<Kline>,
    ) -> Result<(), Failed> {
        let n = all.len() as u64;
        let forming_open = forming.as_ref().map(|f| f.open_time_ms);
        for k in all.into_values().chain(forming) {
            self.send(Event::Kline(k)).await?;
        }
        if let Some(f) = forming_open {
            self.marks(&c.symbol).saw_forming(iv, f);
        }
        self.stats.bars_recovered.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    /// For a hint, the bars from `need_from` the database holds final (a hint counts only
    /// bars it did not); for any other check, none.
    async fn held_final(
        &self,
        c: &HoleCheck,
        iv: &Arc<str>,
        need_from: i64,
    ) -> Result<std::collections::HashSet<i64>, Failed> {
        if !c.reason.is_hint() {
            return Ok(Default::default());
        }
        Ok(self
            .store
            .bar_states(self.venue.name(), &c.symbol, iv, need_from, 100_000)
            .await
            .map_err(|e| Failed::Store(format!("reading stored {iv} bars: {e}")))?
            .into_iter()
            .filter_map(|(t, closed)| closed.then_some(t))
            .collect())
    }

    /// Looks for bars missing or not final among the newest stored bars of every recorded
    /// interval (behind the forming one); one check per symbol with a problem. Slots already
    /// known unrecoverable, or where the venue said it has no bar, are not asked about again.
    async fn audit(&self) -> Vec<HoleCheck> {
        let mut out: Vec<HoleCheck> = Vec::new();
        let gaps = match self.store.load_gaps(self.venue.name(), None).await {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(error = %e, "kline audit could not read the database");
                return out;
            }
        };
        // the symbols recorded now (listed later included, delisted ones not)
        let mut symbols: Vec<Arc<str>> = self
            .marks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        symbols.sort();
        for symbol in symbols {
            for iv in self.config.record.klines() {
                let Some(len) = self.venue.interval(iv).and_then(|i| i.fixed_ms()) else {
                    continue; // calendar periods: no fixed grid
                };
                let iv: Arc<str> = Arc::from(iv.as_str());
                let key = (symbol.clone(), iv.clone());
                let from = match self.store.last_bar(self.venue.name(), &symbol, &iv).await {
                    Ok(Some((t, _))) => t.saturating_sub((AUDIT_BARS - 1) * len),
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "kline audit could not read the database");
                        return out;
                    }
                };
                let rows = match self
                    .store
                    .bar_states(self.venue.name(), &symbol, &iv, from, AUDIT_BARS)
                    .await
                {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, "kline audit could not read the database");
                        return out;
                    }
                };
                if rows.is_empty() {
                    continue;
                }
                let stream = StreamKey::Kline(iv.clone()).name();
                let mut known: Vec<(i64, i64)> = gaps
                    .iter()
                    .filter(|g| {
                        *g.symbol == *symbol
                            && g.stream == stream
                            && g.status == GapStatus::Unrecoverable
                    })
                    .map(|g| (g.start_ms, g.end_ms.unwrap_or(g.start_ms)))
                    .collect();
                {
                    let mut empty = lock(&self.empty_slots);
                    let slots = empty.entry(key).or_default();
                    // forget what fell out of the window
                    *slots = slots.split_off(&from);
                    known.extend(slots.iter().map(|&t| (t, t + 1)));
                }
                let problem = first_problem(&rows, len, &known);
                if let Some(p) = problem {
                    tracing::info!(symbol = %symbol, interval = %iv, from_ms = p, "kline audit: bar missing or not final");
                    let c = HoleCheck {
                        symbol: symbol.clone(),
                        reason: Reason::Audit,
                        trade: None,
                        trade_until: None,
                        bars: vec![(iv.clone(), Some(p))],
                        detected_at_ms: now_ms(),
                        row_start: None,
                        recorded: false,
                    };
                    add(&mut out, c);
                }
            }
        }
        out
    }

    /// The bars a venue's history request brings over a short-lived websocket (history REST
    /// no longer has), decoded by the venue's session.
    async fn socket_history(
        &self,
        symbol: &Arc<str>,
        iv: &Arc<str>,
        req: String,
    ) -> Result<Vec<Kline>, Failed> {
        self.stats.history_requests.fetch_add(1, Ordering::Relaxed);
        let what = format!("{iv} history over websocket");
        let fail = |e: String| Failed::Source(FetchError::Transport(format!("{what}: {e}")));
        let bad = |e: String| Failed::Source(FetchError::BadBody(format!("{what}: {e}")));
        let c = &self.config.connection;
        let timeout = Duration::from_secs(self.config.backfill.timeout_s);
        self.stagger.wait().await;
        let ws_config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(c.max_frame_bytes))
            .max_frame_size(Some(c.max_frame_bytes));
        let connect = tokio_tungstenite::connect_async_tls_with_config(
            self.config.venue.ws_url.as_str(),
            Some(ws_config),
            true,
            Some(crate::runtime::tls::connector(&self.rest.tls)),
        );
        let (mut ws, _) = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| fail("connect timed out".into()))?
            .map_err(|e| fail(e.to_string()))?;
        ws.send(Message::text(req))
            .await
            .map_err(|e| fail(e.to_string()))?;
        let mut session = self.venue.session(
            std::slice::from_ref(symbol),
            c.max_frame_bytes,
            self.venue.rules().with_clocks(&self.config.record),
        );
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        let bars = loop {
            let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
                Err(_) => break Err(fail("no reply in time".into())),
                Ok(None) => break Err(fail("closed before replying".into())),
                Ok(Some(Err(e))) => break Err(fail(e.to_string())),
                Ok(Some(Ok(m))) => m,
            };
            let frame = match &msg {
                Message::Binary(b) => Frame::Binary(b),
                Message::Text(t) => Frame::Text(t.as_str()),
                _ => continue,
            };
            out.clear();
            match session.on_frame(frame, now_us(), &mut out) {
                Ok(r) => {
                    if let Some(reply) = r.reply {
                        let _ = ws.send(Message::text(reply)).await;
                    }
                }
                Err(e) => break Err(bad(e.to_string())),
            }
            let mut got: Vec<Kline> = out
                .drain(..)
                .filter_map(|e| match e {
                    Event::Kline(k) if k.interval == *iv => Some(k),
                    _ => None,
                })
                .collect();
            if !got.is_empty() {
                got.sort_by_key(|k| k.open_time_ms);
                got.dedup_by_key(|k| k.open_time_ms);
                break Ok(got);
            }
        };
        let _ = ws.close(None).await;
        bars
    }
}

#[cfg(test)]
mod tests {
    use super::{BTreeMap, Missing, first_problem, missing_slots};

    fn bars(opens: &[i64]) -> BTreeMap<i64, crate::model::Kline> {
        let d = |s: &str| crate::decimal::Dec::parse(s).unwrap();
        opens
            .iter()
            .map(|&t| {
                let k = crate::model::Kline {
                    venue: "cdc-v1",
                    symbol: "x".into(),
                    interval: "1min".into(),
                    open_time_ms: t,
                    open: d("1"),
                    high: d("1"),
                    low: d("1"),
                    close: d("1"),
                    volume: d("1"),
                    quote_volume: None,
                    closed: true,
                    event_time_ms: t,
                    recv_time_us: 1,
                    source: crate::model::Source::Rest,
                };
                (t, k)
            })
            .collect()
    }

    #[test]
    fn a_kline_hole_is_covered_only_when_every_slot_is_answered() {
        // REST answered 80..=100, a history page 0..=20: 30..70 is nobody's answer
        let have = bars(&[0, 10, 20, 80, 90]);
        let answered = [(80, 100), (0, 20)];
        assert_eq!(
            missing_slots(0, 100, Some(10), &have, &answered),
            Some(Missing {
                first: 30,
                last: 70,
                count: 5
            })
        );
        // a page meeting REST's window: covered, and a slot without a bar inside a reply is
        // one the venue has none for
        let have = bars(&[0, 10, 30, 40, 50, 60, 70, 80, 90]);
        assert_eq!(
            missing_slots(0, 100, Some(10), &have, &[(80, 100), (0, 70)]),
            None
        );
        // history that starts after the hole: the front is beyond it
        let have = bars(&[40, 50, 90]);
        assert_eq!(
            missing_slots(0, 100, Some(10), &have, &[(90, 100), (40, 80)]),
            Some(Missing {
                first: 0,
                last: 30,
                count: 4
            })
        );
        // nothing to cover
        assert_eq!(missing_slots(100, 100, Some(10), &have, &[]), None);
        // calendar bars: covered when an answer reaches back to the start
        assert_eq!(missing_slots(0, 100, None, &bars(&[]), &[(0, 100)]), None);
        assert!(missing_slots(0, 100, None, &bars(&[]), &[(50, 100)]).is_some());
    }

    #[test]
    fn audit_finds_the_first_missing_or_open_bar_behind_the_forming_one() {
        let ok = [(0, true), (60, true), (120, true), (180, false)];
        assert_eq!(first_problem(&ok, 60, &[]), None);
        let hole = [(0, true), (60, true), (180, true), (240, false)];
        assert_eq!(first_problem(&hole, 60, &[]), Some(120));
        let open = [(0, true), (60, false), (120, true), (180, false)];
        assert_eq!(first_problem(&open, 60, &[]), Some(60));
        let before_forming = [(0, true), (60, true), (240, false)];
        assert_eq!(first_problem(&before_forming, 60, &[]), Some(120));
        // only the forming bar: nothing closed to audit
        assert_eq!(first_problem(&[(0, false)], 60, &[]), None);
        assert_eq!(first_problem(&[], 60, &[]), None);
    }

    #[test]
    fn audit_skips_holes_already_recorded_as_unrecoverable() {
        let rows = [(0, true), (60, false), (240, true), (360, false)];
        // 60 (partial), 120 and 180 (missing) are a known hole; 300 is new
        assert_eq!(first_problem(&rows, 60, &[(60, 240)]), Some(300));
        assert_eq!(first_problem(&rows, 60, &[(60, 240), (300, 360)]), None);
    }
}
