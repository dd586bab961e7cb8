//! A symbol the venue does not list is a typo until the operator says otherwise: `mdrec run`
//! and `mdrec check-config` stop with exit 2 naming `record.symbols` and the closest listed
//! names; `[record] allow_unlisted = true` records it anyway with a warning; a venue whose
//! listing does not answer is no reason not to start.

mod common;

use std::process::Stdio;
use std::time::Duration;

use mdrec::sim::{self, SimConfig};

const BIN: &str = env!("CARGO_BIN_EXE_mdrec");

fn config(dir: &std::path::Path, rest: &str, ws: &str, symbols: &[&str], extra: &str) -> String {
    let list: Vec<String> = symbols.iter().map(|s| format!("{s:?}")).collect();
    let text = format!(
        "[venue]\nkind = \"cdc-v1\"\nws_url = \"{ws}\"\nrest_url = \"{rest}\"\n[database]\nurl = \"sqlite://{}\"\n\
         [record]\nsymbols = [{}]\nmax_time_ahead_s = 86400\n{extra}[metrics]\nlisten = \"\"\n\
         [backfill]\nenabled = false\n[writer]\nspool_dir = {:?}\n",
        dir.join("rec.db").display(),
        list.join(", "),
        dir.join("spool")
    );
    let path = dir.join("mdrec.toml");
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

async fn mdrec(args: &[&str]) -> (i32, String, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(BIN)
            .args(args)
            .env_remove("MDREC_DATABASE_URL")
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("exits within 30 s")
    .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlisted_symbol_stops_start_up_with_the_closest_names() {
    let sim = sim::start(SimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &sim.rest_url(),
        &sim.ws_url(),
        &["btcusdt", "ethusdx"],
        "",
    );
    for cmd in ["run", "check-config"] {
        let (code, _, stderr) = mdrec(&[cmd, "-c", &cfg]).await;
        assert_eq!(code, 2, "{cmd}: {stderr}");
        assert!(
            stderr.contains("`record.symbols`")
                && stderr.contains("\"ethusdx\" (did you mean ethusdt?)")
                && stderr.contains("allow_unlisted"),
            "{cmd}: {stderr}"
        );
        assert!(
            !stderr.contains("\"btcusdt\""),
            "only the unlisted one: {stderr}"
        );
    }
    assert_eq!(sim.state().connections_total, 0, "nothing recorded");
    // a refused start leaves nothing behind: no database created and migrated, no spool
    assert!(!dir.path().join("rec.db").exists(), "database created");
    assert!(!dir.path().join("spool").exists(), "spool created");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_metrics_port_stops_start_up_before_the_database_is_made() {
    let sim = sim::start(SimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = config(dir.path(), &sim.rest_url(), &sim.ws_url(), &["btcusdt"], "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "listen = \"\"",
        &format!("listen = \"{}\"", taken.local_addr().unwrap()),
    );
    std::fs::write(&cfg, text).unwrap();
    let (code, _, stderr) = mdrec(&["run", "-c", &cfg]).await;
    assert_ne!(code, 0, "{stderr}");
    assert!(stderr.contains("binding the metrics listener"), "{stderr}");
    assert!(!dir.path().join("rec.db").exists(), "database created");
    assert!(!dir.path().join("spool").exists(), "spool created");
    assert_eq!(sim.state().connections_total, 0, "nothing recorded");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_says_when_the_venue_did_not_answer() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "http://127.0.0.1:9",
        "ws://127.0.0.1:9/ws",
        &["ethusdx"],
        "",
    );
    let (code, stdout, stderr) = mdrec(&["check-config", "-c", &cfg]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("# symbols: not checked (the venue's listing did not answer)"),
        "{stdout}"
    );
    let sim = sim::start(SimConfig::default()).await.unwrap();
    let cfg = config(
        dir.path(),
        &sim.rest_url(),
        &sim.ws_url(),
        &["btcusdt", "ethusdt"],
        "",
    );
    let (code, stdout, stderr) = mdrec(&["check-config", "-c", &cfg]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("these among them"), "{stdout}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_unlisted_records_it_anyway_with_a_warning() {
    let sim = sim::start(SimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &sim.rest_url(),
        &sim.ws_url(),
        &["btcusdt", "ethusdx"],
        "allow_unlisted = true\n",
    );
    let mut child = tokio::process::Command::new(BIN)
        .args(["run", "-c", &cfg])
        .env_remove("MDREC_DATABASE_URL")
        .env("RUST_LOG", "warn")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let log = common::Log::follow(&mut child);
    let store =
        mdrec::store::Store::connect(&format!("sqlite://{}", dir.path().join("rec.db").display()))
            .await
            .unwrap();
    common::wait_for("btcusdt recorded", Duration::from_secs(30), || async {
        !common::stored_ids(&store, "btcusdt").await.is_empty()
    })
    .await;
    let text = log.text();
    assert!(
        text.lines()
            .any(|l| l.contains("does not list this symbol") && l.contains("ethusdx")),
        "{text}"
    );
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert_eq!(child.wait().await.unwrap().code(), Some(0));
    store.close().await;
    sim.shutdown().await;
}
