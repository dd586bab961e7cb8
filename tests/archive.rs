//! The archive: a recording archived to a directory as zstd Parquet equals the database and
//! the simulator's ledger (every trade once, every digit), pyarrow (table and dataset),
//! polars and DuckDB read each table's archive as one dataset, a second round writes nothing,
//! and rows that reach the database for an archived period go into the archive once.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{PgDb, Recorder, recorder_config, sqlite_db, wait_for};
use mdrec::archive::target::Target;
use mdrec::archive::{Settings, prune, run};
use mdrec::decimal::Dec;
use mdrec::model::{Event, Gap, GapStatus, Side, Source, Trade};
use mdrec::sim::{self, DepthMode, SimConfig};
use mdrec::store::ledger::LateRule;
use mdrec::store::{Batch, Store};
use mdrec::venue::cdc_v1::NAME;

const SYMBOLS: [&str; 2] = ["btcusdt", "hpxusdt"];
/// The archived tables of market data (the rest: gaps and sessions).
const MARKET_DATA: [&str; 5] = [
    "trades",
    "klines",
    "book_snapshots",
    "book_deltas",
    "tickers",
];
/// One-second periods, archived at once: a test's recording spans a few of them.
const SETTINGS: Settings = Settings {
    period_ms: 1000,
    settle_ms: 0,
};

/// Rows per archived table, from the ledger of parts.
async fn archived_rows(store: &Store) -> BTreeMap<String, i64> {
    let mut out: BTreeMap<String, i64> = mdrec::export::archive::TABLES
        .iter()
        .map(|t| (t.to_string(), 0))
        .collect();
    for p in store.archive_parts().await.unwrap() {
        *out.entry(p.tbl).or_insert(0) += p.rows;
    }
    out
}

async fn db_rows(store: &Store) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for t in mdrec::export::archive::TABLES {
        let sql = format!("SELECT CAST(COUNT(*) AS BIGINT) FROM {t}");
        let n: i64 = match store {
            Store::Sqlite(s) => sqlx::query_scalar(&sql).fetch_one(s.pool()).await.unwrap(),
            Store::Postgres(s) => sqlx::query_scalar(&sql).fetch_one(s.pool()).await.unwrap(),
        };
        out.insert(t.to_string(), n);
    }
    out
}

/// An archived trade as a reader sees it: symbol, id, price and quantity digits.
type SeenTrade = (String, i64, String, String);

/// Each reader's rows of the trades archive; None when the readers are not installed (and
/// not required).
fn readers_trades(root: &std::path::Path) -> Option<BTreeMap<String, Vec<SeenTrade>>> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/archive_readers.py");
    let out = std::process::Command::new("python3")
        .args([
            script,
            &root.display().to_string(),
            "trades",
            "trade_id",
            "price,qty",
        ])
        .output()
        .unwrap();
    if out.status.code() == Some(3) {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            std::env::var("MDREC_REQUIRE_PARQUET_READERS").as_deref() != Ok("1"),
            "MDREC_REQUIRE_PARQUET_READERS=1 but {stderr}"
        );
        common::not_tested(
            &format!("no Parquet readers for the archive: {}", stderr.trim()),
            "pip install duckdb pandas pyarrow polars",
        );
        return None;
    }
    assert!(
        out.status.success(),
        "archive readers: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut got = BTreeMap::new();
    for (reader, seen) in v.as_object().unwrap() {
        let types = &seen["types"];
        assert!(
            types["event_time"].as_str().unwrap().contains("UTC")
                || types["event_time"].as_str().unwrap().contains("TIME ZONE"),
            "{reader}: event_time {:?}",
            types["event_time"]
        );
        assert!(
            types["price"]
                .as_str()
                .unwrap()
                .to_lowercase()
                .contains("decimal"),
            "{reader}: price {:?}",
            types["price"]
        );
        let rows = seen["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r[1].as_str().unwrap().to_string(),
                    r[2].as_i64().unwrap(),
                    r[3].as_str().unwrap().to_string(),
                    r[4].as_str().unwrap().to_string(),
                )
            })
            .collect();
        got.insert(reader.clone(), rows);
    }
    Some(got)
}

/// A recording of both symbols, the simulator halted and every delivered trade stored, the
/// recorder stopped. The simulated market runs ten minutes behind the wall clock.
async fn record(db_url: &str) -> (sim::SimHandle, Store) {
    let (sim, store, rec) = recording(db_url, "").await;
    sim.halt();
    common::wait_stored_equals_delivered(&store, &sim, &SYMBOLS).await;
    rec.stop().await;
    (sim, store)
}

/// A recorder (with `extra` configuration) recording both symbols until each has 20 trades.
async fn recording(db_url: &str, extra: &str) -> (sim::SimHandle, Store, Recorder) {
    recording_from(db_url, extra, mdrec::model::now_ms() - 600_000).await
}

