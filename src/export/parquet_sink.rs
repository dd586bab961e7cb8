//! The Parquet sink: two passes (digits measured, then written as `DECIMAL(38, s)` or text),
//! `TIMESTAMP(us, UTC)`, book levels as lists, key-value metadata with the file's coverage.

use std::fs::File;
use std::sync::Arc;

use anyhow::Context;

use parquet::basic::Compression;
use parquet::data_type::{
    BoolType, ByteArray, ByteArrayType, FixedLenByteArray, FixedLenByteArrayType, Int64Type,
};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;

use super::plan::{Part, bounds, steps};
use super::request::{Kind, Request};
use super::rows::{Col, FileSink, Sink, Ty, Val};
use crate::decimal::Dec;
use crate::model::StreamKey;
use crate::store::Store;

/// Rows per Parquet row group.
pub(super) const ROW_GROUP: usize = 100_000;
/// Digits a Parquet `DECIMAL` holds in 16 bytes.
pub(super) const PRECISION: usize = 38;

/// Digits of a decimal: (before the point, after it).
pub(super) fn digits(d: &Dec) -> (usize, usize) {
    let s = d.as_str().trim_start_matches('-');
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let int = if int.trim_start_matches('0').is_empty() {
        0
    } else {
        int.len()
    };
    (int, frac.len())
}

/// The unscaled value of `d` at `scale` fraction digits (`scale` >= its own, digits fit).
pub(super) fn unscaled(d: &Dec, scale: usize) -> Option<i128> {
    let s = d.as_str();
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > scale {
        return None;
    }
    let mut all = String::with_capacity(int.len() + scale);
    all.push_str(int);
    all.push_str(frac);
    all.extend(std::iter::repeat_n('0', scale - frac.len()));
    let v: i128 = all.parse().ok()?;
    Some(if neg { -v } else { v })
}

/// What the first Parquet pass learns of each decimal leaf: most digits before and after
/// the point.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Digits {
    int: usize,
    frac: usize,
}

/// How a decimal leaf is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecPlan {
    Decimal {
        scale: usize,
    },
    /// Some value needs more than 38 digits at the column's scale.
    Text,
}

impl Digits {
    fn add(&mut self, d: &Dec) {
        let (i, f) = digits(d);
        self.int = self.int.max(i);
        self.frac = self.frac.max(f);
    }

    fn plan(self) -> DecPlan {
        if self.int + self.frac <= PRECISION {
            DecPlan::Decimal { scale: self.frac }
        } else {
            DecPlan::Text
        }
    }
}

/// The decimal leaves of the columns: one per decimal column, two (price, quantity) per
/// levels column; `leaf[i]` is column i's first.
pub(super) fn leaves(cols: &[Col]) -> (Vec<Option<usize>>, usize) {
    let mut n = 0;
    let first = cols
        .iter()
        .map(|c| match c.ty {
            Ty::Dec | Ty::OptDec => {
                n += 1;
                Some(n - 1)
            }
            Ty::Levels => {
                n += 2;
                Some(n - 2)
            }
            _ => None,
        })
        .collect();
    (first, n)
}

/// The first Parquet pass: digits per decimal leaf, rows.
pub(super) struct Measure {
    pub(super) first: Vec<Option<usize>>,
    pub(super) digits: Vec<Digits>,
    pub(super) rows: u64,
}

impl Sink for Measure {
    fn write(&mut self, rows: Vec<Vec<Val>>) -> anyhow::Result<()> {
        for row in &rows {
            for (cell, leaf) in row.iter().zip(&self.first) {
                let Some(leaf) = *leaf else { continue };
                match cell {
                    Val::Dec(d) => self.digits[leaf].add(d),
                    Val::Levels(l) => {
                        for (p, q) in l {
                            self.digits[leaf].add(p);
                            self.digits[leaf + 1].add(q);
                        }
                    }
                    _ => {}
                }
            }
        }
        self.rows += rows.len() as u64;
        Ok(())
    }
}

