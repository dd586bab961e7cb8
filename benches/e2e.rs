//! End to end under load: the project's simulator (the load generator, in this process) ->
//! the release `mdrec run` (a child process, as in production) -> SQLite or PostgreSQL, for
//! a fixed time after a warm-up.
//!
//! ```text
//! cargo bench --bench e2e -- --venue cdc-exchange --symbols 100 --db sqlite --seconds 20
//! ```
//!
//! Reports frames/s and rows/s per table, the recorder's CPU-seconds per million frames and
//! per million rows (the kernel's per-process accounting: /proc/PID/stat over the measured
//! window, getrusage(RUSAGE_CHILDREN) over the whole run), PostgreSQL's server CPU, the
//! recorder's peak RSS, the writer's queue depth, and frame-to-commit latency (from the
//! recorder's `mdrec_frame_to_commit_seconds` histogram). It says when the load generator,
//! not the recorder, was the limit: the market fell behind its step, or the generator used
//! most of the cores it had.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use mdrec::sim::{self, SimConfig};
use mdrec::stats::{COMMIT_LATENCY_BUCKETS, LatencyCounts};

#[path = "../tests/common/tls.rs"]
mod tls;

#[derive(Parser, Debug)]
#[command(about = "mdrec end-to-end load harness")]
struct Args {
    /// Venue kind the simulator speaks and the recorder records.
    #[arg(long, default_value = "cdc-exchange")]
    venue: String,
    /// Instruments.
    #[arg(long, default_value_t = 100)]
    symbols: usize,
    /// `sqlite` or `postgres` (a fresh database on `--pg`).
    #[arg(long, default_value = "sqlite")]
    db: String,
    /// PostgreSQL server to create the database on.
    #[arg(
        long,
        env = "MDREC_TEST_PG_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pg: String,
    /// Milliseconds between market steps (every market steps: trades, book, bars, ticker).
    #[arg(long, default_value_t = 100)]
    step_ms: u64,
    /// Book depth (exchange: 10 or 50; v2: 10 or 150; v1: step0).
    #[arg(long)]
    depth: Option<String>,
    /// Kline timeframes in the venue's words (default: its 1-minute and 1-hour bars).
    #[arg(long, value_delimiter = ',')]
    klines: Option<Vec<String>>,
    /// Leave the ticker out.
    #[arg(long)]
    no_ticker: bool,
    /// Seconds recorded before measuring.
    #[arg(long, default_value_t = 10)]
    warmup: u64,
    /// Seconds measured.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Extra TOML appended to the recorder's configuration (e.g. `[writer]` keys).
    #[arg(long, default_value = "")]
    extra: String,
    /// The recorder binary to run (default: this build's); a baseline build is measured side
    /// by side this way.
    #[arg(long)]
    recorder: Option<std::path::PathBuf>,
    /// Serve the simulator over TLS (a CA made for the run; the recorder gets it as
    /// `[connection] ca_file`, a peer as SSL_CERT_FILE).
    #[arg(long)]
    tls: bool,
    /// Who records, measured the same way for both (window CPU from /proc, frames the
    /// simulator sent, then the market halted and what was stored compared with the
    /// simulator's ledger): `mdrec`, or `cryptofeed` (benches/cryptofeed_peer.py run by
    /// `--python`; PostgreSQL, cdc-v2). Without it: the recorder's own metrics (mdrec only).
    #[arg(long)]
    peer: Option<String>,
    /// With `--peer`: cut every connection without a close frame this often during the
    /// measured window (a flaky network), so what each recorder loses shows.
    #[arg(long)]
    cut_every: Option<u64>,
    /// The Python with cryptofeed installed (see benches/cryptofeed.sh).
    #[arg(long, default_value = "python3")]
    python: String,
    /// Print one JSON line as well.
    #[arg(long)]
    json: bool,
    /// The archive directory `--extra`'s `[archive] url` names (file://DIR): at the end the
    /// market halts, and every delivered trade must be in the database or the archive, and
    /// in the archive at most once (the soak's check).
    #[arg(long)]
    archive_check: Option<std::path::PathBuf>,
    /// SQLite: keep a copy of the recorded database here (VACUUM INTO), e.g. to time
    /// `mdrec archive` on a real recording.
    #[arg(long)]
    keep_db: Option<std::path::PathBuf>,
    /// Options cargo bench passes on.
    #[arg(long, hide = true)]
    bench: bool,
}

/// CPU seconds a process used, by the kernel's count (utime + stime of every thread).
fn cpu_of(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // fields after the command name, which is in parentheses and may hold spaces
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a constant of the running system
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// CPU seconds of every PostgreSQL server process (postmaster, backends, workers).
fn postgres_cpu() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim_end() == "postgres")
        })
        .filter_map(cpu_of)
        .sum()
}

/// This process's CPU seconds (the load generator).
fn self_cpu() -> f64 {
    cpu_of(std::process::id()).unwrap_or(0.0)
}

