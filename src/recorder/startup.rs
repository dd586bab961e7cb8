//! Start-up in named steps: the database (probed, migrated), the spool, where the stored
//! streams end (read now, or once a database that is down answers), backfill, the
//! connections, the listing task and the writer.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::markets::LISTING_WAIT;
use super::{backfill, fleet, markets, marks, rest, worker};
use crate::config::{Config, redact_url};
use crate::model::Event;
use crate::model::Market;
use crate::runtime::deadline::Deadline;
use crate::runtime::stagger::Stagger;
use crate::stats::RunStats;
use crate::store::queue::EventTx as Sender;
use crate::store::spool::Spool;
use crate::store::writer;
use crate::store::{ErrorClass, Store, StoreError};
use crate::venue::Venue;

/// What [`start`] started.
pub(super) struct Started {
    pub store: Arc<Store>,
    pub stats: Arc<RunStats>,
    pub tasks: TaskTracker,
    /// Asks the fleet to add and retire symbols (reloads).
    pub fleet: mpsc::UnboundedSender<fleet::Request>,
    /// The configuration running (under "all", its symbols are the venue's listing).
    pub config: Config,
    pub venue: Arc<dyn Venue>,
    pub rest: Arc<rest::RestClient>,
}

/// The ask a database that did not answer at start-up makes once it does: the rows that
/// must precede this run's.
type ReadyRx = oneshot::Receiver<oneshot::Sender<Vec<Event>>>;

/// Where recording resumes from: the spool left to replay, the symbols' marks, holes to
/// check, and (database down) the writer's start-up gate with the ask it sends.
struct Resumed {
    spool: Option<Spool>,
    marks: fleet::MarksMap,
    leftovers: Vec<marks::HoleCheck>,
    gate: Option<writer::Startup>,
    ready: Option<ReadyRx>,
}

pub(super) async fn start(
    config: Config,
    venue: Arc<dyn Venue>,
    shutdown: CancellationToken,
) -> anyhow::Result<Started> {
    // reqwest and tungstenite use rustls without a built-in provider choice: pick ring once
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = crate::runtime::tls::client_config(config.connection.ca_file.as_deref())?;
    // one client for every REST call: one request budget per venue
    let client = Arc::new(
        rest::RestClient::new(&config.venue.rest_url, &config.backfill, &tls)
            .map_err(|e| anyhow::anyhow!("REST client: {e}"))?,
    );
    let config = Arc::new(symbols_listed(config, &venue, &client, &shutdown).await?);
    // what can stop start-up is checked before the database is created or migrated: the
    // metrics port, then the symbols against the venue's listing
    let listener = match config.metrics.listen.as_str() {
        "" => None,
        listen => Some(crate::ops::metrics::bind(listen).await?),
    };
    let (store, db_up, listed) = database_and_listing(&config, &venue, &client).await?;
    let spool = open_spool(&config)?;
    let (tx, rx) =
        crate::store::queue::channel(config.writer.queue_capacity, config.writer.queue_bytes);
    let (mut stats, exporter) = run_stats(&config, &tx)?;
    let (tasks, workers) = (TaskTracker::new(), TaskTracker::new());
    let deadline = stats.deadline.clone();
    start_deadline_on(&shutdown, &deadline, &config);
    let stagger = Arc::new(Stagger::new(config.connection.connect_rate_per_s));
    let resumed = if db_up {
        resume(&store, &venue, &config, spool, &tx, &stats, &deadline).await?
    } else {
        resume_later(&venue, &config, spool)
    };
    stats.rest = Some(client.stats.clone());
    let stats = Arc::new(stats);
    serve_metrics(
        listener, exporter, &stats, &config, &store, &shutdown, &tasks,
    )
    .await?;
    let backfill_tx = config.backfill.enabled.then(|| {
        let b = backfill::Backfill {
            venue: venue.clone(),
            rest: client.clone(),
            config: config.clone(),
            tx: tx.clone(),
            marks: resumed.marks.clone(),
            stagger: stagger.clone(),
            stats: stats.backfill.clone(),
            shutdown: shutdown.clone(),
            store: store.clone(),
            empty_slots: Default::default(),
        };
        start_backfill(b, resumed.leftovers, &workers)
    });
    let (fleet_tx, fleet_rx) = mpsc::unbounded_channel();
    let shared = worker::Shared {
        venue: venue.clone(),
        config: config.clone(),
        tx: tx.clone(),
        shutdown: shutdown.clone(),
        stagger,
        deadline: deadline.clone(),
        backfill: backfill_tx.clone(),
        fleet: Some(fleet_tx.clone()),
        tls,
    };
    start_connections(shared, &stats, &resumed.marks, &store, &workers, fleet_rx);
    start_archive(&config, &store, &stats, &shutdown, &tasks)?;
    workers.spawn(keep_listing(
        venue.clone(),
        config.clone(),
        client.clone(),
        tx.clone(),
        fleet_tx.clone(),
        listed,
        shutdown,
    ));
    if let Some(ready) = resumed.ready {
        tokio::spawn(after_start(
            store.clone(),
            venue.clone(),
            config.clone(),
            backfill_tx,
            ready,
        ));
    }
    // The writer ends when the last sender (held by the workers) is dropped, so it drains
    // everything the workers received before they stopped.
    drop(tx);
    workers.close();
    let writer = writer::run_from(
        store.clone(),
        rx,
        config.writer.clone(),
        stats.writer.clone(),
        resumed.spool,
        deadline,
        resumed.gate,
    );
    tasks.spawn(async move {
        writer.await;
        workers.wait().await;
    });
    Ok(Started {
        store,
        stats,
        tasks,
        fleet: fleet_tx,
        config: (*config).clone(),
        venue,
        rest: client,
    })
}