pub(crate) struct ParquetSink<W: std::io::Write + Send = File> {
    writer: SerializedFileWriter<W>,
    cols: Vec<Col>,
    first: Vec<Option<usize>>,
    plans: Vec<DecPlan>,
    buf: Vec<Vec<Val>>,
}

/// The Parquet type of a decimal leaf.
pub(super) fn dec_field(name: &str, rep: &str, plan: DecPlan) -> String {
    match plan {
        DecPlan::Decimal { scale } => {
            format!("{rep} fixed_len_byte_array(16) {name} (DECIMAL({PRECISION},{scale}));")
        }
        DecPlan::Text => format!("{rep} binary {name} (STRING);"),
    }
}

/// The Parquet schema of the columns, decimals as planned.
pub(super) fn parquet_schema(cols: &[Col], first: &[Option<usize>], plans: &[DecPlan]) -> String {
    let fields: Vec<String> = cols
        .iter()
        .zip(first)
        .map(|(c, leaf)| {
            let name = c.parquet_name();
            let rep = if c.optional() { "optional" } else { "required" };
            let plan = |i: usize| leaf.map_or(DecPlan::Text, |l| plans[l + i]);
            match c.ty {
                Ty::Int | Ty::OptInt => format!("{rep} int64 {name};"),
                Ty::Bool => format!("{rep} boolean {name};"),
                Ty::Text | Ty::OptText => format!("{rep} binary {name} (STRING);"),
                Ty::TimeMs | Ty::OptTimeMs | Ty::TimeUs | Ty::OptTimeUs => {
                    format!("{rep} int64 {name} (TIMESTAMP(MICROS,true));")
                }
                Ty::Dec | Ty::OptDec => dec_field(name, rep, plan(0)),
                Ty::Levels => format!(
                    "required group {name} (LIST) {{ repeated group list {{ required group element {{ {} {} }} }} }}",
                    dec_field("price", "required", plan(0)),
                    dec_field("qty", "required", plan(1)),
                ),
            }
        })
        .collect();
    format!("message mdrec_export {{ {} }}", fields.join(" "))
}

impl ParquetSink<File> {
    pub(super) fn new(
        file: File,
        cols: Vec<Col>,
        digits: &[Digits],
        meta: Vec<KeyValue>,
    ) -> anyhow::Result<ParquetSink> {
        let plans: Vec<DecPlan> = digits.iter().map(|d| d.plan()).collect();
        ParquetSink::with_plans(file, cols, plans, meta, Compression::SNAPPY)
    }
}

impl<W: std::io::Write + Send> ParquetSink<W> {
    /// Decimal leaves as `plans` says (see [`leaves`]).
    pub(super) fn with_plans(
        out: W,
        cols: Vec<Col>,
        plans: Vec<DecPlan>,
        meta: Vec<KeyValue>,
        compression: Compression,
    ) -> anyhow::Result<ParquetSink<W>> {
        let (first, _) = leaves(&cols);
        let schema =
            parquet::schema::parser::parse_message_type(&parquet_schema(&cols, &first, &plans))?;
        let props = WriterProperties::builder()
            .set_compression(compression)
            .set_created_by(concat!("mdrec ", env!("CARGO_PKG_VERSION")).into())
            .set_key_value_metadata(Some(meta))
            .build();
        Ok(ParquetSink {
            writer: SerializedFileWriter::new(out, Arc::new(schema), Arc::new(props))?,
            cols,
            first,
            plans,
            buf: Vec::new(),
        })
    }

