//! A simulated market: a random walk of trades against a small order book, with kline bars.
//! Pure and deterministic: the same seed gives the same sequence of steps.

use std::collections::{BTreeMap, HashMap};

use rust_decimal::Decimal;

use crate::model::{BookSide, Side};

/// Kline intervals a market builds bars for: the venue's names and lengths (the simulator's
/// venue personality gives them).
pub type Intervals = &'static [(&'static str, i64)];

/// Price and quantity levels, best first.
pub type SimLevels = Vec<(Decimal, Decimal)>;
/// (bids, asks).
pub type SimBook = (SimLevels, SimLevels);

/// Book levels kept per side (the book never grows past `BOOK_LEVELS + 5`).
pub const BOOK_LEVELS: usize = 20;

#[derive(Debug, Clone, PartialEq)]
pub struct SimTrade {
    pub id: i64,
    pub side: Side,
    pub price: Decimal,
    pub qty: Decimal,
    /// price * qty, exact.
    pub amount: Decimal,
    pub time_ms: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub open_time_ms: i64,
    pub open: Decimal,
    pub high: Decimal,
    pub low: Decimal,
    pub close: Decimal,
    pub volume: Decimal,
    pub amount: Decimal,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TickerStats {
    pub open: Decimal,
    pub high: Decimal,
    pub low: Decimal,
    pub close: Decimal,
    pub vol: Decimal,
    pub amount: Decimal,
    pub rose: Decimal,
}

/// How a market's numbers look: decimals of price and quantity, and where it starts.
#[derive(Debug, Clone)]
pub struct MarketSpec {
    pub symbol: String,
    pub base: String,
    pub quote: String,
    pub price_scale: u32,
    pub qty_scale: u32,
    pub start_price_ticks: i64,
}

impl MarketSpec {
    /// A spec for a symbol name: known names get realistic scales; `hpx...` (high precision)
    /// prices with 8 decimals and quantities with 8, so amounts carry 16 decimals and 20+
    /// significant digits.
    pub fn for_symbol(symbol: &str) -> MarketSpec {
        // v1 names (`btcusdt`) and the exchange's (`BTC_USD`, `BTCUSD-PERP`)
        let lower = symbol.to_ascii_lowercase();
        let (quote, base) = if let Some((b, q)) = lower.split_once('_') {
            (q.to_string(), b.to_string())
        } else if let Some((pair, _)) = lower.split_once('-') {
            let b = pair.strip_suffix("usd").unwrap_or(pair);
            ("usd".to_string(), b.to_string())
        } else {
            match lower.strip_suffix("usdt") {
                Some(b) => ("usdt".to_string(), b.to_string()),
                None => (
                    "btc".to_string(),
                    lower.strip_suffix("btc").unwrap_or(&lower).to_string(),
                ),
            }
        };
        let (price_scale, qty_scale, start) = match base.as_str() {
            "btc" => (2, 5, 8_669_194),
            "eth" => (2, 4, 312_456),
            b if b.starts_with("hpx") => (8, 8, 123_456_789_012),
            _ => (4, 2, 17_439),
        };
        MarketSpec {
            symbol: symbol.to_string(),
            base,
            quote,
            price_scale,
            qty_scale,
            start_price_ticks: start,
        }
    }
}

/// What one step changed.
#[derive(Debug, Clone, Default)]
pub struct StepOutput {
    pub trades: Vec<SimTrade>,
    /// Bars (per interval name) that were created or changed.
    pub bars: Vec<(&'static str, Bar)>,
    /// Step-0 levels that changed: qty zero = removed.
    pub book_changes: Vec<(BookSide, Decimal, Decimal)>,
}

pub struct Market {
    pub spec: MarketSpec,
    rng: fastrand::Rng,
    next_trade_id: i64,
    /// price ticks -> qty units
    bids: BTreeMap<i64, i64>,
    asks: BTreeMap<i64, i64>,
    pub bars: HashMap<&'static str, BTreeMap<i64, Bar>>,
    intervals: Intervals,
    pub trades: Vec<SimTrade>,
    pub ticker: Option<TickerStats>,
    last_price: Decimal,
    /// Levels kept per side (the book never grows past `levels + 5`).
    levels: usize,
    /// Trade ids grow by a random step (venues numbering trades across markets) instead of 1.
    id_jumps: bool,
}

impl Market {
    pub fn new(spec: MarketSpec, seed: u64, intervals: Intervals) -> Market {
        Market::with_shape(spec, seed, intervals, BOOK_LEVELS, false)
    }

