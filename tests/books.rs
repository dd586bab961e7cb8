//! Order books: identical consecutive full books are stored once (`depth_dedupe`), and the
//! last stored book still equals the venue's.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{recorder_config, sqlite_db, wait_for};
use mdrec::decimal::Dec;
use mdrec::sim::{self, SimConfig};
use mdrec::store::Store;
use mdrec::venue::cdc_v1::{CdcV1, NAME};
use tokio_util::sync::CancellationToken;

const SYMBOLS: [&str; 2] = ["btcusdt", "ethusdt"];

fn levels(v: &[(rust_decimal::Decimal, rust_decimal::Decimal)]) -> Vec<(Dec, Dec)> {
    v.iter()
        .map(|(p, q)| (Dec::from(*p), Dec::from(*q)))
        .collect()
}

/// (stored snapshots, consecutive identical pairs, frames deduped) for a run with the
/// subscription asking for the top 5 levels, so changes deeper in the book resend it unchanged.
async fn run(dedupe: bool) -> (usize, usize, u64) {
    let (_dir, url) = sqlite_db();
    let sim = sim::start(SimConfig {
        seed: 73,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let mut cfg = recorder_config(&sim.ws_url(), &sim.rest_url(), &url, &SYMBOLS, "");
    cfg.record.depth_levels = 5;
    cfg.record.depth_dedupe = dedupe;
    let stop = CancellationToken::new();
    let (_store, stats, tasks) = mdrec::recorder::start(cfg, Arc::new(CdcV1), stop.clone())
        .await
        .unwrap();
    wait_for("books flowing", Duration::from_secs(30), || async {
        SYMBOLS.iter().all(|s| sim.delivered(s).len() >= 100)
    })
    .await;
    sim.halt();
    let store = Store::connect(&url).await.unwrap();
    wait_for("the last book stored", Duration::from_secs(30), || async {
        for s in SYMBOLS {
            let want = sim.book(s, 0, 5).map(|(b, a)| (levels(&b), levels(&a)));
            let got = store
                .load_latest_book(NAME, s, 0)
                .await
                .ok()
                .flatten()
                .map(|b| (b.bids, b.asks));
            if got != want {
                return false;
            }
        }
        true
    })
    .await;
    stop.cancel();
    tasks.close();
    tasks.wait().await;
    let Store::Sqlite(db) = &store else {
        unreachable!()
    };
    let (mut stored, mut repeats) = (0, 0);
    for s in SYMBOLS {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT bids, asks FROM book_snapshots WHERE symbol = ? ORDER BY recv_time_us",
        )
        .bind(s)
        .fetch_all(db.pool())
        .await
        .unwrap();
        stored += rows.len();
        repeats += rows.windows(2).filter(|w| w[0] == w[1]).count();
    }
    let deduped = stats
        .workers
        .values()
        .map(|w| w.books_deduped.load(Ordering::Relaxed))
        .sum();
    store.close().await;
    sim.shutdown().await;
    (stored, repeats, deduped)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_consecutive_books_are_stored_once() {
    let (stored, repeats, deduped) = run(true).await;
    assert_eq!(repeats, 0, "no book stored twice in a row");
    assert!(deduped > 0, "the scenario resends unchanged books");
    let (stored_all, repeats_all, deduped_off) = run(false).await;
    assert_eq!(deduped_off, 0);
    assert!(
        repeats_all > 0,
        "without dedupe the resent books are stored"
    );
    eprintln!(
        "depth_dedupe: on {stored} snapshots stored ({deduped} identical resends skipped); \
         off {stored_all} stored, {repeats_all} of them repeats"
    );
}
