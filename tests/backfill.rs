//! REST backfill of trades: what the market traded before the first subscription and while a
//! socket was cut comes from `/v1/trades`, so the database equals the simulator's ledger
//! exactly, even when REST first answers 429 with a non-JSON body.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{recorder_config, sqlite_db, wait_for};
use mdrec::decimal::Dec;
use mdrec::model::{GapStatus, Source};
use mdrec::sim::{self, SimConfig};
use mdrec::store::Store;
use mdrec::venue::cdc_v1::{CdcV1, NAME};
use tokio_util::sync::CancellationToken;

const SYMBOLS: [&str; 2] = ["btcusdt", "ethusdt"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_and_cut_holes_are_filled_from_rest_despite_429s() {
    let (_dir, url) = sqlite_db();
    let sim = sim::start(SimConfig {
        seed: 17,
        rest_throttle_first: 1,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    // the market trades before the recorder exists
    wait_for("trades before start", Duration::from_secs(30), || async {
        SYMBOLS.iter().all(|s| sim.trades(s).len() >= 20)
    })
    .await;
    let cfg = recorder_config(
        &sim.ws_url(),
        &sim.rest_url(),
        &url,
        &SYMBOLS,
        "[connection]\nreconnect_initial_ms = 300\n\n[backfill]\nrate_per_s = 50\n",
    );
    let stop = CancellationToken::new();
    let (_store, stats, tasks) = mdrec::recorder::start(cfg, Arc::new(CdcV1), stop.clone())
        .await
        .unwrap();
    wait_for("streaming", Duration::from_secs(30), || async {
        SYMBOLS.iter().all(|s| sim.delivered(s).len() >= 50)
    })
    .await;
    let connections = sim.state().connections_total;
    sim.cut_connections(); // reconnect waits >= 150 ms: trades happen in the hole
    wait_for(
        "reconnected and streaming",
        Duration::from_secs(30),
        || async { sim.state().connections_total >= connections + SYMBOLS.len() as u64 },
    )
    .await;
    let fetches = stats.backfill.runs.load(Ordering::Relaxed);
    wait_for(
        "the reconnect's backfill",
        Duration::from_secs(30),
        || async { stats.backfill.runs.load(Ordering::Relaxed) >= fetches + SYMBOLS.len() as u64 },
    )
    .await;
    sim.halt();
    let store = Store::connect(&url).await.unwrap();
    wait_for(
        "database to equal the ledger",
        Duration::from_secs(60),
        || async {
            for s in SYMBOLS {
                if store.load_trades(NAME, s).await.unwrap().len() != sim.trades(s).len() {
                    return false;
                }
            }
            true
        },
    )
    .await;
    // the holes are on record: the cut (and the start-up history fetch, which is no hole)
    wait_for("holes resolved", Duration::from_secs(30), || async {
        let g = store.load_gaps(NAME, None).await.unwrap();
        !g.is_empty() && g.iter().all(|g| g.status != GapStatus::Open)
    })
    .await;
    stop.cancel();
    tasks.close();
    tasks.wait().await;
    let gaps = store.load_gaps(NAME, None).await.unwrap();
    assert!(
        gaps.iter().all(|g| g.status == GapStatus::Filled),
        "the 429 delayed REST, it did not lose the hole: {gaps:#?}"
    );
    for s in SYMBOLS {
        let cut = gaps
            .iter()
            .find(|g| &*g.symbol == s && g.stream == "trades")
            .expect("the cut's trades hole");
        assert!(cut.rows_recovered > 0, "{cut:?}");
    }

    let rest = stats.rest.as_ref().unwrap();
    assert!(
        rest.throttled.load(Ordering::Relaxed) >= 1,
        "the 429 was seen and retried"
    );
    let mut from_rest = 0;
    for s in SYMBOLS {
        let ledger = sim.trades(s);
        let stored = store.load_trades(NAME, s).await.unwrap();
        assert_eq!(stored.len(), ledger.len());
        for (db, l) in stored.iter().zip(&ledger) {
            assert_eq!(
                (db.trade_id, db.side, &db.price, &db.qty, db.event_time_ms),
                (
                    l.id,
                    l.side,
                    &Dec::from(l.price),
                    &Dec::from(l.qty),
                    l.time_ms
                ),
                "{s}"
            );
            match db.source {
                // REST has no quote amount; a trade also seen on the socket has it
                Source::Rest => {
                    from_rest += 1;
                    if sim.delivered(s).contains(&l.id) {
                        assert_eq!(
                            db.quote_qty,
                            Some(Dec::from(l.amount)),
                            "{s} {}: merged amount",
                            l.id
                        );
                    }
                }
                Source::Ws => assert_eq!(db.quote_qty, Some(Dec::from(l.amount))),
            }
        }
        let missed = ledger.len() - sim.delivered(s).len();
        assert!(missed > 0, "{s}: the scenario must have holes");
    }
    assert!(from_rest > 0);
    eprintln!(
        "backfill: generated {}, delivered by websocket {}, stored {} ({} rows first stored from REST), 429s {}",
        SYMBOLS.iter().map(|s| sim.trades(s).len()).sum::<usize>(),
        SYMBOLS
            .iter()
            .map(|s| sim.delivered(s).len())
            .sum::<usize>(),
        SYMBOLS.iter().map(|s| sim.trades(s).len()).sum::<usize>(),
        from_rest,
        rest.throttled.load(Ordering::Relaxed)
    );
    store.close().await;
    sim.shutdown().await;
}
