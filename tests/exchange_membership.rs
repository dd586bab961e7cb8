//! What today's exchange refuses and what it lists, end to end (simulator -> recorder ->
//! SQLite): a subscription cap lower than planned splits the connection, an unknown
//! instrument is refused once and never asked for again, requests over the rate are asked
//! again after a back-off, and `symbols = "all"` follows the listing (new instruments
//! recorded without a restart, delisted ones closed).

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::config::TestConfig;
use common::{Recorder, session_reasons, sqlite_db, stored_trades_of, wait_for};
use mdrec::sim::{self, SimConfig, SimHandle};
use mdrec::store::Store;
use mdrec::venue::RefusalKind;

const KIND: &str = "cdc-exchange";

fn config(sim: &SimHandle, db_url: &str) -> TestConfig {
    TestConfig::new(KIND, &sim.ws_url(), &sim.rest_url(), db_url)
        .streams("trades = true\nklines = [\"1m\"]\ndepth = 10\nticker = true")
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("C{i:03}_USD")).collect()
}

async fn all_have_trades(store: &Store, symbols: &[String]) -> bool {
    for s in symbols {
        if stored_trades_of(store, KIND, s).await.is_empty() {
            return false;
        }
    }
    true
}

/// 60 instruments x 4 channels on `sim`, recorded until every channel is subscribed and
/// every instrument has trades stored.
async fn recorded(sim: SimConfig) -> (SimHandle, tempfile::TempDir, Recorder, Store) {
    let symbols = sim.symbols.clone();
    let sim = sim::start(sim).await.expect("simulator starts");
    let (dir, url) = sqlite_db();
    let run = Recorder::start(&config(&sim, &url).symbols(&symbols).build()).await;
    assert!(
        sim.wait_subscriptions(4 * symbols.len(), Duration::from_secs(60))
            .await,
        "every channel subscribed: {}",
        sim.state().subscriptions
    );
    let store = Store::connect(&url).await.expect("open db");
    wait_for(
        "every instrument's trades stored",
        Duration::from_secs(60),
        || all_have_trades(&store, &symbols),
    )
    .await;
    (sim, dir, run, store)
}

fn refusals(run: &Recorder, symbol: &str, kind: RefusalKind) -> u64 {
    run.stats.worker(symbol).refusals_by_kind[kind.index()].load(Ordering::Relaxed)
}

/// The venue takes 100 channels a socket where the plan put 240 on one: the refused symbols
/// move to new connections until every channel is subscribed, and nothing is asked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lower_subscription_cap_splits_the_connection() {
    let symbols = names(60);
    let (sim, _dir, run, store) = recorded(SimConfig {
        symbols: symbols.clone(),
        step: Duration::from_millis(100),
        max_subscriptions: 100,
        ..SimConfig::for_venue(KIND).expect("exchange")
    })
    .await;
    let (refused, sockets, most) = {
        let st = sim.state();
        (
            st.cap_refusals,
            st.connections_total,
            st.max_conn_subscriptions,
        )
    };
    assert!(refused > 0, "the cap was hit");
    assert!(most <= 100, "{most}");
    assert!(
        sockets >= 3,
        "240 channels under a 100 cap: {sockets} sockets"
    );
    assert!(sockets <= 4, "as few as the cap allows: {sockets}");
    let hit = symbols
        .iter()
        .filter(|s| refusals(&run, s, RefusalKind::TooManyStreams) > 0)
        .count();
    assert!(hit > 0);
    // settled: every channel is held once, and nothing is refused any more
    let subs = sim.state().subscriptions;
    assert_eq!(subs, 240);
    wait_for(
        "trades flowing on every connection after the split",
        Duration::from_secs(30),
        || async {
            let mut n = 0;
            for s in symbols.iter().step_by(7) {
                n += stored_trades_of(&store, KIND, s).await.len();
            }
            n > 3 * symbols.len()
        },
    )
    .await;
    assert_eq!(
        sim.state().cap_refusals,
        refused,
        "no request was refused again"
    );
    let stats = run.stop().await;
    let reasons = session_reasons(&store).await;
    let moved_rows = reasons
        .iter()
        .filter(|(_, r)| {
            r.as_deref()
                .is_some_and(|r| r.starts_with("moved to another connection"))
        })
        .count();
    // the first connection kept the symbols its held streams cover (their refused streams
    // asked for again there); the others moved
    assert!(
        moved_rows > 0 && moved_rows < symbols.len(),
        "{moved_rows}: {reasons:?}"
    );
    assert!(
        reasons.iter().all(|(_, r)| r.is_some()),
        "every session closed"
    );
    eprintln!(
        "subscription cap 100: 240 channels on {sockets} sockets (at most {most} on one), \
         {refused} channels refused with 40107 ({hit} symbols hit), {moved_rows} symbols moved, \
         {} connections at the end",
        stats.connections()
    );
    store.close().await;
    sim.shutdown().await;
}

