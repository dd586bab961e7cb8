//! A crash loop: the daemon is SIGKILLed at random moments (right after a restart among
//! them: while its first trades are being committed and its hole check is still queued),
//! ten times, then runs cleanly. Every hole stays on record until resolved (the `open` row is
//! committed before the new connection's rows), so in the end the database holds every trade
//! the venue published since recording began, no gap row is left open or unrecoverable, and no
//! session is left open. On SQLite and PostgreSQL, against the simulator's ledger.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{PgDb, wait_for};
use mdrec::model::GapStatus;
use mdrec::sim::{self, SimConfig};
use mdrec::store::Store;
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_mdrec");
const SYMBOLS: [&str; 2] = ["btcusdt", "ethusdt"];
const KILLS: usize = 10;

/// `MDREC_CRASH_LOG_DIR` keeps each run's log there (`RUST_LOG` as set, else warn), to read
/// what a failing seed's runs did.
fn spawn(cfg: &std::path::Path, run: &str) -> Child {
    let stderr = match std::env::var_os("MDREC_CRASH_LOG_DIR") {
        Some(dir) => {
            std::fs::create_dir_all(&dir).unwrap();
            Stdio::from(std::fs::File::create(std::path::Path::new(&dir).join(run)).unwrap())
        }
        None => Stdio::null(),
    };
    Command::new(BIN)
        .args(["run", "-c", cfg.to_str().unwrap()])
        .env_remove("MDREC_DATABASE_URL")
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

fn kill(child: &Child, sig: &str) {
    let pid = child.id().expect("child pid").to_string();
    let _ = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid])
        .status();
}

