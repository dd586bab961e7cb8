//! Validation of normalized market data: the shared mechanism, with limits each venue sets
//! ([`Rules`]). A message that fails is never stored as market data: the normalizer drops it
//! and reports its kind, the worker counts it (`mdrec_invalid_messages_total{kind}`) and logs
//! the first of a burst. An exchange time merely far from the receive time is a venue clock
//! off, not invalid data: the row is kept (both clocks are stored, so the offset stays visible)
//! and counted as clock skew.

use crate::config::RecordConfig;
use crate::decimal::Dec;
use crate::model::{Event, Kline, Level};

/// Why a message is not market data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Invalid {
    /// A price that is zero or negative.
    Price,
    /// A trade quantity that is zero or negative, a book level below zero, a negative volume.
    Quantity,
    /// An exchange time before the venue existed or past the receive time beyond tolerance.
    Time,
    /// A bar whose low is above its open or close, or whose high is below them.
    BarRange,
    /// A decimal with more digits than the venue ever sends.
    Digits,
}

impl Invalid {
    /// Labels of [`Invalid::kind`], in [`Invalid::index`] order.
    pub const KINDS: [&'static str; 5] = ["price", "quantity", "time", "bar_range", "digits"];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn kind(self) -> &'static str {
        Self::KINDS[self.index()]
    }
}

/// A venue's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// No exchange time before this (epoch ms): catches 0, -1 and seconds read as ms.
    pub earliest_ms: i64,
    /// Exchange times may run ahead of the receive time by this much at most.
    pub max_ahead_ms: i64,
    /// A live row whose exchange time is further than this from its receive time is counted
    /// as clock skew (and kept).
    pub skew_ms: i64,
    /// Most digits a price or quantity may have.
    pub max_digits: usize,
}

impl Rules {
    /// These limits with a configuration's clock tolerances.
    pub fn with_clocks(self, record: &RecordConfig) -> Rules {
        Rules {
            max_ahead_ms: (record.max_time_ahead_s as i64).saturating_mul(1000),
            skew_ms: (record.clock_skew_s as i64).saturating_mul(1000),
            ..self
        }
    }
}

/// What validating one event found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Valid,
    /// Valid, but the exchange clock is far from ours.
    Skewed,
    Invalid(Invalid),
}

impl Rules {
    /// Checks one normalized event received at `recv_ms` (local clock). Control rows
    /// (sessions, gaps, listings) are always valid.
    pub fn check(&self, ev: &Event, recv_ms: i64) -> Verdict {
        let r = match ev {
            Event::Trade(t) => self
                .positive(&t.price, Invalid::Price)
                .and_then(|_| self.positive(&t.qty, Invalid::Quantity))
                .and_then(|_| {
                    t.quote_qty
                        .as_ref()
                        .map_or(Ok(()), |q| self.non_negative(q))
                })
                .and_then(|_| self.time(t.event_time_ms, recv_ms)),
            Event::Kline(k) => self.kline(k, recv_ms),
            Event::BookSnapshot(b) => self
                .levels(&b.bids)
                .and_then(|_| self.levels(&b.asks))
                .and_then(|_| self.time(b.event_time_ms, recv_ms)),
            // a zero quantity removes the level: valid
            Event::BookDelta(d) => self
                .positive(&d.price, Invalid::Price)
                .and_then(|_| self.non_negative(&d.qty))
                .and_then(|_| self.time(d.event_time_ms, recv_ms)),
            Event::Ticker(t) => [
                &t.open,
                &t.high,
                &t.low,
                &t.close,
                &t.volume,
                &t.quote_volume,
                &t.bid,
                &t.bid_qty,
                &t.ask,
                &t.ask_qty,
            ]
            .into_iter()
            .flatten()
            .try_for_each(|d| self.non_negative(d))
            .and_then(|_| t.change.as_ref().map_or(Ok(()), |c| self.digits(c)))
            .and_then(|_| self.time(t.event_time_ms, recv_ms)),
            Event::Session(_) | Event::Market(_) | Event::Gap(_) => Ok(()),
        };
        match r {
            Err(kind) => Verdict::Invalid(kind),
            Ok(()) if self.is_skewed(ev, recv_ms) => Verdict::Skewed,
            Ok(()) => Verdict::Valid,
        }
    }

    fn kline(&self, k: &Kline, recv_ms: i64) -> Result<(), Invalid> {
        for d in [&k.open, &k.high, &k.low, &k.close] {
            self.positive(d, Invalid::Price)?;
        }
        self.non_negative(&k.volume)?;
        if let Some(q) = &k.quote_volume {
            self.non_negative(q)?;
        }
        if k.low > k.open || k.low > k.close || k.high < k.open || k.high < k.close {
            return Err(Invalid::BarRange);
        }
        self.time(k.open_time_ms, recv_ms)?;
        self.time(k.event_time_ms, recv_ms)
    }

