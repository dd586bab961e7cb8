//! Rows that reach the database for a period the archive may hold already: the rule the
//! writer marks them by, in the transaction that stores them (`archive_dirty`, migration
//! 0008). The archive's own reads and writes of its ledger are in `archived.rs`.

use std::collections::BTreeSet;

use super::batch::Batch;
use crate::model::Table;

const DAY_MS: i64 = 86_400_000;

/// Which rows the writer marks as late: those of a period the archive may already hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LateRule {
    pub period_ms: i64,
    pub settle_ms: i64,
}

impl Default for LateRule {
    fn default() -> Self {
        LateRule {
            period_ms: DAY_MS,
            settle_ms: 3_600_000,
        }
    }
}

/// The rule a store's writes use, changed by the recorder at start (atomics: read on every
/// write, set once).
#[derive(Debug)]
pub struct LateCell {
    period_ms: std::sync::atomic::AtomicI64,
    settle_ms: std::sync::atomic::AtomicI64,
}

impl Default for LateCell {
    fn default() -> Self {
        let r = LateRule::default();
        LateCell {
            period_ms: r.period_ms.into(),
            settle_ms: r.settle_ms.into(),
        }
    }
}

impl LateCell {
    pub fn get(&self) -> LateRule {
        use std::sync::atomic::Ordering::Relaxed;
        LateRule {
            period_ms: self.period_ms.load(Relaxed),
            settle_ms: self.settle_ms.load(Relaxed),
        }
    }

    pub fn set(&self, r: LateRule) {
        use std::sync::atomic::Ordering::Relaxed;
        self.period_ms.store(r.period_ms.max(1), Relaxed);
        self.settle_ms.store(r.settle_ms.max(0), Relaxed);
    }
}

/// A period of one table of one symbol (gaps and sessions: of the venue, symbol "") that
/// received rows after the archive's horizon passed it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Late {
    pub table: &'static str,
    pub venue: &'static str,
    pub symbol: String,
    pub period_start_ms: i64,
}

impl LateRule {
    /// The archiver writes a period once it ended `settle_ms` ago. A row is late when its
    /// period may be archived by the time its transaction commits: older than the horizon
    /// minus a margin for the write itself (half the settle time, at most ten minutes).
    pub fn horizon_ms(&self, now_ms: i64) -> i64 {
        let margin = (self.settle_ms / 2).min(600_000);
        now_ms - self.settle_ms + margin
    }

    /// The late periods of a batch's rows.
    pub fn late(&self, batch: &Batch, now_ms: i64) -> Vec<Late> {
        let horizon = self.horizon_ms(now_ms);
        let mut out = BTreeSet::new();
        let p = self.period_ms;
        let mut add = |table: Table, venue: &'static str, symbol: &str, t: i64| {
            if t < horizon {
                out.insert(Late {
                    table: table.as_str(),
                    venue,
                    symbol: symbol.to_string(),
                    period_start_ms: t.div_euclid(p) * p,
                });
            }
        };
        for r in &batch.trades {
            add(Table::Trades, r.venue, &r.symbol, r.event_time_ms);
        }
        for r in &batch.klines {
            add(Table::Klines, r.venue, &r.symbol, r.open_time_ms);
        }
        for r in &batch.snapshots {
            add(Table::BookSnapshots, r.venue, &r.symbol, r.event_time_ms);
        }
        for r in &batch.deltas {
            add(Table::BookDeltas, r.venue, &r.symbol, r.event_time_ms);
        }
        for r in &batch.tickers {
            add(Table::Tickers, r.venue, &r.symbol, r.event_time_ms);
        }
        for r in &batch.gaps {
            add(Table::Gaps, r.venue, "", r.start_ms);
        }
        for r in &batch.sessions {
            add(Table::Sessions, r.venue, "", r.connected_at_us / 1000);
        }
        out.into_iter().collect()
    }
}

/// A later mark of the same period moves its time on (by at least 1 ms), so the archiver
/// clears only the mark it saw.
pub(crate) const LATE_SQL: &str = "INSERT INTO archive_dirty (tbl, venue, symbol, \
     period_start_ms, period_end_ms, marked_at_ms) VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (tbl, venue, symbol, period_start_ms) DO UPDATE SET \
     period_end_ms = CASE WHEN excluded.period_end_ms > archive_dirty.period_end_ms \
     THEN excluded.period_end_ms ELSE archive_dirty.period_end_ms END, marked_at_ms = \
     CASE WHEN excluded.marked_at_ms > archive_dirty.marked_at_ms THEN excluded.marked_at_ms \
     ELSE archive_dirty.marked_at_ms + 1 END";

/// Marks late periods in an open transaction of either backend.
macro_rules! insert_late {
    ($tx:expr, $rule:expr, $batch:expr) => {{
        let now = $crate::model::now_ms();
        for l in $rule.late($batch, now) {
            sqlx::query($crate::store::ledger::LATE_SQL)
                .bind(l.table)
                .bind(l.venue)
                .bind(&l.symbol)
                .bind(l.period_start_ms)
                .bind(l.period_start_ms + $rule.period_ms)
                .bind(now)
                .execute(&mut *$tx)
                .await
                .map_err($crate::store::StoreError::sql("insert archive_dirty"))?;
        }
    }};
}
pub(crate) use insert_late;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decimal::Dec;
    use crate::model::{Event, Side, Source, Trade};
    use std::sync::Arc;

    fn trade(id: i64, t: i64) -> Event {
        Event::Trade(Trade {
            venue: "cdc-exchange",
            symbol: Arc::from("BTC_USD"),
            trade_id: id,
            side: Side::Buy,
            price: Dec::parse("1").unwrap(),
            qty: Dec::parse("1").unwrap(),
            quote_qty: None,
            event_time_ms: t,
            recv_time_us: t * 1000,
            source: Source::Rest,
        })
    }

    #[test]
    fn only_rows_behind_the_horizon_are_late_once_per_period() {
        let rule = LateRule {
            period_ms: 60_000,
            settle_ms: 120_000,
        };
        let now = 10_000_000;
        // horizon: now - 120 s + 60 s margin
        assert_eq!(rule.horizon_ms(now), now - 60_000);
        let mut b = Batch::default();
        b.push(trade(1, now - 1_000)); // fresh
        b.push(trade(2, now - 3_600_000)); // an hour back
        b.push(trade(3, now - 3_590_000)); // same minute
        b.push(trade(4, now - 7_200_000));
        let late = rule.late(&b, now);
        let starts: Vec<i64> = late.iter().map(|l| l.period_start_ms).collect();
        assert_eq!(starts, vec![2_760_000, 6_360_000]);
        assert!(
            late.iter()
                .all(|l| l.table == "trades" && l.symbol == "BTC_USD")
        );
    }
}