    fn flush_group(&mut self) -> anyhow::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let mut group = self.writer.next_row_group()?;
        for (i, c) in self.cols.iter().enumerate() {
            let cells = self.buf.iter().map(|r| &r[i]);
            if c.ty == Ty::Levels {
                let leaf = self.first[i].unwrap_or(0);
                for part in 0..2 {
                    let mut col = group
                        .next_column()?
                        .context("parquet schema has fewer columns than the export")?;
                    let (mut defs, mut reps, mut vals) = (Vec::new(), Vec::new(), Vec::new());
                    for cell in cells.clone() {
                        let levels = match cell {
                            Val::Levels(l) => l.as_slice(),
                            _ => &[],
                        };
                        if levels.is_empty() {
                            defs.push(0);
                            reps.push(0);
                        }
                        for (k, (p, q)) in levels.iter().enumerate() {
                            defs.push(1);
                            reps.push(i16::from(k > 0));
                            vals.push(if part == 0 { p } else { q });
                        }
                    }
                    write_decimals(
                        &mut col,
                        self.plans[leaf + part],
                        &vals,
                        Some(&defs),
                        Some(&reps),
                    )?;
                    col.close()?;
                }
                continue;
            }
            let mut col = group
                .next_column()?
                .context("parquet schema has fewer columns than the export")?;
            let defs: Vec<i16> = cells
                .clone()
                .map(|v| i16::from(!matches!(v, Val::Null)))
                .collect();
            let defs = c.optional().then_some(defs.as_slice());
            match c.ty {
                Ty::Int | Ty::OptInt | Ty::TimeUs | Ty::OptTimeUs => {
                    let v: Vec<i64> = cells
                        .filter_map(|v| match v {
                            Val::Int(i) => Some(*i),
                            _ => None,
                        })
                        .collect();
                    col.typed::<Int64Type>().write_batch(&v, defs, None)?;
                }
                Ty::TimeMs | Ty::OptTimeMs => {
                    let mut v = Vec::with_capacity(self.buf.len());
                    for cell in cells {
                        if let Val::Int(ms) = cell {
                            v.push(ms.checked_mul(1000).with_context(|| {
                                format!("{}: {ms} ms is beyond a timestamp", c.name)
                            })?);
                        }
                    }
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
                Ty::Dec | Ty::OptDec => {
                    let vals: Vec<&Dec> = cells
                        .filter_map(|v| match v {
                            Val::Dec(d) => Some(d),
                            _ => None,
                        })
                        .collect();
                    let plan = self.plans[self.first[i].unwrap_or(0)];
                    write_decimals(&mut col, plan, &vals, defs, None)?;
                }
                Ty::Levels => {}
            }
            col.close()?;
        }
        group.close()?;
        self.buf.clear();
        Ok(())
    }
}

pub(super) fn write_decimals(
    col: &mut parquet::file::writer::SerializedColumnWriter<'_>,
    plan: DecPlan,
    vals: &[&Dec],
    defs: Option<&[i16]>,
    reps: Option<&[i16]>,
) -> anyhow::Result<()> {
    match plan {
        DecPlan::Decimal { scale } => {
            let mut v = Vec::with_capacity(vals.len());
            for d in vals {
                let n = unscaled(d, scale)
                    .with_context(|| format!("{d} does not fit DECIMAL(38,{scale})"))?;
                v.push(FixedLenByteArray::from(n.to_be_bytes().to_vec()));
            }
            col.typed::<FixedLenByteArrayType>()
                .write_batch(&v, defs, reps)?;
        }
        DecPlan::Text => {
            let v: Vec<ByteArray> = vals.iter().map(|d| ByteArray::from(d.as_str())).collect();
            col.typed::<ByteArrayType>().write_batch(&v, defs, reps)?;
        }
    }
    Ok(())
}

impl<W: std::io::Write + Send> ParquetSink<W> {
    /// Ends the file and hands back where it went.
    pub(super) fn into_inner(mut self) -> anyhow::Result<W> {
        self.flush_group()?;
        Ok(self.writer.into_inner()?)
    }
}

impl<W: std::io::Write + Send> Sink for ParquetSink<W> {
    fn write(&mut self, rows: Vec<Vec<Val>>) -> anyhow::Result<()> {
        self.buf.extend(rows);
        if self.buf.len() >= ROW_GROUP {
            self.flush_group()?;
        }
        Ok(())
    }
}

impl FileSink for ParquetSink {
    fn finish(self: Box<Self>) -> anyhow::Result<()> {
        let file = self.into_inner()?;
        file.sync_all()?;
        Ok(())
    }
}

