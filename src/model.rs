//! Venue-neutral events: what normalizers produce and the writer stores.
//!
//! Every market event keeps both clocks: `event_time_ms` as the exchange stamped it and
//! `recv_time_us` as taken when the frame was read from the socket. Neither overwrites the other.

use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize};

use crate::decimal::Dec;

/// Events cross process lifetimes in the writer's spool; venue names come back as the
/// `&'static str` events carry.
fn venue_name<'de, D: Deserializer<'de>>(d: D) -> Result<&'static str, D::Error> {
    let s = String::deserialize(d)?;
    intern_venue(&s).ok_or_else(|| serde::de::Error::custom(format!("unknown venue {s:?}")))
}

/// Most distinct venue names one process takes from outside (a build registers three).
const VENUE_NAMES_MAX: usize = 64;

/// The `&'static str` for a venue name read back (spool files): each distinct name is
/// leaked once, so a process holds a handful; None past [`VENUE_NAMES_MAX`] names or for
/// text no venue is named (empty, over 64 bytes, other than `[a-z0-9_-]`).
pub fn intern_venue(name: &str) -> Option<&'static str> {
    static NAMES: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let plausible = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !plausible {
        return None;
    }
    let mut names = NAMES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(known) = names.iter().find(|n| **n == name) {
        return Some(known);
    }
    if names.len() >= VENUE_NAMES_MAX {
        return None;
    }
    let leaked: &'static str = Box::leak(name.to_string().into_boxed_str());
    names.push(leaked);
    Some(leaked)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InstrumentType {
    Spot,
    Perpetual,
    Future,
    /// Indices, options and whatever else a venue lists.
    Other,
}

impl InstrumentType {
    pub const ALL: [InstrumentType; 4] = [
        InstrumentType::Spot,
        InstrumentType::Perpetual,
        InstrumentType::Future,
        InstrumentType::Other,
    ];

    /// The word the configuration uses.
    pub fn name(self) -> &'static str {
        match self {
            InstrumentType::Spot => "spot",
            InstrumentType::Perpetual => "perpetual",
            InstrumentType::Future => "future",
            InstrumentType::Other => "other",
        }
    }

    pub fn from_name(s: &str) -> Option<InstrumentType> {
        Self::ALL.into_iter().find(|t| t.name() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Side {
    Buy,
    Sell,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Buy => "buy",
            Side::Sell => "sell",
        }
    }

    /// Venues spell sides `buy`, `BUY`, `Buy`: compare without case.
    pub fn parse(s: &str) -> Option<Side> {
        if s.eq_ignore_ascii_case("buy") {
            Some(Side::Buy)
        } else if s.eq_ignore_ascii_case("sell") {
            Some(Side::Sell)
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BookSide {
    Bid,
    Ask,
}

impl BookSide {
    pub fn as_str(self) -> &'static str {
        match self {
            BookSide::Bid => "bid",
            BookSide::Ask => "ask",
        }
    }
}

/// Where a row came from: the live stream or a REST backfill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Source {
    Ws,
    Rest,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Ws => "ws",
            Source::Rest => "rest",
        }
    }
}

