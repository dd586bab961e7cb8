//! Shared test harness: fresh databases, the simulator, waiting on conditions with deadlines.
#![allow(dead_code)]

pub mod config;
pub mod tls;
pub mod venue;

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use mdrec::config::Config;

/// Recorder logs on the test's output when `MDREC_TEST_LOG` holds a filter (`info`, `debug`).
pub fn init_log() {
    if let Ok(filter) = std::env::var("MDREC_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// Where one `cargo test` run (the test binaries' common parent) lists what it did not test.
pub fn not_tested_dir(run: u32) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("not-tested")
        .join(run.to_string())
}

/// A test that cannot run its checks here (`what` is missing; `install` says how to get it)
/// and passes without them: said on stderr and added to the run's list of what was not
/// tested, which `tests/zz_not_tested.rs` prints at the end of `cargo test`.
pub fn not_tested(what: &str, install: &str) {
    not_tested_in(
        &not_tested_dir(std::os::unix::process::parent_id()),
        what,
        install,
    );
}

/// [`not_tested`] into the list in `dir`.
pub fn not_tested_in(dir: &std::path::Path, what: &str, install: &str) {
    eprintln!("SKIP: {what} ({install})");
    let test = std::thread::current().name().unwrap_or("?").to_string();
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|s| {
            s.rsplit_once('-')
                .map_or(s.clone(), |(name, _)| name.to_string())
        })
        .unwrap_or_default();
    let file = dir.join(format!(
        "{binary}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let line = format!("{binary}::{test}\t{what}\t{install}\n");
    if let Err(e) = std::fs::create_dir_all(dir).and_then(|_| std::fs::write(&file, line)) {
        eprintln!(
            "could not list {test} as not tested in {}: {e}",
            dir.display()
        );
    }
}

/// PostgreSQL server for tests; `MDREC_TEST_PG_URL` overrides.
pub fn pg_admin_url() -> String {
    std::env::var("MDREC_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// With `MDREC_REQUIRE_PG=1` (CI) a missing server fails the test instead of skipping it.
pub fn pg_required() -> bool {
    std::env::var("MDREC_REQUIRE_PG")
        .map(|v| v == "1")
        .unwrap_or(false)
}

/// A fresh, empty PostgreSQL database, dropped by [`PgDb::drop_db`].
pub struct PgDb {
    pub url: String,
    name: String,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl PgDb {
    /// None when no server answers and PostgreSQL is not required.
    pub async fn create() -> Option<PgDb> {
        use sqlx::Connection;
        let admin = pg_admin_url();
        let mut conn = match sqlx::PgConnection::connect(&admin).await {
            Ok(c) => c,
            Err(e) if !pg_required() => {
                not_tested(
                    &format!("no PostgreSQL at {admin} ({e})"),
                    "start one (apt-get install postgresql) or set MDREC_TEST_PG_URL; \
                     MDREC_REQUIRE_PG=1 makes this a failure",
                );
                return None;
            }
            Err(e) => panic!("PostgreSQL required (MDREC_REQUIRE_PG=1) but {admin} failed: {e}"),
        };
        let name = format!(
            "mdrec_t_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            fastrand::u32(..)
        );
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let base = admin
            .rsplit_once('/')
            .map(|(b, _)| b.to_string())
            .unwrap_or(admin.clone());
        Some(PgDb {
            url: format!("{base}/{name}"),
            name,
        })
    }

    pub async fn drop_db(self) {
        use sqlx::Connection;
        let _ = std::fs::remove_dir_all(pg_spool_dir(&self.url));
        if let Ok(mut conn) = sqlx::PgConnection::connect(&pg_admin_url()).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut conn)
            .await;
        }
    }
}

/// The spool directory of tests recording into the PostgreSQL database `url` names: its own,
/// in the temporary directory (the default would be the working directory, shared by every
/// test), removed by [`PgDb::drop_db`].
pub fn pg_spool_dir(url: &str) -> std::path::PathBuf {
    let name = url.rsplit('/').next().unwrap_or("x");
    let name = name.split('?').next().unwrap_or(name);
    std::env::temp_dir().join(format!("mdrec-test-spool-{name}"))
}

/// A SQLite URL in a fresh temporary directory (kept alive by the returned guard).
pub fn sqlite_db() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("test.db").display());
    (dir, url)
}

/// Polls `cond` every 10 ms until it holds; panics with `what` after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A v1 recorder configuration for a simulator (see [`config::TestConfig`]).
pub fn recorder_config(
    ws_url: &str,
    rest_url: &str,
    db_url: &str,
    symbols: &[&str],
    extra: &str,
) -> Config {
    config::TestConfig::new("cdc-v1", ws_url, rest_url, db_url)
        .symbols(symbols)
        .writer("flush_interval_ms = 50\nbatch_rows = 500")
        .extra(extra)
        .build()
}

/// A private PostgreSQL server in a temporary directory, which a test may stop and start
/// (the shared server on 5432 must never be stopped by a test).
pub struct OwnPg {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    pub port: u16,
    as_postgres: bool,
}

impl OwnPg {
    /// None (skip) when the server binaries are missing and PostgreSQL is not required.
    pub fn create() -> Option<OwnPg> {
        let bin = std::fs::read_dir("/usr/lib/postgresql").ok().and_then(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").exists())
                .max()
        });
        let Some(bin) = bin else {
            if pg_required() {
                panic!("PostgreSQL server binaries not found under /usr/lib/postgresql");
            }
            not_tested(
                "no PostgreSQL server binaries under /usr/lib/postgresql",
                "apt-get install postgresql",
            );
            return None;
        };
        let as_postgres = std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let dir = tempfile::Builder::new()
            .prefix("mdrec-pg")
            .tempdir()
            .expect("tempdir");
        if as_postgres {
            // initdb refuses to run as root: the cluster belongs to the postgres user
            let ok = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres", &dir.path().display().to_string()])
                .status()
                .expect("chown");
            assert!(ok.success());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("free port")
            .local_addr()
            .expect("addr")
            .port();
        let pg = OwnPg {
            dir,
            bin,
            port,
            as_postgres,
        };
        let data = pg.data();
        pg.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        pg.start();
        Some(pg)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool).display().to_string();
        let mut cmd = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--", &exe]);
            c
        } else {
            std::process::Command::new(&exe)
        };
        let out = cmd.args(args).output().expect("run a PostgreSQL tool");
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn start(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &opts,
                "-l",
                &log,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }

    pub fn stop(&self) {
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-m", "fast", "-w", "-t", "60", "stop"],
        );
    }
}

