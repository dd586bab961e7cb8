//! Simulator -> recorder -> real database, compared with the simulator's ledger.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{PgDb, recorder_config, sqlite_db, wait_for};
use mdrec::decimal::Dec;
use mdrec::model::Source;
use mdrec::sim::{self, Compression, DepthMode, NumberStyle, SimConfig, SimHandle};
use mdrec::store::Store;
use mdrec::venue::cdc_v1::NAME;
use tokio_util::sync::CancellationToken;

const SYMBOLS: [&str; 2] = ["btcusdt", "hpxusdt"];
/// trades, 2 kline intervals, depth, ticker
const CHANNELS_PER_SYMBOL: usize = 5;
const TRADES_PER_SYMBOL: usize = 250;

fn d(x: rust_decimal::Decimal) -> Dec {
    Dec::from(x)
}

/// Records a halted-then-resumed simulator until each symbol has traded enough, halts it,
/// waits until the database caught up, stops the recorder and compares everything.
async fn record_and_compare(db_url: &str, sim_cfg: SimConfig) {
    let sim = sim::start(SimConfig {
        symbols: SYMBOLS.iter().map(|s| s.to_string()).collect(),
        start_halted: true,
        ..sim_cfg
    })
    .await
    .expect("simulator starts");
    let cfg = recorder_config(&sim.ws_url(), &sim.rest_url(), db_url, &SYMBOLS, "");
    let stop = CancellationToken::new();
    let recorder = tokio::spawn(mdrec::recorder::run(cfg, stop.clone()));
    assert!(
        sim.wait_subscriptions(SYMBOLS.len() * CHANNELS_PER_SYMBOL, Duration::from_secs(20))
            .await,
        "recorder did not subscribe"
    );
    sim.resume();
    wait_for("enough trades", Duration::from_secs(60), || async {
        SYMBOLS
            .iter()
            .all(|s| sim.trades(s).len() >= TRADES_PER_SYMBOL)
    })
    .await;
    sim.halt();

    let store = Store::connect(db_url).await.expect("open db for reading");
    wait_for(
        "database to hold every trade and the final book",
        Duration::from_secs(30),
        || async {
            for s in SYMBOLS {
                let stored = store.load_trades(NAME, s).await.expect("load trades").len();
                if stored != sim.trades(s).len() {
                    return false;
                }
                let book = store.load_latest_book(NAME, s, 0).await.expect("load book");
                if book.map(|b| (levels(&b.bids), levels(&b.asks))) != sim_book(&sim, s) {
                    return false;
                }
            }
            true
        },
    )
    .await;
    stop.cancel();
    let stats = recorder
        .await
        .expect("recorder task")
        .expect("recorder run");
    for (s, w) in stats.workers.all() {
        assert_eq!(
            w.decode_errors.load(std::sync::atomic::Ordering::Relaxed),
            0,
            "{s} decode errors"
        );
    }
    compare_with_ledger(&store, &sim).await;
    store.close().await;
    sim.shutdown().await;
}

type Levels = Vec<(String, String)>;

fn levels(v: &[(Dec, Dec)]) -> Levels {
    v.iter()
        .map(|(p, q)| (p.to_string(), q.to_string()))
        .collect()
}

fn sim_book(sim: &SimHandle, symbol: &str) -> Option<(Levels, Levels)> {
    let (bids, asks) = sim.book(symbol, 0, 150)?;
    let conv = |v: Vec<(rust_decimal::Decimal, rust_decimal::Decimal)>| {
        v.into_iter()
            .map(|(p, q)| (d(p).to_string(), d(q).to_string()))
            .collect()
    };
    Some((conv(bids), conv(asks)))
}

