//! Book changes stored compactly (one `book_updates` row per frame, levels packed): a
//! database an older version wrote, with one row per level change, is packed in place by the
//! migrations with every digit kept; a frame written in parts, or written again (a replayed
//! spool), is stored once; the `book_deltas` view gives the per-level rows back.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{PgDb, sqlite_db};
use mdrec::decimal::{Dec, SqliteNumber};
use mdrec::model::{BookDelta, BookSide, Event};
use mdrec::store::{Batch, DeltaRange, Store};

const VENUE: &str = "cdc-exchange";

/// Frames of two symbols and two depths, 1-4 levels each, some with 26-digit prices: more
/// rows than one packing chunk holds, so a frame can straddle two chunks.
fn old_changes() -> Vec<BookDelta> {
    let mut out = Vec::new();
    let mut rng = fastrand::Rng::with_seed(7);
    for frame in 0..11_000i64 {
        let symbol = if frame % 2 == 0 { "BTC_USD" } else { "ETH_USD" };
        let depth_step = if frame % 3 == 0 { 10 } else { 50 };
        for seq in 0..rng.i32(1..5) {
            let price = if rng.u8(..20) == 0 {
                format!("9744.2500000000000000{:03}", rng.u32(100..1000))
            } else {
                format!("{}.{}", rng.u32(80_000..90_000), rng.u32(1..100))
            };
            let qty = if rng.bool() {
                "0".to_string()
            } else {
                format!("0.{:05}", rng.u32(1..100_000))
            };
            out.push(BookDelta {
                venue: VENUE,
                symbol: Arc::from(symbol),
                depth_step,
                event_time_ms: 1_790_000_000_000 + frame,
                recv_time_us: 1_790_000_000_000_000 + frame * 1000 + 7,
                seq,
                side: if rng.bool() {
                    BookSide::Bid
                } else {
                    BookSide::Ask
                },
                price: Dec::parse(&price).unwrap(),
                qty: Dec::parse(&qty).unwrap(),
                update_id: Some(100 + frame),
                prev_update_id: Some(99 + frame),
            });
        }
    }
    out
}

/// The migrations up to 0006 (the per-level table), run from a copy of their files.
async fn migrate_to_v6(pool_url: &str, backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(backend);
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().to_string();
        if name.as_str() < "0007" {
            std::fs::copy(e.path(), dir.path().join(&name)).unwrap();
        }
    }
    let m = sqlx::migrate::Migrator::new(dir.path()).await.unwrap();
    match backend {
        "sqlite" => {
            let pool = sqlx::SqlitePool::connect(&format!("{pool_url}?mode=rwc"))
                .await
                .unwrap();
            m.run(&pool).await.unwrap();
            pool.close().await;
        }
        _ => {
            let pool = sqlx::PgPool::connect(pool_url).await.unwrap();
            m.run(&pool).await.unwrap();
            pool.close().await;
        }
    }
}

