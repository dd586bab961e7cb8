//! Every way the daemon ends leaves no session open and loses nothing received: SIGTERM
//! exits 0 with every session closed, a second SIGINT stops it at once (unwritten rows go to
//! the spool, replayed at the next start), SIGTERM while the database has not answered yet is
//! honoured at once, a listener that cannot be bound stops start-up before any session opens,
//! and sessions a SIGKILLed run left open are closed at the next start at that run's last
//! stored row, so coverage's live share is true. SIGHUP reloads the configuration: symbols
//! added start, symbols removed stop (their sessions closed), the others record on untouched;
//! a file that does not validate is refused, naming the key, and recording goes on.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{Log, PgDb};
use mdrec::sim::{self, SimConfig};
use mdrec::store::Store;
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_mdrec");
const SYMBOLS: [&str; 2] = ["btcusdt", "ethusdt"];

fn config(dir: &std::path::Path, ws: &str, rest: &str, db_url: &str) -> std::path::PathBuf {
    config_with(dir, ws, rest, db_url, &SYMBOLS, "")
}

/// The daemon's file with these symbols, and `extra` (whole tables) at the end.
fn config_with(
    dir: &std::path::Path,
    ws: &str,
    rest: &str,
    db_url: &str,
    symbols: &[&str],
    extra: &str,
) -> std::path::PathBuf {
    let list: Vec<String> = symbols.iter().map(|s| format!("{s:?}")).collect();
    let text = format!(
        "[venue]\nkind = \"cdc-v1\"\nws_url = \"{ws}\"\nrest_url = \"{rest}\"\n[database]\nurl = \"{db_url}\"\n\
         [record]\nsymbols = [{}]\nklines = [\"1min\"]\nmax_time_ahead_s = 86400\n\
         [metrics]\nlisten = \"\"\n[backfill]\nenabled = false\n[writer]\nspool_dir = {:?}\n\
         [shutdown]\ntimeout_s = 10\n{extra}",
        list.join(", "),
        dir.join("spool")
    );
    let path = dir.join("mdrec.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn spawn(cfg: &std::path::Path) -> Child {
    Command::new(BIN)
        .args(["run", "-c", cfg.to_str().unwrap()])
        .env_remove("MDREC_DATABASE_URL")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

fn signal(child: &Child, sig: &str) {
    let pid = child.id().expect("child pid").to_string();
    let ok = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid])
        .status()
        .unwrap();
    assert!(ok.success());
}

async fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        use tokio::io::AsyncReadExt;
        let _ = e.read_to_string(&mut s).await;
    }
    s
}

/// Trades stored so far (SQLite read-only, so the test never races the file's creation).
async fn count_trades(db_url: &str) -> i64 {
    let sql = "SELECT count(*) FROM trades";
    if let Some(path) = db_url.strip_prefix("sqlite://") {
        let ro = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(path)
            .read_only(true);
        match sqlx::SqlitePool::connect_with(ro).await {
            Ok(pool) => {
                let n = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap_or(0);
                pool.close().await;
                n
            }
            Err(_) => 0,
        }
    } else {
        match sqlx::PgPool::connect(db_url).await {
            Ok(pool) => {
                let n = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap_or(0);
                pool.close().await;
                n
            }
            Err(_) => 0,
        }
    }
}

/// Waits until the recorder has stored `n` trades.
async fn wait_stored(child: &mut Child, db_url: &str, n: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "recorder exited early with {status}: {}",
                stderr_of(child).await
            );
        }
        let got = count_trades(db_url).await;
        if got >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {got} trades in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn sessions(store: &Store) -> Vec<(String, i64, Option<i64>, Option<String>)> {
    let sql = "SELECT symbol, connected_at_us, disconnected_at_us, close_reason FROM sessions \
               ORDER BY symbol, connected_at_us";
    match store {
        Store::Sqlite(s) => sqlx::query_as(sql).fetch_all(s.pool()).await,
        Store::Postgres(s) => sqlx::query_as(sql).fetch_all(s.pool()).await,
    }
    .unwrap()
}