/// The same, the simulated market's clock starting at `clock_start_ms` (it runs 60 times
/// faster than the wall clock).
async fn recording_from(
    db_url: &str,
    extra: &str,
    clock_start_ms: i64,
) -> (sim::SimHandle, Store, Recorder) {
    let sim = sim::start(SimConfig {
        seed: 25,
        symbols: SYMBOLS.iter().map(|s| s.to_string()).collect(),
        depth_mode: DepthMode::Incremental,
        // the simulated market runs ahead of the wall clock: ten minutes back, every period
        // of it has ended when it is archived (and nothing is late for the recorder's rule)
        clock_start_ms: Some(clock_start_ms),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let cfg = recorder_config(&sim.ws_url(), &sim.rest_url(), db_url, &SYMBOLS, extra);
    let rec = Recorder::start(&cfg).await;
    let store = Store::connect(db_url).await.unwrap();
    wait_for(
        "trades of both symbols",
        Duration::from_secs(30),
        || async {
            let mut all = true;
            for s in SYMBOLS {
                all &= common::stored_trades(&store, s).await.len() >= 20;
            }
            all
        },
    )
    .await;
    (sim, store, rec)
}

/// `local`: the archive's directory, for the Parquet readers (None: object storage).
async fn archive_equals_the_recording(
    db_url: &str,
    target: &Target,
    local: Option<&std::path::Path>,
) {
    let (sim, store) = record(db_url).await;
    // a hole on record inside the recording (the archive alone says what is missing)
    let first = common::stored_trades(&store, SYMBOLS[1]).await;
    let (_, &(_, _, _, _, t0)) = first.iter().next().unwrap();
    let mut b = Batch::default();
    b.push(Event::Gap(Gap {
        venue: NAME,
        symbol: SYMBOLS[1].into(),
        stream: "trades".into(),
        start_ms: t0 + 1,
        end_ms: Some(t0 + 700),
        status: GapStatus::Unrecoverable,
        detected_at_ms: mdrec::model::now_ms(),
        resolved_at_ms: Some(mdrec::model::now_ms()),
        rows_recovered: 0,
        detail: Some("made by the test".into()),
    }));
    store.write(&b).await.unwrap();

    // every one-second period of the recording has ended
    let last = mdrec::model::now_ms();
    wait_for("the last period to end", Duration::from_secs(3), || async {
        mdrec::model::now_ms() >= last + 1000
    })
    .await;
    let r = run(&store, target, SETTINGS, i64::MAX).await.unwrap();
    assert!(r.parts > 0 && r.rows > 0, "{r:?}");

    // the ledger counts every stored row once, per table
    let want = db_rows(&store).await;
    assert_eq!(archived_rows(&store).await, want, "ledger vs database");
    for &t in MARKET_DATA.iter().chain(&["sessions"]) {
        assert!(want[t] > 0, "{t}: nothing recorded");
    }
    // nothing but parts in the table directories, and no staging left
    let files = target.list("").await.unwrap();
    assert!(
        files
            .iter()
            .all(|(p, _)| p.ends_with(".parquet") && !p.starts_with("_staging"))
    );
    let parts = store.archive_parts().await.unwrap();
    assert_eq!(files.len(), parts.len(), "one file a part");
    for p in &parts {
        assert!(
            files
                .iter()
                .any(|(f, n)| *f == p.path && *n == p.bytes as u64),
            "{p:?}"
        );
    }

    // the archive's trades equal the ledger's, read by each reader as one dataset
    let mut ledger = Vec::new();
    for s in SYMBOLS {
        let first = *common::stored_trades(&store, s)
            .await
            .keys()
            .next()
            .unwrap();
        for (id, (_, _, p, q, _)) in common::ledger_from(&sim, s, first) {
            ledger.push((s.to_string(), id, p.to_string(), q.to_string()));
        }
    }
    ledger.sort_by(|a, b| (a.0.as_str(), a.1.to_string()).cmp(&(b.0.as_str(), b.1.to_string())));
    if let Some(readers) = local.and_then(readers_trades) {
        assert_eq!(readers.len(), 4);
        for (reader, mut rows) in readers {
            rows.sort_by(|a, b| {
                (a.0.as_str(), a.1.to_string()).cmp(&(b.0.as_str(), b.1.to_string()))
            });
            assert_eq!(rows, ledger, "{reader}");
        }
    }

    // each part's metadata names it and keeps its coverage, as export's files do
    let trades_part = parts.iter().find(|p| p.tbl == "trades").unwrap();
    let bytes = target.get(&trades_part.path).await.unwrap();
    let meta = parquet::file::reader::SerializedFileReader::new(bytes).unwrap();
    let kv: BTreeMap<String, String> = parquet::file::reader::FileReader::metadata(&meta)
        .file_metadata()
        .key_value_metadata()
        .unwrap()
        .iter()
        .map(|k| (k.key.clone(), k.value.clone().unwrap_or_default()))
        .collect();
    assert_eq!(kv["mdrec.table"], "trades");
    assert_eq!(kv["mdrec.symbol"], trades_part.symbol);
    let cov: serde_json::Value = serde_json::from_str(&kv["mdrec.coverage"]).unwrap();
    assert_eq!(cov["streams"][0]["stream"], "trades", "{cov}");

    // a second round writes nothing
    let again = run(&store, target, SETTINGS, i64::MAX).await.unwrap();
    assert_eq!((again.parts, again.rewritten), (0, 0), "{again:?}");

    // a late trade (a REST backfill) for an archived period: its part is written again, once
    store.set_late_rule(LateRule {
        period_ms: SETTINGS.period_ms,
        settle_ms: 0,
    });
    let t = common::stored_trades(&store, SYMBOLS[0]).await;
    let (&id, &(_, _, ref p, ref q, time)) = t.iter().next().unwrap();
    let mut b = Batch::default();
    b.push(Event::Trade(Trade {
        venue: NAME,
        symbol: SYMBOLS[0].into(),
        trade_id: id - 1,
        side: Side::Sell,
        price: p.clone(),
        qty: Dec::parse(&format!("{q}1")).unwrap(),
        quote_qty: None,
        event_time_ms: time,
        recv_time_us: mdrec::model::now_us(),
        source: Source::Rest,
    }));
    store.write(&b).await.unwrap();
    let parts_before = target.list("trades").await.unwrap().len();
    let late = run(&store, target, SETTINGS, i64::MAX).await.unwrap();
    assert_eq!(late.rewritten, 1, "{late:?}");
    assert_eq!(target.list("trades").await.unwrap().len(), parts_before);
    assert_eq!(archived_rows(&store).await["trades"], want["trades"] + 1);
    let once = run(&store, target, SETTINGS, i64::MAX).await.unwrap();
    assert_eq!((once.parts, once.rewritten), (0, 0), "{once:?}");
    if let Some(readers) = local.and_then(readers_trades) {
        for (reader, rows) in readers {
            let n = rows.iter().filter(|r| r.1 == id - 1).count();
            assert_eq!(n, 1, "{reader}: the late trade once");
            assert_eq!(rows.len(), ledger.len() + 1, "{reader}");
        }
    }

    // retention: the archived rows leave the database (gaps and sessions stay)
    let pruned = prune(&store, 0, mdrec::model::now_ms()).await.unwrap();
    assert!(pruned.rows > 0, "{pruned:?}");
    let left = db_rows(&store).await;
    for t in MARKET_DATA {
        assert_eq!(left[t], 0, "{t}: {left:?}");
    }
    assert_eq!(
        (left["gaps"], left["sessions"]),
        (want["gaps"], want["sessions"])
    );
    let again = prune(&store, 0, mdrec::model::now_ms()).await.unwrap();
    assert_eq!(again.rows, 0);

    // late rows for a period whose rows were deleted: a new trade, and a copy of a trade the
    // part holds already (a REST backfill over what the socket delivered); the part is merged
    let mut b = Batch::default();
    for (trade_id, qty) in [(id - 2, format!("{q}2")), (id, q.to_string())] {
        b.push(Event::Trade(Trade {
            venue: NAME,
            symbol: SYMBOLS[0].into(),
            trade_id,
            side: t[&id].1,
            price: p.clone(),
            qty: Dec::parse(&qty).unwrap(),
            quote_qty: None,
            event_time_ms: time,
            recv_time_us: mdrec::model::now_us(),
            source: Source::Rest,
        }));
    }
    store.write(&b).await.unwrap();
    let merged = run(&store, target, SETTINGS, i64::MAX).await.unwrap();
    assert_eq!(merged.rewritten, 1, "{merged:?}");
    assert_eq!(archived_rows(&store).await["trades"], want["trades"] + 2);
    if let Some(readers) = local.and_then(readers_trades) {
        for (reader, rows) in readers {
            for late in [id - 2, id - 1, id] {
                let n = rows.iter().filter(|r| r.1 == late).count();
                assert_eq!(n, 1, "{reader}: trade {late} once");
            }
            assert_eq!(rows.len(), ledger.len() + 2, "{reader}");
        }
    }
    let pruned = prune(&store, 0, mdrec::model::now_ms()).await.unwrap();
    assert_eq!(pruned.rows, 2, "{pruned:?}");
    assert_eq!(db_rows(&store).await["trades"], 0);
    store.close().await;
    sim.shutdown().await;
}

fn directory() -> (tempfile::TempDir, Target) {
    let dir = tempfile::tempdir().unwrap();
    let target = Target::open(&format!("file://{}", dir.path().display())).unwrap();
    (dir, target)
}

#[tokio::test]
async fn sqlite_archive_to_a_directory_equals_the_recording() {
    let (_db, url) = sqlite_db();
    let (dir, target) = directory();
    archive_equals_the_recording(&url, &target, Some(dir.path())).await;
}

#[tokio::test]
async fn postgres_archive_to_a_directory_equals_the_recording() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    let (dir, target) = directory();
    archive_equals_the_recording(&db.url, &target, Some(dir.path())).await;
    db.drop_db().await;
}

/// An S3-compatible server for the test (`moto_server` from PyPI), with a bucket; None when
/// it is not installed and `MDREC_REQUIRE_S3` is not 1.
async fn s3_server() -> Option<(tokio::process::Child, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = tokio::process::Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var("MDREC_REQUIRE_S3").as_deref() != Ok("1"),
                "MDREC_REQUIRE_S3=1 but moto_server does not start: {e}"
            );
            common::not_tested(
                &format!("no S3-compatible server for the archive (moto_server: {e})"),
                "pip install 'moto[server]'; MDREC_REQUIRE_S3=1 makes this a failure",
            );
            return None;
        }
    };
    let endpoint = format!("http://127.0.0.1:{port}");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let bucket = format!("{endpoint}/mdrec-test");
    wait_for("moto_server to answer", Duration::from_secs(30), || async {
        http.put(&bucket)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    Some((child, endpoint))
}

#[tokio::test]
async fn sqlite_archive_to_s3_compatible_storage_equals_the_recording() {
    let Some((_server, endpoint)) = s3_server().await else {
        return;
    };
    // the archive's credentials and endpoint come from the environment, as in production;
    // no other test of this binary reads these variables
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "test-secret");
        std::env::set_var("AWS_REGION", "us-east-1");
        std::env::set_var("AWS_ENDPOINT", &endpoint);
        std::env::set_var("AWS_ALLOW_HTTP", "true");
    }
    let target = Target::open("s3://mdrec-test/recordings/one").unwrap();
    let (_db, url) = sqlite_db();
    archive_equals_the_recording(&url, &target, None).await;
    store_failing_then_back(&endpoint).await;
}

