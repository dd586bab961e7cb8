//! Wire types of the v1 websocket and REST API, borrowed from the frame buffer.
//!
//! Numbers arrive as JSON numbers or strings depending on the server; both are read from their
//! raw text into an exact [`Dec`], never through `f64`.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::decimal::Dec;

/// A decimal sent as a JSON number or a string.
#[derive(Debug, Clone, PartialEq)]
pub struct Num(pub Dec);

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw: &RawValue = Deserialize::deserialize(d)?;
        let text = unquote(raw).map_err(serde::de::Error::custom)?;
        Dec::parse(&text).map(Num).map_err(serde::de::Error::custom)
    }
}

/// An integer (id, timestamp) sent as a JSON number or a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Int(pub i64);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw: &RawValue = Deserialize::deserialize(d)?;
        let text = unquote(raw).map_err(serde::de::Error::custom)?;
        parse_int(&text).map(Int).map_err(serde::de::Error::custom)
    }
}

/// Raw JSON text of a number or string value, without quotes.
pub fn unquote(raw: &RawValue) -> Result<Cow<'_, str>, String> {
    let t = raw.get();
    if t.starts_with('"') {
        serde_json::from_str::<Cow<'_, str>>(t).map_err(|e| e.to_string())
    } else if t.starts_with(['-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9']) {
        Ok(Cow::Borrowed(t))
    } else {
        Err(format!(
            "expected a number or a numeric string, got {}",
            short(t)
        ))
    }
}

/// An integer, also from `1.79e12` or `"123.0"` spellings, exactly.
pub fn parse_int(text: &str) -> Result<i64, String> {
    if let Ok(v) = text.parse::<i64>() {
        return Ok(v);
    }
    let d = Dec::parse(text).map_err(|e| e.to_string())?;
    if d.as_str().contains('.') {
        return Err(format!("expected an integer, got {}", short(text)));
    }
    d.as_str()
        .parse::<i64>()
        .map_err(|_| format!("integer out of range: {}", short(text)))
}

pub fn short(t: &str) -> String {
    t.chars().take(48).collect()
}

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
