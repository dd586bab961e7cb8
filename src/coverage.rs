//! `mdrec coverage`: what the database holds per symbol and stream over a time window, the
//! holes on record by status, and the share of the window a socket was live.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use std::sync::Arc;

use crate::model::{Gap, GapStatus, StreamKey, now_ms};
use crate::store::{Store, StoreError};

/// Epoch milliseconds from RFC 3339 (`2026-11-21T10:00:00Z`) or a plain integer of ms.
pub fn parse_time(s: &str) -> Result<i64, String> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse::<i64>().map_err(|e| format!("{s:?}: {e}"));
    }
    if let Ok(d) = chrono::DateTime::parse_from_rfc3339(t) {
        return Ok(d.timestamp_millis());
    }
    // a date, or a date and time with a space or a T, seconds and offset optional: UTC
    // unless an offset is given
    let t = t.replacen(' ', "T", 1);
    if let Ok(d) = chrono::NaiveDate::parse_from_str(&t, "%Y-%m-%d") {
        return Ok(d
            .and_time(chrono::NaiveTime::MIN)
            .and_utc()
            .timestamp_millis());
    }
    for f in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"] {
        if let Ok(d) = chrono::NaiveDateTime::parse_from_str(&t, f) {
            return Ok(d.and_utc().timestamp_millis());
        }
    }
    for f in [
        "%Y-%m-%dT%H:%M:%S%.f%:z",
        "%Y-%m-%dT%H:%M%:z",
        "%Y-%m-%dT%H:%M:%S%.f%z",
        "%Y-%m-%dT%H:%M%z",
    ] {
        if let Ok(d) = chrono::DateTime::parse_from_str(&t, f) {
            return Ok(d.timestamp_millis());
        }
    }
    Err(format!(
        "{s:?} is not a time: use 2026-12-02, 2026-12-02 06:00, 2026-12-02T06:00:00 (UTC unless \
         an offset such as +02:00 or Z is given), RFC 3339, or epoch milliseconds"
    ))
}

#[cfg(test)]
mod time_tests {
    use super::parse_time;

    #[test]
    fn times_in_every_accepted_spelling() {
        let six = 1_796_191_200_000; // 2026-12-02T06:00:00Z
        let midnight = six - 6 * 3_600_000;
        for (text, want) in [
            ("2026-12-02", midnight),
            ("2026-12-02 06:00", six),
            ("2026-12-02T06:00", six),
            ("2026-12-02T06:00:00", six),
            ("2026-12-02 06:00:00.250", six + 250),
            ("2026-12-02T06:00:00Z", six),
            ("2026-12-02T08:00:00+02:00", six),
            ("2026-12-02 08:00+02:00", six),
            ("2026-12-02T08:00+0200", six),
            ("1796191200000", six),
        ] {
            assert_eq!(parse_time(text), Ok(want), "{text}");
        }
        for bad in ["yesterday", "2026-13-02", "02.12.2026", "2026-12-02 6"] {
            let e = parse_time(bad).unwrap_err();
            assert!(e.contains("2026-12-02 06:00"), "{bad}: {e}");
        }
    }
}

/// RFC 3339 in UTC with milliseconds.
pub fn format_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| ms.to_string())
}

#[derive(Debug, Clone, Serialize)]
pub struct StreamCoverage {
    /// `trades`, `kline_<interval>`, `book_<depth_step>`, `ticker`.
    pub stream: String,
    pub rows: i64,
    /// Exchange time of the first and last row (receive time for books and tickers).
    pub first_ms: Option<i64>,
    pub last_ms: Option<i64>,
    pub gaps_open: usize,
    pub gaps_filled: usize,
    pub gaps_unrecoverable: usize,
    /// Rows backfill recovered into this stream's holes.
    pub rows_recovered: i64,
    /// Every hole on record that overlaps the window.
    pub gaps: Vec<Gap>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SymbolCoverage {
    pub symbol: String,
    /// Socket sessions overlapping the window.
    pub sessions: usize,
    /// Milliseconds of the window with an open socket, and its share of the window.
    pub live_ms: i64,
    pub live_share: f64,
    /// The socket spans over the window, merged (the report's timeline).
    #[serde(skip)]
    pub live_spans: Vec<(i64, i64)>,
    pub streams: Vec<StreamCoverage>,
    /// With `--by`: one verdict per stream and period.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub periods: Vec<PeriodVerdict>,
    /// With an archive: per table and UTC day, whether its rows are in the database, the
    /// archive or both.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stored: Vec<TierDay>,
}

/// Where one UTC day of a symbol's table is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TierDay {
    pub symbol: String,
    pub table: &'static str,
    pub date: String,
    /// Rows the database holds, the archive holds, and both hold (counted once).
    pub database_rows: u64,
    pub archive_rows: u64,
    pub both_rows: u64,
    /// `database`, `archive` or `both`.
    pub tier: &'static str,
}

