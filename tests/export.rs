//! `mdrec export` round trips: every table (trades, bars, full books, book changes, tickers,
//! holes) exported to CSV and Parquet and read back equals the database rows exactly, 16+
//! digit decimals included; the book rebuilt on a time grid equals the book rebuilt at each
//! grid time; several symbols go one file per symbol and UTC day (hive layout); pandas,
//! polars and DuckDB read the Parquet types back (timestamps in µs UTC, DECIMAL(38, s),
//! book levels as lists) with the database's values (`MDREC_REQUIRE_PARQUET_READERS=1` makes
//! their absence a failure).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{PgDb, recorder_config, sqlite_db, wait_for};
use mdrec::decimal::Dec;
use mdrec::export::{self, Col, Format, Kind, Layout, Request, Ty, Val};
use mdrec::sim::{self, DepthMode, SimConfig, SimHandle};
use mdrec::store::Store;
use mdrec::venue::cdc_v1::NAME;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use serde_json::json;

const SYMBOLS: [&str; 2] = ["btcusdt", "hpxusdt"];
const DAY_MS: i64 = 86_400_000;
const KINDS: [Kind; 6] = [
    Kind::Trades,
    Kind::Klines,
    Kind::Book,
    Kind::BookDeltas,
    Kind::Tickers,
    Kind::Gaps,
];

fn dec(s: &str) -> Dec {
    Dec::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

fn read_csv(path: &Path, cols: &[Col]) -> Vec<Vec<Val>> {
    let mut r = csv::Reader::from_path(path).unwrap();
    let header: Vec<String> = r.headers().unwrap().iter().map(str::to_string).collect();
    assert_eq!(
        header,
        cols.iter().map(|c| c.name.clone()).collect::<Vec<_>>()
    );
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            cols.iter()
                .zip(rec.iter())
                .map(|(c, cell)| match c.ty {
                    _ if cell.is_empty()
                        && matches!(
                            c.ty,
                            Ty::OptInt | Ty::OptText | Ty::OptDec | Ty::OptTimeMs | Ty::OptTimeUs
                        ) =>
                    {
                        Val::Null
                    }
                    Ty::Int
                    | Ty::OptInt
                    | Ty::TimeMs
                    | Ty::OptTimeMs
                    | Ty::TimeUs
                    | Ty::OptTimeUs => Val::Int(cell.parse().unwrap()),
                    Ty::Bool => Val::Bool(cell.parse().unwrap()),
                    Ty::Dec | Ty::OptDec => Val::Dec(dec(cell)),
                    Ty::Levels => Val::Levels(mdrec::store::levels_from_json(cell).unwrap()),
                    Ty::Text | Ty::OptText => Val::Text(cell.to_string()),
                })
                .collect()
        })
        .collect()
}

/// A Parquet DECIMAL's value as canonical decimal text.
fn parquet_decimal(d: &parquet::data_type::Decimal) -> Dec {
    let bytes = d.data();
    let mut buf = [if bytes.first().is_some_and(|b| b & 0x80 != 0) {
        0xff
    } else {
        0
    }; 16];
    buf[16 - bytes.len()..].copy_from_slice(bytes);
    let v = i128::from_be_bytes(buf);
    let scale = d.scale() as usize;
    let digits = format!("{:0>width$}", v.unsigned_abs(), width = scale + 1);
    let (int, frac) = digits.split_at(digits.len() - scale);
    let sign = if v < 0 { "-" } else { "" };
    dec(&format!("{sign}{int}.{frac}0"))
}

fn parquet_dec(f: &Field) -> Dec {
    match f {
        Field::Decimal(d) => parquet_decimal(d),
        Field::Str(s) => dec(s),
        other => panic!("not a decimal: {other:?}"),
    }
}

