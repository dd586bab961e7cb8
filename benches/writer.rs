//! Writer throughput: rows/s of trade batches into SQLite (a temp file, WAL) and PostgreSQL
//! (a fresh database on `MDREC_TEST_PG_URL`, default 127.0.0.1:5432; skipped if none answers).
//! Every iteration writes new trade ids, so the measure is real inserts, not conflicts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use mdrec::decimal::Dec;
use mdrec::model::{BookDelta, BookSide, Event, Kline, Side, Source, Ticker, Trade};
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

/// A flush as the writer sees one under load from 800 instruments of today's venue (the
/// harness's row mix: 40 % book deltas, 27 % trades, 20 % candle updates, 13 % tickers).
/// Candles update the same 4,000 bars every iteration with a later event time (the forming
/// bars a live feed keeps rewriting), so their statement takes its update path.
fn mixed(iteration: i64, rows: usize) -> Batch {
    let mut b = Batch::default();
    let syms: Vec<Arc<str>> = (0..800)
        .map(|i| Arc::from(format!("C{i:03}_USD")))
        .collect();
    let ivs: Vec<Arc<str>> = ["1m", "5m", "15m", "1h", "4h"]
        .iter()
        .map(|s| Arc::from(*s))
        .collect();
    let dec = |s: String| Dec::parse(&s).unwrap();
    let base_us = 1_790_000_000_000_000 + iteration * 10_000_000;
    let n = |pct: usize| rows * pct / 100;
    for i in 0..n(40) {
        let sym = syms[i % 800].clone();
        b.push(Event::BookDelta(BookDelta {
            venue: "cdc-exchange",
            symbol: sym,
            depth_step: 50,
            event_time_ms: base_us / 1000,
            recv_time_us: base_us + (i / 800) as i64,
            seq: (i / 800) as i32,
            side: if i % 2 == 0 {
                BookSide::Bid
            } else {
                BookSide::Ask
            },
            price: dec(format!("86650.{:02}", i % 100)),
            qty: dec(format!("0.{:05}", i % 99_991 + 1)),
            update_id: Some(iteration * 1_000_000 + i as i64),
            prev_update_id: Some(iteration * 1_000_000 + i as i64 - 1),
        }));
    }
    for i in 0..n(27) {
        let id = iteration * 1_000_000 + i as i64;
        b.push(Event::Trade(Trade {
            venue: "cdc-exchange",
            symbol: syms[i % 800].clone(),
            trade_id: id,
            side: if id % 2 == 0 { Side::Buy } else { Side::Sell },
            price: dec(format!("86650.{:02}", id % 100)),
            qty: dec(format!("0.{:05}", id % 99_991 + 1)),
            quote_qty: None,
            event_time_ms: base_us / 1000 + i as i64,
            recv_time_us: base_us + i as i64,
            source: Source::Ws,
        }));
    }
    for i in 0..n(20).min(4000) {
        b.push(Event::Kline(Kline {
            venue: "cdc-exchange",
            symbol: syms[i % 800].clone(),
            interval: ivs[(i / 800) % 5].clone(),
            open_time_ms: 1_790_000_000_000,
            open: dec("86650.1".into()),
            high: dec(format!("8670{}.5", iteration % 10)),
            low: dec("86600.2".into()),
            close: dec(format!("86650.{:02}", iteration % 100)),
            volume: dec(format!("{}.125", iteration)),
            quote_volume: None,
            closed: false,
            event_time_ms: base_us / 1000,
            recv_time_us: base_us,
            source: Source::Ws,
        }));
    }
    for i in 0..n(13) {
        b.push(Event::Ticker(Ticker {
            venue: "cdc-exchange",
            symbol: syms[i % 800].clone(),
            event_time_ms: base_us / 1000,
            recv_time_us: base_us + (i / 800) as i64,
            open: None,
            high: Some(dec("86700.5".into())),
            low: Some(dec("86600.2".into())),
            close: Some(dec(format!("86650.{:02}", i % 100))),
            volume: Some(dec("1234.5".into())),
            quote_volume: None,
            change: Some(dec("-0.0123".into())),
            bid: Some(dec("86650.25".into())),
            bid_qty: Some(dec("0.5".into())),
            ask: Some(dec("86650.75".into())),
            ask_qty: Some(dec("1.125".into())),
        }));
    }
    b
}

