//! The simulator's v1 personality: the kline-api websocket (gzip binary frames, server pings
//! with pong enforcement, sub/unsub/req, optional acks) and the `/v1/*` REST endpoints.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::Arc;

use axum::extract::{Query, State as AxState};
use axum::response::IntoResponse;
use axum::routing::get;
use rust_decimal::Decimal;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

use super::market::{Bar, SimTrade, merge_book};
use super::serve::Server;
use super::state::{Compression, DepthMode, Hostile, NumberStyle, SimConfig, State, Update, lock};
use crate::model::{BookSide, Side};
use crate::venue::cdc_v1::channel::{Channel, Stream};

/// The venue this personality speaks.
pub const VENUE: &str = crate::venue::cdc_v1::NAME;

/// v1's intervals with the lengths bars are built on (`1month` as 30 days: the simulator
/// keeps a fixed grid).
pub const INTERVALS: &[(&str, i64)] = &[
    ("1min", 60_000),
    ("5min", 300_000),
    ("15min", 900_000),
    ("30min", 1_800_000),
    ("60min", 3_600_000),
    ("1day", 86_400_000),
    ("1week", 604_800_000),
    ("1month", 2_592_000_000),
];

/// The simulator speaking v1.
pub const PERSONALITY: super::serve::Personality = super::serve::Personality {
    venue: VENUE,
    intervals: INTERVALS,
    demo_record: "klines = [\"1min\", \"5min\"]\ndepth = \"step0\"",
    demo_symbols: &["btcusdt", "ethusdt", "hpxusdt"],
    book_levels: super::market::BOOK_LEVELS,
    id_jumps: false,
    ws_path: "/kline-api/ws",
    rest_path: "",
    serve,
};

/// Serves this personality's websocket and REST APIs on the listeners, as tasks of the
/// simulator.
pub fn serve(server: Server, ws: TcpListener, rest: TcpListener) {
    let server = Arc::new(server);
    let tasks = server.tasks.clone();
    tasks.spawn(serve_ws(server.clone(), ws));
    tasks.spawn(serve_rest(server, rest));
}

pub async fn serve_ws(server: Arc<Server>, listener: TcpListener) {
    let s = server.clone();
    super::serve::accept(&server, listener, move |tcp| connection(s.clone(), tcp)).await
}

/// A channel subscription of one connection.
struct Sub {
    /// The channel's name, spelled once at subscription.
    name: String,
    levels: usize,
    /// Depth updates up to this market step are already in the snapshot sent on subscribe.
    snapshot_seq: u64,
}

struct Conn {
    /// Where the market sends the steps of the symbols subscribed here.
    tap: super::state::Tap,
    server: Arc<Server>,
    subs: HashMap<Channel, Sub>,
    next_ping: tokio::time::Instant,
    /// The last ping's value while unanswered, and pings missed in a row.
    outstanding: Option<String>,
    missed: u32,
}

async fn connection(server: Arc<Server>, tcp: super::serve::Socket) -> anyhow::Result<()> {
    let ws = tokio_tungstenite::accept_async(tcp).await?;
    lock(&server.state).connections_total += 1;
    let (tap, steps) = super::state::Tap::new(&server.state);
    let mut conn = Conn {
        tap,
        server: server.clone(),
        subs: HashMap::new(),
        next_ping: tokio::time::Instant::now() + server.config.ping_interval,
        outstanding: None,
        missed: 0,
    };
    super::serve::drive(&server, ws, &mut conn, steps).await
}

impl super::serve::Handler for Conn {
    fn next_timer(&self) -> Option<tokio::time::Instant> {
        Some(self.next_ping)
    }

    fn on_timer(&mut self, muted: bool) -> anyhow::Result<super::serve::Reply> {
        let cfg = &self.server.config;
        self.next_ping = tokio::time::Instant::now() + cfg.ping_interval;
        if muted {
            return Ok(super::serve::Reply::Send(Vec::new()));
        }
        if self.outstanding.is_some() {
            self.missed += 1;
            if self.missed >= cfg.max_missed_pongs {
                // hang up without a close frame, as real servers do
                anyhow::bail!("client missed {} pongs", self.missed);
            }
        }
        let n = lock(&self.server.state).now_ms().to_string();
        let ping = self.frame(&format!("{{\"ping\":{n}}}"))?;
        self.outstanding = Some(n);
        Ok(super::serve::Reply::Send(vec![ping]))
    }

