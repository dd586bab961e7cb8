//! The simulator's Exchange API personality (`cdc-exchange`, and `cdc-v2` for the seed's
//! dialect): JSON-RPC text frames, `public/heartbeat` with the close when unanswered, the
//! connect-second and per-second request rules, the per-connection channel cap, books
//! numbered by `u`/`pu` (with injected breaks and empty deltas on quiet books) or snapshot
//! books, and the `public/*` REST methods with a configurable trade history window.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State as AxState};
use axum::response::IntoResponse;
use axum::routing::get;
use rust_decimal::Decimal;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::market::{Bar, Market, SimTrade, merge_book};
use super::serve::{Personality, Server};
use super::state::{BadValue, Book, Hostile, State, Update, lock};
use crate::model::Side;
use crate::venue::cdc_exchange::{Channel, Dialect};

/// Timeframes the simulated markets build bars for (`1M` left out: the simulator keeps a
/// fixed grid, the venue calendar months).
const EXCHANGE_INTERVALS: &[(&str, i64)] = &[
    ("1m", 60_000),
    ("5m", 300_000),
    ("15m", 900_000),
    ("30m", 1_800_000),
    ("1h", 3_600_000),
    ("2h", 7_200_000),
    ("4h", 14_400_000),
    ("12h", 43_200_000),
    ("1D", 86_400_000),
];

const V2_INTERVALS: &[(&str, i64)] = &[
    ("1m", 60_000),
    ("5m", 300_000),
    ("15m", 900_000),
    ("30m", 1_800_000),
    ("1h", 3_600_000),
    ("4h", 14_400_000),
    ("6h", 21_600_000),
    ("12h", 43_200_000),
    ("1D", 86_400_000),
];

const DEMO_SYMBOLS: &[&str] = &["BTC_USD", "ETH_USD", "BTCUSD-PERP"];

/// Levels per side: more than depth 50, so levels enter and leave the window.
const BOOK_LEVELS: usize = 60;

/// Recent trades the reply to a trade subscription carries (the docs: the last 50).
const REPLAY_TRADES: usize = 50;

pub const EXCHANGE: Personality = Personality {
    venue: crate::venue::cdc_exchange::EXCHANGE,
    intervals: EXCHANGE_INTERVALS,
    demo_record: "klines = [\"1m\", \"5m\"]\ndepth = 50",
    demo_symbols: DEMO_SYMBOLS,
    book_levels: BOOK_LEVELS,
    id_jumps: true,
    ws_path: "/exchange/v1/market",
    rest_path: "/exchange/v1",
    serve: serve_exchange,
};

pub const V2: Personality = Personality {
    venue: crate::venue::cdc_exchange::V2,
    intervals: V2_INTERVALS,
    demo_record: "klines = [\"1m\", \"5m\"]\ndepth = 10",
    demo_symbols: DEMO_SYMBOLS,
    book_levels: BOOK_LEVELS,
    id_jumps: true,
    ws_path: "/v2/market",
    rest_path: "/v2",
    serve: serve_v2,
};

fn serve_exchange(server: Server, ws: TcpListener, rest: TcpListener) {
    serve(server, Dialect::Exchange, ws, rest);
}

fn serve_v2(server: Server, ws: TcpListener, rest: TcpListener) {
    serve(server, Dialect::V2, ws, rest);
}

struct Ex {
    server: Server,
    dialect: Dialect,
}

fn serve(server: Server, dialect: Dialect, ws: TcpListener, rest: TcpListener) {
    let ex = Arc::new(Ex { server, dialect });
    let tasks = ex.server.tasks.clone();
    tasks.spawn(serve_ws(ex.clone(), ws));
    tasks.spawn(serve_rest(ex, rest));
}

async fn serve_ws(ex: Arc<Ex>, listener: TcpListener) {
    let server = ex.clone();
    super::serve::accept(&ex.server, listener, move |s| connection(server.clone(), s)).await
}

/// How numbers look on the wire: today's API quotes decimals (and trade ids), v2 sends
/// bare JSON numbers.
#[derive(Clone, Copy)]
struct Wire(Dialect);

impl Wire {
    fn dec(self, d: &Decimal) -> String {
        match self.0 {
            Dialect::Exchange => format!("\"{d}\""),
            Dialect::V2 => d.to_string(),
        }
    }

    fn id(self, id: i64) -> String {
        match self.0 {
            Dialect::Exchange => format!("\"{id}\""),
            Dialect::V2 => id.to_string(),
        }
    }