impl TierDay {
    pub fn new(
        symbol: &str,
        table: &'static str,
        date: String,
        (database_rows, archive_rows, both_rows): (u64, u64, u64),
    ) -> TierDay {
        let tier = match (database_rows > 0, archive_rows > 0) {
            (true, true) => "both",
            (false, true) => "archive",
            _ => "database",
        };
        TierDay {
            symbol: symbol.to_string(),
            table,
            date,
            database_rows,
            archive_rows,
            both_rows,
            tier,
        }
    }

    /// Rows of the day, each once.
    pub fn rows(&self) -> u64 {
        self.database_rows + self.archive_rows - self.both_rows
    }
}

/// Per table, runs of days in one tier: `trades  2026-12-01..2026-12-03 archive, ...`.
pub fn render_tiers(days: &[TierDay]) -> String {
    let mut s = String::new();
    let mut tables: Vec<&str> = days.iter().map(|d| d.table).collect();
    tables.sort();
    tables.dedup();
    for t in tables {
        let mut runs: Vec<(String, String, &str, u64)> = Vec::new();
        let mut mine: Vec<&TierDay> = days.iter().filter(|d| d.table == t).collect();
        mine.sort_by(|a, b| a.date.cmp(&b.date));
        for d in mine {
            match runs.last_mut() {
                Some(r) if r.2 == d.tier => {
                    r.1 = d.date.clone();
                    r.3 += d.rows();
                }
                _ => runs.push((d.date.clone(), d.date.clone(), d.tier, d.rows())),
            }
        }
        let text: Vec<String> = runs
            .iter()
            .map(|(a, b, tier, n)| {
                let when = if a == b {
                    a.clone()
                } else {
                    format!("{a}..{b}")
                };
                format!("{when} {tier} ({})", count(*n, "row"))
            })
            .collect();
        let _ = writeln!(s, "    {t:<14} {}", text.join(", "));
    }
    s
}

/// Can this stream be trusted over this period (UTC hour or day, cut to the window)?
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeriodVerdict {
    /// The period's name: its UTC day (`2026-12-07`) or hour (`2026-12-07 14:00`).
    pub period: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub stream: String,
    /// `complete` (a socket was live throughout, no hole), `holes filled` (the venue's
    /// history filled every hole), `holes open` (still being checked), `unrecoverable` (part
    /// of it is beyond the venue's history), `partly down` / `recorder down` (no socket for
    /// part / all of it, and nothing filled the time: books and tickers cannot be fetched
    /// back).
    pub verdict: &'static str,
    pub live_ms: i64,
    pub unrecoverable_ms: i64,
}

/// A period by its aligned start: the day for whole days, else the hour (or minute).
fn period_label(start_ms: i64, period_ms: i64) -> String {
    let fmt = if period_ms % 86_400_000 == 0 {
        "%Y-%m-%d"
    } else if period_ms % 3_600_000 == 0 {
        "%Y-%m-%d %H:00"
    } else {
        "%Y-%m-%d %H:%M"
    };
    chrono::DateTime::from_timestamp_millis(start_ms)
        .map(|d| d.format(fmt).to_string())
        .unwrap_or_default()
}