/// How the object store answers through the [`Switch`].
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// Connections closed unanswered: the store is down.
    Down = 0,
    Up = 1,
    /// Every connection waits a while before it is passed on.
    Slow = 2,
    /// `503 Service Unavailable` to every request.
    Unavailable = 3,
    /// `403 AccessDenied`: the credentials are refused.
    Refused = 4,
}

/// A TCP forwarder to the object store that can be switched off, slowed, made to answer
/// 5xx or refuse the credentials, and switched on again.
struct Switch {
    port: u16,
    mode: std::sync::Arc<std::sync::atomic::AtomicU8>,
    task: tokio::task::JoinHandle<()>,
}

impl Switch {
    async fn start(to: String) -> Switch {
        use std::sync::atomic::Ordering::SeqCst;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let mode = std::sync::Arc::new(std::sync::atomic::AtomicU8::new(Mode::Down as u8));
        let m = mode.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let mode = m.load(SeqCst);
                let to = to.clone();
                tokio::spawn(async move {
                    let answer = |status: &str, body: &str| {
                        format!(
                            "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\n\
                             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                    };
                    let reply = match mode {
                        0 => return, // dropped: the client sees the connection closed
                        3 => answer(
                            "503 Service Unavailable",
                            "<Error><Code>ServiceUnavailable</Code></Error>",
                        ),
                        4 => answer(
                            "403 Forbidden",
                            "<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>",
                        ),
                        slow => {
                            if slow == 2 {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            if let Ok(mut s) = tokio::net::TcpStream::connect(&to).await {
                                let _ = tokio::io::copy_bidirectional(&mut c, &mut s).await;
                            }
                            return;
                        }
                    };
                    // the request's head, then the answer
                    let mut buf = vec![0u8; 64 * 1024];
                    let _ = tokio::time::timeout(Duration::from_secs(1), c.read(&mut buf)).await;
                    let _ = c.write_all(reply.as_bytes()).await;
                    let _ = c.shutdown().await;
                });
            }
        });
        Switch { port, mode, task }
    }