    fn side(self, s: Side) -> &'static str {
        match s {
            Side::Buy => "BUY",
            Side::Sell => "SELL",
        }
    }

    fn rate_code(self) -> i64 {
        match self.0 {
            Dialect::Exchange => 42901,
            Dialect::V2 => 10006,
        }
    }

    fn bad_request_code(self) -> i64 {
        match self.0 {
            Dialect::Exchange => 40003,
            Dialect::V2 => 10004,
        }
    }

    fn trade(self, t: &SimTrade, symbol: &str) -> String {
        let extra = match self.0 {
            Dialect::Exchange => format!(",\"m\":\"{}\"", t.id / 7),
            Dialect::V2 => format!(",\"dataTime\":{}", t.time_ms),
        };
        format!(
            "{{\"d\":{},\"t\":{},\"p\":{},\"q\":{},\"s\":\"{}\",\"i\":{}{extra}}}",
            self.id(t.id),
            t.time_ms,
            self.dec(&t.price),
            self.dec(&t.qty),
            self.side(t.side),
            json_str(symbol),
        )
    }

    fn levels(self, levels: &[(Decimal, Decimal)]) -> String {
        let orders = match self.0 {
            Dialect::Exchange => "\"1\"",
            Dialect::V2 => "1",
        };
        let items: Vec<String> = levels
            .iter()
            .map(|(p, q)| format!("[{},{},{orders}]", self.dec(p), self.dec(q)))
            .collect();
        format!("[{}]", items.join(","))
    }

    fn bar(self, b: &Bar, ut: Option<i64>) -> String {
        format!(
            "{{\"t\":{},\"o\":{},\"h\":{},\"l\":{},\"c\":{},\"v\":{}{}}}",
            b.open_time_ms,
            self.dec(&b.open),
            self.dec(&b.high),
            self.dec(&b.low),
            self.dec(&b.close),
            self.dec(&b.volume),
            ut.map(|u| format!(",\"ut\":{u}")).unwrap_or_default()
        )
    }

    fn ticker(self, m: &Market, now: i64) -> Option<String> {
        let t = m.ticker.as_ref()?;
        let (bids, asks) = m.book();
        // `c`: a fraction today, an absolute price change in v2
        let change = match self.0 {
            Dialect::Exchange => t.rose,
            Dialect::V2 => t.close - t.open,
        };
        let best = |l: Option<&(Decimal, Decimal)>| match l {
            Some((p, q)) => (self.dec(p), self.dec(q)),
            None => ("null".into(), "null".into()),
        };
        let (b, bs) = best(bids.first());
        let (k, ks) = best(asks.first());
        Some(format!(
            "{{\"i\":{},\"a\":{},\"b\":{b},\"bs\":{bs},\"k\":{k},\"ks\":{ks},\"h\":{},\"l\":{},\"v\":{},\"vv\":{},\"c\":{},\"t\":{now}}}",
            json_str(&m.spec.symbol),
            self.dec(&t.close),
            self.dec(&t.high),
            self.dec(&t.low),
            self.dec(&t.vol),
            self.dec(&t.amount),
            self.dec(&change),
        ))
    }
}

fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// A book channel of one connection.
struct BookSub {
    depth: usize,
    /// Deltas after the snapshot (`SNAPSHOT_AND_UPDATE`), else full books.
    delta: bool,
    /// The window last sent (bids, asks).
    window: Book,
    /// The last update number sent.
    u: i64,
    last_sent: Instant,
}

enum Kind {
    Trade,
    Book(BookSub),
    Candle(&'static str),
    Ticker,
}

struct Sub {
    symbol: String,
    kind: Kind,
    /// Market steps up to this one are in what the subscribe reply sent.
    snapshot_seq: u64,
}

struct Conn {
    /// Where the market sends the steps of the symbols subscribed here.
    tap: super::state::Tap,
    ex: Arc<Ex>,
    wire: Wire,
    subs: HashMap<String, Sub>,
    /// Symbol -> its channel names on this connection.
    by_symbol: HashMap<String, Vec<String>>,
    connected: Instant,
    requests: VecDeque<Instant>,
    rng: fastrand::Rng,
    next_heartbeat: Instant,
    /// The heartbeat waiting for its answer, and when the server gives up on it.
    outstanding: Option<(String, Instant)>,
    /// How often quiet books are looked at for their empty delta.
    quiet_every: Duration,
    next_quiet: Instant,
}

async fn connection(ex: Arc<Ex>, tcp: super::serve::Socket) -> anyhow::Result<()> {
    // the connect-second rule runs from the server's side of the handshake, which the
    // client sees complete only after it (a busy test machine must not move it later)
    let connected = Instant::now();
    let ws = tokio_tungstenite::accept_async(tcp).await?;
    let server = &ex.server;
    let cfg = &server.config;
    let seed = {
        let mut st = lock(&server.state);
        st.connections_total += 1;
        cfg.seed ^ st.connections_total.wrapping_mul(0x9e37_79b9)
    };
    let quiet_every = cfg
        .empty_delta_interval
        .min(Duration::from_millis(100))
        .max(Duration::from_millis(5));
    let (tap, steps) = super::state::Tap::new(&server.state);
    let mut conn = Conn {
        tap,
        ex: ex.clone(),
        wire: Wire(ex.dialect),
        subs: HashMap::new(),
        by_symbol: HashMap::new(),
        connected,
        requests: VecDeque::new(),
        rng: fastrand::Rng::with_seed(seed),
        next_heartbeat: Instant::now() + cfg.heartbeat_interval,
        outstanding: None,
        quiet_every,
        next_quiet: Instant::now() + quiet_every,
    };
    super::serve::drive(server, ws, &mut conn, steps).await
}

impl super::serve::Handler for Conn {
    fn next_timer(&self) -> Option<Instant> {
        let hb = self.outstanding.as_ref().map(|(_, d)| *d);
        Some(
            self.next_heartbeat
                .min(self.next_quiet)
                .min(hb.unwrap_or(self.next_heartbeat)),
        )
    }

