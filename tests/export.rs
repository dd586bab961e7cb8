//! `mdrec export` round trips: trades, bars, books and holes exported to CSV and Parquet read
//! back (Rust readers) equal the database rows exactly, 16+ digit decimals included; a time
//! range selects exactly the ledger's trades in it; DuckDB, a standard Parquet reader, opens
//! the files where it is installed (`MDREC_REQUIRE_DUCKDB=1` makes its absence a failure).

mod common;

use std::path::Path;
use std::time::Duration;

use common::{PgDb, recorder_config, sqlite_db, wait_for};
use mdrec::export::{self, Format, Kind, Request, Val};
use mdrec::sim::{self, SimConfig};
use mdrec::store::Store;
use mdrec::venue::cdc_v1::NAME;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;

const SYMBOLS: [&str; 2] = ["btcusdt", "hpxusdt"];

fn read_csv(path: &Path, kind: Kind) -> Vec<Vec<Val>> {
    let cols = export::columns(kind);
    let mut r = csv::Reader::from_path(path).unwrap();
    let header: Vec<String> = r.headers().unwrap().iter().map(str::to_string).collect();
    assert_eq!(header, cols.iter().map(|c| c.0).collect::<Vec<_>>());
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            cols.iter()
                .zip(rec.iter())
                .map(|((_, ty), cell)| match ty {
                    export::Ty::Int => Val::Int(cell.parse().unwrap()),
                    export::Ty::OptInt if cell.is_empty() => Val::Null,
                    export::Ty::OptInt => Val::Int(cell.parse().unwrap()),
                    export::Ty::Bool => Val::Bool(cell.parse().unwrap()),
                    export::Ty::OptText if cell.is_empty() => Val::Null,
                    _ => Val::Text(cell.to_string()),
                })
                .collect()
        })
        .collect()
}

fn read_parquet(path: &Path) -> Vec<Vec<Val>> {
    let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    reader
        .get_row_iter(None)
        .unwrap()
        .map(|row| {
            row.unwrap()
                .get_column_iter()
                .map(|(_, f)| match f {
                    Field::Null => Val::Null,
                    Field::Long(i) => Val::Int(*i),
                    Field::Bool(b) => Val::Bool(*b),
                    Field::Str(s) => Val::Text(s.clone()),
                    other => panic!("unexpected parquet field {other:?}"),
                })
                .collect()
        })
        .collect()
}

fn t(s: impl ToString) -> Val {
    Val::Text(s.to_string())
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
                        t(&x.price),
                        t(&x.qty),
                        x.quote_qty.map_or(Val::Null, t),
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
                    t(&k.open),
                    t(&k.high),
                    t(&k.low),
                    t(&k.close),
                    t(&k.volume),
                    k.quote_volume.map_or(Val::Null, t),
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
                       WHERE symbol = $1 ORDER BY recv_time_us";
            let rows: Vec<(i64, i64, i64, String, String)> = match store {
                Store::Sqlite(s) => sqlx::query_as(sql).bind(symbol).fetch_all(s.pool()).await,
                Store::Postgres(s) => sqlx::query_as(sql).bind(symbol).fetch_all(s.pool()).await,
            }
            .unwrap();
            rows.into_iter()
                .map(|(recv, ev, step, b, a)| {
                    vec![
                        t(NAME),
                        t(symbol),
                        Val::Int(step),
                        Val::Int(recv),
                        Val::Int(ev),
                        t(b),
                        t(a),
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

/// DuckDB's view of a Parquet file: (rows, the first `price` or `open` column value).
fn duckdb(path: &Path, column: &str) -> Option<(i64, String)> {
    let script = format!(
        "import duckdb\nr = duckdb.sql(\"SELECT count(*), min({column}) FROM '{}'\").fetchall()[0]\nprint(r[0], r[1])",
        path.display()
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .ok()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("No module named 'duckdb'"),
            "duckdb failed on {}: {err}",
            path.display()
        );
        assert!(
            std::env::var("MDREC_REQUIRE_DUCKDB").as_deref() != Ok("1"),
            "MDREC_REQUIRE_DUCKDB=1 but python3 cannot import duckdb"
        );
        eprintln!("SKIP duckdb check: not installed");
        return None;
    }
    let text = String::from_utf8(out.stdout).unwrap();
    let (n, v) = text.trim().split_once(' ')?;
    Some((n.parse().ok()?, v.to_string()))
}

async fn round_trip(db: &str) {
    let sim = sim::start(SimConfig {
        seed: 89,
        symbols: SYMBOLS.iter().map(|s| s.to_string()).collect(),
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

    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for symbol in SYMBOLS {
        for kind in [Kind::Trades, Kind::Klines, Kind::Book, Kind::Gaps] {
            let want = expected(&store, kind, symbol).await;
            assert!(!want.is_empty(), "{symbol} {kind:?} has rows to export");
            for format in [Format::Csv, Format::Parquet] {
                let out = dir.path().join(format!("{symbol}-{kind:?}.{format:?}"));
                let req = Request {
                    kind,
                    symbol: symbol.into(),
                    interval: "1min".into(),
                    from_ms: i64::MIN,
                    to_ms: i64::MAX,
                    format,
                    out: out.clone(),
                    force: false,
                };
                let n = export::export(&store, NAME, &req, |_| {}).await.unwrap();
                assert_eq!(n as usize, want.len());
                let got = match format {
                    Format::Csv => read_csv(&out, kind),
                    Format::Parquet => read_parquet(&out),
                };
                assert_eq!(got, want, "{symbol} {kind:?} {format:?}");
                checked += 1;
                if format == Format::Parquet && kind == Kind::Trades {
                    if let Some((rows, min)) = duckdb(&out, "price") {
                        assert_eq!(rows as usize, want.len());
                        let lowest = store
                            .load_trades(NAME, symbol)
                            .await
                            .unwrap()
                            .into_iter()
                            .map(|x| x.price.to_string())
                            .min()
                            .unwrap();
                        assert_eq!(min, lowest, "duckdb reads the exact strings");
                    }
                }
            }
        }
    }
    assert_eq!(checked, 16);
    // the 16+ digit amounts survive exactly (hpxusdt)
    let hpx = read_csv(&dir.path().join("hpxusdt-Trades.Csv"), Kind::Trades);
    assert!(hpx.iter().any(
        |r| matches!(&r[6], Val::Text(q) if q.replace('.', "").trim_start_matches('0').len() >= 16)
    ));

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
    let cfg_path = dir.path().join("c.toml");
    std::fs::write(
        &cfg_path,
        format!("[venue]\nkind = \"cdc-v1\"\n[database]\nurl = \"{db}\"\n[record]\nsymbols = [\"btcusdt\"]\n"),
    )
    .unwrap();
    let out = dir.path().join("range.csv");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_mdrec"))
        .args(["export", "-c"])
        .arg(&cfg_path)
        .args([
            "--kind", "trades", "--symbol", "btcusdt", "--format", "csv", "--from",
        ])
        .arg(mdrec::coverage::format_time(from))
        .arg("--to")
        .arg(to.to_string())
        .arg("--out")
        .arg(&out)
        .env_remove("MDREC_DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let rows = read_csv(&out, Kind::Trades);
    assert_eq!(rows.len(), in_range);
    assert!(
        rows.iter()
            .all(|r| matches!(r[7], Val::Int(ms) if ms >= from && ms < to))
    );
    assert!(!dir.path().join("range.csv.partial").exists());
    eprintln!("export round trip: 16 files, range export {in_range} trades");
    store.close().await;
    sim.shutdown().await;
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
