//! Venue protocols. Each venue is one folder: it turns socket frames into [`Event`]s and says
//! what to send (subscriptions, pongs). The worker, writer and store know nothing venue-specific.

pub mod cdc_v1;
pub mod validate;

use std::sync::Arc;

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
    /// Text frames to send after connecting, one per channel, with the stream each carries
    /// (a channel silent while others flow is subscribed again with the same frame).
    fn subscribe_frames(&self, symbol: &str, record: &RecordConfig) -> Vec<(StreamKey, String)>;
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
    /// Per-connection decoding state (decompressor, open kline bars); every event it emits
    /// passed `rules`.
    fn session(
        &self,
        symbol: Arc<str>,
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