async fn compare_with_ledger(store: &Store, sim: &SimHandle) {
    for s in SYMBOLS {
        // every trade exactly once, with exact side, price, quantity, amount and time
        let ledger = sim.trades(s);
        let stored = store.load_trades(NAME, s).await.expect("load trades");
        assert_eq!(stored.len(), ledger.len(), "{s}: trade count");
        for (db, l) in stored.iter().zip(&ledger) {
            assert_eq!(db.trade_id, l.id);
            assert_eq!(db.side, l.side, "{s} trade {}", l.id);
            assert_eq!(db.price, d(l.price), "{s} trade {} price", l.id);
            assert_eq!(db.qty, d(l.qty), "{s} trade {} qty", l.id);
            assert_eq!(db.quote_qty, Some(d(l.amount)), "{s} trade {} amount", l.id);
            assert_eq!(db.event_time_ms, l.time_ms);
            assert_eq!(db.source, Source::Ws);
            assert!(db.recv_time_us > 0);
        }
        if s.starts_with("hpx") {
            assert!(
                stored.iter().any(|t| t
                    .quote_qty
                    .as_ref()
                    .is_some_and(|q| q.significant_digits() >= 16)),
                "the high-precision market must exercise 16+ significant digits"
            );
        }
        // every bar's final OHLCV; all but the newest are closed
        for iv in ["1min", "5min"] {
            let ledger: BTreeMap<i64, _> = sim
                .bars(s, iv)
                .into_iter()
                .map(|b| (b.open_time_ms, b))
                .collect();
            let stored = store.load_klines(NAME, s, iv).await.expect("load klines");
            assert_eq!(stored.len(), ledger.len(), "{s} {iv}: bar count");
            for (i, k) in stored.iter().enumerate() {
                let l = &ledger[&k.open_time_ms];
                assert_eq!(
                    (
                        &k.open,
                        &k.high,
                        &k.low,
                        &k.close,
                        &k.volume,
                        k.quote_volume.as_ref()
                    ),
                    (
                        &d(l.open),
                        &d(l.high),
                        &d(l.low),
                        &d(l.close),
                        &d(l.volume),
                        Some(&d(l.amount))
                    ),
                    "{s} {iv} bar {}",
                    k.open_time_ms
                );
                assert_eq!(
                    k.closed,
                    i + 1 < stored.len(),
                    "{s} {iv} bar {} closed flag",
                    k.open_time_ms
                );
            }
        }
    }
    // the venue's listing, from REST at start-up
    let markets: Vec<(String, Option<String>, Option<i32>)> = match store {
        Store::Sqlite(s) => {
            sqlx::query_as("SELECT symbol, quote, price_precision FROM markets ORDER BY symbol")
                .fetch_all(s.pool())
                .await
                .expect("markets")
        }
        Store::Postgres(s) => {
            sqlx::query_as("SELECT symbol, quote, price_precision FROM markets ORDER BY symbol")
                .fetch_all(s.pool())
                .await
                .expect("markets")
        }
    };
    let want: Vec<(String, Option<String>, Option<i32>)> = SYMBOLS
        .iter()
        .map(|s| {
            let spec = mdrec::sim::market::MarketSpec::for_symbol(s);
            (
                s.to_string(),
                Some(spec.quote),
                Some(spec.price_scale as i32),
            )
        })
        .collect();
    assert_eq!(markets, want);
    // one session per symbol, closed by the shutdown
    let sessions = common::session_reasons(store).await;
    assert_eq!(
        sessions,
        SYMBOLS
            .iter()
            .map(|s| (s.to_string(), Some("shutdown".to_string())))
            .collect::<Vec<_>>()
    );
}

