//! Venue protocols. Each venue is one folder: it turns socket frames into [`Event`]s and says
//! what to send (subscriptions, pongs). The worker, writer and store know nothing venue-specific.

pub mod bars;
pub mod cdc_exchange;
pub mod cdc_v1;
pub mod numbers;
pub mod registry;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use crate::config::{ConfigError, DepthSetting, RecordConfig};
use crate::model::{Event, InstrumentType, Interval, Kline, Market, StreamKey, Trade, TradeMark};

/// A websocket frame as read from the socket.
#[derive(Debug, Clone, Copy)]
pub enum Frame<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
}

/// Why a frame was not turned into events. The frame is counted and skipped; the worker goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("corrupt compressed frame: {0}")]
    Corrupt(String),
    #[error("frame inflates past the {limit}-byte limit")]
    TooLarge { limit: usize },
    #[error("malformed JSON: {0}")]
    Json(String),
    #[error("unexpected message: {0}")]
    Unexpected(String),
    #[error("decoder panicked: {0}")]
    Panic(String),
}

impl DecodeError {
    /// Labels of [`DecodeError::kind`], in [`DecodeError::index`] order.
    pub const KINDS: [&'static str; 5] = ["corrupt", "too_large", "json", "unexpected", "panic"];

    /// Short label for counters and logs.
    pub fn kind(&self) -> &'static str {
        Self::KINDS[self.index()]
    }

    pub fn index(&self) -> usize {
        match self {
            DecodeError::Corrupt(_) => 0,
            DecodeError::TooLarge { .. } => 1,
            DecodeError::Json(_) => 2,
            DecodeError::Unexpected(_) => 3,
            DecodeError::Panic(_) => 4,
        }
    }
}

/// What a venue's trade ids promise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TradeIds {
    /// Each trade's id is the previous one's plus one: a skipped id on a live socket is a
    /// missed trade (a hint worth a check), and the id after the anchor closes a hole.
    Consecutive,
    /// Ids grow with the trades but skip (numbered across markets).
    Increasing,
    /// Ids name trades but do not order them: order is by exchange time.
    Unordered,
}

impl TradeIds {
    /// Whether `t` comes after `m` in the stream: by id where ids order trades and both are
    /// the venue's (negative ids are synthesized), else by time.
    pub fn is_after(self, t: TradeMark, m: TradeMark) -> bool {
        if self != TradeIds::Unordered && t.trade_id >= 0 && m.trade_id >= 0 {
            t.trade_id > m.trade_id
        } else {
            (t.time_ms, t.trade_id) > (m.time_ms, m.trade_id)
        }
    }
}

impl TradeIds {
    /// Whether `b` is the trade right after `a` by id (`a`'s id plus one): nothing can be
    /// missing between them, wherever their times lie.
    pub fn adjacent(self, a: TradeMark, b: TradeMark) -> bool {
        self != TradeIds::Unordered
            && a.trade_id >= 0
            && a.trade_id.checked_add(1) == Some(b.trade_id)
    }
}

/// How far back a trade history answer reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// To the anchor: every trade the venue published after it is in the answer (or the
    /// venue has no older trades than those it gave).
    Anchor,
    /// Not to the anchor: trades before the answer's oldest are beyond the venue's history
    /// (the venue says why, for the gap row).
    Short { why: String },
}

/// A venue's paged answer for a stretch of trades. The recorder does the IO: it asks for
/// the next request, fetches it, hands back the body, until there is none; then asks how far
/// the pages reached.
pub trait TradeHistory: Send {
    /// The next REST path (under `rest_url`) to fetch; None when done.
    fn next_request(&mut self) -> Option<String>;
    /// Reads the reply to the last request: its trades (`source = rest`), oldest first.
    fn take(&mut self, body: &str, recv_time_us: i64) -> Result<Vec<Trade>, FetchError>;
    /// After the last page: how far back it reached. `until` is the first trade known after
    /// the hole (the socket's), which may close it on venues with consecutive ids.
    fn reach(&self, until: Option<TradeMark>) -> Reach;
}

/// One request of a history: a REST path (under `rest_url`), or a text frame sent on a
/// short-lived socket whose replies the venue's session decodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryRequest {
    Rest(String),
    Socket(String),
}