/// The verdicts of one stream over `[from, to)` cut into periods of `period_ms` aligned to
/// UTC midnight. `live` are the merged socket spans; `holes` the stream's holes.
pub fn verdicts(
    stream: &str,
    from: i64,
    to: i64,
    period_ms: i64,
    live: &[(i64, i64)],
    holes: &[&Gap],
) -> Vec<PeriodVerdict> {
    let overlap = |a: i64, b: i64, x: i64, y: i64| (b.min(y) - a.max(x)).max(0);
    let mut out = Vec::new();
    if period_ms <= 0 || to <= from {
        return out;
    }
    let mut a = from - from.rem_euclid(period_ms);
    while a < to {
        let (pa, pb) = (a.max(from), (a + period_ms).min(to));
        let live_ms: i64 = live.iter().map(|&(x, y)| overlap(pa, pb, x, y)).sum();
        let here: Vec<&&Gap> = holes
            .iter()
            .filter(|g| g.start_ms < pb && g.end_ms.is_none_or(|e| e > pa))
            .collect();
        let unrecoverable_ms: i64 = here
            .iter()
            .filter(|g| g.status == GapStatus::Unrecoverable)
            .map(|g| overlap(pa, pb, g.start_ms, g.end_ms.unwrap_or(i64::MAX)))
            .sum();
        let verdict = if here.iter().any(|g| g.status == GapStatus::Unrecoverable) {
            "unrecoverable"
        } else if here.iter().any(|g| g.status == GapStatus::Open) {
            "holes open"
        } else if !here.is_empty() {
            "holes filled"
        } else if live_ms >= pb - pa {
            "complete"
        } else if live_ms == 0 {
            "recorder down"
        } else {
            "partly down"
        };
        out.push(PeriodVerdict {
            period: period_label(a, period_ms),
            start_ms: pa,
            end_ms: pb,
            stream: stream.to_string(),
            verdict,
            live_ms,
            unrecoverable_ms,
        });
        a += period_ms;
    }
    out
}

#[derive(Debug, Clone, Serialize)]
pub struct Coverage {
    pub venue: String,
    pub from_ms: i64,
    pub to_ms: i64,
    pub symbols: Vec<SymbolCoverage>,
}

/// Coverage of `symbols` (all symbols with data when empty) between `from` and `to`
/// (defaults: the first session or row, and now).
pub async fn compute(
    store: &Store,
    venue: &'static str,
    symbols: &[String],
    from: Option<i64>,
    to: Option<i64>,
    by: Option<i64>,
) -> Result<Coverage, StoreError> {
    let symbols: Vec<String> = if symbols.is_empty() {
        store.symbols_with_data(venue).await?
    } else {
        symbols.to_vec()
    };
    // without bounds every row counts (exchange clocks may run ahead of ours); the live
    // share is over the recorded span
    let (q_from, q_to) = (
        from.unwrap_or(i64::MIN / 1000),
        to.unwrap_or(i64::MAX / 1000),
    );
    // the live share is over the recorded span: to the last session's end (now while one is
    // open), not to now after the recorder stopped
    let to = match to {
        Some(t) => t,
        None => store
            .last_session_end_ms(venue)
            .await?
            .unwrap_or_else(now_ms),
    };
    let from = match from {
        Some(f) => f,
        None => store.first_session_ms(venue).await?.unwrap_or(to),
    };
    let all_gaps = store.load_gaps(venue, None).await?;
    let mut out = Vec::new();
    for symbol in symbols {
        let mut streams = Vec::new();
        let mut keys = vec![StreamKey::Trades];
        for iv in store.stored_intervals(venue, &symbol).await? {
            keys.push(StreamKey::Kline(Arc::from(iv.as_str())));
        }
        for step in store.stored_depth_steps(venue, &symbol).await? {
            if let Ok(d) = i16::try_from(step) {
                keys.push(StreamKey::Book(d));
            }
        }
        keys.push(StreamKey::Ticker);
        for key in keys {
            let s = store
                .stream_span(venue, &symbol, &key, q_from, q_to)
                .await?;
            // trades are always listed; a ticker only when recorded
            if key == StreamKey::Ticker && s.0 == 0 {
                continue;
            }
            streams.push((key.name(), s));
        }
        let mut by_stream: BTreeMap<&str, Vec<&Gap>> = BTreeMap::new();
        for g in all_gaps.iter().filter(|g| *g.symbol == *symbol) {
            // a hole overlaps the window if it starts before its end and ends after its start
            if g.start_ms < q_to && g.end_ms.is_none_or(|e| e >= q_from) {
                by_stream.entry(g.stream.as_str()).or_default().push(g);
            }
        }
        let streams: Vec<StreamCoverage> = streams
            .into_iter()
            .map(|(stream, (rows, first_ms, last_ms))| {
                let gaps: Vec<Gap> = by_stream
                    .get(stream.as_str())
                    .map(|v| v.iter().map(|g| (*g).clone()).collect())
                    .unwrap_or_default();
                let count = |s: GapStatus| gaps.iter().filter(|g| g.status == s).count();
                StreamCoverage {
                    rows,
                    first_ms,
                    last_ms,
                    gaps_open: count(GapStatus::Open),
                    gaps_filled: count(GapStatus::Filled),
                    gaps_unrecoverable: count(GapStatus::Unrecoverable),
                    rows_recovered: gaps.iter().map(|g| g.rows_recovered).sum(),
                    gaps,
                    stream,
                }
            })
            .collect();
        let (sessions, live_ms, spans) = live(store, venue, &symbol, from, to).await?;
        let window = (to - from).max(0);
        out.push(SymbolCoverage {
            symbol,
            sessions,
            live_ms,
            live_share: if window == 0 {
                0.0
            } else {
                live_ms as f64 / window as f64
            },
            live_spans: spans,
            streams,
            periods: Vec::new(),
            stored: Vec::new(),
        });
    }
    let mut c = Coverage {
        venue: venue.to_string(),
        from_ms: from,
        to_ms: to,
        symbols: out,
    };
    if let Some(by) = by {
        c.set_periods(by);
    }
    Ok(c)
}

