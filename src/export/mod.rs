//! `mdrec export`: one kind of row of one or several symbols over a time range, to CSV or
//! Parquet, in one file or one file per symbol and UTC day (hive layout).
//!
//! Rows are read in keyset pages and written as they come, so memory is bounded by a page
//! (and, for Parquet, one row group) whatever the range. Prices and quantities keep the
//! exchange's digits, never floats: CSV writes the decimal text; Parquet writes
//! `DECIMAL(38, s)` with `s` the most fraction digits the file's column holds, or the text
//! where a value would not fit 38 digits (named in the file's metadata). That takes two
//! passes over the rows for Parquet: the first measures the digits, the second writes.
//! Parquet times are `TIMESTAMP(us, UTC)`; CSV keeps the database's integers, the unit in the
//! column name. A file appears under its name only when complete; CSV to a name ending in
//! `.gz` is gzip-compressed.
//!
//! `--kind book --every D` rebuilds the book on a time grid from the stored full books and
//! changes (an incremental-depth recording is mostly changes): at each grid time, the book
//! after every change with exchange time at or before it. No row is written where the book
//! is unknown: before the first full book, from a break the recorder put on record (a hole
//! of the book stream, the rule `book --at` follows) until the next full book, and once the
//! connection the book came from closed.

pub mod archive;
mod csv_sink;
mod grid;
mod pages;
mod parquet_sink;
pub mod plan;
mod request;
mod rows;

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use anyhow::Context;

use self::csv_sink::CsvSink;
use self::pages::produce;
use self::parquet_sink::{Digits, Measure, ParquetSink, leaves, metadata};
pub use self::plan::{Part, Written, check, check_symbol, count, plan};
use self::request::gzipped;
pub use self::request::{Format, Kind, Layout, Request, parse_every, partial_path};
use self::rows::FileSink;
pub use self::rows::{Col, Ty, Val, columns};
use crate::store::Store;

/// Writes the export: every planned file. `progress` is called with the rows written so
/// far. A hive part without rows is not written.
pub async fn export(
    store: &Store,
    venue: &'static str,
    req: &Request,
    progress: impl FnMut(u64) + Send,
) -> anyhow::Result<Vec<Written>> {
    let parts = plan(store, venue, req).await?;
    export_parts(store, venue, req, &parts, progress).await
}

/// Writes the files [`plan`] made.
pub async fn export_parts(
    store: &Store,
    venue: &'static str,
    req: &Request,
    parts: &[Part],
    mut progress: impl FnMut(u64) + Send,
) -> anyhow::Result<Vec<Written>> {
    let measured = match req.format {
        Format::Parquet => Some(measure(store, venue, req, parts).await?),
        Format::Csv => None,
    };
    let mut written = Vec::new();
    let mut done = 0u64;
    for (n, part) in parts.iter().enumerate() {
        // the file's directory, as `mkdir -p` would (a hive part's, or `--out new/dir/x`)
        if let Some(parent) = part.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let tmp = partial_path(&part.path);
        let base = done;
        let mut each = |n: u64| progress(base + n);
        // whatever goes wrong from here, no half-written file is left behind
        let shape = measured.as_ref().map(|m| (&m.digits[..], m.rows[n]));
        let r = write_part(store, venue, req, part, shape, &tmp, &mut each).await;
        match r {
            Ok(rows) => {
                done += rows;
                if rows > 0 || req.layout == Layout::File {
                    written.push(Written {
                        path: part.path.clone(),
                        rows,
                    });
                }
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        }
    }
    Ok(written)
}

/// The first Parquet pass over every file of the export: the digits each decimal column
/// needs in any of them (one schema for the whole dataset: a reader of a hive directory
/// takes the files as one table), and each file's rows.
struct Measured {
    digits: Vec<Digits>,
    rows: Vec<u64>,
}

async fn measure(
    store: &Store,
    venue: &'static str,
    req: &Request,
    parts: &[Part],
) -> anyhow::Result<Measured> {
    let (first, n) = leaves(&columns(req));
    let mut m = Measure {
        first,
        digits: vec![Digits::default(); n],
        rows: 0,
    };
    let mut rows = Vec::with_capacity(parts.len());
    for part in parts {
        let before = m.rows;
        produce(store, venue, req, part, &mut m, &mut |_| {}).await?;
        rows.push(m.rows - before);
    }
    Ok(Measured {
        digits: m.digits,
        rows,
    })
}

/// One file: to `tmp`, then renamed to its name (a hive part without rows: nothing).
/// `measured`: for Parquet, the dataset's digits and this file's rows.
async fn write_part(
    store: &Store,
    venue: &'static str,
    req: &Request,
    part: &Part,
    measured: Option<(&[Digits], u64)>,
    tmp: &Path,
    progress: &mut (dyn FnMut(u64) + Send),
) -> anyhow::Result<u64> {
    let cols = columns(req);
    let skip_empty = req.layout == Layout::Hive;
    let mut sink: Box<dyn FileSink + Send> = match req.format {
        Format::Csv => {
            let file = File::create(tmp).with_context(|| format!("creating {}", tmp.display()))?;
            let w = BufWriter::with_capacity(1 << 20, file);
            if gzipped(&part.path) {
                let gz = flate2::write::GzEncoder::new(w, flate2::Compression::default());
                Box::new(CsvSink::new(gz, &cols)?)
            } else {
                Box::new(CsvSink::new(w, &cols)?)
            }
        }
        Format::Parquet => {
            let (digits, rows) = measured.context("a Parquet file without its first pass")?;
            if skip_empty && rows == 0 {
                return Ok(0);
            }
            let meta = metadata(store, venue, req, part, &cols, digits, rows).await?;
            let file = File::create(tmp).with_context(|| format!("creating {}", tmp.display()))?;
            Box::new(ParquetSink::new(file, cols, digits, meta)?)
        }
    };
    let rows = produce(store, venue, req, part, sink.as_mut(), progress).await?;
    sink.finish()
        .with_context(|| format!("writing {}", tmp.display()))?;
    if skip_empty && rows == 0 {
        std::fs::remove_file(tmp).with_context(|| format!("removing {}", tmp.display()))?;
        return Ok(0);
    }
    std::fs::rename(tmp, &part.path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), part.path.display()))?;
    Ok(rows)
}
