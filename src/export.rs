//! `mdrec export`: one symbol, one kind of row, one time range, to CSV or Parquet.
//!
//! Rows are read in keyset pages and written as they come, so memory is bounded by a page
//! (and, for Parquet, one row group) whatever the range. Prices and quantities keep the
//! exchange's digits: they are decimal strings in both formats (Parquet `BYTE_ARRAY` UTF8),
//! never floats. Times stay integers with the unit in the column name, as in the database.
//! The file appears under its name only when complete. CSV to a name ending in `.gz` is
//! gzip-compressed.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use parquet::basic::Compression;
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;

use crate::model::Table;
use crate::model::{Kline, Trade};
use crate::store::{Range, Store, StoreError};

/// Rows read per database round trip.
const PAGE: i64 = 20_000;
/// Rows per Parquet row group.
const ROW_GROUP: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Trades,
    Klines,
    Book,
    Gaps,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Csv,
    Parquet,
}

#[derive(Debug, Clone)]
pub struct Request {
    pub kind: Kind,
    pub symbol: String,
    /// Klines only: the venue's interval name.
    pub interval: String,
    /// `from_ms <= t < to_ms` on exchange time (bars: open time; holes: overlapping).
    pub from_ms: i64,
    pub to_ms: i64,
    pub format: Format,
    pub out: PathBuf,
    /// Replace `out` if it exists.
    pub force: bool,
}

fn refused(flag: &'static str, message: impl Into<String>) -> anyhow::Error {
    crate::config::UsageError::new(flag, message).into()
}

/// What is wrong with a request before anything is written: the window, the output path, a
/// symbol the database holds nothing of (with the closest names it does hold).
pub async fn check(store: &Store, venue: &str, req: &Request) -> anyhow::Result<()> {
    if req.from_ms >= req.to_ms {
        return Err(refused(
            "--from",
            "must be before --to (the window is [from, to))",
        ));
    }
    if req.out.is_dir() {
        return Err(refused(
            "--out",
            format!(
                "{} is a directory: name the file to write",
                req.out.display()
            ),
        ));
    }
    if req.out.exists() && !req.force {
        return Err(refused(
            "--out",
            format!("{} exists: pass --force to replace it", req.out.display()),
        ));
    }
    check_symbol(store, venue, &req.symbol).await
}

/// A symbol the database holds nothing of is refused, with the closest names it holds.
pub async fn check_symbol(store: &Store, venue: &str, symbol: &str) -> anyhow::Result<()> {
    if store.has_symbol(venue, symbol).await? {
        return Ok(());
    }
    let known = store.known_symbols(venue).await?;
    let names: std::collections::HashSet<&str> = known.iter().map(|s| s.as_str()).collect();
    let near = crate::recorder::markets::closest(symbol, &names);
    let hint = if near.is_empty() {
        String::new()
    } else {
        format!(" (did you mean {}?)", near.join(" or "))
    };
    Err(refused(
        "--symbol",
        format!("the database holds nothing of {symbol:?} for {venue}{hint}"),
    ))
}

#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Null,
    Int(i64),
    Bool(bool),
    Text(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    Int,
    OptInt,
    Bool,
    Text,
    OptText,
}

/// The columns of an export, in order.
pub fn columns(kind: Kind) -> &'static [(&'static str, Ty)] {
    use Ty::*;
    match kind {
        Kind::Trades => &[
            ("venue", Text),
            ("symbol", Text),
            ("trade_id", Int),
            ("side", Text),
            ("price", Text),
            ("qty", Text),
            ("quote_qty", OptText),
            ("event_time_ms", Int),
            ("recv_time_us", Int),
            ("source", Text),
        ],
        Kind::Klines => &[
            ("venue", Text),
            ("symbol", Text),
            ("interval", Text),
            ("open_time_ms", Int),
            ("open", Text),
            ("high", Text),
            ("low", Text),
            ("close", Text),
            ("volume", Text),
            ("quote_volume", OptText),
            ("closed", Bool),
            ("event_time_ms", Int),
            ("recv_time_us", Int),
            ("source", Text),
        ],
        Kind::Book => &[
            ("venue", Text),
            ("symbol", Text),
            ("depth_step", Int),
            ("recv_time_us", Int),
            ("event_time_ms", Int),
            ("bids", Text),
            ("asks", Text),
        ],
        Kind::Gaps => &[
            ("venue", Text),
            ("symbol", Text),
            ("stream", Text),
            ("start_ms", Int),
            ("end_ms", OptInt),
            ("status", Text),
            ("detected_at_ms", Int),
            ("resolved_at_ms", OptInt),
            ("rows_recovered", Int),
            ("detail", OptText),
        ],
    }
}