impl Coverage {
    /// One verdict per stream and period of `period_ms` (UTC-aligned), from what `compute`
    /// read: the socket spans and each stream's holes.
    pub fn set_periods(&mut self, period_ms: i64) {
        // hours that have not happened yet get no verdict (they are not "recorder down")
        let to = self.to_ms.min(crate::model::now_ms());
        for sym in &mut self.symbols {
            let mut periods = Vec::new();
            for st in &sym.streams {
                let holes: Vec<&Gap> = st.gaps.iter().collect();
                periods.extend(verdicts(
                    &st.stream,
                    self.from_ms,
                    to,
                    period_ms,
                    &sym.live_spans,
                    &holes,
                ));
            }
            periods.sort_by_key(|p| p.start_ms);
            sym.periods = periods;
        }
    }
}

/// Sessions overlapping the window, the milliseconds of it covered by at least one (a
/// session still open counts up to now), and those spans merged.
pub async fn live(
    store: &Store,
    venue: &str,
    symbol: &str,
    from: i64,
    to: i64,
) -> Result<(usize, i64, Vec<(i64, i64)>), StoreError> {
    let rows = store.session_spans(venue, symbol).await?;
    let now = now_ms();
    let mut spans: Vec<(i64, i64)> = rows
        .into_iter()
        .map(|(a, b)| (a.max(from), b.unwrap_or(now).min(to)))
        .filter(|(a, b)| b > a)
        .collect();
    let n = spans.len();
    spans.sort();
    let mut merged: Vec<(i64, i64)> = Vec::new();
    for (a, b) in spans {
        match merged.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    let total = merged.iter().map(|(a, b)| b - a).sum();
    Ok((n, total, merged))
}

fn opt_time(t: Option<i64>) -> String {
    t.map(format_time).unwrap_or_else(|| "-".into())
}

/// The terminal view: one block per symbol, one line per stream, then the holes that are
/// not filled (open or unrecoverable) with their bounds.
pub fn render(c: &Coverage) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "coverage of {} from {} to {}",
        c.venue,
        format_time(c.from_ms),
        format_time(c.to_ms)
    );
    for sym in &c.symbols {
        let _ = writeln!(
            s,
            "\n{}  socket live {:.1}% of the window ({})",
            sym.symbol,
            sym.live_share * 100.0,
            count(sym.sessions as u64, "session")
        );
        let _ = writeln!(
            s,
            "  {:<12} {:>10}  {:<24}  {:<24}  {:>6} {:>6} {:>6}  {:>9}",
            "stream", "rows", "first", "last", "filled", "open", "unrec", "recovered"
        );
        for st in &sym.streams {
            let _ = writeln!(
                s,
                "  {:<12} {:>10}  {:<24}  {:<24}  {:>6} {:>6} {:>6}  {:>9}",
                st.stream,
                st.rows,
                opt_time(st.first_ms),
                opt_time(st.last_ms),
                st.gaps_filled,
                st.gaps_open,
                st.gaps_unrecoverable,
                st.rows_recovered
            );
        }
        for st in &sym.streams {
            for g in st.gaps.iter().filter(|g| g.status != GapStatus::Filled) {
                let _ = writeln!(
                    s,
                    "  {} {} hole: {} .. {}{}",
                    st.stream,
                    g.status.as_str(),
                    format_time(g.start_ms),
                    opt_time(g.end_ms),
                    g.detail
                        .as_deref()
                        .map(|d| format!("  ({d})"))
                        .unwrap_or_default()
                );
            }
        }
        if !sym.stored.is_empty() {
            let _ = writeln!(s, "  stored (UTC days: database, archive or both):");
            s.push_str(&render_tiers(&sym.stored));
        }
        if !sym.periods.is_empty() {
            // one line per period, one column per stream
            let names: Vec<&str> = sym.streams.iter().map(|st| st.stream.as_str()).collect();
            let _ = write!(s, "\n  {:<17}", "period (UTC)");
            for n in &names {
                let _ = write!(s, "  {n:<16}");
            }
            let _ = writeln!(s);
            let mut starts: Vec<i64> = sym.periods.iter().map(|p| p.start_ms).collect();
            starts.dedup();
            for start in starts {
                let when = sym
                    .periods
                    .iter()
                    .find(|p| p.start_ms == start)
                    .map(|p| p.period.as_str())
                    .unwrap_or_default();
                let _ = write!(s, "  {when:<17}");
                for n in &names {
                    let v = sym
                        .periods
                        .iter()
                        .find(|p| p.start_ms == start && p.stream == *n);
                    let text = match v {
                        Some(p) if p.unrecoverable_ms > 0 => {
                            format!("unrec {}", format_age(p.unrecoverable_ms))
                        }
                        Some(p) => p.verdict.to_string(),
                        None => "-".into(),
                    };
                    let _ = write!(s, "  {text:<16}");
                }
                let _ = writeln!(s);
            }
        }
    }
    s
}

