//! The exchange as a [`Venue`]: vocabulary and checks, socket plans under the 400-channel
//! cap, batched subscriptions, REST trade history paged back by time and candlesticks paged
//! forward.

use std::sync::Arc;
use std::time::Duration;

use super::rest;
use super::{BookUpdates, Dialect, ExchangeSession, RULES, check_symbol, interval};
use crate::config::{ConfigError, DepthSetting, RecordConfig, VenueOptions};
use crate::model::{InstrumentType, Interval, Kline, StreamKey, Trade, TradeMark};
use crate::venue::validate::Rules;
use crate::venue::{
    ConnectionPlan, Defaults, FetchError, HistoryRequest, KlineHistory, Listing, Reach,
    SocketLimits, Subscription, TradeHistory, TradeIds, Venue, VenueSession,
};

/// Channels one socket takes (the venue refuses the 401st with 40107); kept below it.
pub const CHANNELS_PER_SOCKET: usize = 380;
/// Requests a second per socket (the venue allows 100).
pub const SENDS_PER_S: u32 = 50;
/// Channels in one subscribe request (100 were accepted).
pub const CHANNELS_PER_REQUEST: usize = 50;
/// Trades one `public/get-trades` answers with at most.
pub const TRADES_PER_PAGE: usize = 150;
/// Bars asked for per `public/get-candlestick` page.
pub const BARS_PER_PAGE: usize = 300;
/// Pages one bar history walk asks for at most (a trade walk pages on until the venue's
/// answer says where its history ends: every page moves back in time, down to the anchor).
const MAX_PAGES: usize = 200;

pub struct CdcExchange {
    pub dialect: Dialect,
    pub book_updates: BookUpdates,
}

/// The registry's constructors (`[venue] book_updates = "delta" | "snapshot"`).
pub fn make_exchange(options: &VenueOptions) -> Result<Arc<dyn Venue>, ConfigError> {
    make(Dialect::Exchange, options)
}

pub fn make_v2(options: &VenueOptions) -> Result<Arc<dyn Venue>, ConfigError> {
    make(Dialect::V2, options)
}

fn make(dialect: Dialect, options: &VenueOptions) -> Result<Arc<dyn Venue>, ConfigError> {
    let mut book_updates = match dialect {
        Dialect::Exchange => BookUpdates::Delta,
        Dialect::V2 => BookUpdates::Snapshot,
    };
    for (k, v) in options {
        match (k.as_str(), v.as_str()) {
            ("book_updates", Some("delta")) if dialect == Dialect::Exchange => {
                book_updates = BookUpdates::Delta
            }
            ("book_updates", Some("snapshot")) => book_updates = BookUpdates::Snapshot,
            ("book_updates", _) => {
                return Err(ConfigError::new(
                    "venue.book_updates",
                    match dialect {
                        Dialect::Exchange => "expected \"delta\" or \"snapshot\"",
                        Dialect::V2 => "v2 books are snapshots only: \"snapshot\"",
                    },
                ));
            }
            _ => {
                return Err(ConfigError::new(
                    &format!("venue.{k}"),
                    format!(
                        "unknown field; {} takes book_updates besides kind, ws_url and rest_url",
                        dialect.name()
                    ),
                ));
            }
        }
    }
    Ok(Arc::new(CdcExchange {
        dialect,
        book_updates,
    }))
}

impl CdcExchange {
    /// The configured book depth (None: no book).
    fn depth(&self, d: &DepthSetting) -> Result<Option<i16>, String> {
        let allowed = self.dialect.depths();
        let words = || {
            allowed
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(" or ")
        };
        match d {
            DepthSetting::Off => Ok(None),
            DepthSetting::On => Ok(Some(allowed[0])),
            DepthSetting::Number(n) => i16::try_from(*n)
                .ok()
                .filter(|n| allowed.contains(n))
                .map(Some)
                .ok_or_else(|| format!("expected {} or false, got {n}", words())),
            DepthSetting::Word(w) => Err(format!("expected {} or false, got {w:?}", words())),
        }
    }

    fn channel_name(&self, symbol: &str, stream: &StreamKey) -> String {
        match stream {
            StreamKey::Trades => format!("trade.{symbol}"),
            StreamKey::Kline(tf) => format!("candlestick.{tf}.{symbol}"),
            StreamKey::Book(depth) => format!("book.{symbol}.{depth}"),
            StreamKey::Ticker => format!("ticker.{symbol}"),
        }
    }
}