/// The Parquet file read back with the Rust reader, in the CSV's terms (times as the
/// database's integers), checking each column's type on the way.
fn read_parquet(path: &Path, cols: &[Col]) -> Vec<Vec<Val>> {
    let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    reader
        .get_row_iter(None)
        .unwrap()
        .map(|row| {
            let row = row.unwrap();
            let fields: Vec<(&String, &Field)> = row.get_column_iter().collect();
            assert_eq!(fields.len(), cols.len());
            fields
                .into_iter()
                .zip(cols)
                .map(|((name, f), c)| {
                    assert_eq!(name, c.parquet_name());
                    match (c.ty, f) {
                        (_, Field::Null) => Val::Null,
                        (Ty::TimeMs | Ty::OptTimeMs, Field::TimestampMicros(us)) => {
                            assert_eq!(us % 1000, 0);
                            Val::Int(us / 1000)
                        }
                        (Ty::TimeUs, Field::TimestampMicros(us)) => Val::Int(*us),
                        (Ty::Int | Ty::OptInt, Field::Long(i)) => Val::Int(*i),
                        (Ty::Bool, Field::Bool(b)) => Val::Bool(*b),
                        (Ty::Text | Ty::OptText, Field::Str(s)) => Val::Text(s.clone()),
                        (Ty::Dec | Ty::OptDec, f) => Val::Dec(parquet_dec(f)),
                        (Ty::Levels, Field::ListInternal(l)) => Val::Levels(
                            l.elements()
                                .iter()
                                .map(|e| match e {
                                    Field::Group(g) => {
                                        let v: Vec<&Field> =
                                            g.get_column_iter().map(|(_, f)| f).collect();
                                        (parquet_dec(v[0]), parquet_dec(v[1]))
                                    }
                                    other => panic!("level {other:?}"),
                                })
                                .collect(),
                        ),
                        (ty, f) => panic!("{}: {ty:?} read as {f:?}", c.name),
                    }
                })
                .collect()
        })
        .collect()
}

fn t(s: impl ToString) -> Val {
    Val::Text(s.to_string())
}

fn opt_dec(s: Option<String>) -> Val {
    s.map_or(Val::Null, |s| Val::Dec(dec(&s)))
}

/// Numeric cells as text, each backend its own way: PostgreSQL's NUMERIC text; SQLite's
/// `exact` digits where the cell is not exact, else the cell.
fn num(store: &Store, col: &str) -> String {
    match store {
        Store::Postgres(_) => format!("CAST({col} AS TEXT)"),
        // a REAL is stored only where it is exact (up to 15 significant digits here)
        Store::Sqlite(_) => format!(
            "CASE WHEN json_extract(exact, '$.{col}') IS NOT NULL THEN json_extract(exact, '$.{col}') \
             WHEN typeof({col}) = 'real' THEN printf('%.15g', {col}) ELSE CAST({col} AS TEXT) END"
        ),
    }
}

/// A symbol's rows by `sql` (`$1` the symbol), on either backend.
async fn query_rows<T>(store: &Store, sql: &str, symbol: &str) -> Vec<T>
where
    T: Send
        + Unpin
        + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
        + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
{
    match store {
        Store::Sqlite(s) => sqlx::query_as(sql).bind(symbol).fetch_all(s.pool()).await,
        Store::Postgres(s) => sqlx::query_as(sql).bind(symbol).fetch_all(s.pool()).await,
    }
    .unwrap()
}

