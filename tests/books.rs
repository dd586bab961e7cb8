//! Order books: identical consecutive full books are stored once (`depth_dedupe`), and the
//! last stored book still equals the venue's.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{recorder_config, sqlite_db, wait_for};
use mdrec::decimal::Dec;
use mdrec::sim::{self, SimConfig};
use mdrec::store::Store;
use mdrec::venue::cdc_v1::NAME;

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
    let run = common::Recorder::start(&cfg).await;
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
    let stats = run.stop().await;
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
        .all()
        .into_iter()
        .map(|(_, w)| w)
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

/// Event times at which the stored book changed, for btcusdt.
async fn change_times(store: &Store) -> Vec<i64> {
    let sql = "SELECT event_time_ms FROM book_snapshots WHERE symbol = 'btcusdt' \
               UNION SELECT event_time_ms FROM book_deltas WHERE symbol = 'btcusdt' ORDER BY 1";
    match store {
        Store::Sqlite(s) => sqlx::query_scalar(sql).fetch_all(s.pool()).await,
        Store::Postgres(s) => sqlx::query_scalar(sql).fetch_all(s.pool()).await,
    }
    .unwrap()
}

async fn book_at_matches_the_venue(db: &str, mode: sim::DepthMode) {
    let sim = sim::start(SimConfig {
        seed: 83,
        depth_mode: mode,
        book_history: true,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let cfg = recorder_config(&sim.ws_url(), &sim.rest_url(), db, &SYMBOLS, "");
    let run = common::Recorder::start(&cfg).await;
    let store = Store::connect(db).await.unwrap();
    wait_for("books flowing", Duration::from_secs(30), || async {
        SYMBOLS.iter().all(|s| sim.delivered(s).len() >= 100)
    })
    .await;
    sim.halt();
    wait_for("the last book stored", Duration::from_secs(30), || async {
        let want = sim
            .book("btcusdt", 0, 150)
            .map(|(b, a)| (levels(&b), levels(&a)));
        let got = store
            .load_latest_book(NAME, "btcusdt", 0)
            .await
            .ok()
            .flatten()
            .map(|b| (b.bids, b.asks));
        got == want
    })
    .await;
    run.stop().await;

    let times = change_times(&store).await;
    assert!(times.len() > 20, "{} book changes stored", times.len());
    // the book is only known while a socket was live: compare from the last connection's
    // first book on (normally the first connection, the only one)
    let sql = "SELECT MIN(event_time_ms) FROM book_snapshots WHERE symbol = 'btcusdt' \
               AND recv_time_us >= (SELECT MAX(connected_at_us) FROM sessions WHERE symbol = 'btcusdt')";
    let live_from: Option<i64> = match &store {
        Store::Sqlite(s) => sqlx::query_scalar(sql).fetch_one(s.pool()).await,
        Store::Postgres(s) => sqlx::query_scalar(sql).fetch_one(s.pool()).await,
    }
    .unwrap();
    let sessions = common::session_reasons(&store).await;
    let times: Vec<i64> = times
        .into_iter()
        .filter(|t| *t >= live_from.unwrap_or(i64::MIN))
        .collect();
    assert!(
        times.len() >= 10,
        "{} changes after the last connect; sessions {sessions:?}",
        times.len()
    );
    let first = change_times(&store).await[0];
    assert!(
        store
            .load_book(NAME, "btcusdt", 0, Some(first - 1))
            .await
            .unwrap()
            .is_none(),
        "nothing before the first stored book"
    );
    // at change times and between them, spread over the run
    let mut checked = 0;
    for i in (0..times.len()).step_by((times.len() / 10).max(1)) {
        for t in [times[i], times[i] + 1] {
            let want = sim
                .book_at("btcusdt", 0, 150, t)
                .map(|(b, a)| (levels(&b), levels(&a)));
            let got = store
                .load_book(NAME, "btcusdt", 0, Some(t))
                .await
                .unwrap()
                .map(|b| (b.bids, b.asks));
            assert_eq!(got, want, "book at {t} ({mode:?}); sessions {sessions:?}");
            checked += 1;
        }
    }
    assert!(checked >= 20);
    // the command line gives the same book
    let t = times[times.len() / 2];
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("c.toml");
    std::fs::write(
        &cfg_path,
        format!("[venue]\nkind = \"cdc-v1\"\n[database]\nurl = \"{db}\"\n[record]\nsymbols = [\"btcusdt\"]\n"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mdrec"))
        .args(["book", "-c"])
        .arg(&cfg_path)
        .args(["--symbol", "btcusdt", "--depth", "150", "--json", "--at"])
        .arg(mdrec::coverage::format_time(t))
        .env_remove("MDREC_DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (bids, asks) = sim.book_at("btcusdt", 0, 150, t).unwrap();
    let side = |l: &[(rust_decimal::Decimal, rust_decimal::Decimal)]| -> serde_json::Value {
        levels(l)
            .iter()
            .map(|(p, q)| serde_json::json!([p.to_string(), q.to_string()]))
            .collect()
    };
    assert_eq!((&v["bids"], &v["asks"]), (&side(&bids), &side(&asks)));
    let table = std::process::Command::new(env!("CARGO_BIN_EXE_mdrec"))
        .args(["book", "-c"])
        .arg(&cfg_path)
        .args(["--symbol", "btcusdt", "--depth", "3", "--at"])
        .arg(t.to_string())
        .env_remove("MDREC_DATABASE_URL")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    // the book (a title, the column names, 3 levels), its age at that time, then warnings
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        table.status.success()
            && lines.len() >= 6
            && lines[5].starts_with("age at ")
            && lines[6..].iter().all(|l| l.starts_with("warning: ")),
        "{text}"
    );
    // coverage counts the book stream's rows as stored: full books and deltas
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mdrec"))
        .args(["coverage", "-c"])
        .arg(&cfg_path)
        .args(["--json", "--symbol", "btcusdt"])
        .env_remove("MDREC_DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = c["symbols"][0]["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stream"] == "book_0")
        .map(|s| s["rows"].as_i64().unwrap())
        .unwrap();
    let sql = "SELECT (SELECT COUNT(*) FROM book_snapshots WHERE symbol = 'btcusdt' AND depth_step = 0) \
               + (SELECT COUNT(*) FROM book_deltas WHERE symbol = 'btcusdt' AND depth_step = 0)";
    let stored: i64 = match &store {
        Store::Sqlite(s) => sqlx::query_scalar(sql).fetch_one(s.pool()).await,
        Store::Postgres(s) => sqlx::query_scalar(sql).fetch_one(s.pool()).await,
    }
    .unwrap();
    assert_eq!(rows, stored, "book rows in coverage ({mode:?})");
    eprintln!(
        "book at {checked} times ({mode:?}) equals the venue's; mdrec book --depth 3:\n{text}"
    );
    store.close().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_book_at_time_full_depth() {
    let (_dir, url) = sqlite_db();
    book_at_matches_the_venue(&url, sim::DepthMode::Full).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_book_at_time_incremental_depth() {
    let (_dir, url) = sqlite_db();
    book_at_matches_the_venue(&url, sim::DepthMode::Incremental).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_book_at_time_incremental_depth() {
    let Some(db) = common::PgDb::create().await else {
        return;
    };
    book_at_matches_the_venue(&db.url, sim::DepthMode::Incremental).await;
    db.drop_db().await;
}