/// `[archive] url`: rounds beside the writer until shutdown (an archive that cannot be
/// opened stops start-up, naming the key).
fn start_archive(
    config: &Config,
    store: &Arc<Store>,
    stats: &RunStats,
    shutdown: &CancellationToken,
    tasks: &TaskTracker,
) -> anyhow::Result<()> {
    if config.archive.url.is_empty() {
        return Ok(());
    }
    let target = crate::archive::target::Target::open(&config.archive.url)
        .map_err(|e| crate::config::ConfigError::new("archive.url", format!("{e:#}")))?;
    let mut life = crate::archive::Lifecycle::from_config(config, target);
    // archiving waits while the writer's queue is a quarter full: recording comes first
    // (the archive's lag metric and alert say when it falls behind)
    let (queue, capacity) = (stats.queue.clone(), config.writer.queue_capacity);
    life.busy = Arc::new(move || queue.as_ref().is_some_and(|q| q.depth() * 4 > capacity));
    tasks.spawn(crate::archive::keep_archiving(
        store.clone(),
        life,
        stats.archive.clone(),
        shutdown.clone(),
    ));
    Ok(())
}

/// Under "all", the configuration's symbols are the venue's listing: nothing can be
/// planned without it.
async fn symbols_listed(
    mut config: Config,
    venue: &Arc<dyn Venue>,
    client: &rest::RestClient,
    shutdown: &CancellationToken,
) -> anyhow::Result<Config> {
    if config.record.all {
        config.record.symbols = markets::list_all(venue, &config, client, shutdown).await?;
    }
    Ok(config)
}

/// The run's counters over the queue, and the metrics exporter when metrics are served (its
/// write histograms in the counters).
fn run_stats(
    config: &Config,
    tx: &Sender,
) -> anyhow::Result<(RunStats, Option<crate::ops::metrics::Exporter>)> {
    let exporter = if config.metrics.listen.is_empty() {
        None
    } else {
        Some(crate::ops::metrics::Exporter::new().context("setting up metrics")?)
    };
    let stats = RunStats {
        queue: Some(tx.gauge()),
        ..RunStats::default()
    };
    if let Some(e) = &exporter {
        let _ = stats.writer.histograms.set(e.write_histograms());
    }
    Ok((stats, exporter))
}

