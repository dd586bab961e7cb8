//! How far each stream of a symbol is known to be complete, shared by its worker (which moves
//! the marks as data arrives) and the backfill task (which checks the hole behind a mark when a
//! socket comes back). At start-up the marks come from the database, so the time the recorder
//! was down is one more hole.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::model::{Event, Gap, GapStatus, StreamKey, Trade, now_ms};
use crate::store::Store;
use crate::store::read::TradeMark;
use crate::venue::{TradeIds, Venue};

/// Why a hole is being checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The first connection of this run: the hole is the time the recorder was down.
    Startup,
    /// A socket came back: the hole is the time it was down.
    Reconnect,
    /// A trade id skipped ahead on a live socket: a hint only, never a gap by itself.
    IdJump,
    /// The periodic audit found a bar missing or not final in the stored grid: a row only if
    /// the venue then has bars the database lacked.
    Audit,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Startup => "start-up",
            Reason::Reconnect => "reconnect",
            Reason::IdJump => "trade id jump",
            Reason::Audit => "kline audit",
        }
    }

    /// A hint is checked, but only recorded if the check recovers something.
    pub fn is_hint(self) -> bool {
        matches!(self, Reason::IdJump | Reason::Audit)
    }
}

/// A hole to check, from the marks at the moment a socket became live.
#[derive(Debug, Clone)]
pub struct HoleCheck {
    pub symbol: Arc<str>,
    pub reason: Reason,
    /// The last trade known before the hole (None: nothing recorded yet, so no hole).
    pub trade: Option<TradeMark>,
    /// For an id jump: the trade after the skipped ids.
    pub trade_until: Option<TradeMark>,
    /// Per interval: open time of the first bar not held final (None: nothing recorded
    /// yet, so no hole: the venue's recent bars are fetched as history).
    pub bars: Vec<(Arc<str>, Option<i64>)>,
    pub detected_at_ms: i64,
    /// Set when this check resolves a row a previous run left `open` (it stopped before
    /// backfill answered): the row's start. Such a check is never merged with another.
    pub row_start: Option<i64>,
    /// Its `open` rows are on record already: the worker wrote them ahead of the first rows
    /// of the connection, so a crash at any moment leaves the hole on record. Never merged
    /// (a merged check would resolve rows under another start and leave these open).
    pub recorded: bool,
}

impl HoleCheck {
    /// A gap row for this hole in one stream, `open` until backfill resolves it.
    pub fn row(&self, venue: &'static str, stream: &str, start_ms: i64) -> Gap {
        Gap {
            venue,
            symbol: self.symbol.clone(),
            stream: stream.to_string(),
            start_ms: self.row_start.unwrap_or(start_ms),
            end_ms: None,
            status: GapStatus::Open,
            detected_at_ms: self.detected_at_ms,
            resolved_at_ms: None,
            rows_recovered: 0,
            detail: Some(match self.row_start {
                Some(_) => format!("{}: left open by a previous run", self.reason.as_str()),
                None => format!("{}: socket was down", self.reason.as_str()),
            }),
        }
    }

    /// The rows saying "checking" for this hole, one per stream it touches (hints have none:
    /// they are recorded only if the venue had rows the database lacked).
    pub fn open_rows(&self, venue: &'static str, record: &crate::config::RecordConfig) -> Vec<Gap> {
        let mut out = Vec::new();
        if self.reason.is_hint() {
            return out;
        }
        if record.trades
            && let Some(a) = self.trade
        {
            out.push(self.row(venue, &StreamKey::Trades.name(), a.time_ms));
        }
        for (iv, from) in &self.bars {
            if let Some(from) = from {
                out.push(self.row(venue, &StreamKey::Kline(iv.clone()).name(), *from));
            }
        }
        out
    }

    /// Folds a later check of the same symbol into this one: the union of both holes.
    pub fn merge(&mut self, other: HoleCheck) {
        self.trade = match (self.trade, other.trade) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.trade_until = match (self.trade_until, other.trade_until) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
        for (iv, t) in other.bars {
            match self.bars.iter_mut().find(|(i, _)| *i == iv) {
                Some(slot) => {
                    slot.1 = match (slot.1, t) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    }
                }
                None => self.bars.push((iv, t)),
            }
        }
        if self.reason.is_hint() {
            self.reason = other.reason;
        }
        self.detected_at_ms = self.detected_at_ms.min(other.detected_at_ms);
    }
}

#[derive(Debug, Default)]
struct Inner {
    last_trade: Option<TradeMark>,
    /// The first trade the current connection delivered.
    conn_first_trade: Option<TradeMark>,
    /// Per recorded interval: open time of the newest bar seen (possibly still forming).
    bars: HashMap<Arc<str>, Option<i64>>,
    started: bool,
    /// Per interval: the forming bar backfill stored from REST, until the socket moves past it.
    rest_forming: HashMap<Arc<str>, i64>,
    /// Per interval: the newest bar the current connection delivered.
    conn_bars: HashMap<Arc<str>, i64>,
}

