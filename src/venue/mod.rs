//! Venue protocols. Each venue is one folder: it turns socket frames into [`Event`]s and says
//! what to send (subscriptions, pongs). The worker, writer and store know nothing venue-specific.

pub mod cdc_v1;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use crate::config::RecordConfig;
use crate::model::{Event, Kline, Market, StreamKey, Trade};

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

/// What a frame asks of the worker besides the events it produced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reaction {
    /// A text frame to send back (e.g. a pong).
    pub reply: Option<String>,
    /// The frame was a heartbeat, a subscription ack or similar: alive, but no market data.
    pub control: bool,
    /// Messages dropped as invalid, and rows kept though the venue clock is far off.
    pub findings: validate::Findings,
}

/// A venue protocol family.
pub trait Venue: Send + Sync + 'static {
    /// The `venue` column value (`cdc-v1`).
    fn name(&self) -> &'static str;
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
    /// REST path (under `rest_url`) that lists the venue's markets.
    fn markets_path(&self) -> &'static str;
    /// Parses that listing.
    fn parse_markets(&self, body: &str, now_ms: i64) -> Result<Vec<Market>, String>;
    /// REST path (under `rest_url`) of the most recent trades of a symbol.
    fn recent_trades_path(&self, symbol: &str) -> String;
    /// Parses that reply into trades (`source = rest`), oldest first.
    fn parse_recent_trades(
        &self,
        body: &str,
        symbol: &Arc<str>,
        recv_time_us: i64,
    ) -> Result<Vec<Trade>, String>;
    /// How many trades `recent_trades_path` answers with at most: a full answer may not
    /// reach back to the start of a hole, a shorter one holds everything the venue has.
    fn recent_trades_limit(&self) -> usize;
    /// REST path of a symbol's recent bars of one interval (None: no such interval).
    fn klines_path(&self, symbol: &str, interval: &str) -> Option<String>;
    /// Parses that reply, oldest first; the newest bar is left open.
    fn parse_klines(
        &self,
        body: &str,
        symbol: &Arc<str>,
        interval: &Arc<str>,
        recv_time_us: i64,
    ) -> Result<Vec<Kline>, String>;
    /// A websocket request for the bars from `since_ms` on (older history than REST keeps);
    /// its reply is decoded by a [`VenueSession`] like any frame.
    fn kline_history_request(&self, symbol: &str, interval: &str, since_ms: i64) -> Option<String>;
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

/// One frame to send after connecting and the streams (symbol, stream) it opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
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

/// Builds a venue's implementation.
pub type MakeVenue = fn() -> Arc<dyn Venue>;

/// Every venue: its `venue.kind` (the `venue` column value) and its constructor. The one
/// place a new venue is registered.
pub const REGISTRY: &[(&str, MakeVenue)] = &[(cdc_v1::NAME, || Arc::new(cdc_v1::CdcV1))];

/// The venue named by `venue.kind` (validated in config).
pub fn venue_for(kind: &str) -> Option<Arc<dyn Venue>> {
    REGISTRY
        .iter()
        .find(|(n, _)| *n == kind)
        .map(|(_, make)| make())
}

/// The static name of a known venue (rows read back from storage carry `&'static str`).
pub fn static_name(name: &str) -> Option<&'static str> {
    REGISTRY.iter().map(|(n, _)| *n).find(|n| *n == name)
}

/// The registered kinds, quoted, for messages: `"cdc-v1"`.
pub fn kinds() -> String {
    REGISTRY
        .iter()
        .map(|(n, _)| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
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
