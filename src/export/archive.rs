//! Archive parts (see `src/archive`), written by the export's machinery: a table's rows of
//! one symbol and window (gaps and sessions: of the venue) as zstd Parquet in memory, with
//! one schema per table for the whole archive: the export's columns without the hive keys
//! (`venue`, `symbol`: they are in the path), decimals `DECIMAL(38, 18)` whatever the rows
//! hold, so every part of a table reads as one dataset. A digest of the rows as read from
//! the database goes with the bytes, for the read-back check.

use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;

use super::pages::produce;
use super::parquet_sink::{DecPlan, ParquetSink, coverage_json, leaves};
use super::plan::{Part, Window};
use super::request::{Format, Kind, Layout, Request};
use super::rows::{Col, Sink, Ty, Val, cols, columns, gap_row};
use crate::store::Store;

/// Fraction digits of every archived decimal: 18 (wei) and 20 before the point. A value
/// beyond either fails its part loudly; its rows stay in the database.
pub const SCALE: usize = 18;

/// A decimal's unscaled value at the archive's scale (None: more fraction digits).
pub fn unscaled(d: &crate::decimal::Dec) -> Option<i128> {
    super::parquet_sink::unscaled(d, SCALE)
}

/// Refuses a decimal that `DECIMAL(38, SCALE)` cannot hold.
fn fits(d: &crate::decimal::Dec) -> anyhow::Result<()> {
    let (int, frac) = super::parquet_sink::digits(d);
    anyhow::ensure!(
        int + SCALE <= super::parquet_sink::PRECISION && frac <= SCALE,
        "{d} does not fit the archive's DECIMAL(38,{SCALE}); its rows stay in the database"
    );
    Ok(())
}

/// The tables the archive holds, as its directories name them.
pub const TABLES: [&str; 7] = [
    "trades",
    "klines",
    "book_snapshots",
    "book_deltas",
    "tickers",
    "gaps",
    "sessions",
];

/// Whether a table is archived per venue and day (not per symbol and period).
pub fn per_venue(table: &str) -> bool {
    matches!(table, "gaps" | "sessions")
}

fn kind(table: &str) -> Option<Kind> {
    Some(match table {
        "trades" => Kind::Trades,
        "klines" => Kind::Klines,
        "book_snapshots" => Kind::Book,
        "book_deltas" => Kind::BookDeltas,
        "tickers" => Kind::Tickers,
        "gaps" => Kind::Gaps,
        _ => return None,
    })
}

fn request(kind: Kind, symbol: &str, from_ms: i64, to_ms: i64) -> Request {
    let mut r = Request::new(kind, symbol, Format::Parquet, "");
    r.layout = Layout::Hive;
    r.from_ms = from_ms;
    r.to_ms = to_ms;
    r
}

/// The columns of a table's parts, in order.
pub fn archive_columns(table: &str) -> Vec<Col> {
    use Ty::*;
    if table == "sessions" {
        return cols(&[
            ("symbol", Text),
            ("session_id", Text),
            ("connected_at_us", TimeUs),
            ("disconnected_at_us", OptTimeUs),
            ("close_reason", OptText),
        ]);
    }
    let Some(kind) = kind(table) else {
        return Vec::new();
    };
    let mut whole = request(kind, "", 0, 0);
    whole.layout = Layout::File;
    let mut c = columns(&whole);
    c.retain(|c| c.name != "venue");
    if kind != Kind::Gaps {
        c.retain(|c| c.name != "symbol");
    }
    c
}

/// A digest of rows as the archive keeps them: every cell's canonical text, in order.
#[derive(Default)]
pub struct Digest {
    h: xxhash_rust::xxh3::Xxh3,
    pub rows: u64,
}

impl Digest {
    pub fn add(&mut self, row: &[Val]) {
        for v in row {
            match v {
                Val::Null => self.h.update(b"N"),
                Val::Int(i) => {
                    self.h.update(b"I");
                    self.h.update(&i.to_le_bytes());
                }
                Val::Bool(b) => self.h.update(if *b { b"T" } else { b"F" }),
                Val::Text(t) => {
                    self.h.update(b"S");
                    self.h.update(&(t.len() as u64).to_le_bytes());
                    self.h.update(t.as_bytes());
                }
                Val::Dec(d) => {
                    self.h.update(b"D");
                    self.h.update(d.as_str().as_bytes());
                    self.h.update(b";");
                }
                Val::Levels(l) => {
                    self.h.update(b"L");
                    self.h.update(&(l.len() as u64).to_le_bytes());
                    for (p, q) in l {
                        self.h.update(p.as_str().as_bytes());
                        self.h.update(b":");
                        self.h.update(q.as_str().as_bytes());
                        self.h.update(b";");
                    }
                }
            }
        }
        self.h.update(b"\n");
        self.rows += 1;
    }

    pub fn hex(&self) -> String {
        format!("{:032x}", self.h.digest128())
    }
}

