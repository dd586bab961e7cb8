//! Connections, not symbols: a venue whose plan puts several symbols on one socket (the v1
//! protocol with its one-symbol limit lifted, subscriptions paced and after a pause) records
//! every symbol exactly as one socket per symbol does, with marks, counters and session rows
//! per symbol.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use common::venue::TestVenue;
use common::{PgDb, recorder_config, sqlite_db, stored_equals_ledger, wait_for};
use mdrec::sim::{self, SimConfig};
use mdrec::store::Store;
use mdrec::venue::{SocketLimits, Venue};
use tokio_util::sync::CancellationToken;

const SYMBOLS: [&str; 5] = ["btcusdt", "ethusdt", "hpxusdt", "solusdt", "xrpusdt"];
/// trades, 2 kline intervals, depth, ticker
const STREAMS_PER_SYMBOL: usize = 5;

const LIMITS: SocketLimits = SocketLimits {
    symbols: 3,
    streams: 100,
    sends_per_s: Some(40),
    settle: Duration::from_millis(100),
};

/// v1 on the wire, but three symbols to a socket, 40 frames a second, 100 ms after connecting.
fn multiplexed() -> TestVenue {
    TestVenue {
        limits: Some(LIMITS),
        ..TestVenue::default()
    }
}

/// (symbol, session_id, close_reason) of every session row.
async fn sessions(store: &Store) -> Vec<(String, String, Option<String>)> {
    const SQL: &str =
        "SELECT symbol, session_id, close_reason FROM sessions ORDER BY connected_at_us, symbol";
    match store {
        Store::Sqlite(s) => sqlx::query_as(SQL).fetch_all(s.pool()).await,
        Store::Postgres(s) => sqlx::query_as(SQL).fetch_all(s.pool()).await,
    }
    .expect("read sessions")
}

/// Symbols per session id.
fn by_session(rows: &[(String, String, Option<String>)]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (symbol, id, _) in rows {
        out.entry(id.clone()).or_default().insert(symbol.clone());
    }
    out
}

