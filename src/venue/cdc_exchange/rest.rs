//! REST replies of the exchange (`{rest_url}/public/<method>`): the envelope
//! `{id, method, code, result}` (`id` and `code` strings in the docs, numbers on the wire),
//! trades, candlesticks, books, tickers and instruments, in both dialects. Parsers only.

use std::borrow::Cow;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::Dialect;
use super::wire::{WireBar, WireLevel, WireTicker, WireTrade, levels};
use crate::model::{Kline, Level, Market, Source, Ticker, Trade};
use crate::venue::FetchError;
use crate::venue::numbers::{Int, Num, short};

/// Rate-limit codes: today's 42901, v2's 10006.
const RATE_LIMITED: [i64; 2] = [42901, 10006];

#[derive(Debug, Deserialize)]
struct Envelope<'a> {
    #[serde(default)]
    code: Option<Int>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
}

/// The `result` of a successful reply, or the venue's refusal, typed.
fn result<'a, T: Deserialize<'a>>(body: &'a str) -> Result<T, FetchError> {
    let env: Envelope<'a> = serde_json::from_str(body)
        .map_err(|e| FetchError::BadBody(format!("not the exchange's envelope: {e}")))?;
    let Some(code) = env.code else {
        // e.g. the gateway's 404 page: `{"timestamp":..,"status":404,...}`
        return Err(FetchError::BadBody(format!(
            "reply without code: {}",
            short(body)
        )));
    };
    if code.0 != 0 {
        if RATE_LIMITED.contains(&code.0) {
            return Err(FetchError::RateLimited { retry_after: None });
        }
        return Err(FetchError::Refused {
            code: code.0.to_string(),
            message: env.message.map(|m| m.into_owned()).unwrap_or_default(),
            // bad requests (unknown instrument, bad argument) will not pass on retry
            retryable: false,
        });
    }
    let r: &'a RawValue = env
        .result
        .ok_or_else(|| FetchError::BadBody("reply without result".into()))?;
    serde_json::from_str(r.get()).map_err(|e| FetchError::BadBody(e.to_string()))
}

#[derive(Debug, Deserialize)]
struct DataOf<T> {
    data: Vec<T>,
}

/// `public/get-trades`: oldest first (the order is undocumented: sorted by time and id
/// here), each id once.
pub fn parse_trades(
    dialect: Dialect,
    body: &str,
    symbol: &Arc<str>,
    recv_time_us: i64,
) -> Result<Vec<Trade>, FetchError> {
    let rows: DataOf<WireTrade<'_>> = result(body)?;
    let mut out = Vec::with_capacity(rows.data.len());
    for t in rows.data {
        out.push(
            t.into_trade(dialect.name(), symbol, recv_time_us, Source::Rest)
                .map_err(FetchError::BadBody)?,
        );
    }
    out.sort_by_key(|t| (t.event_time_ms, t.trade_id));
    out.dedup_by_key(|t| t.trade_id);
    Ok(out)
}

#[derive(Debug, Deserialize)]
struct Candles {
    #[serde(default)]
    interval: Option<String>,
    data: Vec<WireBar>,
}

/// `public/get-candlestick`: bars oldest first, all final but the newest (which may still
/// be forming). `interval` is the configured name (the docs' example answers a legacy `M5`).
pub fn parse_candles(
    dialect: Dialect,
    body: &str,
    symbol: &Arc<str>,
    interval: &Arc<str>,
    recv_time_us: i64,
) -> Result<Vec<Kline>, FetchError> {
    let c: Candles = result(body)?;
    let _ = c.interval;
    let mut bars = c.data;
    bars.sort_by_key(|b| b.t.0);
    bars.dedup_by_key(|b| b.t.0);
    let n = bars.len();
    Ok(bars
        .into_iter()
        .enumerate()
        .map(|(i, b)| Kline {
            venue: dialect.name(),
            symbol: symbol.clone(),
            interval: interval.clone(),
            open_time_ms: b.t.0,
            open: b.o.0,
            high: b.h.0,
            low: b.l.0,
            close: b.c.0,
            volume: b.v.0,
            quote_volume: None,
            closed: i + 1 < n,
            event_time_ms: b.ut.map_or(recv_time_us / 1000, |u| u.0),
            recv_time_us,
            source: Source::Rest,
        })
        .collect())
}