/// Cells as the archive keeps them: the venue (and, from `produce`, the symbol where the
/// path holds it) left out, as the columns are.
struct Cut<'a> {
    to: &'a mut (dyn Sink + Send),
    drop_cells: Vec<usize>,
}

impl Sink for Cut<'_> {
    fn write(&mut self, mut rows: Vec<Vec<Val>>) -> anyhow::Result<()> {
        for r in &mut rows {
            for &i in &self.drop_cells {
                r.remove(i);
            }
        }
        self.to.write(rows)
    }
}

/// Rows into the Parquet writer and the digest, each decimal checked against the schema.
struct Tee {
    out: ParquetSink<Vec<u8>>,
    digest: Digest,
}

impl Sink for Tee {
    fn write(&mut self, rows: Vec<Vec<Val>>) -> anyhow::Result<()> {
        for r in &rows {
            for v in r.iter() {
                match v {
                    Val::Dec(d) => fits(d)?,
                    Val::Levels(l) => {
                        for (p, q) in l {
                            fits(p)?;
                            fits(q)?;
                        }
                    }
                    _ => {}
                }
            }
            self.digest.add(r);
        }
        self.out.write(rows)
    }
}

/// Rows kept in memory (a part merged with late rows).
#[derive(Default)]
struct Collect(Vec<Vec<Val>>);

impl Sink for Collect {
    fn write(&mut self, rows: Vec<Vec<Val>>) -> anyhow::Result<()> {
        self.0.extend(rows);
        Ok(())
    }
}

/// One part, written: the Parquet bytes, rows and digest.
pub struct Written {
    pub bytes: Vec<u8>,
    pub digest: Digest,
}

fn tee(table: &str, meta: Vec<(String, String)>) -> anyhow::Result<Tee> {
    let cols = archive_columns(table);
    anyhow::ensure!(!cols.is_empty(), "{table} is not an archived table");
    let (_, n) = leaves(&cols);
    let meta = meta.into_iter().map(|(k, v)| KeyValue::new(k, v)).collect();
    let compression = Compression::ZSTD(ZstdLevel::try_new(3)?);
    let out = ParquetSink::with_plans(
        Vec::new(),
        cols,
        vec![DecPlan::Decimal { scale: SCALE }; n],
        meta,
        compression,
    )?;
    Ok(Tee {
        out,
        digest: Digest::default(),
    })
}

/// A table's rows with exchange time (bars: open time; holes: start; sessions: connect
/// time) in `[from_ms, to_ms)`, of one symbol (gaps and sessions: every symbol of the
/// venue), as one zstd Parquet file. `meta`: key-value metadata to add.
pub async fn write(
    store: &Store,
    venue: &'static str,
    table: &str,
    symbol: &str,
    window: (i64, i64),
    meta: Vec<(String, String)>,
) -> anyhow::Result<Written> {
    let mut t = tee(table, meta)?;
    rows(store, venue, table, symbol, window, &mut t).await?;
    Ok(Written {
        bytes: t.out.into_inner()?,
        digest: t.digest,
    })
}

/// The recorder's word on a part's window, as `mdrec export` writes it into its files: the
/// live share, and per stream the verdict and the holes on record (bars: per interval).
/// None for gaps and sessions: they are that word.
pub async fn coverage(
    store: &Store,
    venue: &'static str,
    table: &str,
    symbol: &str,
    (from_ms, to_ms): (i64, i64),
) -> anyhow::Result<Option<serde_json::Value>> {
    let Some(kind) = kind(table).filter(|k| *k != Kind::Gaps) else {
        return Ok(None);
    };
    let win = Window {
        from: from_ms,
        to: to_ms,
        first: false,
    };
    let part = Part::window(symbol, win);
    if kind != Kind::Klines {
        let req = request(kind, symbol, from_ms, to_ms);
        return Ok(Some(coverage_json(store, venue, &req, &part).await?));
    }
    let mut by = serde_json::Map::new();
    for iv in store.stored_intervals(venue, symbol).await? {
        let mut req = request(kind, symbol, from_ms, to_ms);
        req.interval = iv.clone();
        by.insert(iv, coverage_json(store, venue, &req, &part).await?);
    }
    Ok(Some(serde_json::Value::Object(by)))
}

/// Rows (as archived) as one zstd Parquet file.
pub fn encode(
    table: &str,
    rows: Vec<Vec<Val>>,
    meta: Vec<(String, String)>,
) -> anyhow::Result<Written> {
    let mut t = tee(table, meta)?;
    t.write(rows)?;
    Ok(Written {
        bytes: t.out.into_inner()?,
        digest: t.digest,
    })
}

/// The rows `write` would write, in memory.
pub async fn collect(
    store: &Store,
    venue: &'static str,
    table: &str,
    symbol: &str,
    window: (i64, i64),
) -> anyhow::Result<Vec<Vec<Val>>> {
    let mut c = Collect::default();
    rows(store, venue, table, symbol, window, &mut c).await?;
    Ok(c.0)
}