/// The database probed while the venue's listing is read (a database error is said at once,
/// not after the listing's wait), then migrated only if the symbols passed: a refused start
/// leaves no database made (a SQLite file the probe created is removed again).
async fn database_and_listing(
    config: &Arc<Config>,
    venue: &Arc<dyn Venue>,
    client: &Arc<rest::RestClient>,
) -> anyhow::Result<(Arc<Store>, bool, Option<Vec<Market>>)> {
    let fresh_file = crate::config::sqlite_file(&config.database.url)
        .map(std::path::Path::new)
        .filter(|p| {
            !p.exists()
                && p.parent()
                    .is_none_or(|d| d.as_os_str().is_empty() || d.exists())
        });
    let listing = {
        let (venue, client, config) = (venue.clone(), client.clone(), config.clone());
        tokio::spawn(async move { check_listing(&venue, &client, &config).await })
    };
    let abort = listing.abort_handle();
    let opened = open_database(config, async {
        listing
            .await
            .map_err(|e| anyhow::anyhow!("listing task: {e}"))?
    })
    .await;
    abort.abort();
    if opened.is_err()
        && let Some(file) = &fresh_file
    {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
        }
    }
    opened
}

/// The store, and whether it answered: one connection first, so a refusal is said at once
/// in one line, and what only the operator can fix (no such database, a wrong password, a
/// directory it may not write) stops start-up instead of spooling for ever. A database that
/// does not answer yet (a reboot where it comes up later, a remote one) is no reason not to
/// record: the spool takes the rows until it does. Migrations wait for `listed` (the
/// symbols' check): a start it refuses migrates nothing.
async fn open_database(
    config: &Config,
    listed: impl std::future::Future<Output = anyhow::Result<Option<Vec<Market>>>>,
) -> anyhow::Result<(Arc<Store>, bool, Option<Vec<Market>>)> {
    let url = &config.database.url;
    let store = Arc::new(
        Store::connect_lazy(url)
            .with_context(|| format!("opening database {}", redact_url(url)))?,
    );
    // rows of periods the archive may hold already are marked for it as they are written
    store.set_late_rule(crate::store::ledger::LateRule {
        period_ms: config.archive.period_s as i64 * 1000,
        settle_ms: config.archive.settle_s as i64 * 1000,
    });
    match made_ready(&store, config, listed).await {
        Ok((db_up, listed)) => Ok((store, db_up, listed)),
        Err(e) => {
            // every connection closed before the caller removes a file it made
            store.close().await;
            Err(e)
        }
    }
}