fn text(s: impl ToString) -> Val {
    Val::Text(s.to_string())
}

fn opt_text(s: Option<impl ToString>) -> Val {
    s.map_or(Val::Null, text)
}

fn trade_row(t: Trade) -> Vec<Val> {
    vec![
        text(t.venue),
        text(&*t.symbol),
        Val::Int(t.trade_id),
        text(t.side.as_str()),
        text(&t.price),
        text(&t.qty),
        opt_text(t.quote_qty.as_ref()),
        Val::Int(t.event_time_ms),
        Val::Int(t.recv_time_us),
        text(t.source.as_str()),
    ]
}

fn kline_row(k: Kline) -> Vec<Val> {
    vec![
        text(k.venue),
        text(&*k.symbol),
        text(&*k.interval),
        Val::Int(k.open_time_ms),
        text(&k.open),
        text(&k.high),
        text(&k.low),
        text(&k.close),
        text(&k.volume),
        opt_text(k.quote_volume.as_ref()),
        Val::Bool(k.closed),
        Val::Int(k.event_time_ms),
        Val::Int(k.recv_time_us),
        text(k.source.as_str()),
    ]
}

/// Rows in the range, for the progress bar.
pub async fn count(store: &Store, venue: &str, req: &Request) -> Result<u64, StoreError> {
    let table = match req.kind {
        Kind::Trades => Table::Trades,
        Kind::Klines => Table::Klines,
        Kind::Book => Table::BookSnapshots,
        Kind::Gaps => return Ok(0),
    };
    store
        .rows_between(
            table,
            venue,
            &req.symbol,
            &req.interval,
            req.from_ms,
            req.to_ms,
        )
        .await
}

/// Reads the export page after `after`; returns the rows and the next keyset position.
async fn page(
    store: &Store,
    venue: &'static str,
    req: &Request,
    after: (i64, i64),
) -> Result<(Vec<Vec<Val>>, Option<(i64, i64)>), StoreError> {
    let range = Range {
        from_ms: req.from_ms,
        to_ms: req.to_ms,
        after,
        limit: PAGE,
    };
    Ok(match req.kind {
        Kind::Trades => {
            let t = store.trades_page(venue, &req.symbol, &range).await?;
            let next = t.last().map(|x| (x.event_time_ms, x.trade_id));
            (t.into_iter().map(trade_row).collect(), next)
        }
        Kind::Klines => {
            let k = store
                .klines_page(venue, &req.symbol, &req.interval, &range)
                .await?;
            let next = k.last().map(|x| (x.open_time_ms, 0));
            (k.into_iter().map(kline_row).collect(), next)
        }
        Kind::Book => {
            // one depth step at a time (`after` = (step, receive time)): the key's order,
            // so every page is an index seek
            let rows = store
                .book_rows_page(
                    venue,
                    &req.symbol,
                    after.0 as i16,
                    after.1,
                    req.from_ms,
                    req.to_ms,
                    PAGE,
                )
                .await?;
            let next = rows.last().map(|r| (after.0, r.0));
            let rows = rows
                .into_iter()
                .map(|(recv, event, step, bids, asks)| {
                    vec![
                        text(venue),
                        text(&req.symbol),
                        Val::Int(step),
                        Val::Int(recv),
                        Val::Int(event),
                        Val::Text(bids),
                        Val::Text(asks),
                    ]
                })
                .collect();
            (rows, next)
        }
        Kind::Gaps => {
            let rows = store
                .load_gaps(venue, Some(&req.symbol))
                .await?
                .into_iter()
                .filter(|g| g.start_ms < req.to_ms && g.end_ms.unwrap_or(i64::MAX) >= req.from_ms)
                .map(|g| {
                    vec![
                        text(g.venue),
                        text(&*g.symbol),
                        Val::Text(g.stream),
                        Val::Int(g.start_ms),
                        g.end_ms.map_or(Val::Null, Val::Int),
                        text(g.status.as_str()),
                        Val::Int(g.detected_at_ms),
                        g.resolved_at_ms.map_or(Val::Null, Val::Int),
                        Val::Int(g.rows_recovered),
                        opt_text(g.detail),
                    ]
                })
                .collect::<Vec<_>>();
            (rows, None)
        }
    })
}

