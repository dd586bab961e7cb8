//! The `mdrec` binary: exit codes, config errors naming the key, the database URL override,
//! SIGTERM under load, and the offline demo.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use mdrec::sim::{self, SimConfig};
use mdrec::store::Store;

const BIN: &str = env!("CARGO_BIN_EXE_mdrec");

fn config_text(ws_url: &str, rest_url: &str, db_url: &str) -> String {
    format!(
        r#"
[venue]
kind = "cdc-v1"
ws_url = "{ws_url}"
rest_url = "{rest_url}"

[database]
url = "{db_url}"

[record]
symbols = ["btcusdt", "ethusdt"]
trades = true
klines = ["1min"]
depth = "step0"
ticker = false
max_time_ahead_s = 86400

[connection]
silence_timeout_s = 30

[backfill]
enabled = false

[metrics]
listen = "127.0.0.1:0"
"#
    )
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

async fn mdrec(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .env_remove("MDREC_DATABASE_URL")
        .env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("mdrec finished in time")
        .expect("mdrec ran")
}

#[tokio::test]
async fn bad_config_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = config_text("ws://127.0.0.1:1/ws", "http://127.0.0.1:1", "sqlite://x.db");
    let cases = [
        (good.replace("symbols =", "symbls ="), "record.symbls"),
        (
            good.replace("silence_timeout_s = 30", "silence_timeout_s = -1"),
            "connection.silence_timeout_s",
        ),
        (
            good.replace("depth = \"step0\"", "depth = \"step9\""),
            "record.depth",
        ),
        (good.replace("[connection]", "[conection]"), "conection"),
        (good.replace("sqlite://x.db", "mongodb://x"), "database.url"),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let path = write(dir.path(), &format!("bad{i}.toml"), text);
        // the key as the file spells it, and the file and line it is set on
        let line = text
            .lines()
            .position(|l| {
                let k = key.rsplit('.').next().unwrap();
                l.trim_start().starts_with(&format!("{k} ")) || l.trim() == format!("[{k}]")
            })
            .map(|n| n + 1)
            .unwrap();
        let at = format!("({}, line {line})", path.display());
        for sub in ["run", "migrate", "check-config"] {
            let out = mdrec(&[sub, "-c", path.to_str().unwrap()], &[]).await;
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{sub} {key}: {err}");
            assert!(
                err.contains(&format!("config key `{key}`")) && err.contains(&at),
                "{sub}: message {err:?} does not name {key} at {at}"
            );
        }
    }
    // about the file as a whole: no key to name, never a made-up one
    let not_toml = write(dir.path(), "not.toml", "[venue\nkind = 1\n");
    let missing = dir.path().join("missing.toml");
    for (path, want) in [
        (
            &not_toml,
            "config: not valid TOML: TOML parse error at line 1",
        ),
        (&missing, "config: cannot read"),
    ] {
        let out = mdrec(&["check-config", "-c", path.to_str().unwrap()], &[]).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(want), "{err}");
        assert!(!err.contains("`(file)`") && !err.contains("`-c`"), "{err}");
    }
    // files the config names are read where they are used: by run and check-config
    let no_ca = good.replace(
        "silence_timeout_s = 30",
        "silence_timeout_s = 30\nca_file = \"/nonexistent/ca.pem\"",
    );
    let path = write(dir.path(), "no_ca.toml", &no_ca);
    for sub in ["run", "check-config"] {
        let out = mdrec(&[sub, "-c", path.to_str().unwrap()], &[]).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{sub} ca_file: {err}");
        assert!(
            err.contains("connection.ca_file") && err.contains("/nonexistent/ca.pem"),
            "{sub}: {err:?}"
        );
    }
    let out = mdrec(&["run", "-c", "/nonexistent/mdrec.toml"], &[]).await;
    assert_eq!(out.status.code(), Some(2));
    let out = mdrec(&["frobnicate"], &[]).await;
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
}

