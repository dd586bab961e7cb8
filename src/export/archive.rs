//! Archive parts (see `src/archive`), written by the export's machinery: a table's rows of
//! one symbol and window (gaps and sessions: of the venue) as zstd Parquet in memory, with
//! one schema per table for the whole archive: the export's columns without the hive keys
//! (`venue`, `symbol`: they are in the path), decimals `DECIMAL(38, 18)` whatever the rows
//! hold, so every part of a table reads as one dataset. A digest of the rows as read from
//! the database goes with the bytes, for the read-back check.

use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;

use super::pages::produce;
use super::parquet_sink::{DecPlan, ParquetSink, leaves};
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

/// Rows into the Parquet writer and the digest; the venue (and the symbol, where the path
/// holds it) left out as the columns are.
struct Tee<'a> {
    out: ParquetSink<Vec<u8>>,
    digest: &'a mut Digest,
    drop_cells: Vec<usize>,
}

impl Sink for Tee<'_> {
    fn write(&mut self, mut rows: Vec<Vec<Val>>) -> anyhow::Result<()> {
        for r in &mut rows {
            for &i in &self.drop_cells {
                r.remove(i);
            }
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

/// One part, written: the Parquet bytes, rows and digest.
pub struct Written {
    pub bytes: Vec<u8>,
    pub digest: Digest,
}

/// A table's rows with exchange time (bars: open time; holes: start; sessions: connect
/// time) in `[from_ms, to_ms)`, of one symbol (gaps and sessions: every symbol of the
/// venue), as one zstd Parquet file. `meta`: key-value metadata to add.
pub async fn write(
    store: &Store,
    venue: &'static str,
    table: &str,
    symbol: &str,
    (from_ms, to_ms): (i64, i64),
    meta: Vec<(String, String)>,
) -> anyhow::Result<Written> {
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
    let mut digest = Digest::default();
    let mut tee = Tee {
        out,
        digest: &mut digest,
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
            tee.drop_cells.clear();
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
            tee.write(rows)?;
        }
        "gaps" => {
            let rows: Vec<Vec<Val>> = store
                .load_gaps(venue, None)
                .await?
                .into_iter()
                .filter(|g| g.start_ms >= from_ms && g.start_ms < to_ms)
                .map(gap_row)
                .collect();
            tee.write(rows)?;
        }
        "klines" => {
            for iv in store.stored_intervals(venue, symbol).await? {
                let mut req = request(Kind::Klines, symbol, from_ms, to_ms);
                req.interval = iv;
                let part = Part::window(symbol, win);
                produce(store, venue, &req, &part, &mut tee, &mut |_| {}).await?;
            }
        }
        _ => {
            let kind = kind(table).ok_or_else(|| anyhow::anyhow!("{table}: no rows"))?;
            let req = request(kind, symbol, from_ms, to_ms);
            let part = Part::window(symbol, win);
            produce(store, venue, &req, &part, &mut tee, &mut |_| {}).await?;
        }
    }
    let bytes = tee.out.into_inner()?;
    Ok(Written { bytes, digest })
}