    fn on_timer(&mut self, muted: bool) -> anyhow::Result<super::serve::Reply> {
        let now = Instant::now();
        let cfg = &self.ex.server.config;
        let mut out = Vec::new();
        if self.outstanding.as_ref().is_some_and(|(_, d)| *d <= now) {
            if muted {
                self.outstanding = None;
            } else {
                self.state().heartbeat_closes += 1;
                // what the venue does: a normal close, at the heartbeat it missed
                return Ok(super::serve::Reply::Close(Message::Close(Some(
                    CloseFrame {
                        code: CloseCode::Normal,
                        reason: "heartbeat not answered".into(),
                    },
                ))));
            }
        }
        if self.next_heartbeat <= now {
            self.next_heartbeat = now + cfg.heartbeat_interval;
            if !muted {
                let id = self.state().now_ms().to_string();
                out.push(Message::text(format!(
                    "{{\"id\":{id},\"method\":\"public/heartbeat\",\"code\":0}}"
                )));
                if self.outstanding.is_none() {
                    self.outstanding = Some((id, now + cfg.heartbeat_timeout));
                }
            }
        }
        if self.next_quiet <= now {
            self.next_quiet = now + self.quiet_every;
            if !muted {
                out.extend(self.empty_deltas());
            }
        }
        Ok(super::serve::Reply::Send(out))
    }

    fn on_text(&mut self, text: &str) -> anyhow::Result<Vec<Message>> {
        if let Some(id) = heartbeat_answer(text) {
            let lost = self.state().lose_heartbeat_answers;
            if !lost && self.outstanding.as_ref().is_some_and(|(o, _)| *o == id) {
                self.outstanding = None;
            }
            return Ok(Vec::new());
        }
        Ok(self.client_request(text))
    }

    fn on_update(&mut self, u: &Update) -> anyhow::Result<Vec<(Message, Vec<i64>)>> {
        Ok(self.frames_for(u))
    }

    fn hostile_frame(&self, h: Hostile) -> anyhow::Result<Message> {
        Ok(self.hostile_message(h))
    }