    fn set(&self, mode: Mode) {
        self.mode
            .store(mode as u8, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The object store down, answering 503, refusing the credentials: each round fails,
/// nothing is recorded or deleted. Slow, then up: the rounds archive everything once.
async fn store_failing_then_back(endpoint: &str) {
    let switch = Switch::start(endpoint.trim_start_matches("http://").to_string()).await;
    let via = format!("http://127.0.0.1:{}", switch.port);
    let target = Target::open_with_endpoint("s3://mdrec-test/down-then-back", &via).unwrap();
    let (_db, url) = sqlite_db();
    let (sim, store) = record(&url).await;
    let before = db_rows(&store).await;
    for mode in [Mode::Down, Mode::Unavailable, Mode::Refused] {
        switch.set(mode);
        let t = std::time::Instant::now();
        let failed = run(&store, &target, SETTINGS, i64::MAX).await;
        eprintln!("store {mode:?}: the round failed after {:?}", t.elapsed());
        let e = format!(
            "{:#}",
            failed
                .err()
                .unwrap_or_else(|| panic!("{mode:?}: the round fails"))
        );
        assert!(
            !e.contains("test-secret"),
            "{mode:?}: credentials never shown: {e}"
        );
        assert!(store.archive_parts().await.unwrap().is_empty(), "{mode:?}");
        let pruned = prune(&store, 0, mdrec::model::now_ms()).await.unwrap();
        assert_eq!(
            pruned.rows, 0,
            "{mode:?}: nothing archived, nothing deleted"
        );
        assert_eq!(db_rows(&store).await, before, "{mode:?}");
    }
    switch.set(Mode::Slow);
    let t = std::time::Instant::now();
    let r = run(&store, &target, SETTINGS, i64::MAX).await.unwrap();
    eprintln!("store slow: {} parts in {:?}", r.parts, t.elapsed());
    assert!(r.parts > 0);
    switch.set(Mode::Up);
    // the market data (sessions and gaps, cut by the wall clock, are the other tests')
    let archived = archived_rows(&store).await;
    for t in MARKET_DATA {
        assert_eq!(archived[t], before[t], "{t}");
    }
    let again = run(&store, &target, SETTINGS, i64::MAX).await.unwrap();
    assert_eq!(again.rewritten, 0);
    store.close().await;
    sim.shutdown().await;
}

/// `mdrec archive` killed (abort, as kill -9) after staging, after the read-back, after
/// publishing, after recording a part and while deleting rows, each time started again:
/// the archive then equals the recording, each trade once, nothing left in staging, every
/// file on record.
#[tokio::test]
async fn sqlite_archive_killed_at_each_step_then_finished_equals_the_recording() {
    let (_db, url) = sqlite_db();
    let (sim, store) = record(&url).await;
    let mut want = Vec::new();
    for s in SYMBOLS {
        for (id, (_, _, p, q, _)) in common::stored_trades(&store, s).await {
            want.push((s.to_string(), id, p.to_string(), q.to_string()));
        }
    }
    want.sort();
    let dir = tempfile::tempdir().unwrap();
    let to = format!("file://{}", dir.path().display());
    let archive = |crash: Option<&str>| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_mdrec"));
        c.args(["archive", "--db", &url, "--to", &to]).args([
            "--period-s",
            "60",
            "--settle-s",
            "1",
            "--db-keep-s",
            "0",
        ]);
        if let Some(step) = crash {
            c.env("MDREC_ARCHIVE_CRASH_AT", step);
        }
        c.output().unwrap()
    };
    for step in ["staged", "verified", "published", "recorded", "deleting"] {
        let out = archive(Some(step));
        assert!(!out.status.success(), "{step}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("aborting"),
            "{step}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = archive(None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let target = Target::open(&to).unwrap();
    let files = target.list("").await.unwrap();
    let parts = store.archive_parts().await.unwrap();
    assert!(
        files.iter().all(|(p, _)| !p.starts_with("_staging")),
        "{files:?}"
    );
    assert_eq!(files.len(), parts.len());
    let left = db_rows(&store).await;
    assert_eq!(left["trades"], 0, "{left:?}");
    let mut ledger = Vec::new();
    for s in SYMBOLS {
        for (id, (_, _, p, q, _)) in common::ledger_from(&sim, s, i64::MIN) {
            ledger.push((s.to_string(), id, p.to_string(), q.to_string()));
        }
    }
    let archived: i64 = parts
        .iter()
        .filter(|p| p.tbl == "trades")
        .map(|p| p.rows)
        .sum();
    if let Some(readers) = readers_trades(dir.path()) {
        for (reader, rows) in readers {
            let ids: std::collections::BTreeSet<(String, i64)> =
                rows.iter().map(|r| (r.0.clone(), r.1)).collect();
            assert_eq!(ids.len(), rows.len(), "{reader}: a trade twice");
            assert_eq!(rows.len() as i64, archived, "{reader}");
            for r in &rows {
                assert!(ledger.contains(r), "{reader}: {r:?} is not the simulator's");
            }
        }
    }
    store.close().await;
    sim.shutdown().await;
}

/// The daemon with `[archive] url`: while it records, every due period goes to the archive
/// and (db_keep_s = 0) leaves the database; the archive then holds every delivered trade
/// once; the counters say so and `/healthz` has no archive problem.
#[tokio::test]
async fn sqlite_the_daemon_archives_and_deletes_while_recording() {
    let (_db, url) = sqlite_db();
    the_daemon_archives_and_deletes_while_recording(&url).await;
}

/// The same on PostgreSQL, where the daemon also keeps time partitions ready ahead of the
/// rows (from the current one to at least 15 minutes ahead, a period wide here: `db_keep_s`
/// is 0).
#[tokio::test]
async fn postgres_the_daemon_archives_and_deletes_while_recording() {
    let Some(pg) = PgDb::create().await else {
        return;
    };
    the_daemon_archives_and_deletes_while_recording(&pg.url).await;
    pg.drop_db().await;
}

async fn the_daemon_archives_and_deletes_while_recording(url: &str) {
    let url = url.to_string();
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[archive]\nurl = \"file://{}\"\nperiod_s = 60\nsettle_s = 1\ndb_keep_s = 0\n",
        dir.path().display()
    );
    let (sim, store, rec) = recording(&url, &extra).await;
    sim.halt();
    let delivered: usize = SYMBOLS.iter().map(|s| sim.delivered(s).len()).sum();
    wait_for(
        "every delivered trade archived and gone from the database",
        Duration::from_secs(60),
        || async {
            let db = db_rows(&store).await;
            db["trades"] == 0 && archived_rows(&store).await["trades"] == delivered as i64
        },
    )
    .await;
    let a = &rec.stats.archive;
    use std::sync::atomic::Ordering::Relaxed;
    assert!(a.parts.load(Relaxed) > 0 && a.deleted_rows.load(Relaxed) > 0);
    assert_eq!(a.failures.load(Relaxed), 0);
    let cfg = recorder_config(&sim.ws_url(), &sim.rest_url(), &url, &SYMBOLS, &extra);
    let health = mdrec::ops::metrics::health(&rec.stats, &cfg);
    assert!(
        !health
            .problems
            .iter()
            .any(|p| p.contains("archive") || p.contains("disk")),
        "{:?}",
        health.problems
    );
    if matches!(store, Store::Postgres(_)) {
        // every table's partitions, a minute wide, at least 15 of them ahead of now
        let ready = || async {
            let now = mdrec::model::now_ms();
            let parts = store.partitions().await.unwrap();
            assert!(parts.iter().all(|p| p.to_ms - p.from_ms == 60_000));
            mdrec::store::partitions::PARTITIONED.iter().all(|t| {
                parts
                    .iter()
                    .filter(|p| p.of.table == t.table && p.to_ms > now)
                    .count()
                    >= 15
            })
        };
        wait_for("partitions ahead", Duration::from_secs(30), ready).await;
    }
    rec.stop().await;
    let mut want: Vec<(String, i64)> = SYMBOLS
        .iter()
        .flat_map(|s| {
            sim.delivered(s)
                .into_iter()
                .map(move |id| (s.to_string(), id))
        })
        .collect();
    want.sort();
    if let Some(readers) = readers_trades(dir.path()) {
        for (reader, rows) in readers {
            let mut got: Vec<(String, i64)> = rows.into_iter().map(|r| (r.0, r.1)).collect();
            got.sort();
            assert_eq!(got, want, "{reader}");
        }
    }
    store.close().await;
    sim.shutdown().await;
}

/// A small disk (a 32 MiB tmpfs) below `[storage] min_free_bytes` the whole time: while it
/// records, the daemon deletes archived rows early (db_keep_s is a week), never a row whose
/// period is not archived yet (the simulated market runs into the future: those periods
/// have not ended), recording goes on, and `/healthz` says the budget is exhausted.
#[tokio::test]
async fn sqlite_a_disk_below_its_budget_keeps_recording_and_deletes_only_archived_rows() {
    let Some(disk) = SmallDisk::mount(32) else {
        return;
    };
    let url = format!("sqlite://{}", disk.path().join("test.db").display());
    let archive_dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[archive]\nurl = \"file://{}\"\nperiod_s = 60\nsettle_s = 1\ndb_keep_s = 604800\n\
         [storage]\nmin_free_bytes = {}\n",
        archive_dir.path().display(),
        64u64 << 20
    );
    // two minutes back at 60x: after two seconds the market's clock is ahead of the wall's
    let (sim, store, rec) = recording_from(&url, &extra, mdrec::model::now_ms() - 120_000).await;
    wait_for(
        "trades from the future",
        Duration::from_secs(30),
        || async {
            let t = common::stored_trades(&store, SYMBOLS[0]).await;
            t.values().any(|v| v.4 > mdrec::model::now_ms() + 60_000)
        },
    )
    .await;
    sim.halt();
    let delivered: usize = SYMBOLS.iter().map(|s| sim.delivered(s).len()).sum();
    use std::sync::atomic::Ordering::Relaxed;
    let a = rec.stats.archive.clone();
    wait_for(
        "archived rows deleted early, nothing left to delete",
        Duration::from_secs(60),
        || async {
            let stored: usize = {
                let mut n = 0;
                for s in SYMBOLS {
                    n += common::stored_trades(&store, s).await.len();
                }
                n
            };
            let archived = archived_rows(&store).await["trades"] as usize;
            a.deleted_rows.load(Relaxed) > 0
                && a.budget_exhausted.load(Relaxed)
                && stored + archived == delivered
        },
    )
    .await;
    // what is left in the database is only what is not archived: periods not ended yet
    for s in SYMBOLS {
        let through = store
            .archived_through("trades", NAME, s)
            .await
            .unwrap()
            .unwrap_or(i64::MIN);
        let left = common::stored_trades(&store, s).await;
        assert!(!left.is_empty(), "{s}: the unarchived rows are kept");
        assert!(
            left.values().all(|v| v.4 >= through),
            "{s}: a row of an archived period left in the database"
        );
    }
    let cfg = recorder_config(&sim.ws_url(), &sim.rest_url(), &url, &SYMBOLS, &extra);
    let health = mdrec::ops::metrics::health(&rec.stats, &cfg);
    assert!(
        health
            .problems
            .iter()
            .any(|p| p.contains("disk: below its budget")),
        "{:?}",
        health.problems
    );
    rec.stop().await;
    store.close().await;
    sim.shutdown().await;
}

/// A tmpfs of a few MiB mounted for a test, unmounted when dropped; None (the test says it
/// did not run) where mounting is not allowed, unless `MDREC_REQUIRE_TMPFS=1`.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(mib: u32) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(SmallDisk { dir }),
            other => {
                let why = format!("{other:?}");
                assert!(
                    std::env::var("MDREC_REQUIRE_TMPFS").as_deref() != Ok("1"),
                    "MDREC_REQUIRE_TMPFS=1 but a tmpfs could not be mounted: {why}"
                );
                common::not_tested(
                    &format!("a small disk (tmpfs) for the disk budget: {why}"),
                    "run as root (mount -t tmpfs); MDREC_REQUIRE_TMPFS=1 makes this a failure",
                );
                None
            }
        }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// `mdrec <command> --db URL [args]`, its standard output (panics with its error output when
/// it fails).
fn mdrec_out(command: &str, db: &str, args: &[&str]) -> String {
    let out = common::mdrec_cmd(command, db).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "mdrec {command} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Every file under `dir`, by path relative to it, with its content.
fn tree(dir: &std::path::Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    if !dir.exists() {
        return out;
    }
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                out.insert(rel, std::fs::read_to_string(&p).unwrap());
            }
        }
    }
    out
}