async fn sqlite_variant(cfg: SimConfig) {
    let (_dir, url) = sqlite_db();
    record_and_compare(&url, cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_strings_uppercase_sides() {
    sqlite_variant(SimConfig::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_json_numbers_lowercase_sides() {
    sqlite_variant(SimConfig {
        numbers: NumberStyle::Numbers,
        upper_sides: false,
        pad_decimals: false,
        seed: 2,
        ..SimConfig::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_mixed_numbers_no_acks_zlib() {
    sqlite_variant(SimConfig {
        numbers: NumberStyle::Mixed,
        acks: false,
        compression: Compression::Zlib,
        seed: 3,
        ..SimConfig::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_incremental_depth_plain_text() {
    sqlite_variant(SimConfig {
        depth_mode: DepthMode::Incremental,
        compression: Compression::None,
        seed: 4,
        ..SimConfig::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_fast_pings_are_answered() {
    // pings every 100 ms, two missed pongs hang up: the single session per symbol proves
    // the recorder answered every ping for the whole run
    sqlite_variant(SimConfig {
        ping_interval: Duration::from_millis(100),
        seed: 5,
        ..SimConfig::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_strings_uppercase_sides() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    record_and_compare(&db.url, SimConfig::default()).await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_numbers_incremental_depth_no_acks() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    record_and_compare(
        &db.url,
        SimConfig {
            numbers: NumberStyle::Numbers,
            depth_mode: DepthMode::Incremental,
            acks: false,
            upper_sides: false,
            seed: 6,
            ..SimConfig::default()
        },
    )
    .await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_reconnects_after_a_cut_and_stores_every_delivered_trade_once() {
    let (_dir, url) = sqlite_db();
    let sim = sim::start(SimConfig {
        symbols: SYMBOLS.iter().map(|s| s.to_string()).collect(),
        seed: 7,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let cfg = recorder_config(
        &sim.ws_url(),
        &sim.rest_url(),
        &url,
        &SYMBOLS,
        "[connection]\nreconnect_initial_ms = 50",
    );
    let stop = CancellationToken::new();
    let recorder = tokio::spawn(mdrec::recorder::run(cfg, stop.clone()));
    wait_for("trades before the cut", Duration::from_secs(30), || async {
        SYMBOLS.iter().all(|s| sim.delivered(s).len() >= 100)
    })
    .await;
    let before: Vec<usize> = SYMBOLS.iter().map(|s| sim.delivered(s).len()).collect();
    let connections_before = sim.state().connections_total;
    sim.cut_connections();
    wait_for(
        "reconnect and more trades",
        Duration::from_secs(30),
        || async {
            sim.state().connections_total >= connections_before + SYMBOLS.len() as u64
                && SYMBOLS
                    .iter()
                    .zip(&before)
                    .all(|(s, n)| sim.delivered(s).len() >= n + 100)
        },
    )
    .await;
    sim.halt();
    let store = Store::connect(&url).await.unwrap();
    common::wait_stored_equals_delivered(&store, &sim, &SYMBOLS).await;
    stop.cancel();
    recorder.await.unwrap().unwrap();
    for s in SYMBOLS {
        let stored = common::stored_ids(&store, s).await;
        assert_eq!(stored, sim.delivered(s), "{s}");
    }
    let Store::Sqlite(sq) = &store else {
        unreachable!()
    };
    let rows: Vec<(String, Option<i64>, Option<String>)> = sqlx::query_as(
        "SELECT symbol, disconnected_at_us, close_reason FROM sessions ORDER BY symbol, connected_at_us",
    )
    .fetch_all(sq.pool())
    .await
    .unwrap();
    for s in SYMBOLS {
        let mine: Vec<_> = rows.iter().filter(|r| r.0 == s).collect();
        assert_eq!(mine.len(), 2, "{s}: one session per connection: {mine:?}");
        assert!(mine.iter().all(|r| r.1.is_some()), "both closed");
        assert_ne!(
            mine[0].2.as_deref(),
            Some("shutdown"),
            "first ended by the cut"
        );
        assert_eq!(mine[1].2.as_deref(), Some("shutdown"));
    }
    common::report("cut", &store, &sim, &SYMBOLS).await;
    store.close().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_silent_socket_is_reopened() {
    let (_dir, url) = sqlite_db();
    let sim = sim::start(SimConfig {
        symbols: SYMBOLS.iter().map(|s| s.to_string()).collect(),
        seed: 8,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let cfg = recorder_config(
        &sim.ws_url(),
        &sim.rest_url(),
        &url,
        &SYMBOLS,
        "[connection]\nsilence_timeout_s = 1\nreconnect_initial_ms = 50",
    );
    let stop = CancellationToken::new();
    let recorder = tokio::spawn(mdrec::recorder::run(cfg, stop.clone()));
    wait_for(
        "trades before the silence",
        Duration::from_secs(30),
        || async { SYMBOLS.iter().all(|s| sim.delivered(s).len() >= 50) },
    )
    .await;
    let connections_before = sim.state().connections_total;
    sim.mute(true); // sockets stay open but carry nothing, not even pings
    wait_for(
        "the recorder to reopen silent sockets",
        Duration::from_secs(30),
        || async { sim.state().connections_total >= connections_before + SYMBOLS.len() as u64 },
    )
    .await;
    sim.mute(false);
    let before: Vec<usize> = SYMBOLS.iter().map(|s| sim.delivered(s).len()).collect();
    wait_for(
        "trades after the silence",
        Duration::from_secs(30),
        || async {
            SYMBOLS
                .iter()
                .zip(&before)
                .all(|(s, n)| sim.delivered(s).len() >= n + 50)
        },
    )
    .await;
    sim.halt();
    let store = Store::connect(&url).await.unwrap();
    common::wait_stored_equals_delivered(&store, &sim, &SYMBOLS).await;
    stop.cancel();
    recorder.await.unwrap().unwrap();
    let reasons = common::session_reasons(&store).await;
    for s in SYMBOLS {
        let mine: Vec<_> = reasons
            .iter()
            .filter(|r| r.0 == s)
            .map(|r| r.1.as_deref())
            .collect();
        assert!(mine.len() >= 2, "{s}: {mine:?}");
        assert_eq!(mine[0], Some("silent for 1s"), "{s}");
        assert_eq!(mine.last().copied().flatten(), Some("shutdown"));
        let stored = common::stored_ids(&store, s).await;
        assert_eq!(stored, sim.delivered(s), "{s}");
    }
    common::report("silent socket", &store, &sim, &SYMBOLS).await;
    store.close().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_channel_is_subscribed_again() {
    let (_dir, url) = sqlite_db();
    let sim = sim::start(SimConfig {
        symbols: SYMBOLS.iter().map(|s| s.to_string()).collect(),
        seed: 9,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let cfg = recorder_config(
        &sim.ws_url(),
        &sim.rest_url(),
        &url,
        &SYMBOLS,
        "[connection]\nchannel_silence_s = 1",
    );
    let stop = CancellationToken::new();
    let (_store, stats, tasks) = mdrec::recorder::start(
        cfg,
        std::sync::Arc::new(mdrec::venue::cdc_v1::CdcV1),
        stop.clone(),
    )
    .await
    .unwrap();
    let depth = "market_btcusdt_depth_step0";
    wait_for("subscribed", Duration::from_secs(30), || async {
        sim.state().sub_requests.get(depth).copied() == Some(1)
    })
    .await;
    sim.mute_channel(Some(depth));
    wait_for(
        "the silent depth channel to be subscribed again",
        Duration::from_secs(30),
        || async { sim.state().sub_requests.get(depth).copied().unwrap_or(0) >= 2 },
    )
    .await;
    sim.mute_channel(None);
    assert!(
        stats
            .worker("btcusdt")
            .resubscribes
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    assert_eq!(
        sim.state().connections_total,
        SYMBOLS.len() as u64,
        "resubscribed on the same socket"
    );
    stop.cancel();
    tasks.close();
    tasks.wait().await;
    sim.shutdown().await;
}