/// A `key: N kB` line of /proc/PID/status, in MiB.
fn status_mib(pid: u32, key: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// CPU counters and the generator's output at one instant; a window is two of them.
struct Snap {
    cpu: f64,
    postgres: f64,
    generator: f64,
    frames: f64,
    ticks: u64,
}

impl Snap {
    fn take(pid: u32, sim: &sim::SimHandle) -> Snap {
        Snap {
            cpu: cpu_of(pid).unwrap_or(0.0),
            postgres: postgres_cpu(),
            generator: self_cpu(),
            frames: sim.frames_sent() as f64,
            ticks: sim.ticks(),
        }
    }
}

/// The recorder's counters, as `/metrics` shows them.
#[derive(Debug, Default, Clone)]
struct Scrape {
    rows: BTreeMap<String, f64>,
    frames: f64,
    queue: f64,
    queue_bytes: f64,
    latency: LatencyCounts,
    reconnects: f64,
    spool_files: f64,
}

fn parse_metrics(text: &str) -> Scrape {
    let mut s = Scrape::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        let label = |key: &str| -> Option<String> {
            let start = name.find(&format!("{key}=\""))? + key.len() + 2;
            let end = start + name[start..].find('"')?;
            Some(name[start..end].to_string())
        };
        if name.starts_with("mdrec_rows_written_total{") {
            if let Some(t) = label("table") {
                s.rows.insert(t, v);
            }
        } else if name.starts_with("mdrec_frames_received_total{") {
            s.frames += v;
        } else if name.starts_with("mdrec_reconnects_total{") {
            s.reconnects += v;
        } else if name == "mdrec_queue_depth" {
            s.queue = v;
        } else if name == "mdrec_queue_bytes" {
            s.queue_bytes = v;
        } else if name == "mdrec_spool_files" {
            s.spool_files = v;
        } else if name.starts_with("mdrec_frame_to_commit_seconds_bucket{") {
            let Some(le) = label("le") else { continue };
            let i = if le == "+Inf" {
                COMMIT_LATENCY_BUCKETS.len()
            } else {
                match le.parse::<f64>() {
                    Ok(b) => COMMIT_LATENCY_BUCKETS.partition_point(|x| *x < b),
                    Err(_) => continue,
                }
            };
            // cumulative in the text: kept so, made per bucket below
            s.latency.buckets[i] = v as u64;
        }
    }
    for i in (1..s.latency.buckets.len()).rev() {
        s.latency.buckets[i] = s.latency.buckets[i].saturating_sub(s.latency.buckets[i - 1]);
    }
    s
}

async fn scrape(client: &reqwest::Client, url: &str) -> Option<Scrape> {
    let r = client.get(url).send().await.ok()?;
    Some(parse_metrics(&r.text().await.ok()?))
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn symbols(venue: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| match venue {
            "cdc-v1" => format!("c{i:03}usdt"),
            _ => format!("C{i:03}_USD"),
        })
        .collect()
}

fn config_text(
    args: &Args,
    sim: &sim::SimHandle,
    db_url: &str,
    port: u16,
    ca_file: Option<&std::path::Path>,
) -> String {
    let v1 = args.venue == "cdc-v1";
    let syms: Vec<String> = symbols(&args.venue, args.symbols)
        .iter()
        .map(|s| format!("{s:?}"))
        .collect();
    let klines = args.klines.clone().unwrap_or_else(|| {
        if v1 {
            vec!["1min".into(), "60min".into()]
        } else {
            vec!["1m".into(), "1h".into()]
        }
    });
    let klines: Vec<String> = klines.iter().map(|k| format!("{k:?}")).collect();
    let depth = match (&args.depth, v1) {
        (Some(d), _) if d.parse::<i64>().is_ok() || d == "false" => d.clone(),
        (Some(d), _) => format!("{d:?}"),
        (None, true) => "\"step0\"".into(),
        (None, false) => "50".into(),
    };
    format!(
        "[venue]\nkind = {:?}\nws_url = {:?}\nrest_url = {:?}\n\
         [database]\nurl = {db_url:?}\n\
         [record]\nsymbols = [{}]\ntrades = true\nklines = [{}]\ndepth = {depth}\nticker = {}\n\
         max_time_ahead_s = 86400\n\
         [connection]\nconnect_rate_per_s = 50\n{}\
         [metrics]\nlisten = \"127.0.0.1:{port}\"\n{}\n",
        args.venue,
        sim.ws_url(),
        sim.rest_url(),
        syms.join(", "),
        klines.join(", "),
        !args.no_ticker,
        ca_file
            .map(|p| format!("ca_file = {:?}\n", p.display().to_string()))
            .unwrap_or_default(),
        args.extra,
    )
}

