//! Which files an export writes, every refusal before a byte is written, and how many rows
//! they will hold.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::request::{Format, Kind, Layout, Request, refused};
use crate::model::Table;
use crate::store::{Store, StoreError};

pub(super) const DAY_MS: i64 = 86_400_000;

/// What is wrong with a request before anything is written: the window, the grid, the
/// output path, a symbol the database holds nothing of (with the closest names it does hold).
pub async fn check(store: &Store, venue: &str, req: &Request) -> anyhow::Result<()> {
    if req.from_ms >= req.to_ms {
        return Err(refused(
            "--from",
            "must be before --to (the window is [from, to))",
        ));
    }
    if req.symbols.is_empty() {
        return Err(refused("--symbol", "name at least one symbol"));
    }
    match req.every_ms {
        Some(_) if req.kind != Kind::Book => {
            return Err(refused(
                "--every",
                "rebuilds the book on a time grid: only with --kind book",
            ));
        }
        Some(e) if e <= 0 => return Err(refused("--every", "must be longer than 0")),
        _ => {}
    }
    if req.grid().is_some() && req.depth == 0 {
        return Err(refused("--depth", "must be at least 1 level"));
    }
    match req.layout {
        Layout::File if req.symbols.len() > 1 => {
            return Err(refused(
                "--layout",
                "several symbols are written one file per symbol and day: --layout hive \
                 with --out a directory",
            ));
        }
        Layout::File => {
            if req.out.is_dir() {
                return Err(refused(
                    "--out",
                    format!(
                        "{} is a directory: name the file to write (or --layout hive)",
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
        }
        Layout::Hive => {
            if req.out.exists() && !req.out.is_dir() {
                return Err(refused(
                    "--out",
                    format!(
                        "{} is a file: the hive layout writes into a directory",
                        req.out.display()
                    ),
                ));
            }
        }
    }
    for symbol in &req.symbols {
        check_symbol(store, venue, symbol).await?;
        if req.grid().is_some() {
            grid_step(store, venue, symbol, req.step).await?;
        }
    }
    Ok(())
}

/// A symbol the database holds nothing of is refused, with the closest names it holds.
pub async fn check_symbol(store: &Store, venue: &str, symbol: &str) -> anyhow::Result<()> {
    if store.has_symbol(venue, symbol).await? {
        return Ok(());
    }
    let known = store.known_symbols(venue).await?;
    let names: std::collections::HashSet<&str> = known.iter().map(|s| s.as_str()).collect();
    if names.contains(symbol) {
        return Err(refused(
            "--symbol",
            format!(
                "the database holds no rows of {symbol:?} for {venue}: it knows the name (listed by the venue or subscribed), but nothing of it was stored"
            ),
        ));
    }
    let near = crate::config::closest_names(symbol, &names);
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

/// The one book stream a grid is rebuilt from: `--step`, else the only one stored.
pub(super) async fn grid_step(
    store: &Store,
    venue: &str,
    symbol: &str,
    step: Option<i16>,
) -> anyhow::Result<i16> {
    if let Some(s) = step {
        return Ok(s);
    }
    match store.stored_depth_steps(venue, symbol).await?.as_slice() {
        [one] => Ok(i16::try_from(*one).context("stored depth step out of range")?),
        [] => Err(refused(
            "--kind",
            format!("no full {symbol} book is stored: the grid starts from one"),
        )),
        many => {
            let list: Vec<String> = many.iter().map(|s| s.to_string()).collect();
            Err(refused(
                "--step",
                format!(
                    "{symbol} has several book streams (steps {}): name one",
                    list.join(", ")
                ),
            ))
        }
    }
}

/// The part of the request one file holds.
#[derive(Debug, Clone, Copy)]
pub(super) struct Window {
    pub(super) from: i64,
    pub(super) to: i64,
    /// Holes: a hole is in the file of the day it starts on, or the first file if it began
    /// before the window, so a dataset of days holds each once.
    pub(super) first: bool,
}

/// One file of an export.
#[derive(Debug, Clone)]
pub struct Part {
    pub symbol: String,
    pub path: PathBuf,
    pub(super) win: Window,
}

impl Part {
    /// A part that is not a file of its own (an archive part, written in memory).
    pub(super) fn window(symbol: &str, win: Window) -> Part {
        Part {
            symbol: symbol.to_string(),
            path: PathBuf::new(),
            win,
        }
    }
}

/// A file written.
#[derive(Debug, Clone)]
pub struct Written {
    pub path: PathBuf,
    pub rows: u64,
}

/// Which table a kind's rows (and their exchange-time bounds) come from.
pub(super) fn table(req: &Request) -> Option<Table> {
    match req.kind {
        Kind::Trades => Some(Table::Trades),
        Kind::Klines => Some(Table::Klines),
        Kind::Book => Some(Table::BookSnapshots),
        Kind::BookDeltas => Some(Table::BookDeltas),
        Kind::Tickers => Some(Table::Tickers),
        Kind::Gaps => None,
    }
}

/// First and last exchange time of what the request selects for a symbol.
pub(super) async fn bounds(
    store: &Store,
    venue: &'static str,
    req: &Request,
    symbol: &str,
) -> Result<Option<(i64, i64)>, StoreError> {
    let Some(t) = table(req) else {
        let gaps = store.load_gaps(venue, Some(symbol)).await?;
        let mut b: Option<(i64, i64)> = None;
        // a hole is placed by where it starts in the window
        for g in gaps.iter().filter(|g| gap_in(g, req.from_ms, req.to_ms)) {
            let at = g.start_ms.max(req.from_ms);
            b = union(b, Some((at, at)));
        }
        return Ok(b);
    };
    let get = |t| {
        store.time_bounds(
            t,
            venue,
            symbol,
            &req.interval,
            req.step,
            req.from_ms,
            req.to_ms,
        )
    };
    let b = get(t).await?;
    if req.grid().is_some() {
        // changes carry the book past the last full one
        return Ok(union(b, get(Table::BookDeltas).await?));
    }
    Ok(b)
}

/// The span covering both.
pub(super) fn union(a: Option<(i64, i64)>, b: Option<(i64, i64)>) -> Option<(i64, i64)> {
    match (a, b) {
        (Some((a0, a1)), Some((b0, b1))) => Some((a0.min(b0), a1.max(b1))),
        (x, None) | (None, x) => x,
    }
}

pub(super) fn gap_in(g: &crate::model::Gap, from: i64, to: i64) -> bool {
    g.start_ms < to && g.end_ms.unwrap_or(i64::MAX) >= from
}

/// A hive key's value with what a path or a hive reader would take for syntax
/// percent-encoded (export's directories and the archive's).
pub fn hive_value(v: &str) -> String {
    let mut enc = String::new();
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
            enc.push(b as char);
        } else {
            enc.push_str(&format!("%{b:02X}"));
        }
    }
    enc
}

/// The value [`hive_value`] encoded (None: not its encoding).
pub fn hive_decoded(enc: &str) -> Option<String> {
    let mut out = Vec::with_capacity(enc.len());
    let mut bytes = enc.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

/// `YYYY-MM-DD` of a time in ms (UTC).
pub fn date(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// `symbol=BTC_USD/date=2026-11-21`, the symbol as [`hive_value`] encodes it.
pub(super) fn hive_dir(out: &Path, symbol: &str, day_ms: i64) -> PathBuf {
    out.join(format!("symbol={}", hive_value(symbol)))
        .join(format!("date={}", date(day_ms)))
}

/// The files the request writes, checked before any is: with the hive layout one per
/// symbol and UTC day that holds rows.
pub async fn plan(store: &Store, venue: &'static str, req: &Request) -> anyhow::Result<Vec<Part>> {
    check(store, venue, req).await?;
    let mut parts = Vec::new();
    if req.layout == Layout::File {
        let symbol = req.symbols[0].clone();
        let (from, to) = match req.grid() {
            // the grid needs a concrete span: the recorded one, cut to the window
            Some(_) => match bounds(store, venue, req, &symbol).await? {
                Some((lo, hi)) => (req.from_ms.max(lo), req.to_ms.min(hi.saturating_add(1))),
                None => (req.from_ms, req.from_ms),
            },
            None => (req.from_ms, req.to_ms),
        };
        parts.push(Part {
            symbol,
            path: req.out.clone(),
            win: Window {
                from,
                to,
                first: true,
            },
        });
        return Ok(parts);
    }
    let ext = match req.format {
        Format::Csv => "csv",
        Format::Parquet => "parquet",
    };
    let mut existing = Vec::new();
    for symbol in &req.symbols {
        let Some((lo, hi)) = bounds(store, venue, req, symbol).await? else {
            continue;
        };
        let mut day = lo - lo.rem_euclid(DAY_MS);
        let mut first = true;
        while day <= hi {
            let from = req.from_ms.max(day);
            let to = req.to_ms.min(day + DAY_MS);
            // the grid ends with the recording when the window is open-ended
            let to = if req.grid().is_some() {
                to.min(hi.saturating_add(1))
            } else {
                to
            };
            let path = hive_dir(&req.out, symbol, day).join(format!("part.{ext}"));
            if path.exists() && !req.force {
                existing.push(path.display().to_string());
            }
            parts.push(Part {
                symbol: symbol.clone(),
                path,
                win: Window { from, to, first },
            });
            first = false;
            day += DAY_MS;
        }
    }
    if !existing.is_empty() {
        let more = if existing.len() > 3 {
            format!(" and {} more", existing.len() - 3)
        } else {
            String::new()
        };
        existing.truncate(3);
        return Err(refused(
            "--out",
            format!(
                "{}{more} exist: pass --force to replace them",
                existing.join(", ")
            ),
        ));
    }
    Ok(parts)
}

/// Rows the request selects (books on a grid: grid times), for the progress bar.
pub async fn count(
    store: &Store,
    venue: &str,
    req: &Request,
    parts: &[Part],
) -> Result<u64, StoreError> {
    let mut n = 0u64;
    for p in parts {
        if let Some(every) = req.grid() {
            n += ((p.win.to - p.win.from).max(0) / every) as u64;
            continue;
        }
        let Some(t) = table(req) else { continue };
        n += store
            .rows_between(t, venue, &p.symbol, &req.interval, p.win.from, p.win.to)
            .await?;
    }
    Ok(n)
}

/// `--step`, else every stream of the symbol stored in the kind's table.
pub(super) async fn steps(
    store: &Store,
    venue: &str,
    symbol: &str,
    kind: Kind,
    step: Option<i16>,
) -> anyhow::Result<Vec<i16>> {
    if let Some(s) = step {
        return Ok(vec![s]);
    }
    let stored = if kind == Kind::BookDeltas {
        store.stored_delta_steps(venue, symbol).await?
    } else {
        store.stored_depth_steps(venue, symbol).await?
    };
    stored
        .into_iter()
        .map(|s| i16::try_from(s).context("stored depth step out of range"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hive_paths_escape_what_a_reader_would_split_on() {
        let p = hive_dir(Path::new("/x"), "BTC_USD", 1_763_683_200_000);
        assert_eq!(p, Path::new("/x/symbol=BTC_USD/date=2025-11-21"));
        let p = hive_dir(Path::new("/x"), "A/B=C", 0);
        assert_eq!(p, Path::new("/x/symbol=A%2FB%3DC/date=1970-01-01"));
        for v in ["A/B=C", "BTC_USD", "é 100%", ""] {
            assert_eq!(hive_decoded(&hive_value(v)).as_deref(), Some(v));
        }
        assert_eq!(hive_decoded("%G1"), None);
    }
}
