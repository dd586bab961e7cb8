//! Start without the database: `mdrec run` records into the spool when the database does not
//! answer at start-up (a reboot where PostgreSQL comes up later, a SQLite directory not yet
//! mounted), says so on `/healthz`, migrates once it answers, commits the hole of this start
//! first and replays the spool. Against the simulator's ledger: nothing lost, and the time the
//! recorder was down before this start is filled from REST and on record in `gaps`.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{OwnPg, Recorder, wait_for};
use mdrec::model::GapStatus;
use mdrec::sim::{self, SimConfig};
use mdrec::store::Store;

const SYMBOLS: [&str; 2] = ["btcusdt", "ethusdt"];

async fn healthz(rec: &Recorder) -> (u16, String) {
    let addr = rec.stats.metrics_addr.get().expect("metrics served");
    let r = reqwest::get(format!("http://{addr}/healthz"))
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

fn config(sim: &sim::SimHandle, db_url: &str, spool: &std::path::Path) -> mdrec::config::Config {
    let text = format!(
        "[venue]\nkind = \"cdc-v1\"\nws_url = \"{}\"\nrest_url = \"{}\"\n[database]\nurl = \"{db_url}\"\n\
         [record]\nsymbols = [\"btcusdt\", \"ethusdt\"]\nklines = [\"1min\"]\ndepth = false\n\
         max_time_ahead_s = 86400\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
         [writer]\nflush_interval_ms = 50\nspool_dir = {:?}\nwrite_timeout_s = 2\n\
         [backfill]\naudit_interval_s = 0\n",
        sim.ws_url(),
        sim.rest_url(),
        spool
    );
    let c = mdrec::venue::registry::parse_config(&text).unwrap();
    mdrec::venue::registry::check_config(&c).unwrap();
    c
}

/// Waits until the database answered, was migrated and took the whole spool.
async fn migrated_and_replayed(rec: &Recorder) {
    wait_for("migrated and replayed", Duration::from_secs(60), || async {
        !rec.stats.writer.db_pending.load(Ordering::Relaxed)
            && rec.stats.writer.spool_files.load(Ordering::Relaxed) == 0
    })
    .await;
}

/// Waits until the recorder has spooled rows while the database is away, and checks health.
async fn records_into_the_spool(rec: &Recorder, sim: &sim::SimHandle) {
    let before: Vec<usize> = SYMBOLS.iter().map(|s| sim.delivered(s).len()).collect();
    wait_for(
        "recording into the spool",
        Duration::from_secs(30),
        || async {
            rec.stats.writer.spooled_rows.load(Ordering::Relaxed) > 0
                && SYMBOLS
                    .iter()
                    .zip(&before)
                    .all(|(s, n)| sim.delivered(s).len() >= n + 20)
        },
    )
    .await;
    assert!(rec.stats.writer.db_pending.load(Ordering::Relaxed));
    let (status, body) = healthz(rec).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("not answering since start-up"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_at_start_then_up_loses_nothing() {
    let Some(pg) = OwnPg::create() else { return };
    let sim = sim::start(SimConfig {
        seed: 71,
        step: Duration::from_millis(50),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let spool = tempfile::tempdir().unwrap();
    let cfg = config(&sim, &pg.url(), spool.path());

    // a first run records, then stops; the database goes down while the recorder is off
    let rec = Recorder::start(&cfg).await;
    wait_for("first run recording", Duration::from_secs(30), || async {
        SYMBOLS.iter().all(|s| sim.delivered(s).len() >= 20)
    })
    .await;
    rec.stop().await;
    pg.stop();

    // the second run starts without it: recording, not exiting
    let rec = Recorder::start(&cfg).await;
    records_into_the_spool(&rec, &sim).await;
    pg.start();
    migrated_and_replayed(&rec).await;
    sim.halt();
    let store = Store::connect(&pg.url()).await.unwrap();
    wait_for(
        "the database to equal the ledger",
        Duration::from_secs(60),
        || async {
            if !common::stored_equals_ledger(&store, &sim, &SYMBOLS).await {
                return false;
            }
            // and every hole checked
            let gaps = store.load_gaps("cdc-v1", None).await.unwrap_or_default();
            !gaps.is_empty() && gaps.iter().all(|g| g.status != GapStatus::Open)
        },
    )
    .await;
    let stats = rec.stop().await;
    let gaps = store.load_gaps("cdc-v1", None).await.unwrap();
    for s in SYMBOLS {
        let start_holes: Vec<_> = gaps
            .iter()
            .filter(|g| {
                &*g.symbol == s
                    && g.stream == "trades"
                    && g.detail.as_deref().is_some_and(|d| d.contains("start-up"))
            })
            .collect();
        assert!(
            !start_holes.is_empty(),
            "{s}: the down time is on record: {gaps:?}"
        );
    }
    assert!(
        gaps.iter().all(|g| g.status == GapStatus::Filled),
        "{gaps:?}"
    );
    println!(
        "database down at start (PostgreSQL): {} rows spooled while it was down, {} replayed, {} gap rows all filled, database equals the ledger",
        stats.writer.spooled_rows.load(Ordering::Relaxed),
        stats.writer.replayed_rows.load(Ordering::Relaxed),
        gaps.len()
    );
    store.close().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_directory_missing_at_start_then_there_loses_nothing() {
    let sim = sim::start(SimConfig {
        seed: 72,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let root = tempfile::tempdir().unwrap();
    // two levels missing: a filesystem not mounted yet, not a directory to create
    let later = root.path().join("not-mounted-yet").join("mdrec");
    let db_url = format!("sqlite://{}", later.join("rec.db").display());
    let cfg = config(&sim, &db_url, &root.path().join("spool"));
    let rec = Recorder::start(&cfg).await;
    records_into_the_spool(&rec, &sim).await;
    assert!(!later.exists(), "not created under the mount point");
    std::fs::create_dir_all(&later).unwrap();
    migrated_and_replayed(&rec).await;
    wait_for("healthy again", Duration::from_secs(30), || async {
        healthz(&rec).await.0 == 200
    })
    .await;
    sim.halt();
    let store = Store::connect(&db_url).await.unwrap();
    wait_for(
        "the database to equal the ledger",
        Duration::from_secs(60),
        || async {
            if !common::stored_equals_ledger(&store, &sim, &SYMBOLS).await {
                return false;
            }
            // every trade a socket delivered is among them
            for s in SYMBOLS {
                let got = common::stored_trades(&store, s).await;
                if !sim.delivered(s).iter().all(|id| got.contains_key(id)) {
                    return false;
                }
            }
            true
        },
    )
    .await;
    let stats = rec.stop().await;
    println!(
        "database missing at start (SQLite): {} rows spooled, {} replayed, every delivered trade stored",
        stats.writer.spooled_rows.load(Ordering::Relaxed),
        stats.writer.replayed_rows.load(Ordering::Relaxed),
    );
    store.close().await;
    sim.shutdown().await;
}
