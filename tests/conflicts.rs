//! Key conflicts are visible: when the venue renumbers its trades (a restart reusing ids),
//! the recorder logs an id reset and records a gap row over the ambiguous stretch, and every
//! later trade whose id is stored with other content is kept, with the stored version, in
//! `rejected_rows` and counted: not one trade the venue published is lost silently. On
//! SQLite and PostgreSQL, compared with the simulator's ledger.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{PgDb, Recorder, recorder_config, sqlite_db, wait_for};
use mdrec::decimal::Dec;
use mdrec::model::{Event, Side, Trade};
use mdrec::sim::market::SimTrade;
use mdrec::sim::{self, SimConfig};
use mdrec::store::Store;
use serde::Deserialize;

const SYMBOL: &str = "btcusdt";

type Content = (i64, Side, Dec, Dec, i64);

fn of_sim(t: &SimTrade) -> Content {
    (
        t.id,
        t.side,
        Dec::from(t.price),
        Dec::from(t.qty),
        t.time_ms,
    )
}

fn of_row(t: &Trade) -> Content {
    (
        t.trade_id,
        t.side,
        t.price.clone(),
        t.qty.clone(),
        t.event_time_ms,
    )
}

fn trade_of_json(text: &str) -> Trade {
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    match Event::deserialize(v).unwrap() {
        Event::Trade(t) => t,
        other => panic!("{other:?}"),
    }
}

/// The ledger split at the renumbering: trades before it, and after.
fn split(ledger: &[SimTrade]) -> Option<(Vec<SimTrade>, Vec<SimTrade>)> {
    let at = (1..ledger.len()).find(|&i| ledger[i].id < ledger[i - 1].id)?;
    Some((ledger[..at].to_vec(), ledger[at..].to_vec()))
}

async fn renumbered_trades_are_kept(db_url: &str) {
    let sim = sim::start(SimConfig {
        seed: 51,
        symbols: vec![SYMBOL.into()],
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let cfg = recorder_config(&sim.ws_url(), &sim.rest_url(), db_url, &[SYMBOL], "");
    let rec = Recorder::start(&cfg).await;
    wait_for("streaming", Duration::from_secs(30), || async {
        sim.delivered(SYMBOL).len() >= 60
    })
    .await;
    let last = *sim.delivered(SYMBOL).last().unwrap();
    sim.reset_trade_ids(SYMBOL, last - 40);
    wait_for(
        "trades after the reset",
        Duration::from_secs(60),
        || async {
            split(&sim.trades(SYMBOL)).is_some_and(|(pre, post)| {
                // past the old ids by 20
                let top = pre.iter().map(|t| t.id).max().unwrap_or(0);
                post.iter().filter(|t| t.id > top).count() >= 20
            })
        },
    )
    .await;
    sim.halt();
    let ledger = sim.trades(SYMBOL);
    let (pre, post) = split(&ledger).unwrap();
    let delivered = sim.delivered(SYMBOL);
    let first_delivered = *delivered.first().unwrap();
    // every trade from the first delivered on reached the socket (no cuts in this test)
    let pre: Vec<SimTrade> = pre
        .into_iter()
        .filter(|t| t.id >= first_delivered)
        .collect();
    let pre_ids: BTreeSet<i64> = pre.iter().map(|t| t.id).collect();
    let (collide, fresh): (Vec<SimTrade>, Vec<SimTrade>) =
        post.into_iter().partition(|t| pre_ids.contains(&t.id));
    let mut want: BTreeMap<i64, Content> = pre.iter().map(|t| (t.id, of_sim(t))).collect();
    for t in &fresh {
        want.insert(t.id, of_sim(t));
    }
    assert!(
        collide.len() >= 30,
        "the reset reused {} ids",
        collide.len()
    );

    let store = Store::connect(db_url).await.unwrap();
    wait_for(
        "every trade stored or kept",
        Duration::from_secs(30),
        || async {
            let stored = store.load_trades("cdc-v1", SYMBOL).await.unwrap().len();
            let kept = store.rejected_rows().await.unwrap().len();
            stored == want.len() && kept == collide.len()
        },
    )
    .await;
    let stats = rec.stop().await;

    let stored: BTreeMap<i64, Content> = store
        .load_trades("cdc-v1", SYMBOL)
        .await
        .unwrap()
        .iter()
        .map(|t| (t.trade_id, of_row(t)))
        .collect();
    assert_eq!(stored, want, "first version of every id stored, exactly");
    let rejected = store.rejected_rows().await.unwrap();
    let mut kept: Vec<(Content, Content)> = rejected
        .iter()
        .map(|r| {
            assert_eq!((r.kind.as_str(), r.reason.as_str()), ("trades", "conflict"));
            assert!(
                r.error
                    .as_deref()
                    .unwrap()
                    .contains("stored with other content"),
                "{r:?}"
            );
            let new = trade_of_json(&r.row_json);
            let old = trade_of_json(r.stored_json.as_deref().unwrap());
            (of_row(&new), of_row(&old))
        })
        .collect();
    kept.sort_by_key(|(n, _)| n.0);
    let by_id: BTreeMap<i64, &SimTrade> = pre.iter().map(|t| (t.id, t)).collect();
    let mut want_kept: Vec<(Content, Content)> = collide
        .iter()
        .map(|t| (of_sim(t), of_sim(by_id[&t.id])))
        .collect();
    want_kept.sort_by_key(|(n, _)| n.0);
    assert_eq!(
        kept, want_kept,
        "every renumbered trade kept with the version it collided with"
    );
    assert_eq!(
        stats.writer.conflicts.load(Ordering::Relaxed),
        collide.len() as u64
    );
    assert_eq!(stats.worker(SYMBOL).id_resets.load(Ordering::Relaxed), 1);

    let gaps = store.load_gaps("cdc-v1", Some(SYMBOL)).await.unwrap();
    let resets: Vec<_> = gaps
        .iter()
        .filter(|g| {
            g.detail
                .as_deref()
                .is_some_and(|d| d.contains("trade id reset"))
        })
        .collect();
    assert_eq!(resets.len(), 1, "{gaps:?}");
    let g = resets[0];
    assert_eq!(g.stream, "trades");
    assert_eq!(g.start_ms, pre.last().unwrap().time_ms);
    assert_eq!(g.end_ms, Some(collide[0].time_ms));
    println!(
        "id reset ({}): {} trades published, {} stored, {} kept as conflicts (counted {}), 0 lost; one reset gap row",
        if db_url.starts_with("sqlite") {
            "SQLite"
        } else {
            "PostgreSQL"
        },
        pre.len() + fresh.len() + collide.len(),
        stored.len(),
        kept.len(),
        stats.writer.conflicts.load(Ordering::Relaxed)
    );
    store.close().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_renumbered_trades_are_kept_as_conflicts() {
    let (_dir, url) = sqlite_db();
    renumbered_trades_are_kept(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_renumbered_trades_are_kept_as_conflicts() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    renumbered_trades_are_kept(&db.url).await;
    db.drop_db().await;
}