/// A venue's paged answer for bars of one interval. The recorder does the IO (REST, or a
/// short-lived socket for `Socket` requests) and hands each reply back. The newest bar over
/// all replies is the venue's forming bar (stored open); every other bar is final.
pub trait KlineHistory: Send {
    /// The next request; None when done.
    fn next_request(&mut self) -> Option<HistoryRequest>;
    /// Reads the reply to the last `Rest` request: its bars, oldest first.
    fn take_rest(&mut self, body: &str, recv_time_us: i64) -> Result<Vec<Kline>, FetchError>;
    /// The bars the venue's session decoded from the reply to the last `Socket` request.
    fn take_socket(&mut self, bars: &[Kline]);
    /// The stretches the replies answered for, as (first, last) open times: a bar slot
    /// inside one without a bar is one the venue has none for; a slot outside all of them
    /// is beyond the venue's history.
    fn answered(&self) -> Vec<(i64, i64)>;
}

/// Why a REST (or history) fetch gave no rows: the REST client and the venue's parsers
/// return it, backfill decides on the kind ([`FetchError::retryable`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The venue answered with its own error.
    #[error("refused by the venue (code {code}): {message}")]
    Refused {
        code: String,
        message: String,
        /// The venue says asking again may work (busy, maintenance).
        retryable: bool,
    },
    /// Rate limited (HTTP 429 or the venue's code), after the client's own retries.
    #[error("rate limited{}", .retry_after.map(|d| format!(", retry after {} s", d.as_secs())).unwrap_or_default())]
    RateLimited { retry_after: Option<Duration> },
    /// An HTTP status other than success or 429.
    #[error("HTTP {status}: {snippet}")]
    Http { status: u16, snippet: String },
    /// No answer: connect, TLS, timeout, a connection cut mid-body.
    #[error("transport: {0}")]
    Transport(String),
    /// An answer that is not what the venue documents (malformed, wrong shape).
    #[error("bad body: {0}")]
    BadBody(String),
}

impl FetchError {
    /// Worth asking again soon: 5xx, transport, rate limits, refusals the venue calls busy.
    /// Others (4xx, bad bodies, refusals such as an unknown symbol) will not change by
    /// themselves.
    pub fn retryable(&self) -> bool {
        match self {
            FetchError::Refused { retryable, .. } => *retryable,
            FetchError::RateLimited { .. } | FetchError::Transport(_) => true,
            FetchError::Http { status, .. } => *status >= 500,
            FetchError::BadBody(_) => false,
        }
    }

    /// Short label for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::Refused { .. } => "refused",
            FetchError::RateLimited { .. } => "rate_limited",
            FetchError::Http { .. } => "http",
            FetchError::Transport(_) => "transport",
            FetchError::BadBody(_) => "bad_body",
        }
    }

    /// The same error with what was being fetched in front of its message.
    pub fn context(self, what: &str) -> FetchError {
        match self {
            FetchError::Refused {
                code,
                message,
                retryable,
            } => FetchError::Refused {
                code,
                message: format!("{what}: {message}"),
                retryable,
            },
            FetchError::Http { status, snippet } => FetchError::Http {
                status,
                snippet: format!("{what}: {snippet}"),
            },
            FetchError::Transport(m) => FetchError::Transport(format!("{what}: {m}")),
            FetchError::BadBody(m) => FetchError::BadBody(format!("{what}: {m}")),
            r @ FetchError::RateLimited { .. } => r,
        }
    }
}

/// What a frame asks of the worker besides the events it produced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reaction {
    /// A text frame to send back (e.g. a pong).
    pub reply: Option<String>,
    /// The frame was a heartbeat, a subscription ack or similar: alive, but no market data.
    pub control: bool,
    /// Messages dropped as invalid, and rows kept though the venue clock is far off.
    pub findings: validate::Findings,
    /// Book streams whose update sequence broke in this frame: each is recorded as a hole of
    /// that stream and re-synced on the connection; the session emits none of the stream's
    /// deltas until its next snapshot.
    pub breaks: Vec<BookBreak>,
    /// Streams (symbol, stream) this frame proved alive without rows (an idle book's empty
    /// delta): they are not silent channels to subscribe again.
    pub alive: Vec<(Arc<str>, StreamKey)>,
    /// Requests of ours the venue refused (a reply with an error code).
    pub refusals: Vec<Refusal>,
}

/// A request of ours the venue refused, and what the worker does about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The refused request's id ([`Subscription::id`]); None when the reply names none.
    pub request: Option<u64>,
    /// The streams the reply names (empty: all of the request's).
    pub streams: Vec<(Arc<str>, StreamKey)>,
    pub kind: RefusalKind,
    /// The venue's code and message, for logs.
    pub detail: String,
}

