//! What an export is asked for: the kind of rows, the symbols and window, the format and
//! layout, the grid; and the names files are written under.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Trades,
    Klines,
    /// Stored full books; with `--every`, the book rebuilt on a time grid.
    Book,
    BookDeltas,
    Tickers,
    Gaps,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Csv,
    Parquet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Layout {
    /// One file, `--out`.
    File,
    /// `--out` is a directory: `symbol=S/date=YYYY-MM-DD/part.<format>`, one file per symbol
    /// and UTC day (exchange time).
    Hive,
}

#[derive(Debug, Clone)]
pub struct Request {
    pub kind: Kind,
    pub symbols: Vec<String>,
    /// Klines only: the venue's interval name.
    pub interval: String,
    /// `from_ms <= t < to_ms` on exchange time (bars: open time; holes: overlapping).
    pub from_ms: i64,
    pub to_ms: i64,
    pub format: Format,
    pub layout: Layout,
    pub out: PathBuf,
    /// Replace files that exist.
    pub force: bool,
    /// Books and changes: the stream (depth step); None: every stored one (the grid needs
    /// exactly one).
    pub step: Option<i16>,
    /// Books: the grid, in ms (None: the stored full books).
    pub every_ms: Option<i64>,
    /// Grid: levels per side.
    pub depth: usize,
    /// Where the rows come from (the database, password masked), for the Parquet metadata.
    pub source: String,
}

impl Request {
    /// One symbol, the whole recording, one file.
    pub fn new(kind: Kind, symbol: &str, format: Format, out: impl Into<PathBuf>) -> Request {
        Request {
            kind,
            symbols: vec![symbol.to_string()],
            interval: String::new(),
            from_ms: i64::MIN,
            to_ms: i64::MAX,
            format,
            layout: Layout::File,
            out: out.into(),
            force: false,
            step: None,
            every_ms: None,
            depth: 10,
            source: String::new(),
        }
    }

    pub(super) fn grid(&self) -> Option<i64> {
        self.every_ms.filter(|_| self.kind == Kind::Book)
    }
}

pub(super) fn refused(flag: &'static str, message: impl Into<String>) -> anyhow::Error {
    crate::config::UsageError::new(flag, message).into()
}

/// CSV to a name ending in `.gz` is written gzip-compressed.
pub(super) fn gzipped(out: &Path) -> bool {
    out.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"))
}

/// `out.partial` next to the target, so a half-written export never has the final name.
pub fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    out.with_file_name(name)
}

/// Parses a grid step: `500ms`, `1s`, `5m`, `1h` (a bare number is ms).
pub fn parse_every(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: i64 = n
        .parse()
        .map_err(|_| format!("{s:?}: expected a duration like 500ms, 1s, 5m, 1h"))?;
    let mul = match unit {
        "" | "ms" => 1,
        "s" => 1000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("{s:?}: the unit is one of ms, s, m, h")),
    };
    n.checked_mul(mul)
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("{s:?}: must be longer than 0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_steps_parse() {
        assert_eq!(parse_every("1s"), Ok(1000));
        assert_eq!(parse_every("250ms"), Ok(250));
        assert_eq!(parse_every("5m"), Ok(300_000));
        assert!(parse_every("0s").is_err());
        assert!(parse_every("1d").is_err());
    }
}
