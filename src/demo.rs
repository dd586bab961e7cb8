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

/// Waits, up to a few seconds, until the newest trade stored of each symbol is the last one
/// the halted simulator published and no hole is still being checked.
async fn settle(db_url: &str, venue: &'static str, sim: &sim::SimHandle, symbols: &[&str]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let Ok(store) = Store::open_read(db_url).await else {
        return;
    };
    loop {
        let mut behind = false;
        for &s in symbols {
            let Some(want) = sim.trades(s).last().map(|t| t.id) else {
                continue;
            };
            let have = store.last_trade(venue, s, None).await.ok().flatten();
            behind |= have.is_none_or(|m| m.trade_id != want);
        }
        // and the holes the start-up found are checked (their trades fetched)
        let open = store
            .load_gaps(venue, None)
            .await
            .map(|g| g.iter().any(|g| g.status == crate::model::GapStatus::Open))
            .unwrap_or(false);
        if !(behind || open) || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    store.close().await;
}

/// The last trade recorded of `symbol`, whole.
async fn last_trade(
    store: &Store,
    venue: &str,
    symbol: &str,
) -> anyhow::Result<Option<crate::model::Trade>> {
    let Some(m) = store.last_trade(venue, symbol, None).await? else {
        return Ok(None);
    };
    let range = crate::store::Range {
        from_ms: m.time_ms,
        to_ms: m.time_ms.saturating_add(1),
        after: (i64::MIN, i64::MIN),
        limit: i64::MAX,
    };
    let page = store.trades_page(venue, symbol, &range).await?;
    Ok(page.into_iter().find(|t| t.trade_id == m.trade_id))
}

/// The newest bar recorded of `symbol` and `interval`, whole.
async fn last_bar(
    store: &Store,
    venue: &str,
    symbol: &str,
    interval: &str,
) -> anyhow::Result<Option<crate::model::Kline>> {
    let Some((open_ms, _)) = store.last_bar(venue, symbol, interval).await? else {
        return Ok(None);
    };
    let range = crate::store::Range {
        from_ms: open_ms,
        to_ms: open_ms.saturating_add(1),
        after: (i64::MIN, i64::MIN),
        limit: 1,
    };
    Ok(store
        .klines_page(venue, symbol, interval, &range)
        .await?
        .into_iter()
        .next())
}

fn decimal(d: &crate::decimal::Dec, what: &str) -> anyhow::Result<rust_decimal::Decimal> {
    d.as_str()
        .parse()
        .with_context(|| format!("{what} of the file: {d:?}"))
}

/// A recorded bar as the simulator's own.
fn sim_bar(k: &crate::model::Kline) -> anyhow::Result<sim::market::Bar> {
    let what = format!("bar {} {}", k.interval, k.open_time_ms);
    Ok(sim::market::Bar {
        open_time_ms: k.open_time_ms,
        open: decimal(&k.open, &what)?,
        high: decimal(&k.high, &what)?,
        low: decimal(&k.low, &what)?,
        close: decimal(&k.close, &what)?,
        volume: decimal(&k.volume, &what)?,
        amount: match &k.quote_volume {
            Some(q) => decimal(q, &what)?,
            None => rust_decimal::Decimal::ZERO,
        },
    })
}

/// A recorded trade as the simulator's own.
fn sim_trade(t: &crate::model::Trade) -> anyhow::Result<sim::market::SimTrade> {
    let what = format!("trade {}", t.trade_id);
    let (price, qty) = (decimal(&t.price, &what)?, decimal(&t.qty, &what)?);
    Ok(sim::market::SimTrade {
        id: t.trade_id,
        side: t.side,
        price,
        qty,
        amount: price * qty,
        time_ms: t.event_time_ms,
    })
}

/// One symbol's trades of a demo run: where the stored came from, and of the generated not
/// stored, how many were older than anything the recorder could reach and how many newer.
#[derive(Debug, Default, PartialEq)]
struct Tally {
    socket: usize,
    rest: usize,
    earlier: usize,
    missed: usize,
}

