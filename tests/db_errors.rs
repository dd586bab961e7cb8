//! Database errors say what to fix, in one line, at once: a SQLite directory that does not
//! exist is created (its parent there; deeper, it is a mount not there yet, said), one the
//! daemon may not write is named; PostgreSQL refusing the
//! connection, a database that does not exist, a role or password refused are one line each
//! (no pool timeout after 10 s, no cause repeated). What only the operator can fix stops
//! `mdrec run` at start-up; a server that is down does not (the spool records meanwhile).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_mdrec");

fn config(dir: &std::path::Path, db_url: &str) -> std::path::PathBuf {
    let text = format!(
        "[venue]\nkind = \"cdc-v1\"\nws_url = \"ws://127.0.0.1:9/ws\"\nrest_url = \"http://127.0.0.1:9\"\n\
         [database]\nurl = \"{db_url}\"\n[record]\nsymbols = [\"btcusdt\"]\n[metrics]\nlisten = \"\"\n\
         [writer]\nspool_dir = {:?}\n",
        dir.join("spool")
    );
    let path = dir.join("mdrec.toml");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    path
}

/// The binary, as an unprivileged user when the tests run as root (root writes anywhere).
fn command(unprivileged: bool) -> tokio::process::Command {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let mut c = if unprivileged && root {
        let mut c = tokio::process::Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            BIN,
        ]);
        c
    } else {
        tokio::process::Command::new(BIN)
    };
    c.env_remove("MDREC_DATABASE_URL")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

/// Runs `mdrec <cmd> -c cfg`; exit code, stderr, and how long it took.
async fn mdrec(cmd: &str, cfg: &std::path::Path, unprivileged: bool) -> (i32, String, Duration) {
    let started = Instant::now();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        command(unprivileged)
            .args([cmd, "-c", cfg.to_str().unwrap()])
            .output(),
    )
    .await
    .expect("exits within 30 s")
    .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        started.elapsed(),
    )
}

