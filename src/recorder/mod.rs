//! The recorder: migrates the database, starts the writer and one worker per planned
//! connection, and on
//! shutdown stops intake, lets the writer drain the queue, and returns.

pub mod backfill;
pub mod fleet;
pub mod markets;
pub mod marks;
pub mod reload;
pub mod rest;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, redact_url};
use crate::runtime::stagger::Stagger;
use crate::store::writer;
use crate::store::{ErrorClass, Store};
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
        r = start_fleet(config, venue, shutdown.clone()) => r?,
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
    let s = start_fleet(config, venue, shutdown).await?;
    Ok((s.store, s.stats, s.tasks))
}

/// What [`start_fleet`] started.
struct Started {
    store: Arc<Store>,
    stats: Arc<RunStats>,
    tasks: TaskTracker,
    /// Asks the fleet to add and retire symbols (reloads).
    fleet: mpsc::UnboundedSender<fleet::Request>,
    /// The configuration running (under "all", its symbols are the venue's listing).
    config: Config,
    venue: Arc<dyn Venue>,
    rest: Arc<rest::RestClient>,
}

async fn start_fleet(
    config: Config,
    venue: Arc<dyn Venue>,
    shutdown: CancellationToken,
) -> anyhow::Result<Started> {
    // reqwest and tungstenite use rustls without a built-in provider choice: pick ring once
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = config;
    let tls = crate::runtime::tls::client_config(config.connection.ca_file.as_deref())?;
    // one client for every REST call: one request budget per venue
    let client = Arc::new(
        rest::RestClient::new(&config.venue.rest_url, &config.backfill, &tls)
            .map_err(|e| anyhow::anyhow!("REST client: {e}"))?,
    );
    if config.record.all {
        // what "all" means is the venue's listing: nothing to plan without it
        config.record.symbols = markets::list_all(&venue, &config, &client, &shutdown).await?;
    }
    let config = Arc::new(config);
    let url = &config.database.url;
    let store = Arc::new(
        Store::connect_lazy(url)
            .with_context(|| format!("opening database {}", redact_url(url)))?,
    );
    // a database that does not answer yet (a reboot where it comes up later, a remote one)
    // is no reason not to record: the spool takes the rows until it does
    let limit = Duration::from_secs(config.writer.write_timeout_s.max(1));
    // one connection first: a refusal is said at once in one line, and what only the
    // operator can fix (no such database, a wrong password, a directory it may not write)
    // stops start-up instead of spooling for ever
    let ready = match store.probe(limit).await {
        Ok(()) => tokio::time::timeout(limit, store.migrate())
            .await
            .unwrap_or_else(|_| {
                Err(crate::store::StoreError::Open {
                    message: format!("migrations did not finish within {} s", limit.as_secs()),
                    class: ErrorClass::Timeout,
                })
            }),
        Err(e) => Err(e),
    };
    let db_up = match ready {
        Ok(()) => true,
        Err(e) if matches!(e.class(), ErrorClass::Unavailable | ErrorClass::Timeout) => {
            tracing::warn!(database = %redact_url(url), error = %e, "database not answering at start-up: recording into the spool until it does");
            false
        }
        Err(e) => return Err(anyhow::Error::new(e)),
    };
    if db_up {
        tracing::info!(database = %redact_url(url), symbols = config.record.symbols.len(), "database ready");
    }

    let spool_dir = config.spool_dir();
    let spool = crate::store::spool::Spool::open(&spool_dir)
        .with_context(|| format!("opening the spool in {}", spool_dir.display()))?;
    spool
        .discard_unfinished()
        .with_context(|| format!("cleaning the spool in {}", spool_dir.display()))?;

    let exporter = if config.metrics.listen.is_empty() {
        None
    } else {
        Some(crate::ops::metrics::Exporter::new().context("setting up metrics")?)
    };
    let (tx, rx) =
        crate::store::queue::channel(config.writer.queue_capacity, config.writer.queue_bytes);
    let mut stats = RunStats {
        queue: Some(tx.gauge()),
        ..RunStats::default()
    };
    if let Some(e) = &exporter {
        let _ = stats.writer.histograms.set(e.write_histograms());
    }
    let tasks = TaskTracker::new();
    let workers = TaskTracker::new();
    let deadline = stats.deadline.clone();
    {
        let (deadline, shutdown, within) = (
            deadline.clone(),
            shutdown.clone(),
            Duration::from_secs(config.shutdown.timeout_s),
        );
        tokio::spawn(async move {
            shutdown.cancelled().await;
            deadline.start(within);
        });
    }
    let stagger = Arc::new(Stagger::new(config.connection.connect_rate_per_s));
    let (spool, marks, leftovers, startup) = if db_up {
        // rows an earlier run spooled count for where the streams end: replayed before the
        // marks are read. Where a file moves a stream's end, the run that wrote it may have
        // been killed before its own start-up hole went on record: that stretch is checked
        // again (below), from the last trade stored before the replay
        let before_replay = if spool.is_empty() {
            Vec::new()
        } else {
            let mut v = Vec::new();
            for sym in &config.record.symbols {
                let last = store
                    .last_trade(venue.name(), sym, None)
                    .await
                    .context("reading where the stored trades end")?;
                v.push((Arc::<str>::from(sym.as_str()), last));
            }
            v
        };
        let spool = writer::replay_spool(
            store.clone(),
            spool,
            config.writer.clone(),
            stats.writer.clone(),
            deadline.clone(),
        )
        .await;
        let orphans = store
            .orphan_sessions(venue.name(), &config.record.symbols)
            .await
            .context("reading sessions an earlier run left open")?;
        if !orphans.is_empty() {
            tracing::warn!(
                sessions = orphans.len(),
                "closing sessions an earlier run left open (it was killed or crashed) at its last stored row"
            );
        }
        {
            // the writer starts below: send from a task so a long list cannot fill the queue
            let tx = tx.clone();
            tokio::spawn(async move {
                for s in orphans {
                    if tx.send(crate::model::Event::Session(s)).await.is_err() {
                        return;
                    }
                }
            });
        }
        let (marks, mut leftovers) = stored_marks(&store, venue.as_ref(), &config)
            .await
            .context("reading where the stored streams end")?;
        for (symbol, before) in before_replay {
            let Some(anchor) = before else {
                continue; // nothing stored before: nothing to hold a hole against
            };
            let after = store
                .last_trade(venue.name(), &symbol, None)
                .await
                .context("reading where the stored trades end")?;
            if after == Some(anchor) {
                continue;
            }
            let until = store
                .next_trade(venue.name(), &symbol, anchor, venue.trade_ids())
                .await
                .context("reading where the stored trades end")?;
            tracing::info!(%symbol, after_id = anchor.trade_id, "spooled rows of an earlier run moved the stored trades on: checking the stretch before them");
            leftovers.push(marks::HoleCheck {
                symbol,
                reason: marks::Reason::Startup,
                trade: Some(anchor),
                trade_until: until,
                bars: Vec::new(),
                detected_at_ms: crate::model::now_ms(),
                row_start: None,
                recorded: false,
            });
        }
        (spool, marks, leftovers, None)
    } else {
        // where the stored streams end is read once the database answers (`after_start`);
        // until then the sockets record from nothing known
        let (ready, ready_rx) = tokio::sync::oneshot::channel();
        let gate = writer::Startup {
            first_seq: spool.next_seq(),
            ready,
        };
        let marks = config
            .record
            .symbols
            .iter()
            .map(|s| {
                (
                    Arc::from(s.as_str()),
                    Arc::new(marks::Marks::new(venue.trade_ids())),
                )
            })
            .collect();
        (Some(spool), marks, Vec::new(), Some((gate, ready_rx)))
    };
    let (gate, ready_rx) = match startup {
        Some((g, r)) => (Some(g), Some(r)),
        None => (None, None),
    };
    let marks: fleet::MarksMap = Arc::new(std::sync::RwLock::new(marks));
    stats.rest = Some(client.stats.clone());
    let stats = Arc::new(stats);
    // a symbol the venue does not list is a typo until the operator says otherwise (after the
    // database, whose errors come first); a venue that does not answer in time is no reason
    // not to record
    let listed = if config.record.all {
        None
    } else {
        let l = markets::listing(&venue, &client, LISTING_WAIT).await;
        if let Some(m) = &l {
            markets::check_listed(&config.record.symbols, m, config.record.allow_unlisted)?;
        }
        l
    };
    // bound before any worker starts: a listener that cannot be bound stops start-up with
    // nothing open (no session row left behind)
    if let Some(exporter) = exporter {
        let addr = crate::ops::metrics::serve(
            &config.metrics.listen,
            exporter,
            stats.clone(),
            config.clone(),
            store.clone(),
            shutdown.clone(),
            &tasks,
        )
        .await?;
        let _ = stats.metrics_addr.set(addr);
    }
    let backfill_tx = if config.backfill.enabled {
        let client = client.clone();
        let (btx, brx) = mpsc::unbounded_channel();
        if !leftovers.is_empty() {
            tracing::info!(
                holes = leftovers.len(),
                "checking holes a previous run left open"
            );
        }
        for c in leftovers {
            let _ = btx.send(c);
        }
        workers.spawn(backfill::run(
            backfill::Backfill {
                venue: venue.clone(),
                rest: client,
                config: config.clone(),
                tx: tx.clone(),
                marks: marks.clone(),
                stagger: stagger.clone(),
                stats: stats.backfill.clone(),
                shutdown: shutdown.clone(),
                store: store.clone(),
                empty_slots: Default::default(),
            },
            brx,
        ));
        Some(btx)
    } else {
        None
    };
    let (fleet_tx, fleet_rx) = mpsc::unbounded_channel();
    let reload_fleet = fleet_tx.clone();
    let reload_rest = client.clone();
    let shared = worker::Shared {
        venue: venue.clone(),
        config: config.clone(),
        tx: tx.clone(),
        shutdown: shutdown.clone(),
        stagger: stagger.clone(),
        deadline: deadline.clone(),
        backfill: backfill_tx.clone(),
        fleet: Some(fleet_tx.clone()),
        tls: tls.clone(),
    };
    let symbols: Vec<Arc<str>> = config
        .record
        .symbols
        .iter()
        .map(|s| Arc::from(s.as_str()))
        .collect();
    let plan = venue.plan(&symbols, &config.record);
    tracing::info!(
        symbols = symbols.len(),
        connections = plan.len(),
        "connections planned"
    );
    let mut fleet = fleet::Fleet::new(
        shared,
        stats.clone(),
        marks.clone(),
        store.clone(),
        workers.clone(),
    );
    fleet.start(plan, Default::default());
    workers.spawn(fleet.run(fleet_rx));
    {
        let (venue, config, tx, stop) =
            (venue.clone(), config.clone(), tx.clone(), shutdown.clone());
        // a listing still retrying at shutdown must not hold the writer's queue open
        workers.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = async {
                    if config.record.all {
                        markets::relist(&venue, &config, &client, &tx, &fleet_tx).await
                    } else {
                        drop(fleet_tx);
                        if let Some(m) = listed {
                            markets::store(m, &tx).await;
                        }
                    }
                } => {}
            }
        });
    }
    if let Some(ready) = ready_rx {
        tokio::spawn(after_start(
            store.clone(),
            venue.clone(),
            config.clone(),
            backfill_tx.clone(),
            ready,
        ));
    }
    // The writer ends when the last sender (held by the workers) is dropped, so it drains
    // everything the workers received before they stopped.
    drop(tx);
    workers.close();
    let writer_stats = stats.writer.clone();
    let writer_store = store.clone();
    let writer_cfg = config.writer.clone();
    tasks.spawn(async move {
        writer::run_from(
            writer_store,
            rx,
            writer_cfg,
            writer_stats,
            spool,
            deadline,
            gate,
        )
        .await;
        workers.wait().await;
    });
    Ok(Started {
        store,
        stats,
        tasks,
        fleet: reload_fleet,
        config: (*config).clone(),
        venue,
        rest: reload_rest,
    })
}

