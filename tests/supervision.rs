//! Supervision: a panic in one symbol's worker restarts that worker alone; a panic inside the
//! decoder costs one frame, not the connection. The real v1 venue is wrapped to inject them.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::venue::TestVenue;
use common::{recorder_config, sqlite_db, wait_for};
use mdrec::model::Event;
use mdrec::sim::{self, SimConfig};
use mdrec::store::Store;
use mdrec::venue::{DecodeError, Frame, Reaction, VenueSession};
use tokio_util::sync::CancellationToken;

/// v1, except: btcusdt's first subscription panics (kills the worker task), and ethusdt's
/// decoder panics once on a book snapshot.
fn faulty(decoder_armed: Arc<AtomicBool>) -> TestVenue {
    let subscribe_armed = AtomicBool::new(true);
    TestVenue {
        on_subscribe: Some(Box::new(move |conn| {
            if conn.symbols.iter().any(|s| &**s == "btcusdt")
                && subscribe_armed.swap(false, Ordering::SeqCst)
            {
                panic!("injected worker panic");
            }
        })),
        wrap_session: Some(Box::new(move |symbols, inner| {
            let armed = symbols
                .iter()
                .any(|s| &**s == "ethusdt")
                .then(|| decoder_armed.clone());
            Box::new(FaultySession { inner, armed })
        })),
        ..TestVenue::default()
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
    let venue = Arc::new(faulty(decoder_armed.clone()));
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

    let btc = &stats.worker("btcusdt");
    let eth = &stats.worker("ethusdt");
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
