//! Wire types of the Crypto.com Exchange market socket (today's API and the v2 dialect),
//! borrowed from the frame. Numbers may be JSON numbers or strings in either dialect.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::venue::numbers::{Int, Num};

/// Every server frame: pushes, replies, acks, heartbeats, errors.
#[derive(Debug, Deserialize)]
pub struct Envelope<'a> {
    /// Kept raw: a heartbeat is answered with its id digit for digit.
    #[serde(borrow, default)]
    pub id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub method: Option<Cow<'a, str>>,
    #[serde(default)]
    pub code: Option<Int>,
    #[serde(borrow, default)]
    pub message: Option<Cow<'a, str>>,
    /// On bare subscribe acks and some errors: the channel the reply is about.
    #[serde(borrow, default)]
    pub channel: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub result: Option<Push<'a>>,
}

/// `result` of a push (or of a subscribe reply carrying data).
#[derive(Debug, Deserialize)]
pub struct Push<'a> {
    #[serde(borrow, default)]
    pub instrument_name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub subscription: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub channel: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub interval: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub data: Option<&'a RawValue>,
}

/// `trade.{I}` rows (REST `public/get-trades` rows too).
#[derive(Debug, Deserialize)]
pub struct WireTrade<'a> {
    pub d: Int,
    pub t: Int,
    pub p: Num,
    pub q: Num,
    #[serde(borrow)]
    pub s: Cow<'a, str>,
    #[serde(borrow, default)]
    pub i: Option<Cow<'a, str>>,
}

impl WireTrade<'_> {
    /// The trade as a row (the venue names the taker's side; ids kept exact).
    pub fn into_trade(
        self,
        venue: &'static str,
        symbol: &std::sync::Arc<str>,
        recv_time_us: i64,
        source: crate::model::Source,
    ) -> Result<crate::model::Trade, String> {
        let side = crate::model::Side::parse(&self.s)
            .ok_or_else(|| format!("trade side {:?}", crate::venue::numbers::short(&self.s)))?;
        Ok(crate::model::Trade {
            venue,
            symbol: symbol.clone(),
            trade_id: self.d.0,
            side,
            price: self.p.0,
            qty: self.q.0,
            quote_qty: None,
            event_time_ms: self.t.0,
            recv_time_us,
            source,
        })
    }
}

/// Book levels as rows: price and quantity (the orders count is dropped).
pub fn levels(v: Vec<WireLevel>) -> Vec<crate::model::Level> {
    v.into_iter().map(|l| (l.0.0, l.1.0)).collect()
}

/// A book level: `[price, qty, orders]` (orders ignored; may read 0).
#[derive(Debug, Deserialize)]
pub struct WireLevel(
    pub Num,
    pub Num,
    #[serde(default)] pub Option<serde::de::IgnoredAny>,
);

/// `book.{I}.{depth}` data: a full book.
#[derive(Debug, Deserialize)]
pub struct WireBook {
    #[serde(default)]
    pub bids: Vec<WireLevel>,
    #[serde(default)]
    pub asks: Vec<WireLevel>,
    pub t: Int,
    /// Absent in the v2 dialect (snapshots only).
    #[serde(default)]
    pub u: Option<Int>,
}

/// `book.update` data: changes since `pu`.
#[derive(Debug, Deserialize)]
pub struct WireBookUpdate {
    pub update: WireSides,
    pub t: Int,
    pub u: Int,
    /// Absent in an old v2 form that cannot be chained.
    #[serde(default)]
    pub pu: Option<Int>,
}

#[derive(Debug, Deserialize)]
pub struct WireSides {
    #[serde(default)]
    pub bids: Vec<WireLevel>,
    #[serde(default)]
    pub asks: Vec<WireLevel>,
}

/// `candlestick.{tf}.{I}` rows: `t` is the bar's start, `ut` its last update.
#[derive(Debug, Deserialize)]
pub struct WireBar {
    pub t: Int,
    pub o: Num,
    pub h: Num,
    pub l: Num,
    pub c: Num,
    pub v: Num,
    #[serde(default)]
    pub ut: Option<Int>,
}

/// `ticker.{I}`: `a` is the last price, `c` the 24 h change (a fraction today, a price
/// difference in v2: stored as given); any field may be null.
#[derive(Debug, Deserialize)]
pub struct WireTicker {
    /// The instrument (REST `get-tickers` lists several).
    #[serde(default)]
    pub i: Option<String>,
    #[serde(default)]
    pub h: Option<Num>,
    #[serde(default)]
    pub l: Option<Num>,
    #[serde(default)]
    pub a: Option<Num>,
    #[serde(default)]
    pub c: Option<Num>,
    #[serde(default)]
    pub v: Option<Num>,
    #[serde(default)]
    pub vv: Option<Num>,
    /// Best bid and its size, best ask and its size.
    #[serde(default)]
    pub b: Option<Num>,
    #[serde(default)]
    pub bs: Option<Num>,
    #[serde(default)]
    pub k: Option<Num>,
    #[serde(default)]
    pub ks: Option<Num>,
    pub t: Int,
}
