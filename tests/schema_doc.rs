//! Every worked query in docs/SCHEMA.md, read from the document itself, runs on SQLite and
//! PostgreSQL after a simulator run and returns what the simulator's ledger implies.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{PgDb, recorder_config, sqlite_db, wait_for};
use mdrec::sim::{self, SimConfig, SimHandle};
use mdrec::store::Store;
use mdrec::venue::cdc_v1::NAME;
use sqlx::{Column, Row, TypeInfo, ValueRef};

const SYMBOLS: [&str; 2] = ["btcusdt", "ethusdt"];
const QUERIES: [&str; 12] = [
    "last_price",
    "vwap_1m",
    "ohlcv_from_trades",
    "spread",
    "trades_per_second",
    "day_coverage",
    "latency_percentiles",
    "buy_sell_volume",
    "largest_trades",
    "open_bars",
    "unrecoverable_holes",
    "disconnects",
];

/// (name, sql) of the document's queries for a dialect.
fn queries(dialect: &str) -> Vec<(String, String)> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/SCHEMA.md"))
        .expect("docs/SCHEMA.md");
    let mut out = Vec::new();
    for block in doc.split("```sql\n").skip(1) {
        let body = block.split("```").next().unwrap_or_default();
        let Some(first) = body.lines().next() else {
            continue;
        };
        let Some(tag) = first.strip_prefix("-- query: ") else {
            panic!("an sql block without a `-- query:` line: {first}");
        };
        let (name, only) = match tag.split_once(' ') {
            Some((n, d)) => (n, Some(d.trim_matches(|c| c == '(' || c == ')'))),
            None => (tag, None),
        };
        if only.is_none_or(|d| d == dialect) {
            out.push((name.to_string(), body.to_string()));
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Null,
    Int(i64),
    Num(f64),
    Text(String),
}

impl Cell {
    fn f(&self) -> f64 {
        match self {
            Cell::Int(i) => *i as f64,
            Cell::Num(x) => *x,
            Cell::Text(t) => t.parse().unwrap_or_else(|_| panic!("not a number: {t}")),
            Cell::Null => panic!("NULL where a number was expected"),
        }
    }
    fn i(&self) -> i64 {
        match self {
            Cell::Int(i) => *i,
            other => panic!("not an integer: {other:?}"),
        }
    }
    fn s(&self) -> &str {
        match self {
            Cell::Text(t) => t,
            other => panic!("not text: {other:?}"),
        }
    }
}

type Rows = Vec<BTreeMap<String, Cell>>;

async fn run_query(store: &Store, sql: &str) -> Rows {
    match store {
        Store::Sqlite(s) => sqlx::query(sql)
            .fetch_all(s.pool())
            .await
            .unwrap_or_else(|e| panic!("{e}: {sql}"))
            .iter()
            .map(|r| {
                r.columns()
                    .iter()
                    .map(|c| {
                        let raw = r.try_get_raw(c.ordinal()).unwrap();
                        let cell = if raw.is_null() {
                            Cell::Null
                        } else {
                            match raw.type_info().name() {
                                "INTEGER" => Cell::Int(r.get(c.ordinal())),
                                "REAL" => Cell::Num(r.get(c.ordinal())),
                                _ => Cell::Text(r.get(c.ordinal())),
                            }
                        };
                        (c.name().to_string(), cell)
                    })
                    .collect()
            })
            .collect(),
        Store::Postgres(s) => sqlx::query(sql)
            .fetch_all(s.pool())
            .await
            .unwrap_or_else(|e| panic!("{e}: {sql}"))
            .iter()
            .map(|r| {
                r.columns()
                    .iter()
                    .map(|c| {
                        let raw = r.try_get_raw(c.ordinal()).unwrap();
                        let cell = if raw.is_null() {
                            Cell::Null
                        } else {
                            match c.type_info().name() {
                                "INT8" => Cell::Int(r.get(c.ordinal())),
                                "INT4" => Cell::Int(r.get::<i32, _>(c.ordinal()) as i64),
                                "NUMERIC" => {
                                    let d: rust_decimal::Decimal = r.get(c.ordinal());
                                    Cell::Num(d.to_string().parse().unwrap())
                                }
                                "FLOAT8" => Cell::Num(r.get(c.ordinal())),
                                _ => Cell::Text(r.get(c.ordinal())),
                            }
                        };
                        (c.name().to_string(), cell)
                    })
                    .collect()
            })
            .collect(),
    }
}

fn close(a: f64, b: f64, what: &str) {
    let tol = 1e-9 * a.abs().max(b.abs()).max(1.0);
    assert!((a - b).abs() <= tol, "{what}: {a} != {b}");
}

fn f(d: rust_decimal::Decimal) -> f64 {
    d.to_string().parse().unwrap()
}

/// Per-minute (or per-bucket) aggregates of the ledger's btcusdt trades.
fn by_bucket(sim: &SimHandle, ms: i64) -> BTreeMap<i64, Vec<mdrec::sim::market::SimTrade>> {
    let mut out: BTreeMap<i64, Vec<_>> = BTreeMap::new();
    for t in sim.trades("btcusdt") {
        out.entry(t.time_ms - t.time_ms % ms).or_default().push(t);
    }
    out
}

async fn check(store: &Store, sim: &SimHandle, dialect: &str) {
    let qs = queries(dialect);
    let names: Vec<&str> = qs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, QUERIES, "{dialect}: the document's queries");
    let minutes = by_bucket(sim, 60_000);
    for (name, sql) in &qs {
        let rows = run_query(store, sql).await;
        match name.as_str() {
            "last_price" => {
                assert_eq!(rows.len(), SYMBOLS.len());
                for (row, s) in rows.iter().zip(SYMBOLS) {
                    let last = sim
                        .trades(s)
                        .into_iter()
                        .max_by_key(|t| (t.time_ms, t.id))
                        .unwrap();
                    assert_eq!(row["symbol"].s(), s);
                    assert_eq!(row["price"].f(), f(last.price), "{s}");
                    assert_eq!(row["event_time_ms"].i(), last.time_ms);
                }
            }
            "vwap_1m" => {
                assert_eq!(rows.len(), minutes.len());
                for (row, (m, ts)) in rows.iter().zip(&minutes) {
                    assert_eq!(row["minute_ms"].i(), *m);
                    let vol: f64 = ts.iter().map(|t| f(t.qty)).sum();
                    let pq: f64 = ts.iter().map(|t| f(t.price) * f(t.qty)).sum();
                    close(row["volume"].f(), vol, "volume");
                    close(row["vwap"].f(), pq / vol, "vwap");
                }
            }
            "ohlcv_from_trades" => {
                assert_eq!(rows.len(), minutes.len());
                for (row, (m, ts)) in rows.iter().zip(&minutes) {
                    let mut ts = ts.clone();
                    ts.sort_by_key(|t| (t.time_ms, t.id));
                    assert_eq!(row["minute_ms"].i(), *m);
                    assert_eq!(row["open"].f(), f(ts[0].price), "open {m}");
                    assert_eq!(row["close"].f(), f(ts[ts.len() - 1].price), "close {m}");
                    let hi = ts.iter().map(|t| t.price).max().unwrap();
                    let lo = ts.iter().map(|t| t.price).min().unwrap();
                    assert_eq!((row["high"].f(), row["low"].f()), (f(hi), f(lo)));
                    close(
                        row["volume"].f(),
                        ts.iter().map(|t| f(t.qty)).sum(),
                        "volume",
                    );
                    assert_eq!(row["trades"].i(), ts.len() as i64);
                }
            }
            "spread" => {
                assert!(rows.len() > 10, "books stored");
                let book = store
                    .load_latest_book(NAME, "btcusdt", 0)
                    .await
                    .unwrap()
                    .unwrap();
                let want = book.asks[0].0.to_f64() - book.bids[0].0.to_f64();
                let (bids, asks) = sim.book("btcusdt", 0, 150).unwrap();
                close(want, f(asks[0].0) - f(bids[0].0), "final book");
                close(rows[rows.len() - 1]["spread"].f(), want, "last spread");
                assert!(rows.iter().all(|r| r["spread"].f() > 0.0), "ask above bid");
            }
            "trades_per_second" => {
                let want = by_bucket(sim, 1000);
                assert_eq!(rows.len(), want.len());
                for (row, (sec, ts)) in rows.iter().zip(&want) {
                    assert_eq!(
                        (row["second_ms"].i(), row["trades"].i()),
                        (*sec, ts.len() as i64)
                    );
                }
            }
            "day_coverage" => {
                let max = SYMBOLS
                    .iter()
                    .flat_map(|s| sim.trades(s))
                    .map(|t| t.time_ms)
                    .max()
                    .unwrap();
                let day = max - max % 86_400_000;
                assert_eq!(rows.len(), SYMBOLS.len());
                for (row, s) in rows.iter().zip(SYMBOLS) {
                    let ts: Vec<_> = sim
                        .trades(s)
                        .into_iter()
                        .filter(|t| t.time_ms >= day && t.time_ms < day + 86_400_000)
                        .collect();
                    assert_eq!(row["trades"].i(), ts.len() as i64, "{s}");
                    assert_eq!(
                        row["first_ms"].i(),
                        ts.iter().map(|t| t.time_ms).min().unwrap()
                    );
                    assert_eq!(
                        row["last_ms"].i(),
                        ts.iter().map(|t| t.time_ms).max().unwrap()
                    );
                    let bars = sim.bars(s, "1min");
                    let final_bars = bars[..bars.len() - 1]
                        .iter()
                        .filter(|b| b.open_time_ms >= day && b.open_time_ms < day + 86_400_000)
                        .count();
                    assert_eq!(row["final_1min_bars"].i(), final_bars as i64, "{s}");
                    assert_eq!(row["unrecoverable_holes"].i(), 0);
                }
            }
            "latency_percentiles" => {
                let mut l: Vec<i64> = store
                    .load_trades(NAME, "btcusdt")
                    .await
                    .unwrap()
                    .iter()
                    .filter(|t| t.source == mdrec::model::Source::Ws)
                    .map(|t| t.recv_time_us / 1000 - t.event_time_ms)
                    .collect();
                l.sort();
                let n = l.len() as i64;
                let at = |p: i64| l[((n - 1) * p / 100) as usize];
                assert_eq!(rows.len(), 1);
                let r = &rows[0];
                assert_eq!(
                    (r["p50"].i(), r["p90"].i(), r["p99"].i(), r["max_ms"].i()),
                    (at(50), at(90), at(99), l[l.len() - 1])
                );
            }
            "buy_sell_volume" => {
                assert_eq!(rows.len(), minutes.len());
                for (row, (m, ts)) in rows.iter().zip(&minutes) {
                    let side = |s: mdrec::model::Side| -> f64 {
                        ts.iter().filter(|t| t.side == s).map(|t| f(t.qty)).sum()
                    };
                    assert_eq!(row["minute_ms"].i(), *m);
                    close(row["buy_qty"].f(), side(mdrec::model::Side::Buy), "buy");
                    close(row["sell_qty"].f(), side(mdrec::model::Side::Sell), "sell");
                }
            }
            "largest_trades" => {
                let mut ts = sim.trades("btcusdt");
                ts.sort_by(|a, b| {
                    (b.price * b.qty)
                        .cmp(&(a.price * a.qty))
                        .then(a.id.cmp(&b.id))
                });
                assert_eq!(rows.len(), 5);
                for (row, t) in rows.iter().zip(&ts) {
                    assert_eq!(row["trade_id"].i(), t.id);
                    close(row["value"].f(), f(t.price * t.qty), "value");
                }
            }
            "open_bars" => {
                let mut want = Vec::new();
                for s in SYMBOLS {
                    for iv in ["1min", "5min"] {
                        let bars = sim.bars(s, iv);
                        want.push((
                            s.to_string(),
                            iv.to_string(),
                            bars[bars.len() - 1].open_time_ms,
                        ));
                    }
                }
                let got: Vec<_> = rows
                    .iter()
                    .map(|r| {
                        (
                            r["symbol"].s().to_string(),
                            r["interval"].s().to_string(),
                            r["open_time_ms"].i(),
                        )
                    })
                    .collect();
                assert_eq!(got, want, "only the forming bars are open");
            }
            "unrecoverable_holes" => assert!(rows.is_empty(), "no outage in this run"),
            "disconnects" => {
                let got: Vec<_> = rows
                    .iter()
                    .map(|r| {
                        (
                            r["symbol"].s().to_string(),
                            r["close_reason"].s().to_string(),
                            r["sessions"].i(),
                        )
                    })
                    .collect();
                let want: Vec<_> = SYMBOLS
                    .iter()
                    .map(|s| (s.to_string(), "shutdown".to_string(), 1))
                    .collect();
                assert_eq!(got, want);
            }
            other => panic!("no check for query {other}"),
        }
    }
}