    fn on_text(&mut self, text: &str) -> anyhow::Result<Vec<Message>> {
        if let Some(v) = pong_value(text) {
            if self.outstanding.as_deref() == Some(v.as_str()) {
                self.outstanding = None;
                self.missed = 0;
            }
            return Ok(Vec::new());
        }
        self.client_request(text)
    }

    fn on_update(&mut self, u: &Update) -> anyhow::Result<Vec<(Message, Vec<i64>)>> {
        self.frames_for(u)
    }

    fn hostile_frame(&self, h: Hostile) -> anyhow::Result<Message> {
        hostile_frame(h)
    }

    fn subscriptions(&self) -> usize {
        self.subs.len()
    }
}

fn pong_value(t: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(t).ok()?;
    let p = v.get("pong")?;
    Some(match p {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

impl Conn {
    fn cfg(&self) -> &SimConfig {
        &self.server.config
    }

    /// A server frame in the configured compression.
    fn frame(&self, json: &str) -> anyhow::Result<Message> {
        Ok(match self.cfg().compression {
            Compression::None => Message::text(json.to_string()),
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(
                    Vec::with_capacity(json.len() / 2),
                    flate2::Compression::fast(),
                );
                e.write_all(json.as_bytes())?;
                Message::binary(e.finish()?)
            }
            Compression::Zlib => {
                let mut e = flate2::write::ZlibEncoder::new(
                    Vec::with_capacity(json.len() / 2),
                    flate2::Compression::fast(),
                );
                e.write_all(json.as_bytes())?;
                Message::binary(e.finish()?)
            }
        })
    }

    fn fmt(&self) -> Fmt {
        Fmt {
            style: self.cfg().numbers,
            pad: self.cfg().pad_decimals,
            upper: self.cfg().upper_sides,
        }
    }

    fn client_request(&mut self, text: &str) -> anyhow::Result<Vec<Message>> {
        let v: serde_json::Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(_) => return Ok(vec![]), // real servers ignore garbage
        };
        let event = v.get("event").and_then(|e| e.as_str()).unwrap_or("");
        let params = v.get("params").cloned().unwrap_or_default();
        let channel_name = params
            .get("channel")
            .and_then(|c| c.as_str())
            .unwrap_or("")
            .to_string();
        let cb_id = params
            .get("cb_id")
            .and_then(|c| c.as_str())
            .unwrap_or("")
            .to_string();
        let now = lock(&self.server.state).now_ms();
        let known = |c: &Channel| lock(&self.server.state).markets.contains_key(&c.symbol);
        match event {
            "sub" => {
                *lock(&self.server.state)
                    .sub_requests
                    .entry(channel_name.clone())
                    .or_default() += 1;
                let Some(ch) = Channel::parse(&channel_name).filter(known) else {
                    // no error frame for a bad channel: silence, or one empty book for depth
                    if channel_name.contains("_depth_") {
                        let f = format!(
                            "{{\"event_rep\":\"\",\"channel\":{},\"data\":null,\"tick\":{{\"asks\":[],\"buys\":[]}},\"ts\":{now},\"status\":\"ok\"}}",
                            json_str(&channel_name)
                        );
                        return Ok(vec![self.frame(&f)?]);
                    }
                    return Ok(vec![]);
                };
                // before the book's snapshot below: no step after it is missed
                self.tap.watch(&mut lock(&self.server.state), &ch.symbol);
                let levels = params
                    .get("asks")
                    .and_then(|a| a.as_u64())
                    .unwrap_or(150)
                    .min(150) as usize;
                let mut out = Vec::new();
                if self.cfg().acks {
                    out.push(self.frame(&format!(
                        "{{\"channel\":{},\"cb_id\":{},\"event_rep\":\"subed\",\"status\":\"ok\",\"ts\":{now}}}",
                        json_str(&channel_name),
                        json_str(&cb_id)
                    ))?);
                }
                let mut snapshot_seq = 0;
                if let Stream::Depth(step) = ch.stream {
                    // the current book right away, ordered against updates by the step number
                    let st = lock(&self.server.state);
                    snapshot_seq = st.seq;
                    if let Some(m) = st.markets.get(&ch.symbol) {
                        let book = merge_book(&m.book(), m.spec.price_scale, step, levels);
                        let f = book_frame(&self.fmt(), &channel_name, now, &book);
                        drop(st);
                        out.push(self.frame(&f)?);
                    }
                }
                let name = ch.name();
                if self
                    .subs
                    .insert(
                        ch,
                        Sub {
                            name,
                            levels,
                            snapshot_seq,
                        },
                    )
                    .is_none()
                {
                    lock(&self.server.state).subscriptions += 1;
                }
                Ok(out)
            }
            "unsub" => {
                if let Some(ch) = Channel::parse(&channel_name)
                    && self.subs.remove(&ch).is_some()
                {
                    lock(&self.server.state).subscriptions -= 1;
                }
                Ok(vec![])
            }
            "req" => self.request(&channel_name, &cb_id, &params, now),
            _ => {
                // some servers echo unknown events back uncompressed
                Ok(vec![Message::text(text.to_string())])
            }
        }
    }

    fn request(
        &self,
        name: &str,
        cb_id: &str,
        params: &serde_json::Value,
        now: i64,
    ) -> anyhow::Result<Vec<Message>> {
        let Some(ch) = Channel::parse(name) else {
            return Ok(vec![]);
        };
        let st = lock(&self.server.state);
        let Some(m) = st.markets.get(&ch.symbol) else {
            return Ok(vec![]);
        };
        let f = self.fmt();
        let data = match &ch.stream {
            Stream::Kline(iv) => {
                let since_ms = params
                    .get("since")
                    .and_then(|s| {
                        s.as_str()
                            .and_then(|s| s.parse::<i64>().ok())
                            .or_else(|| s.as_i64())
                    })
                    .map(|s| s * 1000);
                let keep = self.cfg().history_kline_limit.unwrap_or(usize::MAX);
                let page = self.cfg().history_page.max(1);
                let bars: Vec<&Bar> = m
                    .bars
                    .get(iv.as_str())
                    .map(|s| match since_ms {
                        // the server forgets bars older than its history
                        Some(t) => s
                            .values()
                            .rev()
                            .take(keep)
                            .collect::<Vec<_>>()
                            .into_iter()
                            .rev()
                            .filter(|b| b.open_time_ms >= t)
                            .take(page)
                            .collect(),
                        None => s
                            .values()
                            .rev()
                            .take(300)
                            .collect::<Vec<_>>()
                            .into_iter()
                            .rev()
                            .collect(),
                    })
                    .unwrap_or_default();
                let items: Vec<String> = bars.iter().map(|b| kline_item(&f, b)).collect();
                items.join(",")
            }
            Stream::Trades => {
                let top = params
                    .get("top")
                    .and_then(|t| t.as_u64())
                    .unwrap_or(200)
                    .min(200) as usize;
                let items: Vec<String> = m
                    .trades
                    .iter()
                    .rev()
                    .take(top)
                    .map(|t| trade_item(&f, t))
                    .collect();
                items.join(",")
            }
            _ => return Ok(vec![]),
        };
        let json = format!(
            "{{\"event_rep\":\"rep\",\"channel\":{},\"cb_id\":{},\"data\":[{data}],\"tick\":null,\"ts\":{now},\"status\":\"ok\"}}",
            json_str(name),
            json_str(cb_id)
        );
        drop(st);
        Ok(vec![self.frame(&json)?])
    }

    /// Frames this connection gets for one market step, with the trade ids each carries.
    fn frames_for(&self, u: &Update) -> anyhow::Result<Vec<(Message, Vec<i64>)>> {
        let mut out = Vec::new();
        let f = self.fmt();
        let muted = lock(&self.server.state).muted_channel.clone();
        let withhold = u.withhold_trades;
        for (ch, sub) in &self.subs {
            if *ch.symbol != *u.symbol {
                continue;
            }
            let name = &sub.name;
            if muted.as_deref() == Some(name.as_str()) {
                continue;
            }
            let envelope = |tick: String| {
                format!(
                    "{{\"event_rep\":\"\",\"channel\":{},\"data\":null,\"tick\":{tick},\"ts\":{},\"status\":\"ok\"}}",
                    json_str(name),
                    u.time_ms
                )
            };
            match &ch.stream {
                Stream::Trades if !u.out.trades.is_empty() && !withhold => {
                    let items: Vec<String> = u
                        .out
                        .trades
                        .iter()
                        .rev()
                        .map(|t| trade_item(&f, t))
                        .collect();
                    let max_id = u.out.trades.iter().map(|t| t.id).max().unwrap_or(0);
                    let tick = format!(
                        "{{\"id\":{max_id},\"ts\":{},\"data\":[{}]}}",
                        u.time_ms,
                        items.join(",")
                    );
                    out.push((
                        self.frame(&envelope(tick))?,
                        u.out.trades.iter().map(|t| t.id).collect(),
                    ));
                }
                Stream::Kline(iv) => {
                    for (_, bar) in u.out.bars.iter().filter(|(n, _)| *n == iv.as_str()) {
                        out.push((self.frame(&envelope(kline_item(&f, bar)))?, vec![]));
                    }
                }
                Stream::Depth(step)
                    if u.seq > sub.snapshot_seq && !u.out.book_changes.is_empty() =>
                {
                    if self.cfg().depth_mode == DepthMode::Incremental && *step == 0 {
                        for (side, p, q) in &u.out.book_changes {
                            let side = match side {
                                BookSide::Bid => "buys",
                                BookSide::Ask => "asks",
                            };
                            let tick = format!(
                                "{{\"side\":\"{side}\",\"price\":{},\"volume\":{}}}",
                                f.price(p),
                                f.qty(q)
                            );
                            out.push((self.frame(&envelope(tick))?, vec![]));
                        }
                    } else {
                        let scale = lock(&self.server.state)
                            .markets
                            .get(&*u.symbol)
                            .map(|m| m.spec.price_scale)
                            .unwrap_or(0);
                        let book = merge_book(&u.book, scale, *step, sub.levels);
                        out.push((self.frame(&book_frame(&f, name, u.time_ms, &book))?, vec![]));
                    }
                }
                Stream::Ticker => {
                    if let Some(t) = &u.ticker {
                        let tick = format!(
                            "{{\"amount\":{},\"vol\":{},\"open\":{},\"close\":{},\"high\":{},\"low\":{},\"rose\":{}}}",
                            f.qty(&t.amount),
                            f.qty(&t.vol),
                            f.price(&t.open),
                            f.price(&t.close),
                            f.price(&t.high),
                            f.price(&t.low),
                            f.price(&t.rose)
                        );
                        out.push((self.frame(&envelope(tick))?, vec![]));
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }
}

fn gzip(data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data)?;
    Ok(e.finish()?)
}

fn hostile_frame(h: Hostile) -> anyhow::Result<Message> {
    Ok(match h {
        Hostile::CorruptGzip => {
            let mut z = gzip(br#"{"channel":"market_btcusdt_trade_ticker","tick":{"data":[]}}"#)?;
            let mid = z.len() / 2;
            for b in &mut z[12..mid] {
                *b ^= 0x5a;
            }
            Message::binary(z)
        }
        Hostile::Bomb(n) => Message::binary(gzip(&vec![b' '; n])?),
        Hostile::MalformedJson => Message::binary(gzip(
            br#"{"channel":"market_btcusdt_trade_ticker","tick":{"data":[{"id":1,"#,
        )?),
        Hostile::Oversized(n) => Message::binary(vec![b'x'; n]),
        Hostile::UnknownEvent => {
            Message::text(r#"{"event":"nope","params":{"channel":"market_btcusdt_ticker"}}"#)
        }
        Hostile::Invalid(v) => Message::binary(gzip(bad_value_frame(v).as_bytes())?),
        Hostile::CloseWithNul => {
            Message::Close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Away,
                reason: "maintenance\0\u{7}\u{1b}[31m restart".into(),
            }))
        }
    })
}

/// A btcusdt frame that is well-formed but carries one invalid value; its trade ids are far
/// from the simulated market's, so none can be mistaken for a ledger trade.
fn bad_value_frame(v: super::state::BadValue) -> String {
    use super::state::BadValue::*;
    let now = crate::model::now_ms();
    let trade = |id: i64, price: &str, vol: &str, ts: &str| {
        format!(
            r#"{{"channel":"market_btcusdt_trade_ticker","ts":{now},"tick":{{"ts":{now},"data":[{{"id":{id},"side":"BUY","price":"{price}","vol":"{vol}","amount":"1","ts":{ts}}}]}}}}"#
        )
    };
    let bar = |id: &str, high: &str, low: &str| {
        format!(
            r#"{{"channel":"market_btcusdt_kline_1min","ts":{now},"tick":{{"id":{id},"open":"100","close":"100","high":"{high}","low":"{low}","vol":"1","amount":"100"}}}}"#
        )
    };
    let huge = format!("1.{}", "7".repeat(60));
    match v {
        TradePriceZero => trade(9_000_000_001, "0", "1", &now.to_string()),
        TradeQtyZero => trade(9_000_000_002, "100", "0", &now.to_string()),
        TradeQtyNegative => trade(9_000_000_003, "100", "-1.5", &now.to_string()),
        TradeTimeZero => trade(9_000_000_004, "100", "1", "0"),
        TradeTimeNegative => trade(9_000_000_005, "100", "1", "-1"),
        TradeTimeMax => trade(9_000_000_006, "100", "1", &i64::MAX.to_string()),
        TradeHugeDecimal => trade(9_000_000_007, &huge, "1", &now.to_string()),
        KlineOpenTimeZero => bar("0", "101", "99"),
        KlineOpenTimeNegative => bar("-1", "101", "99"),
        KlineHighBelowLow => bar(&(now / 60_000 * 60).to_string(), "99", "101"),
        KlineHighZero => bar(&(now / 60_000 * 60).to_string(), "0", "99"),
    }
}

/// Number rendering of one server personality.
pub struct Fmt {
    pub style: NumberStyle,
    pub pad: bool,
    pub upper: bool,
}

impl Fmt {
    fn raw(&self, d: &Decimal, pad: bool) -> String {
        let mut s = d.to_string();
        if pad {
            let decimals = s.split_once('.').map(|(_, f)| f.len()).unwrap_or_else(|| {
                s.push('.');
                0
            });
            for _ in decimals..16 {
                s.push('0');
            }
        }
        s
    }

    pub fn price(&self, d: &Decimal) -> String {
        let s = self.raw(d, false);
        match self.style {
            NumberStyle::Numbers => s,
            NumberStyle::Strings | NumberStyle::Mixed => format!("\"{s}\""),
        }
    }

    pub fn qty(&self, d: &Decimal) -> String {
        let s = self.raw(d, self.pad);
        match self.style {
            NumberStyle::Numbers | NumberStyle::Mixed => s,
            NumberStyle::Strings => format!("\"{s}\""),
        }
    }

    pub fn side(&self, s: Side) -> &'static str {
        match (s, self.upper) {
            (Side::Buy, true) => "BUY",
            (Side::Sell, true) => "SELL",
            (Side::Buy, false) => "buy",
            (Side::Sell, false) => "sell",
        }
    }
}

fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

fn trade_item(f: &Fmt, t: &SimTrade) -> String {
    format!(
        "{{\"id\":{},\"side\":\"{}\",\"price\":{},\"vol\":{},\"amount\":{},\"ts\":{},\"ds\":\"\"}}",
        t.id,
        f.side(t.side),
        f.price(&t.price),
        f.qty(&t.qty),
        f.qty(&t.amount),
        t.time_ms
    )
}

fn kline_item(f: &Fmt, b: &Bar) -> String {
    format!(
        "{{\"id\":{},\"open\":{},\"close\":{},\"high\":{},\"low\":{},\"vol\":{},\"amount\":{}}}",
        b.open_time_ms / 1000,
        f.price(&b.open),
        f.price(&b.close),
        f.price(&b.high),
        f.price(&b.low),
        f.qty(&b.volume),
        f.qty(&b.amount)
    )
}

fn levels_json(f: &Fmt, levels: &[(Decimal, Decimal)]) -> String {
    let mut s = String::from("[");
    for (i, (p, q)) in levels.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "[{},{}]", f.price(p), f.qty(q));
    }
    s.push(']');
    s
}