impl Drop for OwnPg {
    fn drop(&mut self) {
        let exe = self.bin.join("pg_ctl").display().to_string();
        let data = self.data();
        let mut cmd = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--", &exe]);
            c
        } else {
            std::process::Command::new(&exe)
        };
        let _ = cmd.args(["-D", &data, "-m", "immediate", "stop"]).output();
    }
}

/// Trade ids stored for a symbol (empty while the database cannot be read).
pub async fn stored_ids(
    store: &mdrec::store::Store,
    symbol: &str,
) -> std::collections::BTreeSet<i64> {
    stored_ids_of(store, mdrec::venue::cdc_v1::NAME, symbol).await
}

/// Trade ids stored for a venue's symbol (empty while the database cannot be read).
pub async fn stored_ids_of(
    store: &mdrec::store::Store,
    venue: &str,
    symbol: &str,
) -> std::collections::BTreeSet<i64> {
    store
        .load_trades(venue, symbol)
        .await
        .map(|v| v.iter().map(|t| t.trade_id).collect())
        .unwrap_or_default()
}

/// Waits until, for every symbol, the stored trade ids are exactly those the simulator delivered.
pub async fn wait_stored_equals_delivered(
    store: &mdrec::store::Store,
    sim: &mdrec::sim::SimHandle,
    symbols: &[&str],
) {
    wait_for(
        "database to hold exactly the delivered trades",
        Duration::from_secs(60),
        || async {
            for s in symbols {
                if stored_ids(store, s).await != sim.delivered(s) {
                    return false;
                }
            }
            true
        },
    )
    .await;
}