    fn subscriptions(&self) -> usize {
        self.subs.len()
    }
}

/// The id of a `public/respond-heartbeat`, as its digits.
fn heartbeat_answer(text: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    if v.get("method")?.as_str()? != "public/respond-heartbeat" {
        return None;
    }
    Some(v.get("id")?.to_string())
}

impl Conn {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.ex.server.state)
    }

    /// A push as the venue frames it: `id` -1 today (the request's id on a subscribe
    /// reply), none in v2 (whose replies carry the id).
    fn push(
        &self,
        id: Option<i64>,
        channel: &str,
        sub: &str,
        symbol: &str,
        extra: &str,
        data: &str,
    ) -> Message {
        let id = match (self.wire.0, id) {
            (_, Some(id)) => format!("\"id\":{id},"),
            (Dialect::Exchange, None) => "\"id\":-1,".into(),
            (Dialect::V2, None) => String::new(),
        };
        Message::text(format!(
            "{{{id}\"method\":\"subscribe\",\"code\":0,\"result\":{{\"instrument_name\":{},\"subscription\":{},\"channel\":\"{channel}\"{extra},\"data\":{data}}}}}",
            json_str(symbol),
            json_str(sub),
        ))
    }

    fn error(
        &self,
        id: i64,
        method: &str,
        code: i64,
        message: &str,
        channel: Option<&str>,
    ) -> Message {
        Message::text(format!(
            "{{\"id\":{id},\"method\":{},\"code\":{code},\"message\":\"{message}\"{}}}",
            json_str(method),
            channel
                .map(|c| format!(",\"channel\":{}", json_str(c)))
                .unwrap_or_default()
        ))
    }

    /// The request rules: nothing in the second after connecting, then at most
    /// `requests_per_s` in any second.
    fn admit(&mut self) -> bool {
        let cfg = &self.ex.server.config;
        let now = Instant::now();
        if now < self.connected + cfg.connect_settle {
            return false;
        }
        while self
            .requests
            .front()
            .is_some_and(|t| now - *t >= Duration::from_secs(1))
        {
            self.requests.pop_front();
        }
        if self.requests.len() >= cfg.requests_per_s {
            return false;
        }
        self.requests.push_back(now);
        true
    }

    fn client_request(&mut self, text: &str) -> Vec<Message> {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
            return Vec::new(); // non-JSON gets no reply
        };
        let default_id = match self.wire.0 {
            Dialect::Exchange => -1,
            Dialect::V2 => 0,
        };
        let id = v.get("id").and_then(|i| i.as_i64()).unwrap_or(default_id);
        let method = v.get("method").and_then(|m| m.as_str()).unwrap_or("");
        if !self.admit() {
            self.state().rate_refusals += 1;
            return vec![self.error(id, method, self.wire.rate_code(), "TOO_MANY_REQUESTS", None)];
        }
        let channels: Vec<String> = v
            .pointer("/params/channels")
            .and_then(|c| c.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        match method {
            "subscribe" => {
                let delta = self.wire.0 == Dialect::Exchange
                    && v.pointer("/params/book_subscription_type")
                        .and_then(|t| t.as_str())
                        == Some("SNAPSHOT_AND_UPDATE");
                let mut out = Vec::new();
                if self.wire.0 == Dialect::V2 {
                    // v2: one ack per request
                    out.push(Message::text(format!(
                        "{{\"id\":{id},\"code\":0,\"method\":\"subscribe\"}}"
                    )));
                }
                for c in channels {
                    self.subscribe(id, &c, delta, &mut out);
                }
                out
            }
            "unsubscribe" => {
                for c in channels {
                    if let Some(sub) = self.subs.remove(&c) {
                        if let Some(v) = self.by_symbol.get_mut(&sub.symbol) {
                            v.retain(|n| *n != c);
                        }
                        self.state().subscriptions -= 1;
                    }
                }
                vec![Message::text(format!(
                    "{{\"id\":{id},\"method\":\"unsubscribe\",\"code\":0}}"
                ))]
            }
            _ => {
                let code = match self.wire.0 {
                    Dialect::Exchange => 40003,
                    Dialect::V2 => 10008,
                };
                vec![self.error(id, method, code, "INVALID_REQUEST", None)]
            }
        }
    }

    /// What one channel of a subscribe request means on this server, if anything.
    fn kind_of(&self, name: &str, delta: bool, m: &Market) -> Option<Kind> {
        let ch = Channel::parse(name)?;
        Some(match ch {
            Channel::Trade { .. } => Kind::Trade,
            Channel::Ticker { .. } => Kind::Ticker,
            Channel::Book { depth, .. } => {
                let ok = self.wire.0.depths().contains(&depth)
                    || (self.wire.0 == Dialect::Exchange && depth == 150);
                if !ok {
                    return None;
                }
                Kind::Book(BookSub {
                    depth: depth as usize,
                    delta,
                    window: window(m, depth as usize),
                    u: 0,
                    last_sent: Instant::now(),
                })
            }
            Channel::Candlestick { timeframe, .. } => {
                let (tf, _) = self
                    .ex
                    .server
                    .personality
                    .intervals
                    .iter()
                    .find(|(n, _)| *n == timeframe)?;
                Kind::Candle(tf)
            }
        })
    }

    fn subscribe(&mut self, id: i64, name: &str, delta: bool, out: &mut Vec<Message>) {
        let symbol = Channel::parse(name)
            .map(|c| c.instrument().to_string())
            .unwrap_or_default();
        let cfg = &self.ex.server.config;
        let mut st = lock(&self.ex.server.state);
        if st.markets.contains_key(&symbol) {
            self.tap.watch(&mut st, &symbol);
        }
        let kind = st
            .markets
            .get(&symbol)
            .and_then(|m| self.kind_of(name, delta, m));
        let Some(mut kind) = kind else {
            drop(st);
            self.state().bad_channel_refusals += 1;
            out.push(self.error(
                id,
                "subscribe",
                self.wire.bad_request_code(),
                "INVALID_REQUEST",
                Some(name),
            ));
            return;
        };
        let fresh = !self.subs.contains_key(name);
        if fresh && self.subs.len() >= cfg.max_subscriptions {
            drop(st);
            self.state().cap_refusals += 1;
            out.push(self.error(
                id,
                "subscribe",
                40107,
                "EXCEED_MAX_SUBSCRIPTIONS",
                Some(name),
            ));
            return;
        }
        let Some(m) = st.markets.get(&symbol) else {
            return;
        };
        let now = st.now_ms();
        let snapshot_seq = st.seq;
        let reply_id = Some(id);
        match &mut kind {
            Kind::Trade => {
                let recent: Vec<&SimTrade> = m.trades.iter().rev().take(REPLAY_TRADES).collect();
                let items: Vec<String> =
                    recent.iter().map(|t| self.wire.trade(t, &symbol)).collect();
                let ids: Vec<i64> = recent.iter().map(|t| t.id).collect();
                out.push(self.push(
                    reply_id,
                    "trade",
                    name,
                    &symbol,
                    "",
                    &format!("[{}]", items.join(",")),
                ));
                drop(st);
                self.state()
                    .delivered
                    .entry(symbol.clone())
                    .or_default()
                    .extend(ids);
            }
            Kind::Book(b) => {
                if self.wire.0 == Dialect::Exchange {
                    // today's wire acks each book channel by itself
                    out.push(Message::text(format!(
                        "{{\"id\":{id},\"method\":\"subscribe\",\"code\":0,\"channel\":{}}}",
                        json_str(name)
                    )));
                }
                b.u = self.rng.i64(1_000_000_000..9_000_000_000);
                out.push(self.book_frame(name, &symbol, b, now, None));
                b.last_sent = Instant::now();
                drop(st);
            }
            Kind::Candle(tf) => {
                let bar = m.bars.get(*tf).and_then(|s| s.values().next_back());
                let data = bar
                    .map(|b| format!("[{}]", self.wire.bar(b, Some(now))))
                    .unwrap_or_else(|| "[]".into());
                let extra = format!(",\"interval\":\"{tf}\"");
                out.push(self.push(reply_id, "candlestick", name, &symbol, &extra, &data));
                drop(st);
            }
            Kind::Ticker => {
                let data = self
                    .wire
                    .ticker(m, now)
                    .map(|t| format!("[{t}]"))
                    .unwrap_or_else(|| "[]".into());
                out.push(self.push(reply_id, "ticker", name, &symbol, "", &data));
                drop(st);
            }
        }
        // a duplicate subscribe gets its reply again (a book its snapshot), not a second stream
        if fresh {
            self.by_symbol
                .entry(symbol.clone())
                .or_default()
                .push(name.to_string());
            let mut st = self.state();
            st.subscriptions += 1;
            st.max_conn_subscriptions = st.max_conn_subscriptions.max(self.subs.len() + 1);
        }
        self.subs.insert(
            name.to_string(),
            Sub {
                symbol,
                kind,
                snapshot_seq,
            },
        );
    }

    /// A full book (`channel: book`) or, with `prev`, a delta (`book.update`) of the changes
    /// since the window last sent.
    fn book_frame(
        &self,
        name: &str,
        symbol: &str,
        b: &BookSub,
        t: i64,
        delta: Option<(i64, &Book)>,
    ) -> Message {
        let w = self.wire;
        let extra = format!(",\"depth\":{}", b.depth);
        match delta {
            None => {
                let (bids, asks) = &b.window;
                let u = match w.0 {
                    Dialect::Exchange => format!(",\"u\":{}", b.u),
                    Dialect::V2 => String::new(),
                };
                let data = format!(
                    "[{{\"asks\":{},\"bids\":{},\"t\":{t},\"tt\":{t}{u},\"cs\":0}}]",
                    w.levels(asks),
                    w.levels(bids)
                );
                self.push(None, "book", name, symbol, &extra, &data)
            }
            Some((pu, (bids, asks))) => {
                let data = format!(
                    "[{{\"update\":{{\"asks\":{},\"bids\":{}}},\"t\":{t},\"tt\":{t},\"u\":{},\"pu\":{pu},\"cs\":0}}]",
                    w.levels(asks),
                    w.levels(bids),
                    b.u
                );
                self.push(None, "book.update", name, symbol, &extra, &data)
            }
        }
    }

    /// Empty deltas for delta books unchanged for the configured time.
    fn empty_deltas(&mut self) -> Vec<Message> {
        let every = self.ex.server.config.empty_delta_interval;
        let now = self.state().now_ms();
        let due: Vec<String> = self
            .subs
            .iter()
            .filter(|(_, s)| matches!(&s.kind, Kind::Book(b) if b.delta && b.last_sent.elapsed() >= every))
            .map(|(n, _)| n.clone())
            .collect();
        let mut out = Vec::new();
        let empty: Book = (Vec::new(), Vec::new());
        for name in due {
            let Some(sub) = self.subs.get(&name) else {
                continue;
            };
            let Kind::Book(b) = &sub.kind else { continue };
            out.push(self.book_frame(&name, &sub.symbol, b, now, Some((b.u, &empty))));
            if let Some(Sub {
                kind: Kind::Book(b),
                ..
            }) = self.subs.get_mut(&name)
            {
                b.last_sent = Instant::now();
            }
        }
        out
    }

    /// The frames one market step means for this connection, with the trade ids each carries.
    fn frames_for(&mut self, u: &Update) -> Vec<(Message, Vec<i64>)> {
        // the symbol's channel names and each channel's state are moved out for the step and
        // back, keys and all: nothing is copied per channel
        let Some((key, names)) = self.by_symbol.remove_entry(&*u.symbol) else {
            return Vec::new();
        };
        let muted = self.state().muted_channel.clone();
        let mut out = Vec::new();
        let symbol: &str = &u.symbol;
        for name in &names {
            if muted.as_deref() == Some(name.as_str()) {
                continue;
            }
            let Some((name, mut sub)) = self.subs.remove_entry(name) else {
                continue;
            };
            if u.seq > sub.snapshot_seq {
                self.step_frames(u, &name, symbol, &mut sub, &mut out);
            }
            self.subs.insert(name, sub);
        }
        self.by_symbol.insert(key, names);
        out
    }

    fn step_frames(
        &mut self,
        u: &Update,
        name: &str,
        symbol: &str,
        sub: &mut Sub,
        out: &mut Vec<(Message, Vec<i64>)>,
    ) {
        let w = self.wire;
        match &mut sub.kind {
            Kind::Trade => {
                if u.out.trades.is_empty() || u.withhold_trades {
                    return;
                }
                // newest first, as the venue sends them
                let items: Vec<String> = u
                    .out
                    .trades
                    .iter()
                    .rev()
                    .map(|t| w.trade(t, symbol))
                    .collect();
                let ids = u.out.trades.iter().map(|t| t.id).collect();
                out.push((
                    self.push(
                        None,
                        "trade",
                        name,
                        symbol,
                        "",
                        &format!("[{}]", items.join(",")),
                    ),
                    ids,
                ));
            }
            Kind::Book(b) => {
                let new = window_of(&u.book, b.depth);
                if new == b.window {
                    return;
                }
                if b.delta {
                    let changes = diff(&b.window, &new);
                    let mut pu = b.u;
                    if u.break_books {
                        // a delta the server never sent: the next one's pu is not the last u
                        pu += self.rng.i64(10_000..1_000_000);
                    }
                    b.u = pu + self.rng.i64(10_000..1_000_000);
                    b.window = new;
                    out.push((
                        self.book_frame(name, symbol, b, u.time_ms, Some((pu, &changes))),
                        Vec::new(),
                    ));
                } else {
                    b.window = new;
                    b.u += self.rng.i64(10_000..1_000_000);
                    out.push((
                        self.book_frame(name, symbol, b, u.time_ms, None),
                        Vec::new(),
                    ));
                }
                b.last_sent = Instant::now();
            }
            Kind::Candle(tf) => {
                let bars: Vec<String> = u
                    .out
                    .bars
                    .iter()
                    .filter(|(n, _)| n == tf)
                    .map(|(_, b)| w.bar(b, Some(u.time_ms)))
                    .collect();
                if bars.is_empty() {
                    return;
                }
                let extra = format!(",\"interval\":\"{tf}\"");
                out.push((
                    self.push(
                        None,
                        "candlestick",
                        name,
                        symbol,
                        &extra,
                        &format!("[{}]", bars.join(",")),
                    ),
                    Vec::new(),
                ));
            }
            Kind::Ticker => {
                if u.ticker.is_none() {
                    return;
                }
                let st = self.state();
                let t = st.markets.get(symbol).and_then(|m| w.ticker(m, u.time_ms));
                drop(st);
                if let Some(t) = t {
                    out.push((
                        self.push(None, "ticker", name, symbol, "", &format!("[{t}]")),
                        Vec::new(),
                    ));
                }
            }
        }
    }

    /// A symbol this connection carries trades of (hostile frames must reach a decoder that
    /// routes them), else any.
    fn some_symbol(&self) -> String {
        self.subs
            .values()
            .find(|s| matches!(s.kind, Kind::Trade))
            .map(|s| s.symbol.clone())
            .or_else(|| self.state().markets.keys().next().cloned())
            .unwrap_or_default()
    }

    fn hostile_message(&self, h: Hostile) -> Message {
        match h {
            // the venue sends text: binary garbage is what a broken proxy would pass on
            Hostile::CorruptGzip => {
                Message::binary(vec![0x1f, 0x8b, 0x08, 0x00, 0xde, 0xad, 0xbe, 0xef])
            }
            Hostile::Bomb(n) => Message::text(format!("[{}]", " ".repeat(n.saturating_sub(2)))),
            Hostile::MalformedJson => Message::text(format!(
                "{{\"id\":-1,\"method\":\"subscribe\",\"result\":{{\"subscription\":\"trade.{}\",\"data\":[{{\"d\":",
                self.some_symbol()
            )),
            Hostile::Oversized(n) => Message::text("x".repeat(n)),
            Hostile::UnknownEvent => {
                Message::text("{\"id\":-1,\"method\":\"public/announcement\",\"code\":0}")
            }
            Hostile::Invalid(v) => self.bad_value_frame(v),
            Hostile::CloseWithNul => Message::Close(Some(CloseFrame {
                code: CloseCode::Away,
                reason: "maintenance\0\u{7}\u{1b}[31m restart".into(),
            })),
        }
    }

    /// A well-formed push with one invalid value; its trade ids are far from the market's.
    fn bad_value_frame(&self, v: BadValue) -> Message {
        use BadValue::*;
        let sym = self.some_symbol();
        let now = self.state().now_ms();
        let trade = |id: i64, p: &str, q: &str, t: &str| {
            let data = format!(
                "[{{\"d\":\"{id}\",\"t\":{t},\"p\":\"{p}\",\"q\":\"{q}\",\"s\":\"BUY\",\"i\":{}}}]",
                json_str(&sym)
            );
            self.push(None, "trade", &format!("trade.{sym}"), &sym, "", &data)
        };
        let bar = |t: &str, h: &str, l: &str| {
            let data = format!(
                "[{{\"t\":{t},\"o\":\"100\",\"h\":\"{h}\",\"l\":\"{l}\",\"c\":\"100\",\"v\":\"1\"}}]"
            );
            self.push(
                None,
                "candlestick",
                &format!("candlestick.1m.{sym}"),
                &sym,
                ",\"interval\":\"1m\"",
                &data,
            )
        };
        let n = now.to_string();
        let minute = (now / 60_000 * 60_000).to_string();
        let huge = format!("1.{}", "7".repeat(60));
        match v {
            TradePriceZero => trade(9_000_000_001, "0", "1", &n),
            TradeQtyZero => trade(9_000_000_002, "100", "0", &n),
            TradeQtyNegative => trade(9_000_000_003, "100", "-1.5", &n),
            TradeTimeZero => trade(9_000_000_004, "100", "1", "0"),
            TradeTimeNegative => trade(9_000_000_005, "100", "1", "-1"),
            TradeTimeMax => trade(9_000_000_006, "100", "1", &i64::MAX.to_string()),
            TradeHugeDecimal => trade(9_000_000_007, &huge, "1", &n),
            KlineOpenTimeZero => bar("0", "101", "99"),
            KlineOpenTimeNegative => bar("-1", "101", "99"),
            KlineHighBelowLow => bar(&minute, "99", "101"),
            KlineHighZero => bar(&minute, "0", "99"),
        }
    }
}