/// What a refusal means for the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// Too many requests: sent again after a back-off.
    RateLimited,
    /// Too many subscriptions on this connection: its symbols move to another connection.
    TooManyStreams,
    /// An unknown instrument or channel, a bad argument: will not pass on retry, so it is
    /// never sent again (logged once, named).
    BadRequest,
    /// Anything else: logged and counted.
    Other,
}

impl RefusalKind {
    /// Labels of [`RefusalKind::label`], in [`RefusalKind::index`] order.
    pub const KINDS: [&'static str; 4] =
        ["rate_limited", "too_many_streams", "bad_request", "other"];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn label(self) -> &'static str {
        Self::KINDS[self.index()]
    }
}

/// A book stream that lost updates (the venue's sequence numbers skipped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookBreak {
    pub symbol: Arc<str>,
    pub depth_step: i16,
    /// Exchange time of the last update applied before the break.
    pub last_ms: i64,
    /// Exchange time of the update that showed the break.
    pub at_ms: i64,
    /// What was seen, for the gap row (`expected prev 41, got 44`).
    pub detail: String,
    /// Frames that re-sync the stream (empty: its subscription is sent again).
    pub resync: Vec<String>,
}

/// A venue protocol family.
pub trait Venue: Send + Sync + 'static {
    /// The `venue` column value (`cdc-v1`).
    fn name(&self) -> &'static str;
    /// What one of the venue's interval names means (None: not one of its names).
    fn interval(&self, name: &str) -> Option<Interval>;
    /// What the configuration means where it leaves out the URLs, `klines` or `depth`.
    fn defaults(&self) -> Defaults;
    /// Checks `[record]` in the venue's words: symbol spelling, interval names, depth; the
    /// error names the key.
    fn check_record(&self, record: &RecordConfig) -> Result<(), ConfigError>;
    /// The streams one symbol is subscribed to, by the configuration.
    fn streams(&self, symbol: &str, record: &RecordConfig) -> Vec<StreamKey>;
    /// What one socket of this venue carries and how fast it may be asked.
    fn socket_limits(&self) -> SocketLimits;
    /// The sockets to open for `symbols`, each with the symbols and streams it carries.
    fn plan(&self, symbols: &[Arc<str>], record: &RecordConfig) -> Vec<ConnectionPlan> {
        pack(
            symbols.iter().map(|s| (s.clone(), self.streams(s, record))),
            self.socket_limits(),
        )
    }
    /// Text frames to send after connecting, with the streams each opens (a stream silent
    /// while others flow is subscribed again with its frame).
    fn subscribe_frames(&self, conn: &ConnectionPlan, record: &RecordConfig) -> Vec<Subscription>;
    /// A frame that closes `streams` on a live socket (request id `id`), where the venue has
    /// one (None: the streams' symbols leave only with their socket).
    fn unsubscribe_frame(&self, _id: u64, _streams: &[(Arc<str>, StreamKey)]) -> Option<String> {
        None
    }
    /// REST path (under `rest_url`) that lists the venue's markets.
    fn markets_path(&self) -> &'static str;
    /// Parses that listing.
    fn parse_markets(&self, body: &str, now_ms: i64) -> Result<Vec<Market>, FetchError> {
        Ok(self
            .parse_listing(body, now_ms)?
            .into_iter()
            .map(|l| l.market)
            .collect())
    }
    /// Parses that listing with each market's type and whether it trades (`symbols = "all"`).
    fn parse_listing(&self, body: &str, now_ms: i64) -> Result<Vec<Listing>, FetchError>;
    /// What the venue's trade ids say about order and completeness.
    fn trade_ids(&self) -> TradeIds;
    /// The trades of `symbol` after `anchor` (the last one known before a hole; None: nothing
    /// recorded yet) and, where known, before `until` (the first one known after it), fetched
    /// page by page as the venue pages them.
    fn trade_history(
        &self,
        symbol: &Arc<str>,
        anchor: Option<TradeMark>,
        until: Option<TradeMark>,
    ) -> Box<dyn TradeHistory>;
    /// The bars of one interval of `symbol` from `from_ms` on (the first bar not held final;
    /// None: nothing recorded yet, the venue's recent bars are history), fetched as the venue
    /// pages them (None: the venue has no history for this interval).
    fn kline_history(
        &self,
        symbol: &Arc<str>,
        interval: &Arc<str>,
        from_ms: Option<i64>,
    ) -> Option<Box<dyn KlineHistory>>;
    /// The venue's validation limits (the configuration may tighten or widen the clock
    /// tolerances: [`RecordConfig::rules`]).
    fn rules(&self) -> validate::Rules;
    /// Per-connection decoding state (decompressor, open kline bars) for the symbols the
    /// connection carries; every event it emits passed `rules`.
    fn session(
        &self,
        symbols: &[Arc<str>],
        max_frame_bytes: usize,
        rules: validate::Rules,
    ) -> Box<dyn VenueSession>;
}