#[cfg(test)]
mod verdict_tests {
    use super::*;

    fn gap(stream: &str, start: i64, end: i64, status: GapStatus) -> Gap {
        Gap {
            venue: "cdc-v1",
            symbol: "btcusdt".into(),
            stream: stream.into(),
            start_ms: start,
            end_ms: Some(end),
            status,
            detected_at_ms: 0,
            resolved_at_ms: None,
            rows_recovered: 0,
            detail: None,
        }
    }

    #[test]
    fn one_verdict_per_period_by_what_happened_in_it() {
        const H: i64 = 3_600_000;
        let day = 1_796_169_600_000; // 2026-12-02T00:00:00Z
        // live 00:00-01:30 and 02:00-05:00; a filled hole 01:30-02:00 (trades), an
        // unrecoverable 10 minutes at 03:00; the window ends at 05:00
        let live = [(day, day + H + H / 2), (day + 2 * H, day + 5 * H)];
        let filled = gap("trades", day + H + H / 2, day + 2 * H, GapStatus::Filled);
        let lost = gap(
            "trades",
            day + 3 * H,
            day + 3 * H + 600_000,
            GapStatus::Unrecoverable,
        );
        let v = verdicts("trades", day, day + 5 * H, H, &live, &[&filled, &lost]);
        let words: Vec<&str> = v.iter().map(|p| p.verdict).collect();
        assert_eq!(
            words,
            [
                "complete",
                "holes filled",
                "complete",
                "unrecoverable",
                "complete"
            ]
        );
        assert_eq!(v[3].unrecoverable_ms, 600_000);
        // a stream nothing fills back: the down time is what it is
        let v = verdicts("ticker", day, day + 5 * H, H, &live, &[]);
        let words: Vec<&str> = v.iter().map(|p| p.verdict).collect();
        assert_eq!(
            words,
            [
                "complete",
                "partly down",
                "complete",
                "complete",
                "complete"
            ]
        );
        let v = verdicts("ticker", day, day + 5 * H, H, &[], &[]);
        assert!(v.iter().all(|p| p.verdict == "recorder down"));
        // periods are UTC hours cut to the window
        let v = verdicts("trades", day + H / 2, day + 2 * H, H, &live, &[]);
        assert_eq!(v[0].start_ms, day + H / 2);
        assert_eq!(v[0].end_ms, day + H);
        assert_eq!(v.len(), 2);
        // each named by its own hour or day, not the window's start
        assert_eq!(v[0].period, "2026-12-02 00:00");
        assert_eq!(v[1].period, "2026-12-02 01:00");
        let v = verdicts(
            "trades",
            day + H / 2,
            day + 2 * 86_400_000,
            86_400_000,
            &live,
            &[],
        );
        assert_eq!(v[0].period, "2026-12-02");
        assert_eq!(v[1].period, "2026-12-03");
    }

