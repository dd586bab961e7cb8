//! What the daemon logs reads well where operators read it (journald, a file, a JSON
//! collector): no colour codes when stderr is not a terminal, optional values printed as
//! themselves or left out (never `Some(...)`), a disconnect that is no stop at WARN, and in
//! JSON every line an object whose numbers are numbers.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{Log, sqlite_db, wait_for};
use mdrec::sim::{self, SimConfig};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_mdrec");

/// Runs the recorder against the simulator, cuts its connections once it is connected,
/// waits for the reconnect, stops it with SIGTERM and returns what it wrote to stderr.
async fn log_of_a_cut_and_a_stop(format: &str) -> String {
    let sim = sim::start(SimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (_db_dir, db_url) = sqlite_db();
    let cfg = dir.path().join("mdrec.toml");
    std::fs::write(
        &cfg,
        format!(
            "[venue]\nkind = \"cdc-v1\"\nws_url = \"{}\"\nrest_url = \"{}\"\n[database]\nurl = \"{db_url}\"\n\
             [record]\nsymbols = [\"btcusdt\"]\nklines = [\"1min\"]\nmax_time_ahead_s = 86400\n\
             [metrics]\nlisten = \"\"\n[writer]\nspool_dir = {:?}\n[connection]\nreconnect_max_s = 1\n",
            sim.ws_url(),
            sim.rest_url(),
            dir.path().join("spool")
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["--log-format", format, "run", "-c"])
        .arg(&cfg)
        .env_remove("MDREC_DATABASE_URL")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let log = Log::follow(&mut child);
    // lines saying a connection opened ("disconnected" contains the word too)
    let connects = |t: &str| {
        t.lines()
            .filter(|l| l.contains("connected") && !l.contains("disconnected"))
            .count()
    };
    wait_for("connected", Duration::from_secs(30), || async {
        connects(&log.text()) >= 1
    })
    .await;
    sim.cut_connections();
    wait_for(
        "disconnected and connected again",
        Duration::from_secs(30),
        || async {
            let t = log.text();
            t.contains("disconnected") && connects(&t) >= 2
        },
    )
    .await;
    let pid = child.id().expect("child pid").to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("exits within 20 s")
        .unwrap();
    wait_for("the log to end", Duration::from_secs(5), || async {
        log.text().contains("shutdown complete")
    })
    .await;
    assert_eq!(status.code(), Some(0), "{}", log.text());
    sim.shutdown().await;
    log.text()
}

#[tokio::test]
async fn text_logs_are_plain_and_say_a_cut_at_warn() {
    let text = log_of_a_cut_and_a_stop("text").await;
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in a piped log:\n{text}"
    );
    assert!(
        !text.contains("Some("),
        "debug text of an optional value:\n{text}"
    );
    let disconnects: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("disconnected"))
        .collect();
    assert!(
        disconnects
            .iter()
            .any(|l| l.contains("WARN") && !l.contains("reason=shutdown")),
        "the cut is a warning:\n{text}"
    );
    for l in disconnects.iter().filter(|l| l.contains("reason=shutdown")) {
        assert!(l.contains("INFO"), "a stop's own closing is routine: {l}");
    }
}

#[tokio::test]
async fn json_logs_are_objects_with_numbers_as_numbers() {
    let text = log_of_a_cut_and_a_stop("json").await;
    let mut warned_cut = false;
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let fields = &v["fields"];
        for (k, val) in fields.as_object().into_iter().flatten() {
            if let Some(s) = val.as_str() {
                assert!(!s.starts_with("Some("), "{k} = {s} in {line}");
            }
            if k.ends_with("_ms") || k.ends_with("_s") || k == "symbols" {
                assert!(val.is_number(), "{k} is not a number in {line}");
            }
        }
        if fields["message"] == "disconnected" && fields["reason"] != "shutdown" {
            assert_eq!(v["level"], "WARN", "{line}");
            warned_cut = true;
        }
    }
    assert!(warned_cut, "no disconnect at WARN:\n{text}");
}