/// `iters` writes through `Store::write`, each of a new batch from `make`; only the writes
/// are timed, not building the batches.
fn timed_writes(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    iters: u64,
    mut make: impl FnMut() -> Batch,
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let batch = make();
        let t = Instant::now();
        rt.block_on(store.write(&batch)).unwrap();
        total += t.elapsed();
    }
    total
}

/// Mixed flushes of the sizes the writer commits under load (2000 rows; up to 20000 when it
/// takes a backlog): the writer's own ceiling on this mix, without a load generator or a
/// recorder sharing the cores.
fn run_mixed(c: &mut Criterion, name: &str, rt: &tokio::runtime::Runtime, store: &Store) {
    let mut g = c.benchmark_group(format!("writer/{name}"));
    g.measurement_time(Duration::from_secs(10));
    g.sample_size(10);
    let mut iteration = 1i64;
    for rows in [2000usize, 20000] {
        let probe = mixed(0, rows).rows();
        g.throughput(Throughput::Elements(probe as u64));
        g.bench_with_input(BenchmarkId::new("mixed", rows), &rows, |b, &rows| {
            b.iter_custom(|iters| {
                timed_writes(rt, store, iters, || {
                    iteration += 1;
                    mixed(iteration, rows)
                })
            })
        });
    }
    g.finish();
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
                timed_writes(rt, store, iters, || {
                    next_id += rows as i64;
                    batch(next_id - rows as i64, rows)
                })
            })
        });
    }
    g.finish();
}

/// The batch's trades as COPY text rows (tab-separated, `\N` for NULL).
fn copy_text(b: &Batch) -> Vec<u8> {
    use std::fmt::Write as _;
    let mut out = String::new();
    for t in &b.trades {
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            t.venue,
            t.symbol,
            t.trade_id,
            t.side.as_str(),
            t.price,
            t.qty,
            t.quote_qty
                .as_ref()
                .map_or("\\N".to_string(), |q| q.to_string()),
            t.event_time_ms,
            t.recv_time_us,
            t.source.as_str()
        );
    }
    out.into_bytes()
}

/// The batch's trades in COPY's binary format, decimals as text fields (the staging table
/// holds them as text; the upsert casts them, as the writer's UNNEST statement does).
fn copy_binary(b: &Batch) -> Vec<u8> {
    fn text(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as i32).to_be_bytes());
        out.extend(s.as_bytes());
    }
    fn int8(out: &mut Vec<u8>, v: i64) {
        out.extend(8i32.to_be_bytes());
        out.extend(v.to_be_bytes());
    }
    let mut out = Vec::with_capacity(b.trades.len() * 120);
    out.extend(b"PGCOPY\n\xff\r\n\0");
    out.extend(0i32.to_be_bytes()); // flags
    out.extend(0i32.to_be_bytes()); // header extension length
    for t in &b.trades {
        out.extend(10i16.to_be_bytes());
        text(&mut out, t.venue);
        text(&mut out, &t.symbol);
        int8(&mut out, t.trade_id);
        text(&mut out, t.side.as_str());
        text(&mut out, t.price.as_str());
        text(&mut out, t.qty.as_str());
        match &t.quote_qty {
            Some(q) => text(&mut out, q.as_str()),
            None => out.extend((-1i32).to_be_bytes()),
        }
        int8(&mut out, t.event_time_ms);
        int8(&mut out, t.recv_time_us);
        text(&mut out, t.source.as_str());
    }
    out.extend((-1i16).to_be_bytes());
    out
}

/// The writer's conflict rule for trades, for the staging variants' upsert.
const TRADE_RULE: &str = "ON CONFLICT (venue, symbol, trade_id) DO UPDATE SET quote_qty = excluded.quote_qty \
     WHERE trades.quote_qty IS NULL AND excluded.quote_qty IS NOT NULL \
     AND trades.side = excluded.side AND trades.price = excluded.price \
     AND trades.qty = excluded.qty AND trades.event_time_ms = excluded.event_time_ms";

const COLUMNS: &str =
    "venue, symbol, trade_id, side, price, qty, quote_qty, event_time_ms, recv_time_us, source";