pub trait VenueSession: Send {
    /// Decodes one frame, appending its events to `out`.
    fn on_frame(
        &mut self,
        frame: Frame<'_>,
        recv_time_us: i64,
        out: &mut Vec<Event>,
    ) -> Result<Reaction, DecodeError>;
}

/// A venue's values for keys the configuration leaves out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defaults {
    pub ws_url: &'static str,
    pub rest_url: &'static str,
    pub klines: Vec<String>,
    pub depth: DepthSetting,
}

/// One market as the venue lists it, in neutral words.
#[derive(Debug, Clone, PartialEq)]
pub struct Listing {
    pub market: Market,
    pub kind: InstrumentType,
    /// Listed but not trading (suspended): not recorded under `symbols = "all"`.
    pub tradable: bool,
}

/// One frame to send after connecting and the streams (symbol, stream) it opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The request id the venue's replies name (None: the venue's replies name none).
    pub id: Option<u64>,
    pub frame: String,
    pub streams: Vec<(Arc<str>, StreamKey)>,
}

/// What one socket of a venue takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketLimits {
    /// Symbols on one socket at most (v1: one).
    pub symbols: usize,
    /// Streams (channel subscriptions) on one socket at most.
    pub streams: usize,
    /// Frames the recorder may send per second on one socket (None: no limit).
    pub sends_per_s: Option<u32>,
    /// Pause between connecting and the first subscription.
    pub settle: Duration,
}

impl SocketLimits {
    /// One symbol per socket, subscribed at once (the v1 shape).
    pub const ONE_SYMBOL: SocketLimits = SocketLimits {
        symbols: 1,
        streams: usize::MAX,
        sends_per_s: None,
        settle: Duration::ZERO,
    };
}

/// One socket to open: the symbols it carries and their streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionPlan {
    /// For logs: the symbol when it carries one, else `first+N` (N more symbols).
    pub name: Arc<str>,
    pub symbols: Vec<Arc<str>>,
    pub streams: Vec<(Arc<str>, StreamKey)>,
}

