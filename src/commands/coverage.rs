//! `mdrec coverage`: per symbol and stream, what was recorded and every hole, as text, JSON
//! or an HTML page.

use std::path::PathBuf;

use clap::ValueEnum;

use mdrec::archive::tiers::Scope;
use mdrec::config::UsageError;

use super::{ArchiveArg, Opened, Reader, Source, open_source};

#[derive(Clone, Copy, ValueEnum)]
enum ByArg {
    Hour,
    Day,
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: Source,
    #[command(flatten)]
    archive: ArchiveArg,
    /// Only this symbol (repeat for several); default: every symbol in the database.
    #[arg(long)]
    symbol: Vec<String>,
    /// Window start: 2026-12-02, 2026-12-02 06:00, RFC 3339 (UTC unless an offset is given) or epoch ms (default: the first session).
    #[arg(long, value_parser = mdrec::coverage::parse_time)]
    from: Option<i64>,
    /// Window end: 2026-12-02, 2026-12-02 06:00, RFC 3339 (UTC unless an offset is given) or epoch ms (default: now).
    #[arg(long, value_parser = mdrec::coverage::parse_time)]
    to: Option<i64>,
    /// JSON for scripts instead of the table.
    #[arg(long)]
    json: bool,
    /// One verdict per stream and UTC hour or day: complete, holes filled, holes open,
    /// unrecoverable (with the minutes), partly down, recorder down.
    #[arg(long, value_enum)]
    by: Option<ByArg>,
    /// Also write a one-page HTML report here: a timeline per symbol (live green, filled
    /// holes amber, open or unrecoverable holes red) and the verdicts (per --by, else per
    /// hour, or per day over more than two days).
    #[arg(long)]
    html: Option<PathBuf>,
    /// Replace the --html file if it exists.
    #[arg(long)]
    force: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(h) = args.html.as_ref().filter(|h| h.is_dir()) {
        return Err(UsageError::new(
            "--html",
            format!("{} is a directory: name the file to write", h.display()),
        )
        .into());
    }
    if let Some(h) = args.html.as_ref().filter(|h| h.exists() && !args.force) {
        return Err(UsageError::new(
            "--html",
            format!("{} exists: pass --force to replace it", h.display()),
        )
        .into());
    }
    let Opened {
        store,
        venue,
        config,
        ..
    } = open_source(&args.source).await?;
    if let (Some(f), Some(t)) = (args.from, args.to)
        && f >= t
    {
        return Err(
            UsageError::new("--from", "must be before --to (the window is [from, to))").into(),
        );
    }
    let scope = Scope {
        venue,
        symbols: args.symbol.clone(),
        from_ms: args.from,
        to_ms: args.to,
        tables: Vec::new(),
    };
    let target = args.archive.target(config.as_ref())?;
    let reader = Reader::open(store, target.as_ref(), &scope).await?;
    let db = reader.store();
    for s in &args.symbol {
        mdrec::export::check_symbol(db, venue, s).await?;
    }
    let by = args.by.map(|b| match b {
        ByArg::Hour => 3_600_000,
        ByArg::Day => 86_400_000,
    });
    let mut c = mdrec::coverage::compute(db, venue, &args.symbol, args.from, args.to, by).await?;
    for sym in &mut c.symbols {
        sym.stored = reader
            .tiers()
            .iter()
            .filter(|d| d.symbol == sym.symbol)
            .cloned()
            .collect();
    }
    if let Some(path) = args.html {
        // the page always has verdicts: per hour, or per day over a long window
        let mut page = c.clone();
        if by.is_none() {
            let long = c.to_ms - c.from_ms > 2 * 86_400_000;
            page.set_periods(if long { 86_400_000 } else { 3_600_000 });
        }
        mdrec::report::write(&path, &page)?;
        eprintln!("wrote the coverage report to {}", path.display());
    }
    reader.close().await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&c)?);
    } else {
        print!("{}", mdrec::coverage::render(&c));
    }
    Ok(())
}
