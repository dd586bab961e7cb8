//! REST replies of the v1 API (`/v1/symbols`, `/v1/trades`, `/v1/klines`, `/v1/depth`).

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use super::vocab::NAME;
use super::wire::to_ms;
use super::wire::{Int, RestDepth, RestEnvelope, RestKline, RestSymbol, RestTrade};
use crate::model::{Kline, Level, Side, Source, Trade};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestError {
    #[error("malformed REST body: {0}")]
    Malformed(String),
    #[error("venue error code {code}: {msg}")]
    Venue { code: i64, msg: String },
}

impl From<RestError> for crate::venue::FetchError {
    fn from(e: RestError) -> Self {
        match e {
            RestError::Malformed(m) => crate::venue::FetchError::BadBody(m),
            RestError::Venue { code, msg } => crate::venue::FetchError::Refused {
                code: code.to_string(),
                message: msg,
                // v1 documents no error codes (servers answer "system busy" and the like):
                // a refusal may pass, so the hole is asked about again
                retryable: true,
            },
        }
    }
}

/// Period parameter of `/v1/klines` for a configured interval name.
pub fn kline_period_minutes(interval: &str) -> Option<u32> {
    Some(match interval {
        "1min" => 1,
        "5min" => 5,
        "15min" => 15,
        "30min" => 30,
        "60min" => 60,
        "1day" => 1440,
        "1week" => 10080,
        "1month" => 43200,
        _ => return None,
    })
}

/// The `data` of a successful envelope (`code` "0" or 0).
pub fn envelope_data(body: &str) -> Result<&RawValue, RestError> {
    let env: RestEnvelope =
        serde_json::from_str(body).map_err(|e| RestError::Malformed(e.to_string()))?;
    if env.code != Int(0) {
        return Err(RestError::Venue {
            code: env.code.0,
            msg: env.msg.map(|m| m.into_owned()).unwrap_or_default(),
        });
    }
    env.data
        .filter(|d| d.get() != "null")
        .ok_or_else(|| RestError::Malformed("no data".into()))
}

fn data<T: DeserializeOwned>(body: &str) -> Result<T, RestError> {
    let d = envelope_data(body)?;
    serde_json::from_str(d.get()).map_err(|e| RestError::Malformed(e.to_string()))
}

pub fn parse_symbols(body: &str) -> Result<Vec<RestSymbol>, RestError> {
    data(body)
}

/// `/v1/trades`, oldest first. A trade without `ctime` gets the receive time.
pub fn parse_trades(
    body: &str,
    symbol: &Arc<str>,
    recv_time_us: i64,
) -> Result<Vec<Trade>, RestError> {
    let d = envelope_data(body)?;
    let items: Vec<RestTrade> =
        serde_json::from_str(d.get()).map_err(|e| RestError::Malformed(e.to_string()))?;
    let mut out = Vec::with_capacity(items.len());
    for t in items.into_iter().rev() {
        let side = Side::parse(&t.side)
            .ok_or_else(|| RestError::Malformed(format!("trade side {:?}", t.side)))?;
        out.push(Trade {
            venue: NAME,
            symbol: symbol.clone(),
            trade_id: t.id.0,
            side,
            price: t.price.0,
            qty: t.amount.0,
            quote_qty: None,
            event_time_ms: t.ctime.map(|c| to_ms(c.0)).unwrap_or(recv_time_us / 1000),
            recv_time_us,
            source: Source::Rest,
        });
    }
    out.sort_by_key(|t| t.trade_id);
    Ok(out)
}

/// `/v1/klines`, oldest first; every bar but the newest is closed.
pub fn parse_klines(
    body: &str,
    symbol: &Arc<str>,
    interval: &Arc<str>,
    recv_time_us: i64,
) -> Result<Vec<Kline>, RestError> {
    let mut rows: Vec<RestKline> = data(body)?;
    rows.sort_by_key(|r| r.0.0);
    let n = rows.len();
    Ok(rows
        .into_iter()
        .enumerate()
        .map(|(i, RestKline(t, o, h, l, c, v))| Kline {
            venue: NAME,
            symbol: symbol.clone(),
            interval: interval.clone(),
            open_time_ms: to_ms(t.0),
            open: o.0,
            high: h.0,
            low: l.0,
            close: c.0,
            volume: v.0,
            quote_volume: None,
            closed: i + 1 < n,
            event_time_ms: recv_time_us / 1000,
            recv_time_us,
            source: Source::Rest,
        })
        .collect())
}

/// `/v1/depth`: (bids, asks), best first.
pub fn parse_depth(body: &str) -> Result<(Vec<Level>, Vec<Level>), RestError> {
    let d: RestDepth = data(body)?;
    let levels = |v: Vec<(super::wire::Num, super::wire::Num)>| {
        v.into_iter().map(|(p, q)| (p.0, q.0)).collect()
    };
    Ok((levels(d.tick.buys), levels(d.tick.asks)))
}

/// `/v1/ticker?symbol=S`: `{high, vol, last, low, buy, sell, rose, time}`.
pub fn parse_ticker(
    body: &str,
    symbol: &Arc<str>,
    recv_time_us: i64,
) -> Result<crate::model::Ticker, RestError> {
    #[derive(serde::Deserialize)]
    struct T {
        #[serde(default)]
        high: Option<super::wire::Num>,
        #[serde(default)]
        low: Option<super::wire::Num>,
        #[serde(default)]
        last: Option<super::wire::Num>,
        #[serde(default)]
        vol: Option<super::wire::Num>,
        #[serde(default)]
        rose: Option<super::wire::Num>,
        #[serde(default)]
        time: Option<Int>,
    }
    let t: T = data(body)?;
    let d = |n: Option<super::wire::Num>| n.map(|n| n.0);
    Ok(crate::model::Ticker {
        venue: NAME,
        symbol: symbol.clone(),
        event_time_ms: t.time.map(|x| to_ms(x.0)).unwrap_or(recv_time_us / 1000),
        recv_time_us,
        open: None,
        high: d(t.high),
        low: d(t.low),
        close: d(t.last),
        volume: d(t.vol),
        quote_volume: None,
        change: d(t.rose),
        bid: None,
        bid_qty: None,
        ask: None,
        ask_qty: None,
    })
}