/// Puts symbols on sockets in the order given, as many on each as `limits` allow; a symbol's
/// streams stay on one socket (one with more streams than a socket takes gets one alone).
pub fn pack(
    per_symbol: impl IntoIterator<Item = (Arc<str>, Vec<StreamKey>)>,
    limits: SocketLimits,
) -> Vec<ConnectionPlan> {
    let mut out: Vec<ConnectionPlan> = Vec::new();
    let mut cur: Option<ConnectionPlan> = None;
    for (symbol, streams) in per_symbol {
        if let Some(c) = &cur
            && (c.symbols.len() >= limits.symbols.max(1)
                || c.streams.len() + streams.len() > limits.streams)
        {
            out.extend(cur.take());
        }
        if streams.len() > limits.streams {
            tracing::warn!(%symbol, streams = streams.len(), limit = limits.streams,
                "a symbol has more streams than one socket takes; the venue may refuse some");
        }
        let c = cur.get_or_insert_with(|| ConnectionPlan {
            name: symbol.clone(),
            symbols: Vec::new(),
            streams: Vec::new(),
        });
        c.symbols.push(symbol.clone());
        c.streams
            .extend(streams.into_iter().map(|k| (symbol.clone(), k)));
    }
    out.extend(cur);
    for c in &mut out {
        if c.symbols.len() > 1 {
            c.name = Arc::from(format!("{}+{}", c.symbols[0], c.symbols.len() - 1));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syms(n: usize, streams: usize) -> Vec<(Arc<str>, Vec<StreamKey>)> {
        (0..n)
            .map(|i| {
                let s: Arc<str> = Arc::from(format!("s{i}"));
                let keys = (0..streams)
                    .map(|k| StreamKey::Kline(Arc::from(format!("{k}"))))
                    .collect();
                (s, keys)
            })
            .collect()
    }

    fn shape(plan: &[ConnectionPlan]) -> Vec<(String, usize, usize)> {
        plan.iter()
            .map(|c| (c.name.to_string(), c.symbols.len(), c.streams.len()))
            .collect()
    }

    #[test]
    fn fetch_errors_say_whether_asking_again_helps() {
        let http = |status| FetchError::Http {
            status,
            snippet: String::new(),
        };
        assert!(http(503).retryable() && http(500).retryable());
        assert!(!http(404).retryable() && !http(400).retryable());
        assert!(FetchError::Transport("reset".into()).retryable());
        assert!(FetchError::RateLimited { retry_after: None }.retryable());
        assert!(!FetchError::BadBody("x".into()).retryable());
        let refused = |retryable| FetchError::Refused {
            code: "10001".into(),
            message: "no".into(),
            retryable,
        };
        assert!(refused(true).retryable() && !refused(false).retryable());
        let e = http(502).context("recent trades");
        assert_eq!(e.to_string(), "HTTP 502: recent trades: ");
        assert_eq!(e.kind(), "http");
        let limited = FetchError::RateLimited {
            retry_after: Some(Duration::from_secs(3)),
        };
        assert_eq!(limited.to_string(), "rate limited, retry after 3 s");
    }

    #[test]
    fn one_symbol_per_socket() {
        let plan = pack(syms(3, 5), SocketLimits::ONE_SYMBOL);
        assert_eq!(
            shape(&plan),
            [
                ("s0".into(), 1, 5),
                ("s1".into(), 1, 5),
                ("s2".into(), 1, 5)
            ]
        );
        assert!(plan[1].streams.iter().all(|(s, _)| &**s == "s1"));
    }

    #[test]
    fn many_symbols_per_socket_up_to_both_limits() {
        let by_symbols = SocketLimits {
            symbols: 3,
            streams: 400,
            ..SocketLimits::ONE_SYMBOL
        };
        assert_eq!(
            shape(&pack(syms(7, 5), by_symbols)),
            [
                ("s0+2".into(), 3, 15),
                ("s3+2".into(), 3, 15),
                ("s6".into(), 1, 5)
            ]
        );
        // 400 subscriptions a socket, 4 streams a symbol: 100 symbols each
        let by_streams = SocketLimits {
            symbols: usize::MAX,
            streams: 400,
            ..SocketLimits::ONE_SYMBOL
        };
        let plan = pack(syms(250, 4), by_streams);
        assert_eq!(
            shape(&plan),
            [
                ("s0+99".into(), 100, 400),
                ("s100+99".into(), 100, 400),
                ("s200+49".into(), 50, 200)
            ]
        );
        // a symbol's streams are never split: one too big for a socket gets one alone
        let mut big = syms(1, 3);
        big.insert(1, (Arc::from("wide"), syms(1, 9).remove(0).1));
        big.push((Arc::from("last"), Vec::new()));
        let small = SocketLimits {
            symbols: 10,
            streams: 6,
            ..SocketLimits::ONE_SYMBOL
        };
        assert_eq!(
            shape(&pack(big, small)),
            [
                ("s0".into(), 1, 3),
                ("wide".into(), 1, 9),
                ("last".into(), 1, 0)
            ]
        );
    }
}

#[cfg(test)]
mod trade_id_tests {
    use super::TradeIds;
    use crate::model::TradeMark;

    #[test]
    fn only_ordered_ids_one_apart_are_adjacent() {
        let m = |trade_id, time_ms| TradeMark { time_ms, trade_id };
        assert!(TradeIds::Consecutive.adjacent(m(7, 100), m(8, 90)));
        assert!(TradeIds::Increasing.adjacent(m(7, 100), m(8, 200)));
        assert!(!TradeIds::Increasing.adjacent(m(7, 100), m(9, 200)));
        assert!(!TradeIds::Unordered.adjacent(m(7, 100), m(8, 200)));
        // synthesized (negative) ids say nothing, and the largest id has no successor
        assert!(!TradeIds::Consecutive.adjacent(m(-3, 100), m(-2, 200)));
        assert!(!TradeIds::Consecutive.adjacent(m(i64::MAX, 100), m(i64::MIN, 200)));
    }
}