#[tokio::test]
async fn check_config_prints_the_resolved_config_with_secrets_masked() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "c.toml",
        &config_text("ws://127.0.0.1:1/ws", "http://127.0.0.1:1", "sqlite://x.db"),
    );
    let out = mdrec(
        &["check-config", "--offline", "-c", path.to_str().unwrap()],
        &[(
            "MDREC_DATABASE_URL",
            "postgres://rec:hunter2@db.example/mdrec",
        )],
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(!text.contains("hunter2"), "password printed: {text}");
    assert!(
        text.contains("url = \"postgres://rec:****@db.example/mdrec\""),
        "{text}"
    );
    // defaults are filled in, and the output is a config mdrec accepts again
    assert!(text.contains("audit_interval_s = 300"), "{text}");
    let again = write(dir.path(), "again.toml", &text.replace("****", "pw"));
    let out = mdrec(
        &["check-config", "--offline", "-c", again.to_str().unwrap()],
        &[],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn database_url_env_overrides_config() {
    let dir = tempfile::tempdir().unwrap();
    let in_config = dir.path().join("config.db");
    let from_env = dir.path().join("env.db");
    let path = write(
        dir.path(),
        "c.toml",
        &config_text(
            "ws://127.0.0.1:1/ws",
            "http://127.0.0.1:1",
            &format!("sqlite://{}", in_config.display()),
        ),
    );
    let env_url = format!("sqlite://{}", from_env.display());
    let out = mdrec(
        &["migrate", "-c", path.to_str().unwrap()],
        &[("MDREC_DATABASE_URL", &env_url)],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(from_env.exists(), "migrated the env database");
    assert!(!in_config.exists(), "left the config database alone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_stores_everything_received() {
    let sim = sim::start(SimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rec.db");
    let db_url = format!("sqlite://{}", db.display());
    let path = write(
        dir.path(),
        "c.toml",
        &config_text(&sim.ws_url(), &sim.rest_url(), &db_url),
    );
    let mut child = tokio::process::Command::new(BIN)
        .args(["run", "-c", path.to_str().unwrap()])
        .env_remove("MDREC_DATABASE_URL")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // the market keeps trading while we wait for the recorder to have stored a good amount;
    // read-only, so the test never races the recorder's own creation and migration of the file
    let ro = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&db)
        .read_only(true);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("recorder exited early with {status}");
        }
        let n: i64 = match sqlx::SqlitePool::connect_with(ro.clone()).await {
            Ok(pool) => {
                let n = sqlx::query_scalar("SELECT count(*) FROM trades")
                    .fetch_one(&pool)
                    .await
                    .unwrap_or(0);
                pool.close().await;
                n
            }
            Err(_) => 0,
        };
        if n >= 300 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "recorder stored only {n} trades in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = child.id().expect("child pid").to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("exits within 20 s of SIGTERM")
        .unwrap();
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use tokio::io::AsyncReadExt;
        let _ = e.read_to_string(&mut stderr).await;
    }
    assert_eq!(status.code(), Some(0), "clean exit: {stderr}");

    let store = Store::connect(&db_url).await.unwrap();
    for s in ["btcusdt", "ethusdt"] {
        let stored = common::stored_ids(&store, s).await;
        let delivered = sim.delivered(s);
        assert!(!delivered.is_empty());
        assert_eq!(
            stored, delivered,
            "{s}: every trade the simulator delivered is stored, and nothing else"
        );
    }
    store.close().await;
    sim.shutdown().await;
}

/// The demo's "trades of this run" table: per symbol (generated, stored, earlier).
fn demo_trade_table(stdout: &str) -> Vec<(String, i64, i64, i64)> {
    stdout
        .lines()
        .skip_while(|l| !l.starts_with("trades of this run:"))
        .skip(2)
        .map_while(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let n = |i: usize| f.get(i)?.parse::<i64>().ok();
            Some((f.first()?.to_string(), n(1)?, n(2)?, n(5)?))
        })
        .collect()
}

#[tokio::test]
async fn demo_records_trades_klines_and_books() {
    let dir = tempfile::tempdir().unwrap();
    // run where a newcomer would: the file named relative to the working directory
    let demo = |seconds: &'static str| {
        tokio::process::Command::new(BIN)
            .args(["demo", "--seconds", seconds, "--db", "demo.db"])
            .current_dir(dir.path())
            .env_remove("MDREC_DATABASE_URL")
            .env("RUST_LOG", "warn")
            .output()
    };
    let out = demo("10").await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for table in ["trades", "klines", "book_snapshots", "tickers", "sessions"] {
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(table))
            .unwrap_or_else(|| panic!("no {table} line in:\n{stdout}"));
        let n: i64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(n > 0, "{table} is empty:\n{stdout}");
    }
    // every trade generated is stored, or older than anything a first start reaches
    let table = demo_trade_table(&stdout);
    assert_eq!(table.len(), 3, "{stdout}");
    for (sym, generated, stored, earlier) in &table {
        assert!(*stored > 0, "{sym}:\n{stdout}");
        assert_eq!(generated, &(stored + earlier), "{sym}:\n{stdout}");
    }
    assert!(!stdout.contains("not stored"), "{stdout}");
    // it ends with what to try next, on this file, with a command that runs from here:
    // this binary is on no PATH, so its own path
    let db_url = "sqlite://demo.db";
    for next in [
        "sqlite3 demo.db".to_string(),
        format!("{BIN} coverage --db {db_url}"),
        format!("{BIN} export --db {db_url}"),
    ] {
        assert!(stdout.contains(&next), "{next:?} in:\n{stdout}");
    }
    // and every suggested command works as printed, in the shell, from the same directory
    let mut ran = 0;
    for line in stdout.lines().skip_while(|l| !l.starts_with("next, try:")) {
        let cmd = line.trim();
        if !cmd.starts_with(BIN) || cmd.contains(" demo ") {
            continue;
        }
        let out = tokio::process::Command::new("sh")
            .args(["-c", cmd])
            .current_dir(dir.path())
            .env_remove("MDREC_DATABASE_URL")
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ran += 1;
    }
    assert!(ran >= 5, "the suggested commands ran: {ran}");
    assert!(dir.path().join("coverage.html").exists());
    assert!(dir.path().join("books").is_dir());

    // a second demo into the same file records on: no id reused, every trade of the run
    // stored (the startup backfill walks back to the first run's last), no hole ending before
    // it starts, none made unrecoverable by the simulator's restart, and the simulated clock
    // never ahead of ours (no negative latency)
    let out = demo("3").await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = demo_trade_table(&stdout);
    assert_eq!(table.len(), 3, "{stdout}");
    for (sym, generated, stored, earlier) in &table {
        assert!(
            *stored > 0 && generated == stored && *earlier == 0,
            "{sym}:\n{stdout}"
        );
    }
    let db_url = format!("sqlite://{}", dir.path().join("demo.db").display());
    let store = Store::connect(&db_url).await.unwrap();
    let Store::Sqlite(s) = &store else {
        unreachable!()
    };
    let backwards: i64 = sqlx::query_scalar("SELECT count(*) FROM gaps WHERE end_ms < start_ms")
        .fetch_one(s.pool())
        .await
        .unwrap();
    assert_eq!(backwards, 0, "holes ending before they start");
    let unrecoverable: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT symbol, stream, detail FROM gaps WHERE status = 'unrecoverable'")
            .fetch_all(s.pool())
            .await
            .unwrap();
    assert!(unrecoverable.is_empty(), "{unrecoverable:?}");
    let min_latency: i64 = sqlx::query_scalar(
        "SELECT min(recv_time_us / 1000 - event_time_ms) FROM trades WHERE source = 'ws'",
    )
    .fetch_one(s.pool())
    .await
    .unwrap();
    assert!(min_latency >= 0, "negative latency {min_latency} ms");
    let rejected: i64 = sqlx::query_scalar("SELECT count(*) FROM rejected_rows")
        .fetch_one(s.pool())
        .await
        .unwrap();
    assert_eq!(rejected, 0, "trade ids reused by the second demo");
    let sessions: i64 = sqlx::query_scalar("SELECT count(DISTINCT session_id) FROM sessions")
        .fetch_one(s.pool())
        .await
        .unwrap();
    assert!(sessions >= 2, "both demos on record");
    store.close().await;
}

