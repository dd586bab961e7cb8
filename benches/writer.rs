//! Writer throughput: rows/s of trade batches into SQLite (a temp file, WAL) and PostgreSQL
//! (a fresh database on `MDREC_TEST_PG_URL`, default 127.0.0.1:5432; skipped if none answers).
//! Every iteration writes new trade ids, so the measure is real inserts, not conflicts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use mdrec::decimal::Dec;
use mdrec::model::{Event, Side, Source, Trade};
use mdrec::store::{Batch, Store};

fn batch(start_id: i64, n: usize) -> Batch {
    let mut b = Batch::default();
    let sym: Arc<str> = Arc::from("btcusdt");
    for i in 0..n as i64 {
        let id = start_id + i;
        b.push(Event::Trade(Trade {
            venue: "cdc-v1",
            symbol: sym.clone(),
            trade_id: id,
            side: if id % 2 == 0 { Side::Buy } else { Side::Sell },
            price: Dec::parse(&format!("86650.{:02}", id % 100)).unwrap(),
            qty: Dec::parse(&format!("0.{:05}", id % 99_991)).unwrap(),
            quote_qty: Some(Dec::parse(&format!("23311.62436950000{:05}", id % 99_991)).unwrap()),
            event_time_ms: 1_790_000_000_000 + id,
            recv_time_us: 1_790_000_000_000_000 + id,
            source: Source::Ws,
        }));
    }
    b
}

fn run(c: &mut Criterion, name: &str, rt: &tokio::runtime::Runtime, store: &Store) {
    let mut g = c.benchmark_group(format!("writer/{name}"));
    g.measurement_time(Duration::from_secs(8));
    g.sample_size(20);
    let mut next_id = 1i64;
    for rows in [500usize, 2000, 5000] {
        g.throughput(Throughput::Elements(rows as u64));
        g.bench_with_input(BenchmarkId::new("trades", rows), &rows, |b, &rows| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let batch = batch(next_id, rows);
                    next_id += rows as i64;
                    let t = Instant::now();
                    rt.block_on(store.write(&batch)).unwrap();
                    total += t.elapsed();
                }
                total
            })
        });
    }
    g.finish();
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let store = rt.block_on(Store::connect(&url)).unwrap();
    rt.block_on(store.migrate()).unwrap();
    run(c, "sqlite", &rt, &store);

    let admin = std::env::var("MDREC_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!("mdrec_bench_{}", std::process::id());
    let created = rt.block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&admin).await.ok()?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .ok()?;
        Some(())
    });
    if created.is_none() {
        eprintln!("PostgreSQL not reachable at {admin}: skipping writer/postgres");
        return;
    }
    let base = admin
        .rsplit_once('/')
        .map(|(b, _)| b.to_string())
        .unwrap_or(admin.clone());
    let pg = rt
        .block_on(Store::connect(&format!("{base}/{name}")))
        .unwrap();
    rt.block_on(pg.migrate()).unwrap();
    run(c, "postgres", &rt, &pg);
    rt.block_on(pg.close());
    rt.block_on(async {
        use sqlx::Connection;
        if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut conn)
                .await;
        }
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
