//! The writer flushes by row count, by time after the first row, and on shutdown.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{sqlite_db, wait_for};
use mdrec::config::WriterConfig;
use mdrec::decimal::Dec;
use mdrec::model::{Event, Side, Source, Trade};
use mdrec::stats::WriterStats;
use mdrec::store::Store;
use mdrec::store::writer;

fn trade(id: i64) -> Event {
    Event::Trade(Trade {
        venue: "cdc-v1",
        symbol: Arc::from("btcusdt"),
        trade_id: id,
        side: Side::Buy,
        price: Dec::parse("1.5").unwrap(),
        qty: Dec::parse("2").unwrap(),
        quote_qty: None,
        event_time_ms: id,
        recv_time_us: id,
        source: Source::Ws,
    })
}

async fn count(store: &Store) -> i64 {
    let Store::Sqlite(s) = store else {
        unreachable!()
    };
    sqlx::query_scalar("SELECT count(*) FROM trades")
        .fetch_one(s.pool())
        .await
        .unwrap()
}

async fn setup(
    cfg: WriterConfig,
) -> (
    tempfile::TempDir,
    Arc<Store>,
    mdrec::store::queue::EventTx,
    Arc<WriterStats>,
    tokio::task::JoinHandle<()>,
) {
    setup_queued(cfg, 16, Vec::new()).await
}

/// The writer on a fresh SQLite file, with `queued` already waiting in its queue of
/// `capacity` when it starts (a writer that fell behind).
async fn setup_queued(
    cfg: WriterConfig,
    capacity: usize,
    queued: Vec<Event>,
) -> (
    tempfile::TempDir,
    Arc<Store>,
    mdrec::store::queue::EventTx,
    Arc<WriterStats>,
    tokio::task::JoinHandle<()>,
) {
    let (dir, url) = sqlite_db();
    let store = Arc::new(Store::connect(&url).await.unwrap());
    store.migrate().await.unwrap();
    let (tx, rx) = mdrec::store::queue::channel(capacity, 64 << 20);
    for ev in queued {
        tx.send(ev).await.unwrap();
    }
    let stats = Arc::new(WriterStats::default());
    let task = tokio::spawn(writer::run(
        store.clone(),
        rx,
        cfg,
        stats.clone(),
        None,
        Default::default(),
    ));
    (dir, store, tx, stats, task)
}

#[tokio::test]
async fn flushes_when_the_batch_is_full() {
    let cfg = WriterConfig {
        batch_rows: 5,
        flush_interval_ms: 3_600_000,
        queue_capacity: 16,
        ..WriterConfig::default()
    };
    let (_d, store, tx, stats, task) = setup(cfg).await;
    for id in 0..5 {
        tx.send(trade(id)).await.unwrap();
    }
    wait_for(
        "a full batch to be written",
        Duration::from_secs(10),
        || async { count(&store).await == 5 },
    )
    .await;
    assert_eq!(stats.flushes.load(std::sync::atomic::Ordering::Relaxed), 1);
    drop(tx);
    task.await.unwrap();
}

#[tokio::test]
async fn flushes_a_partial_batch_after_the_interval() {
    let cfg = WriterConfig {
        batch_rows: 1_000_000,
        flush_interval_ms: 100,
        queue_capacity: 16,
        ..WriterConfig::default()
    };
    let (_d, store, tx, _stats, task) = setup(cfg).await;
    for id in 0..3 {
        tx.send(trade(id)).await.unwrap();
    }
    wait_for("the timer to flush", Duration::from_secs(10), || async {
        count(&store).await == 3
    })
    .await;
    drop(tx);
    task.await.unwrap();
}

#[tokio::test]
async fn flushes_the_rest_on_shutdown() {
    let cfg = WriterConfig {
        batch_rows: 1_000_000,
        flush_interval_ms: 3_600_000,
        queue_capacity: 16,
        ..WriterConfig::default()
    };
    let (_d, store, tx, stats, task) = setup(cfg).await;
    for id in 0..4 {
        tx.send(trade(id)).await.unwrap();
    }
    drop(tx); // all senders gone: the writer drains and returns
    task.await.unwrap();
    assert_eq!(count(&store).await, 4);
    assert_eq!(stats.rows_of(mdrec::model::Table::Trades), 4);
}

/// Behind its feed, the writer commits what queued up meanwhile in one flush (up to its
/// backlog cap), not `batch_rows` at a time: fewer, larger commits exactly when it is loaded.
#[tokio::test]
async fn a_backlog_is_taken_into_one_flush() {
    let cfg = WriterConfig {
        batch_rows: 5,
        flush_interval_ms: 3_600_000,
        queue_capacity: 5_000,
        ..WriterConfig::default()
    };
    let (_d, store, tx, stats, task) =
        setup_queued(cfg, 5_000, (0..3_000).map(trade).collect()).await;
    wait_for("the backlog written", Duration::from_secs(10), || async {
        count(&store).await == 3_000
    })
    .await;
    assert_eq!(
        stats.flushes.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "one commit for the whole backlog"
    );
    drop(tx);
    task.await.unwrap();
}