impl Tally {
    fn of(generated: &[i64], stored: &[crate::model::Trade]) -> Tally {
        let mut t = Tally::default();
        for s in stored {
            match s.source {
                crate::model::Source::Ws => t.socket += 1,
                crate::model::Source::Rest => t.rest += 1,
            }
        }
        let ids: std::collections::HashSet<i64> = stored.iter().map(|s| s.trade_id).collect();
        let oldest = ids.iter().min().copied();
        for id in generated.iter().filter(|id| !ids.contains(id)) {
            if oldest.is_none_or(|o| *id < o) {
                t.earlier += 1;
            } else {
                t.missed += 1;
            }
        }
        t
    }
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
    let before = if db_path.exists() {
        Recorded::read(&db_url, p, &symbols).await?
    } else {
        Recorded::default()
    };
    // simulated time at the wall clock's pace: exchange times are real, receive times come
    // after them (a faster clock would run ahead of ours and make latencies negative)
    let sim = sim::start(SimConfig {
        speed: 1,
        start_halted: true,
        ..sim_cfg
    })
    .await
    .context("starting the simulator")?;
    before.continue_in(&sim)?;
    sim.resume();
    let cfg = demo_config(p, &sim.ws_url(), &sim.rest_url(), &db_url)?;
    let token = CancellationToken::new();
    let recorder = tokio::spawn(crate::recorder::run(cfg, token.clone()));
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(seconds)) => {}
        _ = stop.cancelled() => {}
    }
    // the market stops first, so "generated" below is everything the recorder could get,
    // and the recorder stops once it has stored what was on its way (or after a while)
    sim.halt();
    if !stop.is_cancelled() {
        settle(&db_url, p.venue, &sim, &symbols).await;
    }
    token.cancel();
    recorder.await.context("recorder task")??;
    let generated: Vec<Vec<i64>> = symbols
        .iter()
        .map(|s| sim.trades(s).iter().map(|t| t.id).collect())
        .collect();
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
    trade_table(&mut out, &store, p.venue, &symbols, &generated, &before).await?;
    let symbols: Vec<String> = symbols.iter().map(|s| s.to_string()).collect();
    let cov = crate::coverage::compute(&store, p.venue, &symbols, None, None, None).await?;
    out.push_str(&crate::coverage::render(&cov));
    store.close().await;
    next_commands(&mut out, db_path, &symbols)?;
    Ok(out)
}

/// What a file recorded before holds of each symbol: its last trade and newest bars.
#[derive(Default)]
struct Recorded {
    trades: Vec<(String, crate::model::Trade)>,
    bars: Vec<(String, crate::model::Kline)>,
}

impl Recorded {
    async fn read(db_url: &str, p: &Personality, symbols: &[&str]) -> anyhow::Result<Recorded> {
        let mut r = Recorded::default();
        let store = Store::open_read(db_url).await?;
        for &s in symbols {
            if let Some(t) = last_trade(&store, p.venue, s).await? {
                r.trades.push((s.to_string(), t));
            }
            for &(iv, _) in p.intervals {
                if let Some(k) = last_bar(&store, p.venue, s, iv).await? {
                    r.bars.push((s.to_string(), k));
                }
            }
        }
        store.close().await;
        Ok(r)
    }

    /// The simulated venue goes on from the file (its history holds the last trade and the
    /// newest bars, ids follow on), so a second demo records on: no id reused, and the
    /// recorder's start-up hole is filled like any restart's.
    fn continue_in(&self, sim: &sim::SimHandle) -> anyhow::Result<()> {
        for (s, t) in &self.trades {
            sim.continue_after(s, sim_trade(t)?);
        }
        for (s, k) in &self.bars {
            sim.continue_bar(s, &k.interval, sim_bar(k)?);
        }
        Ok(())
    }
}

/// This run's trades per symbol: generated, stored, by source, and those older than the
/// recorder could reach; a line for any published later and not stored.
async fn trade_table(
    out: &mut String,
    store: &Store,
    venue: &str,
    symbols: &[&str],
    generated: &[Vec<i64>],
    before: &Recorded,
) -> anyhow::Result<()> {
    use std::fmt::Write;
    writeln!(
        out,
        "\ntrades of this run:\n  {:<12} {:>9} {:>7} {:>7} {:>5} {:>7}",
        "symbol", "generated", "stored", "socket", "REST", "earlier"
    )?;
    let mut notes = Vec::new();
    for (&s, generated) in symbols.iter().zip(generated) {
        let after = before
            .trades
            .iter()
            .find(|(l, _)| l == s)
            .map(|(_, t)| t.trade_id);
        let generated: Vec<i64> = generated
            .iter()
            .copied()
            .filter(|id| after.is_none_or(|a| *id > a))
            .collect();
        let stored: Vec<_> = store
            .load_trades(venue, s)
            .await?
            .into_iter()
            .filter(|t| after.is_none_or(|a| t.trade_id > a))
            .collect();
        let n = Tally::of(&generated, &stored);
        writeln!(
            out,
            "  {s:<12} {:>9} {:>7} {:>7} {:>5} {:>7}",
            generated.len(),
            stored.len(),
            n.socket,
            n.rest,
            n.earlier
        )?;
        if n.missed > 0 {
            notes.push(format!(
                "  {s}: {} trades the simulator published after the recorder's first were not stored",
                n.missed
            ));
        }
    }
    writeln!(
        out,
        "  socket: received live; REST: fetched by backfill (trades before the subscription,\n  \
         and any a reconnect missed); earlier: published before the oldest trade the recorder\n  \
         could reach (a first start fetches one page of the venue's recent trades, not its day)"
    )?;
    for n in &notes {
        writeln!(out, "{n}")?;
    }
    writeln!(out)?;
    Ok(())
}

