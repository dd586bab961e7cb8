//! One file per command (or per family of commands), each with its arguments and the one
//! function that carries it out; what several share: where a reading command reads from,
//! and the signals that stop a run.

pub mod archive;
pub mod book;
pub mod coverage;
pub mod docs;
pub mod export;
pub mod record;
pub mod simulate;

use std::path::PathBuf;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use mdrec::config::{Config, UsageError};

/// Where the recorder's configuration is read from unless `-c` says otherwise.
pub const DEFAULT_CONFIG: &str = "/etc/mdrec/mdrec.toml";

/// Where the reading commands read: a database alone, or a recorder's configuration.
#[derive(clap::Args)]
pub struct Source {
    /// The database: sqlite://PATH or postgres://... (read only; nothing is created).
    #[arg(long, env = mdrec::config::DATABASE_URL_ENV, hide_env_values = true)]
    pub db: Option<String>,
    /// A recorder configuration to take the database (and venue) from, when --db and
    /// MDREC_DATABASE_URL are not given (default /etc/mdrec/mdrec.toml, if it exists).
    #[arg(short, long)]
    pub config: Option<PathBuf>,
    /// The venue whose rows to read, when the database holds several.
    #[arg(long)]
    pub venue: Option<String>,
}

/// What a reading command reads from.
pub struct Opened {
    pub store: mdrec::store::Store,
    /// The venue its rows are of.
    pub venue: &'static str,
    /// The recorder configuration, when one was used.
    pub config: Option<Config>,
    /// The database's URL, password masked (for what a command writes about its source).
    pub url: String,
}

/// The database a reading command reads (opened for reading, never created), the venue its
/// rows are of, and the configuration when one was used.
pub async fn open_source(src: &Source) -> anyhow::Result<Opened> {
    let config = match (&src.config, &src.db) {
        (Some(p), _) => Some(mdrec::venue::registry::load_config(p)?),
        (None, None) if std::path::Path::new(DEFAULT_CONFIG).exists() => Some(
            mdrec::venue::registry::load_config(std::path::Path::new(DEFAULT_CONFIG))?,
        ),
        _ => None,
    };
    let Some(url) = src
        .db
        .clone()
        .or_else(|| config.as_ref().map(|c| c.database.url.clone()))
    else {
        return Err(UsageError::new(
            "--db",
            "no database: give --db URL, set MDREC_DATABASE_URL, or -c CONFIG",
        )
        .into());
    };
    let store = mdrec::store::Store::open_read(&url)
        .await
        .with_context(|| format!("opening database {}", mdrec::config::redact_url(&url)))?;
    let stored = store.venues().await.context("reading the venues stored")?;
    let named = src
        .venue
        .clone()
        .or_else(|| config.as_ref().map(|c| c.venue.kind.clone()));
    let venue = match named {
        Some(v) => match mdrec::venue::registry::static_name(&v) {
            Some(n) => n,
            None => {
                return Err(UsageError::new(
                    "--venue",
                    format!(
                        "unknown venue {v:?}; one of {}",
                        mdrec::venue::registry::kinds()
                    ),
                )
                .into());
            }
        },
        None => match stored.as_slice() {
            [one] => mdrec::venue::registry::static_name(one)
                .with_context(|| format!("the database holds rows of an unknown venue {one:?}"))?,
            [] => anyhow::bail!("the database holds no recording yet"),
            many => {
                return Err(UsageError::new(
                    "--venue",
                    format!(
                        "the database holds several venues ({}): name one",
                        many.join(", ")
                    ),
                )
                .into());
            }
        },
    };
    Ok(Opened {
        store,
        venue,
        config,
        url: mdrec::config::redact_url(&url),
    })
}

/// `--archive URL` of a reading command: read the archive's rows too.
#[derive(clap::Args)]
pub struct ArchiveArg {
    /// Also read this archive (file:///a/directory or s3://bucket/prefix), merged with the
    /// database (each row once); default: -c's [archive] url. "" reads the database only.
    #[arg(long)]
    pub archive: Option<String>,
}

impl ArchiveArg {
    /// The archive to read beside the database, if any.
    pub fn target(
        &self,
        config: Option<&Config>,
    ) -> anyhow::Result<Option<mdrec::archive::target::Target>> {
        let url = match &self.archive {
            Some(u) => u.clone(),
            None => config.map(|c| c.archive.url.clone()).unwrap_or_default(),
        };
        if url.is_empty() {
            return Ok(None);
        }
        // a reader never creates the directory it was told to read
        if let Some(dir) = url.strip_prefix("file://")
            && !std::path::Path::new(dir).is_dir()
        {
            return Err(UsageError::new("--archive", format!("{dir} is not a directory")).into());
        }
        mdrec::archive::target::Target::open(&url)
            .map(Some)
            .map_err(|e| UsageError::new("--archive", format!("{e:#}")).into())
    }
}

/// What a reading command reads: the database, or the database merged with the archive.
pub enum Reader {
    Db(mdrec::store::Store),
    Merged(mdrec::archive::tiers::Merged),
}

impl Reader {
    /// The database alone, or with `target` its rows and the archive's over `scope` merged
    /// (the database is closed then: the merged view is read instead).
    pub async fn open(
        store: mdrec::store::Store,
        target: Option<&mdrec::archive::target::Target>,
        scope: &mdrec::archive::tiers::Scope,
    ) -> anyhow::Result<Reader> {
        let Some(t) = target else {
            return Ok(Reader::Db(store));
        };
        let m = mdrec::archive::tiers::merge(&store, t, scope).await;
        store.close().await;
        Ok(Reader::Merged(m?))
    }

    pub fn store(&self) -> &mdrec::store::Store {
        match self {
            Reader::Db(s) => s,
            Reader::Merged(m) => &m.store,
        }
    }

    /// Per symbol, table and UTC day, where the rows came from (none without an archive).
    pub fn tiers(&self) -> &[mdrec::coverage::TierDay] {
        match self {
            Reader::Db(_) => &[],
            Reader::Merged(m) => &m.tiers,
        }
    }

    pub async fn close(self) {
        match self {
            Reader::Db(s) => s.close().await,
            Reader::Merged(m) => m.close().await,
        }
    }
}

/// Stop tokens: the first SIGTERM or SIGINT cancels `stop` (an orderly shutdown), a second
/// signal cancels `hurry` (a fast stop that still spools what is unwritten). SIGHUP asks
/// `reload` when given (the recorder reads its file again), else it stops like SIGTERM.
pub fn shutdown_on_signals(
    reload: Option<tokio::sync::mpsc::UnboundedSender<()>>,
) -> anyhow::Result<(CancellationToken, CancellationToken)> {
    use tokio::signal::unix::{SignalKind, signal};
    let (stop, hurry) = (CancellationToken::new(), CancellationToken::new());
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    let (s, h) = (stop.clone(), hurry.clone());
    tokio::spawn(async move {
        let mut n = 0;
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
                _ = hup.recv() => "SIGHUP",
            };
            if name == "SIGHUP"
                && let Some(r) = &reload
            {
                if s.is_cancelled() {
                    tracing::info!(signal = name, "stopping: no reload");
                } else {
                    tracing::info!(signal = name, "reloading the configuration");
                    let _ = r.send(());
                }
                continue;
            }
            if n == 0 {
                tracing::info!(signal = name, "stopping (a second signal stops at once)");
                s.cancel();
            } else {
                tracing::warn!(signal = name, "second signal: fast stop");
                h.cancel();
            }
            n += 1;
        }
    });
    Ok((stop, hurry))
}
