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
    /// Then delete from the database the archived rows of periods that ended this many
    /// seconds ago (0: every archived row). Default: -c's [archive] db_keep_s when its url is
    /// the archive written to, else nothing is deleted.
    #[arg(long)]
    db_keep_s: Option<u64>,
    /// Exchange time a part covers (default: -c's [archive] period_s, else a day).
    #[arg(long)]
    period_s: Option<u64>,
    /// Archive a period this long after it ends (default: -c's [archive] settle_s, else an
    /// hour).
    #[arg(long)]
    settle_s: Option<u64>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(p) => Some(mdrec::venue::registry::load_config(p)?),
        None => None,
    };
    let mut archive = config
        .as_ref()
        .map(|c| c.archive.clone())
        .unwrap_or_default();
    archive.period_s = args.period_s.unwrap_or(archive.period_s);
    archive.settle_s = args.settle_s.unwrap_or(archive.settle_s);
    if archive.period_s < 60 || 86_400 % archive.period_s != 0 {
        return Err(UsageError::new(
            "--period-s",
            format!(
                "{} is not a divisor of a day (86400) of at least 60",
                archive.period_s
            ),
        )
        .into());
    }
    let Some(db) = args
        .db
        .or_else(|| config.as_ref().map(|c| c.database.url.clone()))
    else {
        return Err(UsageError::new("--db", "no database: give --db URL or -c CONFIG").into());
    };
    let to = args.to.unwrap_or(archive.url.clone());
    let keep = args
        .db_keep_s
        .or((!archive.url.is_empty() && archive.url == to).then_some(archive.db_keep_s));
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
    let report = archive_and_prune(&store, &target, settings, args.before, keep).await;
    store.close().await;
    let (r, pruned) = report?;
    println!(
        "archived {} parts, {} rows, {} bytes ({} late periods written again) to {}",
        r.parts, r.rows, r.bytes, r.rewritten, target.url
    );
    if let Some(p) = pruned {
        println!(
            "deleted {} archived rows of {} parts from the database",
            p.rows, p.parts
        );
    }
    Ok(())
}

async fn archive_and_prune(
    store: &mdrec::store::Store,
    target: &mdrec::archive::target::Target,
    settings: mdrec::archive::Settings,
    before: Option<i64>,
    keep_s: Option<u64>,
) -> anyhow::Result<(mdrec::archive::Report, Option<mdrec::archive::Pruned>)> {
    let r = mdrec::archive::run(store, target, settings, before.unwrap_or(i64::MAX)).await?;
    let pruned = match keep_s {
        Some(k) => {
            Some(mdrec::archive::prune(store, k as i64 * 1000, mdrec::model::now_ms()).await?)
        }
        None => None,
    };
    Ok((r, pruned))
}