/// An instrument the venue does not know: its channels are refused once, named, and never
/// asked for again, not after a silence check and not after a reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_instrument_is_refused_once_and_never_asked_again() {
    let symbols: Vec<String> = ["BTC_USD", "ETH_USD"].map(String::from).to_vec();
    let sim = sim::start(SimConfig {
        symbols: symbols.clone(),
        ..SimConfig::for_venue(KIND).expect("exchange")
    })
    .await
    .expect("simulator starts");
    let (_dir, url) = sqlite_db();
    let mut configured = symbols.clone();
    configured.push("NOPE_USD".into());
    let mut cfg = config(&sim, &url)
        .symbols(&configured)
        .extra("[connection]\nchannel_silence_s = 1")
        .build();
    // recorded although the listing does not name it: what the venue then does
    cfg.record.allow_unlisted = true;
    let run = Recorder::start(&cfg).await;
    wait_for(
        "the unknown instrument's four channels refused",
        Duration::from_secs(30),
        || async { refusals(&run, "NOPE_USD", RefusalKind::BadRequest) == 4 },
    )
    .await;
    let store = Store::connect(&url).await.expect("open db");
    wait_for("the others recorded", Duration::from_secs(30), || {
        all_have_trades(&store, &symbols)
    })
    .await;
    let connects = run.stats.worker("BTC_USD").connects.load(Ordering::Relaxed);
    sim.cut_connections();
    wait_for(
        "reconnected and recording",
        Duration::from_secs(30),
        || async {
            run.stats.worker("BTC_USD").connects.load(Ordering::Relaxed) > connects
                && sim.state().subscriptions == 8
        },
    )
    .await;
    let before = stored_trades_of(&store, KIND, "BTC_USD").await.len();
    wait_for(
        "trades after the reconnect (past several silence checks)",
        Duration::from_secs(30),
        || async { stored_trades_of(&store, KIND, "BTC_USD").await.len() > before + 20 },
    )
    .await;
    assert_eq!(
        sim.state().bad_channel_refusals,
        4,
        "asked for once, never again"
    );
    assert_eq!(refusals(&run, "NOPE_USD", RefusalKind::BadRequest), 4);
    assert_eq!(refusals(&run, "BTC_USD", RefusalKind::BadRequest), 0);
    run.stop().await;
    eprintln!(
        "unknown instrument: 4 channels refused once; {} trades of BTC_USD recorded meanwhile",
        stored_trades_of(&store, KIND, "BTC_USD").await.len()
    );
    store.close().await;
    sim.shutdown().await;
}

/// The venue takes two requests a second where the recorder sends six at once: the refused
/// ones are asked again after a back-off until every channel is subscribed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_rate_are_asked_again_after_a_back_off() {
    let symbols = names(60);
    let (sim, _dir, run, store) = recorded(SimConfig {
        symbols: symbols.clone(),
        requests_per_s: 2,
        ..SimConfig::for_venue(KIND).expect("exchange")
    })
    .await;
    let (limited, sockets) = {
        let st = sim.state();
        (st.rate_refusals, st.connections_total)
    };
    assert!(limited > 0, "the rate was hit");
    assert_eq!(sockets, 1, "a rate refusal is no reason to reconnect");
    let counted: u64 = symbols
        .iter()
        .map(|s| refusals(&run, s, RefusalKind::RateLimited))
        .sum();
    assert!(counted > 0);
    run.stop().await;
    eprintln!("request rate 2/s: {limited} requests refused with 42901, all asked again");
    store.close().await;
    sim.shutdown().await;
}

