//! The writer: the only task that touches the database.
//!
//! It drains the bounded event queue into a [`Batch`] and flushes when the batch holds
//! `batch_rows` rows or `flush_interval_ms` after its first row, one transaction per flush.
//!
//! Backpressure policy: while the database takes writes, a slow database slows the flushes,
//! the queue fills and the workers wait on it (nothing is dropped). When a write fails or
//! exceeds `write_timeout_s`, the batch goes to the disk [`Spool`] and the writer keeps draining
//! the queue into the spool, so recording goes on; it probes the database with backoff and
//! replays the spool, oldest first, once it answers. Only when the spool cannot be written
//! (full, or a disk error) does the writer hold the batch and retry the database in place,
//! which brings back backpressure. When every sender is gone (shutdown) it flushes what is
//! left, tries one last replay, and returns; anything still spooled is replayed at next start.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::spool::Spool;
use super::{Batch, ErrorClass, Rejected, Store};
use crate::config::WriterConfig;
use crate::model::{Event, Table};
use crate::runtime::backoff::ReconnectPolicy;
use crate::stats::{LatencyCounts, WriterStats};

/// Counts a committed batch's rows per table.
fn count_flush(stats: &WriterStats, b: &Batch) {
    for t in Table::ALL {
        stats.rows[t.index()].fetch_add(b.len_of(t) as u64, Ordering::Relaxed);
    }
    stats.flushes.fetch_add(1, Ordering::Relaxed);
}

fn spool_gauges(stats: &WriterStats, s: &Spool) {
    stats.spool_bytes.store(s.bytes(), Ordering::Relaxed);
    stats.spool_files.store(s.files() as u64, Ordering::Relaxed);
}

struct Writer {
    store: Arc<Store>,
    cfg: WriterConfig,
    stats: Arc<WriterStats>,
    spool: Option<Spool>,
    /// Delays between database probes while the spool is non-empty.
    probe: ReconnectPolicy,
    probe_delays: Box<dyn Iterator<Item = Duration> + Send + Sync>,
    next_probe: Option<Instant>,
    /// Shutdown deadline: bounds every write once shutdown has started.
    deadline: Arc<crate::runtime::deadline::Deadline>,
    /// Tables for which a refused row was logged already (logged once per table).
    logged_rejects: std::collections::HashSet<String>,
    /// Symbols for which a trade conflict was logged already.
    logged_conflicts: std::collections::HashSet<String>,
    /// Writes slower than [`SLOW_WRITE`] not yet reported, and when the last report went out.
    slow: std::sync::Mutex<SlowWrites>,
    /// Set while the database has not answered since start-up.
    startup: Option<Startup>,
}

/// The database did not answer at start-up. Until it does the writer spools everything;
/// then it migrates the database, replays what earlier runs spooled (files numbered below
/// `first_seq`), and asks `ready` for the rows that must be on record before this run's
/// (the holes of this start, sessions killed runs left open), which it commits first;
/// only then does it replay this run's spool.
pub struct Startup {
    pub first_seq: u64,
    pub ready: tokio::sync::oneshot::Sender<tokio::sync::oneshot::Sender<Vec<Event>>>,
}

/// Why a write did not commit.
struct WriteFail {
    class: ErrorClass,
    error: String,
}

/// Refused rows the database would not take into `rejected_rows` either, one JSON line each.
pub const QUARANTINE_FILE: &str = "quarantine.jsonl";

fn append_quarantine(path: &std::path::Path, rows: &[Rejected]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        super::spool::private_dir(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)?;
    let mut buf = Vec::new();
    for r in rows {
        serde_json::to_writer(&mut buf, r)?;
        buf.push(b'\n');
    }
    f.write_all(&buf)?;
    f.sync_all()
}

impl Writer {
    fn new(
        store: Arc<Store>,
        cfg: WriterConfig,
        stats: Arc<WriterStats>,
        spool: Option<Spool>,
        deadline: Arc<crate::runtime::deadline::Deadline>,
    ) -> Writer {
        let probe = ReconnectPolicy {
            initial: Duration::from_millis(200),
            cap: Duration::from_secs(10),
        };
        Writer {
            store,
            cfg,
            stats,
            spool,
            probe,
            probe_delays: Box::new(probe.delays(None)),
            next_probe: None,
            deadline,
            logged_rejects: Default::default(),
            logged_conflicts: Default::default(),
            slow: Default::default(),
            startup: None,
        }
    }
}