/// Commands to try next on the file, as they run from the working directory.
fn next_commands(out: &mut String, db_path: &Path, symbols: &[String]) -> anyhow::Result<()> {
    use std::fmt::Write;
    let first = symbols.first().cloned().unwrap_or_default();
    let prog = invocation();
    let db = shell_word(&db_path.display().to_string());
    writeln!(out, "\nnext, try:")?;
    writeln!(
        out,
        "  sqlite3 {db} \"SELECT symbol, count(*), avg(recv_time_us / 1000 - event_time_ms) AS latency_ms FROM trades WHERE source = 'ws' GROUP BY symbol\""
    )?;
    writeln!(out, "  {prog} coverage --db sqlite://{db} --json")?;
    writeln!(
        out,
        "  {prog} coverage --db sqlite://{db} --html coverage.html   # a timeline per symbol"
    )?;
    writeln!(out, "  {prog} book --db sqlite://{db} --symbol {first}")?;
    writeln!(
        out,
        "  {prog} export --db sqlite://{db} --kind trades --symbol {first} --format parquet --out {first}.parquet"
    )?;
    writeln!(
        out,
        "  {prog} export --db sqlite://{db} --kind book --every 1s --depth 5 --symbol {} --format csv --out books/",
        symbols.join(",")
    )?;
    writeln!(
        out,
        "  {prog} demo --db {db}      # again: it records on into the same file"
    )?;
    Ok(())
}

/// How to run this program again from the working directory: `mdrec` where that name on
/// PATH is this very file, else its path (what someone who ran `cargo run` has).
fn invocation() -> String {
    let exe = std::env::current_exe().and_then(|p| p.canonicalize()).ok();
    let cwd = std::env::current_dir().ok();
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("mdrec"))
            .find(|p| p.is_file())
            .and_then(|p| p.canonicalize().ok())
    });
    match exe {
        Some(exe) => command_for(&exe, cwd.as_deref(), on_path.as_deref()),
        None => "mdrec".to_string(),
    }
}

/// `mdrec` when `on_path` is `exe`, else `exe` relative to `cwd` where it lies below it.
fn command_for(exe: &Path, cwd: Option<&Path>, on_path: Option<&Path>) -> String {
    if on_path == Some(exe) {
        return "mdrec".to_string();
    }
    let shown = match cwd.and_then(|c| exe.strip_prefix(c).ok()) {
        // a bare name would be looked up on PATH: keep a slash in it
        Some(rel) if rel.components().count() == 1 => Path::new(".").join(rel),
        Some(rel) => rel.to_path_buf(),
        None => exe.to_path_buf(),
    };
    shell_word(&shown.display().to_string())
}

/// `s` as one shell word: as is when plain, else in single quotes.
fn shell_word(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+:=,@%".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decimal::Dec;
    use crate::model::{Side, Source, Trade};

    #[test]
    fn the_command_shown_is_the_one_that_runs_from_here() {
        let exe = Path::new("/home/u/mdrec/target/release/mdrec");
        let repo = Path::new("/home/u/mdrec");
        assert_eq!(command_for(exe, Some(repo), Some(exe)), "mdrec");
        assert_eq!(command_for(exe, Some(repo), None), "target/release/mdrec");
        let other = Path::new("/usr/local/bin/mdrec");
        assert_eq!(
            command_for(exe, Some(repo), Some(other)),
            "target/release/mdrec"
        );
        assert_eq!(
            command_for(exe, Some(Path::new("/tmp")), None),
            "/home/u/mdrec/target/release/mdrec"
        );
        assert_eq!(
            command_for(exe, Some(Path::new("/home/u/mdrec/target/release")), None),
            "./mdrec"
        );
        assert_eq!(
            command_for(Path::new("/opt/my tools/mdrec"), None, None),
            "'/opt/my tools/mdrec'"
        );
    }

    fn trade(id: i64, source: Source) -> Trade {
        Trade {
            venue: "cdc-exchange",
            symbol: "BTC_USD".into(),
            trade_id: id,
            side: Side::Buy,
            price: Dec::parse("1").unwrap(),
            qty: Dec::parse("1").unwrap(),
            quote_qty: None,
            event_time_ms: id,
            recv_time_us: id * 1000,
            source,
        }
    }

    #[test]
    fn trades_not_stored_are_earlier_than_the_recorder_reached_or_missed() {
        let generated: Vec<i64> = (1..=10).collect();
        let stored = [
            trade(4, Source::Rest),
            trade(5, Source::Rest),
            trade(6, Source::Ws),
            trade(8, Source::Ws),
            trade(9, Source::Ws),
            trade(10, Source::Ws),
        ];
        assert_eq!(
            Tally::of(&generated, &stored),
            Tally {
                socket: 4,
                rest: 2,
                earlier: 3,
                missed: 1
            }
        );
    }
}