/// A fresh database of either kind for one test: SQLite in the test's directory, or a fresh
/// PostgreSQL database (None: PostgreSQL not there and not required).
async fn database(kind: &str, dir: &std::path::Path) -> Option<(String, Option<PgDb>)> {
    match kind {
        "sqlite" => Some((format!("sqlite://{}", dir.join("rec.db").display()), None)),
        _ => {
            let db = PgDb::create().await?;
            Some((db.url.clone(), Some(db)))
        }
    }
}

/// Runs the daemon until it stored some trades, sends `signals` (a short pause between), and
/// returns its exit status, stderr and the store.
async fn stop_with(
    signals: &[&str],
    dir: &std::path::Path,
    db_url: &str,
) -> (Option<i32>, String, Store, sim::SimHandle) {
    let sim = sim::start(SimConfig::default()).await.unwrap();
    let cfg = config(dir, &sim.ws_url(), &sim.rest_url(), db_url);
    let mut child = spawn(&cfg);
    wait_stored(&mut child, db_url, 100).await;
    let log = Log::follow(&mut child);
    for (i, s) in signals.iter().enumerate() {
        if i > 0 {
            // signals can coalesce: send the next once the first one's shutdown has begun
            common::wait_for(
                "the first signal handled",
                Duration::from_secs(10),
                || async { log.text().contains("stopping") },
            )
            .await;
        }
        signal(&child, s);
    }
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("exits within 20 s")
        .unwrap();
    // the log reader ends with the pipe
    common::wait_for("the log to end", Duration::from_secs(5), || async {
        log.text().contains("shutdown complete") || log.text().contains("second signal")
    })
    .await;
    let stderr = log.text();
    sim.halt();
    let store = Store::connect(db_url).await.unwrap();
    (status.code(), stderr, store, sim)
}

/// (symbol, session_id) of the sessions still open.
async fn open_sessions(store: &Store) -> Vec<(String, String)> {
    let sql = "SELECT symbol, session_id FROM sessions WHERE disconnected_at_us IS NULL \
               ORDER BY symbol";
    match store {
        Store::Sqlite(s) => sqlx::query_as(sql).fetch_all(s.pool()).await,
        Store::Postgres(s) => sqlx::query_as(sql).fetch_all(s.pool()).await,
    }
    .unwrap()
}

