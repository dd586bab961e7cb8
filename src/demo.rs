//! `mdrec demo`: the built-in simulator recorded into a local SQLite file, offline.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::sim::{self, Personality, SimConfig};
use crate::store::Store;

/// The recorder configuration the demo uses against a simulator speaking `p`.
pub fn demo_config(
    p: &Personality,
    ws_url: &str,
    rest_url: &str,
    db_url: &str,
) -> Result<Config, crate::config::ConfigError> {
    let symbols: Vec<String> = p.demo_symbols.iter().map(|s| format!("{s:?}")).collect();
    let text = format!(
        r#"
[venue]
kind = "{venue}"
ws_url = "{ws_url}"
rest_url = "{rest_url}"

[database]
url = "{db_url}"

[record]
symbols = [{}]
trades = true
{record}
ticker = true

[metrics]
listen = ""

[writer]
flush_interval_ms = 200
"#,
        symbols.join(", "),
        venue = p.venue,
        record = p.demo_record,
    );
    let cfg = crate::venue::registry::parse_config(&text)?;
    crate::venue::registry::check_config(&cfg)?;
    Ok(cfg)
}

/// Runs the simulator speaking `venue` and the recorder for `seconds` (or until `stop`), then
/// prints a summary.
pub async fn run(
    venue: &str,
    seconds: u64,
    db_path: &Path,
    stop: CancellationToken,
) -> anyhow::Result<String> {
    let Some(sim_cfg) = SimConfig::for_venue(venue) else {
        anyhow::bail!(
            "the simulator does not speak {venue:?}; one of {}",
            sim::venues()
        );
    };
    let p = sim_cfg.personality();
    let symbols: Vec<&str> = p.demo_symbols.to_vec();
    let db_url = format!("sqlite://{}", db_path.display());
    // a file recorded before: the simulated venue goes on from its last trades (ids after
    // them), so a second demo adds to it instead of reusing ids
    let mut last_ids = Vec::new();
    if db_path.exists() {
        let store = Store::open_read(&db_url).await?;
        for &s in &symbols {
            if let Some(t) = store.last_trade(p.venue, s, None).await? {
                last_ids.push((s, t.trade_id));
            }
        }
        store.close().await;
    }
    // simulated time at the wall clock's pace: exchange times are real, receive times come
    // after them (a faster clock would run ahead of ours and make latencies negative)
    let sim = sim::start(SimConfig {
        speed: 1,
        start_halted: true,
        ..sim_cfg
    })
    .await
    .context("starting the simulator")?;
    for (s, id) in last_ids {
        sim.reset_trade_ids(s, id + 1);
    }
    sim.resume();
    let cfg = demo_config(p, &sim.ws_url(), &sim.rest_url(), &db_url)?;
    let token = CancellationToken::new();
    let recorder = tokio::spawn(crate::recorder::run(cfg, token.clone()));
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(seconds)) => {}
        _ = stop.cancelled() => {}
    }
    // the market stops first, so "generated" below is everything the recorder could get
    sim.halt();
    token.cancel();
    let stats = recorder.await.context("recorder task")??;
    let generated: Vec<usize> = symbols.iter().map(|s| sim.trades(s).len()).collect();
    sim.shutdown().await;

    let store = Store::connect(&db_url).await?;
    let mut out = String::new();
    use std::fmt::Write;
    writeln!(
        out,
        "Recorded {seconds} s of the simulator ({}) into {}",
        p.venue,
        db_path.display()
    )?;
    writeln!(out, "\nrows per table:")?;
    for (table, n) in store.table_counts().await? {
        writeln!(out, "  {table:<15} {n:>8}")?;
    }
    writeln!(out, "\nper symbol:")?;
    for (&s, generated) in symbols.iter().zip(generated) {
        let trades = store.load_trades(p.venue, s).await?;
        let first = trades.iter().map(|t| t.event_time_ms).min().unwrap_or(0);
        let last = trades.iter().map(|t| t.event_time_ms).max().unwrap_or(0);
        let frames = stats
            .workers
            .get(s)
            .map(|w| w.frames.load(std::sync::atomic::Ordering::Relaxed))
            .unwrap_or(0);
        writeln!(
            out,
            "  {s:<12} trades stored {:>6} of {generated:>6} generated  exchange time {first}..{last} ms  frames {frames}",
            trades.len()
        )?;
    }
    writeln!(
        out,
        "\n(trades before the first subscription come from REST backfill, source = 'rest')\n"
    )?;
    let symbols: Vec<String> = symbols.iter().map(|s| s.to_string()).collect();
    let cov = crate::coverage::compute(&store, p.venue, &symbols, None, None, None).await?;
    out.push_str(&crate::coverage::render(&cov));
    store.close().await;
    let db = db_path.display();
    let first = symbols.first().cloned().unwrap_or_default();
    writeln!(out, "\nnext, try:")?;
    writeln!(
        out,
        "  sqlite3 {db} \"SELECT symbol, count(*), avg(recv_time_us / 1000 - event_time_ms) AS latency_ms FROM trades WHERE source = 'ws' GROUP BY symbol\""
    )?;
    writeln!(out, "  mdrec coverage --db sqlite://{db} --json")?;
    writeln!(
        out,
        "  mdrec coverage --db sqlite://{db} --html coverage.html   # a timeline per symbol"
    )?;
    writeln!(out, "  mdrec book --db sqlite://{db} --symbol {first}")?;
    writeln!(
        out,
        "  mdrec export --db sqlite://{db} --kind trades --symbol {first} --format parquet --out {first}.parquet"
    )?;
    writeln!(
        out,
        "  mdrec export --db sqlite://{db} --kind book --every 1s --depth 5 --symbol {} --format csv --out books/",
        symbols.join(",")
    )?;
    writeln!(
        out,
        "  mdrec demo --db {db}      # again: it records on into the same file"
    )?;
    Ok(out)
}
