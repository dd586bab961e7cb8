//! Database outages lose nothing: a locked SQLite file, a PostgreSQL server stopped and started
//! again, and a SIGKILL while the database is down followed by a restart that replays the spool.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{OwnPg, recorder_config, sqlite_db, stored_ids, wait_for};
use mdrec::model::Event;
use mdrec::sim::{self, SimConfig};
use mdrec::store::Store;
use mdrec::store::spool::Spool;
use mdrec::venue::cdc_v1::CdcV1;
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

const SYMBOLS: [&str; 2] = ["btcusdt", "ethusdt"];

/// Seconds the database stays down (the 60 s is `MDREC_OUTAGE_S=60`).
fn outage() -> Duration {
    Duration::from_secs(
        std::env::var("MDREC_OUTAGE_S")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(4),
    )
}

fn extra(spool: &Path) -> String {
    format!(
        "[connection]\nreconnect_initial_ms = 50\n\n[writer]\nflush_interval_ms = 50\nwrite_timeout_s = 1\nspool_dir = {:?}\n[backfill]\nenabled = false\n",
        spool.display().to_string()
    )
}

/// Runs the recorder in-process through `outage_start`/`outage_end`; checks zero loss.
async fn survive_outage<S, E, SF, EF>(db_url: &str, spool: &Path, outage_start: S, outage_end: E)
where
    S: FnOnce() -> SF,
    SF: std::future::Future<Output = ()>,
    E: FnOnce() -> EF,
    EF: std::future::Future<Output = ()>,
{
    let sim = sim::start(SimConfig {
        seed: 13,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let mut cfg = recorder_config(&sim.ws_url(), &sim.rest_url(), db_url, &SYMBOLS, "");
    let over = mdrec::venue::registry::parse_config(&format!(
        "[venue]\nkind = \"cdc-v1\"\n[record]\nsymbols = [\"x\"]\n{}",
        extra(spool)
    ))
    .unwrap();
    cfg.connection = over.connection;
    cfg.writer = over.writer;
    let stop = CancellationToken::new();
    let (_store, stats, tasks) = mdrec::recorder::start(cfg, Arc::new(CdcV1), stop.clone())
        .await
        .unwrap();
    wait_for("streaming", Duration::from_secs(30), || async {
        SYMBOLS.iter().all(|s| sim.delivered(s).len() >= 50)
    })
    .await;

    outage_start().await;
    let before: Vec<usize> = SYMBOLS.iter().map(|s| sim.delivered(s).len()).collect();
    let t0 = tokio::time::Instant::now();
    wait_for(
        "spooling while the database is down",
        Duration::from_secs(60),
        || async { stats.writer.spool_files.load(Ordering::Relaxed) >= 2 },
    )
    .await;
    tokio::time::sleep_until(t0 + outage()).await; // the outage's length is the scenario, not a sync
    assert!(
        SYMBOLS
            .iter()
            .zip(&before)
            .all(|(s, n)| sim.delivered(s).len() > n + 20),
        "recording went on during the outage"
    );
    outage_end().await;

    wait_for("the spool to drain", Duration::from_secs(60), || async {
        stats.writer.spool_files.load(Ordering::Relaxed) == 0
    })
    .await;
    sim.halt();
    let store = Store::connect(db_url).await.unwrap();
    common::wait_stored_equals_delivered(&store, &sim, &SYMBOLS).await;
    stop.cancel();
    tasks.close();
    tasks.wait().await;
    let spooled = stats.writer.spooled_rows.load(Ordering::Relaxed);
    let replayed = stats.writer.replayed_rows.load(Ordering::Relaxed);
    assert!(spooled > 0);
    assert_eq!(spooled, replayed, "every spooled row was replayed");
    for s in SYMBOLS {
        assert_eq!(
            stored_ids(&store, s).await,
            sim.delivered(s),
            "{s}: zero rows lost"
        );
    }
    eprintln!(
        "outage {:?}: trades delivered {}, stored {}, rows spooled {spooled}, replayed {replayed}",
        outage(),
        SYMBOLS
            .iter()
            .map(|s| sim.delivered(s).len())
            .sum::<usize>(),
        {
            let mut n = 0;
            for s in SYMBOLS {
                n += stored_ids(&store, s).await.len();
            }
            n
        }
    );
    store.close().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_locked_file_loses_nothing() {
    let (dir, url) = sqlite_db();
    let spool = dir.path().join("spool");
    let file = dir.path().join("test.db");
    let locker: Arc<tokio::sync::Mutex<Option<sqlx::SqliteConnection>>> = Default::default();
    let (l1, l2) = (locker.clone(), locker.clone());
    survive_outage(
        &url,
        &spool,
        || async move {
            let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(&file);
            let mut c = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
            // another process's long write transaction: the recorder cannot write
            sqlx::query("BEGIN EXCLUSIVE")
                .execute(&mut c)
                .await
                .unwrap();
            *l1.lock().await = Some(c);
        },
        || async move {
            if let Some(mut c) = l2.lock().await.take() {
                sqlx::query("ROLLBACK").execute(&mut c).await.unwrap();
                c.close().await.unwrap();
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_and_restarted_loses_nothing() {
    let Some(pg) = OwnPg::create() else { return };
    let pg = Arc::new(pg);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (pg.clone(), pg.clone());
    survive_outage(
        &pg.url(),
        &dir.path().join("spool"),
        || async move { tokio::task::spawn_blocking(move || a.stop()).await.unwrap() },
        || async move {
            tokio::task::spawn_blocking(move || b.start())
                .await
                .unwrap()
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_a_full_spool_then_restart_replays_it() {
    let sim = sim::start(SimConfig {
        seed: 14,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rec.db");
    let db_url = format!("sqlite://{}", db.display());
    let spool = dir.path().join("spool");
    let syms: Vec<String> = SYMBOLS.iter().map(|s| format!("{s:?}")).collect();
    let cfg_path = dir.path().join("c.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "[venue]\nkind = \"cdc-v1\"\nws_url = \"{}\"\nrest_url = \"{}\"\n[database]\nurl = \"{db_url}\"\n[record]\nsymbols = [{}]\nklines = [\"1min\"]\nmax_time_ahead_s = 86400\n[metrics]\nlisten = \"127.0.0.1:0\"\n{}",
            sim.ws_url(),
            sim.rest_url(),
            syms.join(", "),
            extra(&spool)
        ),
    )
    .unwrap();
    let spawn = || {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_mdrec"))
            .args(["run", "-c", cfg_path.to_str().unwrap()])
            .env_remove("MDREC_DATABASE_URL")
            .env_remove("STATE_DIRECTORY")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let mut first = spawn();
    let reader = Store::connect(&db_url).await.unwrap();
    wait_for(
        "first recorder storing",
        Duration::from_secs(60),
        || async { SYMBOLS.iter().all(|s| sim.delivered(s).len() >= 50) },
    )
    .await;
    wait_for("first rows stored", Duration::from_secs(60), || async {
        stored_ids(&reader, "btcusdt").await.len() >= 20
    })
    .await;
    // lock the database: from here everything goes to the spool
    let mut lock = sqlx::SqliteConnection::connect_with(
        &sqlx::sqlite::SqliteConnectOptions::new().filename(&db),
    )
    .await
    .unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut lock)
        .await
        .unwrap();
    wait_for("spooling", Duration::from_secs(60), || async {
        spooled_files(&spool) >= 3
    })
    .await;
    sim.halt();
    // everything delivered is either stored or spooled before we kill
    wait_for(
        "every delivered trade stored or spooled",
        Duration::from_secs(60),
        || async {
            for s in SYMBOLS {
                let mut have = stored_ids(&reader, s).await;
                have.extend(spooled_trade_ids(&spool, s));
                if have != sim.delivered(s) {
                    return false;
                }
            }
            true
        },
    )
    .await;
    let pid = first.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .unwrap()
            .success()
    );
    let _ = first.wait().await;
    let left = spooled_files(&spool);
    assert!(left >= 3, "the spool survives the kill");
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    lock.close().await.unwrap();

    let mut second = spawn();
    common::wait_stored_equals_delivered(&reader, &sim, &SYMBOLS).await;
    wait_for("spool emptied", Duration::from_secs(30), || async {
        spooled_files(&spool) == 0
    })
    .await;
    let pid = second.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(20), second.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    for s in SYMBOLS {
        assert_eq!(
            stored_ids(&reader, s).await,
            sim.delivered(s),
            "{s}: zero rows lost"
        );
    }
    eprintln!(
        "sigkill: {left} spool files replayed; trades delivered {}",
        SYMBOLS
            .iter()
            .map(|s| sim.delivered(s).len())
            .sum::<usize>()
    );
    reader.close().await;
    sim.shutdown().await;
}

fn spooled_files(dir: &Path) -> usize {
    Spool::open(dir).map(|s| s.files()).unwrap_or(0)
}

fn spooled_trade_ids(dir: &Path, symbol: &str) -> BTreeSet<i64> {
    let Ok(s) = Spool::open(dir) else {
        return BTreeSet::new();
    };
    let mut out = BTreeSet::new();
    for p in s.pending().unwrap_or_default() {
        if let Ok(b) = Spool::read(&p) {
            for ev in b.events() {
                if let Event::Trade(t) = ev
                    && &*t.symbol == symbol
                {
                    out.insert(t.trade_id);
                }
            }
        }
    }
    out
}

/// Without a usable spool a stuck database means backpressure: the queue fills to capacity and
/// the readers wait; nothing they decoded is dropped, it is all stored once the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_when_the_spool_is_unusable() {
    let (dir, url) = sqlite_db();
    let sim = sim::start(SimConfig {
        seed: 15,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let mut cfg = recorder_config(&sim.ws_url(), &sim.rest_url(), &url, &SYMBOLS, "");
    cfg.writer.write_timeout_s = 1;
    cfg.writer.queue_capacity = 200;
    cfg.writer.flush_interval_ms = 50;
    cfg.writer.spool_max_bytes = 0; // spool "full" from the start
    cfg.writer.spool_dir = Some(dir.path().join("spool"));
    cfg.connection.reconnect_initial_ms = 50;
    let stop = CancellationToken::new();
    let (_store, stats, tasks) = mdrec::recorder::start(cfg, Arc::new(CdcV1), stop.clone())
        .await
        .unwrap();
    wait_for("streaming", Duration::from_secs(30), || async {
        SYMBOLS.iter().all(|s| sim.delivered(s).len() >= 50)
    })
    .await;
    let mut lock = sqlx::SqliteConnection::connect_with(
        &sqlx::sqlite::SqliteConnectOptions::new().filename(dir.path().join("test.db")),
    )
    .await
    .unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut lock)
        .await
        .unwrap();
    wait_for(
        "the queue to fill (readers now wait)",
        Duration::from_secs(60),
        || async { stats.queue_depth() == 200 },
    )
    .await;
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    lock.close().await.unwrap();
    wait_for("the queue to drain", Duration::from_secs(60), || async {
        stats.queue_depth() < 200
    })
    .await;
    sim.halt();
    let store = Store::connect(&url).await.unwrap();
    let decoded = || -> u64 {
        SYMBOLS
            .iter()
            .map(|s| stats.worker(s).trades.load(Ordering::Relaxed))
            .sum()
    };
    wait_for(
        "every decoded trade stored",
        Duration::from_secs(60),
        || async {
            let mut n = 0u64;
            for s in SYMBOLS {
                n += stored_ids(&store, s).await.len() as u64;
            }
            n == decoded()
        },
    )
    .await;
    stop.cancel();
    tasks.close();
    tasks.wait().await;
    assert_eq!(stats.writer.spooled_rows.load(Ordering::Relaxed), 0);
    for s in SYMBOLS {
        let stored = stored_ids(&store, s).await;
        assert!(
            stored.is_subset(&sim.delivered(s)),
            "{s}: only delivered trades"
        );
    }
    store.close().await;
    sim.shutdown().await;
}

/// SIGTERM while the database is stuck: the process exits 0 within `[shutdown] timeout_s`,
/// with what the database did not take in the spool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_stuck_database_exits_within_the_deadline() {
    let sim = sim::start(SimConfig {
        seed: 16,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rec.db");
    let spool = dir.path().join("spool");
    let cfg_path = dir.path().join("c.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "[venue]\nkind = \"cdc-v1\"\nws_url = \"{}\"\nrest_url = \"{}\"\n[database]\nurl = \"sqlite://{}\"\n[record]\nsymbols = [\"btcusdt\"]\nmax_time_ahead_s = 86400\n[metrics]\nlisten = \"127.0.0.1:0\"\n[writer]\nwrite_timeout_s = 60\nspool_dir = {:?}\n[shutdown]\ntimeout_s = 3\n",
            sim.ws_url(),
            sim.rest_url(),
            db.display(),
            spool.display().to_string()
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mdrec"))
        .args(["run", "-c", cfg_path.to_str().unwrap()])
        .env_remove("MDREC_DATABASE_URL")
        .env_remove("STATE_DIRECTORY")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let reader = Store::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    wait_for("recording", Duration::from_secs(60), || async {
        stored_ids(&reader, "btcusdt").await.len() >= 20
    })
    .await;
    let mut lock = sqlx::SqliteConnection::connect_with(
        &sqlx::sqlite::SqliteConnectOptions::new().filename(&db),
    )
    .await
    .unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut lock)
        .await
        .unwrap();
    // a write is now hanging (write_timeout_s = 60 would keep it hanging for a minute)
    wait_for("more trades delivered", Duration::from_secs(30), || async {
        sim.delivered("btcusdt").len() >= 100
    })
    .await;
    let t0 = std::time::Instant::now();
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap();
    let took = t0.elapsed();
    assert_eq!(status.code(), Some(0));
    assert!(
        took < Duration::from_secs(4),
        "exited after {took:?}, deadline 3 s"
    );
    assert!(
        spooled_files(&spool) >= 1,
        "what the database did not take is in the spool"
    );
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    eprintln!(
        "stuck-database SIGTERM: exit 0 after {took:?}, {} spool files",
        spooled_files(&spool)
    );
    reader.close().await;
    sim.shutdown().await;
}