async fn sighup_reloads_symbols_and_keeps_the_rest_recording(kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let Some((db_url, pg)) = database(kind, dir.path()).await else {
        return;
    };
    let sim = sim::start(SimConfig {
        symbols: vec!["btcusdt".into(), "ethusdt".into(), "xrpusdt".into()],
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let (ws, rest) = (sim.ws_url(), sim.rest_url());
    let cfg = config(dir.path(), &ws, &rest, &db_url);
    let mut child = spawn(&cfg);
    wait_stored(&mut child, &db_url, 100).await;
    let log = Log::follow(&mut child);
    let store = Store::connect(&db_url).await.unwrap();
    common::wait_for("both sessions open", Duration::from_secs(20), || async {
        open_sessions(&store).await.len() == 2
    })
    .await;
    let before = open_sessions(&store).await;

    // ethusdt out, xrpusdt in, and a setting only a restart applies
    config_with(
        dir.path(),
        &ws,
        &rest,
        &db_url,
        &["btcusdt", "xrpusdt"],
        "[connection]\nsilence_timeout_s = 45\n",
    );
    signal(&child, "HUP");
    common::wait_for(
        "xrpusdt recorded, ethusdt's session closed",
        Duration::from_secs(30),
        || async {
            !common::stored_ids(&store, "xrpusdt").await.is_empty()
                && open_sessions(&store)
                    .await
                    .iter()
                    .all(|(s, _)| s != "ethusdt")
        },
    )
    .await;
    let text = log.text();
    assert!(text.contains("configuration reloaded"), "{text}");
    assert!(
        text.contains("connection.silence_timeout_s") && text.contains("next start"),
        "the setting a restart applies is named: {text}"
    );
    let rows = sessions(&store).await;
    let eth: Vec<_> = rows.iter().filter(|r| r.0 == "ethusdt").collect();
    assert_eq!(eth.len(), 1, "{rows:?}");
    assert_eq!(eth[0].3.as_deref(), Some("removed from the configuration"));
    // btcusdt untouched: the same session, still open, still recording
    let btc_session = before.iter().find(|r| r.0 == "btcusdt").cloned().unwrap();
    assert!(open_sessions(&store).await.contains(&btc_session));
    let btc = common::stored_ids(&store, "btcusdt").await.len();
    common::wait_for("btcusdt recording on", Duration::from_secs(20), || async {
        common::stored_ids(&store, "btcusdt").await.len() > btc
    })
    .await;

    // a file that does not validate: refused, naming the key; nothing changes
    let bad = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("silence_timeout_s = 45", "silence_timeout_s = \"soon\"");
    std::fs::write(&cfg, bad).unwrap();
    signal(&child, "HUP");
    common::wait_for("the reload refused", Duration::from_secs(10), || async {
        log.text().contains("reload refused")
    })
    .await;
    let text = log.text();
    let refused = text.lines().find(|l| l.contains("reload refused")).unwrap();
    assert!(
        refused.contains("connection.silence_timeout_s"),
        "names the key: {refused}"
    );
    let open = open_sessions(&store).await;
    assert_eq!(
        open.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
        ["btcusdt", "xrpusdt"],
        "{open:?}"
    );
    assert!(
        open.contains(&btc_session),
        "btcusdt still on its first connection"
    );
    let xrp = common::stored_ids(&store, "xrpusdt").await.len();
    common::wait_for(
        "recording on after the refusal",
        Duration::from_secs(20),
        || async { common::stored_ids(&store, "xrpusdt").await.len() > xrp },
    )
    .await;

    // a symbol the venue does not list: refused like at start-up, with the closest names
    config_with(
        dir.path(),
        &ws,
        &rest,
        &db_url,
        &["btcusdt", "xrpusdt", "xrpusdx"],
        "[connection]\nsilence_timeout_s = 45\n",
    );
    signal(&child, "HUP");
    common::wait_for("the second refusal", Duration::from_secs(15), || async {
        log.text().matches("reload refused").count() == 2
    })
    .await;
    let text = log.text();
    let refused = text
        .lines()
        .filter(|l| l.contains("reload refused"))
        .nth(1)
        .unwrap();
    assert!(
        refused.contains("record.symbols") && refused.contains("did you mean xrpusdt?"),
        "{refused}"
    );
    assert_eq!(open_sessions(&store).await.len(), 2);

    signal(&child, "TERM");
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("exits within 20 s")
        .unwrap();
    assert_eq!(status.code(), Some(0), "{}", log.text());
    sim.halt();
    assert!(
        open_sessions(&store).await.is_empty(),
        "every session closed"
    );
    // what the kept and the added symbol were sent is stored, every trade once
    for s in ["btcusdt", "xrpusdt"] {
        assert_eq!(common::stored_ids(&store, s).await, sim.delivered(s), "{s}");
    }
    println!(
        "SIGHUP ({kind}): ethusdt stopped (session closed: removed from the configuration), \
         xrpusdt started, btcusdt on its first session throughout; a bad file and an unlisted \
         symbol refused naming the key; exit 0 with no session open"
    );
    store.close().await;
    sim.shutdown().await;
    if let Some(pg) = pg {
        pg.drop_db().await;
    }
}

async fn sigterm_stops_cleanly_and_closes_every_session(kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let Some((db_url, pg)) = database(kind, dir.path()).await else {
        return;
    };
    let (code, stderr, store, sim) = stop_with(&["TERM"], dir.path(), &db_url).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("SIGTERM"), "{stderr}");
    let rows = sessions(&store).await;
    assert_eq!(rows.len(), SYMBOLS.len(), "{rows:?}");
    for (sym, _, end, reason) in &rows {
        assert!(end.is_some(), "{sym}: session closed");
        assert_eq!(reason.as_deref(), Some("shutdown"), "{sym}");
    }
    for s in SYMBOLS {
        assert_eq!(common::stored_ids(&store, s).await, sim.delivered(s), "{s}");
    }
    store.close().await;
    sim.shutdown().await;
    if let Some(pg) = pg {
        pg.drop_db().await;
    }
}

async fn a_second_sigint_stops_at_once_and_loses_nothing(kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let Some((db_url, pg)) = database(kind, dir.path()).await else {
        return;
    };
    let (code, stderr, store, sim) = stop_with(&["INT", "INT"], dir.path(), &db_url).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("second signal"), "{stderr}");
    // whatever the fast stop did not write is in the spool: the next start replays it first
    let spool = mdrec::store::spool::Spool::open(&dir.path().join("spool")).unwrap();
    let spooled = spool.files();
    let writer = mdrec::store::writer::replay_spool(
        std::sync::Arc::new(Store::connect(&db_url).await.unwrap()),
        spool,
        Default::default(),
        Default::default(),
        Default::default(),
    )
    .await;
    assert!(writer.is_some_and(|s| s.is_empty()), "spool replayed");
    for (sym, _, end, _) in sessions(&store).await {
        assert!(end.is_some(), "{sym}: session closed");
    }
    for s in SYMBOLS {
        assert_eq!(common::stored_ids(&store, s).await, sim.delivered(s), "{s}");
    }
    println!(
        "second SIGINT ({kind}): exit 0, {spooled} spool files replayed after, every delivered trade stored"
    );
    store.close().await;
    sim.shutdown().await;
    if let Some(pg) = pg {
        pg.drop_db().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_the_database_does_not_answer_is_honoured() {
    // a "PostgreSQL" that accepts connections and never says a word
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = accepted.clone();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "ws://127.0.0.1:9/ws",
        "http://127.0.0.1:9",
        &format!("postgres://mdrec@{addr}/mdrec"),
    );
    let mut child = spawn(&cfg);
    // wait until it is connecting: the listener has a client
    common::wait_for("the daemon to connect", Duration::from_secs(20), || async {
        accepted.load(std::sync::atomic::Ordering::SeqCst) > 0
    })
    .await;
    let started = tokio::time::Instant::now();
    signal(&child, "TERM");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("SIGTERM honoured while connecting")
        .unwrap();
    let took = started.elapsed();
    let stderr = stderr_of(&mut child).await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    holder.abort();
}

async fn sessions_a_killed_run_left_open_are_closed_at_its_last_row(kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let Some((db_url, pg)) = database(kind, dir.path()).await else {
        return;
    };
    let sim = sim::start(SimConfig::default()).await.unwrap();
    let cfg = config(dir.path(), &sim.ws_url(), &sim.rest_url(), &db_url);
    let mut child = spawn(&cfg);
    wait_stored(&mut child, &db_url, 100).await;
    signal(&child, "KILL");
    let _ = child.wait().await;
    let killed_at_us = mdrec::model::now_us();
    let store = Store::connect(&db_url).await.unwrap();
    let before = sessions(&store).await;
    assert!(
        before.iter().all(|s| s.2.is_none()),
        "SIGKILL leaves them open: {before:?}"
    );
    // the newest row each symbol received: the last time the killed run is known alive
    let mut last_row = std::collections::HashMap::new();
    for s in SYMBOLS {
        let sql = "SELECT max(t) FROM (SELECT max(recv_time_us) t FROM trades WHERE symbol = $1 \
                   UNION ALL SELECT max(recv_time_us) FROM klines WHERE symbol = $1 \
                   UNION ALL SELECT max(recv_time_us) FROM book_snapshots WHERE symbol = $1 \
                   UNION ALL SELECT max(recv_time_us) FROM tickers WHERE symbol = $1) AS x";
        let t: Option<i64> = match &store {
            Store::Sqlite(p) => sqlx::query_scalar(sql).bind(s).fetch_one(p.pool()).await,
            Store::Postgres(p) => sqlx::query_scalar(sql).bind(s).fetch_one(p.pool()).await,
        }
        .unwrap();
        last_row.insert(s, t.unwrap());
    }

    // restart: the next run closes them, then records on
    let mut child = spawn(&cfg);
    common::wait_for("orphans closed", Duration::from_secs(30), || async {
        let rows = sessions(&store).await;
        rows.iter()
            .filter(|r| r.1 < killed_at_us)
            .all(|r| r.2.is_some())
    })
    .await;
    signal(&child, "TERM");
    let status = child.wait().await.unwrap();
    assert_eq!(status.code(), Some(0), "{}", stderr_of(&mut child).await);
    let rows = sessions(&store).await;
    for (sym, connected, end, reason) in rows.iter().filter(|r| r.1 < killed_at_us) {
        assert_eq!(
            reason.as_deref(),
            Some(mdrec::store::read::ORPHAN_REASON),
            "{sym}"
        );
        assert_eq!(
            *end,
            Some(last_row[sym.as_str()]),
            "{sym}: closed at its last row"
        );
        assert!(end.unwrap() >= *connected && end.unwrap() <= killed_at_us);
    }
    assert_eq!(rows.len(), 2 * SYMBOLS.len(), "{rows:?}");
    assert!(rows.iter().all(|r| r.2.is_some()), "{rows:?}");
    store.close().await;
    sim.shutdown().await;
    if let Some(pg) = pg {
        pg.drop_db().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sighup_reloads_symbols_and_keeps_the_rest_recording() {
    sighup_reloads_symbols_and_keeps_the_rest_recording("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sighup_reloads_symbols_and_keeps_the_rest_recording() {
    sighup_reloads_symbols_and_keeps_the_rest_recording("postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sigterm_stops_cleanly_and_closes_every_session() {
    sigterm_stops_cleanly_and_closes_every_session("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sigterm_stops_cleanly_and_closes_every_session() {
    sigterm_stops_cleanly_and_closes_every_session("postgres").await;
}

/// A fatal start-up error after the database is ready (the metrics port taken) exits 1
/// naming it, with no socket opened and no session row. It guards the outcome: the order
/// (listener bound before any worker starts) is what makes it certain, but a build that
/// bound it later would usually exit before its workers connected and pass too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_start_up_error_leaves_no_session_open() {
    let dir = tempfile::tempdir().unwrap();
    let (db_url, _) = database("sqlite", dir.path()).await.unwrap();
    let sim = sim::start(SimConfig::default()).await.unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let cfg = config_with(
        dir.path(),
        &sim.ws_url(),
        &sim.rest_url(),
        &db_url,
        &SYMBOLS,
        "",
    );
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("listen = \"\"", &format!("listen = \"{addr}\""));
    std::fs::write(&cfg, text).unwrap();
    let mut child = spawn(&cfg);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits")
        .unwrap();
    let stderr = stderr_of(&mut child).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("metrics listener"), "{stderr}");
    assert_eq!(
        sim.state().connections_total,
        0,
        "no socket opened: {stderr}"
    );
    // the port is bound before the database is made: no database, so no session either
    let file = db_url.trim_start_matches("sqlite://");
    assert!(!std::path::Path::new(file).exists(), "{file} made");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_second_sigint_stops_at_once_and_loses_nothing() {
    a_second_sigint_stops_at_once_and_loses_nothing("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_second_sigint_stops_at_once_and_loses_nothing() {
    a_second_sigint_stops_at_once_and_loses_nothing("postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sessions_a_killed_run_left_open_are_closed_at_its_last_row() {
    sessions_a_killed_run_left_open_are_closed_at_its_last_row("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sessions_a_killed_run_left_open_are_closed_at_its_last_row() {
    sessions_a_killed_run_left_open_are_closed_at_its_last_row("postgres").await;
}