/// A market's book cut to `depth` levels a side.
fn window(m: &Market, depth: usize) -> Book {
    merge_book(&m.book(), m.spec.price_scale, 0, depth)
}

fn window_of(book: &Book, depth: usize) -> Book {
    (
        book.0.iter().take(depth).cloned().collect(),
        book.1.iter().take(depth).cloned().collect(),
    )
}

/// The levels that changed from `old` to `new`, by price; a level that left is a delete
/// (quantity 0).
fn diff(old: &Book, new: &Book) -> Book {
    let side = |o: &[(Decimal, Decimal)], n: &[(Decimal, Decimal)]| {
        let before: HashMap<Decimal, Decimal> = o.iter().cloned().collect();
        let after: HashMap<Decimal, Decimal> = n.iter().cloned().collect();
        let mut out: Vec<(Decimal, Decimal)> = n
            .iter()
            .filter(|(p, q)| before.get(p) != Some(q))
            .cloned()
            .collect();
        out.extend(
            o.iter()
                .filter(|(p, _)| !after.contains_key(p))
                .map(|(p, _)| (*p, Decimal::ZERO)),
        );
        out
    };
    (side(&old.0, &new.0), side(&old.1, &new.1))
}

// ---------------------------------------------------------------- REST

async fn serve_rest(ex: Arc<Ex>, listener: TcpListener) {
    let root = ex.server.personality.rest_path;
    let app = axum::Router::new()
        .route(&format!("{root}/public/get-instruments"), get(instruments))
        .route(&format!("{root}/public/get-trades"), get(trades))
        .route(&format!("{root}/public/get-candlestick"), get(candles))
        .route(&format!("{root}/public/get-book"), get(book))
        .route(&format!("{root}/public/get-tickers"), get(tickers))
        .with_state(ex.clone());
    super::serve::serve_http(&ex.server, listener, app).await
}