/// Probes the store, waits for the symbols' check, migrates: whether the database answered.
async fn made_ready(
    store: &Store,
    config: &Config,
    listed: impl std::future::Future<Output = anyhow::Result<Option<Vec<Market>>>>,
) -> anyhow::Result<(bool, Option<Vec<Market>>)> {
    let url = &config.database.url;
    let limit = Duration::from_secs(config.writer.write_timeout_s.max(1));
    let probed = match store.probe(limit).await {
        Err(e) if !matches!(e.class(), ErrorClass::Unavailable | ErrorClass::Timeout) => {
            return Err(anyhow::Error::new(e));
        }
        p => p,
    };
    let listed = listed.await?;
    let ready = match probed {
        Ok(()) => tokio::time::timeout(limit, store.migrate())
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Open {
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
    Ok((db_up, listed))
}

fn open_spool(config: &Config) -> anyhow::Result<Spool> {
    let spool_dir = std::path::absolute(config.spool_dir())
        .with_context(|| format!("the spool directory {}", config.spool_dir().display()))?;
    let mut spool = Spool::open(&spool_dir)
        .with_context(|| format!("opening the spool in {}", spool_dir.display()))?;
    // the spool's batches go to the database they were taken for, never to another one the
    // URL names now
    let database = crate::config::database_identity(&config.database.url);
    if let Some(other) = spool
        .claim(&database)
        .with_context(|| format!("reading the spool's owner in {}", spool_dir.display()))?
    {
        anyhow::bail!(
            "the spool in {} holds {} batches for {other}, not {database}: to replay them, \
             point database.url back at that database; to record into this one, set [writer] \
             spool_dir to another directory",
            spool_dir.display(),
            spool.files()
        );
    }
    tracing::info!(spool = %spool_dir.display(), %database, pending = spool.files(), "spool ready");
    spool
        .discard_unfinished()
        .with_context(|| format!("cleaning the spool in {}", spool_dir.display()))?;
    Ok(spool)
}

/// The metrics and health endpoints on the listener bound at the start.
async fn serve_metrics(
    listener: Option<tokio::net::TcpListener>,
    exporter: Option<crate::ops::metrics::Exporter>,
    stats: &Arc<RunStats>,
    config: &Arc<Config>,
    store: &Arc<Store>,
    shutdown: &CancellationToken,
    tasks: &TaskTracker,
) -> anyhow::Result<()> {
    let (Some(listener), Some(exporter)) = (listener, exporter) else {
        return Ok(());
    };
    let addr = crate::ops::metrics::serve(
        listener,
        exporter,
        stats.clone(),
        config.clone(),
        store.clone(),
        shutdown.clone(),
        tasks,
    )
    .await?;
    let _ = stats.metrics_addr.set(addr);
    Ok(())
}

/// The listing a configured symbol list is checked against: a symbol the venue does not list
/// is a typo until the operator says otherwise (checked before the database is created, so a
/// refused start leaves nothing behind); a venue that does not answer in time is no reason not
/// to record. None under
/// "all" (the listing was read already) or when the venue did not answer.
async fn check_listing(
    venue: &Arc<dyn Venue>,
    client: &rest::RestClient,
    config: &Config,
) -> anyhow::Result<Option<Vec<Market>>> {
    if config.record.all {
        return Ok(None);
    }
    let listed = markets::listing(venue, client, LISTING_WAIT).await;
    if let Some(m) = &listed {
        markets::check_listed(&config.record.symbols, m, config.record.allow_unlisted)?;
    }
    Ok(listed)
}

/// The shutdown deadline starts at the shutdown signal.
fn start_deadline_on(shutdown: &CancellationToken, deadline: &Arc<Deadline>, config: &Config) {
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

/// The database answers: the spool earlier runs left is replayed, then where the stored
/// streams end is read. Rows an earlier run spooled count for where the streams end; where a
/// file moves a stream's end, the run that wrote it may have been killed before its own
/// start-up hole went on record: that stretch is checked again, from the last trade stored
/// before the replay.
async fn resume(
    store: &Arc<Store>,
    venue: &Arc<dyn Venue>,
    config: &Config,
    spool: Spool,
    tx: &Sender,
    stats: &RunStats,
    deadline: &Arc<Deadline>,
) -> anyhow::Result<Resumed> {
    let before_replay = if spool.is_empty() {
        Vec::new()
    } else {
        trade_ends(store, venue.name(), &config.record.symbols).await?
    };
    let spool = writer::replay_spool(
        store.clone(),
        spool,
        config.writer.clone(),
        stats.writer.clone(),
        deadline.clone(),
    )
    .await;
    close_orphans(store, venue.name(), config, tx).await?;
    let (marks, mut leftovers) = stored_marks(store, venue.as_ref(), config)
        .await
        .context("reading where the stored streams end")?;
    for (symbol, before) in before_replay {
        if let Some(check) = replayed_stretch(store, venue.as_ref(), symbol, before).await? {
            leftovers.push(check);
        }
    }
    Ok(Resumed {
        spool,
        marks: Arc::new(std::sync::RwLock::new(marks)),
        leftovers,
        gate: None,
        ready: None,
    })
}

/// The last trade stored of each symbol.
async fn trade_ends(
    store: &Store,
    venue: &str,
    symbols: &[String],
) -> anyhow::Result<Vec<(Arc<str>, Option<crate::model::TradeMark>)>> {
    let mut v = Vec::new();
    for sym in symbols {
        let last = store
            .last_trade(venue, sym, None)
            .await
            .context("reading where the stored trades end")?;
        v.push((Arc::<str>::from(sym.as_str()), last));
    }
    Ok(v)
}

/// Sessions an earlier run left open (it was killed or crashed) are closed at its last
/// stored row.
async fn close_orphans(
    store: &Store,
    venue: &'static str,
    config: &Config,
    tx: &Sender,
) -> anyhow::Result<()> {
    let orphans = store
        .orphan_sessions(venue, &config.record.symbols)
        .await
        .context("reading sessions an earlier run left open")?;
    if !orphans.is_empty() {
        tracing::warn!(
            sessions = orphans.len(),
            "closing sessions an earlier run left open (it was killed or crashed) at its last stored row"
        );
    }
    // the writer starts later: send from a task so a long list cannot fill the queue
    let tx = tx.clone();
    tokio::spawn(async move {
        for s in orphans {
            if tx.send(Event::Session(s)).await.is_err() {
                return;
            }
        }
    });
    Ok(())
}

/// The stretch the replay moved a symbol's stored trades over, as a start-up hole to check
/// (None: nothing stored before the replay, or the replay did not move them).
async fn replayed_stretch(
    store: &Store,
    venue: &dyn Venue,
    symbol: Arc<str>,
    before: Option<crate::model::TradeMark>,
) -> anyhow::Result<Option<marks::HoleCheck>> {
    let Some(anchor) = before else {
        return Ok(None); // nothing stored before: nothing to hold a hole against
    };
    let after = store
        .last_trade(venue.name(), &symbol, None)
        .await
        .context("reading where the stored trades end")?;
    if after == Some(anchor) {
        return Ok(None);
    }
    let until = store
        .next_trade(venue.name(), &symbol, anchor, venue.trade_ids())
        .await
        .context("reading where the stored trades end")?;
    tracing::info!(%symbol, after_id = anchor.trade_id, "spooled rows of an earlier run moved the stored trades on: checking the stretch before them");
    Ok(Some(marks::HoleCheck {
        symbol,
        reason: marks::Reason::Startup,
        trade: Some(anchor),
        trade_until: until,
        bars: Vec::new(),
        detected_at_ms: crate::model::now_ms(),
        row_start: None,
        recorded: false,
    }))
}

/// The database does not answer: where the stored streams end is read once it does
/// (`after_start`); until then the sockets record from nothing known.
fn resume_later(venue: &Arc<dyn Venue>, config: &Config, spool: Spool) -> Resumed {
    let (ready, ready_rx) = oneshot::channel();
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
    Resumed {
        spool: Some(spool),
        marks: Arc::new(std::sync::RwLock::new(marks)),
        leftovers: Vec::new(),
        gate: Some(gate),
        ready: Some(ready_rx),
    }
}

/// Backfill, handed the holes earlier runs left open first.
fn start_backfill(
    b: backfill::Backfill,
    leftovers: Vec<marks::HoleCheck>,
    workers: &TaskTracker,
) -> mpsc::UnboundedSender<marks::HoleCheck> {
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
    workers.spawn(backfill::run(b, brx));
    btx
}

/// The venue's plan of sockets, each started as a worker of the fleet.
fn start_connections(
    shared: worker::Shared,
    stats: &Arc<RunStats>,
    marks: &fleet::MarksMap,
    store: &Arc<Store>,
    workers: &TaskTracker,
    requests: mpsc::UnboundedReceiver<fleet::Request>,
) {
    let symbols: Vec<Arc<str>> = shared
        .config
        .record
        .symbols
        .iter()
        .map(|s| Arc::from(s.as_str()))
        .collect();
    let plan = shared.venue.plan(&symbols, &shared.config.record);
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
    workers.spawn(fleet.run(requests));
}

/// Under "all", the venue's listing again every `relist_interval_s`; otherwise the listing
/// read at start-up goes into `markets`. A listing still retrying at shutdown must not hold
/// the writer's queue open.
async fn keep_listing(
    venue: Arc<dyn Venue>,
    config: Arc<Config>,
    client: Arc<rest::RestClient>,
    tx: Sender,
    fleet: mpsc::UnboundedSender<fleet::Request>,
    listed: Option<Vec<Market>>,
    stop: CancellationToken,
) {
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = async {
            if config.record.all {
                markets::relist(&venue, &config, &client, &tx, &fleet).await
            } else {
                drop(fleet);
                if let Some(m) = listed {
                    markets::store(m, &tx).await;
                }
            }
        } => {}
    }
}

/// Where the configured streams end in the database, and the holes earlier runs left open.
async fn stored_marks(
    store: &Store,
    venue: &dyn Venue,
    config: &Config,
) -> Result<marks::Loaded, StoreError> {
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
    ready: ReadyRx,
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
