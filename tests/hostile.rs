//! Hostile input from the venue: corrupt gzip, a decompression bomb, malformed JSON, an unknown
//! event, an oversized message. Each bad frame is counted by kind and skipped; the worker
//! survives (an oversized message ends the connection, and the worker reconnects); every trade
//! the simulator delivered is stored once.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{recorder_config, sqlite_db, wait_for};
use mdrec::sim::{self, Hostile, SimConfig};
use mdrec::store::Store;
use mdrec::venue::DecodeError;
use mdrec::venue::cdc_v1::CdcV1;
use tokio_util::sync::CancellationToken;

const SYMBOLS: [&str; 2] = ["btcusdt", "ethusdt"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_are_counted_and_skipped() {
    let (_dir, url) = sqlite_db();
    let sim = sim::start(SimConfig {
        seed: 12,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let cfg = recorder_config(
        &sim.ws_url(),
        &sim.rest_url(),
        &url,
        &SYMBOLS,
        "[connection]\nmax_frame_bytes = 1048576\nreconnect_initial_ms = 50",
    );
    let stop = CancellationToken::new();
    let (_store, stats, tasks) =
        mdrec::recorder::start(cfg, std::sync::Arc::new(CdcV1), stop.clone())
            .await
            .unwrap();
    wait_for("streaming", Duration::from_secs(30), || async {
        SYMBOLS.iter().all(|s| sim.delivered(s).len() >= 50)
    })
    .await;

    let rounds = 3u64;
    for _ in 0..rounds {
        for h in [
            Hostile::CorruptGzip,
            Hostile::Bomb(4 << 20),
            Hostile::MalformedJson,
            Hostile::UnknownEvent,
        ] {
            sim.inject(h);
        }
    }
    let kind = |s: &str, k: &str| {
        let i = DecodeError::KINDS.iter().position(|x| *x == k).unwrap();
        stats.worker(s).decode_errors_by_kind[i].load(Ordering::Relaxed)
    };
    wait_for(
        "every hostile frame counted",
        Duration::from_secs(30),
        || async {
            SYMBOLS
                .iter()
                .all(|s| stats.worker(s).decode_errors.load(Ordering::Relaxed) == 4 * rounds)
        },
    )
    .await;
    for s in SYMBOLS {
        assert_eq!(
            ["corrupt", "too_large", "json", "unexpected"].map(|k| kind(s, k)),
            [rounds; 4],
            "{s}: one count per injected frame, by kind"
        );
    }

    // past the websocket message limit: the connection ends, the worker reconnects. The market
    // is halted around it, so no trade can be in flight behind the oversized message.
    sim.halt();
    let store = Store::connect(&url).await.unwrap();
    common::wait_stored_equals_delivered(&store, &sim, &SYMBOLS).await;
    let before = sim.state().connections_total;
    sim.inject(Hostile::Oversized(2 << 20));
    wait_for(
        "reconnect after the oversized message",
        Duration::from_secs(30),
        || async { sim.state().connections_total >= before + SYMBOLS.len() as u64 },
    )
    .await;
    sim.resume();
    let after: Vec<usize> = SYMBOLS.iter().map(|s| sim.delivered(s).len()).collect();
    wait_for("streaming again", Duration::from_secs(30), || async {
        SYMBOLS
            .iter()
            .zip(&after)
            .all(|(s, n)| sim.delivered(s).len() >= n + 50)
    })
    .await;
    sim.halt();
    common::wait_stored_equals_delivered(&store, &sim, &SYMBOLS).await;
    stop.cancel();
    tasks.close();
    tasks.wait().await;

    let sessions = common::session_reasons(&store).await;
    for s in SYMBOLS {
        let mine: Vec<&str> = sessions
            .iter()
            .filter(|r| r.0 == s)
            .filter_map(|r| r.1.as_deref())
            .collect();
        assert_eq!(mine.len(), 2, "{s}: {mine:?}");
        assert!(mine[0].contains("read error"), "{s}: {}", mine[0]);
        assert_eq!(mine[1], "shutdown");
        let stored = common::stored_ids(&store, s).await;
        assert_eq!(stored, sim.delivered(s), "{s}: nothing received was lost");
    }
    common::report("hostile frames", &store, &sim, &SYMBOLS).await;
    store.close().await;
    sim.shutdown().await;
}