#[derive(serde::Deserialize)]
struct Params {
    instrument_name: Option<String>,
    count: Option<usize>,
    start_ts: Option<i64>,
    end_ts: Option<i64>,
    timeframe: Option<String>,
    depth: Option<usize>,
}

/// Milliseconds from a `start_ts`/`end_ts` given in ms or ns.
fn ms(t: i64) -> i64 {
    if t > 100_000_000_000_000 {
        t / 1_000_000
    } else {
        t
    }
}

fn reply(method: &str, result: String) -> axum::response::Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        format!("{{\"id\":-1,\"method\":\"{method}\",\"code\":0,\"result\":{result}}}"),
    )
        .into_response()
}

fn refuse(status: u16, method: &str, code: i64, message: &str) -> axum::response::Response {
    (
        axum::http::StatusCode::from_u16(status).unwrap_or(axum::http::StatusCode::BAD_REQUEST),
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        format!("{{\"id\":-1,\"method\":\"{method}\",\"code\":{code},\"message\":\"{message}\"}}"),
    )
        .into_response()
}

impl Ex {
    fn wire(&self) -> Wire {
        Wire(self.dialect)
    }

    /// Busy or throttled answers (fault injection), before any data.
    fn refused(&self, method: &str, counts: bool) -> Option<axum::response::Response> {
        let n = if counts {
            self.server
                .trade_requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        } else {
            u32::MAX
        };
        let st = lock(&self.server.state);
        if (counts && n < self.server.config.rest_throttle_first) || st.rest_throttled {
            return Some(refuse(
                429,
                method,
                self.wire().rate_code(),
                "TOO_MANY_REQUESTS",
            ));
        }
        if st.rest_errors {
            return Some(refuse(500, method, 10001, "SYS_ERROR"));
        }
        None
    }

