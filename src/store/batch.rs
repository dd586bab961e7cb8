//! Rows waiting for the next flush, grouped per table.
//!
//! Upserted tables (klines, sessions) keep one row per key inside a batch, chosen by the same
//! rule the SQL applies across batches, because PostgreSQL refuses to update a row twice in
//! one statement.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use crate::model::{
    BookDelta, BookSnapshot, Event, Gap, Kline, Market, Session, Table, Ticker, Trade,
};

#[derive(Debug, Default)]
pub struct Batch {
    pub trades: Vec<Trade>,
    /// Trades whose key came twice in this batch with other content: (the later copy, the
    /// copy kept). Kept as conflicts in `rejected_rows`, never dropped.
    pub trade_conflicts: Vec<(Trade, Trade)>,
    trade_index: HashMap<(Arc<str>, i64), usize>,
    pub klines: Vec<Kline>,
    kline_index: HashMap<(Arc<str>, Arc<str>, i64), usize>,
    pub snapshots: Vec<BookSnapshot>,
    pub deltas: Vec<BookDelta>,
    pub tickers: Vec<Ticker>,
    pub sessions: Vec<Session>,
    session_index: HashMap<(Arc<str>, String), usize>,
    /// Latest listing per symbol.
    pub markets: Vec<Market>,
    pub gaps: Vec<Gap>,
    gap_index: HashMap<(Arc<str>, String, i64), usize>,
    /// Memory of the events pushed (`Event::approx_bytes`, merged copies included).
    bytes: usize,
}

impl Batch {
    /// The receive times of the market-data rows (trades, bars, books, tickers).
    pub fn recv_times(&self) -> impl Iterator<Item = i64> + '_ {
        self.trades
            .iter()
            .map(|t| t.recv_time_us)
            .chain(self.klines.iter().map(|k| k.recv_time_us))
            .chain(self.snapshots.iter().map(|b| b.recv_time_us))
            .chain(self.deltas.iter().map(|d| d.recv_time_us))
            .chain(self.tickers.iter().map(|t| t.recv_time_us))
    }

    /// Rows waiting for `table` (rejected rows are made by the writer, never batched).
    pub fn len_of(&self, table: Table) -> usize {
        match table {
            Table::Markets => self.markets.len(),
            Table::Trades => self.trades.len(),
            Table::Klines => self.klines.len(),
            Table::BookSnapshots => self.snapshots.len(),
            Table::BookDeltas => self.deltas.len(),
            Table::Tickers => self.tickers.len(),
            Table::Sessions => self.sessions.len(),
            Table::Gaps => self.gaps.len(),
            Table::RejectedRows => 0,
        }
    }
}

/// Free text that can come from the network is made safe before it becomes a row (also
/// for batches replayed from a spool an older version wrote).
fn sanitize(ev: &mut Event) {
    use crate::model::{make_safe, make_safe_arc};
    match ev {
        Event::Session(s) => {
            make_safe(&mut s.session_id);
            if let Some(r) = s.close_reason.as_mut() {
                make_safe(r);
            }
        }
        Event::Gap(g) => {
            make_safe(&mut g.stream);
            if let Some(d) = g.detail.as_mut() {
                make_safe(d);
            }
        }
        Event::Market(m) => {
            make_safe_arc(&mut m.symbol);
            for t in [m.base.as_mut(), m.quote.as_mut()].into_iter().flatten() {
                make_safe(t);
            }
        }
        _ => {}
    }
}

/// Whether two copies of a trade key are the same trade (what the venue published: side,
/// price, quantity, time; receive time and source differ between copies by nature).
pub fn same_trade(a: &Trade, b: &Trade) -> bool {
    a.side == b.side && a.price == b.price && a.qty == b.qty && a.event_time_ms == b.event_time_ms
}

/// Ordering of kline versions: a closed bar beats an open one, then newer exchange time,
/// then newer receive time. The SQL upsert uses the same rule.
pub fn kline_rank(k: &Kline) -> (bool, i64, i64) {
    (k.closed, k.event_time_ms, k.recv_time_us)
}

