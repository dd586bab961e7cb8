//! Wire types of the v1 websocket and REST API, borrowed from the frame buffer.
//!
//! Numbers arrive as JSON numbers or strings depending on the server; both are read from their
//! raw text into an exact [`Dec`], never through `f64`.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

pub use crate::venue::numbers::{Int, Num, parse_int, short, unquote};

/// Every server frame: data pushes, replies, acks, heartbeats, echoes.
#[derive(Debug, Deserialize)]
pub struct Envelope<'a> {
    #[serde(borrow, default)]
    pub ping: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub pong: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub event_rep: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub event: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub channel: Option<Cow<'a, str>>,
    #[serde(default)]
    pub ts: Option<Int>,
    #[serde(borrow, default)]
    pub tick: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub status: Option<Cow<'a, str>>,
}

/// Trade tick: `{"id":maxId,"ts":MS,"data":[...]}`, newest first.
#[derive(Debug, Deserialize)]
pub struct TradeTick<'a> {
    #[serde(borrow)]
    pub data: Vec<WireTrade<'a>>,
    #[serde(default)]
    pub ts: Option<Int>,
}

/// `{"id":28187162,"price":1.7439,"amount":472.07373,"side":"BUY","vol":270.70,"ts":1621412844000,"ds":"..."}`
/// `vol` is the base quantity, `amount` the quote total; `ds` (local date) is ignored.
#[derive(Debug, Deserialize)]
pub struct WireTrade<'a> {
    #[serde(default)]
    pub id: Option<Int>,
    #[serde(borrow)]
    pub side: Cow<'a, str>,
    pub price: Num,
    pub vol: Num,
    #[serde(default)]
    pub amount: Option<Num>,
    #[serde(default)]
    pub ts: Option<Int>,
}

/// Kline bar: `{"id":bar start in SECONDS,"open","close","high","low","vol","amount"}`.
#[derive(Debug, Deserialize)]
pub struct WireKline {
    pub id: Int,
    pub open: Num,
    pub close: Num,
    pub high: Num,
    pub low: Num,
    pub vol: Num,
    #[serde(default)]
    pub amount: Option<Num>,
}

/// Full book: `{"asks":[[p,q],...],"buys":[[p,q],...]}` (REST says `bids`).
#[derive(Debug, Deserialize)]
pub struct WireBook {
    #[serde(default)]
    pub asks: Vec<(Num, Num)>,
    #[serde(default, alias = "bids")]
    pub buys: Vec<(Num, Num)>,
}

/// Incremental book change (seed 001): `{"side":"asks"|"buys","price":P,"volume":V}`.
#[derive(Debug, Deserialize)]
pub struct WireBookChange<'a> {
    #[serde(borrow)]
    pub side: Cow<'a, str>,
    pub price: Num,
    pub volume: Num,
}

/// Ticker: `{amount, vol, open, close, high, low, rose, ts?, lower_frame?}`.
#[derive(Debug, Deserialize)]
pub struct WireTicker {
    #[serde(default)]
    pub amount: Option<Num>,
    #[serde(default)]
    pub vol: Option<Num>,
    #[serde(default)]
    pub open: Option<Num>,
    #[serde(default)]
    pub close: Option<Num>,
    #[serde(default)]
    pub high: Option<Num>,
    #[serde(default)]
    pub low: Option<Num>,
    #[serde(default)]
    pub rose: Option<Num>,
    #[serde(default)]
    pub ts: Option<Int>,
}

/// REST envelope `{"code":"0","msg":"suc","data":...}`; `code` is a string or a number.
#[derive(Debug, Deserialize)]
pub struct RestEnvelope<'a> {
    pub code: Int,
    #[serde(borrow, default)]
    pub msg: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub data: Option<&'a RawValue>,
}

/// `/v1/symbols` item.
#[derive(Debug, Deserialize, PartialEq)]
pub struct RestSymbol {
    pub symbol: String,
    #[serde(default)]
    pub base_coin: Option<String>,
    #[serde(default)]
    pub count_coin: Option<String>,
    #[serde(default)]
    pub price_precision: Option<Int>,
    #[serde(default)]
    pub amount_precision: Option<Int>,
}

/// `/v1/trades` item: here `amount` is the BASE quantity and `type` the side.
#[derive(Debug, Deserialize)]
pub struct RestTrade<'a> {
    pub id: Int,
    pub price: Num,
    pub amount: Num,
    #[serde(borrow, rename = "type")]
    pub side: Cow<'a, str>,
    #[serde(default)]
    pub ctime: Option<Int>,
}

/// `/v1/klines` row: `[ts_sec, open, high, low, close, volume]`.
#[derive(Debug, Deserialize)]
pub struct RestKline(pub Int, pub Num, pub Num, pub Num, pub Num, pub Num);

/// `/v1/depth` data: `{"tick":{"asks":[...],"bids":[...],"time":...}}`.
#[derive(Debug, Deserialize)]
pub struct RestDepth {
    pub tick: WireBook,
}

/// Venue timestamps are milliseconds on most servers, whole seconds on some.
pub fn to_ms(t: i64) -> i64 {
    // unsigned_abs: `abs` overflows on i64::MIN, which a hostile venue can send
    if t.unsigned_abs() < 100_000_000_000 {
        t * 1000
    } else {
        t
    }
}