/// What the readers answer: coverage as JSON (without where it was stored), trades and book
/// changes exported as CSV, and the book at `at`; `archive`: `--archive URL` or nothing.
fn readers(
    db: &str,
    archive: &[&str],
    at: i64,
) -> (serde_json::Value, Vec<String>, serde_json::Value) {
    let mut cov: serde_json::Value =
        serde_json::from_str(&mdrec_out("coverage", db, &[&["--json"], archive].concat())).unwrap();
    let mut files = Vec::new();
    for kind in ["trades", "book-deltas", "klines"] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("x");
        let symbols = SYMBOLS.join(",");
        let mut args = vec![
            "--kind",
            kind,
            "--symbol",
            &symbols,
            "--format",
            "csv",
            "--out",
            out.to_str().unwrap(),
        ];
        if kind == "klines" {
            args.extend(["--interval", "1min"]);
        }
        mdrec_out("export", db, &[&args[..], archive].concat());
        files.push(format!("{:?}", tree(&out)));
    }
    let at = at.to_string();
    let mut book: serde_json::Value = serde_json::from_str(&mdrec_out(
        "book",
        db,
        &[&["--symbol", SYMBOLS[0], "--at", &at, "--json"], archive].concat(),
    ))
    .unwrap();
    let stored = serde_json::json!({
        "coverage": cov["symbols"].as_array().unwrap().iter().map(|s| s["stored"].clone()).collect::<Vec<_>>(),
        "book": book["stored"].clone(),
    });
    for s in cov["symbols"].as_array_mut().unwrap() {
        s.as_object_mut().unwrap().remove("stored");
    }
    book.as_object_mut().unwrap().remove("stored");
    (
        serde_json::json!({"coverage": cov, "book": book, "stored": stored}),
        files,
        stored,
    )
}