/// What each export must hold, read from the database independently of the exporter.
async fn expected(store: &Store, kind: Kind, symbol: &str) -> Vec<Vec<Val>> {
    match kind {
        Kind::Trades => {
            let mut v = store.load_trades(NAME, symbol).await.unwrap();
            v.sort_by_key(|x| (x.event_time_ms, x.trade_id));
            v.into_iter()
                .map(|x| {
                    vec![
                        t(NAME),
                        t(symbol),
                        Val::Int(x.trade_id),
                        t(x.side.as_str()),
                        Val::Dec(x.price),
                        Val::Dec(x.qty),
                        x.quote_qty.map_or(Val::Null, Val::Dec),
                        Val::Int(x.event_time_ms),
                        Val::Int(x.recv_time_us),
                        t(x.source.as_str()),
                    ]
                })
                .collect()
        }
        Kind::Klines => store
            .load_klines(NAME, symbol, "1min")
            .await
            .unwrap()
            .into_iter()
            .map(|k| {
                vec![
                    t(NAME),
                    t(symbol),
                    t("1min"),
                    Val::Int(k.open_time_ms),
                    Val::Dec(k.open),
                    Val::Dec(k.high),
                    Val::Dec(k.low),
                    Val::Dec(k.close),
                    Val::Dec(k.volume),
                    k.quote_volume.map_or(Val::Null, Val::Dec),
                    Val::Bool(k.closed),
                    Val::Int(k.event_time_ms),
                    Val::Int(k.recv_time_us),
                    t(k.source.as_str()),
                ]
            })
            .collect(),
        Kind::Book => {
            let sql = "SELECT recv_time_us, event_time_ms, CAST(depth_step AS BIGINT), \
                       CAST(bids AS TEXT), CAST(asks AS TEXT) FROM book_snapshots \
                       WHERE symbol = $1 ORDER BY depth_step, recv_time_us";
            let rows: Vec<(i64, i64, i64, String, String)> = query_rows(store, sql, symbol).await;
            rows.into_iter()
                .map(|(recv, ev, step, b, a)| {
                    vec![
                        t(NAME),
                        t(symbol),
                        Val::Int(step),
                        Val::Int(recv),
                        Val::Int(ev),
                        Val::Levels(mdrec::store::levels_from_json(&b).unwrap()),
                        Val::Levels(mdrec::store::levels_from_json(&a).unwrap()),
                    ]
                })
                .collect()
        }
        Kind::BookDeltas => {
            let sql = format!(
                "SELECT CAST(depth_step AS BIGINT), recv_time_us, CAST(seq AS BIGINT), event_time_ms, \
                 side, {}, {}, update_id, prev_update_id FROM book_deltas WHERE symbol = $1 \
                 ORDER BY depth_step, recv_time_us, seq",
                num(store, "price"),
                num(store, "qty")
            );
            type Row = (
                i64,
                i64,
                i64,
                i64,
                String,
                String,
                String,
                Option<i64>,
                Option<i64>,
            );
            let rows: Vec<Row> = query_rows(store, &sql, symbol).await;
            rows.into_iter()
                .map(|(step, recv, seq, ev, side, p, q, u, pu)| {
                    vec![
                        t(NAME),
                        t(symbol),
                        Val::Int(step),
                        Val::Int(recv),
                        Val::Int(seq),
                        Val::Int(ev),
                        t(side),
                        Val::Dec(dec(&p)),
                        Val::Dec(dec(&q)),
                        u.map_or(Val::Null, Val::Int),
                        pu.map_or(Val::Null, Val::Int),
                    ]
                })
                .collect()
        }
        Kind::Tickers => {
            let cols = [
                "open",
                "high",
                "low",
                "close",
                "volume",
                "quote_volume",
                "change",
                "bid",
                "bid_qty",
                "ask",
                "ask_qty",
            ];
            let sql = format!(
                "SELECT recv_time_us, event_time_ms, {} FROM tickers WHERE symbol = $1 ORDER BY recv_time_us",
                cols.map(|c| num(store, c)).join(", ")
            );
            type Row = (
                i64,
                i64,
                Option<String>,
                Option<String>,
                Option<String>,
                Option<String>,
                Option<String>,
                Option<String>,
                Option<String>,
                Option<String>,
                Option<String>,
                Option<String>,
                Option<String>,
            );
            let rows: Vec<Row> = query_rows(store, &sql, symbol).await;
            rows.into_iter()
                .map(|(recv, ev, o, h, l, c, v, qv, ch, b, bq, a, aq)| {
                    vec![
                        t(NAME),
                        t(symbol),
                        Val::Int(recv),
                        Val::Int(ev),
                        opt_dec(o),
                        opt_dec(h),
                        opt_dec(l),
                        opt_dec(c),
                        opt_dec(v),
                        opt_dec(qv),
                        opt_dec(ch),
                        opt_dec(b),
                        opt_dec(bq),
                        opt_dec(a),
                        opt_dec(aq),
                    ]
                })
                .collect()
        }
        Kind::Gaps => store
            .load_gaps(NAME, Some(symbol))
            .await
            .unwrap()
            .into_iter()
            .map(|g| {
                vec![
                    t(NAME),
                    t(symbol),
                    t(&g.stream),
                    Val::Int(g.start_ms),
                    g.end_ms.map_or(Val::Null, Val::Int),
                    t(g.status.as_str()),
                    Val::Int(g.detected_at_ms),
                    g.resolved_at_ms.map_or(Val::Null, Val::Int),
                    Val::Int(g.rows_recovered),
                    g.detail.map_or(Val::Null, t),
                ]
            })
            .collect(),
    }
}