/// A trade as a position in its stream: exchange time and the venue's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TradeMark {
    pub time_ms: i64,
    pub trade_id: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trade {
    #[serde(deserialize_with = "venue_name")]
    pub venue: &'static str,
    pub symbol: Arc<str>,
    /// The venue's id; negative when the venue sent none (synthesized by the venue's normalizer
    /// from the trade's content, so a replay dedupes).
    pub trade_id: i64,
    pub side: Side,
    pub price: Dec,
    pub qty: Dec,
    pub quote_qty: Option<Dec>,
    pub event_time_ms: i64,
    pub recv_time_us: i64,
    pub source: Source,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kline {
    #[serde(deserialize_with = "venue_name")]
    pub venue: &'static str,
    pub symbol: Arc<str>,
    /// The venue's own interval name as configured ([`Interval::name`]).
    pub interval: Arc<str>,
    pub open_time_ms: i64,
    pub open: Dec,
    pub high: Dec,
    pub low: Dec,
    pub close: Dec,
    pub volume: Dec,
    pub quote_volume: Option<Dec>,
    /// True once a later bar was seen (the venue has no closed flag).
    pub closed: bool,
    pub event_time_ms: i64,
    pub recv_time_us: i64,
    pub source: Source,
}

pub type Level = (Dec, Dec);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BookSnapshot {
    #[serde(deserialize_with = "venue_name")]
    pub venue: &'static str,
    pub symbol: Arc<str>,
    pub depth_step: i16,
    pub event_time_ms: i64,
    pub recv_time_us: i64,
    /// Best first.
    pub bids: Vec<Level>,
    /// Best first.
    pub asks: Vec<Level>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BookDelta {
    #[serde(deserialize_with = "venue_name")]
    pub venue: &'static str,
    pub symbol: Arc<str>,
    pub depth_step: i16,
    pub event_time_ms: i64,
    pub recv_time_us: i64,
    /// Order within the frame (frames carrying several changes keep their order).
    pub seq: i32,
    pub side: BookSide,
    pub price: Dec,
    /// Zero removes the level.
    pub qty: Dec,
    /// The venue's number for the update this change belongs to (None: the venue numbers none).
    #[serde(default)]
    pub update_id: Option<i64>,
    /// The update it follows; a break in the chain means updates were lost.
    #[serde(default)]
    pub prev_update_id: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ticker {
    #[serde(deserialize_with = "venue_name")]
    pub venue: &'static str,
    pub symbol: Arc<str>,
    pub event_time_ms: i64,
    pub recv_time_us: i64,
    pub open: Option<Dec>,
    pub high: Option<Dec>,
    pub low: Option<Dec>,
    pub close: Option<Dec>,
    pub volume: Option<Dec>,
    pub quote_volume: Option<Dec>,
    pub change: Option<Dec>,
    /// The best bid and ask with their sizes, where the venue's ticker carries them (spool
    /// files of earlier builds have none).
    #[serde(default)]
    pub bid: Option<Dec>,
    #[serde(default)]
    pub bid_qty: Option<Dec>,
    #[serde(default)]
    pub ask: Option<Dec>,
    #[serde(default)]
    pub ask_qty: Option<Dec>,
}

/// A market as the venue lists it (`/v1/symbols`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Market {
    #[serde(deserialize_with = "venue_name")]
    pub venue: &'static str,
    pub symbol: Arc<str>,
    pub base: Option<String>,
    pub quote: Option<String>,
    pub price_precision: Option<i32>,
    pub qty_precision: Option<i32>,
    pub updated_at_ms: i64,
}

/// One websocket connection's life, so analysts can see when a symbol was live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    #[serde(deserialize_with = "venue_name")]
    pub venue: &'static str,
    pub symbol: Arc<str>,
    pub session_id: String,
    pub connected_at_us: i64,
    /// None while the connection is open.
    pub disconnected_at_us: Option<i64>,
    pub close_reason: Option<String>,
}

/// Where a hole in a stream stands.
/// Serialized as the stored words (`open`, `filled`, `unrecoverable`); spool files written
/// before that spell them capitalised and still read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GapStatus {
    /// Detected; backfill has not answered yet.
    #[serde(alias = "Open")]
    Open,
    /// Everything the venue published in the hole is stored.
    #[serde(alias = "Filled")]
    Filled,
    /// Part of the hole is beyond the venue's history: its exact bounds are recorded.
    #[serde(alias = "Unrecoverable")]
    Unrecoverable,
}

impl GapStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            GapStatus::Open => "open",
            GapStatus::Filled => "filled",
            GapStatus::Unrecoverable => "unrecoverable",
        }
    }

    pub fn parse(s: &str) -> Option<GapStatus> {
        Some(match s {
            "open" => GapStatus::Open,
            "filled" => GapStatus::Filled,
            "unrecoverable" => GapStatus::Unrecoverable,
            _ => return None,
        })
    }
}