/// What one frame's events call for besides storing them.
#[derive(Debug, Default)]
pub struct Seen {
    /// Trade ids skipped ahead (a hint).
    pub id_jump: Option<HoleCheck>,
    /// Bars backfill stored while forming are over: fetch their final versions.
    pub seams: Option<HoleCheck>,
    /// The venue's trade ids went backwards: a newer trade (second) with a smaller id than
    /// the last one known (first). Later trades may reuse ids stored before.
    pub id_reset: Option<(TradeMark, TradeMark)>,
}

/// One symbol's marks.
#[derive(Debug)]
pub struct Marks {
    inner: Mutex<Inner>,
    /// What the venue's trade ids promise (order, consecutiveness).
    ids: TradeIds,
}

/// A trade as a mark.
pub fn mark_of(t: &Trade) -> TradeMark {
    TradeMark {
        time_ms: t.event_time_ms,
        trade_id: t.trade_id,
    }
}

impl Marks {
    /// Nothing known yet.
    pub fn new(ids: TradeIds) -> Marks {
        Marks {
            inner: Mutex::default(),
            ids,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called when a connection delivers its first frame: the hole behind the marks.
    pub fn check_at_connect(&self, symbol: &Arc<str>) -> HoleCheck {
        let mut m = self.lock();
        m.conn_first_trade = None;
        m.conn_bars.clear();
        let reason = if m.started {
            Reason::Reconnect
        } else {
            Reason::Startup
        };
        m.started = true;
        let mut bars: Vec<(Arc<str>, Option<i64>)> =
            m.bars.iter().map(|(k, v)| (k.clone(), *v)).collect();
        bars.sort();
        HoleCheck {
            symbol: symbol.clone(),
            reason,
            trade: m.last_trade,
            trade_until: None,
            bars,
            detected_at_ms: now_ms(),
            row_start: None,
            recorded: false,
        }
    }

    /// Moves the marks past what a websocket frame delivered. Returns an id-jump check when
    /// a trade id skipped ahead of the previous trade on this connection.
    pub fn saw(&self, symbol: &Arc<str>, events: &[Event]) -> Seen {
        let mut m = self.lock();
        let mut jump = None;
        let mut reset = None;
        let mut seams: Vec<(Arc<str>, Option<i64>)> = Vec::new();
        for ev in events {
            match ev {
                Event::Trade(t) => {
                    let mark = mark_of(t);
                    // a smaller id on a strictly newer trade: the venue renumbered (an older
                    // trade delivered late has a smaller id and an older time)
                    if let Some(prev) = m.last_trade
                        && self.ids != TradeIds::Unordered
                        && prev.trade_id >= 0
                        && mark.trade_id >= 0
                        && mark.trade_id < prev.trade_id
                        && mark.time_ms > prev.time_ms
                        && reset.is_none()
                    {
                        reset = Some((prev, mark));
                        m.last_trade = Some(mark);
                        m.conn_first_trade.get_or_insert(mark);
                        continue;
                    }
                    // a skipped id is a missed trade only where ids are consecutive
                    if let (Some(prev), Some(_)) = (m.last_trade, m.conn_first_trade)
                        && self.ids == TradeIds::Consecutive
                        && prev.trade_id >= 0
                        && mark.trade_id > prev.trade_id + 1
                        && jump.is_none()
                    {
                        jump = Some(HoleCheck {
                            symbol: symbol.clone(),
                            reason: Reason::IdJump,
                            trade: Some(prev),
                            trade_until: Some(mark),
                            bars: Vec::new(),
                            detected_at_ms: now_ms(),
                            row_start: None,
                            recorded: false,
                        });
                    }
                    m.conn_first_trade.get_or_insert(mark);
                    if m.last_trade.is_none_or(|l| self.ids.is_after(mark, l)) {
                        m.last_trade = Some(mark);
                    }
                }
                Event::Kline(k) => {
                    let slot = m.bars.entry(k.interval.clone()).or_default();
                    *slot = Some(slot.map_or(k.open_time_ms, |s| s.max(k.open_time_ms)));
                    let seen = m
                        .conn_bars
                        .entry(k.interval.clone())
                        .or_insert(k.open_time_ms);
                    *seen = (*seen).max(k.open_time_ms);
                    // the bar REST saw forming: the socket delivers it (and closes it when the
                    // next one comes), or skips past it, and then its final version is only
                    // in the venue's history
                    if let Some(&f) = m.rest_forming.get(&k.interval) {
                        if k.open_time_ms == f {
                            m.rest_forming.remove(&k.interval);
                        } else if k.open_time_ms > f {
                            m.rest_forming.remove(&k.interval);
                            seams.push((k.interval.clone(), Some(f)));
                        }
                    }
                }
                _ => {}
            }
        }
        let seams = (!seams.is_empty()).then(|| HoleCheck {
            symbol: symbol.clone(),
            reason: Reason::Audit,
            trade: None,
            trade_until: None,
            bars: seams,
            detected_at_ms: now_ms(),
            row_start: None,
            recorded: false,
        });
        Seen {
            id_reset: reset,
            id_jump: jump,
            seams,
        }
    }

    /// Backfill stored `open_ms` as the forming bar of `interval` (from REST, not final).
    pub fn saw_forming(&self, interval: &Arc<str>, open_ms: i64) {
        let mut m = self.lock();
        // the socket got there first: it has the bar, or moved past it on its own
        if m.conn_bars.get(interval).is_some_and(|&t| t >= open_ms) {
            return;
        }
        m.rest_forming.insert(interval.clone(), open_ms);
    }

    /// Moves the trade mark to `t`, the newest of trades fetched over REST that are complete
    /// from `from` on (None: complete from nothing known). Only where they join the mark: a
    /// fetch for another stretch (an older hole, a leftover check) must not carry the mark
    /// over a stretch nobody checked.
    pub fn saw_rest_trade(&self, from: Option<TradeMark>, t: TradeMark) {
        let mut m = self.lock();
        let joins = match (m.last_trade, from) {
            (None, _) => true,
            (Some(l), Some(f)) => !self.ids.is_after(l, f),
            (Some(_), None) => false,
        };
        if joins && m.last_trade.is_none_or(|l| self.ids.is_after(t, l)) {
            m.last_trade = Some(t);
        }
    }

    /// The first trade the current connection delivered, if any yet.
    pub fn conn_first_trade(&self) -> Option<TradeMark> {
        self.lock().conn_first_trade
    }
}

/// The marks per symbol, and a check for each gap row a previous run left open.
pub type Loaded = (HashMap<Arc<str>, Arc<Marks>>, Vec<HoleCheck>);

/// The marks of every symbol, loaded from what is stored, and one check for every gap row a
/// previous run left `open`, bounded by what is stored around it.
pub async fn load(
    store: &Store,
    venue: &dyn Venue,
    symbols: &[String],
    intervals: &[String],
) -> Result<Loaded, crate::store::StoreError> {
    let mut marks = HashMap::new();
    let mut checks = Vec::new();
    for s in symbols {
        let symbol: Arc<str> = Arc::from(s.as_str());
        let mut inner = Inner {
            last_trade: store.last_trade(venue.name(), s, None).await?,
            ..Inner::default()
        };
        for iv in intervals {
            let stored = store.last_bar(venue.name(), s, iv).await?;
            let len = venue.interval(iv).and_then(|i| i.fixed_ms());
            let need = stored.map(|(open, closed)| match (closed, len) {
                (true, Some(len)) => open + len,
                _ => open,
            });
            inner.bars.insert(Arc::from(iv.as_str()), need);
        }
        marks.insert(
            symbol.clone(),
            Arc::new(Marks {
                inner: Mutex::new(inner),
                ids: venue.trade_ids(),
            }),
        );
        for g in store.load_gaps(venue.name(), Some(s)).await? {
            if g.status != GapStatus::Open {
                continue;
            }
            let mut c = HoleCheck {
                symbol: symbol.clone(),
                reason: Reason::Startup,
                trade: None,
                trade_until: None,
                bars: Vec::new(),
                detected_at_ms: g.detected_at_ms,
                row_start: Some(g.start_ms),
                recorded: true,
            };
            let stream = StreamKey::parse(&g.stream);
            if stream == Some(StreamKey::Trades) {
                // the hole lies between the trade it was anchored on and its connection's
                // first trade
                let Some(anchor) = store.last_trade(venue.name(), s, Some(g.start_ms)).await?
                else {
                    continue;
                };
                c.trade = Some(anchor);
                // the row's end, when its connection's first trade was on record, else
                // the next trade stored (which a killed run's late commit may have put
                // inside the hole)
                let first = match g.end_ms {
                    Some(e) => store.first_trade_from(venue.name(), s, e).await?,
                    None => None,
                };
                c.trade_until = match first {
                    Some(f) if venue.trade_ids().is_after(f, anchor) => Some(f),
                    _ => {
                        store
                            .next_trade(venue.name(), s, anchor, venue.trade_ids())
                            .await?
                    }
                };
            } else if let Some(iv) = stream.as_ref().and_then(|k| k.interval())
                && intervals.iter().any(|i| **i == **iv)
            {
                c.bars.push((iv.clone(), Some(g.start_ms)));
            } else {
                continue;
            }
            checks.push(c);
        }
    }
    Ok((marks, checks))
}