/// `coverage`, `export` and `book --at` with `--archive` answer as they did before anything
/// was archived, once part of the rows left the database and once all did, each row once;
/// they say per day whether the rows came from the database, the archive or both.
async fn readers_span_both_tiers(db_url: &str) {
    let (sim, store) = record(db_url).await;
    let trades = common::stored_trades(&store, SYMBOLS[0]).await;
    let mut times: Vec<i64> = trades.values().map(|t| t.4).collect();
    times.sort();
    let (first, last) = (times[0], times[times.len() - 1]);
    let at = times[times.len() / 2];
    let (before, before_files, _) = readers(db_url, &[], at);
    let want = db_rows(&store).await;
    assert!(
        before_files.iter().all(|f| f.contains("part.csv")),
        "every export holds rows"
    );

    let (dir, target) = directory();
    let url = format!("file://{}", dir.path().display());
    let archive = ["--archive", url.as_str()];
    let endless = mdrec::model::now_ms();
    wait_for("the last period to end", Duration::from_secs(3), || async {
        mdrec::model::now_ms() >= endless + 1000
    })
    .await;
    run(&store, &target, SETTINGS, i64::MAX).await.unwrap();

    // the first half of the periods leave the database
    let p = prune(&store, 0, (first + last) / 2).await.unwrap();
    assert!(p.rows > 0, "{p:?}");
    let left = db_rows(&store).await;
    assert!(
        left["trades"] < want["trades"] && left["trades"] > 0,
        "{left:?}"
    );
    let db_only: serde_json::Value =
        serde_json::from_str(&mdrec_out("coverage", db_url, &["--json"])).unwrap();
    assert_ne!(db_only, before["coverage"], "the database alone lacks rows");
    let (half, half_files, stored) = readers(db_url, &archive, at);
    assert_eq!(half["coverage"], before["coverage"]);
    assert_eq!(half_files, before_files);
    assert_eq!(half["book"], before["book"]);
    let days = stored["coverage"][0].as_array().unwrap();
    let trades_day = days.iter().find(|d| d["table"] == "trades").unwrap();
    assert_eq!(trades_day["tier"], "both", "{days:?}");
    let n = |k: &str| trades_day[k].as_u64().unwrap();
    assert!(
        n("both_rows") > 0 && n("archive_rows") > n("database_rows"),
        "{trades_day}"
    );
    assert_eq!(
        (n("database_rows") + n("archive_rows") - n("both_rows")) as usize,
        trades.len()
    );

    // then all of them
    prune(&store, 0, i64::MAX / 2).await.unwrap();
    assert_eq!(db_rows(&store).await["trades"], 0);
    let (all, all_files, stored) = readers(db_url, &archive, at);
    assert_eq!(all["coverage"], before["coverage"]);
    assert_eq!(all_files, before_files);
    assert_eq!(all["book"], before["book"]);
    for d in stored["coverage"][0].as_array().unwrap() {
        assert_eq!(d["tier"], "archive", "{d}");
        assert_eq!(d["database_rows"], 0, "{d}");
    }
    assert_eq!(stored["book"][0]["tier"], "archive", "{stored}");
    // the text and the HTML page say so too
    let page = dir.path().join("coverage.html");
    let text = mdrec_out(
        "coverage",
        db_url,
        &[&["--html", page.to_str().unwrap()], &archive[..]].concat(),
    );
    assert!(text.contains(" archive ("), "{text}");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("<td class=\"l\">archive</td>"), "{html}");
    store.close().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_readers_span_both_tiers() {
    let (_db, url) = sqlite_db();
    readers_span_both_tiers(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_readers_span_both_tiers() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    readers_span_both_tiers(&db.url).await;
    db.drop_db().await;
}

/// While recording is behind (the daemon's `busy`: the writer's queue deep), a round waits
/// before each part: nothing is written; once it is not, the round archives everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_archiving_waits_while_recording_is_behind() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
    let (_db, url) = sqlite_db();
    let (sim, store) = record(&url).await;
    let (dir, target) = directory();
    let last = mdrec::model::now_ms();
    wait_for("the last period to end", Duration::from_secs(3), || async {
        mdrec::model::now_ms() >= last + 1000
    })
    .await;
    // nothing archived yet: the archive is as far behind as the first connection
    let first = store.oldest_archive_mark().await.unwrap();
    assert!(first.is_some_and(|t| t <= last), "{first:?}");
    let behind = Arc::new(AtomicBool::new(true));
    let asked = Arc::new(AtomicUsize::new(0));
    let (b, a) = (behind.clone(), asked.clone());
    let store = Arc::new(store);
    let s = store.clone();
    let round = tokio::spawn(async move {
        let busy = move || {
            a.fetch_add(1, SeqCst);
            b.load(SeqCst)
        };
        mdrec::archive::run_paced(&s, &target, SETTINGS, i64::MAX, &busy).await
    });
    // every stream of the first table asked, and asked again
    wait_for("the round to wait", Duration::from_secs(20), || async {
        asked.load(SeqCst) > 2 * SYMBOLS.len()
    })
    .await;
    let files = std::fs::read_dir(dir.path()).unwrap().count();
    assert!(store.archive_parts().await.unwrap().is_empty());
    assert_eq!(files, 0, "nothing written while recording is behind");
    behind.store(false, SeqCst);
    let r = round.await.unwrap().unwrap();
    assert!(r.parts > 0);
    assert_eq!(
        archived_rows(&store).await["trades"],
        db_rows(&store).await["trades"]
    );
    let now = store.oldest_archive_mark().await.unwrap();
    assert!(now > first, "the archive moved on: {now:?} after {first:?}");
    sim.shutdown().await;
}