/// A `gaps` row: a stretch of one stream the websocket did not deliver. Times are the
/// venue's clock. For trades `start_ms` is the last trade known before the hole and, once
/// resolved, `end_ms` the first trade known after it (both exclusive); for klines they are
/// the open time of the first bar not held final and the first bar recovered after the hole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gap {
    #[serde(deserialize_with = "venue_name")]
    pub venue: &'static str,
    pub symbol: Arc<str>,
    /// [`StreamKey::name`]: `trades`, `kline_<interval>`, `book_<depth_step>`.
    pub stream: String,
    pub start_ms: i64,
    pub end_ms: Option<i64>,
    pub status: GapStatus,
    /// Local clock, epoch ms.
    pub detected_at_ms: i64,
    pub resolved_at_ms: Option<i64>,
    pub rows_recovered: i64,
    pub detail: Option<String>,
}

impl Gap {
    /// Which of two versions of one row wins: the later word on it (resolution or detection).
    pub fn version(&self) -> i64 {
        self.resolved_at_ms.unwrap_or(self.detected_at_ms)
    }
}

/// The schema's tables: the one list batches, writer counters, row counts and metrics
/// walk (a match over it does not compile while a table is left out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Markets,
    Trades,
    Klines,
    BookSnapshots,
    BookDeltas,
    Tickers,
    Sessions,
    Gaps,
    RejectedRows,
}

impl Table {
    /// Every table, in schema order.
    pub const ALL: [Table; 9] = [
        Table::Markets,
        Table::Trades,
        Table::Klines,
        Table::BookSnapshots,
        Table::BookDeltas,
        Table::Tickers,
        Table::Sessions,
        Table::Gaps,
        Table::RejectedRows,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Table::Markets => "markets",
            Table::Trades => "trades",
            Table::Klines => "klines",
            Table::BookSnapshots => "book_snapshots",
            Table::BookDeltas => "book_deltas",
            Table::Tickers => "tickers",
            Table::Sessions => "sessions",
            Table::Gaps => "gaps",
            Table::RejectedRows => "rejected_rows",
        }
    }

    /// Position in [`Table::ALL`] (for per-table counters).
    pub fn index(self) -> usize {
        self as usize
    }
}

// a table added to the enum but not to `ALL` stops the build
const _: () = assert!(Table::ALL.len() == Table::RejectedRows as usize + 1);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound(deserialize = "'de: 'static"))]
pub enum Event {
    Trade(Trade),
    Kline(Kline),
    BookSnapshot(BookSnapshot),
    BookDelta(BookDelta),
    Ticker(Ticker),
    Session(Session),
    Market(Market),
    Gap(Gap),
}

/// One stream of a symbol (venue-neutral): what is subscribed, watched for liveness, named
/// in `gaps.stream`, coverage and metrics. Names are made and read only here.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StreamKey {
    Trades,
    /// Bars of one interval, by the venue's name for it.
    Kline(Arc<str>),
    /// The book kept at one `depth_step` (the venue's book variant: an aggregation step, a
    /// depth).
    Book(i16),
    Ticker,
}

impl StreamKey {
    /// The stream's name: `trades`, `kline_<interval>`, `book_<depth_step>`, `ticker`.
    pub fn name(&self) -> String {
        match self {
            StreamKey::Trades => "trades".into(),
            StreamKey::Kline(iv) => format!("kline_{iv}"),
            StreamKey::Book(step) => format!("book_{step}"),
            StreamKey::Ticker => "ticker".into(),
        }
    }

    /// Reads a name [`StreamKey::name`] made.
    pub fn parse(name: &str) -> Option<StreamKey> {
        Some(match name {
            "trades" => StreamKey::Trades,
            "ticker" => StreamKey::Ticker,
            _ => {
                if let Some(iv) = name.strip_prefix("kline_").filter(|s| !s.is_empty()) {
                    StreamKey::Kline(Arc::from(iv))
                } else {
                    StreamKey::Book(name.strip_prefix("book_")?.parse().ok()?)
                }
            }
        })
    }

    /// The interval of a kline stream.
    pub fn interval(&self) -> Option<&Arc<str>> {
        match self {
            StreamKey::Kline(iv) => Some(iv),
            _ => None,
        }
    }
}