/// `--log-format json`: every line is a JSON object; one info line per connect and per
/// disconnect (with its reason), none per message; the database password never appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_name_connects_and_never_the_password() {
    let Some(db) = common::PgDb::create().await else {
        return;
    };
    // trust authentication ignores the password, so the recorder connects with it
    let secret_url = db.url.replacen("postgres@", "postgres:hunter2@", 1);
    assert!(secret_url.contains("hunter2"));
    let sim = sim::start(SimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "c.toml",
        &config_text(&sim.ws_url(), &sim.rest_url(), "sqlite://unused.db"),
    );
    let child = tokio::process::Command::new(BIN)
        .args(["--log-format", "json", "run", "-c", path.to_str().unwrap()])
        .env("MDREC_DATABASE_URL", &secret_url)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    common::wait_for("trades delivered", Duration::from_secs(30), || async {
        ["btcusdt", "ethusdt"]
            .iter()
            .all(|s| sim.delivered(s).len() >= 200)
    })
    .await;
    let pid = child.id().expect("child pid").to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("hunter2"),
        "password in the logs:\n{stderr}"
    );
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let message = |l: &serde_json::Value| l["fields"]["message"].as_str().unwrap_or("").to_string();
    let connects = lines.iter().filter(|l| message(l) == "connected").count();
    let disconnects: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| message(l) == "disconnected")
        .collect();
    assert_eq!(connects, 2, "one line per connect:\n{stderr}");
    assert_eq!(disconnects.len(), 2);
    assert!(
        disconnects
            .iter()
            .all(|l| l["fields"]["reason"] == "shutdown")
    );
    assert!(
        lines.iter().any(|l| message(l) == "database ready"
            && l["fields"]["database"]
                .as_str()
                .is_some_and(|d| d.contains("****"))),
        "the database is named, masked:\n{stderr}"
    );
    // hundreds of trades recorded, a handful of lines
    assert!(lines.len() < 40, "{} log lines:\n{stderr}", lines.len());
    sim.shutdown().await;
    db.drop_db().await;
}

