//! Reading a part back: its rows as the archive's cells again, through the Parquet reader
//! (not the writer's memory), into the same digest the database's rows made.

use anyhow::Context;
use bytes::Bytes;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;

use crate::decimal::Dec;
use crate::export::archive::{Digest, SCALE, archive_columns};
use crate::export::{Ty, Val};

/// The digest of a part's rows as stored in `bytes`.
pub fn read_back(table: &str, bytes: &Bytes) -> anyhow::Result<Digest> {
    let mut digest = Digest::default();
    each_row(table, bytes, |cells| digest.add(&cells))?;
    Ok(digest)
}

/// A part's rows, cells as archived.
pub fn read_rows(table: &str, bytes: &Bytes) -> anyhow::Result<Vec<Vec<Val>>> {
    let mut rows = Vec::new();
    each_row(table, bytes, |cells| rows.push(cells))?;
    Ok(rows)
}

fn each_row(table: &str, bytes: &Bytes, mut each: impl FnMut(Vec<Val>)) -> anyhow::Result<()> {
    let cols = archive_columns(table);
    let reader = SerializedFileReader::new(bytes.clone()).context("not a Parquet file")?;
    for row in reader.get_row_iter(None)? {
        let row = row?;
        let mut cells = Vec::with_capacity(cols.len());
        let mut fields = row.get_column_iter();
        for c in &cols {
            let (name, f) = fields
                .next()
                .with_context(|| format!("a row without column {}", c.name))?;
            anyhow::ensure!(
                name == c.parquet_name(),
                "column {name} where {} was written",
                c.parquet_name()
            );
            cells.push(cell(c.ty, f).with_context(|| format!("column {name}"))?);
        }
        each(cells);
    }
    Ok(())
}

fn cell(ty: Ty, f: &Field) -> anyhow::Result<Val> {
    Ok(match (ty, f) {
        (_, Field::Null) => Val::Null,
        (Ty::Int | Ty::OptInt, Field::Long(i)) => Val::Int(*i),
        (Ty::Bool, Field::Bool(b)) => Val::Bool(*b),
        (Ty::Text | Ty::OptText, Field::Str(s)) => Val::Text(s.clone()),
        (Ty::Dec | Ty::OptDec, Field::Decimal(d)) => Val::Dec(decimal(d.data())?),
        (Ty::TimeMs | Ty::OptTimeMs, Field::TimestampMicros(us)) => {
            anyhow::ensure!(us % 1000 == 0, "{us} µs is not a whole ms");
            Val::Int(us / 1000)
        }
        (Ty::TimeUs | Ty::OptTimeUs, Field::TimestampMicros(us)) => Val::Int(*us),
        (Ty::Levels, Field::ListInternal(list)) => {
            let mut levels = Vec::with_capacity(list.len());
            for e in list.elements() {
                let Field::Group(g) = e else {
                    anyhow::bail!("a level that is not a (price, qty) group");
                };
                let mut it = g.get_column_iter();
                let (Some((_, Field::Decimal(p))), Some((_, Field::Decimal(q)))) =
                    (it.next(), it.next())
                else {
                    anyhow::bail!("a level without decimal price and qty");
                };
                levels.push((decimal(p.data())?, decimal(q.data())?));
            }
            Val::Levels(levels)
        }
        (ty, f) => anyhow::bail!("{f:?} where a {ty:?} was written"),
    })
}

/// A big-endian two's-complement unscaled value at the archive's scale.
fn decimal(be: &[u8]) -> anyhow::Result<Dec> {
    anyhow::ensure!(be.len() <= 16, "a decimal of {} bytes", be.len());
    let fill = if be.first().is_some_and(|b| b & 0x80 != 0) {
        0xff
    } else {
        0
    };
    let mut buf = [fill; 16];
    buf[16 - be.len()..].copy_from_slice(be);
    let v = i128::from_be_bytes(buf);
    let digits = v.unsigned_abs().to_string();
    let digits = format!("{digits:0>width$}", width = SCALE + 1);
    let (int, frac) = digits.split_at(digits.len() - SCALE);
    let sign = if v < 0 { "-" } else { "" };
    Dec::parse(&format!("{sign}{int}.{frac}")).map_err(|e| anyhow::anyhow!("decimal: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_come_back_with_every_digit() {
        for text in [
            "86691.9",
            "0.000000000000000001",
            "-3.5",
            "0",
            "12345678901234567890.123456789012345678",
        ] {
            let d = Dec::parse(text).unwrap();
            let u = crate::export::archive::unscaled(&d).unwrap();
            let be = u.to_be_bytes();
            assert_eq!(decimal(&be).unwrap(), d, "{text}");
        }
    }
}
