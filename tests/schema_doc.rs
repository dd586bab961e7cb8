//! Every worked query in docs/SCHEMA.md, read from the document itself, runs on SQLite and
//! PostgreSQL after a run of each venue's simulator with the demo's streams (the queries are
//! written for the default venue; for the others the test makes exactly the replacements the
//! document's table names) and returns what the simulator's ledger implies.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{PgDb, sqlite_db, wait_for};
use mdrec::sim::{self, SimConfig, SimHandle};
use mdrec::store::Store;
use sqlx::{Column, Row, TypeInfo, ValueRef};

/// A venue's words in the queries: the document's table.
struct Words {
    venue: &'static str,
    symbol: &'static str,
    one_min: &'static str,
    five_min: &'static str,
    depth: i16,
}

const EXCHANGE: Words = Words {
    venue: "cdc-exchange",
    symbol: "BTC_USD",
    one_min: "1m",
    five_min: "5m",
    depth: 50,
};
const V2: Words = Words {
    venue: "cdc-v2",
    symbol: "BTC_USD",
    one_min: "1m",
    five_min: "5m",
    depth: 10,
};
const V1: Words = Words {
    venue: "cdc-v1",
    symbol: "btcusdt",
    one_min: "1min",
    five_min: "5min",
    depth: 0,
};

impl Words {
    /// A query as written for the default venue, in this venue's words; the document's table
    /// must name exactly these replacements.
    fn apply(&self, doc: &str, sql: &str) -> String {
        let row = format!(
            "| `'{}'` | `'{}'` | `'{}'` | `{}` |",
            self.venue, self.symbol, self.one_min, self.depth
        );
        assert!(doc.contains(&row), "the document's table lacks {row}");
        sql.replace("'cdc-exchange'", &format!("'{}'", self.venue))
            .replace("'BTC_USD'", &format!("'{}'", self.symbol))
            .replace("'1m'", &format!("'{}'", self.one_min))
            .replace("depth_step = 50", &format!("depth_step = {}", self.depth))
    }
}

fn doc() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/SCHEMA.md"))
        .expect("docs/SCHEMA.md")
}

const QUERIES: [&str; 15] = [
    "last_price",
    "vwap_1m",
    "ohlcv_from_trades",
    "top_of_book",
    "top_of_book_at",
    "book_top_at",
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
    let doc = doc();
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

/// Per-minute (or per-bucket) aggregates of the ledger's trades of `symbol`.
fn by_bucket(
    sim: &SimHandle,
    symbol: &str,
    ms: i64,
) -> BTreeMap<i64, Vec<mdrec::sim::market::SimTrade>> {
    let mut out: BTreeMap<i64, Vec<_>> = BTreeMap::new();
    for t in sim.trades(symbol) {
        out.entry(t.time_ms - t.time_ms % ms).or_default().push(t);
    }
    out
}

/// Rows keyed by their `symbol` column (collations order symbols differently).
fn by_symbol(rows: &Rows) -> BTreeMap<String, &BTreeMap<String, Cell>> {
    let out: BTreeMap<_, _> = rows
        .iter()
        .map(|r| (r["symbol"].s().to_string(), r))
        .collect();
    assert_eq!(out.len(), rows.len(), "one row per symbol");
    out
}

fn dec(d: &Option<mdrec::decimal::Dec>) -> f64 {
    d.as_ref().expect("a value").to_f64()
}

struct Run<'a> {
    store: &'a Store,
    sim: &'a SimHandle,
    w: &'a Words,
    symbols: Vec<String>,
}

