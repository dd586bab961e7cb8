//! `mdrec book`: a symbol's order book as it stood at a time.

use mdrec::config::UsageError;
use mdrec::coverage::{BookAt, format_time};
use mdrec::model::BookSnapshot;
use mdrec::store::Store;

use super::{Opened, Source, open_source};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: Source,
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
    let Opened { store, venue, .. } = open_source(&args.source).await?;
    let symbol = args.symbol.as_str();
    mdrec::export::check_symbol(&store, venue, symbol).await?;
    let step = match args.step {
        Some(s) => s,
        None => stored_step(&store, venue, symbol).await?,
    };
    let book = rebuilt(&store, venue, symbol, step, args.at).await?;
    let notes = mdrec::coverage::book_notes(&store, venue, &book, args.at).await?;
    store.close().await;
    if args.json {
        let mut v = mdrec::coverage::book_json(&book, args.depth);
        v["at_ms"] = notes.at_ms.into();
        v["age_ms"] = notes.age_ms.into();
        v["warnings"] = notes.warnings.clone().into();
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
    }
    Ok(())
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
