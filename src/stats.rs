//! The run's counters, in one place: workers, writer, backfill and the REST client update
//! them; metrics, health, the watchdog, the demo and tests read them (so `ops` needs nothing
//! from the recorder).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::Instant;

use crate::model::{StreamKey, Table};
use crate::runtime::{deadline, lock};

/// Rows handed to the database, per table (after in-batch merging; duplicates of stored rows
/// are counted here but not stored twice), and the spool's state.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Per [`Table::ALL`] entry.
    pub rows: [AtomicU64; Table::ALL.len()],
    pub flushes: AtomicU64,
    pub flush_errors: AtomicU64,
    /// Failed writes per [`crate::store::ErrorClass::ALL`] entry.
    pub errors_by_class: [AtomicU64; 5],
    /// Rows the database refused (isolated by splitting the batch) and kept in
    /// `rejected_rows` or the quarantine file instead.
    pub rejected_rows: AtomicU64,
    /// Of those, rows only the quarantine file holds (the database refused them there too).
    pub quarantined_to_file: AtomicU64,
    /// Trades whose key was stored (or repeated in a batch) with other content, kept with
    /// both versions in `rejected_rows`.
    pub conflicts: AtomicU64,
    /// Rows written to the spool, and rows replayed from it into the database.
    pub spooled_rows: AtomicU64,
    pub replayed_rows: AtomicU64,
    /// Set while the database has not answered since start-up (rows go to the spool).
    pub db_pending: std::sync::atomic::AtomicBool,
    /// Current spool size (gauge).
    pub spool_bytes: AtomicU64,
    pub spool_files: AtomicU64,
    /// Rows lost because at the shutdown deadline neither the database nor the spool took them.
    pub dropped_rows: AtomicU64,
    /// Wall-clock ms of the writer loop's last turn (the watchdog's progress signal).
    pub heartbeat_ms: std::sync::atomic::AtomicI64,
    /// Wall-clock ms since which database writes fail (0: the last write succeeded).
    pub failing_since_ms: std::sync::atomic::AtomicI64,
    /// Rows per successful write and its duration in seconds (metrics; unset: not recorded).
    pub histograms: std::sync::OnceLock<(metrics::Histogram, metrics::Histogram)>,
    /// Per row of market data: from its frame's receive time to its commit.
    pub frame_to_commit: LatencyHistogram,
}

impl WriterStats {
    /// Rows handed to the database for `table` so far.
    pub fn rows_of(&self, table: Table) -> u64 {
        self.rows[table.index()].load(Ordering::Relaxed)
    }
}

/// Counters of a run, for the demo summary, tests, metrics and the watchdog.
#[derive(Debug, Default)]
pub struct RunStats {
    pub writer: Arc<WriterStats>,
    /// Per symbol recorded now (symbols listed later join, delisted ones leave).
    pub workers: Arc<Feeds>,
    pub backfill: Arc<BackfillStats>,
    /// The REST client's counters (market listing and backfill).
    pub rest: Option<Arc<RestStats>>,
    /// Worker supervisors still running (one per connection until shutdown).
    pub supervisors_alive: Arc<std::sync::atomic::AtomicUsize>,
    /// Connections open or reconnecting (one worker each): the venue's plan, plus those
    /// split off or opened for instruments listed later, less those whose symbols all left.
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    /// Observes the writer's queue without keeping it open.
    pub(crate) queue: Option<crate::store::queue::QueueGauge>,
    /// Where `/metrics` and `/healthz` are served (unset: `[metrics] listen` is empty).
    pub metrics_addr: std::sync::OnceLock<std::net::SocketAddr>,
    /// The shutdown deadline of this run.
    pub deadline: Arc<deadline::Deadline>,
    /// Configuration reloads (SIGHUP): applied, refused.
    pub reloads: [std::sync::atomic::AtomicU64; 2],
    /// The archive and the disk budget.
    pub archive: Arc<ArchiveStats>,
}