impl Run<'_> {
    async fn tickers(&self) -> Vec<mdrec::model::Ticker> {
        self.store
            .tickers_page(
                self.w.venue,
                self.w.symbol,
                i64::MIN,
                (i64::MIN, i64::MAX),
                1_000_000,
            )
            .await
            .unwrap()
            .into_iter()
            .filter(|t| t.bid.is_some() && t.ask.is_some())
            .collect()
    }

    fn last_trade_ms(&self) -> i64 {
        self.sim
            .trades(self.w.symbol)
            .iter()
            .map(|t| t.time_ms)
            .max()
            .unwrap()
    }

    async fn check_books(&self, name: &str, rows: &Rows) {
        let (store, w) = (self.store, self.w);
        match name {
            "top_of_book" => {
                let want = self.tickers().await;
                if w.venue == "cdc-v1" {
                    assert!(rows.is_empty() && want.is_empty(), "v1 sends no bid/ask");
                    return;
                }
                assert!(want.len() > 10, "tickers with a bid and an ask");
                assert_eq!(rows.len(), want.len());
                for (r, t) in rows.iter().zip(&want) {
                    assert_eq!(r["event_time_ms"].i(), t.event_time_ms);
                    close(r["bid"].f(), dec(&t.bid), "bid");
                    close(r["ask"].f(), dec(&t.ask), "ask");
                    close(r["ask_qty"].f(), dec(&t.ask_qty), "ask size");
                    close(r["spread"].f(), dec(&t.ask) - dec(&t.bid), "spread");
                    assert!(r["spread"].f() > 0.0, "ask above bid");
                }
            }
            "top_of_book_at" => {
                let at = self.last_trade_ms();
                let want = self
                    .tickers()
                    .await
                    .into_iter()
                    .filter(|t| t.event_time_ms <= at)
                    .max_by_key(|t| (t.event_time_ms, t.recv_time_us));
                match want {
                    None => assert!(rows.is_empty(), "{rows:?}"),
                    Some(t) => {
                        assert_eq!(rows.len(), 1);
                        assert_eq!(rows[0]["event_time_ms"].i(), t.event_time_ms);
                        close(rows[0]["bid"].f(), dec(&t.bid), "bid at");
                        close(rows[0]["ask"].f(), dec(&t.ask), "ask at");
                    }
                }
            }
            "book_top_at" => {
                let at = self.last_trade_ms();
                let t = store
                    .snapshot_time(w.venue, w.symbol, w.depth, Some(at))
                    .await
                    .unwrap()
                    .expect("a snapshot before the last trade");
                assert_eq!(rows.len(), 1);
                assert_eq!(rows[0]["event_time_ms"].i(), t);
                assert!(rows[0]["bid"].f() < rows[0]["ask"].f(), "{rows:?}");
            }
            "spread" => {
                assert!(!rows.is_empty(), "books stored");
                let book = store
                    .load_book(w.venue, w.symbol, w.depth, None)
                    .await
                    .unwrap()
                    .unwrap();
                let (bids, asks) = self.sim.book(w.symbol, 0, 150).unwrap();
                let want = book.asks[0].0.to_f64() - book.bids[0].0.to_f64();
                close(want, f(asks[0].0) - f(bids[0].0), "final book");
                assert!(rows.iter().all(|r| r["spread"].f() > 0.0), "ask above bid");
                if w.venue != "cdc-exchange" {
                    // full books all along: the last stored is the final book
                    assert!(rows.len() > 10, "books stored");
                    close(rows[rows.len() - 1]["spread"].f(), want, "last spread");
                }
            }
            other => panic!("no check for query {other}"),
        }
    }

    async fn check_trades(&self, name: &str, rows: &Rows) {
        let (sim, w) = (self.sim, self.w);
        let minutes = by_bucket(sim, w.symbol, 60_000);
        match name {
            "last_price" => {
                let got = by_symbol(rows);
                assert_eq!(got.len(), self.symbols.len());
                for s in &self.symbols {
                    let last = sim
                        .trades(s)
                        .into_iter()
                        .max_by_key(|t| (t.time_ms, t.id))
                        .unwrap();
                    assert_eq!(got[s]["price"].f(), f(last.price), "{s}");
                    assert_eq!(got[s]["event_time_ms"].i(), last.time_ms);
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
            "trades_per_second" => {
                let want = by_bucket(sim, w.symbol, 1000);
                assert_eq!(rows.len(), want.len());
                for (row, (sec, ts)) in rows.iter().zip(&want) {
                    assert_eq!(
                        (row["second_ms"].i(), row["trades"].i()),
                        (*sec, ts.len() as i64)
                    );
                }
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
                let mut ts = sim.trades(w.symbol);
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
            other => self.check_books(other, rows).await,
        }
    }

    async fn check_rest(&self, name: &str, rows: &Rows) {
        let (store, sim, w) = (self.store, self.sim, self.w);
        match name {
            "day_coverage" => {
                let max = self
                    .symbols
                    .iter()
                    .flat_map(|s| sim.trades(s))
                    .map(|t| t.time_ms)
                    .max()
                    .unwrap();
                let day = max - max % 86_400_000;
                let got = by_symbol(rows);
                assert_eq!(got.len(), self.symbols.len());
                for s in &self.symbols {
                    let row = got[s];
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
                    let bars = sim.bars(s, w.one_min);
                    let final_bars = bars[..bars.len() - 1]
                        .iter()
                        .filter(|b| b.open_time_ms >= day && b.open_time_ms < day + 86_400_000)
                        .count();
                    assert_eq!(row["final_1m_bars"].i(), final_bars as i64, "{s}");
                    assert_eq!(row["unrecoverable_holes"].i(), 0);
                }
            }
            "latency_percentiles" => {
                let mut l: Vec<i64> = store
                    .load_trades(w.venue, w.symbol)
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
            "open_bars" => {
                let mut want = Vec::new();
                for s in &self.symbols {
                    for iv in [w.one_min, w.five_min] {
                        let bars = sim.bars(s, iv);
                        want.push((s.clone(), iv.to_string(), bars[bars.len() - 1].open_time_ms));
                    }
                }
                let mut got: Vec<_> = rows
                    .iter()
                    .map(|r| {
                        (
                            r["symbol"].s().to_string(),
                            r["interval"].s().to_string(),
                            r["open_time_ms"].i(),
                        )
                    })
                    .collect();
                want.sort();
                got.sort();
                assert_eq!(got, want, "only the forming bars are open");
            }
            "unrecoverable_holes" => assert!(rows.is_empty(), "no outage in this run"),
            "disconnects" => {
                let mut got: Vec<_> = rows
                    .iter()
                    .map(|r| {
                        (
                            r["symbol"].s().to_string(),
                            r["close_reason"].s().to_string(),
                            r["sessions"].i(),
                        )
                    })
                    .collect();
                got.sort();
                let mut want: Vec<_> = self
                    .symbols
                    .iter()
                    .map(|s| (s.clone(), "shutdown".to_string(), 1))
                    .collect();
                want.sort();
                assert_eq!(got, want);
            }
            other => self.check_trades(other, rows).await,
        }
    }
}

async fn check(run: &Run<'_>, dialect: &str) {
    let doc = doc();
    let qs = queries(dialect);
    let names: Vec<&str> = qs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, QUERIES, "{dialect}: the document's queries");
    for (name, sql) in &qs {
        let sql = run.w.apply(&doc, sql);
        let rows = run_query(run.store, &sql).await;
        eprintln!("{} {dialect} {name}: {} rows", run.w.venue, rows.len());
        run.check_rest(name, &rows).await;
    }
}

/// Records `w`'s simulator with the demo's streams until a few one-minute bars are final,
/// then runs and checks every query.
async fn record_and_check(db: &str, dialect: &str, w: &Words) {
    let base = SimConfig::for_venue(w.venue).expect("a simulated venue");
    let symbols = base.symbols.clone();
    // halted until every channel is subscribed: the sockets deliver the whole ledger
    let sim = sim::start(SimConfig {
        seed: 79,
        start_halted: true,
        ..base
    })
    .await
    .unwrap();
    let cfg = common::config::TestConfig::new(w.venue, &sim.ws_url(), &sim.rest_url(), db)
        .symbols(&symbols)
        .build();
    let run = common::Recorder::start(&cfg).await;
    let store = Store::connect(db).await.unwrap();
    // trades, ticker, two intervals and a book per symbol
    assert!(
        sim.wait_subscriptions(5 * symbols.len(), Duration::from_secs(30))
            .await,
        "subscribed"
    );
    sim.resume();
    // a few simulated minutes of trading
    wait_for("trading", Duration::from_secs(60), || async {
        sim.bars(w.symbol, w.one_min).len() >= 4
    })
    .await;
    sim.halt();
    wait_for(
        "database equals the ledger",
        Duration::from_secs(30),
        || async {
            for s in &symbols {
                let n = store
                    .load_trades(w.venue, s)
                    .await
                    .map(|t| t.len())
                    .unwrap_or(0);
                let bars = store
                    .load_klines(w.venue, s, w.one_min)
                    .await
                    .unwrap_or_default();
                let closed = bars.iter().filter(|k| k.closed).count();
                if n != sim.trades(s).len() || closed + 1 != sim.bars(s, w.one_min).len() {
                    return false;
                }
            }
            true
        },
    )
    .await;
    run.stop().await;
    let r = Run {
        store: &store,
        sim: &sim,
        w,
        symbols,
    };
    check(&r, dialect).await;
    store.close().await;
    sim.shutdown().await;
}

async fn on_postgres(w: &Words) {
    let Some(db) = PgDb::create().await else {
        return;
    };
    record_and_check(&db.url, "postgres", w).await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_schema_doc_queries_on_the_exchange() {
    let (_dir, url) = sqlite_db();
    record_and_check(&url, "sqlite", &EXCHANGE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_schema_doc_queries_on_the_exchange() {
    on_postgres(&EXCHANGE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_schema_doc_queries_on_v2() {
    let (_dir, url) = sqlite_db();
    record_and_check(&url, "sqlite", &V2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_schema_doc_queries_on_v2() {
    on_postgres(&V2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_schema_doc_queries_on_v1() {
    let (_dir, url) = sqlite_db();
    record_and_check(&url, "sqlite", &V1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_schema_doc_queries_on_v1() {
    on_postgres(&V1).await;
}

/// Every query, as the document's table says to adapt it, on what `mdrec demo` itself writes
/// for each venue: it runs and finds the demo's data (values are checked against the ledger
/// above; here the demo's own file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_query_runs_on_a_demo_database_of_every_venue() {
    let doc = doc();
    for w in [&EXCHANGE, &V2, &V1] {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("demo.db");
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_mdrec"))
            .args(["demo", "--venue", w.venue, "--seconds", "3", "--db"])
            .arg(&db)
            .env_remove("MDREC_DATABASE_URL")
            .env("RUST_LOG", "warn")
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let store = Store::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        for (name, sql) in queries("sqlite") {
            let rows = run_query(&store, &w.apply(&doc, &sql)).await;
            let expect_rows = match name.as_str() {
                "unrecoverable_holes" => false,
                "top_of_book" | "top_of_book_at" => w.venue != "cdc-v1",
                _ => true,
            };
            assert_eq!(
                !rows.is_empty(),
                expect_rows,
                "{} {name}: {} rows",
                w.venue,
                rows.len()
            );
        }
        store.close().await;
    }
}