impl Venue for CdcExchange {
    fn name(&self) -> &'static str {
        self.dialect.name()
    }

    fn interval(&self, name: &str) -> Option<Interval> {
        interval(self.dialect, name)
    }

    fn defaults(&self) -> Defaults {
        let (ws_url, rest_url) = match self.dialect {
            Dialect::Exchange => (
                "wss://stream.crypto.com/exchange/v1/market",
                "https://api.crypto.com/exchange/v1",
            ),
            Dialect::V2 => (
                "wss://stream.crypto.com/v2/market",
                "https://api.crypto.com/v2",
            ),
        };
        Defaults {
            ws_url,
            rest_url,
            klines: vec!["1m".into()],
            depth: DepthSetting::Number(10),
        }
    }

    fn check_record(&self, record: &RecordConfig) -> Result<(), ConfigError> {
        for s in &record.symbols {
            check_symbol(s).map_err(|m| ConfigError::new("record.symbols", m))?;
        }
        for k in record.klines() {
            if interval(self.dialect, k).is_none() {
                return Err(ConfigError::new(
                    "record.klines",
                    format!(
                        "unknown timeframe {k:?}; one of {}",
                        self.dialect.timeframes().join(" ")
                    ),
                ));
            }
        }
        self.depth(record.depth())
            .map_err(|m| ConfigError::new("record.depth", m))?;
        Ok(())
    }

    fn streams(&self, _symbol: &str, record: &RecordConfig) -> Vec<StreamKey> {
        let mut out = Vec::new();
        if record.trades {
            out.push(StreamKey::Trades);
        }
        for tf in record.klines() {
            out.push(StreamKey::Kline(Arc::from(tf.as_str())));
        }
        if let Ok(Some(d)) = self.depth(record.depth()) {
            out.push(StreamKey::Book(d));
        }
        if record.ticker {
            out.push(StreamKey::Ticker);
        }
        out
    }

    fn socket_limits(&self) -> SocketLimits {
        SocketLimits {
            symbols: usize::MAX,
            streams: CHANNELS_PER_SOCKET,
            sends_per_s: Some(SENDS_PER_S),
            // requests count against the calendar second of the connect: wait it out, with
            // a margin for the server's clock reading the connect earlier than ours
            settle: Duration::from_millis(1_100),
        }
    }

    fn subscribe_frames(&self, conn: &ConnectionPlan, _record: &RecordConfig) -> Vec<Subscription> {
        // books apart (they carry the book parameters), the rest batched
        let (books, rest): (Vec<_>, Vec<_>) = conn
            .streams
            .iter()
            .cloned()
            .partition(|(_, k)| matches!(k, StreamKey::Book(_)));
        let nonce = crate::model::now_ms();
        let mut out = Vec::new();
        for group in [rest, books] {
            for chunk in group.chunks(CHANNELS_PER_REQUEST) {
                let channels: Vec<String> =
                    chunk.iter().map(|(s, k)| self.channel_name(s, k)).collect();
                let id = out.len() as u64 + 1;
                out.push(Subscription {
                    id: Some(id),
                    frame: super::subscribe_request(id, &channels, self.book_updates, nonce),
                    streams: chunk.to_vec(),
                });
            }
        }
        out
    }

    fn unsubscribe_frame(&self, id: u64, streams: &[(Arc<str>, StreamKey)]) -> Option<String> {
        let channels: Vec<String> = streams
            .iter()
            .map(|(s, k)| self.channel_name(s, k))
            .collect();
        Some(super::unsubscribe_request(
            id,
            &channels,
            crate::model::now_ms(),
        ))
    }

    fn markets_path(&self) -> &'static str {
        "/public/get-instruments"
    }

    fn parse_listing(&self, body: &str, now_ms: i64) -> Result<Vec<Listing>, FetchError> {
        Ok(rest::parse_instruments(self.dialect, body, now_ms)?
            .into_iter()
            .map(|l| Listing {
                // v2 lists spot pairs only, without a type
                kind: match l.kind.as_deref() {
                    None | Some("CCY_PAIR") | Some("SPOT") => InstrumentType::Spot,
                    Some("PERPETUAL_SWAP") => InstrumentType::Perpetual,
                    Some("FUTURE") => InstrumentType::Future,
                    Some(_) => InstrumentType::Other,
                },
                market: l.market,
                tradable: l.tradable,
            })
            .collect())
    }

    fn trade_ids(&self) -> TradeIds {
        // ids name trades; their arithmetic means nothing: order by time
        TradeIds::Unordered
    }

    fn trade_history(
        &self,
        symbol: &Arc<str>,
        anchor: Option<TradeMark>,
        until: Option<TradeMark>,
    ) -> Box<dyn TradeHistory> {
        Box::new(TradesByTime {
            dialect: self.dialect,
            symbol: symbol.clone(),
            anchor,
            // the walk starts at the hole's far end (its millisecond again: `end_ts` is
            // exclusive), not at now: what the socket delivered since is not asked again
            end_ms: anchor.and(until).map(|u| u.time_ms + 1),
            pages: 0,
            done: false,
            reached: anchor.is_none(),
            oldest: None,
        })
    }

    fn kline_history(
        &self,
        symbol: &Arc<str>,
        interval: &Arc<str>,
        from_ms: Option<i64>,
    ) -> Option<Box<dyn KlineHistory>> {
        let iv = self::interval(self.dialect, interval)?;
        Some(Box::new(CandlesForward {
            dialect: self.dialect,
            symbol: symbol.clone(),
            interval: interval.clone(),
            len: iv.fixed_ms(),
            next_from: from_ms,
            pages: 0,
            done: false,
            answered: Vec::new(),
        }))
    }

    fn rules(&self) -> Rules {
        RULES
    }

    fn session(
        &self,
        symbols: &[Arc<str>],
        _max_frame_bytes: usize,
        rules: Rules,
    ) -> Box<dyn VenueSession> {
        Box::new(ExchangeSession::new(self.dialect, symbols.to_vec(), rules))
    }
}