async fn record_and_check(db: &str, dialect: &str) {
    let sim = sim::start(SimConfig {
        seed: 79,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    // backfill on: trades before the first subscription come from REST, so the database holds
    // the whole ledger
    let cfg = recorder_config(
        &sim.ws_url(),
        &sim.rest_url(),
        db,
        &SYMBOLS,
        "[backfill]\nrate_per_s = 50\naudit_interval_s = 0\n",
    );
    let run = common::Recorder::start(&cfg).await;
    let store = Store::connect(db).await.unwrap();
    // a few simulated minutes of trading
    wait_for("trading", Duration::from_secs(30), || async {
        sim.bars("btcusdt", "1min").len() >= 4
    })
    .await;
    sim.halt();
    wait_for(
        "database equals the ledger",
        Duration::from_secs(30),
        || async {
            for s in SYMBOLS {
                let n = store
                    .load_trades(NAME, s)
                    .await
                    .map(|t| t.len())
                    .unwrap_or(0);
                let bars = store.load_klines(NAME, s, "1min").await.unwrap_or_default();
                let closed = bars.iter().filter(|k| k.closed).count();
                if n != sim.trades(s).len() || closed + 1 != sim.bars(s, "1min").len() {
                    return false;
                }
            }
            true
        },
    )
    .await;
    run.stop().await;
    check(&store, &sim, dialect).await;
    store.close().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_schema_doc_queries() {
    let (_dir, url) = sqlite_db();
    record_and_check(&url, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_schema_doc_queries() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    record_and_check(&db.url, "postgres").await;
    db.drop_db().await;
}
