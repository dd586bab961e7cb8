//! Today's Crypto.com Exchange API and its v2 dialect, end to end: the simulator's exchange
//! personality -> the recorder -> SQLite and PostgreSQL, compared with the simulator's ledger
//! (trades, final bars, the book `mdrec book --json` rebuilds), under faults.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::config::TestConfig;
use common::{PgDb, Recorder, sqlite_db, stored_trades_of, wait_for};
use mdrec::config::Config;
use mdrec::decimal::Dec;
use mdrec::model::{Gap, GapStatus, Source};
use mdrec::sim::{self, SimConfig, SimHandle};
use mdrec::store::Store;

const SYMBOLS: [&str; 3] = ["BTC_USD", "BTCUSD-PERP", "HPX_USD"];
/// trades, 1m and 5m candlesticks, the book, the ticker
const CHANNELS_PER_SYMBOL: usize = 5;

fn depth(kind: &str) -> i16 {
    if kind == "cdc-v2" { 150 } else { 50 }
}

fn sim_config(kind: &str) -> SimConfig {
    SimConfig {
        symbols: SYMBOLS.iter().map(|s| s.to_string()).collect(),
        heartbeat_interval: Duration::from_millis(500),
        heartbeat_timeout: Duration::from_secs(2),
        empty_delta_interval: Duration::from_millis(300),
        ..SimConfig::for_venue(kind).expect("a simulated venue")
    }
}

fn test_config(kind: &str, sim: &SimHandle, db_url: &str, extra: &str) -> TestConfig {
    TestConfig::new(kind, &sim.ws_url(), &sim.rest_url(), db_url)
        .symbols(&SYMBOLS)
        .streams(&format!(
            "trades = true\nklines = [\"1m\", \"5m\"]\ndepth = {}\nticker = true",
            depth(kind)
        ))
        .extra(extra)
}

fn config_text(kind: &str, sim: &SimHandle, db_url: &str, extra: &str) -> String {
    test_config(kind, sim, db_url, extra).text()
}

fn config(kind: &str, sim: &SimHandle, db_url: &str, extra: &str) -> Config {
    test_config(kind, sim, db_url, extra).build()
}

type BookSides = (Vec<(String, String)>, Vec<(String, String)>);

fn levels(v: &[(rust_decimal::Decimal, rust_decimal::Decimal)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(p, q)| (Dec::from(*p).to_string(), Dec::from(*q).to_string()))
        .collect()
}

fn dec_levels(v: &[(Dec, Dec)], n: usize) -> Vec<(String, String)> {
    v.iter()
        .take(n)
        .map(|(p, q)| (p.to_string(), q.to_string()))
        .collect()
}

/// The newest book the database rebuilds, top `n` levels a side.
async fn stored_book(store: &Store, kind: &'static str, s: &str, n: usize) -> Option<BookSides> {
    match mdrec::coverage::book_at(store, kind, s, depth(kind), None).await {
        Ok(mdrec::coverage::BookAt::Book(b)) => {
            Some((dec_levels(&b.bids, n), dec_levels(&b.asks, n)))
        }
        _ => None,
    }
}

fn sim_book(sim: &SimHandle, s: &str, n: usize) -> Option<BookSides> {
    let (bids, asks) = sim.book(s, 0, n)?;
    Some((levels(&bids), levels(&asks)))
}

fn kind_of(sim: &SimHandle) -> &'static str {
    sim.config.venue
}

/// True when every symbol's stored trades are the ledger's from the first stored to the
/// last stored (the market may still be trading), and the last stored is the ledger's last
/// when `to_the_end`.
async fn trades_match_ledger(store: &Store, sim: &SimHandle, to_the_end: bool) -> bool {
    for s in SYMBOLS {
        let got = stored_trades_of(store, kind_of(sim), s).await;
        let (Some(first), Some(last)) = (got.keys().next().copied(), got.keys().last().copied())
        else {
            return false;
        };
        let mut want = common::ledger_from(sim, s, first);
        if to_the_end && want.keys().last() != Some(&last) {
            return false;
        }
        want.retain(|id, _| *id <= last);
        if got != want {
            return false;
        }
    }
    true
}

async fn trades_equal_ledger(store: &Store, sim: &SimHandle) -> bool {
    trades_match_ledger(store, sim, true).await
}

