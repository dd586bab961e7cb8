//! Holes and their record: socket cuts, stalls and a stopped recorder are filled from REST and
//! websocket history so the database equals the simulator's ledger; an outage longer than the
//! venue's history leaves exactly one `unrecoverable` gap per stream with the ledger's bounds;
//! a quiet market leaves no gap at all.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{PgDb, Recorder, recorder_config, sqlite_db, stored_ids, wait_for};
use mdrec::config::Config;
use mdrec::decimal::Dec;
use mdrec::model::{Gap, GapStatus, Source};
use mdrec::recorder::RunStats;
use mdrec::sim::{self, SimConfig, SimHandle};
use mdrec::store::Store;
use mdrec::venue::cdc_v1::NAME;

const SYMBOLS: [&str; 2] = ["btcusdt", "ethusdt"];
const INTERVALS: [&str; 2] = ["1min", "5min"];

fn config(sim: &SimHandle, db: &str, extra: &str) -> Config {
    recorder_config(
        &sim.ws_url(),
        &sim.rest_url(),
        db,
        &SYMBOLS,
        &format!(
            "[connection]\nreconnect_initial_ms = 200\nreconnect_max_s = 1\nsilence_timeout_s = 1\n\n\
             [backfill]\nrate_per_s = 50\ntimeout_s = 5\naudit_interval_s = 1\n{extra}"
        ),
    )
}

/// A simulator (pinging every 300 ms, so a halted market keeps sockets open), a handle on the
/// database and the recorder's config for both.
async fn setup(sim_config: SimConfig, db: &str) -> (SimHandle, Store, Config) {
    let sim = sim::start(SimConfig {
        ping_interval: Duration::from_millis(300),
        ..sim_config
    })
    .await
    .expect("simulator starts");
    let cfg = config(&sim, db, "");
    let store = Store::connect(db).await.expect("database opens");
    (sim, store, cfg)
}

/// Stops the market, waits until the database equals the ledger (nothing lost), stops the run.
async fn settle(sim: &SimHandle, store: &Store, run: Recorder) -> Arc<RunStats> {
    sim.halt();
    wait_ledger(store, sim, &BTreeMap::new(), &BTreeMap::new()).await;
    run.stop().await
}

/// Waits until every symbol's socket delivered at least `n` trades.
async fn streaming(sim: &SimHandle, n: usize) {
    wait_for("streaming", Duration::from_secs(30), || async {
        SYMBOLS.iter().all(|s| sim.delivered(s).len() >= n)
    })
    .await;
}

fn d(x: rust_decimal::Decimal) -> Dec {
    Dec::from(x)
}

/// The first difference between the database and the ledger, if any. `missing` trade ids and
/// bar open times (per symbol, per interval) are expected to be absent or not final.
async fn ledger_diff(
    store: &Store,
    sim: &SimHandle,
    missing_trades: &BTreeMap<&str, BTreeSet<i64>>,
    missing_bars: &BTreeMap<(&str, &str), BTreeSet<i64>>,
) -> Option<String> {
    for s in SYMBOLS {
        let none = BTreeSet::new();
        let skip = missing_trades.get(s).unwrap_or(&none);
        let ledger: Vec<_> = sim
            .trades(s)
            .into_iter()
            .filter(|t| !skip.contains(&t.id))
            .collect();
        let stored = store.load_trades(NAME, s).await.ok()?;
        if stored.len() != ledger.len() {
            return Some(format!(
                "{s}: {} trades stored, ledger {}",
                stored.len(),
                ledger.len()
            ));
        }
        for (db, l) in stored.iter().zip(&ledger) {
            let want = (l.id, l.side, d(l.price), d(l.qty), l.time_ms);
            let got = (
                db.trade_id,
                db.side,
                db.price.clone(),
                db.qty.clone(),
                db.event_time_ms,
            );
            if got != want {
                return Some(format!("{s}: stored {got:?}, ledger {want:?}"));
            }
            // REST has no quote amount: a trade only REST supplied has none, never a wrong one
            if db.quote_qty.as_ref().is_some_and(|q| *q != d(l.amount)) {
                return Some(format!("{s} trade {}: amount", l.id));
            }
            if db.quote_qty.is_none() && db.source != Source::Rest {
                return Some(format!("{s} trade {}: socket trade without amount", l.id));
            }
        }
        for iv in INTERVALS {
            let bars = sim.bars(s, iv);
            let stored: BTreeMap<i64, _> = store
                .load_klines(NAME, s, iv)
                .await
                .ok()?
                .into_iter()
                .map(|k| (k.open_time_ms, k))
                .collect();
            let skip = missing_bars.get(&(s, iv)).unwrap_or(&none);
            for (i, b) in bars.iter().enumerate() {
                let forming = i + 1 == bars.len();
                if skip.contains(&b.open_time_ms) {
                    if stored.get(&b.open_time_ms).is_some_and(|k| k.closed) {
                        return Some(format!(
                            "{s} {iv} {}: unrecoverable bar stored final",
                            b.open_time_ms
                        ));
                    }
                    continue;
                }
                let Some(k) = stored.get(&b.open_time_ms) else {
                    return Some(format!("{s} {iv} bar {} missing", b.open_time_ms));
                };
                let want = (d(b.open), d(b.high), d(b.low), d(b.close), d(b.volume));
                let got = (
                    k.open.clone(),
                    k.high.clone(),
                    k.low.clone(),
                    k.close.clone(),
                    k.volume.clone(),
                );
                if got != want || k.closed == forming {
                    return Some(format!(
                        "{s} {iv} bar {}: stored {got:?} closed={}, ledger {want:?} forming={forming}",
                        b.open_time_ms, k.closed
                    ));
                }
                if k.quote_volume.as_ref().is_some_and(|q| *q != d(b.amount)) {
                    return Some(format!("{s} {iv} bar {}: quote volume", b.open_time_ms));
                }
            }
            if let Some(extra) = stored
                .keys()
                .find(|t| !bars.iter().any(|b| b.open_time_ms == **t))
            {
                return Some(format!("{s} {iv}: bar {extra} not in the ledger"));
            }
        }
    }
    None
}

