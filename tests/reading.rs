//! The reading commands need only a database: `coverage`, `book` and `export` take `--db URL`
//! (or `MDREC_DATABASE_URL` alone), without a recorder configuration; the venue, the book
//! stream and the bar interval come from the data, and a flag is asked for only when the data
//! holds several (exit 2 naming it). A SQLite path that is not there is said, not created.

use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_mdrec");

async fn mdrec(
    args: &[&str],
    env: &[(&str, &str)],
    cwd: &std::path::Path,
) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("MDREC_DATABASE_URL")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("exits within 60 s")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `mdrec demo` for `seconds` into `rec.db` in `d`; its URL.
async fn demo(d: &std::path::Path, seconds: &str) -> String {
    let db = d.join("rec.db");
    let (code, _, err) = mdrec(
        &["demo", "--seconds", seconds, "--db", db.to_str().unwrap()],
        &[],
        d,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    format!("sqlite://{}", db.display())
}

/// `mdrec export` of BTC_USD's trades as CSV to `out`, with `extra` flags.
async fn export_trades(
    url: &str,
    out: &std::path::Path,
    extra: &[&str],
    cwd: &std::path::Path,
) -> (i32, String, String) {
    let mut args = vec![
        "export", "--db", url, "--kind", "trades", "--symbol", "BTC_USD", "--format", "csv",
        "--out",
    ];
    let out = out.to_string_lossy().into_owned();
    args.push(&out);
    args.extend_from_slice(extra);
    mdrec(&args, &[], cwd).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_commands_need_only_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let url = demo(d, "2").await;

    // coverage: --db, or the environment variable alone
    let (code, out, err) = mdrec(&["coverage", "--db", &url], &[], d).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("coverage of cdc-exchange"), "{out}");
    let (code, out, err) = mdrec(&["coverage"], &[("MDREC_DATABASE_URL", &url)], d).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("BTC_USD"), "{out}");

    // book: its stream from the data
    let (code, out, err) = mdrec(
        &["book", "--db", &url, "--symbol", "BTC_USD", "--json"],
        &[],
        d,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let book: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(!book["bids"].as_array().unwrap().is_empty(), "{out}");

    // export: trades need no interval; bars of two intervals want one named
    let csv = d.join("t.csv");
    let (code, _, err) = export_trades(&url, &csv, &[], d).await;
    assert_eq!(code, 0, "{err}");
    assert!(std::fs::read_to_string(&csv).unwrap().lines().count() > 1);
    // a name ending in .gz: the same CSV, gzip-compressed
    let gz = d.join("t.csv.gz");
    let (code, _, err) = export_trades(&url, &gz, &[], d).await;
    assert_eq!(code, 0, "{err}");
    let mut text = String::new();
    use std::io::Read;
    flate2::read::GzDecoder::new(std::fs::File::open(&gz).unwrap())
        .read_to_string(&mut text)
        .expect("a gzip stream, whole");
    assert_eq!(text, std::fs::read_to_string(&csv).unwrap());
    let bars = d.join("k.csv");
    let args = [
        "export",
        "--db",
        &url,
        "--kind",
        "klines",
        "--symbol",
        "BTC_USD",
        "--format",
        "csv",
        "--out",
        bars.to_str().unwrap(),
    ];
    let (code, _, err) = mdrec(&args, &[], d).await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--interval") && err.contains("1m, 5m"),
        "{err}"
    );
    let mut with = args.to_vec();
    with.extend(["--interval", "1m"]);
    let (code, _, err) = mdrec(&with, &[], d).await;
    assert_eq!(code, 0, "{err}");

    // the window is [from, to) in coverage and export alike, in any spelling of a time
    let times: Vec<i64> = std::fs::read_to_string(&csv)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(7).unwrap().parse().unwrap())
        .collect();
    let distinct: std::collections::BTreeSet<i64> = times.iter().copied().collect();
    let distinct: Vec<i64> = distinct.into_iter().collect();
    assert!(distinct.len() >= 12, "{distinct:?}");
    let spelled = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .format("%Y-%m-%d %H:%M:%S%.3f")
            .to_string()
    };
    let (from, to) = (distinct[2], distinct[10]);
    let want = times.iter().filter(|&&t| t >= from && t < to).count();
    let window = d.join("w.csv");
    let (f, t) = (spelled(from), spelled(to));
    let (code, _, err) = export_trades(&url, &window, &["--from", &f, "--to", &t], d).await;
    assert_eq!(code, 0, "{err}");
    let exported = std::fs::read_to_string(&window).unwrap().lines().count() - 1;
    assert_eq!(exported, want, "[{from}, {to})");
    let (code, out, err) = mdrec(
        &[
            "coverage",
            "--db",
            &url,
            "--symbol",
            "BTC_USD",
            "--json",
            "--from",
            &spelled(from),
            "--to",
            &spelled(to),
        ],
        &[],
        d,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let c: serde_json::Value = serde_json::from_str(&out).unwrap();
    let t = c["symbols"][0]["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stream"] == "trades")
        .unwrap();
    assert_eq!(
        t["rows"], want as i64,
        "coverage counts what export writes: {t}"
    );

    // a second venue in the same file: --venue is asked for, naming both
    let (code, _, err) = mdrec(
        &[
            "demo",
            "--venue",
            "cdc-v1",
            "--seconds",
            "2",
            "--db",
            &d.join("rec.db").to_string_lossy(),
        ],
        &[],
        d,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = mdrec(&["coverage", "--db", &url], &[], d).await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--venue") && err.contains("cdc-exchange") && err.contains("cdc-v1"),
        "{err}"
    );
    let (code, out, err) = mdrec(&["coverage", "--db", &url, "--venue", "cdc-v1"], &[], d).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("coverage of cdc-v1") && out.contains("btcusdt"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_database_is_said_and_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let missing = d.join("typo.db");
    let (code, _, err) = mdrec(
        &[
            "coverage",
            "--db",
            &format!("sqlite://{}", missing.display()),
        ],
        &[],
        d,
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("no SQLite database at {}", missing.display())),
        "{err}"
    );
    assert!(!missing.exists(), "not created");
    if !std::path::Path::new("/etc/mdrec/mdrec.toml").exists() {
        let (code, _, err) = mdrec(
            &[
                "export", "--kind", "trades", "--symbol", "x", "--format", "csv", "--out", "x.csv",
            ],
            &[],
            d,
        )
        .await;
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("--db: no database"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_exit_2_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let url = demo(d, "2").await;
    let out = d.join("out");
    std::fs::create_dir(&out).unwrap();
    let file = out.join("t.csv");
    let export = |extra: &[&str]| {
        let mut a = vec![
            "export", "--db", &url, "--kind", "trades", "--symbol", "BTC_USD", "--format", "csv",
        ];
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect::<Vec<String>>()
    };
    let f = file.to_str().unwrap();
    let o = out.to_str().unwrap();
    for (args, flag, says) in [
        (
            export(&["--out", f, "--from", "2026-12-03", "--to", "2026-12-02"]),
            "--from",
            "must be before --to",
        ),
        (export(&["--out", o]), "--out", "is a directory"),
        (
            vec![
                "export", "--db", &url, "--kind", "trades", "--symbol", "BTC_USX", "--format",
                "csv", "--out", f,
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            "--symbol",
            "did you mean BTC_USD?",
        ),
        (
            vec!["coverage", "--db", &url, "--symbol", "ETH_USX"]
                .into_iter()
                .map(String::from)
                .collect(),
            "--symbol",
            "did you mean ETH_USD?",
        ),
        (
            vec!["book", "--db", &url, "--symbol", "btc_usd"]
                .into_iter()
                .map(String::from)
                .collect(),
            "--symbol",
            "did you mean BTC_USD?",
        ),
    ] {
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let (code, _, err) = mdrec(&args, &[], d).await;
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(flag) && err.contains(says), "{args:?}: {err}");
        assert_eq!(
            std::fs::read_dir(&out).unwrap().count(),
            0,
            "{args:?}: nothing written"
        );
    }
    // an existing file is kept unless --force
    let (code, _, err) = mdrec(
        &export(&["--out", f])
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>(),
        &[],
        d,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let first = std::fs::read(&file).unwrap();
    let (code, _, err) = mdrec(
        &export(&["--out", f, "--from", "2026-01-01"])
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>(),
        &[],
        d,
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), first, "kept");
    let (code, _, err) = mdrec(
        &export(&["--out", f, "--force"])
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>(),
        &[],
        d,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let names: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["t.csv"], "no .partial left");
}

/// `book --at` says how old the book is at the asked time and warns about a hole or a
/// disconnect in between; before the first book it names the earliest time there is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn book_at_says_its_age_and_what_lies_between() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // two demos into one file: a recorder down between them
    let url = demo(d, "2").await;
    demo(d, "2").await;
    let store = mdrec::store::Store::open_read(&url).await.unwrap();
    let spans = store
        .session_spans("cdc-exchange", "BTC_USD")
        .await
        .unwrap();
    store.close().await;
    assert_eq!(spans.len(), 2, "{spans:?}");
    let (first_end, second_start) = (spans[0].1.unwrap(), spans[1].0);
    assert!(first_end < second_start);
    // between the two demos: the first one's last book, with the time no socket recorded
    let between = ((first_end + second_start) / 2).to_string();
    let (code, out, err) = mdrec(
        &[
            "book", "--db", &url, "--symbol", "BTC_USD", "--at", &between, "--json",
        ],
        &[],
        d,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["age_ms"].as_i64().unwrap() > 0, "{v}");
    let warnings: Vec<String> = v["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("no socket was recording from")),
        "{warnings:?}"
    );
    // the trade and bar holes of the same stretch say nothing about the book
    assert!(
        warnings
            .iter()
            .all(|w| !w.contains("hole in trades") && !w.contains("hole in kline")),
        "{warnings:?}"
    );
    let (code, out, _) = mdrec(
        &[
            "book", "--db", &url, "--symbol", "BTC_USD", "--at", &between,
        ],
        &[],
        d,
    )
    .await;
    assert_eq!(code, 0);
    assert!(
        out.contains("since the book's last update") && out.contains("warning: "),
        "{out}"
    );
    // while recording, right after a book: no warning
    let (code, out, err) = mdrec(
        &[
            "book",
            "--db",
            &url,
            "--symbol",
            "BTC_USD",
            "--at",
            &(second_start + 1500).to_string(),
            "--json",
        ],
        &[],
        d,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["warnings"], serde_json::json!([]), "{v}");
    // coverage's JSON speaks the stored words, and the live share is over the recorded span
    // (to the last session's end), not up to now
    let (code, out, err) = mdrec(&["coverage", "--db", &url, "--json"], &[], d).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("\"status\": \"unrecoverable\"") || out.contains("\"status\": \"filled\""),
        "{out}"
    );
    assert!(
        !out.contains("\"Filled\"") && !out.contains("\"Unrecoverable\""),
        "{out}"
    );
    let c: serde_json::Value = serde_json::from_str(&out).unwrap();
    let to = c["to_ms"].as_i64().unwrap();
    let last = spans[1].1.unwrap();
    assert!(
        to >= last && to - last < 1000,
        "ends with the last session ({last}), not now: {to}"
    );
    for sym in c["symbols"].as_array().unwrap() {
        let share = sym["live_share"].as_f64().unwrap();
        assert!(share > 0.5 && share <= 1.0, "{sym}");
    }
    // by hour: a verdict per stream and period; the time between the two demos is a hole
    // on record in trades, and the streams nothing fills back were partly down
    let (code, out, err) = mdrec(
        &["coverage", "--db", &url, "--by", "hour", "--json"],
        &[],
        d,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let c: serde_json::Value = serde_json::from_str(&out).unwrap();
    let allowed = [
        "complete",
        "holes filled",
        "holes open",
        "unrecoverable",
        "partly down",
        "recorder down",
    ];
    for sym in c["symbols"].as_array().unwrap() {
        let periods = sym["periods"].as_array().unwrap();
        assert!(!periods.is_empty(), "{sym}");
        for p in periods {
            assert!(allowed.contains(&p["verdict"].as_str().unwrap()), "{p}");
        }
        let of = |stream: &str| -> Vec<&str> {
            periods
                .iter()
                .filter(|p| p["stream"] == stream)
                .map(|p| p["verdict"].as_str().unwrap())
                .collect()
        };
        assert!(
            of("trades")
                .iter()
                .all(|v| ["unrecoverable", "holes filled", "holes open"].contains(v)),
            "{sym}"
        );
        assert!(of("ticker").contains(&"partly down"), "{sym}");
    }
    let (code, out, _) = mdrec(&["coverage", "--db", &url, "--by", "day"], &[], d).await;
    assert_eq!(code, 0);
    assert!(out.contains("period (UTC)"), "{out}");
    // before the first book: the earliest time there is
    let (code, _, err) = mdrec(
        &[
            "book",
            "--db",
            &url,
            "--symbol",
            "BTC_USD",
            "--at",
            "2026-01-01",
        ],
        &[],
        d,
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("the earliest is at"), "{err}");
}

