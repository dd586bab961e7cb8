//! Invalid values and hostile text from the venue, end to end (simulator, real recorder, real
//! SQLite and PostgreSQL): well-formed frames with a price of 0, a quantity of 0 or below,
//! exchange times of 0, -1 or i64::MAX, a 61-digit decimal, bars opening at 0 or -1 s, a
//! high below the low or at 0; a close frame whose reason carries NUL and escape codes; a
//! market listing with NUL in its names. Every invalid message is counted by kind and never
//! stored; every valid trade is stored; the hostile text is stored made safe, and nothing
//! poisons PostgreSQL.

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{PgDb, Recorder, recorder_config, sqlite_db, wait_for};
use mdrec::sim::{self, BadValue, Hostile, SimConfig};
use mdrec::store::Store;
use mdrec::venue::validate::Invalid;

const SYMBOLS: [&str; 2] = ["btcusdt", "ethusdt"];
const ROUNDS: u64 = 3;

async fn invalid_values_never_stored(db_url: &str) {
    let sim = sim::start(SimConfig {
        seed: 41,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    sim.hostile_text(true);
    let cfg = recorder_config(
        &sim.ws_url(),
        &sim.rest_url(),
        db_url,
        &SYMBOLS,
        "[connection]\nreconnect_initial_ms = 50",
    );
    let rec = Recorder::start(&cfg).await;
    wait_for("streaming", Duration::from_secs(30), || async {
        SYMBOLS.iter().all(|s| sim.delivered(s).len() >= 30)
    })
    .await;
    for _ in 0..ROUNDS {
        for v in BadValue::ALL {
            sim.inject(Hostile::Invalid(v));
        }
    }
    // every connection reads the btcusdt frames: btcusdt's counts them as invalid, ethusdt's
    // refuses the channel before validation
    let mut want: HashMap<&str, u64> = HashMap::new();
    for v in BadValue::ALL {
        *want.entry(v.kind()).or_default() += ROUNDS;
    }
    let total: u64 = want.values().sum();
    let w = rec.stats.worker("btcusdt").clone();
    let counted = |k: &str| {
        let i = Invalid::KINDS.iter().position(|x| *x == k).unwrap();
        w.invalid_by_kind[i].load(Ordering::Relaxed)
    };
    wait_for(
        "every invalid message counted",
        Duration::from_secs(30),
        || async { Invalid::KINDS.iter().map(|k| counted(k)).sum::<u64>() >= total },
    )
    .await;
    for k in Invalid::KINDS {
        assert_eq!(counted(k), want.get(k).copied().unwrap_or(0), "kind {k}");
    }

    // a close frame with NUL and escapes in its reason: recorded, made safe, and later
    // batches still go in
    let before = sim.state().connections_total;
    sim.inject(Hostile::CloseWithNul);
    wait_for(
        "reconnect after the close",
        Duration::from_secs(30),
        || async { sim.state().connections_total >= before + SYMBOLS.len() as u64 },
    )
    .await;
    let after: Vec<usize> = SYMBOLS.iter().map(|s| sim.delivered(s).len()).collect();
    wait_for("streaming again", Duration::from_secs(30), || async {
        SYMBOLS
            .iter()
            .zip(&after)
            .all(|(s, n)| sim.delivered(s).len() >= n + 30)
    })
    .await;
    sim.halt();
    let store = Store::connect(db_url).await.unwrap();
    common::wait_stored_equals_delivered(&store, &sim, &SYMBOLS).await;
    let stats = rec.stop().await;

    for s in SYMBOLS {
        let stored = common::stored_ids(&store, s).await;
        assert_eq!(
            stored,
            sim.delivered(s),
            "{s}: every valid trade, nothing invented"
        );
        for t in store.load_trades("cdc-v1", s).await.unwrap() {
            assert!(!t.price.is_zero() && !t.qty.is_zero(), "{t:?}");
            assert!(t.event_time_ms > 1_262_304_000_000, "{t:?}");
        }
        for iv in ["1min", "5min"] {
            for k in store.load_klines("cdc-v1", s, iv).await.unwrap() {
                assert!(k.open_time_ms > 1_262_304_000_000, "{k:?}");
                assert!(k.low <= k.high && !k.high.is_zero(), "{k:?}");
            }
        }
    }
    let reasons: Vec<String> = common::session_reasons(&store)
        .await
        .into_iter()
        .filter_map(|(_, r)| r)
        .collect();
    let closed: Vec<&String> = reasons
        .iter()
        .filter(|r| r.contains("maintenance"))
        .collect();
    assert_eq!(closed.len(), SYMBOLS.len(), "{reasons:?}");
    for r in closed {
        assert!(!r.contains('\0') && !r.contains('\u{1b}'), "{r:?}");
        assert!(
            r.contains("maintenance\u{fffd}\u{fffd}\u{fffd}[31m restart"),
            "{r:?}"
        );
    }
    let bases: Vec<Option<String>> = {
        let sql = "SELECT base FROM markets ORDER BY symbol";
        match &store {
            Store::Sqlite(s) => sqlx::query_scalar(sql).fetch_all(s.pool()).await,
            Store::Postgres(s) => sqlx::query_scalar(sql).fetch_all(s.pool()).await,
        }
        .unwrap()
    };
    assert!(!bases.is_empty(), "the listing was stored");
    for b in bases.iter().flatten() {
        assert!(!b.contains('\0') && b.contains('\u{fffd}'), "{b:?}");
    }
    // invalid UTF-8 in the listing's quote currencies: replaced, not refused
    let quotes: Vec<Option<String>> = {
        let sql = "SELECT quote FROM markets ORDER BY symbol";
        match &store {
            Store::Sqlite(s) => sqlx::query_scalar(sql).fetch_all(s.pool()).await,
            Store::Postgres(s) => sqlx::query_scalar(sql).fetch_all(s.pool()).await,
        }
        .unwrap()
    };
    for q in quotes.iter().flatten() {
        assert!(q.starts_with("\u{fffd}\u{fffd}x"), "{q:?}");
    }
    assert_eq!(
        stats.writer.spooled_rows.load(Ordering::Relaxed),
        0,
        "no write failed"
    );
    assert_eq!(stats.writer.rejected_rows.load(Ordering::Relaxed), 0);
    println!(
        "invalid ({}): {} invalid messages sent, {} counted ({:?}), 0 stored; {} valid trades delivered and stored",
        if db_url.starts_with("sqlite") {
            "SQLite"
        } else {
            "PostgreSQL"
        },
        total,
        Invalid::KINDS.iter().map(|k| counted(k)).sum::<u64>(),
        Invalid::KINDS.map(|k| (k, counted(k))),
        SYMBOLS
            .iter()
            .map(|s| sim.delivered(s).len())
            .sum::<usize>(),
    );
    store.close().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_invalid_values_are_counted_not_stored() {
    let (_dir, url) = sqlite_db();
    invalid_values_never_stored(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_invalid_values_are_counted_not_stored() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    invalid_values_never_stored(&db.url).await;
    db.drop_db().await;
}

/// On a connection carrying several symbols, an invalid message is counted against its own
/// symbol, not against every symbol the connection carries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_message_counts_against_its_own_symbol() {
    let symbols = ["BTC_USD", "ETH_USD", "SOL_USD"];
    let sim = sim::start(SimConfig {
        symbols: symbols.map(String::from).to_vec(),
        ..SimConfig::for_venue("cdc-exchange").expect("exchange")
    })
    .await
    .unwrap();
    let (_dir, url) = sqlite_db();
    let cfg = common::config::TestConfig::new("cdc-exchange", &sim.ws_url(), &sim.rest_url(), &url)
        .symbols(&symbols)
        .build();
    let rec = Recorder::start(&cfg).await;
    wait_for(
        "all symbols delivering",
        Duration::from_secs(30),
        || async { symbols.iter().all(|s| !sim.delivered(s).is_empty()) },
    )
    .await;
    let invalid = |s: &str| -> u64 {
        let w = rec.stats.worker(s).clone();
        w.invalid_by_kind
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .sum()
    };
    sim.inject(Hostile::Invalid(BadValue::TradePriceZero));
    wait_for(
        "the invalid trade counted",
        Duration::from_secs(30),
        || async { symbols.iter().map(|s| invalid(s)).sum::<u64>() > 0 },
    )
    .await;
    let counts: Vec<(&str, u64)> = symbols.iter().map(|s| (*s, invalid(s))).collect();
    assert_eq!(
        counts.iter().filter(|(_, n)| *n == 1).count(),
        1,
        "one symbol's message, one count: {counts:?}"
    );
    assert_eq!(counts.iter().map(|(_, n)| n).sum::<u64>(), 1, "{counts:?}");
    rec.stop().await;
    sim.shutdown().await;
}