/// The key-value metadata of a Parquet file: what it holds, from where, and how complete
/// the recording is over its window.
pub(super) async fn metadata(
    store: &Store,
    venue: &'static str,
    req: &Request,
    part: &Part,
    cols: &[Col],
    digits: &[Digits],
    rows: u64,
) -> anyhow::Result<Vec<KeyValue>> {
    let (first, _) = leaves(cols);
    let mut decimals = Vec::new();
    let mut strings = Vec::new();
    for (c, leaf) in cols.iter().zip(&first) {
        let Some(leaf) = *leaf else { continue };
        let subs: &[&str] = if c.ty == Ty::Levels {
            &["price", "qty"]
        } else {
            &[""]
        };
        for (k, sub) in subs.iter().enumerate() {
            let name = if sub.is_empty() {
                c.parquet_name().to_string()
            } else {
                format!("{}.{sub}", c.parquet_name())
            };
            match digits[leaf + k].plan() {
                DecPlan::Decimal { scale } => {
                    decimals.push(format!("{name}=DECIMAL({PRECISION},{scale})"))
                }
                DecPlan::Text => strings.push(name),
            }
        }
    }
    let kv = |k: &str, v: String| KeyValue::new(format!("mdrec.{k}"), v);
    let mut meta = vec![
        kv("venue", venue.to_string()),
        kv("symbol", part.symbol.clone()),
        kv("kind", kind_name(req.kind)),
        kv("source", req.source.clone()),
        kv("rows", rows.to_string()),
        kv("decimals", decimals.join(",")),
        // decimals written as text: some value needs more than 38 digits at the column's scale
        kv("decimal_strings", strings.join(",")),
    ];
    if req.kind == Kind::Klines {
        meta.push(kv("interval", req.interval.clone()));
    }
    if let Some(every) = req.grid() {
        meta.push(kv("every_ms", every.to_string()));
        meta.push(kv("depth", req.depth.to_string()));
    }
    meta.push(kv(
        "coverage",
        coverage_json(store, venue, req, part).await?.to_string(),
    ));
    Ok(meta)
}

/// The kind as `--kind` spells it.
pub(super) fn kind_name(kind: Kind) -> String {
    use clap::ValueEnum;
    kind.to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
}

