//! TLS to the venue: a simulator serving `wss://` and `https://` with a certificate from a
//! private CA is recorded from once `[connection] ca_file` names that CA (websocket and REST
//! both trust it), and not without it (the built-in roots do not know the CA).

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::config::TestConfig;
use common::tls::test_ca;
use common::{Recorder, sqlite_db, stored_ids_of, wait_for};
use mdrec::config::Config;
use mdrec::sim::{self, SimConfig, SimHandle};
use mdrec::store::Store;

const KIND: &str = "cdc-v2";
const SYMBOL: &str = "BTC_USDT";

fn config(sim: &SimHandle, db_url: &str, extra: &str) -> Config {
    TestConfig::new(KIND, &sim.ws_url(), &sim.rest_url(), db_url)
        .symbols(&[SYMBOL])
        .streams("trades = true\nklines = [\"1m\"]\ndepth = 10\nticker = true")
        .backfill(true)
        .extra(extra)
        .build()
}

fn rest(stats: &mdrec::recorder::RunStats) -> &mdrec::stats::RestStats {
    stats.rest.as_deref().expect("a REST client")
}

async fn tls_sim() -> (SimHandle, common::tls::TestCa) {
    let ca = test_ca();
    let sim = sim::start(SimConfig {
        symbols: vec![SYMBOL.into()],
        tls: Some(ca.server.clone()),
        ..SimConfig::for_venue(KIND).expect("a simulator personality")
    })
    .await
    .expect("simulator starts");
    assert!(sim.ws_url().starts_with("wss://"), "{}", sim.ws_url());
    assert!(sim.rest_url().starts_with("https://"), "{}", sim.rest_url());
    (sim, ca)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_venue_behind_a_private_ca_is_recorded_with_ca_file() {
    let (sim, ca) = tls_sim().await;
    let (dir, url) = sqlite_db();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, &ca.ca_pem).expect("write CA");
    let cfg = config(
        &sim,
        &url,
        &format!(
            "[connection]\nca_file = {:?}\n",
            ca_path.display().to_string()
        ),
    );
    let run = Recorder::start(&cfg).await;
    let store = Store::connect(&url).await.expect("open db");
    wait_for("trades over wss", Duration::from_secs(60), || async {
        stored_ids_of(&store, KIND, SYMBOL).await.len() >= 20
    })
    .await;
    // the listing and the start-up hole check went over https with the same trust
    wait_for(
        "REST answered over https",
        Duration::from_secs(30),
        || async { rest(&run.stats).ok.load(Ordering::Relaxed) > 0 },
    )
    .await;
    let stats = run.stop().await;
    let stored = stored_ids_of(&store, KIND, SYMBOL).await;
    let delivered = sim.delivered(SYMBOL);
    assert!(
        delivered.is_subset(&stored),
        "every trade the socket delivered is stored"
    );
    // the rest came from the venue's history over https (the start-up hole)
    let trades = store.load_trades(KIND, SYMBOL).await.expect("read trades");
    let from_rest: Vec<_> = trades
        .iter()
        .filter(|t| !delivered.contains(&t.trade_id))
        .collect();
    assert!(
        from_rest
            .iter()
            .all(|t| t.source == mdrec::model::Source::Rest),
        "what the socket did not deliver came from REST"
    );
    assert_eq!(
        rest(&stats).failed.load(Ordering::Relaxed),
        0,
        "no REST call failed"
    );
    println!(
        "over TLS: {} trades stored: {} delivered by wss, {} from https history; {} REST calls answered",
        stored.len(),
        delivered.len(),
        from_rest.len(),
        rest(&stats).ok.load(Ordering::Relaxed)
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_ca_file_the_private_ca_is_not_trusted() {
    let (sim, _ca) = tls_sim().await;
    let (_dir, url) = sqlite_db();
    let run = Recorder::start(&config(&sim, &url, "")).await;
    wait_for(
        "connect attempts refused by certificate checks",
        Duration::from_secs(30),
        || async {
            let w = run.stats.worker(SYMBOL);
            let failed = w.reconnects.lock().unwrap().get("connect_failed").copied();
            failed.unwrap_or(0) >= 2
        },
    )
    .await;
    let stats = run.stop().await;
    let store = Store::connect(&url).await.expect("open db");
    assert!(
        stored_ids_of(&store, KIND, SYMBOL).await.is_empty(),
        "nothing recorded from a venue whose certificate is not trusted"
    );
    assert_eq!(stats.worker(SYMBOL).frames.load(Ordering::Relaxed), 0);
    assert_eq!(sim.state().subscriptions, 0, "no subscription got through");
    sim.shutdown().await;
}