/// Rows of a partitioned table's default partition (PostgreSQL).
async fn in_default(store: &Store, table: &str) -> i64 {
    let Store::Postgres(s) = store else {
        return 0;
    };
    sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}_default"))
        .fetch_one(s.pool())
        .await
        .unwrap()
}

/// PostgreSQL: time partitions made after a recording take its rows out of the default
/// partitions (nothing lost); they are kept while not archived, dropped whole once they
/// are (the ledger then says the parts' rows left); a late row for a dropped partition's
/// time lands in the default partition and is archived once.
#[tokio::test]
async fn postgres_archived_partitions_are_dropped_whole() {
    use mdrec::store::partitions::PARTITIONED;
    let Some(pg) = PgDb::create().await else {
        return;
    };
    let (sim, store) = record(&pg.url).await;
    let recorded = db_rows(&store).await;
    let last = mdrec::model::now_ms();
    wait_for("the last period to end", Duration::from_secs(3), || async {
        mdrec::model::now_ms() >= last + 1000
    })
    .await;
    // ten-second partitions over the recording (its market began ten minutes ago), one
    // before them for older bars (a day's kline began at midnight)
    let width = 10_000;
    let span = ((last - 700_000).div_euclid(width) * width, last + width);
    let mut made = 0;
    for p in PARTITIONED.iter() {
        let old = span.0 - 3 * 86_400_000;
        made += store.create_partition(p, old, span.0).await.unwrap() as usize;
        for from in (span.0..span.1).step_by(width as usize) {
            made += store.create_partition(p, from, from + width).await.unwrap() as usize;
        }
        assert_eq!(in_default(&store, p.table).await, 0, "{}", p.table);
    }
    assert_eq!(made, store.partitions().await.unwrap().len());
    assert_eq!(db_rows(&store).await, recorded, "rows moved, none lost");

    // nothing archived: no row deleted (only partitions that hold none are dropped)
    let none = prune(&store, 0, mdrec::model::now_ms()).await.unwrap();
    assert_eq!((none.rows, none.parts), (0, 0), "{none:?}");
    assert_eq!(db_rows(&store).await, recorded);

    let (_dir, target) = directory();
    run(&store, &target, SETTINGS, i64::MAX).await.unwrap();
    let at = mdrec::model::now_ms();
    let pruned = prune(&store, 0, at).await.unwrap();
    assert!(pruned.partitions > 0 && pruned.rows > 0, "{pruned:?}");
    let left = store.partitions().await.unwrap();
    assert!(left.iter().all(|p| p.to_ms > at), "{left:?}");
    let db = db_rows(&store).await;
    let archived = archived_rows(&store).await;
    for t in MARKET_DATA {
        assert!(recorded[t] > 0, "{t}: nothing recorded");
        assert_eq!(db[t], 0, "{t} left in the database");
        assert_eq!(archived[t], recorded[t], "{t} archived");
    }
    let parts = store.archive_parts().await.unwrap();
    assert!(
        parts
            .iter()
            .filter(|p| MARKET_DATA.contains(&p.tbl.as_str()))
            .all(|p| p.deleted_at_ms.is_some())
    );

    // a late ticker (a replayed spool's: received long ago) in a dropped partition's time:
    // the default partition takes it
    store.set_late_rule(LateRule {
        period_ms: SETTINGS.period_ms,
        settle_ms: 0,
    });
    let mut b = Batch::default();
    b.push(Event::Ticker(mdrec::model::Ticker {
        venue: NAME,
        symbol: SYMBOLS[0].into(),
        event_time_ms: span.0 + 1,
        recv_time_us: (span.0 + 2) * 1000,
        open: None,
        high: None,
        low: None,
        close: Some(Dec::parse("1.5").unwrap()),
        volume: None,
        quote_volume: None,
        change: None,
        bid: None,
        bid_qty: None,
        ask: None,
        ask_qty: None,
    }));
    store.write(&b).await.unwrap();
    assert_eq!(in_default(&store, "tickers").await, 1);
    let r = run(&store, &target, SETTINGS, i64::MAX).await.unwrap();
    assert_eq!(r.rewritten, 1, "{r:?}");
    assert_eq!(
        archived_rows(&store).await["tickers"],
        recorded["tickers"] + 1
    );
    prune(&store, 0, mdrec::model::now_ms()).await.unwrap();
    assert_eq!(in_default(&store, "tickers").await, 0);
    store.close().await;
    sim.shutdown().await;
    pg.drop_db().await;
}