trait Sink {
    fn write(&mut self, rows: Vec<Vec<Val>>) -> anyhow::Result<()>;
    fn finish(self: Box<Self>) -> anyhow::Result<()>;
}

struct CsvSink<W: Finish>(csv::Writer<W>);

/// Where CSV goes: the file, or a gzip stream over it (`.gz`), ended and synced at the end.
trait Finish: Write {
    fn finish(self) -> std::io::Result<()>;
}

impl Finish for BufWriter<File> {
    fn finish(mut self) -> std::io::Result<()> {
        self.flush()?;
        self.get_ref().sync_all()
    }
}

impl Finish for flate2::write::GzEncoder<BufWriter<File>> {
    fn finish(self) -> std::io::Result<()> {
        // the gzip trailer (CRC, length) is written here, not on drop, so its errors count
        let inner = flate2::write::GzEncoder::finish(self)?;
        Finish::finish(inner)
    }
}

impl<W: Finish> Sink for CsvSink<W> {
    fn write(&mut self, rows: Vec<Vec<Val>>) -> anyhow::Result<()> {
        for row in rows {
            self.0.write_record(row.iter().map(|v| match v {
                Val::Null => String::new(),
                Val::Int(i) => i.to_string(),
                Val::Bool(b) => b.to_string(),
                Val::Text(t) => t.clone(),
            }))?;
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> anyhow::Result<()> {
        let inner = self.0.into_inner().map_err(|e| e.into_error())?;
        Finish::finish(inner)?;
        Ok(())
    }
}

struct ParquetSink {
    writer: SerializedFileWriter<File>,
    cols: &'static [(&'static str, Ty)],
    buf: Vec<Vec<Val>>,
}

impl ParquetSink {
    fn new(file: File, kind: Kind) -> anyhow::Result<ParquetSink> {
        let cols = columns(kind);
        let fields: Vec<String> = cols
            .iter()
            .map(|(name, ty)| match ty {
                Ty::Int => format!("required int64 {name};"),
                Ty::OptInt => format!("optional int64 {name};"),
                Ty::Bool => format!("required boolean {name};"),
                Ty::Text => format!("required binary {name} (UTF8);"),
                Ty::OptText => format!("optional binary {name} (UTF8);"),
            })
            .collect();
        let schema = parquet::schema::parser::parse_message_type(&format!(
            "message mdrec_{kind:?} {{ {} }}",
            fields.join(" ")
        ))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_created_by(concat!("mdrec ", env!("CARGO_PKG_VERSION")).into())
            .build();
        Ok(ParquetSink {
            writer: SerializedFileWriter::new(file, Arc::new(schema), Arc::new(props))?,
            cols,
            buf: Vec::new(),
        })
    }

