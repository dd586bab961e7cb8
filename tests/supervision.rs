//! Supervision: a panic in one symbol's worker restarts that worker alone; a panic inside the
//! decoder costs one frame, not the connection. The real v1 venue is wrapped to inject them.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{recorder_config, sqlite_db, wait_for};
use mdrec::config::RecordConfig;
use mdrec::model::{Event, Market, StreamKey};
use mdrec::sim::{self, SimConfig};
use mdrec::store::Store;
use mdrec::venue::cdc_v1::CdcV1;
use mdrec::venue::{
    ConnectionPlan, DecodeError, Frame, Reaction, SocketLimits, Subscription, Venue, VenueSession,
};
use tokio_util::sync::CancellationToken;

/// v1, except: btcusdt's first subscription panics (kills the worker task), and ethusdt's
/// decoder panics once on a book snapshot.
struct Faulty {
    subscribe_armed: AtomicBool,
    decoder_armed: Arc<AtomicBool>,
}

impl Venue for Faulty {
    fn name(&self) -> &'static str {
        CdcV1.name()
    }
    fn streams(&self, symbol: &str, record: &RecordConfig) -> Vec<StreamKey> {
        CdcV1.streams(symbol, record)
    }
    fn socket_limits(&self) -> SocketLimits {
        CdcV1.socket_limits()
    }
    fn subscribe_frames(&self, conn: &ConnectionPlan, record: &RecordConfig) -> Vec<Subscription> {
        if conn.symbols.iter().any(|s| &**s == "btcusdt")
            && self.subscribe_armed.swap(false, Ordering::SeqCst)
        {
            panic!("injected worker panic");
        }
        CdcV1.subscribe_frames(conn, record)
    }
    fn markets_path(&self) -> &'static str {
        CdcV1.markets_path()
    }
    fn parse_markets(&self, body: &str, now_ms: i64) -> Result<Vec<Market>, String> {
        CdcV1.parse_markets(body, now_ms)
    }
    fn recent_trades_path(&self, symbol: &str) -> String {
        CdcV1.recent_trades_path(symbol)
    }
    fn parse_recent_trades(
        &self,
        body: &str,
        symbol: &Arc<str>,
        recv: i64,
    ) -> Result<Vec<mdrec::model::Trade>, String> {
        CdcV1.parse_recent_trades(body, symbol, recv)
    }
    fn recent_trades_limit(&self) -> usize {
        CdcV1.recent_trades_limit()
    }
    fn klines_path(&self, symbol: &str, interval: &str) -> Option<String> {
        CdcV1.klines_path(symbol, interval)
    }
    fn parse_klines(
        &self,
        body: &str,
        symbol: &Arc<str>,
        interval: &Arc<str>,
        recv: i64,
    ) -> Result<Vec<mdrec::model::Kline>, String> {
        CdcV1.parse_klines(body, symbol, interval, recv)
    }
    fn kline_history_request(&self, symbol: &str, interval: &str, since_ms: i64) -> Option<String> {
        CdcV1.kline_history_request(symbol, interval, since_ms)
    }
    fn rules(&self) -> mdrec::venue::validate::Rules {
        CdcV1.rules()
    }
    fn session(
        &self,
        symbols: &[Arc<str>],
        max_frame_bytes: usize,
        rules: mdrec::venue::validate::Rules,
    ) -> Box<dyn VenueSession> {
        let armed = symbols
            .iter()
            .any(|s| &**s == "ethusdt")
            .then(|| self.decoder_armed.clone());
        Box::new(FaultySession {
            inner: CdcV1.session(symbols, max_frame_bytes, rules),
            armed,
        })
    }
}

struct FaultySession {
    inner: Box<dyn VenueSession>,
    armed: Option<Arc<AtomicBool>>,
}

impl VenueSession for FaultySession {
    fn on_frame(
        &mut self,
        frame: Frame<'_>,
        recv: i64,
        out: &mut Vec<Event>,
    ) -> Result<Reaction, DecodeError> {
        let r = self.inner.on_frame(frame, recv, out);
        let is_book = out.iter().any(|e| matches!(e, Event::BookSnapshot(_)));
        if is_book
            && self
                .armed
                .as_ref()
                .is_some_and(|a| a.swap(false, Ordering::SeqCst))
        {
            panic!("injected decoder panic");
        }
        r
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_are_isolated_per_symbol_and_per_frame() {
    let symbols = ["btcusdt", "ethusdt"];
    let (_dir, url) = sqlite_db();
    let sim = sim::start(SimConfig {
        seed: 11,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let cfg = recorder_config(
        &sim.ws_url(),
        &sim.rest_url(),
        &url,
        &symbols,
        "[connection]\nreconnect_initial_ms = 50",
    );
    let decoder_armed = Arc::new(AtomicBool::new(true));
    let venue = Arc::new(Faulty {
        subscribe_armed: AtomicBool::new(true),
        decoder_armed: decoder_armed.clone(),
    });
    let stop = CancellationToken::new();
    let recorder = tokio::spawn(mdrec::recorder::run_with(cfg, venue, stop.clone()));
    wait_for(
        "both symbols streaming after the injected panics",
        Duration::from_secs(30),
        || async {
            !decoder_armed.load(Ordering::SeqCst)
                && symbols.iter().all(|s| sim.delivered(s).len() >= 150)
        },
    )
    .await;
    sim.halt();
    let store = Store::connect(&url).await.unwrap();
    common::wait_stored_equals_delivered(&store, &sim, &symbols).await;
    stop.cancel();
    let stats = recorder.await.unwrap().unwrap();

    let btc = &stats.workers["btcusdt"];
    let eth = &stats.workers["ethusdt"];
    assert_eq!(
        btc.restarts.load(Ordering::Relaxed),
        1,
        "btcusdt worker restarted once"
    );
    assert_eq!(
        eth.restarts.load(Ordering::Relaxed),
        0,
        "ethusdt never noticed"
    );
    assert_eq!(
        eth.decode_errors.load(Ordering::Relaxed),
        1,
        "the decoder panic cost one frame"
    );

    let sessions = common::session_reasons(&store).await;
    assert_eq!(
        sessions,
        vec![
            (
                "btcusdt".to_string(),
                Some("worker panicked: injected worker panic".to_string())
            ),
            ("btcusdt".to_string(), Some("shutdown".to_string())),
            ("ethusdt".to_string(), Some("shutdown".to_string())),
        ]
    );
    for s in symbols {
        let stored = common::stored_ids(&store, s).await;
        assert_eq!(stored, sim.delivered(s), "{s}");
    }
    common::report("panics", &store, &sim, &symbols).await;
    store.close().await;
    sim.shutdown().await;
}