fn book_frame(f: &Fmt, channel: &str, ts: i64, (bids, asks): &super::state::Book) -> String {
    format!(
        "{{\"event_rep\":\"\",\"channel\":{},\"data\":null,\"tick\":{{\"asks\":{},\"buys\":{}}},\"ts\":{ts},\"status\":\"ok\"}}",
        json_str(channel),
        levels_json(f, asks),
        levels_json(f, bids)
    )
}

// ---------------------------------------------------------------- REST

pub async fn serve_rest(server: Arc<Server>, listener: TcpListener) {
    let app = axum::Router::new()
        .route("/v1/symbols", get(symbols))
        .route("/v1/trades", get(trades))
        .route("/v1/klines", get(klines))
        .route("/v1/depth", get(depth))
        .route("/v1/ticker", get(ticker))
        .with_state(server.clone());
    super::serve::serve_http(&server, listener, app).await
}

#[derive(serde::Deserialize)]
struct Params {
    symbol: Option<String>,
    period: Option<u32>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

impl Server {
    /// While the ledger's `rest_errors` switch is on, data endpoints answer the venue's
    /// error envelope (`code` != "0") with HTTP 200, as live servers do when busy.
    fn rest_error(&self) -> bool {
        lock(&self.state).rest_errors
    }
}

fn ok_body(data: String) -> axum::response::Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        ok_body_text(data),
    )
        .into_response()
}