    /// A market with `levels` book levels per side, numbering trades by `id_jumps`.
    pub fn with_shape(
        spec: MarketSpec,
        seed: u64,
        intervals: Intervals,
        levels: usize,
        id_jumps: bool,
    ) -> Market {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mid = spec.start_price_ticks;
        let mut bids = BTreeMap::new();
        let mut asks = BTreeMap::new();
        for i in 1..=levels as i64 {
            asks.insert(
                mid + i,
                rng.i64(1..5_000) * 10i64.pow(spec.qty_scale.saturating_sub(3)),
            );
            bids.insert(
                mid - i,
                rng.i64(1..5_000) * 10i64.pow(spec.qty_scale.saturating_sub(3)),
            );
        }
        let last_price = Decimal::new(mid, spec.price_scale);
        Market {
            // today's exchange: 19-digit ids, as the wire shows them
            next_trade_id: if id_jumps {
                2_008_994_977_608_713_094 + rng.i64(0..1000)
            } else {
                1_000_000 + rng.i64(0..1000)
            },
            spec,
            rng,
            bids,
            asks,
            bars: HashMap::new(),
            intervals,
            trades: Vec::new(),
            ticker: None,
            last_price,
            levels,
            id_jumps,
        }
    }

    fn price(&self, ticks: i64) -> Decimal {
        Decimal::new(ticks, self.spec.price_scale)
    }

    fn qty(&self, units: i64) -> Decimal {
        Decimal::new(units, self.spec.qty_scale)
    }

    /// Whole step-0 book, best first: (bids, asks).
    /// The venue renumbers its trades: the next trade gets id `next` (fault injection: a
    /// venue restart that reuses ids).
    pub fn reset_trade_ids(&mut self, next: i64) {
        self.next_trade_id = next;
    }

    /// The market goes on from `last`, a trade it published before (a recording made of an
    /// earlier run): its history holds it, and the next trade's id follows it.
    pub fn continue_after(&mut self, last: SimTrade) {
        self.next_trade_id = last.id.saturating_add(1);
        self.trades.push(last);
    }

    /// The market's bar of `interval` (by name) is `bar`, one it published before: trades
    /// in its slot go on from it, and its history answers with it.
    pub fn continue_bar(&mut self, interval: &str, bar: Bar) {
        if let Some(&(name, _)) = self.intervals.iter().find(|(n, _)| *n == interval) {
            self.bars
                .entry(name)
                .or_default()
                .insert(bar.open_time_ms, bar);
        }
    }

    pub fn book(&self) -> SimBook {
        let bids = self
            .bids
            .iter()
            .rev()
            .map(|(&p, &q)| (self.price(p), self.qty(q)))
            .collect();
        let asks = self
            .asks
            .iter()
            .map(|(&p, &q)| (self.price(p), self.qty(q)))
            .collect();
        (bids, asks)
    }

    /// Opens the bars containing `now_ms` (so quiet periods have zero-volume bars).
    pub fn roll_bars(&mut self, now_ms: i64, out: &mut StepOutput) {
        for &(name, len) in self.intervals {
            let start = now_ms - now_ms.rem_euclid(len);
            let series = self.bars.entry(name).or_default();
            if let std::collections::btree_map::Entry::Vacant(slot) = series.entry(start) {
                let p = self.last_price;
                let bar = Bar {
                    open_time_ms: start,
                    open: p,
                    high: p,
                    low: p,
                    close: p,
                    volume: Decimal::ZERO,
                    amount: Decimal::ZERO,
                };
                slot.insert(bar.clone());
                out.bars.push((name, bar));
            }
        }
    }

    /// One step of the market at `now_ms`: 0-3 trades, a few book changes, bars updated.
    pub fn step(&mut self, now_ms: i64) -> StepOutput {
        self.step_with(now_ms, true)
    }