    /// The market a request names.
    fn market<'s>(&self, st: &'s State, p: &Params) -> Option<&'s Market> {
        p.instrument_name.as_deref().and_then(|s| st.markets.get(s))
    }

    fn unknown(&self, method: &str) -> axum::response::Response {
        refuse(
            400,
            method,
            self.wire().bad_request_code(),
            "INVALID_REQUEST",
        )
    }
}

async fn instruments(AxState(ex): AxState<Arc<Ex>>) -> axum::response::Response {
    const METHOD: &str = "public/get-instruments";
    let st = lock(&ex.server.state);
    let items: Vec<String> = st
        .markets
        .values()
        .map(|m| {
            let s = &m.spec;
            let perp = s.symbol.ends_with("-PERP");
            match ex.dialect {
                Dialect::Exchange => format!(
                    "{{\"symbol\":{},\"inst_type\":\"{}\",\"display_name\":{},\"base_ccy\":{},\"quote_ccy\":{},\"quote_decimals\":{},\"quantity_decimals\":{},\"price_tick_size\":\"{}\",\"qty_tick_size\":\"{}\",\"tradable\":true}}",
                    json_str(&s.symbol),
                    if perp { "PERPETUAL_SWAP" } else { "CCY_PAIR" },
                    json_str(&s.symbol),
                    json_str(&s.base.to_ascii_uppercase()),
                    json_str(&s.quote.to_ascii_uppercase()),
                    s.price_scale,
                    s.qty_scale,
                    Decimal::new(1, s.price_scale),
                    Decimal::new(1, s.qty_scale),
                ),
                Dialect::V2 => format!(
                    "{{\"instrument_name\":{},\"quote_currency\":{},\"base_currency\":{},\"price_decimals\":{},\"quantity_decimals\":{},\"margin_trading_enabled\":false}}",
                    json_str(&s.symbol),
                    json_str(&s.quote.to_ascii_uppercase()),
                    json_str(&s.base.to_ascii_uppercase()),
                    s.price_scale,
                    s.qty_scale,
                ),
            }
        })
        .collect();
    let key = match ex.dialect {
        Dialect::Exchange => "data",
        Dialect::V2 => "instruments",
    };
    reply(METHOD, format!("{{\"{key}\":[{}]}}", items.join(",")))
}