/// `public/get-trades` newest first, paged back by time (`end_ts` the oldest trade's time,
/// exclusive, plus its millisecond again: trades sharing it are deduped) until a page
/// reaches the anchor.
struct TradesByTime {
    dialect: Dialect,
    symbol: Arc<str>,
    anchor: Option<TradeMark>,
    /// `end_ts` of the next page (None: now).
    end_ms: Option<i64>,
    pages: usize,
    done: bool,
    reached: bool,
    oldest: Option<TradeMark>,
}

impl TradeHistory for TradesByTime {
    fn next_request(&mut self) -> Option<String> {
        if self.done {
            return None;
        }
        self.pages += 1;
        let mut path = format!(
            "/public/get-trades?instrument_name={}&count={TRADES_PER_PAGE}",
            self.symbol
        );
        if let Some(a) = self.anchor {
            path.push_str(&format!("&start_ts={}", a.time_ms));
        }
        if let Some(e) = self.end_ms {
            path.push_str(&format!("&end_ts={e}"));
        }
        Some(path)
    }

    fn take(&mut self, body: &str, recv_time_us: i64) -> Result<Vec<Trade>, FetchError> {
        let trades = rest::parse_trades(self.dialect, body, &self.symbol, recv_time_us)?;
        let Some(first) = trades.first() else {
            // nothing older: what the venue has ends here
            self.done = true;
            return Ok(trades);
        };
        let page_oldest = TradeMark {
            time_ms: first.event_time_ms,
            trade_id: first.trade_id,
        };
        let progressed = self.oldest.is_none_or(|o| page_oldest < o);
        self.oldest = Some(self.oldest.map_or(page_oldest, |o| o.min(page_oldest)));
        match self.anchor {
            None => self.done = true, // nothing recorded before: the newest page is history
            Some(a) => {
                if page_oldest.time_ms <= a.time_ms {
                    // at the anchor's millisecond (`start_ts` is inclusive: a venue that
                    // still has the anchor answers with it)
                    self.reached = true;
                    self.done = true;
                } else if trades.len() < TRADES_PER_PAGE {
                    // all the venue has from `start_ts` on, without the anchor: a venue
                    // whose history window begins after it answers from the window's edge
                    self.done = true;
                } else if !progressed {
                    self.done = true; // a millisecond with more trades than a page
                } else {
                    self.end_ms = Some(page_oldest.time_ms + 1);
                }
            }
        }
        Ok(trades)
    }

    fn reach(&self, _until: Option<TradeMark>) -> Reach {
        if self.reached {
            Reach::Anchor
        } else {
            Reach::Short {
                why: format!(
                    "older than the venue's trade history (it ends {} {} of {TRADES_PER_PAGE} back)",
                    self.pages,
                    if self.pages == 1 { "page" } else { "pages" }
                ),
            }
        }
    }
}

/// `public/get-candlestick` paged forward from the hole's start (`start_ts`), a reply of
/// fewer bars than asked being the newest.
struct CandlesForward {
    dialect: Dialect,
    symbol: Arc<str>,
    interval: Arc<str>,
    len: Option<i64>,
    /// `start_ts` of the next page (None: the newest bars).
    next_from: Option<i64>,
    pages: usize,
    done: bool,
    answered: Vec<(i64, i64)>,
}

impl KlineHistory for CandlesForward {
    fn next_request(&mut self) -> Option<HistoryRequest> {
        if self.done || self.pages >= MAX_PAGES {
            return None;
        }
        self.pages += 1;
        let mut path = format!(
            "/public/get-candlestick?instrument_name={}&timeframe={}&count={BARS_PER_PAGE}",
            self.symbol, self.interval
        );
        if let Some(f) = self.next_from {
            path.push_str(&format!("&start_ts={f}"));
        }
        Some(HistoryRequest::Rest(path))
    }

    fn take_rest(&mut self, body: &str, recv_time_us: i64) -> Result<Vec<Kline>, FetchError> {
        let bars = rest::parse_candles(
            self.dialect,
            body,
            &self.symbol,
            &self.interval,
            recv_time_us,
        )?;
        let (Some(first), Some(last)) = (bars.first(), bars.last()) else {
            self.done = true;
            return Ok(bars);
        };
        let (first, last) = (first.open_time_ms, last.open_time_ms);
        // a page starting after `start_ts`: the slots before it are not the venue's to give
        self.answered.push((first, last));
        let next = last + self.len.unwrap_or(1);
        if self.next_from.is_none() || bars.len() < BARS_PER_PAGE || self.next_from >= Some(next) {
            self.done = true;
        } else {
            self.next_from = Some(next);
        }
        Ok(bars)
    }

    fn take_socket(&mut self, _bars: &[Kline]) {}

    fn answered(&self) -> Vec<(i64, i64)> {
        self.answered.clone()
    }
}
