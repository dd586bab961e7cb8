//! The commands that take a recorder's configuration: `run`, `migrate`, `check-config`.

use std::path::PathBuf;

use anyhow::Context;

use mdrec::config::Config;

use super::shutdown_on_signals;

#[derive(clap::Args)]
pub struct ConfigArg {
    #[arg(short, long, default_value = super::DEFAULT_CONFIG)]
    pub config: PathBuf,
}

#[derive(clap::Args)]
pub struct CheckArgs {
    #[arg(short, long, default_value = super::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Do not ask the venue for its listing (the symbols are not checked).
    #[arg(long)]
    offline: bool,
}

/// Records until SIGTERM or SIGINT; SIGHUP reads the file at `path` again.
pub async fn run(path: PathBuf, config: Config) -> anyhow::Result<()> {
    let (reload, requests) = tokio::sync::mpsc::unbounded_channel();
    let (stop, hurry) = shutdown_on_signals(Some(reload))?;
    let venue = mdrec::venue::registry::configured(&config.venue)?;
    let reload = mdrec::recorder::reload::Reload { path, requests };
    mdrec::recorder::run_until(config, venue, stop, hurry, Some(reload)).await?;
    Ok(())
}

pub async fn migrate(config: Config) -> anyhow::Result<()> {
    let store = mdrec::store::Store::connect(&config.database.url).await?;
    store.migrate().await?;
    store.close().await;
    println!(
        "migrations applied to {}",
        mdrec::config::redact_url(&config.database.url)
    );
    Ok(())
}

/// Prints the configuration resolved, after checking what start-up checks: the files it
/// names and, unless offline, the symbols against the venue's listing.
pub async fn check_config(args: CheckArgs, config: Config) -> anyhow::Result<()> {
    // the files the config names are read as the recorder will read them
    let tls = mdrec::runtime::tls::client_config(config.connection.ca_file.as_deref())?;
    let listed = if config.record.all {
        "# symbols: \"all\", from the venue's listing at start-up".to_string()
    } else if args.offline {
        "# symbols: not checked (--offline)".to_string()
    } else {
        check_listed(&config, &tls).await?
    };
    let text = toml::to_string(&config).context("printing the configuration")?;
    println!("# {}: valid", args.config.display());
    println!("{listed}");
    if std::env::var_os(mdrec::config::DATABASE_URL_ENV).is_some() {
        println!(
            "# [database] url comes from {}",
            mdrec::config::DATABASE_URL_ENV
        );
    }
    let spool = config.spool_dir();
    let missing = |d: &std::path::Path| {
        !d.exists()
            && d.parent()
                .is_some_and(|p| !p.as_os_str().is_empty() && !p.exists())
    };
    if missing(&spool) {
        println!(
            "# spool directory: {} (not there, nor its parent: a filesystem not mounted yet? \
             it is not created until its parent is there)",
            spool.display()
        );
    } else {
        let abs = std::path::absolute(&spool).unwrap_or_else(|_| spool.clone());
        let relative = if spool.is_relative() {
            " (relative to the working directory; [writer] spool_dir fixes it)"
        } else {
            ""
        };
        println!("# spool directory: {}{relative}", abs.display());
        let database = mdrec::config::database_identity(&config.database.url);
        let opened = mdrec::store::spool::Spool::open(&spool)
            .and_then(|s| Ok((s.pending_for_other(&database)?, s.files())));
        match opened {
            Ok((Some(owner), pending)) => println!(
                "# the spool holds {pending} batches for {owner}, not this database: run refuses \
                 to start until database.url names that database again or spool_dir changes"
            ),
            _ => println!("# spooled batches go to {database} only"),
        }
    }
    print!("{text}");
    Ok(())
}

/// The symbols, as start-up checks them, when the venue answers; the line saying so.
async fn check_listed(
    config: &Config,
    tls: &std::sync::Arc<rustls::ClientConfig>,
) -> anyhow::Result<String> {
    let venue = mdrec::venue::registry::configured(&config.venue)?;
    let rest =
        mdrec::recorder::rest::RestClient::new(&config.venue.rest_url, &config.backfill, tls)
            .map_err(|e| anyhow::anyhow!("REST client: {e}"))?;
    let wait = mdrec::recorder::LISTING_WAIT;
    Ok(
        match mdrec::recorder::markets::listing(&venue, &rest, wait).await {
            Some(m) => {
                mdrec::recorder::markets::check_listed(
                    &config.record.symbols,
                    &m,
                    config.record.allow_unlisted,
                )?;
                format!(
                    "# symbols: the venue lists {} markets, these among them",
                    m.len()
                )
            }
            None => "# symbols: not checked (the venue's listing did not answer)".into(),
        },
    )
}