#[derive(Debug, Deserialize)]
struct RestBook {
    #[serde(default)]
    bids: Vec<WireLevel>,
    #[serde(default)]
    asks: Vec<WireLevel>,
    t: Int,
}

/// `public/get-book`: (bids, asks, exchange time), best first. It has no `u`: never chained
/// to socket deltas.
pub fn parse_book(body: &str) -> Result<(Vec<Level>, Vec<Level>, i64), FetchError> {
    let d: DataOf<RestBook> = result(body)?;
    let b = d
        .data
        .into_iter()
        .next()
        .ok_or_else(|| FetchError::BadBody("book reply without data".into()))?;
    Ok((levels(b.bids), levels(b.asks), b.t.0))
}

/// `public/get-tickers`: one per instrument.
pub fn parse_tickers(
    dialect: Dialect,
    body: &str,
    recv_time_us: i64,
) -> Result<Vec<Ticker>, FetchError> {
    let d: DataOf<WireTicker> = result(body)?;
    let v = |n: Option<Num>| n.map(|x| x.0);
    d.data
        .into_iter()
        .map(|t| {
            let symbol =
                t.i.as_deref()
                    .ok_or_else(|| FetchError::BadBody("ticker without instrument".into()))?;
            Ok(Ticker {
                venue: dialect.name(),
                symbol: Arc::from(symbol),
                event_time_ms: t.t.0,
                recv_time_us,
                open: None,
                high: v(t.h),
                low: v(t.l),
                close: v(t.a),
                volume: v(t.v),
                quote_volume: v(t.vv),
                change: v(t.c),
                bid: v(t.b),
                bid_qty: v(t.bs),
                ask: v(t.k),
                ask_qty: v(t.ks),
            })
        })
        .collect()
}

/// An instrument as either dialect lists it.
#[derive(Debug, Deserialize)]
struct Instrument {
    #[serde(alias = "instrument_name")]
    symbol: String,
    #[serde(default)]
    inst_type: Option<String>,
    #[serde(default, alias = "base_currency")]
    base_ccy: Option<String>,
    #[serde(default, alias = "quote_currency")]
    quote_ccy: Option<String>,
    #[serde(default, alias = "price_decimals")]
    quote_decimals: Option<Int>,
    #[serde(default)]
    quantity_decimals: Option<Int>,
    #[serde(default)]
    tradable: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct Instruments {
    /// Today's API.
    #[serde(default)]
    data: Option<Vec<Instrument>>,
    /// v2.
    #[serde(default)]
    instruments: Option<Vec<Instrument>>,
}

/// A listed instrument and its kind (`CCY_PAIR`, `PERPETUAL_SWAP`, `FUTURE`; v2 lists spot
/// pairs only), for `symbols = "all"` filters.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    pub market: Market,
    pub kind: Option<String>,
    pub tradable: bool,
}

/// `public/get-instruments`, either result shape.
pub fn parse_instruments(
    dialect: Dialect,
    body: &str,
    now_ms: i64,
) -> Result<Vec<Listed>, FetchError> {
    let r: Instruments = result(body)?;
    let list = r
        .data
        .or(r.instruments)
        .ok_or_else(|| FetchError::BadBody("instruments reply without data".into()))?;
    let precision = |d: Option<Int>| d.and_then(|x| i32::try_from(x.0).ok());
    Ok(list
        .into_iter()
        .map(|i| Listed {
            market: Market {
                venue: dialect.name(),
                symbol: Arc::from(i.symbol.as_str()),
                base: i.base_ccy,
                quote: i.quote_ccy,
                price_precision: precision(i.quote_decimals),
                qty_precision: precision(i.quantity_decimals),
                updated_at_ms: now_ms,
            },
            kind: i.inst_type,
            tradable: i.tradable.unwrap_or(true),
        })
        .collect())
}