/// The archive's counters (`[archive] url`) and the disk it keeps within its budget.
#[derive(Debug, Default)]
pub struct ArchiveStats {
    pub parts: AtomicU64,
    pub rows: AtomicU64,
    pub bytes: AtomicU64,
    /// Parts written again for late rows.
    pub rewritten: AtomicU64,
    /// Rounds that failed (and were retried).
    pub failures: AtomicU64,
    /// Archived rows deleted from the database.
    pub deleted_rows: AtomicU64,
    /// When the rounds began failing, ms (0: the last one succeeded).
    pub failing_since_ms: std::sync::atomic::AtomicI64,
    /// The last failure, for `/healthz`.
    pub last_error: std::sync::Mutex<String>,
    /// How far behind the archive is: from the end of the oldest period not archived yet to
    /// when it was due (settle_s after it ended), ms; 0 when none is due.
    pub lag_ms: std::sync::atomic::AtomicI64,
    /// Bytes the database takes (SQLite: the file's pages; PostgreSQL: the database).
    pub database_bytes: AtomicU64,
    /// Whether the disk was below its budget with no archived rows left to delete.
    pub budget_exhausted: std::sync::atomic::AtomicBool,
    /// Whether `[archive] url` is set (a round runs).
    pub enabled: std::sync::atomic::AtomicBool,
}

impl RunStats {
    /// Events waiting in the writer's queue now.
    pub fn queue_depth(&self) -> usize {
        self.queue.as_ref().map_or(0, |q| q.depth())
    }

    /// Bytes of the events waiting in the writer's queue now (bounded by `writer.queue_bytes`).
    pub fn queue_bytes(&self) -> usize {
        self.queue.as_ref().map_or(0, |q| q.bytes())
    }
}

/// The symbols being recorded and their counters.
#[derive(Debug, Default)]
pub struct Feeds(std::sync::RwLock<BTreeMap<String, Arc<WorkerStats>>>);

impl Feeds {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<WorkerStats>>> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<WorkerStats>>> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, symbol: &str) -> Option<Arc<WorkerStats>> {
        self.read().get(symbol).cloned()
    }

    /// Every symbol's counters, by symbol.
    pub fn all(&self) -> Vec<(String, Arc<WorkerStats>)> {
        self.read()
            .iter()
            .map(|(s, w)| (s.clone(), w.clone()))
            .collect()
    }

    pub fn symbols(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    pub fn insert(&self, symbol: &str, w: Arc<WorkerStats>) {
        self.write().insert(symbol.to_string(), w);
    }

    pub fn remove(&self, symbol: &str) {
        self.write().remove(symbol);
    }
}

impl RunStats {
    /// The counters of `symbol`.
    ///
    /// # Panics
    /// When the run does not record `symbol` (for tests, which know what they record).
    pub fn worker(&self, symbol: &str) -> Arc<WorkerStats> {
        match self.workers.get(symbol) {
            Some(w) => w,
            None => panic!("{symbol} is not recorded"),
        }
    }

    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Counters of one symbol; shared so tests, the demo and metrics can read them. What happens
/// to a connection (connects, reconnects, skipped frames) counts for every symbol it carries.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub frames: AtomicU64,
    pub events: AtomicU64,
    /// Trades among `events` (what the database must end up holding, duplicates aside).
    pub trades: AtomicU64,
    pub decode_errors: AtomicU64,
    /// Skipped frames per `DecodeError::KINDS` entry.
    pub decode_errors_by_kind: [AtomicU64; 5],
    /// Messages dropped by the venue's validation, per `validate::Invalid::KINDS` entry.
    pub invalid_by_kind: [AtomicU64; 5],
    /// Rows kept though the venue's clock was further than `clock_skew_s` from ours.
    pub clock_skew: AtomicU64,
    /// Times the venue's trade ids went backwards (renumbered).
    pub id_resets: AtomicU64,
    pub connects: AtomicU64,
    pub pings_answered: AtomicU64,
    /// Times the supervisor restarted this worker after a panic.
    pub restarts: AtomicU64,
    /// Subscriptions sent again because their channel fell silent.
    pub resubscribes: AtomicU64,
    /// Full books not stored because they equal the previous one (`depth_dedupe`).
    pub books_deduped: AtomicU64,
    /// Book streams whose update sequence broke (recorded in `gaps`, re-synced).
    pub book_breaks: AtomicU64,
    /// Requests the venue refused, by [`crate::venue::RefusalKind::index`].
    pub refusals_by_kind: [AtomicU64; 4],
    /// Wall-clock ms of the last frame that carried market data (0: none yet).
    pub last_data_ms: std::sync::atomic::AtomicI64,
    /// Wall-clock ms of the last message of this symbol dropped as invalid (0: none yet).
    pub last_invalid_ms: std::sync::atomic::AtomicI64,
    /// Per stream: messages (events) received and when the last one came.
    pub channels: std::sync::Mutex<HashMap<StreamKey, ChannelStats>>,
    /// Connections that ended (or never opened) and were retried, by reason class.
    pub reconnects: std::sync::Mutex<BTreeMap<&'static str, u64>>,
}