impl Event {
    /// About what the event holds in memory (the value and what it owns on the heap; shared
    /// `Arc` names not counted): the unit of the writer queue's byte bound.
    pub fn approx_bytes(&self) -> usize {
        let dec = |d: &Dec| d.heap_bytes();
        let opt = |d: &Option<Dec>| d.as_ref().map_or(0, dec);
        let text = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        std::mem::size_of::<Event>()
            + match self {
                Event::Trade(t) => dec(&t.price) + dec(&t.qty) + opt(&t.quote_qty),
                Event::Kline(k) => {
                    dec(&k.open)
                        + dec(&k.high)
                        + dec(&k.low)
                        + dec(&k.close)
                        + dec(&k.volume)
                        + opt(&k.quote_volume)
                }
                Event::BookSnapshot(b) => {
                    (b.bids.capacity() + b.asks.capacity()) * std::mem::size_of::<Level>()
                        + b.bids
                            .iter()
                            .chain(&b.asks)
                            .map(|(p, q)| dec(p) + dec(q))
                            .sum::<usize>()
                }
                Event::BookDelta(d) => dec(&d.price) + dec(&d.qty),
                Event::Ticker(t) => [
                    &t.open,
                    &t.high,
                    &t.low,
                    &t.close,
                    &t.volume,
                    &t.quote_volume,
                    &t.change,
                    &t.bid,
                    &t.bid_qty,
                    &t.ask,
                    &t.ask_qty,
                ]
                .into_iter()
                .map(opt)
                .sum(),
                Event::Session(s) => s.session_id.len() + text(&s.close_reason),
                Event::Market(m) => text(&m.base) + text(&m.quote),
                Event::Gap(g) => g.stream.len() + text(&g.detail),
            }
    }

    /// The table this event becomes a row of.
    pub fn table(&self) -> Table {
        match self {
            Event::Trade(_) => Table::Trades,
            Event::Kline(_) => Table::Klines,
            Event::BookSnapshot(_) => Table::BookSnapshots,
            Event::BookDelta(_) => Table::BookDeltas,
            Event::Ticker(_) => Table::Tickers,
            Event::Session(_) => Table::Sessions,
            Event::Market(_) => Table::Markets,
            Event::Gap(_) => Table::Gaps,
        }
    }

    pub fn venue_symbol(&self) -> (&'static str, &str) {
        match self {
            Event::Trade(x) => (x.venue, &x.symbol),
            Event::Kline(x) => (x.venue, &x.symbol),
            Event::BookSnapshot(x) => (x.venue, &x.symbol),
            Event::BookDelta(x) => (x.venue, &x.symbol),
            Event::Ticker(x) => (x.venue, &x.symbol),
            Event::Session(x) => (x.venue, &x.symbol),
            Event::Market(x) => (x.venue, &x.symbol),
            Event::Gap(x) => (x.venue, &x.symbol),
        }
    }

    /// The market-data stream this event came from (None for control rows).
    pub fn stream(&self) -> Option<StreamKey> {
        Some(match self {
            Event::Trade(_) => StreamKey::Trades,
            Event::Kline(k) => StreamKey::Kline(k.interval.clone()),
            Event::BookSnapshot(b) => StreamKey::Book(b.depth_step),
            Event::BookDelta(d) => StreamKey::Book(d.depth_step),
            Event::Ticker(_) => StreamKey::Ticker,
            Event::Session(_) | Event::Market(_) | Event::Gap(_) => return None,
        })
    }
}

/// How long a kline bar lasts: a fixed length (bars on a grid from the epoch) or a calendar
/// period (no fixed grid: months have different lengths, weeks may start on a weekday).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Span {
    Fixed {
        ms: i64,
    },
    /// Calendar months, starting on the 1st at 00:00 UTC.
    Months(u32),
    /// Calendar weeks, starting on Monday at 00:00 UTC.
    Weeks(u32),
}

/// A kline interval: the venue's own name (stored as `interval`) and what it means.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Interval {
    pub name: Arc<str>,
    pub span: Span,
}