async fn books_equal(store: &Store, sim: &SimHandle, n: usize) -> bool {
    for s in SYMBOLS {
        let want = sim_book(sim, s, n);
        if want.is_none() || stored_book(store, kind_of(sim), s, n).await != want {
            return false;
        }
    }
    true
}

/// `mdrec book --json` on the recorder's configuration.
fn book_cli(cfg_text: &str, s: &str, n: usize) -> serde_json::Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, cfg_text).expect("write config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mdrec"))
        .args(["book", "-c"])
        .arg(&path)
        .args(["--symbol", s, "--depth", &n.to_string(), "--json"])
        .env_remove("MDREC_DATABASE_URL")
        .output()
        .expect("run mdrec book");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("book JSON")
}

/// Gap rows of both kinds (empty while the database cannot be read).
async fn gaps(store: &Store) -> Vec<Gap> {
    let mut out = Vec::new();
    for kind in ["cdc-exchange", "cdc-v2"] {
        out.extend(store.load_gaps(kind, None).await.unwrap_or_default());
    }
    out
}

async fn record_and_compare(kind: &'static str, db_url: &str, label: &str) {
    let sim = sim::start(SimConfig {
        start_halted: true,
        ..sim_config(kind)
    })
    .await
    .expect("simulator starts");
    let text = config_text(kind, &sim, db_url, "");
    let cfg = config(kind, &sim, db_url, "");
    let run = Recorder::start(&cfg).await;
    assert!(
        sim.wait_subscriptions(SYMBOLS.len() * CHANNELS_PER_SYMBOL, Duration::from_secs(30))
            .await,
        "recorder did not subscribe"
    );
    sim.resume();
    wait_for("enough trades", Duration::from_secs(60), || async {
        SYMBOLS.iter().all(|s| sim.trades(s).len() >= 200)
    })
    .await;
    // a halted market keeps its books quiet: they stay live on empty deltas and heartbeats
    sim.halt();
    let store = Store::connect(db_url).await.expect("open db for reading");
    wait_for(
        "database to hold every trade and the final books",
        Duration::from_secs(30),
        || async { trades_equal_ledger(&store, &sim).await && books_equal(&store, &sim, 50).await },
    )
    .await;
    let answered_before = {
        let st = sim.state();
        (st.heartbeat_closes, st.connections_total)
    };
    // quiet for three more heartbeats (and empty-delta periods): nothing closes, nothing
    // resubscribes
    let pings = || {
        run.stats
            .worker(SYMBOLS[0])
            .pings_answered
            .load(Ordering::Relaxed)
    };
    let before = pings();
    wait_for(
        "three more heartbeats answered",
        Duration::from_secs(30),
        || async { pings() >= before + 3 },
    )
    .await;
    let stats = run.stop().await;
    {
        let st = sim.state();
        assert_eq!(st.heartbeat_closes, 0, "every heartbeat answered");
        assert_eq!((st.heartbeat_closes, st.connections_total), answered_before);
        assert_eq!(
            st.rate_refusals + st.cap_refusals + st.bad_channel_refusals,
            0
        );
    }
    let mut pings = 0;
    for (s, w) in stats.workers.all() {
        assert_eq!(
            w.decode_errors.load(Ordering::Relaxed),
            0,
            "{s} decode errors"
        );
        assert_eq!(w.book_breaks.load(Ordering::Relaxed), 0, "{s} book breaks");
        assert_eq!(
            w.resubscribes.load(Ordering::Relaxed),
            0,
            "{s} resubscribes"
        );
        pings += w.pings_answered.load(Ordering::Relaxed);
    }
    assert!(pings > 0, "heartbeats were answered");

    let mut figures = Vec::new();
    for s in SYMBOLS {
        // every trade once, exact, from the socket (the market was halted before subscribing)
        let stored = store.load_trades(kind, s).await.expect("load trades");
        let ledger = sim.trades(s);
        assert_eq!(stored.len(), ledger.len(), "{s}: trade count");
        for (db, l) in stored.iter().zip(&ledger) {
            assert_eq!(db.trade_id, l.id);
            assert!(
                db.trade_id > 1_000_000_000_000_000_000,
                "19-digit ids kept exact"
            );
            assert_eq!(
                (db.side, &db.price, &db.qty, db.event_time_ms),
                (l.side, &Dec::from(l.price), &Dec::from(l.qty), l.time_ms),
                "{s} trade {}",
                l.id
            );
            assert_eq!(db.source, Source::Ws);
        }
        // every bar's final OHLCV; all but the newest closed
        for iv in ["1m", "5m"] {
            let ledger = sim.bars(s, iv);
            let stored = store.load_klines(kind, s, iv).await.expect("load klines");
            assert_eq!(stored.len(), ledger.len(), "{s} {iv}: bar count");
            for (i, (k, b)) in stored.iter().zip(&ledger).enumerate() {
                assert_eq!(
                    (
                        k.open_time_ms,
                        &k.open,
                        &k.high,
                        &k.low,
                        &k.close,
                        &k.volume
                    ),
                    (
                        b.open_time_ms,
                        &Dec::from(b.open),
                        &Dec::from(b.high),
                        &Dec::from(b.low),
                        &Dec::from(b.close),
                        &Dec::from(b.volume)
                    ),
                    "{s} {iv} bar {i}"
                );
                assert_eq!(k.closed, i + 1 < stored.len(), "{s} {iv} bar {i} closed");
            }
        }
        // the book the command line rebuilds is the venue's, at depth 10 and 50
        for n in [10, 50] {
            let v = book_cli(&text, s, n);
            let (bids, asks) = sim.book(s, 0, n).expect("sim book");
            let side = |l: &[(rust_decimal::Decimal, rust_decimal::Decimal)]| -> serde_json::Value {
                levels(l)
                    .into_iter()
                    .map(|(p, q)| serde_json::json!([p, q]))
                    .collect()
            };
            assert_eq!(
                (&v["bids"], &v["asks"]),
                (&side(&bids), &side(&asks)),
                "{s} book at depth {n}"
            );
            assert_eq!(
                v["bids"].as_array().map(Vec::len),
                Some(n),
                "{s}: {n} bid levels"
            );
        }
        figures.push(format!("{s} {} trades", ledger.len()));
    }
    let counts = store.table_counts().await.expect("counts");
    let count = |t: &str| counts.iter().find(|(n, _)| *n == t).map_or(0, |(_, c)| *c);
    assert!(count("tickers") > 0, "tickers stored");
    // the ticker's best bid and ask, with their sizes: a top-of-book series
    for s in SYMBOLS {
        let tickers = store
            .tickers_page(kind, s, i64::MIN, (i64::MIN, i64::MAX), 1_000_000)
            .await
            .expect("tickers");
        assert!(!tickers.is_empty(), "{s}: tickers");
        for t in &tickers {
            let (Some(b), Some(bq), Some(a), Some(aq)) = (&t.bid, &t.bid_qty, &t.ask, &t.ask_qty)
            else {
                panic!("{s}: a ticker without its best bid and ask: {t:?}");
            };
            assert!(b < a, "{s}: bid {} below ask {}", b.as_str(), a.as_str());
            assert!(!bq.is_zero() && !aq.is_zero(), "{s}: sizes {t:?}");
        }
    }
    if kind == "cdc-exchange" {
        assert!(count("book_deltas") > 0, "deltas stored");
    }
    let sessions = common::session_reasons(&store).await;
    assert_eq!(
        sessions.len(),
        SYMBOLS.len(),
        "one connection, one session row per symbol: {sessions:?}"
    );
    eprintln!(
        "{label} {kind}: {}; rows {counts:?}; heartbeats answered {pings}; one socket for {} channels",
        figures.join(", "),
        SYMBOLS.len() * CHANNELS_PER_SYMBOL
    );
    store.close().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_exchange_equals_the_ledger() {
    let (_dir, url) = sqlite_db();
    record_and_compare("cdc-exchange", &url, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_v2_equals_the_ledger() {
    let (_dir, url) = sqlite_db();
    record_and_compare("cdc-v2", &url, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_exchange_equals_the_ledger() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    record_and_compare("cdc-exchange", &db.url, "postgres").await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_v2_equals_the_ledger() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    record_and_compare("cdc-v2", &db.url, "postgres").await;
    db.drop_db().await;
}

const BACKFILL: &str = "[backfill]\nenabled = true\n[connection]\nsilence_timeout_s = 2\nchannel_silence_s = 30\nreconnect_initial_ms = 50\nreconnect_max_s = 1\n";

/// Every stretch of trades the live socket missed, filled from `public/get-trades`.
async fn faults(kind: &'static str, db_url: &str, label: &str) {
    let sim = sim::start(SimConfig {
        seed: 7,
        ..sim_config(kind)
    })
    .await
    .expect("simulator starts");
    let cfg = config(kind, &sim, db_url, BACKFILL);
    let store = Store::connect(db_url).await.expect("open db");
    let run = Recorder::start(&cfg).await;
    let n = SYMBOLS.len() * CHANNELS_PER_SYMBOL;
    let grown = |by: usize| {
        let base: Vec<usize> = SYMBOLS.iter().map(|s| sim.trades(s).len()).collect();
        move |sim: &SimHandle| {
            SYMBOLS
                .iter()
                .zip(&base)
                .all(|(s, b)| sim.trades(s).len() >= b + by)
        }
    };
    assert!(sim.wait_subscriptions(n, Duration::from_secs(30)).await);

    // a sequence break: a hole of that book stream, the book right again after the re-sync
    if kind == "cdc-exchange" {
        sim.break_book_sequence("BTC_USD", 1);
        wait_for("the break on record", Duration::from_secs(20), || async {
            gaps(&store).await.iter().any(|g| {
                g.stream == "book_50"
                    && g.status == GapStatus::Unrecoverable
                    && &*g.symbol == "BTC_USD"
            })
        })
        .await;
        wait_for("the book re-synced", Duration::from_secs(20), || async {
            run.stats
                .workers
                .all()
                .into_iter()
                .map(|(_, w)| w)
                .any(|w| w.resubscribes.load(Ordering::Relaxed) > 0)
        })
        .await;
    }
    // hostile frames: counted and skipped, the connection goes on
    for h in [
        sim::Hostile::MalformedJson,
        sim::Hostile::CorruptGzip,
        sim::Hostile::UnknownEvent,
        sim::Hostile::Invalid(sim::BadValue::TradePriceZero),
        sim::Hostile::Invalid(sim::BadValue::KlineHighBelowLow),
    ] {
        sim.inject(h);
    }
    // unanswered heartbeats: the venue closes the socket
    let closes = sim.state().heartbeat_closes;
    sim.lose_heartbeat_answers(true);
    wait_for("a heartbeat close", Duration::from_secs(20), || async {
        sim.state().heartbeat_closes > closes
    })
    .await;
    sim.lose_heartbeat_answers(false);
    // a cut while REST is throttled: backfill waits out the 429s
    sim.throttle_rest(true);
    let g = grown(30);
    wait_for("trading", Duration::from_secs(20), || async { g(&sim) }).await;
    sim.cut_connections();
    wait_for(
        "the reconnect's backfill throttled",
        Duration::from_secs(20),
        || async {
            run.stats
                .rest
                .as_ref()
                .is_some_and(|r| r.throttled.load(Ordering::Relaxed) > 0)
        },
    )
    .await;
    sim.throttle_rest(false);
    // a stall: open but silent past the silence timeout
    let before = sim.state().connections_total;
    sim.mute(true);
    wait_for("a silence reconnect", Duration::from_secs(20), || async {
        sim.state().connections_total > before
    })
    .await;
    sim.mute(false);
    // dropped trade frames on a live socket
    sim.withhold_trade_frames("BTCUSD-PERP", 5);
    let g = grown(60);
    wait_for("trading", Duration::from_secs(20), || async { g(&sim) }).await;
    assert!(sim.wait_subscriptions(n, Duration::from_secs(30)).await);
    let g = grown(30);
    wait_for("trading", Duration::from_secs(20), || async { g(&sim) }).await;
    sim.halt();
    wait_for(
        "every trade stored once, every trade hole closed, the books right",
        Duration::from_secs(90),
        || async {
            trades_equal_ledger(&store, &sim).await
                && gaps(&store)
                    .await
                    .iter()
                    .all(|g| g.stream != "trades" || g.status == GapStatus::Filled)
                && books_equal(&store, &sim, 50).await
        },
    )
    .await;
    let stats = run.stop().await;
    let all = gaps(&store).await;
    let decode: u64 = stats
        .workers
        .all()
        .into_iter()
        .map(|(_, w)| w)
        .map(|w| w.decode_errors.load(Ordering::Relaxed))
        .max()
        .unwrap_or(0);
    let invalid: u64 = stats
        .workers
        .all()
        .into_iter()
        .map(|(_, w)| w)
        .map(|w| {
            w.invalid_by_kind
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .sum::<u64>()
        })
        .max()
        .unwrap_or(0);
    assert!(decode >= 3, "hostile frames counted: {decode}");
    assert!(invalid >= 2, "invalid values counted: {invalid}");
    let (connections, heartbeat_closes) = {
        let st = sim.state();
        (st.connections_total, st.heartbeat_closes)
    };
    let recovered: i64 = all
        .iter()
        .filter(|g| g.stream == "trades")
        .map(|g| g.rows_recovered)
        .sum();
    assert!(recovered > 0, "REST recovered trades");
    let throttled = stats
        .rest
        .as_ref()
        .map_or(0, |r| r.throttled.load(Ordering::Relaxed));
    assert!(throttled > 0, "the 429s were waited out");
    eprintln!(
        "{label} {kind} faults: connections {}, heartbeat closes {}, gaps {} (trades filled, rows recovered {recovered}), \
         book breaks {}, decode errors {decode}, invalid {invalid}, rest throttled requests {}",
        connections,
        heartbeat_closes,
        all.len(),
        all.iter().filter(|g| g.stream.starts_with("book_")).count(),
        throttled,
    );
    store.close().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_exchange_faults_leave_no_trade_hole() {
    let (_dir, url) = sqlite_db();
    faults("cdc-exchange", &url, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_exchange_faults_leave_no_trade_hole() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    faults("cdc-exchange", &db.url, "postgres").await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_v2_faults_leave_no_trade_hole() {
    let (_dir, url) = sqlite_db();
    faults("cdc-v2", &url, "sqlite").await;
}

/// A restart whose hole holds more trades than one `get-trades` page is filled completely;
/// an outage longer than the venue's trade history is one `unrecoverable` gap with exact
/// bounds.
async fn restarts(kind: &'static str, db_url: &str, label: &str) {
    // ~300 trades a wall second per symbol; simulated time 6x: the venue keeps 36 simulated
    // seconds of trades (6 s of wall time: start-up and backfill fit in it)
    let history_ms = 36_000;
    let sim = sim::start(SimConfig {
        seed: 11,
        step: Duration::from_millis(5),
        speed: 6,
        trade_history_ms: Some(history_ms),
        ..sim_config(kind)
    })
    .await
    .expect("simulator starts");
    let cfg = config(kind, &sim, db_url, BACKFILL);
    let store = Store::connect(db_url).await.expect("open db");
    let n = SYMBOLS.len() * CHANNELS_PER_SYMBOL;

    let run = Recorder::start(&cfg).await;
    assert!(sim.wait_subscriptions(n, Duration::from_secs(30)).await);
    wait_for("recording", Duration::from_secs(20), || async {
        stored_trades_of(&store, kind, "BTC_USD").await.len() > 20
    })
    .await;
    run.stop().await;
    // a short restart: more than a page of trades missed, all still in the venue's history
    let before: BTreeMap<&str, usize> = SYMBOLS.iter().map(|s| (*s, sim.trades(s).len())).collect();
    let t0 = sim.state().now_ms();
    wait_for(
        "a hole bigger than a page",
        Duration::from_secs(20),
        || async {
            SYMBOLS
                .iter()
                .all(|s| sim.trades(s).len() >= before[s] + 200)
        },
    )
    .await;
    let elapsed = sim.state().now_ms() - t0;
    assert!(
        elapsed < history_ms,
        "the hole ({elapsed} ms) is inside the history window; slow machine?"
    );
    let run = Recorder::start(&cfg).await;
    wait_for(
        "the restart hole filled",
        Duration::from_secs(60),
        || async {
            let g = gaps(&store).await;
            trades_match_ledger(&store, &sim, false).await
                && g.iter().filter(|g| g.stream == "trades").count() >= SYMBOLS.len()
                && g.iter()
                    .filter(|g| g.stream == "trades")
                    .all(|g| g.status == GapStatus::Filled)
        },
    )
    .await;
    let filled: Vec<i64> = gaps(&store)
        .await
        .iter()
        .filter(|g| g.stream == "trades")
        .map(|g| g.rows_recovered)
        .collect();
    assert!(
        filled.iter().all(|r| *r > 150),
        "each symbol's hole took more than one page: {filled:?}"
    );
    run.stop().await;

    // a long outage: the venue's history no longer reaches the last trade stored
    let last: BTreeMap<&str, i64> = {
        let mut m = BTreeMap::new();
        for s in SYMBOLS {
            let t = stored_trades_of(&store, kind, s).await;
            m.insert(s, *t.keys().last().expect("trades"));
        }
        m
    };
    let t0 = sim.state().now_ms();
    wait_for(
        "an outage past the history",
        Duration::from_secs(30),
        || async { sim.state().now_ms() > t0 + history_ms },
    )
    .await;
    let run = Recorder::start(&cfg).await;
    wait_for("the outage on record", Duration::from_secs(30), || async {
        let g = gaps(&store).await;
        g.iter()
            .filter(|g| g.stream == "trades" && g.status == GapStatus::Unrecoverable)
            .count()
            == SYMBOLS.len()
            && common::recovered_parts_on_record(&g)
    })
    .await;
    sim.halt();
    let all = gaps(&store).await;
    for s in SYMBOLS {
        let ledger = sim.trades(s);
        let stored = stored_trades_of(&store, kind, s).await;
        let g = all
            .iter()
            .find(|g| {
                &*g.symbol == s && g.stream == "trades" && g.status == GapStatus::Unrecoverable
            })
            .expect("one unrecoverable gap");
        // exact bounds: from the last trade kept to the first trade the venue still had
        let kept = ledger
            .iter()
            .position(|t| t.id == last[s])
            .expect("in the ledger");
        let lost: Vec<i64> = ledger[kept + 1..]
            .iter()
            .take_while(|t| !stored.contains_key(&t.id))
            .map(|t| t.id)
            .collect();
        let first_back = &ledger[kept + 1 + lost.len()];
        assert!(!lost.is_empty(), "{s}: trades were lost");
        assert_eq!(
            g.start_ms, ledger[kept].time_ms,
            "{s}: starts at the last trade kept"
        );
        assert_eq!(
            g.end_ms,
            Some(first_back.time_ms),
            "{s}: ends at the first trade recovered"
        );
        let part = common::recovered_part(&all, g);
        assert!(
            part.rows_recovered > 0,
            "{s}: the part still in the history was recovered, on record as filled"
        );
        // and nothing after it is missing
        let after: Vec<i64> = ledger[kept + 1 + lost.len()..]
            .iter()
            .map(|t| t.id)
            .collect();
        wait_for("the rest stored", Duration::from_secs(30), || async {
            let stored = stored_trades_of(&store, kind, s).await;
            after.iter().all(|id| stored.contains_key(id))
        })
        .await;
        eprintln!(
            "{label} {kind} {s}: outage lost {} trades (ids {}..={}), gap {}..{:?} ms, recovered {}",
            lost.len(),
            lost[0],
            lost[lost.len() - 1],
            g.start_ms,
            g.end_ms,
            part.rows_recovered
        );
    }
    eprintln!("{label} {kind}: restart holes filled with {filled:?} trades from get-trades");
    run.stop().await;
    store.close().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_exchange_restart_and_outage_beyond_history() {
    let (_dir, url) = sqlite_db();
    restarts("cdc-exchange", &url, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_exchange_restart_and_outage_beyond_history() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    restarts("cdc-exchange", &db.url, "postgres").await;
    db.drop_db().await;
}

/// An outage longer than 200 pages of the venue's trade history (30,000 trades) is filled
/// from REST: the walk pages on to the anchor, the hole is `filled`, every trade is stored.
async fn long_outage(db_url: &str) {
    const SYMBOL: &str = "BTC_USD";
    // ~1,500 trades a wall second: 30,000 in about 20 s
    let sim = sim::start(SimConfig {
        seed: 17,
        symbols: vec![SYMBOL.into()],
        step: Duration::from_millis(1),
        speed: 6,
        ..SimConfig::for_venue("cdc-exchange").expect("exchange")
    })
    .await
    .expect("simulator starts");
    let cfg = TestConfig::new("cdc-exchange", &sim.ws_url(), &sim.rest_url(), db_url)
        .symbols(&[SYMBOL])
        .streams("trades = true")
        .extra("[backfill]\nenabled = true\nrate_per_s = 100\n")
        .build();
    let store = Store::connect(db_url).await.expect("open db");
    let stored = async || stored_trades_of(&store, "cdc-exchange", SYMBOL).await;
    let run = Recorder::start(&cfg).await;
    wait_for("recording", Duration::from_secs(30), || async {
        stored().await.len() > 20
    })
    .await;
    run.stop().await;
    let before = sim.trades(SYMBOL).len();
    let pages = 200 * mdrec::venue::cdc_exchange::venue::TRADES_PER_PAGE;
    wait_for(
        "an outage of more than 200 pages of trades",
        Duration::from_secs(180),
        || async { sim.trades(SYMBOL).len() > before + pages + 500 },
    )
    .await;
    let run = Recorder::start(&cfg).await;
    wait_for("the hole resolved", Duration::from_secs(180), || async {
        let g = gaps(&store).await;
        g.iter().any(|g| g.stream == "trades") && g.iter().all(|g| g.status != GapStatus::Open)
    })
    .await;
    let hole = gaps(&store).await;
    assert!(
        hole.iter().all(|g| g.status == GapStatus::Filled),
        "the venue holds every trade of the hole: {hole:?}"
    );
    let got = stored().await;
    let first = *got.keys().next().expect("trades");
    let last = *got.keys().last().expect("trades");
    let mut want = common::ledger_from(&sim, SYMBOL, first);
    want.retain(|id, _| *id <= last);
    assert_eq!(
        got.len(),
        want.len(),
        "every trade from the first stored on"
    );
    assert!(got == want, "stored trades equal the venue's");
    let recovered: i64 = hole.iter().map(|g| g.rows_recovered).sum();
    assert!(
        recovered > pages as i64,
        "more than 200 pages recovered over REST: {hole:?}"
    );
    run.stop().await;
    store.close().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_outage_longer_than_200_pages_is_filled() {
    let (_dir, url) = sqlite_db();
    long_outage(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_longer_than_200_pages_is_filled() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    long_outage(&db.url).await;
    db.drop_db().await;
}

/// 120 instruments x 4 channels: as few sockets as the 400 cap allows, no request refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_exchange_on_few_sockets_without_rate_errors() {
    let symbols: Vec<String> = (0..120).map(|i| format!("C{i:03}_USD")).collect();
    let sim = sim::start(SimConfig {
        symbols: symbols.clone(),
        step: Duration::from_millis(100),
        ..SimConfig::for_venue("cdc-exchange").expect("exchange")
    })
    .await
    .expect("simulator starts");
    let (_dir, url) = sqlite_db();
    let cfg = TestConfig::new("cdc-exchange", &sim.ws_url(), &sim.rest_url(), &url)
        .symbols(&symbols)
        .streams("trades = true\nklines = [\"1m\"]\ndepth = 10\nticker = true")
        .build();
    let run = Recorder::start(&cfg).await;
    assert!(
        sim.wait_subscriptions(480, Duration::from_secs(60)).await,
        "every channel subscribed: {}",
        sim.state().subscriptions
    );
    let store = Store::connect(&url).await.expect("open db");
    wait_for(
        "every instrument's trades stored",
        Duration::from_secs(60),
        || async {
            let mut all = true;
            for s in symbols.iter().step_by(17) {
                all &= !stored_trades_of(&store, "cdc-exchange", s).await.is_empty();
            }
            all
        },
    )
    .await;
    let sockets = run.stats.connections();
    run.stop().await;
    let sessions = common::session_reasons(&store).await;
    {
        let st = sim.state();
        assert_eq!(
            sockets, 2,
            "480 channels need two sockets under the 400 cap"
        );
        assert!(
            st.max_conn_subscriptions <= 400,
            "{}",
            st.max_conn_subscriptions
        );
        assert_eq!(
            (st.rate_refusals, st.cap_refusals, st.bad_channel_refusals),
            (0, 0, 0)
        );
        assert_eq!(
            sessions.len(),
            symbols.len(),
            "one session row per instrument"
        );
        eprintln!(
            "whole exchange: {} instruments x 4 channels on {sockets} sockets (at most {} channels on one), \
         0 requests refused",
            symbols.len(),
            st.max_conn_subscriptions
        );
    }
    store.close().await;
    sim.shutdown().await;
}