async fn several_symbols_per_connection(db_url: &str) {
    let plan = multiplexed().plan(
        &SYMBOLS.map(Arc::<str>::from),
        &recorder_config("ws://x", "http://x", db_url, &SYMBOLS, "").record,
    );
    let groups: Vec<Vec<&str>> = plan
        .iter()
        .map(|c| c.symbols.iter().map(|s| &**s).collect())
        .collect();
    assert_eq!(
        groups,
        [
            vec!["btcusdt", "ethusdt", "hpxusdt"],
            vec!["solusdt", "xrpusdt"]
        ]
    );

    let sim = sim::start(SimConfig {
        symbols: SYMBOLS.iter().map(|s| s.to_string()).collect(),
        start_halted: true,
        ..SimConfig::default()
    })
    .await
    .expect("simulator starts");
    let cfg = recorder_config(
        &sim.ws_url(),
        &sim.rest_url(),
        db_url,
        &SYMBOLS,
        "[backfill]\nenabled = true\nrate_per_s = 50\n",
    );
    let stop = CancellationToken::new();
    common::init_log();
    let (_, stats, tasks) = mdrec::recorder::start(cfg, Arc::new(multiplexed()), stop.clone())
        .await
        .expect("recorder starts");
    assert_eq!(stats.connections(), 2);
    assert!(
        sim.wait_subscriptions(SYMBOLS.len() * STREAMS_PER_SYMBOL, Duration::from_secs(20))
            .await,
        "recorder did not subscribe every stream"
    );
    assert_eq!(
        sim.state().connections_total,
        2,
        "two sockets for five symbols"
    );
    sim.resume();

    let store = Store::connect(db_url).await.expect("open db for reading");
    wait_for(
        "trades of every symbol",
        Duration::from_secs(60),
        || async {
            for s in SYMBOLS {
                if sim.trades(s).len() < 40 {
                    return false;
                }
            }
            true
        },
    )
    .await;
    // a cut: both sockets come back, each symbol's hole is its own
    sim.cut_connections();
    wait_for("both sockets back", Duration::from_secs(30), || async {
        sim.state().connections_total >= 4
    })
    .await;
    let before: Vec<usize> = SYMBOLS.iter().map(|s| sim.trades(s).len()).collect();
    wait_for("trades after the cut", Duration::from_secs(60), || async {
        SYMBOLS
            .iter()
            .zip(&before)
            .all(|(s, n)| sim.trades(s).len() >= n + 40)
    })
    .await;
    sim.halt();
    // every symbol's hole went to backfill under its own name: the database equals the ledger
    wait_for(
        "every symbol's stored trades to equal the ledger",
        Duration::from_secs(60),
        || async {
            if !stored_equals_ledger(&store, &sim, &SYMBOLS).await {
                return false;
            }
            // from the first trade on: the market was halted until every stream was subscribed
            for s in SYMBOLS {
                if common::stored_ids(&store, s).await.len() != sim.trades(s).len() {
                    return false;
                }
            }
            true
        },
    )
    .await;

    stop.cancel();
    tasks.close();
    tasks.wait().await;

    // each symbol's hole after the cut is its own row, filled from REST under its name
    for s in SYMBOLS {
        let gaps = store.load_gaps("cdc-v1", Some(s)).await.expect("load gaps");
        let trades: Vec<_> = gaps.iter().filter(|g| g.stream == "trades").collect();
        assert_eq!(trades.len(), 1, "{s}: {gaps:?}");
        assert_eq!(
            trades[0].status,
            mdrec::model::GapStatus::Filled,
            "{s}: {gaps:?}"
        );
        assert!(trades[0].rows_recovered > 0, "{s}: {gaps:?}");
    }
    // counters per symbol, routed by each event's symbol
    for s in SYMBOLS {
        let w = &stats.worker(s);
        let trades = w.trades.load(std::sync::atomic::Ordering::Relaxed) as usize;
        assert!(
            trades >= sim.delivered(s).len(),
            "{s}: {trades} trades counted"
        );
        assert_eq!(
            w.connects.load(std::sync::atomic::Ordering::Relaxed),
            2,
            "{s}"
        );
        let channels = w.channels.lock().expect("channels").len();
        assert_eq!(channels, STREAMS_PER_SYMBOL, "{s}: streams seen");
    }
    // one row per symbol and connection, the symbols of a socket sharing its id, all closed
    let rows = sessions(&store).await;
    assert_eq!(rows.len(), SYMBOLS.len() * 2, "{rows:?}");
    assert!(rows.iter().all(|r| r.2.is_some()), "{rows:?}");
    let groups: BTreeSet<BTreeSet<String>> = by_session(&rows).into_values().collect();
    let want: BTreeSet<BTreeSet<String>> = [
        SYMBOLS[..3].iter().map(|s| s.to_string()).collect(),
        SYMBOLS[3..].iter().map(|s| s.to_string()).collect(),
    ]
    .into();
    assert_eq!(groups, want);
    let cut: Vec<_> = rows
        .iter()
        .filter(|r| r.2.as_deref() != Some("shutdown"))
        .collect();
    assert_eq!(
        cut.len(),
        SYMBOLS.len(),
        "each symbol's first session ended by the cut: {rows:?}"
    );
    eprintln!(
        "several symbols per connection: {} symbols on {} sockets, {} session rows, {} trades stored",
        SYMBOLS.len(),
        stats.connections(),
        rows.len(),
        {
            let mut n = 0;
            for s in SYMBOLS {
                n += common::stored_ids(&store, s).await.len();
            }
            n
        }
    );
    store.close().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_several_symbols_per_connection() {
    let (_dir, url) = sqlite_db();
    several_symbols_per_connection(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_several_symbols_per_connection() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    several_symbols_per_connection(&db.url).await;
    db.drop_db().await;
}