/// `symbols = "all"`: the listing's spot instruments are recorded; one listed later is
/// recorded without a restart; a delisted one is unsubscribed and its session closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_symbols_follow_the_listing() {
    let sim = sim::start(SimConfig {
        symbols: ["BTC_USD", "ETH_USD", "BTCUSD-PERP"]
            .map(String::from)
            .to_vec(),
        ..SimConfig::for_venue(KIND).expect("exchange")
    })
    .await
    .expect("simulator starts");
    let (_dir, url) = sqlite_db();
    let cfg = config(&sim, &url)
        .all()
        .record("instrument_types = [\"spot\"]\nrelist_interval_s = 1")
        .build();
    let run = Recorder::start(&cfg).await;
    assert_eq!(run.stats.workers.symbols(), ["BTC_USD", "ETH_USD"]);
    let store = Store::connect(&url).await.expect("open db");
    let spot: Vec<String> = ["BTC_USD", "ETH_USD"].map(String::from).to_vec();
    wait_for(
        "the listed spot pairs recorded",
        Duration::from_secs(30),
        || all_have_trades(&store, &spot),
    )
    .await;
    sim.list("SOL_USD");
    sim.list("SOLUSD-PERP");
    wait_for(
        "the newly listed spot pair recorded",
        Duration::from_secs(30),
        || async { !stored_trades_of(&store, KIND, "SOL_USD").await.is_empty() },
    )
    .await;
    assert!(
        sim.wait_subscriptions(12, Duration::from_secs(30)).await,
        "three spot pairs, four channels each"
    );
    let ledger = sim.delist("ETH_USD").expect("listed");
    wait_for(
        "the delisted pair unsubscribed",
        Duration::from_secs(30),
        || async { sim.state().subscriptions == 8 },
    )
    .await;
    wait_for(
        "the delisted pair's session closed as delisted",
        Duration::from_secs(30),
        || async {
            let rows = session_reasons(&store).await;
            let eth: Vec<_> = rows.iter().filter(|(s, _)| s == "ETH_USD").collect();
            eth.iter().all(|(_, r)| r.is_some())
                && eth
                    .last()
                    .and_then(|(_, r)| r.as_deref())
                    .is_some_and(|r| r.starts_with("delisted"))
        },
    )
    .await;
    assert!(run.stats.workers.get("ETH_USD").is_none());
    let stored_eth = stored_trades_of(&store, KIND, "ETH_USD").await;
    assert!(
        stored_eth
            .keys()
            .all(|id| ledger.trades.iter().any(|t| t.id == *id)),
        "ETH_USD's stored trades are the venue's"
    );
    let stats = run.stop().await;
    let reasons = session_reasons(&store).await;
    assert!(
        reasons.iter().all(|(s, _)| !s.ends_with("-PERP")),
        "perpetuals are not recorded: {reasons:?}"
    );
    assert!(
        reasons.iter().all(|(_, r)| r.is_some()),
        "every session closed"
    );
    let listed: Vec<(String,)> = match &store {
        Store::Sqlite(s) => sqlx::query_as("SELECT symbol FROM markets ORDER BY symbol")
            .fetch_all(s.pool())
            .await
            .expect("markets"),
        Store::Postgres(_) => unreachable!("SQLite test"),
    };
    let listed: Vec<String> = listed.into_iter().map(|(s,)| s).collect();
    assert!(listed.contains(&"SOL_USD".to_string()), "{listed:?}");
    eprintln!(
        "symbols = \"all\": recorded {:?} at the end on {} connections; ETH_USD delisted after {} trades",
        stats.workers.symbols(),
        stats.connections(),
        stored_eth.len()
    );
    store.close().await;
    sim.shutdown().await;
}
