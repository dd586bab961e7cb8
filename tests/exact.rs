//! Exact values in both databases: digits read back equal the exchange's text, and numeric SQL
//! (`sum`, `>`, `ORDER BY`) answers correctly, for values with 16+ significant digits too.
//! Also: idempotent writes (a trade twice is one row) and last-update-wins klines.

mod common;

use std::sync::Arc;

use common::{PgDb, sqlite_db};
use mdrec::decimal::Dec;
use mdrec::model::{Event, Gap, GapStatus, Kline, Side, Source, Trade};
use mdrec::store::{Batch, Store};

/// (price, qty): long values in both columns, plus ordinary ones.
const VALUES: [(&str, &str); 6] = [
    ("86691.94", "0.24616"),
    ("12345678.123456789012345678", "1.1"), // 26 significant digits
    ("0.000000012345678901234567", "2.2"),  // 17 significant digits, tiny
    ("12345678.123456789012345679", "3.000000000000000000001"), // differs from #2 in the 26th digit
    ("100", "472.07373"),
    ("9", "0.1"),
];

fn trade(i: usize, price: &str, qty: &str) -> Trade {
    let p = Dec::parse(price).unwrap();
    let q = Dec::parse(qty).unwrap();
    Trade {
        venue: "cdc-v1",
        symbol: Arc::from("btcusdt"),
        trade_id: 1000 + i as i64,
        side: if i.is_multiple_of(2) {
            Side::Buy
        } else {
            Side::Sell
        },
        price: p,
        qty: q,
        quote_qty: Some(Dec::parse("21340.08795040000000000000001").unwrap()),
        event_time_ms: 1_790_000_000_000 + i as i64,
        recv_time_us: 1_790_000_000_000_000 + i as i64,
        source: Source::Ws,
    }
}

fn kline(close: &str, closed: bool, event_time_ms: i64) -> Event {
    let d = |s: &str| Dec::parse(s).unwrap();
    Event::Kline(Kline {
        venue: "cdc-v1",
        symbol: Arc::from("btcusdt"),
        interval: Arc::from("1min"),
        open_time_ms: 1_790_000_040_000,
        open: d("1"),
        high: d("3"),
        low: d("0.5"),
        close: d(close),
        volume: d("10"),
        quote_volume: None,
        closed,
        event_time_ms,
        recv_time_us: event_time_ms * 1000,
        source: Source::Ws,
    })
}

