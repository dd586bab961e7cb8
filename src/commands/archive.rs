//! `mdrec archive`: the archive's round by hand (what the daemon does on its own with
//! `[archive] url`), then exit. Idempotent: a period archived already is not written again.

use anyhow::Context;
use mdrec::config::UsageError;

#[derive(clap::Args)]
pub struct Args {
    /// The database: sqlite://PATH or postgres://... (default: -c's, or MDREC_DATABASE_URL).
    #[arg(long, env = mdrec::config::DATABASE_URL_ENV, hide_env_values = true)]
    db: Option<String>,
    /// A recorder configuration: its database, and its [archive] url, period_s and settle_s.
    #[arg(short, long)]
    config: Option<std::path::PathBuf>,
    /// The archive: file:///a/directory or s3://bucket/prefix (default: -c's [archive] url).
    #[arg(long)]
    to: Option<String>,
    /// Archive only periods that end by this exchange time (2026-12-02, RFC 3339, epoch ms);
    /// never a period that ended less than settle_s ago.
    #[arg(long, value_parser = mdrec::coverage::parse_time)]
    before: Option<i64>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(p) => Some(mdrec::venue::registry::load_config(p)?),
        None => None,
    };
    let archive = config
        .as_ref()
        .map(|c| c.archive.clone())
        .unwrap_or_default();
    let Some(db) = args
        .db
        .or_else(|| config.as_ref().map(|c| c.database.url.clone()))
    else {
        return Err(UsageError::new("--db", "no database: give --db URL or -c CONFIG").into());
    };
    let to = args.to.unwrap_or(archive.url.clone());
    if to.is_empty() {
        return Err(UsageError::new("--to", "no archive: give --to URL or -c CONFIG").into());
    }
    let target = mdrec::archive::target::Target::open(&to)?;
    let shown = mdrec::config::redact_url(&db);
    let store = mdrec::store::Store::connect(&db)
        .await
        .with_context(|| format!("opening database {shown}"))?;
    store.migrate().await.context("migrating the database")?;
    let settings = mdrec::archive::Settings::from_config(&archive);
    let report =
        mdrec::archive::run(&store, &target, settings, args.before.unwrap_or(i64::MAX)).await;
    store.close().await;
    let r = report?;
    println!(
        "archived {} parts, {} rows, {} bytes ({} late periods written again) to {}",
        r.parts, r.rows, r.bytes, r.rewritten, target.url
    );
    Ok(())
}