    fn levels(&self, levels: &[Level]) -> Result<(), Invalid> {
        levels.iter().try_for_each(|(p, q)| {
            self.positive(p, Invalid::Price)?;
            self.positive(q, Invalid::Quantity)
        })
    }

    fn digits(&self, d: &Dec) -> Result<(), Invalid> {
        let n = d.as_str().bytes().filter(u8::is_ascii_digit).count();
        if n > self.max_digits {
            Err(Invalid::Digits)
        } else {
            Ok(())
        }
    }

    fn positive(&self, d: &Dec, kind: Invalid) -> Result<(), Invalid> {
        self.digits(d)?;
        if d.is_zero() || d.as_str().starts_with('-') {
            Err(kind)
        } else {
            Ok(())
        }
    }

    fn non_negative(&self, d: &Dec) -> Result<(), Invalid> {
        self.digits(d)?;
        if d.as_str().starts_with('-') {
            Err(Invalid::Quantity)
        } else {
            Ok(())
        }
    }

    fn time(&self, t_ms: i64, recv_ms: i64) -> Result<(), Invalid> {
        if t_ms < self.earliest_ms || t_ms > recv_ms.saturating_add(self.max_ahead_ms) {
            Err(Invalid::Time)
        } else {
            Ok(())
        }
    }

    /// Only live rows stamped "now" by the venue say anything about its clock (a bar's open
    /// time and a backfilled trade are old by nature).
    fn is_skewed(&self, ev: &Event, recv_ms: i64) -> bool {
        let t = match ev {
            Event::Trade(t) if t.source == crate::model::Source::Ws => t.event_time_ms,
            Event::BookSnapshot(b) => b.event_time_ms,
            Event::BookDelta(d) => d.event_time_ms,
            Event::Ticker(t) => t.event_time_ms,
            _ => return false,
        };
        t.abs_diff(recv_ms) > self.skew_ms.unsigned_abs()
    }
}

/// Per-kind counts of what a batch of events was found to hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings {
    pub invalid: [u32; 5],
    /// The first invalid kind seen, for the log line.
    pub first: Option<Invalid>,
    /// The first invalid message's symbol, and for a time outside the window how far its
    /// exchange time is from the receive time (ms; positive: ahead), for the log line.
    pub first_symbol: Option<String>,
    pub first_offset_ms: Option<i64>,
    pub skewed: u32,
    /// Invalid messages per symbol and kind: counted against the message's symbol.
    pub invalid_by_symbol: Vec<(String, [u32; 5])>,
}

impl Findings {
    pub fn invalid_total(&self) -> u32 {
        self.invalid.iter().sum()
    }

    /// Checks `ev` against `rules` and tallies what it found; true when the event may be
    /// stored (valid, or kept though the venue clock is off).
    pub fn admit(&mut self, rules: &Rules, ev: &Event, recv_ms: i64) -> bool {
        match rules.check(ev, recv_ms) {
            Verdict::Valid => true,
            Verdict::Skewed => {
                self.skewed += 1;
                true
            }
            Verdict::Invalid(kind) => {
                self.invalid[kind.index()] += 1;
                let symbol = ev.venue_symbol().1;
                match self.invalid_by_symbol.iter_mut().find(|(s, _)| s == symbol) {
                    Some((_, n)) => n[kind.index()] += 1,
                    None => {
                        let mut n = [0; 5];
                        n[kind.index()] = 1;
                        self.invalid_by_symbol.push((symbol.to_string(), n));
                    }
                }
                if self.first.is_none() {
                    self.first = Some(kind);
                    self.first_symbol = Some(symbol.to_string());
                    self.first_offset_ms = (kind == Invalid::Time)
                        .then(|| exchange_time(ev).map(|t| t.saturating_sub(recv_ms)))
                        .flatten();
                }
                false
            }
        }
    }
}

/// The exchange's time of an event (a bar's last update), where it has one.
fn exchange_time(ev: &Event) -> Option<i64> {
    match ev {
        Event::Trade(t) => Some(t.event_time_ms),
        Event::Kline(k) => Some(k.event_time_ms),
        Event::BookSnapshot(b) => Some(b.event_time_ms),
        Event::BookDelta(d) => Some(d.event_time_ms),
        Event::Ticker(t) => Some(t.event_time_ms),
        _ => None,
    }
}