async fn crash_loop(db_url: &str) {
    let db = if db_url.starts_with("sqlite") {
        "sqlite"
    } else {
        "postgres"
    };
    let seed = std::env::var("MDREC_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("crash loop seed {seed} (MDREC_CRASH_SEED={seed} repeats it)");
    let mut rng = fastrand::Rng::with_seed(seed);
    // a market slow enough that the venue's last 200 trades reach back over every hole even
    // when a killed run leaves its check to the next one (a check delayed past that window
    // is recorded unrecoverable, conservatively, which this test would not tell from a loss)
    let sim = sim::start(SimConfig {
        seed: 61,
        step: Duration::from_millis(100),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("mdrec.toml");
    std::fs::write(
        &cfg,
        format!(
            "[venue]\nkind = \"cdc-v1\"\nws_url = \"{}\"\nrest_url = \"{}\"\n[database]\nurl = \"{db_url}\"\n\
             [record]\nsymbols = [\"btcusdt\", \"ethusdt\"]\nklines = [\"1min\"]\ndepth = false\n\
             max_time_ahead_s = 86400\n[metrics]\nlisten = \"\"\n[writer]\nflush_interval_ms = 50\n\
             spool_dir = {:?}\n[backfill]\naudit_interval_s = 0\n",
            sim.ws_url(),
            sim.rest_url(),
            dir.path().join("spool")
        ),
    )
    .unwrap();
    // REST throttled while the runs are killed: a check waits behind another (the backfill
    // honours Retry-After), so restarted runs commit socket trades long before their holes
    // are checked: the moment a crash used to forget the hole
    sim.throttle_rest(true);
    let mut delays = Vec::new();
    for i in 0..KILLS {
        let mut child = spawn(&cfg, &format!("{db}-{i}.log"));
        // every third kill comes right after the restart; the others at a random moment
        let ms = if i % 3 == 1 {
            rng.u64(0..150)
        } else {
            rng.u64(150..1500)
        };
        delays.push(ms);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        kill(&child, "KILL");
        let _ = child.wait().await;
    }
    // a clean run: it closes what the killed runs left open and fills their holes
    sim.throttle_rest(false);
    let mut child = spawn(&cfg, &format!("{db}-last.log"));
    let store = Store::connect(db_url).await.unwrap();
    wait_for(
        "the last run recording",
        Duration::from_secs(30),
        || async {
            let mut ok = true;
            for s in SYMBOLS {
                ok &= common::stored_trades(&store, s).await.len() >= 20;
            }
            ok
        },
    )
    .await;
    sim.halt();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut problems = Vec::new();
        for s in SYMBOLS {
            let got = common::stored_trades(&store, s).await;
            let Some(first) = got.keys().next().copied() else {
                problems.push(format!("{s}: nothing stored"));
                continue;
            };
            let want = common::ledger_from(&sim, s, first);
            let missing: Vec<i64> = want
                .keys()
                .filter(|k| !got.contains_key(k))
                .copied()
                .collect();
            let wrong: Vec<i64> = got
                .iter()
                .filter(|(k, v)| want.get(k) != Some(v))
                .map(|(k, _)| *k)
                .collect();
            if !missing.is_empty() || !wrong.is_empty() {
                problems.push(format!(
                    "{s}: missing {missing:?}, not in the ledger or different {wrong:?}"
                ));
            }
        }
        let gaps = store.load_gaps("cdc-v1", None).await.unwrap();
        let open: Vec<_> = gaps
            .iter()
            .filter(|g| g.status == GapStatus::Open)
            .collect();
        if !open.is_empty() {
            problems.push(format!("open gaps: {open:?}"));
        }
        if problems.is_empty() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("after 60 s (kills after {delays:?} ms): {problems:#?}\nall gaps: {gaps:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    kill(&child, "TERM");
    let status = child.wait().await.unwrap();
    assert_eq!(status.code(), Some(0));

    let gaps = store.load_gaps("cdc-v1", None).await.unwrap();
    let unrecoverable: Vec<_> = gaps
        .iter()
        .filter(|g| g.status == GapStatus::Unrecoverable)
        .collect();
    assert!(unrecoverable.is_empty(), "{unrecoverable:?}");
    let open_sessions: i64 = {
        let sql = "SELECT count(*) FROM sessions WHERE disconnected_at_us IS NULL";
        match &store {
            Store::Sqlite(s) => sqlx::query_scalar(sql).fetch_one(s.pool()).await,
            Store::Postgres(s) => sqlx::query_scalar(sql).fetch_one(s.pool()).await,
        }
        .unwrap()
    };
    assert_eq!(open_sessions, 0, "every killed run's sessions closed");
    let mut unseen_total = 0;
    // the honest record: every trade no socket delivered (the venue published it while no run
    // was connected) lies inside a `trades` gap row; a forgotten hole would be filled only by
    // chance (a later REST answer reaching back) and be on record nowhere
    for s in SYMBOLS {
        let delivered = sim.delivered(s);
        // holes are reckoned from the first trade a socket delivered and a run committed: a
        // run killed before it committed anything leaves nothing to hold a hole against (the
        // next one starts from nothing recorded and fetches the venue's recent trades)
        let first = store
            .load_trades("cdc-v1", s)
            .await
            .unwrap()
            .iter()
            .filter(|t| t.source == mdrec::model::Source::Ws)
            .map(|t| t.trade_id)
            .min()
            .unwrap();
        let unseen: Vec<_> = sim
            .trades(s)
            .into_iter()
            .filter(|t| t.id > first && !delivered.contains(&t.id))
            .collect();
        let rows: Vec<_> = gaps
            .iter()
            .filter(|g| &*g.symbol == s && g.stream == "trades")
            .collect();
        let outside: Vec<(i64, i64)> = unseen
            .iter()
            .filter(|t| {
                !rows
                    .iter()
                    .any(|g| g.start_ms <= t.time_ms && g.end_ms.is_none_or(|e| t.time_ms <= e))
            })
            .map(|t| (t.id, t.time_ms))
            .collect();
        if !outside.is_empty() {
            // what the runs left around the first such trade, to tell which run forgot it
            let t0 = outside[0].1;
            let stored: Vec<String> = store
                .load_trades("cdc-v1", s)
                .await
                .unwrap()
                .iter()
                .filter(|t| (t.event_time_ms - t0).abs() <= 3000)
                .map(|t| {
                    format!(
                        "{} @{} {:?} recv {}",
                        t.trade_id, t.event_time_ms, t.source, t.recv_time_us
                    )
                })
                .collect();
            let sql = "SELECT connected_at_us, disconnected_at_us, close_reason FROM sessions \
                       WHERE symbol = $1 ORDER BY connected_at_us";
            let sessions: Vec<(i64, Option<i64>, Option<String>)> = match &store {
                Store::Sqlite(p) => sqlx::query_as(sql).bind(s).fetch_all(p.pool()).await,
                Store::Postgres(p) => sqlx::query_as(sql).bind(s).fetch_all(p.pool()).await,
            }
            .unwrap();
            panic!(
                "{s}: {} of {} trades no socket delivered are in no gap row: {outside:?}\n\
                 rows: {rows:#?}\nstored near them: {stored:#?}\nsessions: {sessions:#?}\n\
                 kills after {delays:?} ms",
                outside.len(),
                unseen.len()
            );
        }
        unseen_total += unseen.len();
    }
    // and no hole is wider than the loss: every trade strictly inside a filled hole came from
    // REST (a row stored from a socket inside it would mean the row began too early)
    let mut inside_rest = 0;
    for s in SYMBOLS {
        let trades = store.load_trades("cdc-v1", s).await.unwrap();
        for g in gaps
            .iter()
            .filter(|g| &*g.symbol == s && g.stream == "trades" && g.status == GapStatus::Filled)
        {
            let end = g.end_ms.unwrap_or(i64::MAX);
            for t in trades
                .iter()
                .filter(|t| t.event_time_ms > g.start_ms && t.event_time_ms < end)
            {
                assert_eq!(
                    t.source,
                    mdrec::model::Source::Rest,
                    "{s}: trade {} inside {g:?} came from a socket",
                    t.trade_id
                );
                inside_rest += 1;
            }
        }
    }
    let mut total = 0;
    for s in SYMBOLS {
        let got = common::stored_trades(&store, s).await;
        let first = *got.keys().next().unwrap();
        assert_eq!(
            got,
            common::ledger_from(&sim, s, first),
            "{s}: database equals the ledger"
        );
        total += got.len();
    }
    println!(
        "crash loop ({}): {KILLS} SIGKILLs after {delays:?} ms, {total} trades published since the first stored, {total} stored, 0 lost; {unseen_total} no socket delivered, each inside one of {} gap rows, all filled; the {inside_rest} trades strictly inside the holes all came from REST",
        if db_url.starts_with("sqlite") {
            "SQLite"
        } else {
            "PostgreSQL"
        },
        gaps.len()
    );
    store.close().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_crash_loop_loses_nothing() {
    let (_dir, url) = common::sqlite_db();
    crash_loop(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crash_loop_loses_nothing() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    crash_loop(&db.url).await;
    db.drop_db().await;
}
