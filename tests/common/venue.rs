//! A test venue: the real v1 venue with hooks, for tests that need a venue shape v1 does not
//! have (several symbols a socket, numbered book updates) or faults inside it (panics).

use std::sync::Arc;

use mdrec::config::{ConfigError, RecordConfig};
use mdrec::model::{Interval, StreamKey, TradeMark};
use mdrec::venue::cdc_v1::CdcV1;
use mdrec::venue::validate::Rules;
use mdrec::venue::{
    ConnectionPlan, Defaults, FetchError, KlineHistory, Listing, SocketLimits, Subscription,
    TradeHistory, TradeIds, Venue, VenueSession,
};

type OnSubscribe = Box<dyn Fn(&ConnectionPlan) + Send + Sync>;
type WrapSession =
    Box<dyn Fn(&[Arc<str>], Box<dyn VenueSession>) -> Box<dyn VenueSession> + Send + Sync>;

/// v1, except where a hook is set.
#[derive(Default)]
pub struct TestVenue {
    /// Socket limits instead of v1's one symbol per socket.
    pub limits: Option<SocketLimits>,
    /// Runs in the worker before each connection's subscriptions are made.
    pub on_subscribe: Option<OnSubscribe>,
    /// Wraps each decoding session v1 makes.
    pub wrap_session: Option<WrapSession>,
}

impl Venue for TestVenue {
    fn name(&self) -> &'static str {
        CdcV1.name()
    }
    fn interval(&self, name: &str) -> Option<Interval> {
        CdcV1.interval(name)
    }
    fn defaults(&self) -> Defaults {
        CdcV1.defaults()
    }
    fn check_record(&self, record: &RecordConfig) -> Result<(), ConfigError> {
        CdcV1.check_record(record)
    }
    fn streams(&self, symbol: &str, record: &RecordConfig) -> Vec<StreamKey> {
        CdcV1.streams(symbol, record)
    }
    fn socket_limits(&self) -> SocketLimits {
        self.limits.unwrap_or_else(|| CdcV1.socket_limits())
    }
    fn subscribe_frames(&self, conn: &ConnectionPlan, record: &RecordConfig) -> Vec<Subscription> {
        if let Some(hook) = &self.on_subscribe {
            hook(conn);
        }
        CdcV1.subscribe_frames(conn, record)
    }
    fn markets_path(&self) -> &'static str {
        CdcV1.markets_path()
    }
    fn parse_listing(&self, body: &str, now_ms: i64) -> Result<Vec<Listing>, FetchError> {
        CdcV1.parse_listing(body, now_ms)
    }
    fn trade_ids(&self) -> TradeIds {
        CdcV1.trade_ids()
    }
    fn trade_history(
        &self,
        symbol: &Arc<str>,
        anchor: Option<TradeMark>,
        until: Option<TradeMark>,
    ) -> Box<dyn TradeHistory> {
        CdcV1.trade_history(symbol, anchor, until)
    }
    fn kline_history(
        &self,
        symbol: &Arc<str>,
        interval: &Arc<str>,
        from_ms: Option<i64>,
    ) -> Option<Box<dyn KlineHistory>> {
        CdcV1.kline_history(symbol, interval, from_ms)
    }
    fn rules(&self) -> Rules {
        CdcV1.rules()
    }
    fn session(
        &self,
        symbols: &[Arc<str>],
        max_frame_bytes: usize,
        rules: Rules,
    ) -> Box<dyn VenueSession> {
        let inner = CdcV1.session(symbols, max_frame_bytes, rules);
        match &self.wrap_session {
            Some(wrap) => wrap(symbols, inner),
            None => inner,
        }
    }
}