/// One error line: the message, no cause printed twice.
fn one_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("mdrec:")).collect();
    assert_eq!(lines.len(), 1, "one error line: {stderr}");
    let line = lines[0];
    let parts: Vec<&str> = line.split(": ").collect();
    for (i, p) in parts.iter().enumerate() {
        assert!(
            !parts[i + 1..].contains(p) || p.len() < 12,
            "a cause repeated in {line:?}"
        );
    }
    line
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_directory_missing_is_created() {
    let dir = tempfile::tempdir().unwrap();
    // two levels missing: a filesystem not mounted yet, said and not created
    let deep = dir.path().join("mnt/data/rec.db");
    let cfg = config(dir.path(), &format!("sqlite://{}", deep.display()));
    let (code, stderr, _) = mdrec("migrate", &cfg, false).await;
    assert_eq!(code, 1, "{stderr}");
    let line = one_line(&stderr);
    assert!(line.contains("not mounted yet"), "{line}");
    assert!(!dir.path().join("mnt").exists());
    // the directory it is to hold: created
    let db = dir.path().join("data/rec.db");
    let cfg = config(dir.path(), &format!("sqlite://{}", db.display()));
    let (code, stderr, _) = mdrec("migrate", &cfg, false).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(db.exists());
    let mode = std::fs::metadata(db.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o750, "created private to the service");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_directory_not_writable_is_named_and_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ro = dir.path().join("readonly");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let cfg = config(dir.path(), &format!("sqlite://{}/rec.db", ro.display()));
    for cmd in ["migrate", "run"] {
        let (code, stderr, took) = mdrec(cmd, &cfg, true).await;
        assert_eq!(code, 1, "{cmd}: {stderr}");
        let line = one_line(&stderr);
        assert!(
            line.contains(&ro.display().to_string()) && line.contains("Permission denied"),
            "{cmd}: names the directory and why: {line}"
        );
        assert!(
            line.contains("cannot write in the SQLite database's directory"),
            "{cmd}: {line}"
        );
        assert!(
            took < Duration::from_secs(5),
            "{cmd}: at once, took {took:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refusing_connections_is_one_line_at_once() {
    // a port nobody listens on
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!("postgres://mdrec@127.0.0.1:{port}/mdrec"),
    );
    let (code, stderr, took) = mdrec("migrate", &cfg, false).await;
    assert_eq!(code, 1, "{stderr}");
    let line = one_line(&stderr);
    assert!(
        line.contains(&format!(
            "PostgreSQL at 127.0.0.1:{port} refused the connection"
        )),
        "{line}"
    );
    assert!(took < Duration::from_secs(5), "no pool timeout: {took:?}");

    // the recorder does not stop for a server that is down: it says so once and spools
    let mut child = command(false)
        .args(["run", "-c", cfg.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = common::Log::follow(&mut child);
    common::wait_for("the spool warning", Duration::from_secs(10), || async {
        log.text().contains("recording into the spool")
    })
    .await;
    let text = log.text();
    let warn = text
        .lines()
        .find(|l| l.contains("recording into the spool"))
        .unwrap();
    assert!(warn.contains("refused the connection"), "{warn}");
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = child.wait().await.unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unknown_database_and_role_are_one_line_and_stop_start_up() {
    // the server is there (or required): a database of its own proves it
    let Some(db) = common::PgDb::create().await else {
        return;
    };
    db.drop_db().await;
    let admin = url::Url::parse(&common::pg_admin_url()).unwrap();
    let host = format!(
        "{}:{}",
        admin.host_str().unwrap(),
        admin.port().unwrap_or(5432)
    );
    let name = format!("mdrec_missing_{}", fastrand::u32(..));
    let mut no_db = admin.clone();
    no_db.set_path(&format!("/{name}"));
    let mut no_role = admin.clone();
    no_role.set_username("mdrec_no_such_role").unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (url, want) in [
        (
            no_db.to_string(),
            format!("PostgreSQL at {host} has no database \"{name}\": create it (createdb"),
        ),
        (
            no_role.to_string(),
            // trust auth says the role does not exist; password auth will not tell
            format!("PostgreSQL at {host} refused "),
        ),
    ] {
        let cfg = config(dir.path(), &url);
        for cmd in ["migrate", "run"] {
            let (code, stderr, took) = mdrec(cmd, &cfg, false).await;
            assert_eq!(code, 1, "{cmd} {url}: {stderr}");
            let line = one_line(&stderr);
            assert!(line.contains(&want), "{cmd}: {line}");
            if url.contains("mdrec_no_such_role") {
                assert!(
                    line.contains("user \"mdrec_no_such_role\"")
                        || line.contains("the password of user \"mdrec_no_such_role\""),
                    "{cmd}: {line}"
                );
            }
            assert!(took < Duration::from_secs(5), "{cmd}: {took:?}");
        }
    }
}

/// A server that asks for a password and refuses it (the test machine's own PostgreSQL
/// trusts local connections): the protocol's start-up, answered with SQLSTATE 28P01.
async fn refusing_server() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut len = [0u8; 4];
                loop {
                    if s.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let n = u32::from_be_bytes(len) as usize;
                    let mut body = vec![0u8; n.saturating_sub(4)];
                    if s.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    if body.starts_with(&[0x04, 0xd2, 0x16, 0x2f]) {
                        let _ = s.write_all(b"N").await; // SSLRequest: no TLS here
                        continue;
                    }
                    break;
                }
                let mut fields = Vec::new();
                for (k, v) in [
                    (b'S', "FATAL"),
                    (b'V', "FATAL"),
                    (b'C', "28P01"),
                    (b'M', "password authentication failed for user \"mdrec\""),
                ] {
                    fields.push(k);
                    fields.extend_from_slice(v.as_bytes());
                    fields.push(0);
                }
                fields.push(0);
                let mut msg = vec![b'E'];
                msg.extend_from_slice(&((fields.len() + 4) as u32).to_be_bytes());
                msg.extend_from_slice(&fields);
                let _ = s.write_all(&msg).await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_wrong_password_is_one_line_and_stops_start_up() {
    let port = refusing_server().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!("postgres://mdrec:wrong@127.0.0.1:{port}/mdrec"),
    );
    for cmd in ["migrate", "run"] {
        let (code, stderr, took) = mdrec(cmd, &cfg, false).await;
        assert_eq!(code, 1, "{cmd}: {stderr}");
        let line = one_line(&stderr);
        assert!(
            line.contains(&format!(
                "PostgreSQL at 127.0.0.1:{port} refused the password of user \"mdrec\""
            )),
            "{cmd}: {line}"
        );
        assert!(
            !line.contains("wrong"),
            "the password is not printed: {line}"
        );
        assert!(took < Duration::from_secs(5), "{cmd}: {took:?}");
    }
}

/// A SQLite path two levels below what exists is a filesystem not mounted yet: `mdrec run`
/// records into no spool there either (the default spool, `<db>-spool`, would create the
/// mount point on the root filesystem, and the database after it). It holds what it received
/// and says why; `check-config` says it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_not_mounted_yet_gets_no_spool_beside_it() {
    let sim = mdrec::sim::start(mdrec::sim::SimConfig::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("notmounted/a/b/x.db");
    let cfg = dir.path().join("mdrec.toml");
    std::fs::write(
        &cfg,
        format!(
            "[venue]\nkind = \"cdc-v1\"\nws_url = \"{}\"\nrest_url = \"{}\"\n[database]\nurl = \"sqlite://{}\"\n\
             [record]\nsymbols = [\"btcusdt\"]\nmax_time_ahead_s = 86400\n[metrics]\nlisten = \"\"\n\
             [backfill]\nenabled = false\n",
            sim.ws_url(),
            sim.rest_url(),
            db.display()
        ),
    )
    .unwrap();
    let checked = std::process::Command::new(BIN)
        .args(["check-config", "--offline", "-c"])
        .arg(&cfg)
        .env_remove("MDREC_DATABASE_URL")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&checked.stdout);
    assert!(
        said.contains("x.db-spool (not there, nor its parent: a filesystem not mounted yet?"),
        "{said}"
    );
    let mut child = tokio::process::Command::new(BIN)
        .args(["run", "-c"])
        .arg(&cfg)
        .env_remove("MDREC_DATABASE_URL")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let log = common::Log::follow(&mut child);
    common::wait_for(
        "the spool refused for the missing mount",
        Duration::from_secs(30),
        || async { log.text().contains("cannot spool") },
    )
    .await;
    assert!(
        log.text()
            .contains("its parent is missing too (a filesystem not mounted yet?)"),
        "{}",
        log.text()
    );
    assert!(
        !dir.path().join("notmounted").exists(),
        "nothing created on the filesystem the mount would cover"
    );
    if let Some(pid) = child.id() {
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    sim.shutdown().await;
}

/// A spool is tied to the database its batches were taken for: a start whose URL names
/// another database with batches pending is refused (naming both, and what to do), and
/// `check-config` says so; the batches stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_never_replays_into_another_database() {
    let dir = tempfile::tempdir().unwrap();
    let a = format!("sqlite://{}", dir.path().join("a.db").display());
    let b = format!("sqlite://{}", dir.path().join("b.db").display());
    // a batch spooled while recording into a.db
    let mut spool = mdrec::store::spool::Spool::open(&dir.path().join("spool")).unwrap();
    let owner_a = mdrec::config::database_identity(&a);
    assert_eq!(spool.claim(&owner_a).unwrap(), None);
    let trade = mdrec::model::Event::Trade(mdrec::model::Trade {
        venue: "cdc-v1",
        symbol: "btcusdt".into(),
        trade_id: 7,
        side: mdrec::model::Side::Buy,
        price: mdrec::decimal::Dec::parse("100.5").unwrap(),
        qty: mdrec::decimal::Dec::parse("2").unwrap(),
        quote_qty: None,
        event_time_ms: 1_790_000_000_000,
        recv_time_us: 1_790_000_000_000_000,
        source: mdrec::model::Source::Ws,
    });
    spool
        .append(&mdrec::store::Batch::from_events([trade]))
        .unwrap();

    let cfg = config(dir.path(), &b);
    let out = tokio::process::Command::new(BIN)
        .args(["run", "-c", cfg.to_str().unwrap()])
        .env_remove("MDREC_DATABASE_URL")
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("holds 1 batches for") && err.contains("a.db") && err.contains("spool_dir"),
        "{err}"
    );
    let out = tokio::process::Command::new(BIN)
        .args(["check-config", "--offline", "-c", cfg.to_str().unwrap()])
        .env_remove("MDREC_DATABASE_URL")
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("the spool holds 1 batches for") && text.contains("a.db"),
        "{text}"
    );
    // the batch is still there for a.db
    let spool = mdrec::store::spool::Spool::open(&dir.path().join("spool")).unwrap();
    assert_eq!(spool.files(), 1);
    assert_eq!(
        mdrec::store::spool::Spool::owner_of(spool.dir()).unwrap(),
        Some(owner_a)
    );
}