/// Drops the invalid events of `events[from..]`, keeping order, and tallies what it found.
pub fn retain_valid(
    rules: &Rules,
    events: &mut Vec<Event>,
    from: usize,
    recv_ms: i64,
    findings: &mut Findings,
) {
    let mut i = from;
    while i < events.len() {
        if findings.admit(rules, &events[i], recv_ms) {
            i += 1;
        } else {
            events.remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Side, Source, Trade};
    use std::sync::Arc;

    const RULES: Rules = Rules {
        earliest_ms: 1_262_304_000_000,
        max_ahead_ms: 300_000,
        skew_ms: 60_000,
        max_digits: 40,
    };
    const NOW: i64 = 1_790_000_000_000;

    fn trade(price: &str, qty: &str, t: i64) -> Event {
        Event::Trade(Trade {
            venue: "cdc-v1",
            symbol: Arc::from("x"),
            trade_id: 1,
            side: Side::Buy,
            price: Dec::parse(price).unwrap(),
            qty: Dec::parse(qty).unwrap(),
            quote_qty: None,
            event_time_ms: t,
            recv_time_us: NOW * 1000,
            source: Source::Ws,
        })
    }

    fn bar(o: &str, h: &str, l: &str, c: &str, open_ms: i64) -> Event {
        let d = |s: &str| Dec::parse(s).unwrap();
        Event::Kline(Kline {
            venue: "cdc-v1",
            symbol: Arc::from("x"),
            interval: Arc::from("1min"),
            open_time_ms: open_ms,
            open: d(o),
            high: d(h),
            low: d(l),
            close: d(c),
            volume: d("1"),
            quote_volume: None,
            closed: false,
            event_time_ms: NOW,
            recv_time_us: NOW * 1000,
            source: Source::Ws,
        })
    }

    #[test]
    fn trades() {
        use Verdict::*;
        assert_eq!(RULES.check(&trade("1.5", "2", NOW), NOW), Valid);
        assert_eq!(
            RULES.check(&trade("0", "2", NOW), NOW),
            Invalid(super::Invalid::Price)
        );
        assert_eq!(
            RULES.check(&trade("-1", "2", NOW), NOW),
            Invalid(super::Invalid::Price)
        );
        assert_eq!(
            RULES.check(&trade("1", "0", NOW), NOW),
            Invalid(super::Invalid::Quantity)
        );
        assert_eq!(
            RULES.check(&trade("1", "-3", NOW), NOW),
            Invalid(super::Invalid::Quantity)
        );
        for t in [0, -1, i64::MAX, i64::MIN, NOW / 1000, NOW + 300_001] {
            assert_eq!(
                RULES.check(&trade("1", "1", t), NOW),
                Invalid(super::Invalid::Time),
                "{t}"
            );
        }
        assert_eq!(RULES.check(&trade("1", "1", NOW - 61_000), NOW), Skewed);
        assert_eq!(RULES.check(&trade("1", "1", NOW + 299_000), NOW), Skewed);
        let long = format!("1.{}", "1".repeat(40));
        assert_eq!(
            RULES.check(&trade(&long, "1", NOW), NOW),
            Invalid(super::Invalid::Digits)
        );
    }

    #[test]
    fn bars() {
        use Verdict::*;
        let t = NOW - 3_600_000;
        assert_eq!(RULES.check(&bar("2", "3", "1", "2.5", t), NOW), Valid);
        assert_eq!(RULES.check(&bar("2", "2", "2", "2", t), NOW), Valid);
        assert_eq!(
            RULES.check(&bar("2", "1", "3", "2", t), NOW),
            Invalid(super::Invalid::BarRange)
        );
        assert_eq!(
            RULES.check(&bar("2", "3", "2.1", "2.5", t), NOW),
            Invalid(super::Invalid::BarRange)
        );
        assert_eq!(
            RULES.check(&bar("2", "2.4", "1", "2.5", t), NOW),
            Invalid(super::Invalid::BarRange)
        );
        assert_eq!(
            RULES.check(&bar("2", "0", "1", "2", t), NOW),
            Invalid(super::Invalid::Price)
        );
        assert_eq!(
            RULES.check(&bar("2", "3", "1", "2", 0), NOW),
            Invalid(super::Invalid::Time)
        );
        assert_eq!(
            RULES.check(&bar("2", "3", "1", "2", -1000), NOW),
            Invalid(super::Invalid::Time)
        );
        // an old bar (history) is not a skewed clock
        assert_eq!(
            RULES.check(&bar("2", "3", "1", "2", NOW - 86_400_000 * 30), NOW),
            Valid
        );
    }

    #[test]
    fn retain_keeps_order_and_counts() {
        let mut evs = vec![
            trade("1", "1", NOW),
            trade("0", "1", NOW),
            trade("2", "1", NOW),
            trade("1", "1", 0),
            trade("3", "1", NOW - 120_000),
        ];
        let mut f = Findings::default();
        retain_valid(&RULES, &mut evs, 1, NOW, &mut f);
        assert_eq!(evs.len(), 3);
        assert_eq!(f.invalid[Invalid::Price.index()], 1);
        assert_eq!(f.invalid[Invalid::Time.index()], 1);
        assert_eq!(f.first, Some(Invalid::Price));
        assert_eq!(f.skewed, 1);
    }
}