    #[test]
    fn hours_not_yet_come_get_no_verdict() {
        const H: i64 = 3_600_000;
        let now = crate::model::now_ms();
        let mut c = Coverage {
            venue: "cdc-v1".into(),
            from_ms: now - 2 * H,
            to_ms: now + 5 * H,
            symbols: vec![SymbolCoverage {
                symbol: "btcusdt".into(),
                sessions: 1,
                live_ms: 2 * H,
                live_share: 2.0 / 7.0,
                live_spans: vec![(now - 2 * H, now)],
                streams: vec![StreamCoverage {
                    stream: "trades".into(),
                    rows: 1,
                    first_ms: None,
                    last_ms: None,
                    gaps_open: 0,
                    gaps_filled: 0,
                    gaps_unrecoverable: 0,
                    rows_recovered: 0,
                    gaps: Vec::new(),
                }],
                periods: Vec::new(),
                stored: Vec::new(),
            }],
        };
        c.set_periods(H);
        let p = &c.symbols[0].periods;
        assert!(p.len() <= 3, "{p:?}");
        assert!(
            p.iter()
                .all(|p| p.start_ms < now && p.verdict != "recorder down"),
            "{p:?}"
        );
    }
}

/// `mdrec book --json`: the top `depth` levels per side as exact strings.
/// What can be said of a book at a time.
#[derive(Debug, Clone, PartialEq)]
pub enum BookAt {
    /// Rebuilt from the last full book at or before the time and the deltas after it.
    Book(crate::model::BookSnapshot),
    /// No full book stored at or before the time.
    Missing,
    /// The book stream broke (updates lost, recorded in `gaps`) after the last full book and
    /// before the time: no book can be rebuilt there.
    Broken {
        snapshot_ms: i64,
        break_from_ms: i64,
        break_to_ms: Option<i64>,
    },
}

/// The book of `symbol` at exchange time `at_ms` (None: the newest), never rebuilt across
/// a recorded sequence break.
pub async fn book_at(
    store: &Store,
    venue: &'static str,
    symbol: &str,
    depth_step: i16,
    at_ms: Option<i64>,
) -> Result<BookAt, StoreError> {
    let Some(snapshot_ms) = store
        .snapshot_time(venue, symbol, depth_step, at_ms)
        .await?
    else {
        return Ok(BookAt::Missing);
    };
    let stream = StreamKey::Book(depth_step).name();
    let broken = store
        .load_gaps(venue, Some(symbol))
        .await?
        .into_iter()
        .find(|g| {
            g.stream == stream
                && g.start_ms >= snapshot_ms
                && at_ms.is_none_or(|at| g.start_ms < at)
        });
    if let Some(g) = broken {
        return Ok(BookAt::Broken {
            snapshot_ms,
            break_from_ms: g.start_ms,
            break_to_ms: g.end_ms,
        });
    }
    Ok(
        match store.load_book(venue, symbol, depth_step, at_ms).await? {
            Some(b) => BookAt::Book(b),
            None => BookAt::Missing,
        },
    )
}

/// What to know about a rebuilt book before trusting it at the asked time: how old it is
/// there, and what happened between its last update and then.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BookNotes {
    /// The asked time (exchange clock; now when none was asked).
    pub at_ms: i64,
    /// From the book's last update (exchange time) to the asked time.
    pub age_ms: i64,
    /// Holes of this book's stream on record and socket disconnects between the book's last
    /// update and the asked time: the book may have changed unseen.
    pub warnings: Vec<String>,
}