/// Prints a fault scenario's figures (generated, delivered, stored trades) for the issue notes.
pub async fn report(
    label: &str,
    store: &mdrec::store::Store,
    sim: &mdrec::sim::SimHandle,
    symbols: &[&str],
) {
    let (mut generated, mut delivered, mut stored) = (0, 0, 0);
    for s in symbols {
        generated += sim.trades(s).len();
        delivered += sim.delivered(s).len();
        stored += stored_ids(store, s).await.len();
    }
    eprintln!("{label}: generated {generated}, delivered {delivered}, stored {stored}");
}

/// (symbol, close_reason) of every session row, by symbol then connect time.
pub async fn session_reasons(store: &mdrec::store::Store) -> Vec<(String, Option<String>)> {
    const SQL: &str = "SELECT symbol, close_reason FROM sessions ORDER BY symbol, connected_at_us";
    match store {
        mdrec::store::Store::Sqlite(s) => sqlx::query_as(SQL).fetch_all(s.pool()).await,
        mdrec::store::Store::Postgres(s) => sqlx::query_as(SQL).fetch_all(s.pool()).await,
    }
    .expect("read sessions")
}

/// A recorder running in this test's process on the real venue code, stopped the way SIGTERM
/// stops the daemon (intake stops, the writer drains).
pub struct Recorder {
    pub stop: tokio_util::sync::CancellationToken,
    pub tasks: tokio_util::task::TaskTracker,
    pub stats: std::sync::Arc<mdrec::recorder::RunStats>,
}

impl Recorder {
    pub async fn start(cfg: &Config) -> Recorder {
        init_log();
        let stop = tokio_util::sync::CancellationToken::new();
        let venue = mdrec::venue::registry::configured(&cfg.venue).expect("a known venue");
        let (_store, stats, tasks) = mdrec::recorder::start(cfg.clone(), venue, stop.clone())
            .await
            .expect("recorder starts");
        Recorder { stop, tasks, stats }
    }

    /// Stops and waits until everything received is written; returns the run's counters.
    pub async fn stop(self) -> std::sync::Arc<mdrec::recorder::RunStats> {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        self.stats
    }
}

/// A trade as the venue published it: id, side, price, quantity, exchange time.
pub type TradeContent = (
    i64,
    mdrec::model::Side,
    mdrec::decimal::Dec,
    mdrec::decimal::Dec,
    i64,
);

/// A symbol's stored trades by id (empty while the database cannot be read).
pub async fn stored_trades(
    store: &mdrec::store::Store,
    symbol: &str,
) -> std::collections::BTreeMap<i64, TradeContent> {
    stored_trades_of(store, "cdc-v1", symbol).await
}

/// A venue's symbol's stored trades by id (empty while the database cannot be read).
pub async fn stored_trades_of(
    store: &mdrec::store::Store,
    venue: &str,
    symbol: &str,
) -> std::collections::BTreeMap<i64, TradeContent> {
    store
        .load_trades(venue, symbol)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|t| {
            (
                t.trade_id,
                (t.trade_id, t.side, t.price, t.qty, t.event_time_ms),
            )
        })
        .collect()
}

/// The simulator's ledger of a symbol from trade id `first` on, by id.
pub fn ledger_from(
    sim: &mdrec::sim::SimHandle,
    symbol: &str,
    first: i64,
) -> std::collections::BTreeMap<i64, TradeContent> {
    sim.trades(symbol)
        .into_iter()
        .filter(|t| t.id >= first)
        .map(|t| {
            (
                t.id,
                (
                    t.id,
                    t.side,
                    mdrec::decimal::Dec::from(t.price),
                    mdrec::decimal::Dec::from(t.qty),
                    t.time_ms,
                ),
            )
        })
        .collect()
}