#[derive(Debug, Clone, Copy)]
pub struct ChannelStats {
    pub messages: u64,
    pub last: Instant,
}

/// Every reason class a connection's end is counted under (`mdrec_reconnects_total`): all are
/// exported from the start, at zero, so an alert on one never sees "no data".
pub const RECONNECT_REASONS: [&str; 10] = [
    "connect_failed",
    "connect_timeout",
    "silence",
    "read_error",
    "cut",
    "closed_by_venue",
    "send_error",
    "panic",
    "writer_stopped",
    "other",
];

impl WorkerStats {
    /// Counts a connection that ended (or never opened) by its reason class.
    pub fn reconnect(&self, class: &'static str) {
        *lock(&self.reconnects).entry(class).or_insert(0) += 1;
    }
}

#[derive(Debug, Default)]
pub struct BackfillStats {
    /// Holes checked (one per check, whatever it covered).
    pub runs: AtomicU64,
    /// Checks that failed (REST or history unreachable) and were put back for later.
    pub failures: AtomicU64,
    /// Trades fetched over REST and handed to the writer (most are duplicates of stored ones).
    pub trades_fetched: AtomicU64,
    /// Trades inside holes, i.e. not delivered by any socket.
    pub trades_recovered: AtomicU64,
    /// Final bars written for holes (from REST or websocket history).
    pub bars_recovered: AtomicU64,
    /// Websocket history requests made because REST did not reach back far enough.
    pub history_requests: AtomicU64,
    pub gaps_filled: AtomicU64,
    pub gaps_unrecoverable: AtomicU64,
    /// REST and history rows dropped by the venue's validation, per `Invalid::KINDS` entry.
    pub invalid_by_kind: [AtomicU64; 5],
}

#[derive(Debug, Default)]
pub struct RestStats {
    pub requests: AtomicU64,
    pub ok: AtomicU64,
    pub throttled: AtomicU64,
    pub failed: AtomicU64,
    /// Attempts per (endpoint path, outcome): ok, throttled, http_error, transport_error,
    /// bad_body (a 200 whose body was an error envelope or malformed).
    pub by_endpoint: std::sync::Mutex<std::collections::BTreeMap<(String, &'static str), u64>>,
}

impl RestStats {
    /// Counts one attempt's outcome for `path` (its query string dropped).
    pub fn outcome(&self, path: &str, outcome: &'static str) {
        let endpoint = path.split('?').next().unwrap_or(path).to_string();
        *self
            .by_endpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((endpoint, outcome))
            .or_insert(0) += 1;
    }
}

/// Upper bounds, in seconds, of the frame-to-commit histogram's buckets.
pub const COMMIT_LATENCY_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0,
];