/// A REST bar has no quote volume; when it replaces a version with the same volume, the
/// stored quote volume is still right and is kept. The SQL upserts apply the same rule.
fn merge_quote_volume(mut new: Kline, old: &Kline) -> Kline {
    if new.quote_volume.is_none() && new.volume == old.volume {
        new.quote_volume = old.quote_volume.clone();
    }
    new
}

impl Batch {
    pub fn push(&mut self, ev: Event) {
        let bytes = ev.approx_bytes();
        self.push_sized(ev, bytes);
    }

    /// [`Batch::push`] of an event whose size is known (measured when it was queued).
    pub fn push_sized(&mut self, mut ev: Event, bytes: usize) {
        sanitize(&mut ev);
        self.bytes += bytes;
        match ev {
            Event::Trade(t) => match self.trade_index.entry((t.symbol.clone(), t.trade_id)) {
                // the same trade from WS and REST: one row, keeping any field only one sent
                Entry::Occupied(e) => {
                    let slot = &mut self.trades[*e.get()];
                    if !same_trade(slot, &t) {
                        self.trade_conflicts.push((t, slot.clone()));
                    } else if slot.quote_qty.is_none() {
                        slot.quote_qty = t.quote_qty;
                    }
                }
                Entry::Vacant(e) => {
                    e.insert(self.trades.len());
                    self.trades.push(t);
                }
            },
            Event::Kline(k) => {
                let key = (k.symbol.clone(), k.interval.clone(), k.open_time_ms);
                match self.kline_index.entry(key) {
                    Entry::Occupied(e) => {
                        let slot = &mut self.klines[*e.get()];
                        if kline_rank(&k) > kline_rank(slot) {
                            *slot = merge_quote_volume(k, slot);
                        }
                    }
                    Entry::Vacant(e) => {
                        e.insert(self.klines.len());
                        self.klines.push(k);
                    }
                }
            }
            Event::BookSnapshot(s) => self.snapshots.push(s),
            Event::BookDelta(d) => self.deltas.push(d),
            Event::Ticker(t) => self.tickers.push(t),
            Event::Market(m) => match self.markets.iter_mut().find(|x| x.symbol == m.symbol) {
                Some(slot) => *slot = m,
                None => self.markets.push(m),
            },
            Event::Gap(g) => self.push_gap(g),
            Event::Session(s) => {
                let key = (s.symbol.clone(), s.session_id.clone());
                match self.session_index.entry(key) {
                    Entry::Occupied(e) => {
                        let slot = &mut self.sessions[*e.get()];
                        if s.disconnected_at_us.is_some() {
                            slot.disconnected_at_us = s.disconnected_at_us;
                            slot.close_reason = s.close_reason;
                        }
                    }
                    Entry::Vacant(e) => {
                        e.insert(self.sessions.len());
                        self.sessions.push(s);
                    }
                }
            }
        }
    }

    fn push_gap(&mut self, g: Gap) {
        match self
            .gap_index
            .entry((g.symbol.clone(), g.stream.clone(), g.start_ms))
        {
            Entry::Occupied(e) => {
                let slot = &mut self.gaps[*e.get()];
                if g.version() >= slot.version() {
                    let first = slot.detected_at_ms.min(g.detected_at_ms);
                    *slot = g;
                    slot.detected_at_ms = first;
                }
            }
            Entry::Vacant(e) => {
                e.insert(self.gaps.len());
                self.gaps.push(g);
            }
        }
    }

    pub fn from_events(events: impl IntoIterator<Item = Event>) -> Batch {
        let mut b = Batch::default();
        for ev in events {
            b.push(ev);
        }
        b
    }