/// True when every symbol's stored trades equal the ledger from the first stored one on.
pub async fn stored_equals_ledger(
    store: &mdrec::store::Store,
    sim: &mdrec::sim::SimHandle,
    symbols: &[&str],
) -> bool {
    for s in symbols {
        let got = stored_trades(store, s).await;
        let Some(first) = got.keys().next().copied() else {
            return false;
        };
        if got != ledger_from(sim, s, first) {
            return false;
        }
    }
    true
}

/// A child's stderr, collected line by line as it is written (read it any time).
#[derive(Clone, Default)]
pub struct Log(std::sync::Arc<std::sync::Mutex<String>>);

impl Log {
    pub fn follow(child: &mut tokio::process::Child) -> Log {
        let log = Log::default();
        if let Some(e) = child.stderr.take() {
            let l = log.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncBufReadExt;
                let mut lines = tokio::io::BufReader::new(e).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut s = l.0.lock().unwrap();
                    s.push_str(&line);
                    s.push('\n');
                }
            });
        }
        log
    }

    pub fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }
}

/// Every unrecoverable trade hole has its recovered stretch on record (the two rows are
/// written one after the other).
pub fn recovered_parts_on_record(gaps: &[mdrec::model::Gap]) -> bool {
    gaps.iter()
        .filter(|g| g.stream == "trades" && g.status == mdrec::model::GapStatus::Unrecoverable)
        .all(|g| {
            gaps.iter().any(|p| {
                p.symbol == g.symbol
                    && p.stream == g.stream
                    && p.status == mdrec::model::GapStatus::Filled
                    && Some(p.start_ms) == g.end_ms
            })
        })
}

/// The `filled` row for the stretch of an unrecoverable trade hole that REST recovered: it
/// starts where the unrecoverable row ends.
pub fn recovered_part<'a>(
    gaps: &'a [mdrec::model::Gap],
    unrecoverable: &mdrec::model::Gap,
) -> &'a mdrec::model::Gap {
    gaps.iter()
        .find(|p| {
            p.symbol == unrecoverable.symbol
                && p.stream == unrecoverable.stream
                && p.status == mdrec::model::GapStatus::Filled
                && Some(p.start_ms) == unrecoverable.end_ms
        })
        .unwrap_or_else(|| panic!("no filled row after {unrecoverable:?} in {gaps:#?}"))
}

/// What the list in `dir` says, as the end of `cargo test` prints it: each missing part, how
/// to get it, and the tests that passed without it; or that nothing was skipped.
pub fn not_tested_summary(dir: &std::path::Path) -> String {
    use std::collections::BTreeMap;
    use std::fmt::Write;
    let mut by_reason: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        for line in text.lines() {
            let mut f = line.splitn(3, '\t');
            let (Some(test), Some(what), Some(install)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            by_reason
                .entry((what.to_string(), install.to_string()))
                .or_default()
                .push(test.to_string());
        }
    }
    let mut out = String::new();
    if by_reason.is_empty() {
        out.push_str(
            "not tested: nothing (no test skipped its checks for a missing server or tool)\n",
        );
        return out;
    }
    let n: usize = by_reason.values().map(Vec::len).sum();
    let _ = writeln!(
        out,
        "NOT TESTED: {n} test(s) passed without running their checks:"
    );
    for ((what, install), mut tests) in by_reason {
        tests.sort();
        let _ = writeln!(out, "  {what}\n    to test it: {install}");
        for t in tests {
            let _ = writeln!(out, "    {t}");
        }
    }
    out
}

/// `mdrec <command> --db URL`, the environment's database left out.
pub fn mdrec_cmd(command: &str, db: &str) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_mdrec"));
    c.args([command, "--db", db])
        .env_remove("MDREC_DATABASE_URL");
    c
}