fn err_body(code: &str, msg: &str) -> axum::response::Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        format!(
            "{{\"code\":\"{code}\",\"msg\":{},\"data\":null}}",
            json_str(msg)
        ),
    )
        .into_response()
}

fn rest_fmt(s: &Server) -> Fmt {
    Fmt {
        style: s.config.numbers,
        pad: s.config.pad_decimals,
        upper: s.config.upper_sides,
    }
}

/// Answers with `body` for the market named by `?symbol=`, or the venue's not-found error.
fn market_reply(
    s: &Server,
    p: &Params,
    body: impl FnOnce(&Fmt, &State, &super::market::Market) -> axum::response::Response,
) -> axum::response::Response {
    let f = rest_fmt(s);
    let st = lock(&s.state);
    match p.symbol.as_deref().and_then(|sym| st.markets.get(sym)) {
        Some(m) => body(&f, &st, m),
        None => err_body("10001", "symbol not found"),
    }
}

async fn symbols(AxState(s): AxState<Arc<Server>>) -> axum::response::Response {
    let st = lock(&s.state);
    let hostile = st.hostile_text;
    let items: Vec<String> = st
        .markets
        .values()
        .map(|m| {
            format!(
                "{{\"symbol\":{},\"count_coin\":{},\"amount_precision\":{},\"base_coin\":{},\"price_precision\":{}}}",
                json_str(&m.spec.symbol),
                json_str(&m.spec.quote),
                m.spec.qty_scale,
                if hostile {
                    // NUL, a bell and an ANSI escape, JSON-escaped as a venue would send them
                    format!("\"{}\\u0000\\u0007\\u001b[0m\"", m.spec.base)
                } else {
                    json_str(&m.spec.base)
                },
                m.spec.price_scale
            )
        })
        .collect();
    let body = ok_body_text(format!("[{}]", items.join(",")));
    if !hostile {
        return (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
    }
    // bytes that are not UTF-8 inside the quote currencies, as a broken proxy may send
    let mut bytes = body.into_bytes();
    let mut at = 0;
    while let Some(i) = find(&bytes[at..], br#""count_coin":""#) {
        let pos = at + i + br#""count_coin":""#.len();
        bytes.splice(pos..pos, [0xff, 0xfe, b'x']);
        at = pos + 3;
    }
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        bytes,
    )
        .into_response()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn ok_body_text(data: String) -> String {
    format!("{{\"code\":\"0\",\"msg\":\"suc\",\"data\":{data}}}")
}

async fn trades(
    AxState(s): AxState<Arc<Server>>,
    Query(p): Query<Params>,
) -> axum::response::Response {
    let n = s
        .trade_requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if n < s.config.rest_throttle_first || lock(&s.state).rest_throttled {
        // what throttling proxies send: HTML, not the JSON envelope
        return (
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            [
                (axum::http::header::RETRY_AFTER, "1"),
                (axum::http::header::CONTENT_TYPE, "text/html"),
            ],
            "<html><body>429 Too Many Requests</body></html>",
        )
            .into_response();
    }
    if s.rest_error() {
        return err_body("10050", "system busy");
    }
    market_reply(&s, &p, |f, _, m| {
        let items: Vec<String> = m
            .trades
            .iter()
            .rev()
            .take(200)
            .map(|t| {
                format!(
                    "{{\"amount\":{},\"price\":{},\"ctime\":{},\"id\":{},\"type\":\"{}\"}}",
                    f.qty(&t.qty),
                    f.price(&t.price),
                    t.time_ms,
                    t.id,
                    f.side(t.side).to_ascii_lowercase()
                )
            })
            .collect();
        ok_body(format!("[{}]", items.join(",")))
    })
}

async fn klines(
    AxState(s): AxState<Arc<Server>>,
    Query(p): Query<Params>,
) -> axum::response::Response {
    if s.rest_error() {
        return err_body("10050", "system busy");
    }
    market_reply(&s, &p, |f, _, m| {
        let Some((name, _)) = p.period.and_then(|min| {
            INTERVALS
                .iter()
                .find(|(n, _)| crate::venue::cdc_v1::rest::kline_period_minutes(n) == Some(min))
        }) else {
            return err_body("10002", "invalid period");
        };
        let bars: Vec<String> = m
            .bars
            .get(name)
            .map(|series| {
                let v: Vec<&Bar> = series
                    .values()
                    .rev()
                    .take(s.config.rest_kline_limit)
                    .collect();
                v.into_iter()
                    .rev()
                    .map(|b| {
                        format!(
                            "[{},{},{},{},{},{}]",
                            b.open_time_ms / 1000,
                            f.price(&b.open),
                            f.price(&b.high),
                            f.price(&b.low),
                            f.price(&b.close),
                            f.qty(&b.volume)
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        ok_body(format!("[{}]", bars.join(",")))
    })
}

async fn depth(
    AxState(s): AxState<Arc<Server>>,
    Query(p): Query<Params>,
) -> axum::response::Response {
    market_reply(&s, &p, |f, st, m| {
        let step = match p.kind.as_deref() {
            Some("step0") | None => 0,
            Some("step1") => 1,
            Some("step2") => 2,
            Some(_) => return err_body("10002", "invalid type"),
        };
        let (bids, asks) = merge_book(&m.book(), m.spec.price_scale, step, 150);
        ok_body(format!(
            "{{\"tick\":{{\"asks\":{},\"bids\":{},\"time\":{}}}}}",
            levels_json(f, &asks),
            levels_json(f, &bids),
            st.now_ms()
        ))
    })
}

async fn ticker(
    AxState(s): AxState<Arc<Server>>,
    Query(p): Query<Params>,
) -> axum::response::Response {
    market_reply(&s, &p, |f, st, m| {
        let (bids, asks) = m.book();
        let t = m.ticker.clone();
        let g = |v: Option<&Decimal>| v.map(|d| f.price(d)).unwrap_or_else(|| "null".into());
        ok_body(format!(
            "{{\"high\":{},\"vol\":{},\"last\":{},\"low\":{},\"buy\":{},\"sell\":{},\"rose\":{},\"time\":{}}}",
            g(t.as_ref().map(|t| &t.high)),
            t.as_ref()
                .map(|t| f.qty(&t.vol))
                .unwrap_or_else(|| "0".into()),
            g(t.as_ref().map(|t| &t.close)),
            g(t.as_ref().map(|t| &t.low)),
            g(bids.first().map(|l| &l.0)),
            g(asks.first().map(|l| &l.0)),
            g(t.as_ref().map(|t| &t.rose)),
            st.now_ms()
        ))
    })
}
