//! `mdrec export`: rows of one kind over a window, to CSV or Parquet.

use std::path::PathBuf;

use mdrec::config::{Config, UsageError};
use mdrec::export::{Format, Kind, Layout, Request};
use mdrec::store::Store;

use super::{ArchiveArg, Opened, Reader, Source, open_source};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: Source,
    #[command(flatten)]
    archive: ArchiveArg,
    /// book: the stored full books, or with --every the book rebuilt on a time grid;
    /// book-deltas: the stored changes.
    #[arg(long, value_enum)]
    kind: Kind,
    /// One or more symbols (repeat the flag or separate with commas); several are written in
    /// the hive layout.
    #[arg(long, required = true, value_delimiter = ',')]
    symbol: Vec<String>,
    /// Bar interval (klines only); default: the first of `[record] klines` with -c, else the
    /// one stored for the symbol.
    #[arg(long)]
    interval: Option<String>,
    /// Start (inclusive), exchange time: 2026-12-02, 2026-12-02 06:00, RFC 3339 (UTC unless an offset is given) or epoch ms (default: the beginning).
    #[arg(long, value_parser = mdrec::coverage::parse_time)]
    from: Option<i64>,
    /// End (exclusive), exchange time: 2026-12-02, 2026-12-02 06:00, RFC 3339 (UTC unless an offset is given) or epoch ms (default: everything).
    #[arg(long, value_parser = mdrec::coverage::parse_time)]
    to: Option<i64>,
    #[arg(long, value_enum)]
    format: Format,
    /// file: one file, --out; hive: --out is a directory holding
    /// symbol=S/date=YYYY-MM-DD/part.<format>, one file per symbol and UTC day.
    /// Default: file for one symbol, hive for several.
    #[arg(long, value_enum)]
    layout: Option<Layout>,
    #[arg(long)]
    out: PathBuf,
    /// Replace files that exist.
    #[arg(long)]
    force: bool,
    /// Books: rebuild the book at every multiple of this (500ms, 1s, 1m, ...) from the
    /// stored full books and changes.
    #[arg(long, value_parser = mdrec::export::parse_every)]
    every: Option<i64>,
    /// With --every: levels per side.
    #[arg(long, default_value_t = 10)]
    depth: usize,
    /// Books and changes: the book stream (v1's depth step, the exchange's depth).
    /// Default: every stored one (the grid: the only one).
    #[arg(long)]
    step: Option<i16>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let Opened {
        store,
        venue,
        config,
        url,
    } = open_source(&args.source).await?;
    let target = args.archive.target(config.as_ref())?;
    let source = match &target {
        Some(t) => format!("{url} and the archive {}", t.url),
        None => url,
    };
    let reader = Reader::open(store, target.as_ref(), &scope(venue, &args)).await?;
    let written = write(reader.store(), venue, config.as_ref(), args, source).await;
    if !reader.tiers().is_empty() {
        eprintln!("read (UTC days: database, archive or both):");
        eprint!("{}", mdrec::coverage::render_tiers(reader.tiers()));
    }
    reader.close().await;
    written
}

/// What of the archive an export reads: its kind's tables over its window (a book grid
/// starts from the last full book before it: up to a day earlier).
fn scope(venue: &'static str, args: &Args) -> mdrec::archive::tiers::Scope {
    let tables = match args.kind {
        Kind::Trades => vec!["trades"],
        Kind::Klines => vec!["klines"],
        Kind::Book if args.every.is_some() => vec!["book_snapshots", "book_deltas"],
        Kind::Book => vec!["book_snapshots"],
        Kind::BookDeltas => vec!["book_deltas"],
        Kind::Tickers => vec!["tickers"],
        Kind::Gaps => vec!["gaps"],
    };
    let early = if args.every.is_some() { 86_400_000 } else { 0 };
    mdrec::archive::tiers::Scope {
        venue,
        symbols: args.symbol.clone(),
        from_ms: args.from.map(|f| f.saturating_sub(early)),
        to_ms: args.to,
        tables,
    }
}

async fn write(
    store: &Store,
    venue: &'static str,
    config: Option<&Config>,
    args: Args,
    url: String,
) -> anyhow::Result<()> {
    let interval = match args.interval {
        Some(i) => i,
        None if args.kind != Kind::Klines => String::new(),
        None => default_interval(store, venue, config, &args.symbol[0]).await?,
    };
    let layout = args.layout.unwrap_or(if args.symbol.len() > 1 {
        Layout::Hive
    } else {
        Layout::File
    });
    let req = Request {
        kind: args.kind,
        symbols: args.symbol,
        interval,
        from_ms: args.from.unwrap_or(i64::MIN),
        to_ms: args.to.unwrap_or(i64::MAX),
        format: args.format,
        layout,
        out: args.out,
        force: args.force,
        step: args.step,
        every_ms: args.every,
        depth: args.depth,
        source: url,
    };
    // refused before anything is counted or written
    let parts = mdrec::export::plan(store, venue, &req).await?;
    let total = mdrec::export::count(store, venue, &req, &parts).await?;
    // drawn only on a terminal
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} rows {per_sec} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let written =
        mdrec::export::export_parts(store, venue, &req, &parts, |n| bar.set_position(n)).await;
    bar.finish_and_clear();
    let written = written?;
    for w in &written {
        eprintln!("wrote {} rows to {}", w.rows, w.path.display());
    }
    if written.is_empty() {
        eprintln!("no rows in the window: nothing written");
    }
    Ok(())
}

/// The bar interval when `--interval` is left out: the configuration's first, else the one
/// the data holds for the symbol.
async fn default_interval(
    store: &Store,
    venue: &str,
    config: Option<&Config>,
    symbol: &str,
) -> anyhow::Result<String> {
    if let Some(i) = config.and_then(|c| c.record.klines().first().cloned()) {
        return Ok(i);
    }
    match store.stored_intervals(venue, symbol).await?.as_slice() {
        [one] => Ok(one.clone()),
        [] => Ok(String::new()),
        many => Err(UsageError::new(
            "--interval",
            format!(
                "{symbol} has bars of several intervals ({}): name one",
                many.join(", ")
            ),
        )
        .into()),
    }
}