/// How long rows waited from the frame that carried them being read to the commit that
/// stored them: counts per bucket (the last is beyond every bound), kept as plain counters
/// (a per-row sample store would grow between scrapes).
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; COMMIT_LATENCY_BUCKETS.len() + 1],
    sum_us: AtomicU64,
}

/// One batch's latencies, summed before they are added to the shared counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct LatencyCounts {
    pub buckets: [u64; COMMIT_LATENCY_BUCKETS.len() + 1],
    pub sum_us: u64,
}

impl LatencyCounts {
    pub fn record_us(&mut self, us: i64) {
        let us = us.max(0);
        let s = us as f64 / 1e6;
        let i = COMMIT_LATENCY_BUCKETS.partition_point(|b| *b < s);
        self.buckets[i] += 1;
        self.sum_us = self.sum_us.saturating_add(us as u64);
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The bucket bound under which a share `q` of the rows fall (None: no rows; infinity:
    /// beyond the last bound).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let want = (q * n as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.buckets.iter().enumerate() {
            seen += c;
            if seen >= want {
                return Some(
                    COMMIT_LATENCY_BUCKETS
                        .get(i)
                        .copied()
                        .unwrap_or(f64::INFINITY),
                );
            }
        }
        Some(f64::INFINITY)
    }

    /// What happened between `earlier` and this reading.
    pub fn since(&self, earlier: &LatencyCounts) -> LatencyCounts {
        let mut d = *self;
        for (b, e) in d.buckets.iter_mut().zip(earlier.buckets) {
            *b = b.saturating_sub(e);
        }
        d.sum_us = d.sum_us.saturating_sub(earlier.sum_us);
        d
    }
}

impl LatencyHistogram {
    pub fn add(&self, c: &LatencyCounts) {
        use std::sync::atomic::Ordering::Relaxed;
        for (b, n) in self.buckets.iter().zip(c.buckets) {
            if n > 0 {
                b.fetch_add(n, Relaxed);
            }
        }
        self.sum_us.fetch_add(c.sum_us, Relaxed);
    }

    pub fn read(&self) -> LatencyCounts {
        use std::sync::atomic::Ordering::Relaxed;
        let mut c = LatencyCounts::default();
        for (o, b) in c.buckets.iter_mut().zip(&self.buckets) {
            *o = b.load(Relaxed);
        }
        c.sum_us = self.sum_us.load(Relaxed);
        c
    }

    /// The Prometheus text of this histogram (cumulative buckets, sum, count).
    pub fn render(&self, name: &str, help: &str) -> String {
        use std::fmt::Write as _;
        let c = self.read();
        let mut out = format!("# HELP {name} {help}\n# TYPE {name} histogram\n");
        let mut cum = 0;
        for (i, n) in c.buckets.iter().enumerate() {
            cum += n;
            let le = COMMIT_LATENCY_BUCKETS
                .get(i)
                .map_or("+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cum}");
        }
        let _ = writeln!(out, "{name}_sum {}", c.sum_us as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {cum}");
        out
    }
}

#[cfg(test)]
mod latency_tests {
    use super::*;

    #[test]
    fn latencies_fall_into_buckets_and_quantiles_read_back() {
        let mut c = LatencyCounts::default();
        for us in [1_000, 4_000, 60_000, 60_000, 2_000_000, 40_000_000] {
            c.record_us(us);
        }
        assert_eq!(c.count(), 6);
        assert_eq!(c.quantile(0.5), Some(0.1), "3rd of 6 in (0.05, 0.1]");
        assert_eq!(c.quantile(0.99), Some(f64::INFINITY));
        let h = LatencyHistogram::default();
        h.add(&c);
        h.add(&c);
        let twice = h.read();
        assert_eq!(twice.since(&c).count(), 6);
        let text = h.render("x_seconds", "help");
        assert!(
            text.contains("x_seconds_bucket{le=\"0.005\"} 4\n"),
            "{text}"
        );
        assert!(text.contains("x_seconds_bucket{le=\"+Inf\"} 12\n"));
        assert!(text.contains("x_seconds_count 12\n"));
    }
}
