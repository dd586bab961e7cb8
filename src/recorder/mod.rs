//! The recorder: migrates the database, starts the writer and one worker per planned
//! connection, and on
//! shutdown stops intake, lets the writer drain the queue, and returns.

pub mod backfill;
pub mod fleet;
pub mod markets;
pub mod marks;
pub mod reload;
pub mod rest;
mod startup;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::startup::Started;
use crate::config::Config;
use crate::store::Store;
use crate::venue::Venue;

pub use crate::stats::RunStats;

pub use markets::LISTING_WAIT;

/// Runs until `shutdown` is cancelled, then drains and returns. Errors only at start-up.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<Arc<RunStats>> {
    let venue = crate::venue::registry::configured(&config.venue)?;
    run_with(config, venue, shutdown).await
}

/// [`run`] with a given venue implementation (tests wrap the real one to inject faults).
pub async fn run_with(
    config: Config,
    venue: Arc<dyn Venue>,
    shutdown: CancellationToken,
) -> anyhow::Result<Arc<RunStats>> {
    run_until(config, venue, shutdown, CancellationToken::new(), None).await
}

/// [`run_with`], plus `hurry`: cancelled after shutdown began (a second SIGINT), it brings
/// the shutdown deadline forward to now: close handshakes end, unwritten rows are spooled.
/// Shutdown is honoured in every phase: a signal while the database connects, migrates or
/// replays the spool stops the start-up there. With `reload`, each request reads the file
/// again ([`reload`]).
pub async fn run_until(
    config: Config,
    venue: Arc<dyn Venue>,
    shutdown: CancellationToken,
    hurry: CancellationToken,
    reload: Option<reload::Reload>,
) -> anyhow::Result<Arc<RunStats>> {
    let started = tokio::select! {
        r = startup::start(config, venue, shutdown.clone()) => r?,
        _ = shutdown.cancelled() => {
            tracing::info!("shutdown requested during start-up; nothing was recording yet");
            return Ok(Arc::new(RunStats::default()));
        }
    };
    let Started {
        store,
        stats,
        tasks,
        fleet,
        config,
        venue,
        rest,
    } = started;
    {
        let (stats, hurry) = (stats.clone(), hurry.clone());
        tokio::spawn(async move {
            hurry.cancelled().await;
            tracing::warn!("fast stop: closing sockets now, unwritten rows go to the spool");
            stats.deadline.hurry();
        });
    }
    crate::ops::systemd::ready(stats.workers.len());
    tokio::spawn(crate::ops::systemd::watchdog(
        stats.clone(),
        shutdown.clone(),
    ));
    match reload {
        Some(mut r) => {
            let mut reloader = reload::Reloader {
                path: r.path,
                venue,
                rest,
                running: config,
                fleet,
                stats: stats.clone(),
            };
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    req = r.requests.recv() => match req {
                        Some(()) => {
                            reloader.reload().await;
                        }
                        None => {
                            shutdown.cancelled().await;
                            break;
                        }
                    },
                }
            }
        }
        None => {
            drop((fleet, venue, rest));
            shutdown.cancelled().await;
        }
    }
    crate::ops::systemd::stopping();
    tracing::info!("shutdown: stopping intake and draining the queue");
    tasks.close();
    tasks.wait().await;
    // a connection still stuck in the database must not hold the exit past the deadline
    if tokio::time::timeout(Duration::from_millis(500), store.close())
        .await
        .is_err()
    {
        tracing::warn!("database connections still busy at exit");
    }
    tracing::info!("shutdown complete");
    Ok(stats)
}

/// Starts everything; the returned tracker finishes once shutdown has drained the writer.
pub async fn start(
    config: Config,
    venue: Arc<dyn Venue>,
    shutdown: CancellationToken,
) -> anyhow::Result<(Arc<Store>, Arc<RunStats>, TaskTracker)> {
    let s = startup::start(config, venue, shutdown).await?;
    Ok((s.store, s.stats, s.tasks))
}