impl Interval {
    pub fn fixed(name: &str, ms: i64) -> Interval {
        Interval {
            name: Arc::from(name),
            span: Span::Fixed { ms },
        }
    }

    /// The grid step when bars sit on a fixed grid (None for calendar periods).
    pub fn fixed_ms(&self) -> Option<i64> {
        match self.span {
            Span::Fixed { ms } if ms > 0 => Some(ms),
            _ => None,
        }
    }
}

/// Longest free text (close reasons, gap details, listing names) stored, in bytes.
pub const MAX_TEXT_BYTES: usize = 512;

/// Text from the network made safe to store in either database: NUL (which PostgreSQL
/// refuses in `text`, poisoning a whole batch) and other control characters but tab and
/// newline become U+FFFD, and the text is cut to `cap` bytes on a character boundary
/// (ending in an ellipsis). Invalid UTF-8 never gets this far: bytes become text through
/// lossy decoding or a validating parser.
pub fn safe_text(s: &str, cap: usize) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| c.is_control() && c != '\t' && c != '\n';
    if s.len() <= cap && !s.chars().any(bad) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len().min(cap));
    for c in s.chars() {
        let c = if bad(c) {
            char::REPLACEMENT_CHARACTER
        } else {
            c
        };
        if out.len() + c.len_utf8() > cap.saturating_sub(3) && s.len() > cap {
            out.push('\u{2026}');
            break;
        }
        out.push(c);
    }
    std::borrow::Cow::Owned(out)
}

/// [`safe_text`] in place, for owned strings.
pub fn make_safe(s: &mut String) {
    if let std::borrow::Cow::Owned(clean) = safe_text(s, MAX_TEXT_BYTES) {
        *s = clean;
    }
}

/// [`safe_text`] for shared names (symbols from a listing).
pub fn make_safe_arc(s: &mut Arc<str>) {
    if let std::borrow::Cow::Owned(clean) = safe_text(s, MAX_TEXT_BYTES) {
        *s = Arc::from(clean);
    }
}

/// Microseconds since the Unix epoch, from the system clock.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

pub fn now_ms() -> i64 {
    now_us() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gap_statuses_serialize_as_stored_and_read_older_spellings() {
        for st in [GapStatus::Open, GapStatus::Filled, GapStatus::Unrecoverable] {
            let json = serde_json::to_string(&st).unwrap();
            assert_eq!(json, format!("\"{}\"", st.as_str()));
            assert_eq!(serde_json::from_str::<GapStatus>(&json).unwrap(), st);
            // spool files written before: capitalised
            let old = format!("\"{:?}\"", st);
            assert_eq!(serde_json::from_str::<GapStatus>(&old).unwrap(), st);
        }
    }

    #[test]
    fn the_table_list_is_in_index_order() {
        for (i, t) in Table::ALL.iter().enumerate() {
            assert_eq!(t.index(), i, "{t:?}");
        }
    }

    #[test]
    fn stream_names_read_back() {
        for k in [
            StreamKey::Trades,
            StreamKey::Ticker,
            StreamKey::Kline(Arc::from("1h")),
            StreamKey::Kline(Arc::from("kline_x")),
            StreamKey::Book(0),
            StreamKey::Book(50),
        ] {
            assert_eq!(StreamKey::parse(&k.name()), Some(k));
        }
        for bad in ["", "kline_", "book_", "book_x", "trade", "book_99999"] {
            assert_eq!(StreamKey::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn safe_text_replaces_nul_and_controls_and_caps_length() {
        assert!(matches!(
            safe_text("fine\tok\n", 64),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(safe_text("a\0b\u{7}c", 64), "a\u{fffd}b\u{fffd}c");
        let long = "\u{e9}".repeat(600); // 2 bytes each
        let cut = safe_text(&long, 512);
        assert!(cut.len() <= 512, "{}", cut.len());
        assert!(cut.ends_with('\u{2026}'));
        assert!(cut.chars().all(|c| c == '\u{e9}' || c == '\u{2026}'));
        // a short string with a NUL keeps its length class: no ellipsis
        assert_eq!(safe_text("\0", 512), "\u{fffd}");
    }
}
