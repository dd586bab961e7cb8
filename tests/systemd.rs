//! The binary speaks systemd's notify protocol: READY=1 after migrations and worker start,
//! WATCHDOG=1 while healthy, RELOADING=1 then READY=1 on SIGHUP, STOPPING=1 on SIGTERM, then
//! exit 0.

use std::process::Stdio;
use std::time::Duration;

use mdrec::sim::{self, SimConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_watchdog_stopping() {
    let sim = sim::start(SimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = tokio::net::UnixDatagram::bind(&sock_path).unwrap();
    let db = dir.path().join("rec.db");
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[venue]\nkind = \"cdc-v1\"\nws_url = \"{}\"\nrest_url = \"{}\"\n[database]\nurl = \"sqlite://{}\"\n[record]\nsymbols = [\"btcusdt\"]\nmax_time_ahead_s = 86400\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            sim.ws_url(),
            sim.rest_url(),
            db.display()
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mdrec"))
        .args(["run", "-c", cfg.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .env_remove("MDREC_DATABASE_URL")
        .env_remove("STATE_DIRECTORY")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let mut next = async || -> String {
        let n = tokio::time::timeout(Duration::from_secs(20), sock.recv(&mut buf))
            .await
            .expect("a notification in time")
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let first = next().await;
    assert!(
        first.lines().any(|l| l == "READY=1"),
        "first message is READY: {first:?}"
    );
    // READY means migrated: the schema is there
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM sqlite_master WHERE name = 'trades'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
    pool.close().await;
    let mut pets = 0;
    while pets < 3 {
        if next().await.lines().any(|l| l == "WATCHDOG=1") {
            pets += 1;
        }
    }
    let pid = child.id().unwrap().to_string();
    // systemctl reload: RELOADING=1 with the monotonic time (systemd 253 wants it), then READY=1
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let reloading = loop {
        let m = next().await;
        if m.lines().any(|l| l == "RELOADING=1") {
            break m;
        }
    };
    assert!(
        reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{reloading:?}"
    );
    loop {
        if next().await.lines().any(|l| l == "READY=1") {
            break;
        }
    }
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    loop {
        if next().await.lines().any(|l| l == "STOPPING=1") {
            break;
        }
    }
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    sim.shutdown().await;
}
