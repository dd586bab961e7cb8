//! A batch written again (a replay after a lost commit, a spool replayed twice, a second
//! recorder on the same symbols) stores nothing twice and loses nothing, whichever way the
//! database takes it: on PostgreSQL the writer inserts plainly first and falls back to the
//! upserts when a key is stored already, so these batches take both paths.

mod common;

use std::sync::Arc;

use common::{PgDb, sqlite_db};
use mdrec::decimal::Dec;
use mdrec::model::{BookDelta, BookSide, Event, Side, Source, Ticker, Trade};
use mdrec::store::{Batch, Store};

const VENUE: &str = "cdc-exchange";

fn dec(s: &str) -> Dec {
    Dec::parse(s).unwrap()
}

fn trade(id: i64, price: &str) -> Event {
    Event::Trade(Trade {
        venue: VENUE,
        symbol: Arc::from("BTC_USD"),
        trade_id: id,
        side: if id % 2 == 0 { Side::Buy } else { Side::Sell },
        price: dec(price),
        qty: dec("0.5"),
        quote_qty: None,
        event_time_ms: 1_790_000_000_000 + id,
        recv_time_us: 1_790_000_000_000_000 + id * 1000,
        source: Source::Ws,
    })
}

fn delta(i: i64) -> Event {
    Event::BookDelta(BookDelta {
        venue: VENUE,
        symbol: Arc::from("BTC_USD"),
        depth_step: 50,
        event_time_ms: 1_790_000_000_000 + i,
        recv_time_us: 1_790_000_000_000_000 + i * 1000,
        seq: 0,
        side: BookSide::Bid,
        price: dec(&format!("86650.{i}")),
        qty: dec("1.25"),
        update_id: Some(i),
        prev_update_id: Some(i - 1),
    })
}

fn ticker(i: i64) -> Event {
    Event::Ticker(Ticker {
        venue: VENUE,
        symbol: Arc::from("BTC_USD"),
        event_time_ms: 1_790_000_000_000 + i,
        recv_time_us: 1_790_000_000_000_000 + i * 1000,
        open: None,
        high: Some(dec("86700.5")),
        low: Some(dec("86600.25")),
        close: Some(dec(&format!("86650.{i}"))),
        volume: Some(dec("1234.5")),
        quote_volume: None,
        change: Some(dec("-0.0123")),
        bid: Some(dec("86650.25")),
        bid_qty: Some(dec("0.5")),
        ask: Some(dec("86650.75")),
        ask_qty: Some(dec("1.125")),
    })
}

fn batch(ids: std::ops::Range<i64>) -> Batch {
    Batch::from_events(ids.flat_map(|i| [trade(i, &format!("86650.{i}")), delta(i), ticker(i)]))
}

async fn counts(store: &Store) -> (i64, i64, i64, usize) {
    let c = store.table_counts().await.unwrap();
    let of = |t: &str| c.iter().find(|(n, _)| *n == t).map_or(0, |(_, v)| *v);
    let rejected = store.rejected_rows().await.unwrap().len();
    (of("trades"), of("book_deltas"), of("tickers"), rejected)
}

async fn batches_written_again_store_once(url: &str) {
    let store = Store::connect(url).await.unwrap();
    store.migrate().await.unwrap();

    assert!(store.write(&batch(1..101)).await.unwrap().is_empty());
    assert_eq!(counts(&store).await, (100, 100, 100, 0));

    // the same batch again: nothing new, nothing refused
    assert!(store.write(&batch(1..101)).await.unwrap().is_empty());
    assert_eq!(counts(&store).await, (100, 100, 100, 0));

    // half stored already, half new, and one trade id stored with another price: the new
    // rows are stored, the conflict is kept with both versions (`rejected_rows`), the stored trade
    // unchanged
    let mut b = batch(51..151);
    b.push(trade(7, "1.5"));
    let conflicts = store.write(&b).await.unwrap();
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(counts(&store).await, (150, 150, 150, 1));

    // and new batches after a fallback are written as before
    assert!(store.write(&batch(151..201)).await.unwrap().is_empty());
    assert_eq!(counts(&store).await, (200, 200, 200, 1));

    let trades = store.load_trades(VENUE, "BTC_USD").await.unwrap();
    let ids: Vec<i64> = trades.iter().map(|t| t.trade_id).collect();
    assert_eq!(ids, (1..201).collect::<Vec<_>>());
    for t in &trades {
        assert_eq!(t.price, dec(&format!("86650.{}", t.trade_id)), "{t:?}");
    }
    store.close().await;
}

#[tokio::test]
async fn sqlite_batches_written_again_store_once() {
    let (_dir, url) = sqlite_db();
    batches_written_again_store_once(&url).await;
}

#[tokio::test]
async fn postgres_batches_written_again_store_once() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    batches_written_again_store_once(&db.url).await;
    db.drop_db().await;
}
