//! `mdrec book`: a symbol's order book as it stood at a time.

use mdrec::archive::target::Target;
use mdrec::archive::tiers::{DAY, Scope, book_days, merge};
use mdrec::config::UsageError;
use mdrec::coverage::{BookAt, BookNotes, TierDay, format_time};
use mdrec::model::BookSnapshot;
use mdrec::store::Store;

use super::{ArchiveArg, Opened, Source, open_source};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: Source,
    #[command(flatten)]
    archive: ArchiveArg,
    #[arg(long)]
    symbol: String,
    /// Exchange time: 2026-12-02, 2026-12-02 06:00, RFC 3339 (UTC unless an offset is given) or epoch ms (default: the newest book).
    #[arg(long, value_parser = mdrec::coverage::parse_time)]
    at: Option<i64>,
    /// Levels per side to print.
    #[arg(long, default_value_t = 10)]
    depth: usize,
    /// The book stream: v1's depth step (0 = full precision), the exchange's depth
    /// (10, 50, 150). Default: the one stored for the symbol.
    #[arg(long)]
    step: Option<i16>,
    /// JSON for scripts instead of the table.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let Opened {
        store,
        venue,
        config,
        ..
    } = open_source(&args.source).await?;
    let (book, notes, stored) = match args.archive.target(config.as_ref())? {
        Some(target) => {
            let r = from_both(&store, &target, venue, &args).await;
            store.close().await;
            r?
        }
        None => {
            let r = from_one(&store, venue, &args).await;
            store.close().await;
            let (book, notes) = r?;
            (book, notes, Vec::new())
        }
    };
    if args.json {
        let mut v = mdrec::coverage::book_json(&book, args.depth);
        v["at_ms"] = notes.at_ms.into();
        v["age_ms"] = notes.age_ms.into();
        v["warnings"] = notes.warnings.clone().into();
        if !stored.is_empty() {
            v["stored"] = serde_json::to_value(&stored)?;
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", mdrec::coverage::render_book(&book, args.depth));
        println!(
            "age at {}: {} since the book's last update",
            format_time(notes.at_ms),
            mdrec::coverage::format_age(notes.age_ms)
        );
        for w in &notes.warnings {
            println!("warning: {w}");
        }
        if !stored.is_empty() {
            println!("read (UTC days: database, archive or both):");
            print!("{}", mdrec::coverage::render_tiers(&stored));
        }
    }
    Ok(())
}

/// The book from one database.
async fn from_one(
    store: &Store,
    venue: &'static str,
    args: &Args,
) -> anyhow::Result<(BookSnapshot, BookNotes)> {
    let symbol = args.symbol.as_str();
    mdrec::export::check_symbol(store, venue, symbol).await?;
    let step = match args.step {
        Some(s) => s,
        None => stored_step(store, venue, symbol).await?,
    };
    let book = rebuilt(store, venue, symbol, step, args.at).await?;
    let notes = mdrec::coverage::book_notes(store, venue, &book, args.at).await?;
    Ok((book, notes))
}

/// The book from the database and the archive: the days up to `--at` (or the newest),
/// reaching further back until a full book is among them or no earlier day holds books.
async fn from_both(
    store: &Store,
    target: &Target,
    venue: &'static str,
    args: &Args,
) -> anyhow::Result<(BookSnapshot, BookNotes, Vec<TierDay>)> {
    let symbol = args.symbol.as_str();
    let Some((first_day, last_day)) = book_days(store, target, venue, symbol).await? else {
        mdrec::export::check_symbol(store, venue, symbol).await?;
        anyhow::bail!("no {symbol} book stored ({venue}) in the database or the archive");
    };
    // the newest book: from the day of the last full book on
    let end = args.at.map(|a| a.saturating_add(1));
    let mut span = DAY;
    loop {
        let from = end.map_or(last_day, |e| e.saturating_sub(span));
        let scope = Scope {
            venue,
            symbols: vec![args.symbol.clone()],
            from_ms: Some(from),
            to_ms: end,
            tables: vec!["book_snapshots", "book_deltas"],
        };
        let m = merge(store, target, &scope).await?;
        let r = match from_one(&m.store, venue, args).await {
            // an earlier day may hold the full book this one's changes start from
            Err(_) if end.is_some() && from > first_day => None,
            r => Some(r.map(|(b, n)| (b, n, m.tiers.clone()))),
        };
        m.close().await;
        if let Some(r) = r {
            return r;
        }
        span = span.saturating_mul(4);
    }
}

/// The book stream the data holds for the symbol (asked for when it holds several).
async fn stored_step(store: &Store, venue: &str, symbol: &str) -> anyhow::Result<i16> {
    match store.stored_depth_steps(venue, symbol).await?.as_slice() {
        [one] => Ok(*one as i16),
        [] => anyhow::bail!("no {symbol} book stored ({venue})"),
        many => {
            let list: Vec<String> = many.iter().map(|s| s.to_string()).collect();
            Err(UsageError::new(
                "--step",
                format!(
                    "{symbol} has several book streams (steps {}): name one",
                    list.join(", ")
                ),
            )
            .into())
        }
    }
}

/// The book at `at`, or why there is none: before the first full book (with the earliest
/// time), or across a recorded break.
async fn rebuilt(
    store: &Store,
    venue: &'static str,
    symbol: &str,
    step: i16,
    at: Option<i64>,
) -> anyhow::Result<BookSnapshot> {
    match mdrec::coverage::book_at(store, venue, symbol, step, at).await? {
        BookAt::Book(b) => Ok(b),
        BookAt::Missing => {
            let first = store.first_snapshot_time(venue, symbol, step).await?;
            store.close().await;
            match first {
                Some(f) => anyhow::bail!(
                    "no {symbol} book (step {step}) at or before that time: the earliest is at {} (--at {})",
                    format_time(f),
                    format_time(f)
                ),
                None => anyhow::bail!("no {symbol} book stored (step {step})"),
            }
        }
        BookAt::Broken {
            snapshot_ms,
            break_from_ms,
            ..
        } => anyhow::bail!(
            "the {symbol} book (step {step}) lost updates after {} (recorded in gaps), \
             after its last full book at {}: it cannot be rebuilt at that time; the \
             next full book after the break makes it whole again",
            format_time(break_from_ms),
            format_time(snapshot_ms)
        ),
    }
}