    /// A step; with `trading` false nobody trades (a quiet market: bars still roll, with
    /// zero volume, and the book still moves).
    pub fn step_with(&mut self, now_ms: i64, trading: bool) -> StepOutput {
        let mut out = StepOutput::default();
        self.roll_bars(now_ms, &mut out);
        let n = if trading { self.rng.usize(0..=3) } else { 0 };
        for _ in 0..n {
            let side = if self.rng.bool() {
                Side::Buy
            } else {
                Side::Sell
            };
            let book = match side {
                Side::Buy => &mut self.asks,
                Side::Sell => &mut self.bids,
            };
            let best = match side {
                Side::Buy => book.first_key_value(),
                Side::Sell => book.last_key_value(),
            };
            let Some((&p, &avail)) = best else { continue };
            let want = self.rng.i64(1..=avail.max(1));
            let left = avail - want;
            if left > 0 {
                book.insert(p, left);
            } else {
                book.remove(&p);
            }
            let bside = match side {
                Side::Buy => BookSide::Ask,
                Side::Sell => BookSide::Bid,
            };
            out.book_changes
                .push((bside, self.price(p), self.qty(left.max(0))));
            let price = self.price(p);
            let qty = self.qty(want);
            let t = SimTrade {
                id: self.next_trade_id,
                side,
                price,
                qty,
                amount: price * qty,
                time_ms: now_ms,
            };
            self.next_trade_id += if self.id_jumps {
                self.rng.i64(1..1_000)
            } else {
                1
            };
            self.last_price = price;
            self.apply_trade_to_bars(&t, &mut out);
            self.apply_trade_to_ticker(&t);
            self.trades.push(t.clone());
            out.trades.push(t);
        }
        self.book_noise(&mut out);
        out
    }

    fn apply_trade_to_bars(&mut self, t: &SimTrade, out: &mut StepOutput) {
        for &(name, len) in self.intervals {
            let start = t.time_ms - t.time_ms.rem_euclid(len);
            let series = self.bars.entry(name).or_default();
            let bar = series.entry(start).or_insert_with(|| Bar {
                open_time_ms: start,
                open: t.price,
                high: t.price,
                low: t.price,
                close: t.price,
                volume: Decimal::ZERO,
                amount: Decimal::ZERO,
            });
            bar.high = bar.high.max(t.price);
            bar.low = bar.low.min(t.price);
            bar.close = t.price;
            bar.volume += t.qty;
            bar.amount += t.amount;
            let snapshot = bar.clone();
            match out
                .bars
                .iter_mut()
                .find(|(n, b)| *n == name && b.open_time_ms == start)
            {
                Some(slot) => slot.1 = snapshot,
                None => out.bars.push((name, snapshot)),
            }
        }
    }

    fn apply_trade_to_ticker(&mut self, t: &SimTrade) {
        let s = self.ticker.get_or_insert(TickerStats {
            open: t.price,
            high: t.price,
            low: t.price,
            close: t.price,
            vol: Decimal::ZERO,
            amount: Decimal::ZERO,
            rose: Decimal::ZERO,
        });
        s.high = s.high.max(t.price);
        s.low = s.low.min(t.price);
        s.close = t.price;
        s.vol += t.qty;
        s.amount += t.amount;
        if !s.open.is_zero() {
            s.rose = ((s.close - s.open) / s.open).round_dp(8);
        }
    }