/// Sends SIGTERM and waits for the exit (SIGKILL after 30 s).
fn stop(child: &mut Child) {
    // SAFETY: kill(2) on our own child's pid
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// CPU seconds and peak RSS (MiB) of the children that have exited.
fn children_usage() -> (f64, f64) {
    // SAFETY: getrusage fills the struct it is given
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe {
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut u);
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (
        secs(u.ru_utime) + secs(u.ru_stime),
        u.ru_maxrss as f64 / 1024.0,
    )
}

/// The recorder under test is killed with the harness (a harness stopped by a signal left a
/// recorder running, archiving into the next run's directory).
fn dies_with_harness(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

async fn pg_database(admin: &str) -> anyhow::Result<(String, String)> {
    use sqlx::Connection;
    let name = format!("mdrec_bench_{}", std::process::id());
    let mut c = sqlx::PgConnection::connect(admin).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
        .execute(&mut c)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut c)
        .await?;
    let mut url = url::Url::parse(admin)?;
    url.set_path(&format!("/{name}"));
    Ok((name, url.to_string()))
}

async fn pg_drop(admin: &str, name: &str) {
    use sqlx::Connection;
    if let Ok(mut c) = sqlx::PgConnection::connect(admin).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut c)
            .await;
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // reqwest is built without a TLS provider choice (as in the recorder)
    let _ = rustls::crypto::ring::default_provider().install_default();
    // the generator gets the threads it needs; the recorder is another process
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let step = Duration::from_millis(args.step_ms.max(1));
    let ca = args.tls.then(tls::test_ca);
    let sim = sim::start(SimConfig {
        symbols: symbols(&args.venue, args.symbols),
        step,
        speed: 1,
        tls: ca.as_ref().map(|c| c.server.clone()),
        ..SimConfig::for_venue(&args.venue)
            .ok_or_else(|| anyhow::anyhow!("--venue: the simulator does not speak it"))?
    })
    .await?;
    let dir = tempfile::tempdir()?;
    let ca_path = match &ca {
        Some(ca) => {
            let p = dir.path().join("ca.pem");
            std::fs::write(&p, &ca.ca_pem)?;
            Some(p)
        }
        None => None,
    };
    let (db_url, pg_name) = match args.db.as_str() {
        "sqlite" => (
            format!("sqlite://{}", dir.path().join("bench.db").display()),
            None,
        ),
        "postgres" => {
            let (name, url) = pg_database(&args.pg).await?;
            (url, Some(name))
        }
        other => anyhow::bail!("--db: sqlite or postgres, not {other:?}"),
    };
    let port = free_port()?;
    let log = std::fs::File::create(dir.path().join("recorder.log"))?;
    let mut child = match args.peer.as_deref() {
        None | Some("mdrec") => {
            let cfg_path = dir.path().join("bench.toml");
            let text = config_text(&args, &sim, &db_url, port, ca_path.as_deref());
            std::fs::write(&cfg_path, text)?;
            let bin = args
                .recorder
                .clone()
                .unwrap_or_else(|| env!("CARGO_BIN_EXE_mdrec").into());
            dies_with_harness(
                Command::new(bin)
                    .args(["run", "-c"])
                    .arg(&cfg_path)
                    .env_remove("MDREC_DATABASE_URL")
                    .env("RUST_LOG", "warn")
                    .stdout(Stdio::null())
                    .stderr(log),
            )
            .spawn()?
        }
        Some("cryptofeed") => {
            anyhow::ensure!(
                args.venue == "cdc-v2" && pg_name.is_some(),
                "--peer cryptofeed: its Crypto.com feed speaks cdc-v2, into --db postgres"
            );
            dies_with_harness(
                cryptofeed(&args, &sim, &db_url, ca_path.as_deref())?
                    .stdout(Stdio::null())
                    .stderr(log),
            )
            .spawn()?
        }
        Some(other) => anyhow::bail!("--peer: mdrec or cryptofeed, not {other:?}"),
    };
    let pid = child.id();
    let result = match &args.peer {
        None => {
            let client = reqwest::Client::new();
            let metrics = format!("http://127.0.0.1:{port}/metrics");
            let m = measure(&args, &sim, &client, &metrics, pid).await;
            if m.is_ok() && args.archive_check.is_some() {
                // what was delivered lands (and the last due periods are archived)
                sim.halt();
                drained(&client, &metrics).await;
            }
            m.map(Outcome::Metrics)
        }
        Some(_) => {
            let url = db_url.clone();
            let r = measure_peer(&args, &sim, &mut child, &url).await;
            match r {
                Ok(w) => {
                    // the market stops; what each recorder got is given time to land
                    sim.halt();
                    settle(&url).await;
                    Ok(Outcome::Peer(w))
                }
                Err(e) => Err(e),
            }
        }
    };
    stop(&mut child);
    let (run_cpu, peak_rss) = children_usage();
    // mdrec's tables (a peer's are its own: none found, nothing reported)
    let storage = match result {
        Ok(_) => storage(&db_url).await.ok(),
        Err(_) => None,
    };
    let stored = match (&result, &pg_name) {
        (Ok(Outcome::Peer(_)), Some(_)) => Some(stored_tally(&db_url).await?),
        _ => None,
    };
    // the trades the database holds, for --archive-check (before a PostgreSQL one is dropped)
    let db_trades = match (&args.archive_check, &result) {
        (Some(_), Ok(_)) => Some(trade_keys(&db_url).await?),
        _ => None,
    };
    if let Some(name) = &pg_name {
        pg_drop(&args.pg, name).await;
    }
    if let (Some(to), true) = (&args.keep_db, db_url.starts_with("sqlite")) {
        use sqlx::Connection;
        let mut c = sqlx::SqliteConnection::connect(&db_url).await?;
        sqlx::query("VACUUM INTO ?1")
            .bind(to.display().to_string())
            .execute(&mut c)
            .await?;
        eprintln!("kept the database as {}", to.display());
    }
    let m = match result {
        Ok(m) => m,
        Err(e) => {
            let log = std::fs::read_to_string(dir.path().join("recorder.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            anyhow::bail!(
                "{e}\nrecorder log (last lines):\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    };
    match m {
        Outcome::Metrics(m) => report(&args, &m, run_cpu, peak_rss),
        Outcome::Peer(w) => {
            let stored = stored.ok_or_else(|| anyhow::anyhow!("--peer needs --db postgres"))?;
            report_peer(&args, &sim, &w, &stored, peak_rss);
        }
    }
    if let Some(st) = storage {
        report_storage(&st);
    }
    if let (Some(dir), Some(in_db)) = (&args.archive_check, db_trades) {
        archive_check(&args, &sim, in_db, dir)?;
    }
    sim.shutdown().await;
    Ok(())
}

/// (symbol, trade id) of every stored trade.
async fn trade_keys(db_url: &str) -> anyhow::Result<std::collections::BTreeSet<(String, i64)>> {
    use sqlx::Connection;
    let sql = "SELECT symbol, trade_id FROM trades";
    let rows: Vec<(String, i64)> = if db_url.starts_with("sqlite") {
        let mut c = sqlx::SqliteConnection::connect(db_url).await?;
        sqlx::query_as(sql).fetch_all(&mut c).await?
    } else {
        let mut c = sqlx::PgConnection::connect(db_url).await?;
        sqlx::query_as(sql).fetch_all(&mut c).await?
    };
    Ok(rows.into_iter().collect())
}

/// Every delivered trade in the database or the archive, none twice in the archive.
fn archive_check(
    args: &Args,
    sim: &sim::SimHandle,
    in_db: std::collections::BTreeSet<(String, i64)>,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    use std::collections::BTreeSet;
    let (mut in_archive, mut twice, mut files) = (BTreeSet::new(), 0usize, 0usize);
    for f in walk(&dir.join("trades"))? {
        files += 1;
        let symbol = f
            .components()
            .filter_map(|c| c.as_os_str().to_str())
            .find_map(|c| c.strip_prefix("symbol="))
            .map(percent_decoded)
            .unwrap_or_default();
        let bytes = bytes::Bytes::from(std::fs::read(&f)?);
        let r = parquet::file::reader::SerializedFileReader::new(bytes)?;
        for row in parquet::file::reader::FileReader::get_row_iter(&r, None)? {
            let row = row?;
            let id = parquet::record::RowAccessor::get_long(&row, 0)?;
            if !in_archive.insert((symbol.clone(), id)) {
                twice += 1;
            }
        }
    }
    let (mut delivered, mut lost, mut db_only) = (0usize, 0usize, 0usize);
    for s in symbols(&args.venue, args.symbols) {
        for id in sim.delivered(&s) {
            delivered += 1;
            let key = (s.clone(), id);
            match (in_archive.contains(&key), in_db.contains(&key)) {
                (false, false) => lost += 1,
                (false, true) => db_only += 1,
                _ => {}
            }
        }
    }
    println!(
        "archive check: {delivered} trades delivered; {} in the archive ({files} files), \
         {db_only} only in the database, {} in the database in all; {lost} lost; {twice} in the \
         archive twice",
        in_archive.len(),
        in_db.len()
    );
    Ok(())
}

fn walk(dir: &std::path::Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(out);
    };
    for e in entries {
        let p = e?.path();
        if p.is_dir() {
            out.extend(walk(&p)?);
        } else if p.extension().is_some_and(|x| x == "parquet") {
            out.push(p);
        }
    }
    Ok(out)
}

fn percent_decoded(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The market-data tables whose size per row the storage report gives: name, how its rows
/// are counted, and the tables holding them (book changes: one row per level change, stored
/// packed one row per frame in `book_updates` with their stream numbers).
const DATA_TABLES: [(&str, &str, &[&str]); 6] = [
    ("trades", "SELECT count(*) FROM trades", &["trades"]),
    ("klines", "SELECT count(*) FROM klines", &["klines"]),
    (
        "book_snapshots",
        "SELECT count(*) FROM book_snapshots",
        &["book_snapshots"],
    ),
    (
        "book_deltas",
        "SELECT CAST(COALESCE(SUM(LENGTH(levels) - LENGTH(REPLACE(levels, ';', '')) + 1), 0) \
         AS BIGINT) FROM book_updates",
        &["book_updates", "book_streams"],
    ),
    (
        "(book frames)",
        "SELECT count(*) FROM book_updates",
        &["book_updates", "book_streams"],
    ),
    ("tickers", "SELECT count(*) FROM tickers", &["tickers"]),
];

/// Per market-data table: rows, and bytes on disk of the table with its indexes (SQLite's
/// `dbstat` pages; PostgreSQL's `pg_total_relation_size` of every partition, TOAST included).
async fn storage(db_url: &str) -> anyhow::Result<Vec<(&'static str, i64, i64)>> {
    use sqlx::Connection;
    let mut out = Vec::new();
    if db_url.starts_with("sqlite") {
        let mut c = sqlx::SqliteConnection::connect(db_url).await?;
        for (name, count, tables) in DATA_TABLES {
            let rows: i64 = sqlx::query_scalar(count).fetch_one(&mut c).await?;
            let mut bytes = 0;
            for t in tables {
                let b: Option<i64> = sqlx::query_scalar(
                    "SELECT SUM(d.pgsize) FROM dbstat d JOIN sqlite_master m ON m.name = d.name \
                     WHERE m.tbl_name = ?1",
                )
                .bind(t)
                .fetch_one(&mut c)
                .await?;
                bytes += b.unwrap_or(0);
            }
            out.push((name, rows, bytes));
        }
    } else {
        let mut c = sqlx::PgConnection::connect(db_url).await?;
        for (name, count, tables) in DATA_TABLES {
            let rows: i64 = sqlx::query_scalar(count).fetch_one(&mut c).await?;
            let mut bytes = 0;
            for t in tables {
                // a partitioned table's own size is 0: its partitions' sizes summed
                let b: i64 = sqlx::query_scalar(
                    "SELECT COALESCE((SELECT SUM(pg_total_relation_size(relid)) \
                     FROM pg_partition_tree($1::regclass)), pg_total_relation_size($1::regclass))::bigint",
                )
                .bind(t)
                .fetch_one(&mut c)
                .await?;
                bytes += b;
            }
            out.push((name, rows, bytes));
        }
    }
    Ok(out)
}

fn report_storage(st: &[(&'static str, i64, i64)]) {
    println!("storage (table with its indexes):");
    println!(
        "  {:<15} {:>10} {:>12} {:>9}",
        "table", "rows", "bytes", "B/row"
    );
    for (t, rows, bytes) in st {
        let per = if *rows > 0 {
            format!("{:.0}", *bytes as f64 / *rows as f64)
        } else {
            "-".into()
        };
        println!("  {t:<15} {rows:>10} {bytes:>12} {per:>9}");
    }
}

/// The cryptofeed process: benches/cryptofeed_peer.py on the simulator's URLs and the fresh
/// database, trusting the run's CA.
fn cryptofeed(
    args: &Args,
    sim: &sim::SimHandle,
    db_url: &str,
    ca: Option<&std::path::Path>,
) -> anyhow::Result<Command> {
    let db = url::Url::parse(db_url)?;
    let rest = url::Url::parse(&sim.rest_url())?;
    let rest_base = format!(
        "{}://{}:{}",
        rest.scheme(),
        rest.host_str().unwrap_or("127.0.0.1"),
        rest.port_or_known_default().unwrap_or(443)
    );
    let mut cmd = Command::new(&args.python);
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/benches/cryptofeed_peer.py"
    ))
    .args(["--ws", &sim.ws_url(), "--rest", &rest_base])
    .args(["--symbols", &symbols(&args.venue, args.symbols).join(",")])
    .args(["--pg-host", db.host_str().unwrap_or("127.0.0.1")])
    .args(["--pg-port", &db.port().unwrap_or(5432).to_string()])
    .args(["--pg-user", db.username()])
    .args(["--pg-db", db.path().trim_start_matches('/')]);
    if let Some(ca) = ca {
        // websockets (Python's ssl) and requests (cryptofeed's symbol listing) read these
        cmd.env("SSL_CERT_FILE", ca).env("REQUESTS_CA_BUNDLE", ca);
    }
    Ok(cmd)
}

enum Outcome {
    Metrics(Measured),
    Peer(Window),
}

/// One recorder's window, measured from outside (no metrics of its own needed).
struct Window {
    secs: f64,
    frames_sent: f64,
    cpu: f64,
    postgres_cpu: f64,
    generator_cpu: f64,
    rss_mib: f64,
    ticks: u64,
    expected_ticks: f64,
    /// Connection cuts made in the window.
    cuts: u32,
}

/// Channels a recorder subscribes per symbol: cryptofeed's four (trade, book, one candle
/// interval, ticker), or what the recorder's configuration asks for.
fn channels_per_symbol(args: &Args) -> usize {
    if args.peer.as_deref() == Some("cryptofeed") {
        return 4;
    }
    let klines = args.klines.as_ref().map_or(2, |k| k.len());
    let depth = usize::from(args.depth.as_deref() != Some("false"));
    1 + depth + klines + usize::from(!args.no_ticker)
}

async fn measure_peer(
    args: &Args,
    sim: &sim::SimHandle,
    child: &mut Child,
    db_url: &str,
) -> anyhow::Result<Window> {
    let pid = child.id();
    let want = channels_per_symbol(args) * args.symbols;
    let up = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            anyhow::bail!("the recorder exited ({status}) before recording");
        }
        let subscribed = sim.state().subscriptions;
        if subscribed >= want && trades_stored(db_url).await.unwrap_or(0) > 0 {
            break;
        }
        if up.elapsed() > Duration::from_secs(120) {
            anyhow::bail!("after 120 s: {subscribed} of {want} channels subscribed");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    let t0 = Instant::now();
    let a = Snap::take(pid, sim);
    let end = t0 + Duration::from_secs(args.seconds);
    let mut cuts = 0;
    if let Some(every) = args.cut_every.filter(|s| *s > 0) {
        while Instant::now() + Duration::from_secs(every) < end {
            tokio::time::sleep(Duration::from_secs(every)).await;
            sim.cut_connections();
            cuts += 1;
        }
    }
    tokio::time::sleep_until(end.into()).await;
    let secs = t0.elapsed().as_secs_f64();
    let b = Snap::take(pid, sim);
    Ok(Window {
        secs,
        frames_sent: b.frames - a.frames,
        cpu: b.cpu - a.cpu,
        postgres_cpu: b.postgres - a.postgres,
        generator_cpu: b.generator - a.generator,
        rss_mib: status_mib(pid, "VmRSS:").unwrap_or(0.0),
        ticks: b.ticks - a.ticks,
        expected_ticks: secs * 1000.0 / args.step_ms.max(1) as f64,
        cuts,
    })
}

async fn trades_stored(db_url: &str) -> anyhow::Result<i64> {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(db_url).await?;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM trades")
        .fetch_one(&mut c)
        .await?;
    Ok(n)
}

/// Waits until the stored trade count has not moved for 2 s (at most 30 s): the recorder
/// wrote what it was going to.
/// Waits (up to five minutes) until the recorder's queue and spool are empty on two scrapes
/// a second apart: everything delivered is in the database.
async fn drained(client: &reqwest::Client, metrics: &str) {
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut empty = 0;
    while Instant::now() < deadline && empty < 2 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        match scrape(client, metrics).await {
            Some(s) if s.queue == 0.0 && s.spool_files == 0.0 => empty += 1,
            _ => empty = 0,
        }
    }
    if empty < 2 {
        eprintln!("the recorder's queue or spool was not empty after five minutes");
    }
}

async fn settle(db_url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut last, mut still) = (-1, 0);
    while Instant::now() < deadline && still < 4 {
        let n = trades_stored(db_url).await.unwrap_or(-1);
        if n == last {
            still += 1;
        } else {
            (last, still) = (n, 0);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What a recorder stored: trade keys (symbol in the exchange's spelling, id) with their
/// row count, and rows per table.
struct Stored {
    trades: std::collections::BTreeSet<(String, i64)>,
    trade_rows: usize,
    tables: BTreeMap<String, i64>,
}

async fn stored_tally(db_url: &str) -> anyhow::Result<Stored> {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(db_url).await?;
    // both layouts have trades(symbol, trade_id); cryptofeed spells symbols BASE-QUOTE
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT symbol, trade_id::text FROM trades")
        .fetch_all(&mut c)
        .await?;
    let trade_rows = rows.len();
    let trades = rows
        .into_iter()
        .filter_map(|(s, id)| Some((s.replace('-', "_"), id.parse().ok()?)))
        .collect();
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE' AND table_name NOT LIKE '\\_%' ORDER BY 1",
    )
    .fetch_all(&mut c)
    .await?;
    let mut tables = BTreeMap::new();
    for t in names {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM \"{t}\""))
            .fetch_one(&mut c)
            .await?;
        if n > 0 {
            tables.insert(t, n);
        }
    }
    Ok(Stored {
        trades,
        trade_rows,
        tables,
    })
}

fn report_peer(args: &Args, sim: &sim::SimHandle, w: &Window, st: &Stored, peak_rss: f64) {
    // the ledger from each symbol's first delivered trade to the halt: what the venue
    // published while the recorder was there, delivered to it or not (cuts)
    let (mut published, mut delivered, mut lost) = (0usize, 0usize, 0usize);
    for s in symbols(&args.venue, args.symbols) {
        let d = sim.delivered(&s);
        delivered += d.len();
        let Some(first) = d.first().copied() else {
            continue;
        };
        for t in sim.trades(&s).iter().filter(|t| t.id >= first) {
            published += 1;
            if !st.trades.contains(&(s.clone(), t.id)) {
                lost += 1;
            }
        }
    }
    let duplicated = st.trade_rows - st.trades.len();
    let per_m = if w.frames_sent > 0.0 {
        w.cpu / w.frames_sent * 1e6
    } else {
        f64::NAN
    };
    let gen_busy = w.generator_cpu / w.secs;
    let limited = (w.ticks as f64) < 0.95 * w.expected_ticks || gen_busy > 1.6;
    let peer = args.peer.as_deref().unwrap_or("mdrec");
    let tables: Vec<String> = st.tables.iter().map(|(t, n)| format!("{t} {n}")).collect();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "\n{peer}: {} symbols, {}{}, {} ms steps, {:.0} s measured after {} s warm-up{}",
        args.symbols,
        args.venue,
        if args.tls { " over TLS" } else { "" },
        args.step_ms,
        w.secs,
        args.warmup,
        if w.cuts > 0 {
            format!(", every connection cut {} times", w.cuts)
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        out,
        "| recorder | messages/s | CPU s / M messages | messages / CPU s | cores | PG cores | RSS MiB (peak) | trades published | delivered | lost | duplicated | generator |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    let _ = writeln!(
        out,
        "| {peer} | {:.0} | {:.1} | {:.0} | {:.3} | {:.3} | {:.0} ({:.0}) | {published} | {delivered} | {lost} | {duplicated} | {} |",
        w.frames_sent / w.secs,
        per_m,
        if w.cpu > 0.0 {
            w.frames_sent / w.cpu
        } else {
            f64::NAN
        },
        w.cpu / w.secs,
        w.postgres_cpu / w.secs,
        w.rss_mib,
        peak_rss,
        if limited {
            format!("LIMIT ({gen_busy:.2} cores)")
        } else {
            format!("ok ({gen_busy:.2} cores)")
        },
    );
    let _ = writeln!(out, "rows stored (whole run): {}", tables.join(", "));
    if args.json {
        let _ = writeln!(
            out,
            "{}",
            serde_json::json!({
                "peer": peer, "symbols": args.symbols, "venue": args.venue, "tls": args.tls,
                "seconds": w.secs, "messages_per_s": w.frames_sent / w.secs,
                "cpu_s_per_m_messages": per_m, "cores": w.cpu / w.secs,
                "postgres_cores": w.postgres_cpu / w.secs, "rss_mib": w.rss_mib,
                "trades_published": published, "trades_delivered": delivered, "trades_lost": lost,
                "cuts": w.cuts, "trades_duplicated": duplicated,
                "tables": st.tables, "generator_limited": limited,
            })
        );
    }
}

struct Measured {
    secs: f64,
    frames_sent: f64,
    frames_read: f64,
    rows: BTreeMap<String, f64>,
    recorder_cpu: f64,
    postgres_cpu: f64,
    generator_cpu: f64,
    max_queue: f64,
    queue_bytes: f64,
    rss_mib: f64,
    latency: LatencyCounts,
    ticks: u64,
    expected_ticks: f64,
    reconnects: f64,
}

async fn measure(
    args: &Args,
    sim: &sim::SimHandle,
    client: &reqwest::Client,
    metrics: &str,
    pid: u32,
) -> anyhow::Result<Measured> {
    // up and recording: its counters answer and frames arrive
    let up = Instant::now();
    loop {
        if let Some(s) = scrape(client, metrics).await
            && s.frames > 0.0
            && s.rows.get("trades").copied().unwrap_or(0.0) > 0.0
        {
            break;
        }
        if up.elapsed() > Duration::from_secs(120) {
            anyhow::bail!("the recorder did not start recording within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    let t0 = Instant::now();
    let s0 = scrape(client, metrics)
        .await
        .ok_or_else(|| anyhow::anyhow!("metrics unreadable"))?;
    let a = Snap::take(pid, sim);
    // the measured window: the queue read every 5 s (a scrape costs the recorder a little)
    let mut max_queue = s0.queue;
    // the queue's bytes when it was deepest: memory per queued event
    let mut queue_bytes = s0.queue_bytes;
    let end = t0 + Duration::from_secs(args.seconds);
    while Instant::now() + Duration::from_secs(5) < end {
        tokio::time::sleep(Duration::from_secs(5)).await;
        if let Some(s) = scrape(client, metrics).await
            && s.queue > max_queue
        {
            (max_queue, queue_bytes) = (s.queue, s.queue_bytes);
        }
    }
    tokio::time::sleep_until(end.into()).await;
    let secs = t0.elapsed().as_secs_f64();
    let b = Snap::take(pid, sim);
    let rss_mib = status_mib(pid, "VmRSS:").unwrap_or(0.0);
    let s1 = scrape(client, metrics)
        .await
        .ok_or_else(|| anyhow::anyhow!("metrics unreadable"))?;
    if s1.queue > max_queue {
        (max_queue, queue_bytes) = (s1.queue, s1.queue_bytes);
    }
    let rows = s1
        .rows
        .iter()
        .map(|(t, v)| (t.clone(), v - s0.rows.get(t).copied().unwrap_or(0.0)))
        .collect();
    Ok(Measured {
        secs,
        frames_sent: b.frames - a.frames,
        frames_read: s1.frames - s0.frames,
        rows,
        recorder_cpu: b.cpu - a.cpu,
        postgres_cpu: b.postgres - a.postgres,
        generator_cpu: b.generator - a.generator,
        max_queue,
        queue_bytes,
        rss_mib,
        latency: s1.latency.since(&s0.latency),
        ticks: b.ticks - a.ticks,
        expected_ticks: secs * 1000.0 / args.step_ms.max(1) as f64,
        reconnects: s1.reconnects - s0.reconnects,
    })
}

fn fmt_s(q: Option<f64>) -> String {
    match q {
        None => "-".into(),
        Some(v) if v.is_infinite() => format!(
            "> {} s",
            COMMIT_LATENCY_BUCKETS[COMMIT_LATENCY_BUCKETS.len() - 1]
        ),
        Some(v) => format!("<= {:.0} ms", v * 1000.0),
    }
}

fn report(args: &Args, m: &Measured, run_cpu: f64, peak_rss: f64) {
    let rows: f64 = m
        .rows
        .iter()
        .filter(|(t, _)| !matches!(t.as_str(), "sessions" | "gaps" | "markets"))
        .map(|(_, v)| v)
        .sum();
    let per_s = |v: f64| v / m.secs;
    let per_m = |cpu: f64, n: f64| if n > 0.0 { cpu / n * 1e6 } else { f64::NAN };
    let behind = (m.ticks as f64) < 0.95 * m.expected_ticks;
    // the generator had two threads; most of both busy means it set the pace
    let gen_busy = m.generator_cpu / m.secs;
    let generator_limited = behind || gen_busy > 1.6;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "\n{} symbols, {}, {} ms steps, {:.0} s measured after {} s warm-up, recorder {}",
        args.symbols,
        args.venue,
        args.step_ms,
        m.secs,
        args.warmup,
        args.recorder
            .as_ref()
            .map_or("(this build)".into(), |p| p.display().to_string())
    );
    let _ = writeln!(
        out,
        "| symbols | DB | frames/s sent | frames/s read | rows/s | recorder CPU s / M frames | / M rows | recorder cores | PG cores | RSS MiB (peak) | queue max | frame-to-commit p50 / p99 | generator |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let _ = writeln!(
        out,
        "| {} | {} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {:.2} | {:.2} | {:.0} ({:.0}) | {:.0} | {} / {} | {} |",
        args.symbols,
        args.db,
        per_s(m.frames_sent),
        per_s(m.frames_read),
        per_s(rows),
        per_m(m.recorder_cpu, m.frames_sent),
        per_m(m.recorder_cpu, rows),
        m.recorder_cpu / m.secs,
        m.postgres_cpu / m.secs,
        m.rss_mib,
        peak_rss,
        m.max_queue,
        fmt_s(m.latency.quantile(0.5)),
        fmt_s(m.latency.quantile(0.99)),
        if generator_limited {
            format!(
                "LIMIT ({:.2} cores, {:.0}% of steps)",
                gen_busy,
                100.0 * m.ticks as f64 / m.expected_ticks
            )
        } else {
            format!("ok ({gen_busy:.2} cores)")
        },
    );
    let by_table: Vec<String> = m
        .rows
        .iter()
        .filter(|(_, v)| **v > 0.0)
        .map(|(t, v)| format!("{t} {:.0}/s", per_s(*v)))
        .collect();
    let _ = writeln!(out, "rows by table: {}", by_table.join(", "));
    let _ = writeln!(
        out,
        "whole run (getrusage of the exited recorder): {run_cpu:.1} CPU-s, peak RSS {peak_rss:.0} MiB; reconnects in the window: {}",
        m.reconnects
    );
    if m.max_queue > 0.0 {
        let _ = writeln!(
            out,
            "queue at its deepest: {:.0} events, {:.1} MiB ({:.0} bytes an event)",
            m.max_queue,
            m.queue_bytes / (1 << 20) as f64,
            m.queue_bytes / m.max_queue
        );
    }
    if generator_limited {
        let _ = writeln!(
            out,
            "the load generator was the limit here: the figures say what it offered, not what the recorder can take"
        );
    }
    if args.json {
        let _ = writeln!(
            out,
            "{}",
            serde_json::json!({
                "symbols": args.symbols, "db": args.db, "venue": args.venue, "seconds": m.secs,
                "frames_sent_per_s": per_s(m.frames_sent), "frames_read_per_s": per_s(m.frames_read),
                "rows_per_s": per_s(rows),
                "rows": m.rows,
                "recorder_cpu_s_per_m_frames": per_m(m.recorder_cpu, m.frames_sent),
                "recorder_cpu_s_per_m_rows": per_m(m.recorder_cpu, rows),
                "recorder_cores": m.recorder_cpu / m.secs, "postgres_cores": m.postgres_cpu / m.secs,
                "rss_mib": m.rss_mib, "peak_rss_mib": peak_rss, "queue_max": m.max_queue,
                "queue_bytes_at_max": m.queue_bytes,
                "p50_s": m.latency.quantile(0.5), "p99_s": m.latency.quantile(0.99),
                "generator_cores": gen_busy, "generator_limited": generator_limited,
            })
        );
    }
}