async fn trades(
    AxState(ex): AxState<Arc<Ex>>,
    Query(p): Query<Params>,
) -> axum::response::Response {
    const METHOD: &str = "public/get-trades";
    if let Some(r) = ex.refused(METHOD, true) {
        return r;
    }
    let st = lock(&ex.server.state);
    let Some(m) = ex.market(&st, &p) else {
        return ex.unknown(METHOD);
    };
    let now = st.now_ms();
    let count = p.count.unwrap_or(25).clamp(1, 150);
    let end = p.end_ts.map(ms).unwrap_or(now + 1);
    // the venue keeps a window of history; a start before it answers from its edge
    let edge = ex.server.config.trade_history_ms.map(|h| now - h);
    let start = p
        .start_ts
        .map(ms)
        .unwrap_or(end - 86_400_000)
        .max(edge.unwrap_or(i64::MIN));
    let w = ex.wire();
    let items: Vec<String> = m
        .trades
        .iter()
        .rev()
        .filter(|t| t.time_ms >= start && t.time_ms < end)
        .take(count)
        .map(|t| {
            let side = match t.side {
                Side::Buy => "buy",
                Side::Sell => "sell",
            };
            // `tn`: nanoseconds, distinct within the millisecond
            let tn = t.time_ms * 1_000_000 + t.id.rem_euclid(1_000_000);
            format!(
                "{{\"d\":{},\"t\":{},\"tn\":{tn},\"p\":{},\"q\":{},\"s\":\"{side}\",\"i\":{}}}",
                w.id(t.id),
                t.time_ms,
                w.dec(&t.price),
                w.dec(&t.qty),
                json_str(&m.spec.symbol)
            )
        })
        .collect();
    reply(METHOD, format!("{{\"data\":[{}]}}", items.join(",")))
}

async fn candles(
    AxState(ex): AxState<Arc<Ex>>,
    Query(p): Query<Params>,
) -> axum::response::Response {
    const METHOD: &str = "public/get-candlestick";
    if let Some(r) = ex.refused(METHOD, false) {
        return r;
    }
    let st = lock(&ex.server.state);
    let Some(m) = ex.market(&st, &p) else {
        return ex.unknown(METHOD);
    };
    let Some(tf) = p.timeframe.as_deref() else {
        return ex.unknown(METHOD);
    };
    let Some(series) = m.bars.get(tf) else {
        return ex.unknown(METHOD);
    };
    let count = p.count.unwrap_or(25).clamp(1, 300);
    let keep = ex.server.config.history_kline_limit.unwrap_or(usize::MAX);
    let kept: Vec<&Bar> = series.values().rev().take(keep).collect();
    let end = p.end_ts.map(ms).unwrap_or(i64::MAX);
    let mut bars: Vec<&Bar> = match p.start_ts.map(ms) {
        // from the start on, oldest first
        Some(start) => kept
            .into_iter()
            .rev()
            .filter(|b| b.open_time_ms >= start && b.open_time_ms < end)
            .take(count)
            .collect(),
        None => kept
            .into_iter()
            .filter(|b| b.open_time_ms < end)
            .take(count)
            .collect(),
    };
    bars.sort_by_key(|b| b.open_time_ms);
    let w = ex.wire();
    let items: Vec<String> = bars.iter().map(|b| w.bar(b, None)).collect();
    reply(
        METHOD,
        format!(
            "{{\"interval\":\"{tf}\",\"instrument_name\":{},\"data\":[{}]}}",
            json_str(&m.spec.symbol),
            items.join(",")
        ),
    )
}

async fn book(AxState(ex): AxState<Arc<Ex>>, Query(p): Query<Params>) -> axum::response::Response {
    const METHOD: &str = "public/get-book";
    let st = lock(&ex.server.state);
    let Some(m) = ex.market(&st, &p) else {
        return ex.unknown(METHOD);
    };
    let depth = p.depth.unwrap_or(150);
    if !(1..=150).contains(&depth) {
        return refuse(400, METHOD, 40004, "INVALID_ARGUMENT");
    }
    let (bids, asks) = window(m, depth);
    let w = ex.wire();
    reply(
        METHOD,
        format!(
            "{{\"depth\":{depth},\"instrument_name\":{},\"data\":[{{\"bids\":{},\"asks\":{},\"t\":{}}}]}}",
            json_str(&m.spec.symbol),
            w.levels(&bids),
            w.levels(&asks),
            st.now_ms()
        ),
    )
}

async fn tickers(
    AxState(ex): AxState<Arc<Ex>>,
    Query(p): Query<Params>,
) -> axum::response::Response {
    const METHOD: &str = "public/get-tickers";
    let st = lock(&ex.server.state);
    let now = st.now_ms();
    let w = ex.wire();
    let items: Vec<String> = st
        .markets
        .values()
        .filter(|m| {
            p.instrument_name
                .as_deref()
                .is_none_or(|i| i == m.spec.symbol)
        })
        .filter_map(|m| w.ticker(m, now))
        .collect();
    reply(METHOD, format!("{{\"data\":[{}]}}", items.join(",")))
}