async fn wait_ledger(
    store: &Store,
    sim: &SimHandle,
    missing_trades: &BTreeMap<&str, BTreeSet<i64>>,
    missing_bars: &BTreeMap<(&str, &str), BTreeSet<i64>>,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let diff = ledger_diff(store, sim, missing_trades, missing_bars).await;
        match diff {
            None => return,
            Some(d) if tokio::time::Instant::now() >= deadline => {
                let g = gaps(store).await;
                let bars: Vec<(i64, bool, String)> = store
                    .load_klines(NAME, "btcusdt", "1min")
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .map(|k| (k.open_time_ms, k.closed, format!("{:?}", k.source)))
                    .collect();
                let ledger: Vec<i64> = sim
                    .bars("btcusdt", "1min")
                    .iter()
                    .map(|b| b.open_time_ms)
                    .collect();
                panic!(
                    "database never matched the ledger: {d}\ngaps {g:#?}\nstored btcusdt 1min {bars:?}\nledger {ledger:?}"
                )
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn gaps(store: &Store) -> Vec<Gap> {
    store.load_gaps(NAME, None).await.expect("read gaps")
}

/// Trades generated, stored, and stored though no socket delivered them (REST recovered).
async fn trade_figures(store: &Store, sim: &SimHandle) -> (usize, usize, usize) {
    let (mut generated, mut stored, mut recovered) = (0, 0, 0);
    for s in SYMBOLS {
        generated += sim.trades(s).len();
        let ids = stored_ids(store, s).await;
        let delivered = sim.delivered(s);
        stored += ids.len();
        recovered += ids.difference(&delivered).count();
    }
    (generated, stored, recovered)
}

async fn cuts_stalls_and_restart(db: &str, label: &str) {
    // ~6 trades/s per symbol: 20 s down stays inside the venue's last 200 trades; REST keeps
    // only 5 bars, so the restart's 20+ missing 1min bars need websocket history
    let (sim, store, cfg) = setup(
        SimConfig {
            seed: 41,
            step: Duration::from_millis(250),
            rest_kline_limit: 5,
            // pings keep sockets alive once the market is halted for the final comparison
            ..SimConfig::default()
        },
        db,
    )
    .await;
    let run = Recorder::start(&cfg).await;
    streaming(&sim, 10).await;

    // a cut without close frame
    let before = sim.state().connections_total;
    sim.cut_connections();
    wait_for(
        "reconnect after the cut",
        Duration::from_secs(30),
        || async { sim.state().connections_total >= before + 2 },
    )
    .await;
    let delivered: usize = SYMBOLS.iter().map(|s| sim.delivered(s).len()).sum();
    wait_for("streaming again", Duration::from_secs(30), || async {
        SYMBOLS
            .iter()
            .map(|s| sim.delivered(s).len())
            .sum::<usize>()
            >= delivered + 10
    })
    .await;

    // a stall: sockets open but silent, until the silence timeout reopens them twice
    let before = sim.state().connections_total;
    sim.mute(true);
    wait_for(
        "silent sockets reopened",
        Duration::from_secs(30),
        || async { sim.state().connections_total >= before + 4 },
    )
    .await;
    sim.mute(false);
    let delivered: usize = SYMBOLS.iter().map(|s| sim.delivered(s).len()).sum();
    wait_for(
        "streaming after the stall",
        Duration::from_secs(30),
        || async {
            SYMBOLS
                .iter()
                .map(|s| sim.delivered(s).len())
                .sum::<usize>()
                >= delivered + 10
        },
    )
    .await;

    // the recorder itself is down for 20 s (the scenario, not a synchronisation)
    let first = run.stop().await;
    let down_from = sim.trades("btcusdt").len();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let missed_while_down = sim.trades("btcusdt").len() - down_from;
    let run = Recorder::start(&cfg).await;
    wait_for(
        "restarted and streaming",
        Duration::from_secs(30),
        || async { run.stats.backfill.runs.load(Ordering::Relaxed) >= SYMBOLS.len() as u64 },
    )
    .await;
    sim.halt();
    wait_ledger(&store, &sim, &BTreeMap::new(), &BTreeMap::new()).await;
    // every hole resolved, none unrecoverable
    wait_for("every gap resolved", Duration::from_secs(30), || async {
        gaps(&store)
            .await
            .iter()
            .all(|g| g.status != GapStatus::Open)
    })
    .await;
    let second = run.stop().await;
    assert!(
        ledger_diff(&store, &sim, &BTreeMap::new(), &BTreeMap::new())
            .await
            .is_none()
    );

    let all = gaps(&store).await;
    let unrecoverable: Vec<&Gap> = all
        .iter()
        .filter(|g| g.status == GapStatus::Unrecoverable)
        .collect();
    assert!(
        unrecoverable.is_empty(),
        "no hole was beyond REST: {unrecoverable:#?}"
    );
    for s in SYMBOLS {
        for stream in ["trades", "kline_1min", "kline_5min"] {
            let n = all
                .iter()
                .filter(|g| &*g.symbol == s && g.stream == stream)
                .count();
            assert!(n >= 1, "{s} {stream}: the holes are on record as filled");
        }
        let restart_trades: i64 = all
            .iter()
            .filter(|g| {
                &*g.symbol == s
                    && g.stream == "trades"
                    && g.detail
                        .as_deref()
                        .is_some_and(|d| d.starts_with("start-up"))
            })
            .map(|g| g.rows_recovered)
            .sum();
        assert!(
            restart_trades > 0,
            "{s}: the restart's trades came from REST"
        );
    }
    assert!(
        second.backfill.history_requests.load(Ordering::Relaxed) >= SYMBOLS.len() as u64,
        "REST kept 5 bars: older ones came over websocket history"
    );
    let (generated, stored, recovered) = trade_figures(&store, &sim).await;
    assert!(recovered > 0);
    eprintln!(
        "{label} cuts+stalls+20 s restart: trades generated {generated}, stored {stored}, \
         recovered by REST {recovered} ({missed_while_down} btcusdt trades while the recorder was down), \
         unrecoverable gaps 0; gap rows {} (filled); bars recovered {} + {}, history requests {}",
        all.len(),
        first.backfill.bars_recovered.load(Ordering::Relaxed),
        second.backfill.bars_recovered.load(Ordering::Relaxed),
        first.backfill.history_requests.load(Ordering::Relaxed)
            + second.backfill.history_requests.load(Ordering::Relaxed),
    );
    store.close().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_cuts_stalls_and_a_20s_restart_leave_no_hole() {
    let (_dir, url) = sqlite_db();
    cuts_stalls_and_restart(&url, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cuts_stalls_and_a_20s_restart_leave_no_hole() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    cuts_stalls_and_restart(&db.url, "postgres").await;
    db.drop_db().await;
}

/// Missing ledger ids of a symbol: one contiguous run, with the trades around it stored.
fn one_run(ids: &BTreeSet<i64>) -> (i64, i64) {
    let first = *ids.first().expect("a run");
    let last = *ids.last().expect("a run");
    assert_eq!(
        (last - first + 1) as usize,
        ids.len(),
        "one contiguous run: {ids:?}"
    );
    (first, last)
}

async fn outage_beyond_history(db: &str, label: &str) {
    // ~75 trades/s per symbol; REST keeps 2 bars and websocket history 3
    let (sim, store, cfg) = setup(
        SimConfig {
            seed: 43,
            rest_kline_limit: 2,
            history_kline_limit: Some(3),
            ..SimConfig::default()
        },
        db,
    )
    .await;
    let run = Recorder::start(&cfg).await;
    streaming(&sim, 50).await;
    run.stop().await;
    // down until 400+ trades (past REST's 200) and 6+ one-minute bars (past the history) passed
    let (t0, b0) = (
        sim.trades("btcusdt").len(),
        sim.bars("btcusdt", "1min").len(),
    );
    wait_for("a long outage", Duration::from_secs(60), || async {
        SYMBOLS.iter().all(|s| sim.trades(s).len() >= t0 + 400)
            && sim.bars("btcusdt", "1min").len() >= b0 + 6
    })
    .await;
    let run = Recorder::start(&cfg).await;
    wait_for(
        "start-up holes resolved",
        Duration::from_secs(60),
        || async {
            let g = gaps(&store).await;
            g.len() >= SYMBOLS.len() * 3
                && g.iter().all(|g| g.status != GapStatus::Open)
                && common::recovered_parts_on_record(&g)
        },
    )
    .await;
    sim.halt();
    wait_for(
        "every delivered trade stored",
        Duration::from_secs(30),
        || async {
            for s in SYMBOLS {
                if !stored_ids(&store, s).await.is_superset(&sim.delivered(s)) {
                    return false;
                }
            }
            true
        },
    )
    .await;
    let all = gaps(&store).await;

    // the ledger decides what was lost: trades absent from the database, bars not final
    let mut missing_trades = BTreeMap::new();
    let mut missing_bars = BTreeMap::new();
    for s in SYMBOLS {
        let unrec: Vec<&Gap> = all
            .iter()
            .filter(|g| &*g.symbol == s && g.status == GapStatus::Unrecoverable)
            .collect();
        let streams: BTreeSet<&str> = unrec.iter().map(|g| g.stream.as_str()).collect();
        // trades and 1min bars lost some; 5min bars only if the outage spanned two of them
        assert!(
            streams.is_superset(&BTreeSet::from(["trades", "kline_1min"]))
                && streams.len() == unrec.len(),
            "{s}: one unrecoverable gap per affected stream: {unrec:#?}"
        );

        let ledger = sim.trades(s);
        let stored = stored_ids(&store, s).await;
        let lost: BTreeSet<i64> = ledger
            .iter()
            .map(|t| t.id)
            .filter(|id| !stored.contains(id))
            .collect();
        let (first, last) = one_run(&lost);
        let time = |id: i64| ledger.iter().find(|t| t.id == id).map(|t| t.time_ms);
        let g = unrec.iter().find(|g| g.stream == "trades").unwrap();
        assert_eq!(
            g.start_ms,
            time(first - 1).unwrap(),
            "{s}: starts at the last trade kept"
        );
        assert_eq!(
            g.end_ms,
            time(last + 1),
            "{s}: ends at the first trade recovered"
        );
        // the part REST recovered is on record as filled, from there to the socket's first
        let part = common::recovered_part(&all, g);
        assert!(part.rows_recovered > 0, "{s}: the REST part was recovered");
        assert_eq!(g.rows_recovered, 0, "{s}: counted once, by the filled part");
        assert!(part.end_ms.is_some_and(|e| e > part.start_ms), "{part:?}");
        missing_trades.insert(s, lost.clone());

        for iv in INTERVALS {
            let stream = format!("kline_{iv}");
            let Some(g) = unrec.iter().find(|g| g.stream == stream) else {
                continue; // nothing lost: ledger_diff below demands every bar final
            };
            let end = g.end_ms.expect("resolved gap has an end");
            let bars = sim.bars(s, iv);
            let lost: BTreeSet<i64> = bars
                .iter()
                .map(|b| b.open_time_ms)
                .filter(|t| *t >= g.start_ms && *t < end)
                .collect();
            if iv == "1min" {
                assert!(lost.len() >= 2, "{s} {iv}: bars lost {lost:?}");
            }
            // the bounds are bars of the ledger: the last kept one ends where the gap starts
            assert!(
                bars.iter().any(|b| b.open_time_ms == end),
                "{s} {iv}: end is a recovered bar"
            );
            missing_bars.insert((s, iv), lost);
        }
        eprintln!(
            "{label} outage beyond history, {s}: trades generated {}, stored {}, lost {} (ids {first}..={last}), \
             recovered after it {}",
            ledger.len(),
            stored.len(),
            lost.len(),
            common::recovered_part(&all, g).rows_recovered
        );
    }
    wait_ledger(&store, &sim, &missing_trades, &missing_bars).await;
    let stats = run.stop().await;
    assert!(stats.backfill.history_requests.load(Ordering::Relaxed) >= 2);
    coverage_cli_agrees(db, &store, &all).await;
    let (generated, stored, recovered) = trade_figures(&store, &sim).await;
    eprintln!(
        "{label} outage beyond history: trades generated {generated}, stored {stored}, recovered by REST \
         {recovered}, unrecoverable gaps {}",
        all.iter()
            .filter(|g| g.status == GapStatus::Unrecoverable)
            .count()
    );
    store.close().await;
    sim.shutdown().await;
}

/// `mdrec coverage` (the real binary) reports the stored rows, the holes and a live share
/// below 100% after the outage, as JSON and as a table.
async fn coverage_cli_agrees(db: &str, store: &Store, gaps: &[Gap]) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("mdrec.toml");
    std::fs::write(
        &cfg,
        format!(
            "[venue]\nkind = \"cdc-v1\"\nws_url = \"ws://127.0.0.1:9/ws\"\nrest_url = \"http://127.0.0.1:9\"\n\
             [database]\nurl = \"{db}\"\n[record]\nsymbols = [\"btcusdt\"]\n"
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mdrec"))
            .arg("coverage")
            .arg("-c")
            .arg(&cfg)
            .args(args)
            .env_remove("MDREC_DATABASE_URL")
            .output()
            .expect("run mdrec coverage");
        assert!(
            out.status.success(),
            "mdrec coverage {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let json: serde_json::Value = serde_json::from_str(&run(&["--json"])).expect("JSON");
    let symbols = json["symbols"].as_array().expect("symbols");
    assert_eq!(symbols.len(), SYMBOLS.len());
    for sym in symbols {
        let s = sym["symbol"].as_str().unwrap();
        let share = sym["live_share"].as_f64().unwrap();
        assert!(share > 0.0 && share < 1.0, "{s}: live share {share}");
        assert_eq!(sym["sessions"].as_u64(), Some(2), "{s}: two runs");
        let streams = sym["streams"].as_array().unwrap();
        let trades = streams.iter().find(|x| x["stream"] == "trades").unwrap();
        assert_eq!(
            trades["rows"].as_u64(),
            Some(stored_ids(store, s).await.len() as u64)
        );
        for st in streams {
            let name = st["stream"].as_str().unwrap();
            let on_record = gaps
                .iter()
                .filter(|g| {
                    &*g.symbol == s && g.stream == name && g.status == GapStatus::Unrecoverable
                })
                .count();
            assert_eq!(
                st["gaps_unrecoverable"].as_u64(),
                Some(on_record as u64),
                "{s} {name}"
            );
        }
    }
    // the timeline draws the stretch REST recovered as filled, not as nothing recorded
    let html = dir.path().join("coverage.html");
    run(&["--html", html.to_str().unwrap()]);
    let html = std::fs::read_to_string(&html).unwrap();
    for g in gaps
        .iter()
        .filter(|g| g.stream == "trades" && g.status == GapStatus::Unrecoverable)
    {
        let part = common::recovered_part(gaps, g);
        let rect = format!(
            "data-start=\"{}\" data-end=\"{}\"><title>filled:",
            part.start_ms,
            part.end_ms.unwrap()
        );
        assert!(html.contains(&rect), "{} {rect} in the report", g.symbol);
    }
    let text = run(&["--symbol", "btcusdt", "--from", "2020-01-01T00:00:00Z"]);
    assert!(
        text.contains("btcusdt") && !text.contains("ethusdt"),
        "{text}"
    );
    assert!(text.contains("trades unrecoverable hole"), "{text}");
    eprintln!("{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_outage_beyond_history_is_one_unrecoverable_gap_per_stream() {
    let (_dir, url) = sqlite_db();
    outage_beyond_history(&url, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_beyond_history_is_one_unrecoverable_gap_per_stream() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    outage_beyond_history(&db.url, "postgres").await;
    db.drop_db().await;
}

/// A kline hole longer than REST's window plus one websocket history page: the history is
/// paged until it meets REST, the database ends equal to the ledger, and a gap is `filled`
/// only with every bar slot present.
async fn deep_kline_hole(db: &str, label: &str) {
    // REST keeps 3 bars and one history reply 4, so 12+ missing 1min bars take 3+ pages
    let (sim, store, mut cfg) = setup(
        SimConfig {
            seed: 47,
            step: Duration::from_millis(250),
            rest_kline_limit: 3,
            history_page: 4,
            ..SimConfig::default()
        },
        db,
    )
    .await;
    // the hole check alone must get it right: no audit to mend it later
    cfg.backfill.audit_interval_s = 0;
    let run = Recorder::start(&cfg).await;
    streaming(&sim, 10).await;
    run.stop().await;
    let bars_before = sim.bars("btcusdt", "1min").len();
    wait_for(
        "12 one-minute bars while the recorder is down",
        Duration::from_secs(60),
        || async { sim.bars("btcusdt", "1min").len() >= bars_before + 12 },
    )
    .await;
    let run = Recorder::start(&cfg).await;
    wait_for(
        "start-up holes resolved",
        Duration::from_secs(60),
        || async {
            let g = gaps(&store).await;
            g.iter().filter(|g| g.stream == "kline_1min").count() >= SYMBOLS.len()
                && g.iter().all(|g| g.status != GapStatus::Open)
        },
    )
    .await;
    sim.halt();
    wait_ledger(&store, &sim, &BTreeMap::new(), &BTreeMap::new()).await;
    let stats = run.stop().await;
    let all = gaps(&store).await;
    for g in &all {
        assert_eq!(g.status, GapStatus::Filled, "{g:?}");
    }
    // no filled kline gap lacks a bar of the ledger
    for g in all.iter().filter(|g| g.stream.starts_with("kline_")) {
        let iv = g.stream.trim_start_matches("kline_");
        let end = g.end_ms.expect("resolved");
        let stored: BTreeSet<i64> = store
            .load_klines(NAME, &g.symbol, iv)
            .await
            .expect("klines")
            .into_iter()
            .filter(|k| k.closed)
            .map(|k| k.open_time_ms)
            .collect();
        for b in sim.bars(&g.symbol, iv) {
            if b.open_time_ms >= g.start_ms && b.open_time_ms < end {
                assert!(
                    stored.contains(&b.open_time_ms),
                    "{g:?}: bar {} missing",
                    b.open_time_ms
                );
            }
        }
    }
    let pages = stats.backfill.history_requests.load(Ordering::Relaxed);
    assert!(
        pages >= 3 * SYMBOLS.len() as u64,
        "history pages asked: {pages}"
    );
    let one_min: Vec<_> = all.iter().filter(|g| g.stream == "kline_1min").collect();
    eprintln!(
        "{label} deep kline hole: 1min gaps {:?}, history pages {pages}, bars recovered {}",
        one_min
            .iter()
            .map(|g| (g.symbol.to_string(), g.rows_recovered, g.status.as_str()))
            .collect::<Vec<_>>(),
        stats.backfill.bars_recovered.load(Ordering::Relaxed)
    );
    store.close().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_kline_hole_deeper_than_one_history_page_is_paged_and_filled() {
    let (_dir, url) = sqlite_db();
    deep_kline_hole(&url, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_kline_hole_deeper_than_one_history_page_is_paged_and_filled() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    deep_kline_hole(&db.url, "postgres").await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_market_records_no_gap() {
    let (_dir, url) = sqlite_db();
    let (sim, store, mut cfg) = setup(
        SimConfig {
            seed: 47,
            ..SimConfig::default()
        },
        &url,
    )
    .await;
    // the trade channel falls silent while the book moves: it is subscribed again, no hole
    cfg.connection.channel_silence_s = 1;
    let run = Recorder::start(&cfg).await;
    streaming(&sim, 20).await;
    sim.quiet(true);
    let bars = sim.bars("btcusdt", "1min").len();
    // five simulated minutes without a trade (5 s at the simulator's 60x)
    wait_for("quiet minutes", Duration::from_secs(30), || async {
        sim.bars("btcusdt", "1min").len() >= bars + 5
    })
    .await;
    sim.quiet(false);
    let trades: usize = SYMBOLS.iter().map(|s| sim.delivered(s).len()).sum();
    wait_for("trading again", Duration::from_secs(30), || async {
        SYMBOLS
            .iter()
            .map(|s| sim.delivered(s).len())
            .sum::<usize>()
            >= trades + 20
    })
    .await;
    let stats = settle(&sim, &store, run).await;
    assert!(
        gaps(&store).await.is_empty(),
        "a quiet market is not a hole"
    );
    let sessions = common::session_reasons(&store).await;
    assert_eq!(sessions.len(), SYMBOLS.len(), "no reconnect: {sessions:?}");
    let resubscribes: u64 = stats
        .workers
        .all()
        .into_iter()
        .map(|(_, w)| w)
        .map(|w| w.resubscribes.load(Ordering::Relaxed))
        .sum();
    assert!(
        resubscribes > 0,
        "the silent trade channel was subscribed again"
    );
    let zero_bars = store
        .load_klines(NAME, "btcusdt", "1min")
        .await
        .unwrap()
        .iter()
        .filter(|k| k.closed && k.volume.is_zero())
        .count();
    assert!(zero_bars >= 4, "zero-volume bars are data: {zero_bars}");
    eprintln!(
        "quiet market: trades generated {}, stored {}, zero-volume 1min bars {zero_bars}, resubscribes {resubscribes}, gap rows 0",
        SYMBOLS.iter().map(|s| sim.trades(s).len()).sum::<usize>(),
        trade_figures(&store, &sim).await.1
    );
    store.close().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_trade_id_jump_on_a_live_socket_is_checked_and_filled() {
    let (_dir, url) = sqlite_db();
    let (sim, store, cfg) = setup(
        SimConfig {
            seed: 53,
            ..SimConfig::default()
        },
        &url,
    )
    .await;
    let run = Recorder::start(&cfg).await;
    streaming(&sim, 30).await;
    // the venue drops three trade frames on the live socket: ids jump
    let before = sim.delivered("btcusdt").len();
    sim.withhold_trade_frames("btcusdt", 3);
    wait_for(
        "streaming past the dropped frames",
        Duration::from_secs(30),
        || async { sim.delivered("btcusdt").len() >= before + 30 },
    )
    .await;
    let stats = settle(&sim, &store, run).await;
    let delivered = sim.delivered("btcusdt");
    let first = *delivered.first().unwrap();
    let dropped = sim
        .trades("btcusdt")
        .iter()
        .filter(|t| t.id > first && !delivered.contains(&t.id))
        .count();
    assert!(dropped >= 3, "three frames hold at least three trades");
    let all = gaps(&store).await;
    assert_eq!(all.len(), 1, "one hole, on btcusdt trades: {all:#?}");
    let g = &all[0];
    assert_eq!(
        (&*g.symbol, g.stream.as_str(), g.status),
        ("btcusdt", "trades", GapStatus::Filled)
    );
    assert!(
        g.detail
            .as_deref()
            .is_some_and(|d| d.starts_with("trade id jump")),
        "{g:?}"
    );
    assert_eq!(g.rows_recovered, dropped as i64);
    assert_eq!(
        common::session_reasons(&store).await.len(),
        SYMBOLS.len(),
        "no reconnect"
    );
    let (generated, stored, recovered) = trade_figures(&store, &sim).await;
    eprintln!(
        "id jump: trades generated {generated}, stored {stored}, recovered by REST {recovered} \
         ({dropped} dropped on the live socket), backfill checks {}, unrecoverable gaps 0",
        stats.backfill.runs.load(Ordering::Relaxed)
    );
    store.close().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_rest_errors_keep_the_hole_open_until_rest_answers() {
    let (_dir, url) = sqlite_db();
    // ~6 trades/s: the venue's last 200 trades still reach the hole once REST answers again
    let (sim, store, cfg) = setup(
        SimConfig {
            seed: 59,
            step: Duration::from_millis(250),
            ..SimConfig::default()
        },
        &url,
    )
    .await;
    let run = Recorder::start(&cfg).await;
    streaming(&sim, 10).await;
    sim.rest_errors(true); // `{"code":"10050","msg":"system busy"}`
    // a stall long enough for trades to fall into it: the silent sockets are reopened
    let connections = sim.state().connections_total;
    sim.mute(true);
    wait_for(
        "silent sockets reopened",
        Duration::from_secs(30),
        || async { sim.state().connections_total >= connections + 2 },
    )
    .await;
    sim.mute(false);
    wait_for(
        "the holes on record as open",
        Duration::from_secs(30),
        || async {
            let g = gaps(&store).await;
            SYMBOLS.iter().all(|s| {
                g.iter().any(|g| {
                    &*g.symbol == *s && g.stream == "trades" && g.status == GapStatus::Open
                })
            })
        },
    )
    .await;
    assert!(run.stats.backfill.failures.load(Ordering::Relaxed) >= 1);
    // the error envelopes are counted per endpoint (the metrics' REST outcomes)
    let by = run
        .stats
        .rest
        .as_ref()
        .unwrap()
        .by_endpoint
        .lock()
        .unwrap()
        .clone();
    assert!(
        by.get(&("/v1/trades".to_string(), "bad_body"))
            .is_some_and(|n| *n >= 1),
        "{by:?}"
    );
    assert!(
        by.get(&("/v1/trades".to_string(), "ok"))
            .is_some_and(|n| *n >= 1),
        "{by:?}"
    );
    // the sockets keep recording while REST fails
    let delivered: usize = SYMBOLS.iter().map(|s| sim.delivered(s).len()).sum();
    wait_for(
        "recording during the failure",
        Duration::from_secs(30),
        || async {
            SYMBOLS
                .iter()
                .map(|s| sim.delivered(s).len())
                .sum::<usize>()
                >= delivered + 50
        },
    )
    .await;
    sim.rest_errors(false);
    wait_for(
        "the retry fills the holes",
        Duration::from_secs(60),
        || async {
            let g = gaps(&store).await;
            !g.is_empty() && g.iter().all(|g| g.status == GapStatus::Filled)
        },
    )
    .await;
    let stats = settle(&sim, &store, run).await;
    for s in SYMBOLS {
        let g = gaps(&store).await;
        let t = g
            .iter()
            .find(|g| &*g.symbol == s && g.stream == "trades")
            .expect("trades hole");
        assert!(t.rows_recovered > 0, "{s}: {t:?}");
    }
    let (generated, stored, recovered) = trade_figures(&store, &sim).await;
    eprintln!(
        "REST errors then success: trades generated {generated}, stored {stored}, recovered by REST \
         {recovered}, failed checks {}, unrecoverable gaps 0",
        stats.backfill.failures.load(Ordering::Relaxed)
    );
    store.close().await;
    sim.shutdown().await;
}

/// Runs SQL on whichever backend (test surgery on the database).
async fn exec(store: &Store, sql: &str) {
    match store {
        Store::Sqlite(s) => sqlx::query(sql).execute(s.pool()).await.map(|_| ()),
        Store::Postgres(s) => sqlx::query(sql).execute(s.pool()).await.map(|_| ()),
    }
    .expect(sql);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_holes_left_open_by_a_killed_run_are_resolved_at_start() {
    left_open(0).await;
}

/// The row of a killed run's hole says where its connection's first trade was; trades the
/// run before it committed late (its last transaction landing after the next run had read
/// where the stored trades end) lie inside the hole and do not cut it short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_late_commit_inside_a_left_open_hole_does_not_shorten_it() {
    left_open(3).await;
}

/// A run killed mid-check: trades and a bar missing, their holes `open`. With `late` > 0, the
/// `late` trades after the anchor are kept (committed late by the run before) and the
/// trades row carries its end (the connection's first trade).
async fn left_open(late: usize) {
    let (_dir, url) = sqlite_db();
    let (sim, store, mut cfg) = setup(
        SimConfig {
            seed: 61,
            // ~6 trades/s: the venue's last 200 trades reach back well past the deleted ones
            // even when a loaded machine is slow to restart the recorder
            step: Duration::from_millis(250),
            ..SimConfig::default()
        },
        &url,
    )
    .await;
    // the audit would find the bar too: this test is about the rows left open
    cfg.backfill.audit_interval_s = 0;
    let run = Recorder::start(&cfg).await;
    streaming(&sim, 60).await;
    run.stop().await;
    // what a run killed mid-check leaves: trades and a bar missing, their holes `open`
    let trades = store.load_trades(NAME, "btcusdt").await.unwrap();
    let n = trades.len();
    let (anchor, b, after) = (&trades[n - 41], &trades[n - 21], &trades[n - 20]);
    exec(
        &store,
        &format!(
            "DELETE FROM trades WHERE symbol = 'btcusdt' AND trade_id BETWEEN {} AND {}",
            trades[n - 40 + late].trade_id,
            b.trade_id
        ),
    )
    .await;
    let deleted: Vec<(i64, i64)> = trades[n - 40 + late..=n - 21]
        .iter()
        .map(|t| (t.trade_id, t.event_time_ms))
        .collect();
    let bars = store.load_klines(NAME, "btcusdt", "1min").await.unwrap();
    let bar = &bars[bars.len() - 3];
    assert!(bar.closed);
    exec(
        &store,
        &format!(
            "DELETE FROM klines WHERE symbol = 'btcusdt' AND interval = '1min' AND open_time_ms = {}",
            bar.open_time_ms
        ),
    )
    .await;
    let open = |stream: &str, start_ms: i64, end_ms: Option<i64>| {
        mdrec::model::Event::Gap(Gap {
            venue: NAME,
            symbol: "btcusdt".into(),
            stream: stream.into(),
            start_ms,
            end_ms,
            status: GapStatus::Open,
            detected_at_ms: mdrec::model::now_ms(),
            resolved_at_ms: None,
            rows_recovered: 0,
            detail: Some("reconnect: socket was down".into()),
        })
    };
    let mut batch = mdrec::store::Batch::default();
    let end = (late > 0).then_some(after.event_time_ms);
    batch.push(open("trades", anchor.event_time_ms, end));
    batch.push(open("kline_1min", bar.open_time_ms, None));
    store.write(&batch).await.unwrap();

    let run = Recorder::start(&cfg).await;
    wait_for(
        "left-open holes resolved",
        Duration::from_secs(30),
        || async {
            let g = gaps(&store).await;
            g.len() >= 2 && g.iter().all(|g| g.status != GapStatus::Open)
        },
    )
    .await;
    let all = gaps(&store).await;
    assert!(
        all.iter().all(|g| g.status == GapStatus::Filled),
        "the left-open holes were within the venue's history: {all:#?}"
    );
    settle(&sim, &store, run).await;
    let all = gaps(&store).await;
    let t = all
        .iter()
        .find(|g| g.stream == "trades" && g.start_ms == anchor.event_time_ms)
        .expect("the trades row");
    assert_eq!(t.status, GapStatus::Filled);
    // every REST trade between the anchor and the connection's first: the late ones too,
    // but for those in the anchor's millisecond (the row keeps a time, and the anchor is the
    // last trade stored at it)
    let recovered = deleted.len() as i64..=20;
    assert!(
        recovered.contains(&t.rows_recovered) && (late > 0 || t.rows_recovered == 20),
        "{t:?}"
    );
    assert_eq!(
        t.end_ms,
        Some(after.event_time_ms),
        "ends at its connection's first trade"
    );
    let stored = stored_ids(&store, "btcusdt").await;
    for (id, ms) in &deleted {
        assert!(stored.contains(id), "trade {id} stored again");
        assert!(
            t.start_ms <= *ms && *ms <= after.event_time_ms,
            "trade {id} inside {t:?}"
        );
    }
    let k = all
        .iter()
        .find(|g| g.stream == "kline_1min" && g.start_ms == bar.open_time_ms)
        .expect("the bar row");
    assert_eq!(k.status, GapStatus::Filled);
    assert!(k.rows_recovered >= 1, "{k:?}");
    assert!(
        all.iter().all(|g| g.status != GapStatus::Unrecoverable),
        "{all:#?}"
    );
    store.close().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_kline_audit_restores_a_bar_missing_from_the_grid() {
    let (_dir, url) = sqlite_db();
    let (sim, store, cfg) = setup(
        SimConfig {
            seed: 67,
            ..SimConfig::default()
        },
        &url,
    )
    .await;
    let run = Recorder::start(&cfg).await;
    wait_for("a few closed bars", Duration::from_secs(30), || async {
        store
            .load_klines(NAME, "btcusdt", "1min")
            .await
            .is_ok_and(|k| k.iter().filter(|k| k.closed).count() >= 4)
    })
    .await;
    // a bar vanishes from the middle of the grid (as if a write had been lost)
    let bars = store.load_klines(NAME, "btcusdt", "1min").await.unwrap();
    let lost = bars[bars.len() - 3].open_time_ms;
    exec(
        &store,
        &format!("DELETE FROM klines WHERE symbol = 'btcusdt' AND interval = '1min' AND open_time_ms = {lost}"),
    )
    .await;
    wait_for(
        "the audit to restore it",
        Duration::from_secs(30),
        || async {
            gaps(&store)
                .await
                .iter()
                .any(|g| g.start_ms == lost && g.status == GapStatus::Filled)
        },
    )
    .await;
    settle(&sim, &store, run).await;
    let all = gaps(&store).await;
    assert_eq!(all.len(), 1, "{all:#?}");
    let g = &all[0];
    assert_eq!((&*g.symbol, g.stream.as_str()), ("btcusdt", "kline_1min"));
    assert!(g.rows_recovered >= 1, "{g:?}");
    assert!(
        g.detail
            .as_deref()
            .is_some_and(|d| d.starts_with("kline audit")),
        "{g:?}"
    );
    store.close().await;
    sim.shutdown().await;
}

/// The venue restarted while the recorder was down and numbers on from the last trade it
/// had: its history no longer reaches that trade, but the next id follows it directly, so no
/// trade can be missing and the hole is filled, never `unrecoverable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_venue_numbering_on_after_a_restart_leaves_no_unrecoverable_trade_hole() {
    let (_dir, url) = sqlite_db();
    let (sim, store, cfg) = setup(SimConfig::default(), &url).await;
    let run = Recorder::start(&cfg).await;
    streaming(&sim, 20).await;
    settle(&sim, &store, run).await;
    let mut last: Vec<(&str, i64)> = Vec::new();
    for s in SYMBOLS {
        let ids = stored_ids(&store, s).await;
        last.push((s, *ids.last().expect("trades stored")));
    }
    sim.shutdown().await;

    // a new venue process: empty history, ids going on from the last trade
    let (sim, _, _) = setup(
        SimConfig {
            start_halted: true,
            seed: 5,
            ..SimConfig::default()
        },
        &url,
    )
    .await;
    for &(s, id) in &last {
        sim.reset_trade_ids(s, id + 1);
    }
    sim.resume();
    let run = Recorder::start(&config(&sim, &url, "")).await;
    streaming(&sim, 20).await;
    let trade_holes = || async {
        gaps(&store)
            .await
            .into_iter()
            .filter(|g| g.stream == "trades" && g.status != GapStatus::Open)
            .count()
    };
    wait_for("trade holes resolved", Duration::from_secs(30), || async {
        trade_holes().await >= SYMBOLS.len()
    })
    .await;
    run.stop().await;
    let trade_gaps: Vec<Gap> = gaps(&store)
        .await
        .into_iter()
        .filter(|g| g.stream == "trades")
        .collect();
    assert_eq!(trade_gaps.len(), SYMBOLS.len(), "{trade_gaps:?}");
    for g in &trade_gaps {
        let (_, id) = last.iter().find(|(s, _)| **s == *g.symbol).unwrap();
        assert_eq!(g.status, GapStatus::Filled, "{g:?}");
        let detail = g.detail.as_deref().unwrap_or_default();
        assert!(detail.contains(&id.to_string()), "{detail}");
    }
    store.close().await;
    sim.shutdown().await;
}