/// Names of the cells that identify a row (a row is archived once by them), and of the
/// cells a part is ordered by.
fn key_and_order(table: &str) -> (&'static [&'static str], &'static [&'static str]) {
    match table {
        "trades" => (&["trade_id"], &["event_time_ms", "trade_id"]),
        "klines" => (&["interval", "open_time_ms"], &["interval", "open_time_ms"]),
        "book_snapshots" => (
            &["depth_step", "recv_time_us"],
            &["depth_step", "recv_time_us"],
        ),
        "book_deltas" => (
            &["depth_step", "recv_time_us", "seq"],
            &["depth_step", "recv_time_us", "seq"],
        ),
        "tickers" => (&["recv_time_us"], &["recv_time_us"]),
        "gaps" => (
            &["symbol", "stream", "start_ms"],
            &["symbol", "stream", "start_ms"],
        ),
        _ => (
            &["symbol", "session_id"],
            &["connected_at_us", "symbol", "session_id"],
        ),
    }
}

fn positions(table: &str, names: &[&str]) -> Vec<usize> {
    let cols = archive_columns(table);
    names
        .iter()
        .filter_map(|n| cols.iter().position(|c| c.name == *n))
        .collect()
}

fn cell_order(a: &Val, b: &Val) -> std::cmp::Ordering {
    match (a, b) {
        (Val::Int(x), Val::Int(y)) => x.cmp(y),
        (Val::Text(x), Val::Text(y)) => x.cmp(y),
        (Val::Null, Val::Null) => std::cmp::Ordering::Equal,
        (Val::Null, _) => std::cmp::Ordering::Less,
        (_, Val::Null) => std::cmp::Ordering::Greater,
        _ => std::cmp::Ordering::Equal,
    }
}

/// A part's rows and the database's rows of its period as one part: each row once by its
/// key (the database's version where both have it: a bar made final later), in the part's
/// order.
pub fn merge(table: &str, old: Vec<Vec<Val>>, db: Vec<Vec<Val>>) -> Vec<Vec<Val>> {
    merge_counted(table, old, db).0
}

/// [`merge`], and how many rows both held.
pub fn merge_counted(table: &str, old: Vec<Vec<Val>>, db: Vec<Vec<Val>>) -> (Vec<Vec<Val>>, usize) {
    let (key, order) = key_and_order(table);
    let (key, order) = (positions(table, key), positions(table, order));
    let key_of = |r: &Vec<Val>| -> Vec<String> {
        key.iter()
            .map(|&i| format!("{:?}", r.get(i).unwrap_or(&Val::Null)))
            .collect()
    };
    let have: std::collections::HashSet<Vec<String>> = db.iter().map(key_of).collect();
    let before = old.len();
    let mut out: Vec<Vec<Val>> = old
        .into_iter()
        .filter(|r| !have.contains(&key_of(r)))
        .collect();
    let both = before - out.len();
    out.extend(db);
    out.sort_by(|a, b| {
        order
            .iter()
            .map(|&i| cell_order(&a[i], &b[i]))
            .find(|o| o.is_ne())
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    (out, both)
}

/// A period's rows into `sink`, cells as archived.
async fn rows(
    store: &Store,
    venue: &'static str,
    table: &str,
    symbol: &str,
    (from_ms, to_ms): (i64, i64),
    sink: &mut (dyn Sink + Send),
) -> anyhow::Result<()> {
    let mut cut = Cut {
        to: sink,
        // produce leaves the symbol out (hive layout); the venue is the first cell
        drop_cells: vec![0],
    };
    let win = Window {
        from: from_ms,
        to: to_ms,
        first: false,
    };
    match table {
        "sessions" => {
            cut.drop_cells.clear();
            let rows = store
                .sessions_between(venue, from_ms, to_ms)
                .await?
                .into_iter()
                .map(|s| {
                    vec![
                        Val::Text(s.symbol.to_string()),
                        Val::Text(s.session_id),
                        Val::Int(s.connected_at_us),
                        s.disconnected_at_us.map_or(Val::Null, Val::Int),
                        s.close_reason.map_or(Val::Null, Val::Text),
                    ]
                })
                .collect();
            cut.write(rows)?;
        }
        "gaps" => {
            let rows: Vec<Vec<Val>> = store
                .load_gaps(venue, None)
                .await?
                .into_iter()
                .filter(|g| g.start_ms >= from_ms && g.start_ms < to_ms)
                .map(gap_row)
                .collect();
            cut.write(rows)?;
        }
        "klines" => {
            for iv in store.stored_intervals(venue, symbol).await? {
                let mut req = request(Kind::Klines, symbol, from_ms, to_ms);
                req.interval = iv;
                let part = Part::window(symbol, win);
                produce(store, venue, &req, &part, &mut cut, &mut |_| {}).await?;
            }
        }
        _ => {
            let kind = kind(table).ok_or_else(|| anyhow::anyhow!("{table}: no rows"))?;
            let req = request(kind, symbol, from_ms, to_ms);
            let part = Part::window(symbol, win);
            produce(store, venue, &req, &part, &mut cut, &mut |_| {}).await?;
        }
    }
    Ok(())
}