/// The recorder's word on the file's window: the live share, and per stream the verdict
/// and the holes on record.
pub(super) async fn coverage_json(
    store: &Store,
    venue: &'static str,
    req: &Request,
    part: &Part,
) -> anyhow::Result<serde_json::Value> {
    // an open-ended window is the recorded span
    let (from, to) = match bounds(store, venue, req, &part.symbol).await? {
        Some((lo, hi)) => (part.win.from.max(lo), part.win.to.min(hi.saturating_add(1))),
        None => (part.win.from, part.win.to),
    };
    if from >= to || from == i64::MIN || to == i64::MAX {
        return Ok(serde_json::json!({ "from": null, "to": null, "streams": [] }));
    }
    // what coverage reads, for this symbol and window only: its sockets and its holes
    let symbol = part.symbol.as_str();
    let (_, live_ms, live) = crate::coverage::live(store, venue, symbol, from, to).await?;
    let gaps: Vec<crate::model::Gap> = store
        .load_gaps(venue, Some(symbol))
        .await?
        .into_iter()
        .filter(|g| g.start_ms < to && g.end_ms.is_none_or(|e| e >= from))
        .collect();
    let mut wanted: Vec<String> = match req.kind {
        Kind::Trades => vec![StreamKey::Trades.name()],
        Kind::Klines => vec![StreamKey::Kline(Arc::from(req.interval.as_str())).name()],
        Kind::Tickers => vec![StreamKey::Ticker.name()],
        Kind::Book | Kind::BookDeltas => steps(store, venue, symbol, req.kind, req.step)
            .await?
            .into_iter()
            .map(|s| StreamKey::Book(s).name())
            .collect(),
        Kind::Gaps => {
            let mut w = vec![StreamKey::Trades.name()];
            w.extend(gaps.iter().map(|g| g.stream.clone()));
            w
        }
    };
    wanted.sort();
    wanted.dedup();
    let streams: Vec<serde_json::Value> = wanted
        .iter()
        .map(|stream| {
            let holes: Vec<&crate::model::Gap> =
                gaps.iter().filter(|g| &g.stream == stream).collect();
            // one period: the whole window (any length longer than it, aligned before it)
            let verdict = crate::coverage::verdicts(stream, from, to, 1 << 60, &live, &holes)
                .first()
                .map(|p| p.verdict);
            let holes: Vec<serde_json::Value> = holes
                .iter()
                .map(|g| {
                    serde_json::json!({
                        "start": crate::coverage::format_time(g.start_ms),
                        "end": g.end_ms.map(crate::coverage::format_time),
                        "status": g.status.as_str(),
                    })
                })
                .collect();
            serde_json::json!({ "stream": stream, "verdict": verdict, "holes": holes })
        })
        .collect();
    let share = live_ms as f64 / (to - from) as f64;
    Ok(serde_json::json!({
        "from": crate::coverage::format_time(from),
        "to": crate::coverage::format_time(to),
        "live_share": (share * 1e4).round() / 1e4,
        "streams": streams,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Dec {
        Dec::parse(s).unwrap()
    }

    #[test]
    fn unscaled_values_keep_every_digit() {
        assert_eq!(unscaled(&d("50000.5"), 8), Some(5_000_050_000_000));
        assert_eq!(unscaled(&d("-0.00000001"), 8), Some(-1));
        assert_eq!(unscaled(&d("7"), 0), Some(7));
        assert_eq!(unscaled(&d("0.123"), 2), None);
        assert_eq!(digits(&d("0.000123")), (0, 6));
        assert_eq!(digits(&d("-12345.6")), (5, 1));
    }

    #[test]
    fn a_column_beyond_38_digits_is_text() {
        let mut g = Digits::default();
        g.add(&d("21340.08795040000000001"));
        assert_eq!(g.plan(), DecPlan::Decimal { scale: 17 });
        g.add(&d("1234567890123456789012345"));
        assert_eq!(g.plan(), DecPlan::Text);
    }

    #[test]
    fn a_column_beyond_38_digits_is_written_as_text_the_rest_as_decimals() {
        use parquet::basic::{LogicalType, Type as Physical};
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let cols = vec![
            Col {
                name: "price".into(),
                ty: Ty::Dec,
            },
            Col {
                name: "qty".into(),
                ty: Ty::OptDec,
            },
        ];
        let wide = "1234567890123456789012345.123456789012345";
        let rows = vec![
            vec![Val::Dec(d(wide)), Val::Dec(d("0.5"))],
            vec![Val::Dec(d("-1.25")), Val::Null],
        ];
        let (first, n) = leaves(&cols);
        let mut m = Measure {
            first,
            digits: vec![Digits::default(); n],
            rows: 0,
        };
        m.write(rows.clone()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.parquet");
        let mut sink = Box::new(
            ParquetSink::new(File::create(&path).unwrap(), cols, &m.digits, vec![]).unwrap(),
        );
        sink.write(rows).unwrap();
        FileSink::finish(sink).unwrap();
        let r = SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
        let schema = r.metadata().file_metadata().schema_descr_ptr();
        let price = schema.column(0);
        assert_eq!(price.physical_type(), Physical::BYTE_ARRAY);
        assert_eq!(price.logical_type_ref(), Some(&LogicalType::String));
        let qty = schema.column(1);
        assert_eq!(qty.physical_type(), Physical::FIXED_LEN_BYTE_ARRAY);
        assert_eq!((qty.type_precision(), qty.type_scale()), (38, 1));
        let got: Vec<String> = r
            .get_row_iter(None)
            .unwrap()
            .map(|row| row.unwrap().get_column_iter().next().unwrap().1.to_string())
            .collect();
        assert_eq!(got, [format!("\"{wide}\""), "\"-1.25\"".to_string()]);
    }
}