    /// Random level changes and refills, never crossing the book.
    fn book_noise(&mut self, out: &mut StepOutput) {
        let unit = 10i64.pow(self.spec.qty_scale.saturating_sub(3));
        for _ in 0..self.rng.usize(0..=2) {
            let bid_side = self.rng.bool();
            let best_bid = self.bids.last_key_value().map(|(&p, _)| p);
            let best_ask = self.asks.first_key_value().map(|(&p, _)| p);
            let (Some(bb), Some(ba)) = (best_bid, best_ask) else {
                break;
            };
            let off = self.rng.i64(0..self.levels as i64);
            let (p, side) = if bid_side {
                (bb - off, BookSide::Bid)
            } else {
                (ba + off, BookSide::Ask)
            };
            let book = if bid_side {
                &mut self.bids
            } else {
                &mut self.asks
            };
            let q = if self.rng.u8(0..10) == 0 {
                0
            } else {
                self.rng.i64(1..5_000) * unit
            };
            if q == 0 {
                book.remove(&p);
            } else {
                book.insert(p, q);
            }
            out.book_changes.push((
                side,
                Decimal::new(p, self.spec.price_scale),
                Decimal::new(q, self.spec.qty_scale),
            ));
        }
        // refill to `levels` behind the worst level; trim past `levels + 5`
        for bid_side in [true, false] {
            loop {
                let book = if bid_side {
                    &mut self.bids
                } else {
                    &mut self.asks
                };
                if book.len() >= self.levels {
                    break;
                }
                let p = if bid_side {
                    book.first_key_value()
                        .map(|(&p, _)| p - 1)
                        .or_else(|| self.asks.first_key_value().map(|(&p, _)| p - 1))
                } else {
                    book.last_key_value()
                        .map(|(&p, _)| p + 1)
                        .or_else(|| self.bids.last_key_value().map(|(&p, _)| p + 1))
                };
                let p = p.unwrap_or(self.spec.start_price_ticks);
                let q = self.rng.i64(1..5_000) * unit;
                let book = if bid_side {
                    &mut self.bids
                } else {
                    &mut self.asks
                };
                book.insert(p, q);
                let side = if bid_side {
                    BookSide::Bid
                } else {
                    BookSide::Ask
                };
                out.book_changes.push((
                    side,
                    Decimal::new(p, self.spec.price_scale),
                    Decimal::new(q, self.spec.qty_scale),
                ));
            }
            let book = if bid_side {
                &mut self.bids
            } else {
                &mut self.asks
            };
            while book.len() > self.levels + 5 {
                let worst = if bid_side {
                    book.pop_first()
                } else {
                    book.pop_last()
                };
                if let Some((p, _)) = worst {
                    let side = if bid_side {
                        BookSide::Bid
                    } else {
                        BookSide::Ask
                    };
                    out.book_changes.push((
                        side,
                        Decimal::new(p, self.spec.price_scale),
                        Decimal::ZERO,
                    ));
                }
            }
        }
    }
}

/// A step-0 book merged to `step` (step1: one decimal fewer, step2: two fewer), top `levels`.
pub fn merge_book((bids, asks): &SimBook, price_scale: u32, step: u8, levels: usize) -> SimBook {
    let merge = |v: &[(Decimal, Decimal)], up: bool| -> SimLevels {
        if step == 0 {
            return v.iter().take(levels).cloned().collect();
        }
        let dp = price_scale.saturating_sub(step as u32);
        let strategy = if up {
            rust_decimal::RoundingStrategy::ToPositiveInfinity
        } else {
            rust_decimal::RoundingStrategy::ToNegativeInfinity
        };
        let mut out: Vec<(Decimal, Decimal)> = Vec::new();
        for (p, q) in v {
            let m = p.round_dp_with_strategy(dp, strategy);
            match out.last_mut() {
                Some((lp, lq)) if *lp == m => *lq += *q,
                _ => out.push((m, *q)),
            }
        }
        out.truncate(levels);
        out
    };
    (merge(bids, false), merge(asks, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bars of a minute and an hour (the market knows no venue's names).
    const INTERVALS: Intervals = &[("1min", 60_000), ("60min", 3_600_000)];

    #[test]
    fn deterministic_and_consistent() {
        let spec = MarketSpec::for_symbol("btcusdt");
        let mut a = Market::new(spec.clone(), 7, INTERVALS);
        let mut b = Market::new(spec, 7, INTERVALS);
        for i in 0..500 {
            let t = 1_700_000_000_000 + i * 1000;
            a.step(t);
            b.step(t);
        }
        assert_eq!(a.trades, b.trades);
        assert!(a.trades.len() > 300);
        let (bids, asks) = a.book();
        assert!(bids.len() >= BOOK_LEVELS && bids.len() <= BOOK_LEVELS + 5);
        assert!(bids[0].0 < asks[0].0, "book crossed");
        assert!(bids.windows(2).all(|w| w[0].0 > w[1].0));
        assert!(asks.windows(2).all(|w| w[0].0 < w[1].0));
        // bar volumes add up to the trades
        let total: Decimal = a.trades.iter().map(|t| t.qty).sum();
        let bar_total: Decimal = a.bars["1min"].values().map(|b| b.volume).sum();
        assert_eq!(total, bar_total);
    }

    #[test]
    fn high_precision_market_has_long_amounts() {
        let mut m = Market::new(MarketSpec::for_symbol("hpxusdt"), 3, INTERVALS);
        for i in 0..50 {
            m.step(1_700_000_000_000 + i);
        }
        let long = m
            .trades
            .iter()
            .any(|t| crate::decimal::Dec::from(t.amount).significant_digits() >= 16);
        assert!(long);
    }
}