/// Today's exchange sends a snapshot and then numbered changes: the changes export whole,
/// and the book on a time grid equals the book rebuilt at each grid time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_book_exports_as_changes_and_on_a_grid() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let url = demo(d, "3").await;
    let store = mdrec::store::Store::open_read(&url).await.unwrap();
    let venue = mdrec::venue::registry::static_name("cdc-exchange").unwrap();
    let counts = store.table_counts().await.unwrap();
    let stored = |t: &str| counts.iter().find(|c| c.0 == t).map_or(0, |c| c.1);

    // `mdrec export` of CSV to `out`, with `args`
    let export = |args: &[&str], out: &std::path::Path| {
        let mut all = vec!["export", "--db", &url, "--format", "csv", "--out"];
        let out = out.to_string_lossy().into_owned();
        all.push(&out);
        all.extend_from_slice(args);
        let all: Vec<String> = all.into_iter().map(str::to_string).collect();
        async move {
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            mdrec(&all, &[], d).await
        }
    };
    let changes = d.join("deltas.csv");
    let several = [
        "--symbol",
        "BTC_USD,ETH_USD,BTCUSD-PERP",
        "--layout",
        "file",
    ];
    let (code, _, err) = export(
        &[&["--kind", "book-deltas"][..], &several].concat(),
        &changes,
    )
    .await;
    assert_eq!(code, 2, "several symbols are not one file: {err}");
    let mut rows = 0;
    for symbol in ["BTC_USD", "ETH_USD", "BTCUSD-PERP"] {
        let args = ["--kind", "book-deltas", "--symbol", symbol, "--force"];
        let (code, _, err) = export(&args, &changes).await;
        assert_eq!(code, 0, "{err}");
        let text = std::fs::read_to_string(&changes).unwrap();
        assert!(text.starts_with("venue,symbol,depth_step,recv_time_us,seq,event_time_ms,side,price,qty,update_id,prev_update_id\n"));
        rows += text.lines().count() - 1;
    }
    assert!(stored("book_deltas") > 100, "{counts:?}");
    assert_eq!(rows as i64, stored("book_deltas"), "every change exported");

    let grid = d.join("grid.csv");
    let args = [
        "--kind", "book", "--every", "200ms", "--depth", "3", "--symbol", "BTC_USD",
    ];
    let (code, _, err) = export(&args, &grid).await;
    assert_eq!(code, 0, "{err}");
    let mut r = csv::Reader::from_path(&grid).unwrap();
    let header: Vec<String> = r.headers().unwrap().iter().map(str::to_string).collect();
    assert_eq!(header[3], "time_ms");
    assert_eq!(
        header[6..10],
        ["bid_1_price", "bid_1_qty", "ask_1_price", "ask_1_qty"]
    );
    let rows: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
    assert!(rows.len() >= 8, "a row each 200 ms of 3 s: {}", rows.len());
    let step: i16 = rows[0][2].parse().unwrap();
    for row in &rows {
        let g: i64 = row[3].parse().unwrap();
        assert_eq!(g % 200, 0);
        let book = store
            .load_book(venue, "BTC_USD", step, Some(g))
            .await
            .unwrap()
            .expect("a book at a grid time");
        assert_eq!(row[4].parse::<i64>().unwrap(), book.event_time_ms, "at {g}");
        for i in 0..3 {
            let (bp, bq) = &book.bids[i];
            let (ap, aq) = &book.asks[i];
            let want = [bp.as_str(), bq.as_str(), ap.as_str(), aq.as_str()];
            let got: Vec<&str> = (0..4).map(|k| &row[6 + 4 * i + k]).collect();
            assert_eq!(got, want, "level {} at {g}", i + 1);
        }
    }
    store.close().await;
}