async fn check(url: &str) {
    let store = Store::connect(url).await.unwrap();
    store.migrate().await.unwrap();
    let mut batch = Batch::default();
    for (i, (p, q)) in VALUES.iter().enumerate() {
        batch.push(Event::Trade(trade(i, p, q)));
    }
    // the same trade twice in one batch
    batch.push(Event::Trade(trade(0, VALUES[0].0, VALUES[0].1)));
    store.write(&batch).await.unwrap();
    // and again in a later batch (a replay, or REST after WS)
    store.write(&batch).await.unwrap();

    let stored = store.load_trades("cdc-v1", "btcusdt").await.unwrap();
    assert_eq!(stored.len(), VALUES.len(), "each trade exactly once");
    for (t, (p, q)) in stored.iter().zip(VALUES) {
        assert_eq!(t.price.as_str(), Dec::parse(p).unwrap().as_str());
        assert_eq!(t.qty.as_str(), Dec::parse(q).unwrap().as_str());
        assert_eq!(
            t.quote_qty.as_ref().unwrap().as_str(),
            "21340.08795040000000000000001"
        );
    }

    // numeric SQL, written the way an analyst would
    let (sum_sql, gt_sql, order_sql) = (
        "SELECT sum(qty) FROM trades",
        "SELECT count(*) FROM trades WHERE price > 12345678.1234567",
        "SELECT trade_id FROM trades ORDER BY price, trade_id",
    );
    let want_order = vec![1002i64, 1005, 1004, 1000, 1001, 1003];
    match &store {
        Store::Sqlite(s) => {
            // SQLite computes in binary floating point: right to double precision
            let sum: f64 = sqlx::query_scalar(sum_sql)
                .fetch_one(s.pool())
                .await
                .unwrap();
            assert!((sum - 478.71989).abs() < 1e-9, "sum {sum}");
            let n: i64 = sqlx::query_scalar(gt_sql)
                .fetch_one(s.pool())
                .await
                .unwrap();
            assert_eq!(n, 2);
            let order: Vec<i64> = sqlx::query_scalar(order_sql)
                .fetch_all(s.pool())
                .await
                .unwrap();
            // #1 and #3 differ only in the 26th digit: a double cannot order them, the id does
            assert_eq!(order, want_order);
            let exact: Option<String> =
                sqlx::query_scalar("SELECT exact FROM trades WHERE trade_id = 1000")
                    .fetch_one(s.pool())
                    .await
                    .unwrap();
            assert_eq!(
                exact.as_deref(),
                Some(r#"{"quote_qty":"21340.08795040000000000000001"}"#)
            );
            let none: Option<String> =
                sqlx::query_scalar("SELECT exact FROM trades WHERE trade_id = 1005")
                    .fetch_one(s.pool())
                    .await
                    .unwrap();
            assert!(none.unwrap().contains("quote_qty"));
        }
        Store::Postgres(s) => {
            // NUMERIC is exact: the sum is the exact decimal
            let sum: String = sqlx::query_scalar("SELECT sum(qty)::text FROM trades")
                .fetch_one(s.pool())
                .await
                .unwrap();
            assert_eq!(
                Dec::parse(&sum).unwrap().as_str(),
                "478.719890000000000000001"
            );
            let n: i64 = sqlx::query_scalar(gt_sql)
                .fetch_one(s.pool())
                .await
                .unwrap();
            assert_eq!(n, 2);
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM trades WHERE price > 12345678.123456789012345678",
            )
            .fetch_one(s.pool())
            .await
            .unwrap();
            assert_eq!(n, 1, "26th digit compared exactly");
            let order: Vec<i64> = sqlx::query_scalar(order_sql)
                .fetch_all(s.pool())
                .await
                .unwrap();
            assert_eq!(order, want_order);
        }
    }

    // klines: last update wins, a closed bar is never replaced by an open one, replays are no-ops
    for (close, closed, t) in [("1.5", false, 10), ("1.7", false, 12), ("1.6", false, 11)] {
        let mut b = Batch::default();
        b.push(kline(close, closed, t));
        store.write(&b).await.unwrap();
    }
    let k = store
        .load_klines("cdc-v1", "btcusdt", "1min")
        .await
        .unwrap();
    assert_eq!(
        (k.len(), k[0].close.as_str(), k[0].closed),
        (1, "1.7", false),
        "older update must not win"
    );
    for (close, closed, t) in [("1.8", true, 12), ("2.5", false, 99)] {
        let mut b = Batch::default();
        b.push(kline(close, closed, t));
        store.write(&b).await.unwrap();
    }
    let k = store
        .load_klines("cdc-v1", "btcusdt", "1min")
        .await
        .unwrap();
    assert_eq!(
        (k[0].close.as_str(), k[0].closed),
        ("1.8", true),
        "closed bar stays"
    );

    // a REST bar (no quote volume) replacing a partial socket bar keeps the stored quote
    // volume when the volume is the same, in both databases and exactly (28 digits)
    let qv = "12345678901234.12345678901234";
    let bar =
        |open_ms: i64, volume: &str, quote: Option<&str>, closed: bool, t: i64, src: Source| {
            let d = |s: &str| Dec::parse(s).unwrap();
            Event::Kline(Kline {
                venue: "cdc-v1",
                symbol: Arc::from("btcusdt"),
                interval: Arc::from("5min"),
                open_time_ms: open_ms,
                open: d("1"),
                high: d("1"),
                low: d("1"),
                close: d("1"),
                volume: d(volume),
                quote_volume: quote.map(d),
                closed,
                event_time_ms: t,
                recv_time_us: t * 1000,
                source: src,
            })
        };
    for ev in [
        bar(0, "10", Some(qv), false, 1, Source::Ws),
        bar(300_000, "10", Some(qv), false, 1, Source::Ws),
    ] {
        let mut b = Batch::default();
        b.push(ev);
        store.write(&b).await.unwrap();
    }
    let mut b = Batch::default();
    b.push(bar(0, "10", None, true, 2, Source::Rest)); // same volume: quote volume kept
    b.push(bar(300_000, "11", None, true, 2, Source::Rest)); // more trades: unknown
    store.write(&b).await.unwrap();
    let k = store
        .load_klines("cdc-v1", "btcusdt", "5min")
        .await
        .unwrap();
    assert_eq!(
        (
            k[0].closed,
            k[0].source,
            k[0].quote_volume.as_ref().map(Dec::as_str)
        ),
        (true, Source::Rest, Some(qv))
    );
    assert_eq!((k[1].closed, k[1].quote_volume.as_ref()), (true, None));

    // gap rows: the later word on a hole wins, its first detection time stays
    let gap = |status: GapStatus, detected: i64, resolved: Option<i64>, rows: i64| {
        Event::Gap(Gap {
            venue: "cdc-v1",
            symbol: Arc::from("btcusdt"),
            stream: "trades".into(),
            start_ms: 5,
            end_ms: resolved.map(|_| 9),
            status,
            detected_at_ms: detected,
            resolved_at_ms: resolved,
            rows_recovered: rows,
            detail: None,
        })
    };
    for ev in [
        gap(GapStatus::Open, 100, None, 0),
        gap(GapStatus::Filled, 100, Some(200), 7),
        gap(GapStatus::Open, 150, None, 0), // replayed late from the spool: older word, ignored
    ] {
        let mut b = Batch::default();
        b.push(ev);
        store.write(&b).await.unwrap();
    }
    let g = store.load_gaps("cdc-v1", Some("btcusdt")).await.unwrap();
    assert_eq!(
        (
            g.len(),
            g[0].status,
            g[0].rows_recovered,
            g[0].detected_at_ms,
            g[0].end_ms
        ),
        (1, GapStatus::Filled, 7, 100, Some(9))
    );
    store.close().await;
}

#[tokio::test]
async fn sqlite_exact_values_and_numeric_sql() {
    let (_dir, url) = sqlite_db();
    check(&url).await;
}

#[tokio::test]
async fn postgres_exact_values_and_numeric_sql() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    check(&db.url).await;
    db.drop_db().await;
}

#[tokio::test]
async fn sqlite_is_in_wal_mode() {
    let (_dir, url) = sqlite_db();
    let store = Store::connect(&url).await.unwrap();
    let Store::Sqlite(s) = &store else {
        unreachable!()
    };
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(s.pool())
        .await
        .unwrap();
    assert_eq!(mode, "wal");
}
