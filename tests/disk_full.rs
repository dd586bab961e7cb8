//! Disk full: the SQLite database on a small tmpfs fills up while the market streams. Writes
//! fail with SQLITE_FULL, the writer discards the connection and spools (the spool is on
//! another disk), recording goes on; once there is room again the spool is replayed, and a row
//! counts as written only after its commit: the database ends up holding exactly the trades
//! the sockets delivered, and the replayed-row counter agrees with what is stored.
//! The spool's disk full while the database is down: the writer holds the batch and retries
//! the database in place, the queue fills and the readers wait (backpressure); when the
//! database returns everything read is stored.
//! Needs root (mount); CI runs as root.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{OwnPg, Recorder, wait_for};
use mdrec::sim::{self, SimConfig};
use mdrec::store::Store;

const SYMBOLS: [&str; 2] = ["btcusdt", "ethusdt"];

/// A tmpfs of a given size mounted on a fresh directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size_kb: u64) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size_kb}k,mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            ok.success(),
            "mounting a tmpfs failed: this test needs root (CI runs as root)"
        );
        Tmpfs { dir }
    }

    fn resize(&self, size_kb: u64) {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size_kb}k"), "tmpfs"])
            .arg(self.dir.path())
            .status()
            .expect("run mount");
        assert!(ok.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Records until the database's disk is full, goes on into the spool, makes room, and checks
/// that the database ends up with exactly the delivered trades and every spooled row replayed.
async fn full_database_disk(db_url: &str, disk: &Tmpfs, what: &str, seed: u64) {
    let sim = sim::start(SimConfig {
        seed,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let spool = tempfile::tempdir().unwrap();
    let text = format!(
        "[venue]\nkind = \"cdc-v1\"\nws_url = \"{}\"\nrest_url = \"{}\"\n[database]\nurl = \"{db_url}\"\n\
         [record]\nsymbols = [\"btcusdt\", \"ethusdt\"]\nklines = [\"1min\"]\ndepth = \"step0\"\n\
         depth_levels = 20\nticker = true\nmax_time_ahead_s = 86400\n[metrics]\nlisten = \"\"\n\
         [writer]\nflush_interval_ms = 50\nspool_dir = {:?}\nwrite_timeout_s = 5\n\
         [backfill]\nenabled = false\n",
        sim.ws_url(),
        sim.rest_url(),
        spool.path()
    );
    let cfg = mdrec::venue::registry::parse_config(&text).unwrap();
    mdrec::venue::registry::check_config(&cfg).unwrap();
    let rec = Recorder::start(&cfg).await;
    // books fill the small disk quickly
    wait_for("the disk to fill", Duration::from_secs(120), || async {
        rec.stats.writer.spooled_rows.load(Ordering::Relaxed) > 0
    })
    .await;
    let spooled_at_full = rec.stats.writer.spooled_rows.load(Ordering::Relaxed);
    let before: Vec<usize> = SYMBOLS.iter().map(|s| sim.delivered(s).len()).collect();
    // recording goes on while the disk is full
    wait_for(
        "recording on a full disk",
        Duration::from_secs(30),
        || async {
            SYMBOLS
                .iter()
                .zip(&before)
                .all(|(s, n)| sim.delivered(s).len() >= n + 30)
                && rec.stats.writer.spooled_rows.load(Ordering::Relaxed) > spooled_at_full
        },
    )
    .await;
    // room again
    disk.resize(256 * 1024);
    wait_for("the spool replayed", Duration::from_secs(60), || async {
        rec.stats.writer.spool_files.load(Ordering::Relaxed) == 0
            && rec.stats.writer.failing_since_ms.load(Ordering::Relaxed) == 0
    })
    .await;
    sim.halt();
    let store = Store::connect(db_url).await.unwrap();
    common::wait_stored_equals_delivered(&store, &sim, &SYMBOLS).await;
    let stats = rec.stop().await;
    let mut stored_total = 0;
    for s in SYMBOLS {
        let stored = common::stored_ids(&store, s).await;
        assert_eq!(stored, sim.delivered(s), "{s}: every delivered trade, once");
        stored_total += stored.len();
    }
    let w = &stats.writer;
    let spooled = w.spooled_rows.load(Ordering::Relaxed);
    let replayed = w.replayed_rows.load(Ordering::Relaxed);
    assert!(spooled > 0);
    assert_eq!(
        replayed, spooled,
        "every spooled row replayed, counted once"
    );
    assert_eq!(w.dropped_rows.load(Ordering::Relaxed), 0);
    let full =
        w.errors_by_class[mdrec::store::ErrorClass::Unavailable as usize].load(Ordering::Relaxed);
    assert!(full > 0, "a full disk is an unavailable database");
    println!(
        "disk full ({what}): {full} writes failed, {spooled} rows spooled and {replayed} replayed, {stored_total} trades delivered and stored, 0 dropped"
    );
    store.close().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_on_a_full_disk_loses_nothing() {
    let disk = Tmpfs::mount(640);
    let db_url = format!("sqlite://{}", disk.dir.path().join("rec.db").display());
    full_database_disk(&db_url, &disk, "SQLite on a 640 KB tmpfs", 81).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_on_a_full_disk_while_the_database_is_down_loses_nothing_read() {
    let Some(pg) = OwnPg::create() else { return };
    let disk = Tmpfs::mount(96);
    let sim = sim::start(SimConfig {
        seed: 82,
        step: Duration::from_millis(50),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let text = format!(
        "[venue]\nkind = \"cdc-v1\"\nws_url = \"{}\"\nrest_url = \"{}\"\n[database]\nurl = \"{}\"\n\
         [record]\nsymbols = [\"btcusdt\", \"ethusdt\"]\nklines = [\"1min\"]\ndepth = \"step0\"\n\
         ticker = true\nmax_time_ahead_s = 86400\n[metrics]\nlisten = \"\"\n\
         [writer]\nflush_interval_ms = 50\nqueue_capacity = 512\nspool_dir = {:?}\nwrite_timeout_s = 2\n\
         [backfill]\naudit_interval_s = 0\n",
        sim.ws_url(),
        sim.rest_url(),
        pg.url(),
        disk.dir.path().join("spool")
    );
    let cfg = mdrec::venue::registry::parse_config(&text).unwrap();
    mdrec::venue::registry::check_config(&cfg).unwrap();
    let rec = Recorder::start(&cfg).await;
    wait_for("recording", Duration::from_secs(30), || async {
        SYMBOLS.iter().all(|s| sim.delivered(s).len() >= 20)
    })
    .await;
    pg.stop();
    wait_for(
        "the spool's disk full and the queue full (readers waiting)",
        Duration::from_secs(120),
        || async { rec.stats.queue_depth() >= 500 },
    )
    .await;
    let spool_bytes = rec.stats.writer.spool_bytes.load(Ordering::Relaxed);
    pg.start();
    wait_for(
        "the queue drained and the spool replayed",
        Duration::from_secs(60),
        || async {
            rec.stats.queue_depth() == 0
                && rec.stats.writer.spool_files.load(Ordering::Relaxed) == 0
        },
    )
    .await;
    sim.halt();
    let store = Store::connect(&pg.url()).await.unwrap();
    let ledger_equal = || async {
        for s in SYMBOLS {
            let got: std::collections::BTreeSet<i64> =
                common::stored_ids(&store, s).await.into_iter().collect();
            let Some(first) = got.first().copied() else {
                return false;
            };
            let want: std::collections::BTreeSet<i64> = sim
                .trades(s)
                .iter()
                .map(|t| t.id)
                .filter(|id| *id >= first)
                .collect();
            if got != want || !sim.delivered(s).is_subset(&got) {
                return false;
            }
        }
        let gaps = store.load_gaps("cdc-v1", None).await.unwrap_or_default();
        gaps.iter()
            .all(|g| g.status == mdrec::model::GapStatus::Filled)
    };
    wait_for(
        "every trade stored, every hole filled",
        Duration::from_secs(60),
        ledger_equal,
    )
    .await;
    let stats = rec.stop().await;
    assert_eq!(stats.writer.dropped_rows.load(Ordering::Relaxed), 0);
    println!(
        "spool disk full (96 KB tmpfs, PostgreSQL down): {spool_bytes} bytes spooled when the next batch no longer fit, queue at its 512 limit (readers waiting); {} rows spooled and replayed, every trade stored, {} gap rows all filled",
        stats.writer.replayed_rows.load(Ordering::Relaxed),
        store.load_gaps("cdc-v1", None).await.unwrap().len()
    );
    store.close().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_on_a_full_disk_loses_nothing() {
    let Some(pg) = OwnPg::create() else { return };
    // the database's tables live on a 1 MB tmpfs (a tablespace); its WAL stays on the big disk
    let disk = Tmpfs::mount(1024);
    let ok = std::process::Command::new("chown")
        .args(["postgres:postgres", &disk.dir.path().display().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&pg.url()).await.unwrap();
        for sql in [
            format!(
                "CREATE TABLESPACE small LOCATION '{}'",
                disk.dir.path().display()
            ),
            "CREATE DATABASE rec".to_string(),
            // every table the recorder's migration creates goes to the small disk
            "ALTER DATABASE rec SET default_tablespace = small".to_string(),
        ] {
            sqlx::query(&sql).execute(&mut c).await.unwrap();
        }
    }
    let db_url = format!("{}/rec", pg.url().rsplit_once('/').unwrap().0);
    full_database_disk(
        &db_url,
        &disk,
        "PostgreSQL tables on a 1 MB tmpfs tablespace",
        83,
    )
    .await;
    drop(pg); // stops the server before the tmpfs goes
}
