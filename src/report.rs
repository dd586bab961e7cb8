//! `mdrec coverage --html FILE`: the coverage as one self-contained page (no script, no
//! external resource, so it opens from a mail attachment or an air-gapped box): per symbol a
//! timeline picture, one bar per stream over the window (green where a socket was live, amber
//! where a hole was filled from the venue's history, red where a hole is open or
//! unrecoverable, grey where nothing recorded), the stream table, and the verdicts per period.

use std::fmt::Write;

use crate::coverage::{Coverage, SymbolCoverage, format_age, format_time};
use crate::model::GapStatus;

pub const LIVE: &str = "#2ca02c";
pub const FILLED: &str = "#ffb000";
pub const HOLE: &str = "#d62728";
pub const DOWN: &str = "#d9d9d9";

/// Timeline geometry, CSS px: labels left of `X0`, bars `WIDTH` wide.
const X0: f64 = 150.0;
const WIDTH: f64 = 800.0;
const BAR: f64 = 18.0;
const GAP: f64 = 8.0;

/// Text for HTML content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Writes the page to `path`, under its name only when whole (`.partial`, synced, renamed).
pub fn write(path: &std::path::Path, c: &Coverage) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write as _;
    let tmp = crate::export::partial_path(path);
    let r = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(render_html(c).as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r.with_context(|| format!("writing {}", path.display()))
}

/// The page.
pub fn render_html(c: &Coverage) -> String {
    let mut s = String::new();
    let title = format!(
        "mdrec coverage: {} {} to {}",
        c.venue,
        format_time(c.from_ms),
        format_time(c.to_ms)
    );
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{}</title><style>\
         body{{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222}}\
         h1{{font-size:20px}} h2{{font-size:17px;margin-top:32px}}\
         table{{border-collapse:collapse;margin:8px 0}} td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}\
         th{{background:#f4f4f4}} td.l,th.l{{text-align:left}}\
         .legend span{{display:inline-block;width:14px;height:14px;vertical-align:middle;margin:0 4px 0 12px}}\
         td.complete{{background:#dff0d8}} td.filled{{background:#fff0c0}} td.bad{{background:#f8d0d0}} td.down{{background:#eee}}\
         </style></head><body>\n",
        esc(&title)
    );
    let _ = writeln!(
        s,
        "<h1>Coverage of {} from {} to {} (UTC)</h1>",
        esc(&c.venue),
        esc(&format_time(c.from_ms)),
        esc(&format_time(c.to_ms))
    );
    let _ = writeln!(
        s,
        "<p class=\"legend\"><span style=\"background:{LIVE}\"></span>socket live\
         <span style=\"background:{FILLED}\"></span>hole filled from the venue's history\
         <span style=\"background:{HOLE}\"></span>hole open or unrecoverable\
         <span style=\"background:{DOWN}\"></span>nothing recorded</p>"
    );
    if c.symbols.is_empty() {
        let _ = writeln!(s, "<p>No symbol has data in this window.</p>");
    }
    for sym in &c.symbols {
        symbol_section(&mut s, c, sym);
    }
    let _ = writeln!(
        s,
        "<p><small>Written by mdrec {} at {}.</small></p></body></html>",
        env!("CARGO_PKG_VERSION"),
        esc(&format_time(crate::model::now_ms()))
    );
    s
}

fn symbol_section(s: &mut String, c: &Coverage, sym: &SymbolCoverage) {
    let _ = writeln!(
        s,
        "<section class=\"symbol\" data-symbol=\"{0}\"><h2>{0}</h2>\
         <p>Socket live {1:.1}% of the window ({2}).</p>",
        esc(&sym.symbol),
        sym.live_share * 100.0,
        crate::coverage::count(sym.sessions as u64, "session")
    );
    timeline(s, c, sym);
    let _ = writeln!(
        s,
        "<table class=\"streams\"><tr><th class=\"l\">stream</th><th>rows</th><th class=\"l\">first</th>\
         <th class=\"l\">last</th><th>filled</th><th>open</th><th>unrecoverable</th><th>rows recovered</th></tr>"
    );
    for st in &sym.streams {
        let opt = |t: Option<i64>| t.map(format_time).unwrap_or_else(|| "-".into());
        let _ = writeln!(
            s,
            "<tr><td class=\"l\">{}</td><td>{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&st.stream),
            st.rows,
            esc(&opt(st.first_ms)),
            esc(&opt(st.last_ms)),
            st.gaps_filled,
            st.gaps_open,
            st.gaps_unrecoverable,
            st.rows_recovered
        );
    }
    let _ = writeln!(s, "</table>");
    let unfilled: Vec<_> = sym
        .streams
        .iter()
        .flat_map(|st| st.gaps.iter().map(move |g| (st, g)))
        .filter(|(_, g)| g.status != GapStatus::Filled)
        .collect();
    if !unfilled.is_empty() {
        let _ = writeln!(s, "<p>Holes not filled:</p><ul class=\"holes\">");
        for (st, g) in unfilled {
            let _ = writeln!(
                s,
                "<li>{} {}: {} to {}{}</li>",
                esc(&st.stream),
                g.status.as_str(),
                esc(&format_time(g.start_ms)),
                esc(&g.end_ms.map(format_time).unwrap_or_else(|| "now".into())),
                g.detail
                    .as_deref()
                    .map(|d| format!(" ({})", esc(d)))
                    .unwrap_or_default()
            );
        }
        let _ = writeln!(s, "</ul>");
    }
    verdict_table(s, sym);
    stored_table(s, sym);
    let _ = writeln!(s, "</section>");
}

/// With an archive: per UTC day and table, where the rows are (database, archive or both).
fn stored_table(s: &mut String, sym: &SymbolCoverage) {
    if sym.stored.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "<table class=\"stored\"><tr><th class=\"l\">day (UTC)</th><th class=\"l\">table</th>\
         <th class=\"l\">stored in</th><th>rows</th><th>in the database</th><th>in the archive</th></tr>"
    );
    for d in &sym.stored {
        let _ = writeln!(
            s,
            "<tr><td class=\"l\">{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td>\
             <td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&d.date),
            esc(d.table),
            d.tier,
            d.rows(),
            d.database_rows,
            d.archive_rows
        );
    }
    let _ = writeln!(s, "</table>");
}

/// One bar per stream: live spans green over grey, holes on top (filled amber, others red).
fn timeline(s: &mut String, c: &Coverage, sym: &SymbolCoverage) {
    let span = (c.to_ms - c.from_ms).max(1) as f64;
    let x = |t: i64| X0 + ((t.clamp(c.from_ms, c.to_ms) - c.from_ms) as f64 / span) * WIDTH;
    let rows = sym.streams.len();
    let height = rows as f64 * (BAR + GAP) + 24.0;
    let _ = writeln!(
        s,
        "<svg class=\"timeline\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" \
         role=\"img\" aria-label=\"timeline of {}\">",
        X0 + WIDTH + 10.0,
        esc(&sym.symbol)
    );
    for (i, st) in sym.streams.iter().enumerate() {
        let y = i as f64 * (BAR + GAP);
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" font-size=\"12\">{}</text>",
            X0 - 8.0,
            y + BAR - 4.0,
            esc(&st.stream)
        );
        let _ = writeln!(
            s,
            "<rect class=\"down\" x=\"{X0}\" y=\"{y}\" width=\"{WIDTH}\" height=\"{BAR}\" fill=\"{DOWN}\"/>"
        );
        for &(a, b) in &sym.live_spans {
            rect(s, "live", x(a), x(b), y, LIVE, a, b, "socket live");
        }
        // red on top: a hole not filled is never hidden under a filled one
        let mut gaps: Vec<_> = st.gaps.iter().collect();
        gaps.sort_by_key(|g| (g.status != GapStatus::Filled, g.start_ms));
        for g in gaps {
            let end = g.end_ms.unwrap_or(c.to_ms);
            let (class, color) = match g.status {
                GapStatus::Filled => ("filled", FILLED),
                _ => ("hole", HOLE),
            };
            rect(
                s,
                class,
                x(g.start_ms),
                x(end),
                y,
                color,
                g.start_ms,
                end,
                g.status.as_str(),
            );
        }
    }
    // the axis: the window's ends and its middle
    let y = rows as f64 * (BAR + GAP) + 12.0;
    for (t, anchor) in [
        (c.from_ms, "start"),
        (c.from_ms + (c.to_ms - c.from_ms) / 2, "middle"),
        (c.to_ms, "end"),
    ] {
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{y}\" text-anchor=\"{anchor}\" font-size=\"11\">{}</text>",
            x(t),
            esc(&format_time(t))
        );
    }
    let _ = writeln!(s, "</svg>");
}