    /// Every row as an event (for the spool).
    pub fn events(&self) -> impl Iterator<Item = Event> + '_ {
        let trades = self
            .trades
            .iter()
            .chain(self.trade_conflicts.iter().map(|(t, _)| t))
            .cloned()
            .map(Event::Trade);
        let klines = self.klines.iter().cloned().map(Event::Kline);
        let snaps = self.snapshots.iter().cloned().map(Event::BookSnapshot);
        let deltas = self.deltas.iter().cloned().map(Event::BookDelta);
        let tickers = self.tickers.iter().cloned().map(Event::Ticker);
        let sessions = self.sessions.iter().cloned().map(Event::Session);
        let markets = self.markets.iter().cloned().map(Event::Market);
        let gaps = self.gaps.iter().cloned().map(Event::Gap);
        // holes and sessions first: a batch split to isolate a refused row commits them
        // before the market data that follows them
        gaps.chain(sessions)
            .chain(markets)
            .chain(trades)
            .chain(klines)
            .chain(snaps)
            .chain(deltas)
            .chain(tickers)
    }

    /// Rows this batch will write (book levels count as one row per snapshot).
    pub fn rows(&self) -> usize {
        self.trades.len()
            + self.klines.len()
            + self.snapshots.len()
            + self.deltas.len()
            + self.tickers.len()
            + self.sessions.len()
            + self.markets.len()
            + self.gaps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows() == 0
    }

    /// About the memory the batch holds (what its events took in the queue).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn clear(&mut self) {
        self.trades.clear();
        self.trade_conflicts.clear();
        self.trade_index.clear();
        self.klines.clear();
        self.kline_index.clear();
        self.snapshots.clear();
        self.deltas.clear();
        self.tickers.clear();
        self.sessions.clear();
        self.session_index.clear();
        self.markets.clear();
        self.gaps.clear();
        self.gap_index.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decimal::Dec;
    use crate::model::{Source, Trade};

    fn bar(close: &str, closed: bool, ev: i64, recv: i64) -> Event {
        let d = |s: &str| Dec::parse(s).unwrap();
        Event::Kline(Kline {
            venue: "cdc-v1",
            symbol: "btcusdt".into(),
            interval: "1min".into(),
            open_time_ms: 60_000,
            open: d("1"),
            high: d("2"),
            low: d("1"),
            close: d(close),
            volume: d("3"),
            quote_volume: None,
            closed,
            event_time_ms: ev,
            recv_time_us: recv,
            source: Source::Ws,
        })
    }

    #[test]
    fn a_key_repeated_with_other_content_is_a_conflict_not_a_drop() {
        let d = |s: &str| Dec::parse(s).unwrap();
        let t = |price: &str, quote: Option<&str>, src: Source| {
            Event::Trade(Trade {
                venue: "cdc-v1",
                symbol: "btcusdt".into(),
                trade_id: 7,
                side: crate::model::Side::Buy,
                price: d(price),
                qty: d("1"),
                quote_qty: quote.map(d),
                event_time_ms: 5,
                recv_time_us: 6,
                source: src,
            })
        };
        let mut b = Batch::default();
        b.push(t("10", None, Source::Rest));
        b.push(t("10", Some("10"), Source::Ws)); // the same trade: fills the amount
        b.push(t("11", Some("11"), Source::Ws)); // same id, other price: a conflict
        assert_eq!(b.trades.len(), 1);
        assert_eq!(b.trades[0].quote_qty, Some(d("10")));
        assert_eq!(b.trade_conflicts.len(), 1);
        assert_eq!(b.trade_conflicts[0].0.price, d("11"));
        // the spool keeps both versions
        assert_eq!(
            b.events().filter(|e| matches!(e, Event::Trade(_))).count(),
            2
        );
    }

    #[test]
    fn last_update_wins_and_closed_beats_open() {
        let mut b = Batch::default();
        b.push(bar("1.1", false, 10, 100));
        b.push(bar("1.2", false, 11, 101));
        b.push(bar("1.0", false, 9, 102)); // older exchange time: loses
        assert_eq!(b.klines.len(), 1);
        assert_eq!(b.klines[0].close.as_str(), "1.2");
        b.push(bar("1.3", true, 11, 101));
        b.push(bar("9", false, 99, 999)); // open never replaces closed
        assert_eq!(b.klines[0].close.as_str(), "1.3");
        assert!(b.klines[0].closed);
        assert_eq!(b.rows(), 1);
    }
}