/// `mdrec simulate` on free ports, its URLs as it prints them.
fn simulate(args: &[&str]) -> (std::process::Child, String, String) {
    let mut child = std::process::Command::new(BIN)
        .args([
            "simulate",
            "--ws-listen",
            "127.0.0.1:0",
            "--rest-listen",
            "127.0.0.1:0",
        ])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("mdrec simulate starts");
    let mut line = String::new();
    let out = child.stdout.as_mut().expect("stdout");
    std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line).expect("its URLs");
    // "websocket ws://127.0.0.1:P/...  REST http://127.0.0.1:Q/..."
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!((words[0], words[2]), ("websocket", "REST"), "{line}");
    (child, words[1].to_string(), words[3].to_string())
}

fn stop(mut child: std::process::Child) {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}

/// `mdrec simulate` with its defaults runs at real time: a recorder with its own clock checks
/// keeps what it sends. A fast clock is still an option, and then `/healthz` says the
/// messages arrive and are all dropped, and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standalone_simulator_with_its_defaults_is_recorded() {
    let symbols = mdrec::sim::personality("cdc-exchange")
        .expect("the default venue")
        .demo_symbols;
    let (dir, db) = common::sqlite_db();
    let (child, ws, rest) = simulate(&[]);
    let cfg = common::config::TestConfig::new("cdc-exchange", &ws, &rest, &db)
        .symbols(symbols)
        .real_clock()
        .build();
    let run = common::Recorder::start(&cfg).await;
    let base = format!("http://{}", run.stats.metrics_addr.get().expect("metrics"));
    let health = async || {
        let r = reqwest::get(format!("{base}/healthz"))
            .await
            .expect("healthz");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    };
    common::wait_for("every symbol live", Duration::from_secs(60), || async {
        health().await.0 == 200
    })
    .await;
    let store = Store::connect(&db).await.expect("open db");
    common::wait_for("trades stored", Duration::from_secs(60), || async {
        store
            .load_trades("cdc-exchange", symbols[0])
            .await
            .is_ok_and(|t| !t.is_empty())
    })
    .await;
    // real time: the exchange's clock is the wall's (a fast one runs ahead within a second)
    for t in store
        .load_trades("cdc-exchange", symbols[0])
        .await
        .expect("trades")
    {
        let ahead_ms = t.event_time_ms - t.recv_time_us / 1000;
        assert!(
            ahead_ms.abs() < 5_000,
            "trade {} is {ahead_ms} ms ahead",
            t.trade_id
        );
    }
    for (name, w) in run.stats.workers.all() {
        let invalid: u64 = w
            .invalid_by_kind
            .iter()
            .map(|n| n.load(std::sync::atomic::Ordering::Relaxed))
            .sum();
        assert_eq!(invalid, 0, "{name}: nothing dropped as invalid");
    }
    run.stop().await;
    store.close().await;
    stop(child);

    // 600x: exchange times run past max_time_ahead_s within a second
    let (child, ws, rest) = simulate(&["--speed", "600"]);
    let db2 = format!("sqlite://{}", dir.path().join("fast.db").display());
    let cfg = common::config::TestConfig::new("cdc-exchange", &ws, &rest, &db2)
        .symbols(symbols)
        .real_clock()
        .build();
    let run = common::Recorder::start(&cfg).await;
    let base = format!("http://{}", run.stats.metrics_addr.get().expect("metrics"));
    let health = async || {
        let r = reqwest::get(format!("{base}/healthz"))
            .await
            .expect("healthz");
        r.text().await.unwrap_or_default()
    };
    common::wait_for(
        "health says why nothing is kept",
        Duration::from_secs(60),
        || async {
            health().await.contains(&format!(
                "{}: receiving, all dropped as invalid (time)",
                symbols[0]
            ))
        },
    )
    .await;
    run.stop().await;
    stop(child);
}