/// The notes for `book` asked at `at_ms` (None: now). Sessions are in receive time, so a
/// disconnect counts from the book's receive time on.
pub async fn book_notes(
    store: &Store,
    venue: &'static str,
    book: &crate::model::BookSnapshot,
    at_ms: Option<i64>,
) -> Result<BookNotes, StoreError> {
    let at = at_ms.unwrap_or_else(now_ms);
    let from = book.event_time_ms;
    let from_recv = book.recv_time_us / 1000;
    let mut warnings = Vec::new();
    // only this book's own holes: a trade or bar hole says nothing about the book
    let stream = crate::model::StreamKey::Book(book.depth_step).name();
    for g in store.load_gaps(venue, Some(&book.symbol)).await? {
        let ends = g.end_ms.unwrap_or(i64::MAX);
        if g.stream == stream && g.start_ms < at && ends > from {
            warnings.push(format!(
                "a recorded hole in {} ({}) from {} to {} lies between the book and the asked time",
                g.stream,
                g.status.as_str(),
                format_time(g.start_ms),
                g.end_ms.map_or("now".to_string(), format_time)
            ));
        }
    }
    let spans = store.session_spans(venue, &book.symbol).await?;
    for (i, (_, end)) in spans.iter().enumerate() {
        let Some(end) = *end else { continue };
        if end < from_recv || end > at {
            continue;
        }
        // down until the next session connected (or still, at the asked time)
        let back = spans.get(i + 1).map(|s| s.0).filter(|&c| c <= at);
        warnings.push(match back {
            Some(c) => format!(
                "the socket was down from {} to {}: the book may have changed unseen",
                format_time(end),
                format_time(c)
            ),
            None => format!(
                "no socket was recording from {} to the asked time: the book may have changed unseen",
                format_time(end)
            ),
        });
    }
    Ok(BookNotes {
        at_ms: at,
        age_ms: at - from,
        warnings,
    })
}

/// `1 session`, `3 sessions`.
pub fn count(n: u64, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// Age as people read it: 850 ms, 12.5 s, 3 min 20 s, 2 h 5 min, 3 d 4 h.
pub fn format_age(ms: i64) -> String {
    let (neg, ms) = (ms < 0, ms.unsigned_abs());
    let s = ms / 1000;
    let text = if ms < 1000 {
        format!("{ms} ms")
    } else if s < 60 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else if s < 3600 {
        format!("{} min {} s", s / 60, s % 60)
    } else if s < 86400 {
        format!("{} h {} min", s / 3600, s % 3600 / 60)
    } else {
        format!("{} d {} h", s / 86400, s % 86400 / 3600)
    };
    if neg { format!("-{text}") } else { text }
}

pub fn book_json(b: &crate::model::BookSnapshot, depth: usize) -> serde_json::Value {
    let side = |v: &[(crate::decimal::Dec, crate::decimal::Dec)]| -> Vec<[String; 2]> {
        v.iter()
            .take(depth)
            .map(|(p, q)| [p.to_string(), q.to_string()])
            .collect()
    };
    serde_json::json!({
        "symbol": &*b.symbol,
        "depth_step": b.depth_step,
        "event_time_ms": b.event_time_ms,
        "event_time": format_time(b.event_time_ms),
        "recv_time_us": b.recv_time_us,
        "bids": side(&b.bids),
        "asks": side(&b.asks),
    })
}

/// `mdrec book`: bids and asks side by side, best first.
pub fn render_book(b: &crate::model::BookSnapshot, depth: usize) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} step {} as of {} (exchange time; last row received {})",
        b.symbol,
        b.depth_step,
        format_time(b.event_time_ms),
        format_time(b.recv_time_us / 1000)
    );
    let _ = writeln!(
        s,
        "{:>18} {:>22}  |  {:<22} ask qty",
        "bid qty", "bid", "ask"
    );
    for i in 0..depth.min(b.bids.len().max(b.asks.len())) {
        let (bp, bq) = b
            .bids
            .get(i)
            .map(|(p, q)| (p.to_string(), q.to_string()))
            .unwrap_or_default();
        let (ap, aq) = b
            .asks
            .get(i)
            .map(|(p, q)| (p.to_string(), q.to_string()))
            .unwrap_or_default();
        let line = format!("{bq:>18} {bp:>22}  |  {ap:<22} {aq}");
        let _ = writeln!(s, "{}", line.trim_end());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_rfc3339_or_epoch_ms() {
        assert_eq!(parse_time("1700000000000"), Ok(1_700_000_000_000));
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Ok(1_700_000_000_000));
        assert_eq!(
            parse_time("2023-11-14T23:13:20.5+01:00"),
            Ok(1_700_000_000_500)
        );
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("").is_err());
        assert_eq!(format_time(1_700_000_000_500), "2023-11-14T22:13:20.500Z");
    }
}