/// Replays what an earlier run spooled before anything else reads the database, so that
/// where the stored streams end (the marks, and with them the holes) accounts for it. Stops
/// at the first write the database does not take; the writer retries the rest.
pub async fn replay_spool(
    store: Arc<Store>,
    spool: Spool,
    cfg: WriterConfig,
    stats: Arc<WriterStats>,
    deadline: Arc<crate::runtime::deadline::Deadline>,
) -> Option<Spool> {
    let mut w = Writer::new(store, cfg, stats, Some(spool), deadline);
    if let Some(s) = &w.spool {
        spool_gauges(&w.stats, s);
        if !s.is_empty() {
            tracing::info!(files = s.files(), bytes = s.bytes(), dir = %s.dir().display(), "replaying the spool left by an earlier run");
            w.replay().await;
        }
    }
    w.spool.take()
}

pub async fn run(
    store: Arc<Store>,
    rx: crate::store::queue::EventRx,
    cfg: WriterConfig,
    stats: Arc<WriterStats>,
    spool: Option<Spool>,
    deadline: Arc<crate::runtime::deadline::Deadline>,
) {
    run_from(store, rx, cfg, stats, spool, deadline, None).await
}

/// [`run`], starting while the database has not answered yet (see [`Startup`]).
pub async fn run_from(
    store: Arc<Store>,
    mut rx: crate::store::queue::EventRx,
    cfg: WriterConfig,
    stats: Arc<WriterStats>,
    spool: Option<Spool>,
    deadline: Arc<crate::runtime::deadline::Deadline>,
    startup: Option<Startup>,
) {
    let mut w = Writer::new(store, cfg, stats, spool, deadline);
    if startup.is_some() {
        w.startup = startup;
        w.stats.db_pending.store(true, Ordering::Relaxed);
        let _ = w.stats.failing_since_ms.compare_exchange(
            0,
            crate::model::now_ms(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        w.next_probe = Some(Instant::now() + w.probe.initial);
    }
    if let Some(s) = &w.spool {
        spool_gauges(&w.stats, s);
        if !s.is_empty() && w.startup.is_none() {
            tracing::info!(files = s.files(), bytes = s.bytes(), dir = %s.dir().display(), "replaying the spool left by an earlier run");
            w.replay().await;
        }
    }
    let mut batch = Batch::default();
    let mut buf: Vec<crate::store::queue::Queued> = Vec::with_capacity(1024);
    let mut policy = FlushPolicy::new(
        w.cfg.batch_rows,
        Duration::from_millis(w.cfg.flush_interval_ms),
    );
    // a flush also takes what queued up meanwhile, up to this: under load the writer commits
    // less often with more rows, idle it commits `batch_rows` or `flush_interval_ms` at once
    let most = BACKLOG_ROWS.max(w.cfg.batch_rows);
    let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
    loop {
        w.beat();
        let flush_timer = sleep_until_opt(policy.due());
        let probe_timer = sleep_until_opt(w.next_probe);
        tokio::select! {
            n = rx.recv_many(&mut buf, 1024) => {
                if n == 0 {
                    break; // all senders gone: shutdown
                }
                for q in buf.drain(..) {
                    batch.push_sized(q.ev, q.bytes);
                }
                let full = policy.added(batch.rows(), Instant::now());
                if full || batch.bytes() >= BACKLOG_BYTES {
                    take_backlog(&mut rx, &mut batch, most, BACKLOG_BYTES);
                    w.flush(&mut batch).await;
                    policy.flushed();
                }
            }
            _ = flush_timer => {
                take_backlog(&mut rx, &mut batch, most, BACKLOG_BYTES);
                w.flush(&mut batch).await;
                policy.flushed();
            }
            _ = probe_timer => {
                if w.startup.is_some() {
                    w.try_start().await;
                } else {
                    w.replay().await;
                }
            }
            _ = heartbeat.tick() => {}
        }
    }
    w.flush(&mut batch).await;
    if w.startup.is_some() {
        w.try_start().await;
    }
    if w.startup.is_none() && w.spool.as_ref().is_some_and(|s| !s.is_empty()) {
        w.replay().await;
    }
    if let Some(s) = w.spool.as_ref().filter(|s| !s.is_empty()) {
        tracing::warn!(files = s.files(), bytes = s.bytes(), dir = %s.dir().display(), "database still unavailable at shutdown; the spool will be replayed at the next start");
    }
    tracing::debug!("writer drained and stopped");
}

/// When the writer flushes: once the batch holds `rows` rows, or `interval` after its first
/// row arrived, whichever comes first (so a quiet feed is still written promptly).
#[derive(Debug, Clone)]
pub struct FlushPolicy {
    rows: usize,
    interval: Duration,
    due: Option<Instant>,
}

impl FlushPolicy {
    pub fn new(rows: usize, interval: Duration) -> FlushPolicy {
        FlushPolicy {
            rows: rows.max(1),
            interval,
            due: None,
        }
    }

    /// Events went into the batch, which now holds `held` rows: true when it is to be
    /// flushed now. The first rows of a batch start its timer.
    pub fn added(&mut self, held: usize, now: Instant) -> bool {
        if held == 0 {
            return false;
        }
        self.due.get_or_insert(now + self.interval);
        held >= self.rows
    }

    /// When the batch is due by time (None: nothing waits).
    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    /// The batch was written (or spooled): the next rows start a new timer.
    pub fn flushed(&mut self) {
        self.due = None;
    }
}

/// A write slower than this is reported (sqlx's own report of each slow statement, kilobytes
/// of SQL, is filtered out of the log).
const SLOW_WRITE: Duration = Duration::from_secs(1);
/// At most one report of slow writes per this.
const SLOW_REPORT_EVERY: Duration = Duration::from_secs(60);

/// Slow writes, summarised: one line at the first, then at most one a minute with how many
/// there were and the slowest.
#[derive(Default)]
struct SlowWrites {
    count: u64,
    rows: usize,
    slowest: Duration,
    last_report: Option<Instant>,
}

impl SlowWrites {
    fn note(&mut self, took: Duration, rows: usize) {
        if took < SLOW_WRITE {
            return;
        }
        self.count += 1;
        self.rows += rows;
        self.slowest = self.slowest.max(took);
        let now = Instant::now();
        if self
            .last_report
            .is_some_and(|t| now.duration_since(t) < SLOW_REPORT_EVERY)
        {
            return;
        }
        tracing::warn!(
            writes = self.count,
            rows = self.rows,
            slowest_ms = self.slowest.as_millis() as u64,
            "database writes slow (over 1 s each): the database is busy, locked by another process, or its disk is slow"
        );
        *self = SlowWrites {
            last_report: Some(now),
            ..SlowWrites::default()
        };
    }
}

/// Rows one flush takes at most from a backlog (the writer fell behind). SQLite writes every
/// index page a commit touched whole to its log, and a mixed batch of hundreds of symbols
/// touches hundreds: under load, fewer and larger commits (measured: 800 instruments kept up
/// with 20000, not with 2000 a commit).
const BACKLOG_ROWS: usize = 20_000;
/// And bytes one batch holds at most (full books of hundreds of levels are large): a batch
/// this large is flushed at once, and a backlog is taken up to it.
const BACKLOG_BYTES: usize = 32 << 20;

/// Moves events already queued into the batch until it holds `rows` rows or `bytes` bytes
/// (never waits).
fn take_backlog(
    rx: &mut crate::store::queue::EventRx,
    batch: &mut Batch,
    rows: usize,
    bytes: usize,
) {
    while batch.rows() < rows && batch.bytes() < bytes {
        match rx.try_recv() {
            Some(q) => batch.push_sized(q.ev, q.bytes),
            None => break,
        }
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

impl Writer {
    fn beat(&self) {
        self.stats
            .heartbeat_ms
            .store(crate::model::now_ms(), Ordering::Relaxed);
    }

    /// One database write, bounded by `write_timeout_s`.
    async fn write(&self, batch: &Batch) -> Result<Vec<Rejected>, WriteFail> {
        let limit = self
            .deadline
            .cap(Duration::from_secs(self.cfg.write_timeout_s));
        let timeout = |error: String| WriteFail {
            class: ErrorClass::Timeout,
            error,
        };
        if limit.is_zero() {
            return Err(timeout("shutdown deadline reached".into()));
        }
        let started = Instant::now();
        let r = tokio::select! {
            r = tokio::time::timeout(limit, self.store.write(batch)) => match r {
                Ok(Ok(conflicts)) => Ok(conflicts),
                Ok(Err(e)) => Err(WriteFail { class: e.class(), error: e.to_string() }),
                Err(_) => Err(timeout(format!("no answer within {limit:?}"))),
            },
            // a write that began before shutdown must not outlive the deadline either
            _ = self.deadline.reached() => Err(timeout("shutdown deadline reached".into())),
        };
        let failing = &self.stats.failing_since_ms;
        match &r {
            Ok(_) => {
                failing.store(0, Ordering::Relaxed);
                let committed = crate::model::now_us();
                let mut waited = LatencyCounts::default();
                for t in batch.recv_times() {
                    waited.record_us(committed - t);
                }
                self.stats.frame_to_commit.add(&waited);
                if let Some((rows, seconds)) = self.stats.histograms.get() {
                    rows.record(batch.rows() as f64);
                    seconds.record(started.elapsed().as_secs_f64());
                }
                if let Ok(mut slow) = self.slow.lock() {
                    slow.note(started.elapsed(), batch.rows());
                }
            }
            Err(f) => {
                self.stats.flush_errors.fetch_add(1, Ordering::Relaxed);
                self.stats.errors_by_class[f.class as usize].fetch_add(1, Ordering::Relaxed);
                // a refused row says nothing about the database being up
                if f.class != ErrorClass::Data {
                    let _ = failing.compare_exchange(
                        0,
                        crate::model::now_ms(),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
            }
        }
        r
    }

    /// Stores a batch. When the database refuses it for a data reason (a constraint, an
    /// encoding, a value out of range), the batch is split in halves until the refused rows
    /// are alone: every other row is stored and the refused ones are quarantined with the
    /// database's message, so one bad row can never block the rest. Any other failure is
    /// returned and the caller spools the whole batch (statements are idempotent, so rows
    /// already committed by a half are harmless to write again).
    async fn commit(&mut self, batch: &Batch) -> Result<(), WriteFail> {
        let first = match self.write(batch).await {
            Ok(conflicts) => {
                count_flush(&self.stats, batch);
                self.conflicts(&conflicts);
                return Ok(());
            }
            Err(f) if f.class != ErrorClass::Data => return Err(f),
            Err(f) => f.error,
        };
        let mut stack: Vec<(Vec<crate::model::Event>, Option<String>)> =
            vec![(batch.events().collect(), Some(first))];
        let mut refused = Vec::new();
        while let Some((events, known)) = stack.pop() {
            let error = match known {
                Some(e) => e,
                None => {
                    let part = Batch::from_events(events.iter().cloned());
                    match self.write(&part).await {
                        Ok(conflicts) => {
                            count_flush(&self.stats, &part);
                            self.conflicts(&conflicts);
                            continue;
                        }
                        Err(f) if f.class != ErrorClass::Data => return Err(f),
                        Err(f) => f.error,
                    }
                }
            };
            if events.len() == 1 {
                refused.push(Rejected::data_error(&events[0], &error));
            } else {
                let mut left = events;
                let right = left.split_off(left.len() / 2);
                stack.push((right, None));
                stack.push((left, None));
            }
        }
        self.quarantine(refused).await;
        Ok(())
    }

    /// Counts and logs (once per symbol) trades whose key was stored with other content; the
    /// write kept both versions in `rejected_rows`.
    fn conflicts(&mut self, rows: &[Rejected]) {
        if rows.is_empty() {
            return;
        }
        self.stats
            .conflicts
            .fetch_add(rows.len() as u64, Ordering::Relaxed);
        for r in rows {
            if self.logged_conflicts.insert(r.symbol.clone()) {
                tracing::warn!(symbol = %r.symbol, detail = r.error.as_deref().unwrap_or(""),
                    "trade key stored with other content: both versions kept in rejected_rows (logged once per symbol)");
            }
        }
    }

    /// Keeps refused rows in `rejected_rows`, or in the quarantine file next to the spool
    /// when the database will not take them there either.
    async fn quarantine(&mut self, rows: Vec<Rejected>) {
        if rows.is_empty() {
            return;
        }
        self.stats
            .rejected_rows
            .fetch_add(rows.len() as u64, Ordering::Relaxed);
        for r in &rows {
            if self.logged_rejects.insert(r.kind.clone()) {
                tracing::warn!(table = %r.kind, symbol = %r.symbol, error = r.error.as_deref().unwrap_or(""),
                    "the database refused a row; stored the rest and kept it in rejected_rows (logged once per table)");
            }
        }
        let limit = Duration::from_secs(self.cfg.write_timeout_s);
        let kept = match tokio::time::timeout(limit, self.store.write_rejected(&rows)).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {limit:?}"),
        };
        let file = self.quarantine_file();
        match append_quarantine(&file, &rows) {
            Ok(()) => {
                self.stats
                    .quarantined_to_file
                    .fetch_add(rows.len() as u64, Ordering::Relaxed);
                tracing::error!(error = %kept, file = %file.display(), rows = rows.len(),
                    "rejected_rows refused too; refused rows written to the quarantine file");
            }
            Err(e) => {
                self.stats
                    .dropped_rows
                    .fetch_add(rows.len() as u64, Ordering::Relaxed);
                tracing::error!(error = %e, file = %file.display(), rows = rows.len(),
                    "cannot write the quarantine file either: refused rows are lost");
            }
        }
    }

    fn quarantine_file(&self) -> std::path::PathBuf {
        match &self.spool {
            Some(s) => s.dir().join(QUARANTINE_FILE),
            None => std::path::PathBuf::from(QUARANTINE_FILE),
        }
    }

    fn spooling(&self) -> bool {
        self.startup.is_some() || self.spool.as_ref().is_some_and(|s| !s.is_empty())
    }

    /// While the database has not answered since start-up: tries to migrate it; once that
    /// works, replays earlier runs' spool files, commits the rows the recorder needs on record
    /// first, and goes on as usual (this run's spool is replayed next).
    async fn try_start(&mut self) {
        let Some(first_seq) = self.startup.as_ref().map(|s| s.first_seq) else {
            return;
        };
        let limit = self
            .deadline
            .cap(Duration::from_secs(self.cfg.write_timeout_s));
        let migrated = if limit.is_zero() {
            Err("shutdown deadline reached".to_string())
        } else {
            match tokio::time::timeout(limit, self.store.migrate()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("{} ({})", e, e.class().as_str())),
                Err(_) => Err(format!("no answer within {limit:?}")),
            }
        };
        if let Err(e) = migrated {
            let delay = self.probe_delays.next().unwrap_or(self.probe.cap);
            tracing::debug!(error = %e, delay_ms = delay.as_millis() as u64, "database still not answering");
            self.next_probe = Some(Instant::now() + delay);
            return;
        }
        tracing::info!("database answers: migrated; replaying the spool");
        if !self.replay_before(Some(first_seq)).await {
            return; // failed again: the probe retries
        }
        let Some(startup) = self.startup.take() else {
            return;
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let first = if startup.ready.send(tx).is_ok() {
            rx.await.unwrap_or_default()
        } else {
            Vec::new()
        };
        self.stats.db_pending.store(false, Ordering::Relaxed);
        let mut batch = Batch::from_events(first);
        if !batch.is_empty() && self.commit(&batch).await.is_err() {
            let _ = self.spool_batch(&batch);
        }
        batch.clear();
        self.replay().await;
    }

    async fn flush(&mut self, batch: &mut Batch) {
        if batch.is_empty() {
            return;
        }
        // While the spool holds data the database is considered down: straight to disk, and
        // the probe timer finds out when it is back.
        if !self.spooling() {
            match self.commit(batch).await {
                Ok(()) => {
                    batch.clear();
                    return;
                }
                Err(f) => {
                    tracing::warn!(class = f.class.as_str(), error = %f.error, rows = batch.rows(), "database write failed; spooling to disk and recording on");
                }
            }
        }
        let mut delays = self.probe.delays(None);
        let mut warned = false;
        loop {
            match self.spool_batch(batch) {
                Ok(()) => {
                    if self.next_probe.is_none() {
                        self.next_probe = Some(
                            Instant::now() + self.probe_delays.next().unwrap_or(self.probe.cap),
                        );
                    }
                    batch.clear();
                    return;
                }
                Err(e) if self.deadline.remaining() == Some(Duration::ZERO) => {
                    // shutdown deadline passed and neither the database nor the disk took it
                    self.stats
                        .dropped_rows
                        .fetch_add(batch.rows() as u64, Ordering::Relaxed);
                    tracing::error!(error = %e, rows = batch.rows(), "shutdown deadline reached: rows neither written nor spooled are lost");
                    batch.clear();
                    return;
                }
                Err(e) => {
                    if !warned {
                        tracing::error!(error = %e, rows = batch.rows(), "cannot spool; holding the batch and retrying the database (readers will wait)");
                        warned = true;
                    }
                    tokio::time::sleep(delays.next().unwrap_or(self.probe.cap)).await;
                    self.beat();
                    if self.commit(batch).await.is_ok() {
                        batch.clear();
                        return;
                    }
                }
            }
        }
    }

    fn spool_batch(&mut self, batch: &Batch) -> Result<(), String> {
        let spool = self.spool.as_mut().ok_or("no spool configured")?;
        if spool.bytes() >= self.cfg.spool_max_bytes {
            return Err(format!("spool full ({} bytes)", spool.bytes()));
        }
        spool
            .append(batch)
            .map_err(|e| format!("spool write in {}: {e}", spool.dir().display()))?;
        self.stats
            .spooled_rows
            .fetch_add(batch.rows() as u64, Ordering::Relaxed);
        spool_gauges(&self.stats, spool);
        Ok(())
    }

    /// Writes spooled batches oldest first; stops at the first failure and schedules a probe.
    async fn replay(&mut self) {
        self.replay_before(None).await;
    }

    /// [`Writer::replay`] of the files numbered below `before` (None: all). True when every
    /// such file is replayed.
    async fn replay_before(&mut self, before: Option<u64>) -> bool {
        self.next_probe = None;
        let pending = match self.spool.as_ref().map(|s| s.pending()) {
            Some(Ok(p)) => p
                .into_iter()
                .filter(|p| before.is_none_or(|b| Spool::seq(p).is_some_and(|s| s < b)))
                .collect::<Vec<_>>(),
            Some(Err(e)) => {
                tracing::error!(error = %e, "cannot list the spool");
                self.next_probe = Some(Instant::now() + self.probe.cap);
                return false;
            }
            None => return true,
        };
        if pending.is_empty() {
            return true;
        }
        let mut rows = 0usize;
        for path in &pending {
            let batch = match Spool::read(path) {
                Ok(b) => b,
                Err(e) => {
                    // keep the bytes for a human, out of the replay path
                    let aside = path.with_extension("bad");
                    tracing::error!(error = %e, file = %aside.display(), "unreadable spool file set aside");
                    let _ = std::fs::rename(path, &aside);
                    if let Some(s) = self.spool.as_mut() {
                        *s = match s.reopen() {
                            Ok(fresh) => fresh,
                            Err(_) => continue,
                        };
                    }
                    continue;
                }
            };
            // a spooled batch with a row the database refuses is split like a live one: a
            // poisoned file can never block the replay
            if let Err(f) = self.commit(&batch).await {
                let delay = self.probe_delays.next().unwrap_or(self.probe.cap);
                tracing::debug!(class = f.class.as_str(), error = %f.error, delay_ms = delay.as_millis() as u64, "database still unavailable");
                self.next_probe = Some(Instant::now() + delay);
                return false;
            }
            self.stats
                .replayed_rows
                .fetch_add(batch.rows() as u64, Ordering::Relaxed);
            rows += batch.rows();
            if let Some(s) = self.spool.as_mut() {
                if let Err(e) = s.remove(path) {
                    tracing::error!(error = %e, file = %path.display(), "cannot delete a replayed spool file (its rows are stored; replaying it again is harmless)");
                }
                spool_gauges(&self.stats, s);
            }
        }
        self.probe_delays = Box::new(self.probe.delays(None));
        tracing::info!(
            files = pending.len(),
            rows,
            "database accepts writes again; spool replayed"
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book(levels: usize) -> Event {
        use crate::decimal::Dec;
        let l = (Dec::parse("86650.5").unwrap(), Dec::parse("1.5").unwrap());
        Event::BookSnapshot(crate::model::BookSnapshot {
            venue: "cdc-v1",
            symbol: Arc::from("btcusdt"),
            depth_step: 0,
            event_time_ms: 1,
            recv_time_us: 1,
            bids: vec![l.clone(); levels],
            asks: vec![l; levels],
        })
    }

    #[tokio::test(start_paused = true)]
    async fn slow_writes_are_reported_at_most_once_a_minute() {
        let mut s = SlowWrites::default();
        s.note(Duration::from_millis(999), 10);
        assert_eq!((s.count, s.last_report), (0, None), "not slow");
        s.note(Duration::from_secs(3), 10);
        let first = s.last_report.expect("the first slow write is reported");
        assert_eq!(s.count, 0, "reported and reset");
        tokio::time::advance(Duration::from_secs(30)).await;
        s.note(Duration::from_secs(2), 20);
        s.note(Duration::from_secs(5), 30);
        assert_eq!(
            (s.count, s.rows, s.slowest),
            (2, 50, Duration::from_secs(5))
        );
        assert_eq!(s.last_report, Some(first), "held within the minute");
        tokio::time::advance(Duration::from_secs(31)).await;
        s.note(Duration::from_secs(1), 5);
        assert_eq!(s.count, 0, "the three are reported together");
        assert!(s.last_report > Some(first));
    }

    #[tokio::test]
    async fn a_backlog_is_taken_up_to_a_byte_budget_as_well_as_rows() {
        let (tx, mut rx) = crate::store::queue::channel(100, 64 << 20);
        let one = book(150).approx_bytes();
        for _ in 0..10 {
            tx.send(book(150)).await.unwrap();
        }
        let mut batch = Batch::default();
        take_backlog(&mut rx, &mut batch, 1000, one * 4);
        assert_eq!(
            batch.snapshots.len(),
            4,
            "rows had room: the bytes stopped it"
        );
        assert_eq!(batch.bytes(), one * 4);
        batch.clear();
        assert_eq!(batch.bytes(), 0);
        take_backlog(&mut rx, &mut batch, 3, usize::MAX);
        assert_eq!(
            batch.snapshots.len(),
            3,
            "bytes had room: the rows stopped it"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn flushes_when_full_or_when_the_first_row_is_old_enough() {
        let mut p = FlushPolicy::new(3, Duration::from_millis(250));
        let t0 = Instant::now();
        assert!(!p.added(0, t0), "nothing held: no timer");
        assert_eq!(p.due(), None);
        assert!(!p.added(1, t0));
        assert_eq!(p.due(), Some(t0 + Duration::from_millis(250)));
        // later rows do not move the first row's deadline
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(!p.added(2, Instant::now()));
        assert_eq!(p.due(), Some(t0 + Duration::from_millis(250)));
        // the timer fires at the deadline, not before
        let fired =
            tokio::time::timeout(Duration::from_millis(149), sleep_until_opt(p.due())).await;
        assert!(fired.is_err());
        sleep_until_opt(p.due()).await;
        assert_eq!(Instant::now(), t0 + Duration::from_millis(250));
        p.flushed();
        assert_eq!(p.due(), None);
        // full before the timer: flush at once
        let t1 = Instant::now();
        assert!(!p.added(2, t1));
        assert!(p.added(3, t1));
        assert!(p.added(10, t1), "a burst past the size is one flush");
        p.flushed();
        // an idle writer waits on nothing
        let idle = tokio::time::timeout(Duration::from_secs(3600), sleep_until_opt(p.due())).await;
        assert!(idle.is_err());
    }
}