/// Where the configured streams end in the database, and the holes earlier runs left open.
async fn stored_marks(
    store: &Store,
    venue: &dyn Venue,
    config: &Config,
) -> Result<marks::Loaded, crate::store::StoreError> {
    marks::load(store, venue, &config.record.symbols, config.record.klines()).await
}

/// Once a database that did not answer at start-up does (the writer migrated it and replayed
/// earlier runs' spool): closes sessions killed runs left open, reads where the stored streams
/// end and hands backfill the hole from there to this run's data, and returns the rows that
/// must be committed before this run's spooled rows (those sessions, the holes' `open` rows).
async fn after_start(
    store: Arc<Store>,
    venue: Arc<dyn Venue>,
    config: Arc<Config>,
    backfill: Option<mpsc::UnboundedSender<marks::HoleCheck>>,
    ready: tokio::sync::oneshot::Receiver<tokio::sync::oneshot::Sender<Vec<crate::model::Event>>>,
) {
    // not cut short by shutdown: the writer asks at its last turn too
    let Ok(reply) = ready.await else {
        return;
    };
    let mut first = Vec::new();
    match store
        .orphan_sessions(venue.name(), &config.record.symbols)
        .await
    {
        Ok(o) => first.extend(o.into_iter().map(crate::model::Event::Session)),
        Err(e) => tracing::warn!(error = %e, "could not read sessions an earlier run left open"),
    }
    match stored_marks(&store, venue.as_ref(), &config).await {
        Ok((stored, leftovers)) => {
            if let Some(b) = &backfill {
                let mut symbols: Vec<_> = stored.into_iter().collect();
                symbols.sort_by(|a, b| a.0.cmp(&b.0));
                for (symbol, m) in symbols {
                    // the hole from the stored end to what this run recorded
                    let mut check = m.check_at_connect(&symbol);
                    let rows = check.open_rows(venue.name(), &config.record);
                    first.extend(rows.into_iter().map(crate::model::Event::Gap));
                    check.recorded = true;
                    let _ = b.send(check);
                }
                for c in leftovers {
                    let _ = b.send(c);
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "could not read where the stored streams end: the hole before this start is not checked")
        }
    }
    let _ = reply.send(first);
}