/// A recording of both symbols with an incremental book and tickers, across a UTC midnight
/// (the simulated clock starts 90 s before one), with a cut so holes are on record.
async fn record(db: &str) -> (SimHandle, Store) {
    let now = mdrec::model::now_ms();
    let sim = sim::start(SimConfig {
        seed: 89,
        symbols: SYMBOLS.iter().map(|s| s.to_string()).collect(),
        depth_mode: DepthMode::Incremental,
        clock_start_ms: Some(now - now.rem_euclid(DAY_MS) - 90_000),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let cfg = recorder_config(
        &sim.ws_url(),
        &sim.rest_url(),
        db,
        &SYMBOLS,
        "[connection]\nreconnect_initial_ms = 200\n\n[backfill]\nrate_per_s = 50\n",
    );
    let run = common::Recorder::start(&cfg).await;
    let store = Store::connect(db).await.unwrap();
    wait_for("streaming", Duration::from_secs(30), || async {
        SYMBOLS.iter().all(|s| sim.delivered(s).len() >= 100)
    })
    .await;
    // a cut, so there are holes on record to export
    sim.cut_connections();
    wait_for("holes resolved", Duration::from_secs(30), || async {
        let g = store.load_gaps(NAME, None).await.unwrap_or_default();
        g.len() >= SYMBOLS.len() && g.iter().all(|g| g.status.as_str() != "open")
    })
    .await;
    // past midnight on the simulated clock
    wait_for("a second UTC day", Duration::from_secs(30), || async {
        SYMBOLS.iter().all(|s| {
            sim.trades(s).last().is_some_and(|x| {
                x.time_ms.rem_euclid(DAY_MS) > 60_000 && x.time_ms % DAY_MS < DAY_MS / 2
            })
        })
    })
    .await;
    sim.halt();
    wait_for(
        "database equals the ledger",
        Duration::from_secs(30),
        || async {
            for s in SYMBOLS {
                if store
                    .load_trades(NAME, s)
                    .await
                    .map(|v| v.len())
                    .unwrap_or(0)
                    != sim.trades(s).len()
                {
                    return false;
                }
            }
            true
        },
    )
    .await;
    run.stop().await;
    (sim, store)
}

fn request(kind: Kind, symbol: &str, format: Format, out: PathBuf) -> Request {
    let mut r = Request::new(kind, symbol, format, out);
    r.interval = "1min".into();
    r
}

async fn export_one(store: &Store, req: &Request) -> u64 {
    let w = export::export(store, NAME, req, |_| {}).await.unwrap();
    assert_eq!(w.len(), 1);
    w[0].rows
}

/// Every table, both formats, both symbols: the rows read back equal the database's.
async fn every_table(store: &Store, dir: &Path) {
    let mut checked = 0;
    for symbol in SYMBOLS {
        for kind in KINDS {
            let want = expected(store, kind, symbol).await;
            assert!(!want.is_empty(), "{symbol} {kind:?} has rows to export");
            for format in [Format::Csv, Format::Parquet] {
                let out = dir.join(format!("{symbol}-{kind:?}.{format:?}"));
                let req = request(kind, symbol, format, out.clone());
                let n = export_one(store, &req).await;
                assert_eq!(n as usize, want.len());
                let cols = export::columns(&req);
                let got = match format {
                    Format::Csv => read_csv(&out, &cols),
                    Format::Parquet => read_parquet(&out, &cols),
                };
                assert_eq!(got, want, "{symbol} {kind:?} {format:?}");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 24);
    // the 16+ digit amounts survive exactly (hpxusdt)
    let req = request(Kind::Trades, "hpxusdt", Format::Csv, PathBuf::new());
    let hpx = read_csv(&dir.join("hpxusdt-Trades.Csv"), &export::columns(&req));
    assert!(hpx.iter().any(|r| matches!(&r[6],
        Val::Dec(q) if q.as_str().replace('.', "").trim_start_matches('0').len() >= 16)));
}

/// The grid: each row is the book as rebuilt at its time by `load_book`, top levels only;
/// rows only where a book is known, on multiples of the step.
async fn book_grid(store: &Store, dir: &Path) -> PathBuf {
    let out = dir.join("grid.parquet");
    let mut req = request(Kind::Book, "btcusdt", Format::Parquet, out.clone());
    req.every_ms = Some(1000);
    req.depth = 5;
    let n = export_one(store, &req).await;
    let cols = export::columns(&req);
    assert_eq!(cols.len(), 6 + 5 * 4);
    let rows = read_parquet(&out, &cols);
    assert_eq!(rows.len() as u64, n);
    // an incremental recording: one or two full books, the grid has a row a second
    let full = expected(store, Kind::Book, "btcusdt").await.len();
    assert!(
        rows.len() > 20 * full,
        "{} grid rows from {full} full books",
        rows.len()
    );
    let csv_out = dir.join("grid.csv");
    req.format = Format::Csv;
    req.out = csv_out.clone();
    export_one(store, &req).await;
    assert_eq!(
        read_csv(&csv_out, &cols),
        rows,
        "csv and parquet grids agree"
    );
    // the cut: from the connection's close to the next full book the book is unknown,
    // and the grid says so by having no rows (the reconnect takes seconds of exchange time)
    let times: Vec<i64> = rows
        .iter()
        .map(|r| match r[3] {
            Val::Int(g) => g,
            _ => panic!("grid time"),
        })
        .collect();
    let widest = times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    assert!(
        widest >= 3000,
        "no rows while disconnected: widest step {widest} ms"
    );
    let step = (rows.len() / 40).max(1);
    for row in rows.iter().step_by(step) {
        let Val::Int(g) = row[3] else {
            panic!("grid time")
        };
        assert_eq!(g % 1000, 0);
        let book = store
            .load_book(NAME, "btcusdt", 0, Some(g))
            .await
            .unwrap()
            .expect("a book at a grid time");
        assert_eq!(row[4], Val::Int(book.event_time_ms), "at {g}");
        let mut want = Vec::new();
        for i in 0..5 {
            for side in [&book.bids, &book.asks] {
                match side.get(i) {
                    Some((p, q)) => want.extend([Val::Dec(p.clone()), Val::Dec(q.clone())]),
                    None => want.extend([Val::Null, Val::Null]),
                }
            }
        }
        assert_eq!(&row[6..], &want[..], "book at {g}");
    }
    out
}

/// Two symbols of different decimal scales, one call: one file per symbol and UTC day that
/// has rows, the symbol the directory's key and not a column, the rows of each in its day,
/// every one once with its values; one decimal scale per column over the whole dataset.
async fn hive(store: &Store, dir: &Path) -> Vec<PathBuf> {
    let out = dir.join("hive");
    let mut req = request(Kind::Trades, "btcusdt", Format::Parquet, out.clone());
    req.symbols = SYMBOLS.iter().map(|s| s.to_string()).collect();
    req.layout = Layout::Hive;
    let written = export::export(store, NAME, &req, |_| {}).await.unwrap();
    let cols = export::columns(&req);
    assert!(
        cols.iter().all(|c| c.name != "symbol"),
        "the hive key is not a column"
    );
    let at = |name: &str| cols.iter().position(|c| c.name == name).unwrap();
    let (event_time, trade_id) = (at("event_time_ms"), at("trade_id"));
    let mut got: std::collections::BTreeMap<&str, Vec<Vec<Val>>> = Default::default();
    let mut days = std::collections::BTreeSet::new();
    let mut scales = std::collections::BTreeSet::new();
    for w in &written {
        let rel = w
            .path
            .strip_prefix(&out)
            .unwrap()
            .to_string_lossy()
            .to_string();
        let parts: Vec<&str> = rel.split('/').collect();
        assert_eq!(parts.len(), 3, "{rel}");
        let symbol = parts[0].strip_prefix("symbol=").unwrap();
        let date = parts[1].strip_prefix("date=").unwrap();
        assert_eq!(parts[2], "part.parquet");
        days.insert(date.to_string());
        let rows = read_parquet(&w.path, &cols);
        assert_eq!(rows.len() as u64, w.rows);
        for r in &rows {
            let Val::Int(ms) = r[event_time] else {
                panic!()
            };
            assert_eq!(&mdrec::coverage::format_time(ms)[..10], date, "{rel}");
        }
        let reader = SerializedFileReader::new(std::fs::File::open(&w.path).unwrap()).unwrap();
        let schema = reader.metadata().file_metadata().schema_descr_ptr();
        let decimals: Vec<(String, i32)> = (0..schema.num_columns())
            .map(|i| schema.column(i))
            .filter(|c| c.type_precision() == 38)
            .map(|c| (c.name().to_string(), c.type_scale()))
            .collect();
        scales.insert(decimals);
        got.entry(SYMBOLS.iter().find(|s| **s == symbol).unwrap())
            .or_default()
            .extend(rows);
    }
    assert!(days.len() >= 2, "the recording crosses midnight: {days:?}");
    assert_eq!(written.len(), 2 * days.len());
    assert_eq!(
        scales.len(),
        1,
        "one decimal scale per column in every file: {scales:?}"
    );
    for s in SYMBOLS {
        let mut want = expected(store, Kind::Trades, s).await;
        for r in &mut want {
            r.remove(1); // the symbol: the directory's
        }
        let int = |v: &Val| match v {
            Val::Int(i) => *i,
            other => panic!("not an integer: {other:?}"),
        };
        let mut have = got.remove(s).unwrap_or_default();
        have.sort_by_key(|r| (int(&r[event_time]), int(&r[trade_id])));
        assert_eq!(have, want, "{s}: every trade once, each value as stored");
    }
    // the same for book changes in CSV: every change once, no empty file
    let mut dreq = request(
        Kind::BookDeltas,
        "btcusdt",
        Format::Csv,
        dir.join("hive-deltas"),
    );
    dreq.symbols = req.symbols.clone();
    dreq.layout = Layout::Hive;
    let dcols = export::columns(&dreq);
    let mut changes = 0;
    for w in export::export(store, NAME, &dreq, |_| {}).await.unwrap() {
        assert!(w.path.ends_with("part.csv"), "{}", w.path.display());
        let n = read_csv(&w.path, &dcols).len();
        assert!(n > 0 && n as u64 == w.rows, "{}", w.path.display());
        changes += n;
    }
    let mut want = 0;
    for s in SYMBOLS {
        want += expected(store, Kind::BookDeltas, s).await.len();
    }
    assert_eq!(changes, want);
    // a second call refuses to overwrite, naming the file
    let again = export::export(store, NAME, &req, |_| {}).await.unwrap_err();
    assert!(format!("{again:#}").contains("--force"), "{again:#}");
    req.force = true;
    assert_eq!(
        export::export(store, NAME, &req, |_| {})
            .await
            .unwrap()
            .len(),
        written.len()
    );
    written.into_iter().map(|w| w.path).collect()
}

/// Runs the Python readers over the files; None when they are not installed (and not
/// required).
fn python_readers(spec: &serde_json::Value, dir: &Path) -> Option<String> {
    let spec_path = dir.join("readers.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/parquet_readers.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(&spec_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    if out.status.code() == Some(3) {
        assert!(
            std::env::var("MDREC_REQUIRE_PARQUET_READERS").as_deref() != Ok("1"),
            "MDREC_REQUIRE_PARQUET_READERS=1 but {stderr}"
        );
        common::not_tested(
            &format!("no Parquet readers: {}", stderr.trim()),
            "pip install duckdb pandas pyarrow polars",
        );
        return None;
    }
    assert!(out.status.success(), "readers failed:\n{stdout}\n{stderr}");
    Some(stdout)
}

fn strings(v: &[Val]) -> serde_json::Value {
    v.iter()
        .map(|x| match x {
            Val::Null => serde_json::Value::Null,
            Val::Int(i) => json!(i),
            Val::Bool(b) => json!(b),
            Val::Text(s) => json!(s),
            Val::Dec(d) => json!(d.as_str()),
            Val::Levels(l) => json!(
                l.iter()
                    .map(|(p, q)| [p.as_str(), q.as_str()])
                    .collect::<Vec<_>>()
            ),
        })
        .collect()
}

/// What the Python readers must see in a file: each column's type and its values.
fn reader_spec(
    path: &Path,
    cols: &[Col],
    rows: &[Vec<Val>],
    meta: serde_json::Value,
) -> serde_json::Value {
    let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    let columns: Vec<serde_json::Value> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let values: Vec<Val> = rows.iter().map(|r| r[i].clone()).collect();
            let ty = match c.ty {
                Ty::TimeMs | Ty::OptTimeMs | Ty::TimeUs => json!({"type": "timestamp"}),
                Ty::Dec | Ty::OptDec | Ty::Levels => {
                    // the scale the file declares, from the leaf's type
                    let leaf = schema
                        .columns()
                        .iter()
                        .find(|l| l.path().parts()[0] == c.parquet_name())
                        .unwrap();
                    json!({"type": if c.ty == Ty::Levels { "levels" } else { "decimal" },
                           "scale": leaf.type_scale()})
                }
                Ty::Int | Ty::OptInt => json!({"type": "int"}),
                _ => json!({"type": "other"}),
            };
            let values = match c.ty {
                // µs since the epoch, as the readers give them
                Ty::TimeMs | Ty::OptTimeMs => strings(
                    &values
                        .iter()
                        .map(|v| match v {
                            Val::Int(ms) => Val::Int(ms * 1000),
                            other => other.clone(),
                        })
                        .collect::<Vec<_>>(),
                ),
                _ => strings(&values),
            };
            json!({"name": c.parquet_name(), "ty": ty, "values": values})
        })
        .collect();
    json!({"path": path, "columns": columns, "metadata": meta})
}

async fn round_trip(db: &str) {
    let (sim, store) = record(db).await;
    let dir = tempfile::tempdir().unwrap();
    every_table(&store, dir.path()).await;
    let grid = book_grid(&store, dir.path()).await;
    let hive_files = hive(&store, dir.path()).await;

    // pandas, polars and DuckDB: types and values, against the database's
    let mut files = Vec::new();
    for (kind, symbol) in [
        (Kind::Trades, "hpxusdt"),
        (Kind::Book, "btcusdt"),
        (Kind::Tickers, "btcusdt"),
    ] {
        let req = request(
            kind,
            symbol,
            Format::Parquet,
            dir.path().join(format!("{symbol}-{kind:?}.Parquet")),
        );
        let want = expected(&store, kind, symbol).await;
        files.push(reader_spec(
            &req.out,
            &export::columns(&req),
            &want,
            json!({
                "mdrec.venue": NAME, "mdrec.symbol": symbol,
            }),
        ));
    }
    let mut greq = request(Kind::Book, "btcusdt", Format::Parquet, grid.clone());
    greq.every_ms = Some(1000);
    greq.depth = 5;
    let gcols = export::columns(&greq);
    let grows = read_parquet(&grid, &gcols);
    files.push(reader_spec(
        &grid,
        &gcols,
        &grows,
        json!({"mdrec.every_ms": "1000", "mdrec.depth": "5"}),
    ));
    // the hive dataset read back whole by every reader: each trade's digits, per symbol
    let mut trades = Vec::new();
    for s in SYMBOLS {
        for x in store.load_trades(NAME, s).await.unwrap() {
            trades.push(json!({
                "symbol": s, "trade_id": x.trade_id, "price": x.price.as_str(),
                "qty": x.qty.as_str(),
                "quote_qty": x.quote_qty.as_ref().map(|q| q.as_str().to_string()),
            }));
        }
    }
    let spec = json!({
        "files": files,
        "hive": {"dir": dir.path().join("hive"), "files": hive_files.len(),
                 "rows": SYMBOLS.len(), "trades": trades},
    });
    if let Some(out) = python_readers(&spec, dir.path()) {
        eprintln!("python readers: {}", out.trim());
    }

    // the Parquet metadata: venue, symbol, source, coverage of the file
    let reader = SerializedFileReader::new(
        std::fs::File::open(dir.path().join("btcusdt-Trades.Parquet")).unwrap(),
    )
    .unwrap();
    let kv: std::collections::HashMap<String, String> = reader
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .unwrap()
        .iter()
        .map(|k| (k.key.clone(), k.value.clone().unwrap_or_default()))
        .collect();
    assert_eq!(kv["mdrec.venue"], NAME);
    assert_eq!(kv["mdrec.symbol"], "btcusdt");
    assert_eq!(kv["mdrec.kind"], "trades");
    assert_eq!(kv["mdrec.decimal_strings"], "");
    let cov: serde_json::Value = serde_json::from_str(&kv["mdrec.coverage"]).unwrap();
    let trades = &cov["streams"][0];
    assert_eq!(trades["stream"], "trades");
    assert_eq!(trades["verdict"], "holes filled", "{cov}");
    assert!(!trades["holes"].as_array().unwrap().is_empty());
    // (the simulated clock runs a day behind the sessions' wall clock here: no share to check)
    assert!(cov["live_share"].is_number(), "{cov}");

    // a time range through the command line: exactly the ledger's trades in [from, to)
    let ledger = sim.trades("btcusdt");
    let (from, to) = (
        ledger[ledger.len() / 4].time_ms,
        ledger[ledger.len() * 3 / 4].time_ms,
    );
    let in_range = ledger
        .iter()
        .filter(|x| x.time_ms >= from && x.time_ms < to)
        .count();
    let out = dir.path().join("range.csv");
    let run = mdrec_cmd(db)
        .args([
            "--kind", "trades", "--symbol", "btcusdt", "--format", "csv", "--from",
        ])
        .arg(mdrec::coverage::format_time(from))
        .arg("--to")
        .arg(to.to_string())
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let req = request(Kind::Trades, "btcusdt", Format::Csv, out.clone());
    let rows = read_csv(&out, &export::columns(&req));
    assert_eq!(rows.len(), in_range);
    assert!(
        rows.iter()
            .all(|r| matches!(r[7], Val::Int(ms) if ms >= from && ms < to))
    );
    assert!(!dir.path().join("range.csv.partial").exists());

    // several symbols by the command line: the hive layout without asking
    let run = mdrec_cmd(db)
        .args([
            "--kind",
            "book",
            "--every",
            "2s",
            "--depth",
            "3",
            "--symbol",
            "btcusdt,hpxusdt",
        ])
        .args(["--format", "csv", "--out"])
        .arg(dir.path().join("cli-hive"))
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let said = String::from_utf8_lossy(&run.stderr);
    assert!(said.contains("symbol=hpxusdt/date="), "{said}");
    assert!(said.contains("part.csv"), "{said}");
    // a file in directories that do not exist yet: made, as `mkdir -p` would
    let nested = dir.path().join("new/dir/trades.csv");
    let run = mdrec_cmd(db)
        .args([
            "--kind", "trades", "--symbol", "btcusdt", "--format", "csv", "--out",
        ])
        .arg(&nested)
        .output()
        .unwrap();
    assert!(
        run.status.success() && nested.exists(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    eprintln!(
        "export round trip: 24 files, grid {} rows, hive {} files, range {in_range} trades",
        grows.len(),
        hive_files.len()
    );
    store.close().await;
    sim.shutdown().await;
}

fn mdrec_cmd(db: &str) -> std::process::Command {
    common::mdrec_cmd("export", db)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_export_round_trip() {
    let (_dir, url) = sqlite_db();
    round_trip(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_export_round_trip() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    round_trip(&db.url).await;
    db.drop_db().await;
}

/// Refused before anything is written, exit 2, naming the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_export_requests_are_refused() {
    let (dir, url) = sqlite_db();
    let store = Store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    sqlx::query("INSERT INTO sessions (venue, symbol, session_id, connected_at_us) VALUES ($1, 'btcusdt', 's', 1)")
        .bind(NAME)
        .execute(match &store {
            Store::Sqlite(s) => s.pool(),
            Store::Postgres(_) => unreachable!(),
        })
        .await
        .unwrap();
    store.close().await;
    let out = dir.path().join("x.parquet");
    for (args, flag) in [
        (vec!["--kind", "trades", "--every", "1s"], "--every"),
        (vec!["--kind", "book", "--every", "0s"], "--every"),
        (
            vec![
                "--kind", "trades", "--symbol", "ethusdt", "--layout", "file",
            ],
            "--layout",
        ),
        (vec!["--kind", "book", "--every", "1s"], "--kind"),
    ] {
        let run = mdrec_cmd(&url)
            .args(["--symbol", "btcusdt", "--format", "parquet", "--out"])
            .arg(&out)
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?} names {flag}: {err}");
        assert!(!out.exists());
    }
}