/// The alternatives to the writer's `INSERT ... SELECT FROM UNNEST` on PostgreSQL, on the
/// same batches in the same run: COPY into a staging table then one `INSERT ... SELECT ...
/// ON CONFLICT` with the writer's rule (the correct, idempotent use of COPY), and a bare COPY
/// into the table (the floor: no conflict handling, so it is only right for new keys).
fn copy_variants(c: &mut Criterion, rt: &tokio::runtime::Runtime, url: &str) {
    use sqlx::Connection;
    let mut conn = rt.block_on(sqlx::PgConnection::connect(url)).unwrap();
    rt.block_on(
        sqlx::query(
            "CREATE TEMP TABLE stage_trades (LIKE trades INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
        )
        .execute(&mut conn),
    )
    .unwrap();
    rt.block_on(
        sqlx::query(
            "CREATE TEMP TABLE stage_trades_bin (venue text, symbol text, trade_id bigint, side text, \
             price text, qty text, quote_qty text, event_time_ms bigint, recv_time_us bigint, \
             source text) ON COMMIT DELETE ROWS",
        )
        .execute(&mut conn),
    )
    .unwrap();
    let mut g = c.benchmark_group("writer/postgres_copy");
    g.measurement_time(Duration::from_secs(8));
    g.sample_size(20);
    // ids clear of the other groups'
    let mut next_id = 1_000_000_000i64;
    for rows in [500usize, 2000, 5000] {
        g.throughput(Throughput::Elements(rows as u64));
        for variant in [
            "copy_staging_upsert",
            "copy_binary_staging_upsert",
            "copy_plain",
        ] {
            g.bench_with_input(BenchmarkId::new(variant, rows), &rows, |b, &rows| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let batch = batch(next_id, rows);
                        next_id += rows as i64;
                        let t = Instant::now();
                        rt.block_on(async {
                            let mut tx = conn.begin().await.unwrap();
                            let (target, format, data) = match variant {
                                "copy_plain" => ("trades", "", copy_text(&batch)),
                                "copy_staging_upsert" => ("stage_trades", "", copy_text(&batch)),
                                _ => ("stage_trades_bin", " (FORMAT binary)", copy_binary(&batch)),
                            };
                            let mut copy = tx
                                .copy_in_raw(&format!(
                                    "COPY {target} ({COLUMNS}) FROM STDIN{format}"
                                ))
                                .await
                                .unwrap();
                            copy.send(data).await.unwrap();
                            copy.finish().await.unwrap();
                            if variant == "copy_binary_staging_upsert" {
                                sqlx::query(&format!(
                                    "INSERT INTO trades ({COLUMNS}) SELECT venue, symbol, trade_id, side, \
                                     price::numeric, qty::numeric, quote_qty::numeric, event_time_ms, \
                                     recv_time_us, source FROM stage_trades_bin {TRADE_RULE}"
                                ))
                                .execute(&mut *tx)
                                .await
                                .unwrap();
                            } else if variant == "copy_staging_upsert" {
                                sqlx::query(&format!(
                                    "INSERT INTO trades ({COLUMNS}) SELECT {COLUMNS} FROM stage_trades {TRADE_RULE}"
                                ))
                                .execute(&mut *tx)
                                .await
                                .unwrap();
                            }
                            tx.commit().await.unwrap();
                        });
                        total += t.elapsed();
                    }
                    total
                })
            });
        }
    }
    // what pipelining could save at most: one statement's round trip on this connection
    // (a mixed flush sends about six: begin, one per table, commit)
    g.throughput(Throughput::Elements(1));
    g.bench_function("statement_round_trip", |b| {
        b.iter(|| {
            rt.block_on(sqlx::query("SELECT 1").execute(&mut conn))
                .unwrap()
        })
    });
    g.finish();
    rt.block_on(conn.close()).unwrap();
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let store = rt.block_on(Store::connect(&url)).unwrap();
    rt.block_on(store.migrate()).unwrap();
    run(c, "sqlite", &rt, &store);
    run_mixed(c, "sqlite", &rt, &store);

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
    let pg_url = format!("{base}/{name}");
    let pg = rt.block_on(Store::connect(&pg_url)).unwrap();
    rt.block_on(pg.migrate()).unwrap();
    run(c, "postgres", &rt, &pg);
    run_mixed(c, "postgres", &rt, &pg);
    copy_variants(c, &rt, &pg_url);
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