#[allow(clippy::too_many_arguments)]
fn rect(
    s: &mut String,
    class: &str,
    x0: f64,
    x1: f64,
    y: f64,
    fill: &str,
    a: i64,
    b: i64,
    what: &str,
) {
    // at least a pixel, so a short hole in a long window is still seen
    let w = (x1 - x0).max(1.0);
    let _ = writeln!(
        s,
        "<rect class=\"{class}\" x=\"{x0:.2}\" y=\"{y}\" width=\"{w:.2}\" height=\"{BAR}\" fill=\"{fill}\" \
         data-start=\"{a}\" data-end=\"{b}\"><title>{}: {} to {}</title></rect>",
        esc(what),
        esc(&format_time(a)),
        esc(&format_time(b))
    );
}

/// The verdicts, one row per period and one column per stream.
fn verdict_table(s: &mut String, sym: &SymbolCoverage) {
    if sym.periods.is_empty() {
        return;
    }
    let _ = write!(
        s,
        "<table class=\"verdicts\"><tr><th class=\"l\">period (UTC)</th>"
    );
    for st in &sym.streams {
        let _ = write!(s, "<th class=\"l\">{}</th>", esc(&st.stream));
    }
    let _ = writeln!(s, "</tr>");
    let mut starts: Vec<i64> = sym.periods.iter().map(|p| p.start_ms).collect();
    starts.dedup();
    for start in starts {
        let when = sym
            .periods
            .iter()
            .find(|p| p.start_ms == start)
            .map(|p| p.period.as_str())
            .unwrap_or_default();
        let _ = write!(s, "<tr><td class=\"l\">{}</td>", esc(when));
        for st in &sym.streams {
            let p = sym
                .periods
                .iter()
                .find(|p| p.start_ms == start && p.stream == st.stream);
            let (class, text) = match p {
                None => ("down", "-".to_string()),
                Some(p) => {
                    let class = match p.verdict {
                        "complete" => "complete",
                        "holes filled" => "filled",
                        "recorder down" | "partly down" => "down",
                        _ => "bad",
                    };
                    let text = if p.unrecoverable_ms > 0 {
                        format!("{} ({})", p.verdict, format_age(p.unrecoverable_ms))
                    } else {
                        p.verdict.to_string()
                    };
                    (class, text)
                }
            };
            let _ = write!(s, "<td class=\"l {class}\">{}</td>", esc(&text));
        }
        let _ = writeln!(s, "</tr>");
    }
    let _ = writeln!(s, "</table>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