/// The rows as the old version wrote them (SQLite: a number, the digits in `exact` when a
/// REAL cannot hold them).
async fn write_old(url: &str, changes: &[BookDelta]) {
    const SQL: &str = "INSERT INTO book_deltas (venue, symbol, depth_step, recv_time_us, seq, \
         event_time_ms, side, price, qty, exact, update_id, prev_update_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        let mut tx = pool.begin().await.unwrap();
        for d in changes {
            let mut exact = serde_json::Map::new();
            let mut num = |col: &str, v: &Dec| match v.to_sqlite_number() {
                SqliteNumber::Integer(i) => i as f64,
                SqliteNumber::Real { value, exact: e } => {
                    if !e {
                        exact.insert(col.into(), v.as_str().into());
                    }
                    value
                }
            };
            let (p, q) = (num("price", &d.price), num("qty", &d.qty));
            let exact = (!exact.is_empty()).then(|| serde_json::Value::Object(exact).to_string());
            sqlx::query(SQL)
                .bind(d.venue)
                .bind(&*d.symbol)
                .bind(d.depth_step as i64)
                .bind(d.recv_time_us)
                .bind(d.seq as i64)
                .bind(d.event_time_ms)
                .bind(d.side.as_str())
                .bind(p)
                .bind(q)
                .bind(exact)
                .bind(d.update_id)
                .bind(d.prev_update_id)
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        pool.close().await;
    } else {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let sql = SQL
            .replace("$8,", "$8::numeric,")
            .replace("$9,", "$9::numeric,");
        let mut tx = pool.begin().await.unwrap();
        for d in changes {
            sqlx::query(&sql)
                .bind(d.venue)
                .bind(&*d.symbol)
                .bind(d.depth_step)
                .bind(d.recv_time_us)
                .bind(d.seq)
                .bind(d.event_time_ms)
                .bind(d.side.as_str())
                .bind(d.price.as_str())
                .bind(d.qty.as_str())
                .bind(None::<String>)
                .bind(d.update_id)
                .bind(d.prev_update_id)
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        pool.close().await;
    }
}

/// Every stored change of one stream, through the store's reader.
async fn stored(store: &Store, symbol: &str, depth_step: i16) -> Vec<BookDelta> {
    let mut r = DeltaRange {
        depth_step,
        after: (i64::MIN, i64::MIN),
        from_ms: i64::MIN,
        to_ms: i64::MAX,
        limit: 500,
    };
    let mut out = Vec::new();
    loop {
        let page = store.deltas_page(VENUE, symbol, &r).await.unwrap();
        let Some(last) = page.last() else { break };
        r.after = (last.recv_time_us, last.seq.into());
        out.extend(page);
    }
    out
}

/// The `book_deltas` view: one row per level change, exact digits.
async fn view_rows(store: &Store) -> Vec<(String, i64, i64, i64, String, String, String)> {
    let sql = if matches!(store, Store::Sqlite(_)) {
        "SELECT symbol, CAST(depth_step AS BIGINT), recv_time_us, CAST(seq AS BIGINT), side, \
         json_extract(exact, '$.price'), json_extract(exact, '$.qty') FROM book_deltas \
         ORDER BY symbol, depth_step, recv_time_us, seq"
    } else {
        "SELECT symbol, CAST(depth_step AS BIGINT), recv_time_us, CAST(seq AS BIGINT), side, \
         price::text, qty::text FROM book_deltas ORDER BY symbol, depth_step, recv_time_us, seq"
    };
    match store {
        Store::Sqlite(s) => sqlx::query_as(sql).fetch_all(s.pool()).await.unwrap(),
        Store::Postgres(s) => sqlx::query_as(sql).fetch_all(s.pool()).await.unwrap(),
    }
}

fn key(d: &BookDelta) -> (String, i64, i64, i64, String, String, String) {
    (
        d.symbol.to_string(),
        d.depth_step.into(),
        d.recv_time_us,
        d.seq.into(),
        d.side.as_str().into(),
        d.price.as_str().into(),
        d.qty.as_str().into(),
    )
}

async fn old_rows_are_packed_in_place(url: &str, backend: &str) {
    migrate_to_v6(url, backend).await;
    let old = old_changes();
    write_old(url, &old).await;
    let store = Store::connect(url).await.unwrap();
    store.migrate().await.unwrap();
    for symbol in ["BTC_USD", "ETH_USD"] {
        for step in [10, 50] {
            let want: Vec<&BookDelta> = old
                .iter()
                .filter(|d| &*d.symbol == symbol && d.depth_step == step)
                .collect();
            let got = stored(&store, symbol, step).await;
            assert_eq!(got.len(), want.len(), "{symbol} {step}");
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g, *w);
            }
        }
    }
    let mut want: Vec<_> = old.iter().map(key).collect();
    want.sort();
    assert_eq!(
        view_rows(&store).await,
        want,
        "the view gives the rows back"
    );
    // one row per frame (the SQLite chunk boundary may split one frame in two)
    let frames: i64 = match &store {
        Store::Sqlite(s) => sqlx::query_scalar("SELECT COUNT(*) FROM book_updates")
            .fetch_one(s.pool())
            .await
            .unwrap(),
        Store::Postgres(s) => sqlx::query_scalar("SELECT COUNT(*) FROM book_updates")
            .fetch_one(s.pool())
            .await
            .unwrap(),
    };
    assert!((11_000..=11_001).contains(&frames), "{frames} rows");
    // a second start finds nothing left to pack
    store.migrate().await.unwrap();
    assert_eq!(view_rows(&store).await.len(), old.len());
}

async fn a_frame_in_parts_or_again_is_stored_once(url: &str) {
    let store = Store::connect(url).await.unwrap();
    store.migrate().await.unwrap();
    let frame: Vec<BookDelta> = old_changes().into_iter().take(40).collect();
    let batch = |d: &[BookDelta]| {
        let mut b = Batch::default();
        for x in d {
            b.push(Event::BookDelta(x.clone()));
        }
        b
    };
    // a frame split between two batches, then the whole again (a spool file replayed after
    // its batch was committed), then the parts again
    let cut = (1..frame.len())
        .find(|&i| frame[i].recv_time_us == frame[i - 1].recv_time_us)
        .expect("a frame of several levels");
    store.write(&batch(&frame[..cut])).await.unwrap();
    store.write(&batch(&frame[cut..])).await.unwrap();
    store.write(&batch(&frame)).await.unwrap();
    store.write(&batch(&frame[..cut])).await.unwrap();
    store.write(&batch(&frame[cut..])).await.unwrap();
    let mut want: Vec<_> = frame.iter().map(key).collect();
    want.sort();
    assert_eq!(view_rows(&store).await, want);
    let mut got = stored(&store, "BTC_USD", 10).await;
    got.extend(stored(&store, "BTC_USD", 50).await);
    got.extend(stored(&store, "ETH_USD", 10).await);
    got.extend(stored(&store, "ETH_USD", 50).await);
    assert_eq!(got.len(), frame.len());
}

#[tokio::test]
async fn sqlite_old_book_changes_are_packed_in_place_nothing_lost() {
    let (_dir, url) = sqlite_db();
    old_rows_are_packed_in_place(&url, "sqlite").await;
}

#[tokio::test]
async fn postgres_old_book_changes_are_packed_in_place_nothing_lost() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    old_rows_are_packed_in_place(&db.url, "postgres").await;
    db.drop_db().await;
}

#[tokio::test]
async fn sqlite_a_frame_written_in_parts_or_again_is_stored_once() {
    let (_dir, url) = sqlite_db();
    a_frame_in_parts_or_again_is_stored_once(&url).await;
}

#[tokio::test]
async fn postgres_a_frame_written_in_parts_or_again_is_stored_once() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    a_frame_in_parts_or_again_is_stored_once(&db.url).await;
    db.drop_db().await;
}