    fn flush_group(&mut self) -> anyhow::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let mut group = self.writer.next_row_group()?;
        let mut i = 0;
        while let Some(mut col) = group.next_column()? {
            let ty = self.cols[i].1;
            let cells = self.buf.iter().map(|r| &r[i]);
            let defs: Vec<i16> = cells
                .clone()
                .map(|v| i16::from(!matches!(v, Val::Null)))
                .collect();
            let defs = matches!(ty, Ty::OptInt | Ty::OptText).then_some(defs.as_slice());
            match ty {
                Ty::Int | Ty::OptInt => {
                    let v: Vec<i64> = cells
                        .filter_map(|v| match v {
                            Val::Int(i) => Some(*i),
                            _ => None,
                        })
                        .collect();
                    col.typed::<Int64Type>().write_batch(&v, defs, None)?;
                }
                Ty::Bool => {
                    let v: Vec<bool> = cells.map(|v| matches!(v, Val::Bool(true))).collect();
                    col.typed::<BoolType>().write_batch(&v, None, None)?;
                }
                Ty::Text | Ty::OptText => {
                    let v: Vec<ByteArray> = cells
                        .filter_map(|v| match v {
                            Val::Text(t) => Some(ByteArray::from(t.as_str())),
                            _ => None,
                        })
                        .collect();
                    col.typed::<ByteArrayType>().write_batch(&v, defs, None)?;
                }
            }
            col.close()?;
            i += 1;
        }
        group.close()?;
        self.buf.clear();
        Ok(())
    }
}

impl Sink for ParquetSink {
    fn write(&mut self, rows: Vec<Vec<Val>>) -> anyhow::Result<()> {
        self.buf.extend(rows);
        if self.buf.len() >= ROW_GROUP {
            self.flush_group()?;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> anyhow::Result<()> {
        self.flush_group()?;
        let file = self.writer.into_inner()?;
        file.sync_all()?;
        Ok(())
    }
}

/// Writes the export; `progress` is called with the rows written so far. Returns the count.
pub async fn export(
    store: &Store,
    venue: &'static str,
    req: &Request,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<u64> {
    check(store, venue, req).await?;
    let tmp = partial_path(&req.out);
    // whatever goes wrong from here, no half-written file is left behind
    let r = write_to(store, venue, req, &tmp, &mut progress).await;
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

async fn write_to(
    store: &Store,
    venue: &'static str,
    req: &Request,
    tmp: &Path,
    progress: &mut impl FnMut(u64),
) -> anyhow::Result<u64> {
    let file = File::create(tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut sink: Box<dyn Sink> = match req.format {
        Format::Csv if gzipped(&req.out) => {
            let gz = flate2::write::GzEncoder::new(
                BufWriter::with_capacity(1 << 20, file),
                flate2::Compression::default(),
            );
            let mut w = csv::Writer::from_writer(gz);
            w.write_record(columns(req.kind).iter().map(|c| c.0))?;
            Box::new(CsvSink(w))
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(BufWriter::with_capacity(1 << 20, file));
            w.write_record(columns(req.kind).iter().map(|c| c.0))?;
            Box::new(CsvSink(w))
        }
        Format::Parquet => Box::new(ParquetSink::new(file, req.kind)?),
    };
    // books are paged per depth step; everything else in one pass
    let starts: Vec<(i64, i64)> = if req.kind == Kind::Book {
        let steps = store.stored_depth_steps(venue, &req.symbol).await?;
        steps.into_iter().map(|s| (s, i64::MIN)).collect()
    } else {
        vec![(i64::MIN, i64::MIN)]
    };
    let mut rows = 0u64;
    for mut after in starts {
        loop {
            let (page, next) = page(store, venue, req, after).await?;
            if page.is_empty() {
                break;
            }
            rows += page.len() as u64;
            sink.write(page)?;
            progress(rows);
            match next {
                Some(n) => after = n,
                None => break,
            }
        }
    }
    sink.finish()
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(tmp, &req.out)
        .with_context(|| format!("renaming {} to {}", tmp.display(), req.out.display()))?;
    Ok(rows)
}

/// CSV to a name ending in `.gz` is written gzip-compressed.
fn gzipped(out: &Path) -> bool {
    out.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"))
}

/// `out.partial` next to the target, so a half-written export never has the final name.
fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    out.with_file_name(name)
}
