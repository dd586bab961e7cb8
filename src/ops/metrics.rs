//! `/metrics` (Prometheus text format) and `/healthz`, served at `[metrics] listen`.
//!
//! The recorder's own counters (atomics in `RunStats`) are the source of truth; at each scrape
//! they are copied into a per-run Prometheus recorder (no global state, so several recorders
//! can share a process, as tests do) and rendered. Only the write histograms are recorded as
//! writes happen.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::model::now_ms;
use crate::stats::{RunStats, WorkerStats};
use crate::store::Store;

static META: Metadata<'static> = Metadata::new("mdrec", Level::INFO, Some("mdrec::ops::metrics"));

const BATCH_ROWS_BUCKETS: [f64; 10] = [
    1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];
const WRITE_SECONDS_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Name, unit, help: every metric this module exports.
const DESCRIPTIONS: [(&str, Option<Unit>, &str); 48] = [
    (
        "mdrec_frames_received_total",
        None,
        "Websocket frames read, per symbol.",
    ),
    (
        "mdrec_messages_received_total",
        None,
        "Market-data messages decoded, per symbol and channel.",
    ),
    (
        "mdrec_decode_errors_total",
        None,
        "Frames skipped as undecodable, per symbol and kind.",
    ),
    (
        "mdrec_connects_total",
        None,
        "Websocket connections opened, per symbol.",
    ),
    (
        "mdrec_reconnects_total",
        None,
        "Connections that ended or failed and were retried, per symbol and reason.",
    ),
    (
        "mdrec_resubscribes_total",
        None,
        "Subscriptions sent again because their channel fell silent.",
    ),
    ("mdrec_pings_answered_total", None, "Venue pings answered."),
    (
        "mdrec_worker_restarts_total",
        None,
        "Worker tasks restarted after a panic.",
    ),
    (
        "mdrec_last_message_age_seconds",
        Some(Unit::Seconds),
        "Seconds since the last message, per symbol and channel.",
    ),
    (
        "mdrec_rows_written_total",
        None,
        "Rows written to the database, per table.",
    ),
    ("mdrec_write_batch_rows", None, "Rows per database write."),
    (
        "mdrec_write_duration_seconds",
        Some(Unit::Seconds),
        "Duration of a database write.",
    ),
    (
        "mdrec_write_errors_total",
        None,
        "Database writes that failed or timed out, per error class (unavailable, timeout, data, permission, schema).",
    ),
    (
        "mdrec_database_up",
        None,
        "1 while database writes succeed, 0 while they fail (rows go to the spool).",
    ),
    (
        "mdrec_queue_depth",
        None,
        "Events waiting in the writer's queue.",
    ),
    (
        "mdrec_queue_bytes",
        Some(Unit::Bytes),
        "Bytes of the events waiting in the writer's queue (bounded by writer.queue_bytes).",
    ),
    (
        "mdrec_spool_bytes",
        Some(Unit::Bytes),
        "Bytes in the disk spool.",
    ),
    ("mdrec_spool_files", None, "Batches in the disk spool."),
    (
        "mdrec_spooled_rows_total",
        None,
        "Rows written to the disk spool.",
    ),
    (
        "mdrec_replayed_rows_total",
        None,
        "Rows replayed from the spool into the database.",
    ),
    (
        "mdrec_dropped_rows_total",
        None,
        "Rows lost at the shutdown deadline (neither stored nor spooled).",
    ),
    ("mdrec_gaps", None, "Rows in the gaps table, per status."),
    (
        "mdrec_config_reloads_total",
        None,
        "Configuration reloads (SIGHUP), per result: applied, or refused (the file did not validate; the running configuration kept).",
    ),
    (
        "mdrec_rejected_rows_total",
        None,
        "Rows not stored as market data, per reason (data_error: refused by the database; conflict: key stored with other content), kept in rejected_rows.",
    ),
    (
        "mdrec_invalid_messages_total",
        None,
        "Market-data messages failing the venue's validation (never stored), per symbol and kind.",
    ),
    (
        "mdrec_trade_id_resets_total",
        None,
        "Times a symbol's trade ids went backwards on newer trades (the venue renumbered), per symbol.",
    ),
    (
        "mdrec_book_breaks_total",
        None,
        "Times a book stream's update sequence broke (updates lost; recorded in gaps and re-synced), per symbol.",
    ),
    (
        "mdrec_venue_refusals_total",
        None,
        "Subscription requests the venue refused, per symbol and kind (rate_limited: sent again after a back-off; too_many_streams: moved to another connection; bad_request: never sent again).",
    ),
    (
        "mdrec_clock_skew_total",
        None,
        "Live rows kept whose exchange time was further than clock_skew_s from the receive time, per symbol.",
    ),
    (
        "mdrec_rest_requests_total",
        None,
        "REST request attempts, per endpoint and outcome.",
    ),
    (
        "mdrec_rest_bad_bodies_total",
        None,
        "REST answers with an error envelope or a malformed body, per endpoint.",
    ),
    (
        "mdrec_backfill_rows_total",
        None,
        "Rows backfill recovered into holes, per table.",
    ),
    (
        "mdrec_backfill_fetched_rows_total",
        None,
        "Rows backfill fetched (mostly duplicates of stored ones), per table.",
    ),
    (
        "mdrec_backfill_checks_total",
        None,
        "Holes checked by backfill.",
    ),
    (
        "mdrec_backfill_failures_total",
        None,
        "Backfill checks that failed and were retried.",
    ),
    (
        "mdrec_archive_parts_total",
        None,
        "Archive parts written, read back, matched and published (late periods written again included).",
    ),
    (
        "mdrec_archive_rows_total",
        None,
        "Rows in the archive parts written.",
    ),
    (
        "mdrec_archive_bytes_total",
        None,
        "Bytes of the archive parts written.",
    ),
    (
        "mdrec_archive_rewritten_total",
        None,
        "Archive parts written again for rows that arrived after their period was archived.",
    ),
    (
        "mdrec_archive_failures_total",
        None,
        "Archive rounds that failed (object store down, refusing, slow; a part that did not read back equal) and were retried.",
    ),
    (
        "mdrec_archive_failing",
        None,
        "1 while the archive's rounds fail, else 0.",
    ),
    (
        "mdrec_archive_lag_seconds",
        None,
        "How long the oldest period not archived yet has been due (settle_s after it ended); 0 when none is.",
    ),
    (
        "mdrec_archive_period_seconds",
        None,
        "[archive] period_s (0: no archive).",
    ),
    (
        "mdrec_archive_deleted_rows_total",
        None,
        "Archived rows deleted from the database (db_keep_s, or early for the disk budget).",
    ),
    (
        "mdrec_database_bytes",
        Some(Unit::Bytes),
        "Bytes the database takes (SQLite: the file; PostgreSQL: the database), as of the last archive round.",
    ),
    (
        "mdrec_disk_free_bytes",
        Some(Unit::Bytes),
        "Free bytes on the fullest disk of the database and the spool.",
    ),
    (
        "mdrec_disk_min_free_bytes",
        Some(Unit::Bytes),
        "[storage] min_free_bytes: below it, archived rows are deleted early.",
    ),
    (
        "mdrec_disk_budget_exhausted",
        None,
        "1 while the disk is below its budget with no archived rows left to delete.",
    ),
];

pub struct Exporter {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    Key::from_parts(
        name,
        labels
            .iter()
            .map(|(k, v)| Label::new(*k, v.to_string()))
            .collect::<Vec<_>>(),
    )
}

impl Exporter {
    pub fn new() -> anyhow::Result<Exporter> {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("mdrec_write_batch_rows".into()),
                &BATCH_ROWS_BUCKETS,
            )?
            .set_buckets_for_metric(
                Matcher::Full("mdrec_write_duration_seconds".into()),
                &WRITE_SECONDS_BUCKETS,
            )?
            .build_recorder();
        for (name, unit, help) in DESCRIPTIONS {
            let n = name.into();
            if name.ends_with("_total") {
                recorder.describe_counter(n, unit, help.into());
            } else if name.starts_with("mdrec_write_") {
                recorder.describe_histogram(n, unit, help.into());
            } else {
                recorder.describe_gauge(n, unit, help.into());
            }
        }
        let handle = recorder.handle();
        Ok(Exporter { recorder, handle })
    }

    fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        self.recorder.register_counter(&key(name, labels), &META)
    }

    fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        self.recorder.register_gauge(&key(name, labels), &META)
    }

    /// Handles the writer records each write into: rows, seconds.
    pub fn write_histograms(&self) -> (Histogram, Histogram) {
        (
            self.recorder
                .register_histogram(&key("mdrec_write_batch_rows", &[]), &META),
            self.recorder
                .register_histogram(&key("mdrec_write_duration_seconds", &[]), &META),
        )
    }

    fn c(&self, name: &'static str, labels: &[(&'static str, &str)], v: u64) {
        self.counter(name, labels).absolute(v);
    }

    fn g(&self, name: &'static str, labels: &[(&'static str, &str)], v: f64) {
        self.gauge(name, labels).set(v);
    }

    /// Copies the run's counters in and renders the Prometheus text.
    pub async fn render(&self, stats: &RunStats, store: &Store, config: &Config) -> String {
        for (name, w) in stats.workers.all() {
            self.copy_symbol(&name, &w);
        }
        self.copy_writer(stats);
        self.copy_backfill(stats);
        self.copy_archive(stats, config);
        // gaps by status: the table is small and indexed by its key; a slow database must
        // not hold the scrape
        let counts = tokio::time::timeout(Duration::from_secs(1), store.gap_counts()).await;
        if let Ok(Ok(rows)) = counts {
            for status in ["open", "filled", "unrecoverable"] {
                let n = rows.iter().find(|r| r.0 == status).map_or(0, |r| r.1);
                self.g("mdrec_gaps", &[("status", status)], n as f64);
            }
        }
        self.handle.run_upkeep();
        let mut text = self.handle.render();
        text.push_str(&stats.writer.frame_to_commit.render(
            "mdrec_frame_to_commit_seconds",
            "Seconds from reading the frame that carried a market-data row to the commit that stored it, per row.",
        ));
        text
    }

    /// One symbol's counters: frames, connections, errors by kind, channels, reconnects.
    fn copy_symbol(&self, symbol: &str, w: &WorkerStats) {
        let s = [("symbol", symbol)];
        self.c("mdrec_frames_received_total", &s, load(&w.frames));
        self.c("mdrec_connects_total", &s, load(&w.connects));
        self.c("mdrec_resubscribes_total", &s, load(&w.resubscribes));
        self.c("mdrec_pings_answered_total", &s, load(&w.pings_answered));
        self.c("mdrec_worker_restarts_total", &s, load(&w.restarts));
        let kinds = |name, kinds: &[&'static str], counts: &[std::sync::atomic::AtomicU64]| {
            for (kind, n) in kinds.iter().zip(counts) {
                self.c(name, &[("symbol", symbol), ("kind", kind)], load(n));
            }
        };
        let decode = &crate::venue::DecodeError::KINDS;
        kinds(
            "mdrec_decode_errors_total",
            decode,
            &w.decode_errors_by_kind,
        );
        let invalid = &crate::venue::validate::Invalid::KINDS;
        kinds("mdrec_invalid_messages_total", invalid, &w.invalid_by_kind);
        self.c("mdrec_clock_skew_total", &s, load(&w.clock_skew));
        self.c("mdrec_trade_id_resets_total", &s, load(&w.id_resets));
        self.c("mdrec_book_breaks_total", &s, load(&w.book_breaks));
        let refusals = &crate::venue::RefusalKind::KINDS;
        kinds("mdrec_venue_refusals_total", refusals, &w.refusals_by_kind);
        let channels: Vec<_> = crate::runtime::lock(&w.channels)
            .iter()
            .map(|(k, v)| (k.name(), *v))
            .collect();
        for (channel, st) in channels {
            let l = [("symbol", symbol), ("channel", channel.as_str())];
            self.c("mdrec_messages_received_total", &l, st.messages);
            let age = st.last.elapsed().as_secs_f64();
            self.g("mdrec_last_message_age_seconds", &l, age);
        }
        for (reason, n) in reconnects(w) {
            let l = [("symbol", symbol), ("reason", reason)];
            self.c("mdrec_reconnects_total", &l, n);
        }
    }

    /// The writer's counters and gauges: rows per table, errors per class, rejected rows,
    /// reloads, the spool, the database and the queue.
    fn copy_writer(&self, stats: &RunStats) {
        let wr = &stats.writer;
        // rejected rows are counted by reason below
        for t in crate::model::Table::ALL
            .into_iter()
            .filter(|t| *t != crate::model::Table::RejectedRows)
        {
            let n = load(&wr.rows[t.index()]);
            self.c("mdrec_rows_written_total", &[("table", t.as_str())], n);
        }
        for class in crate::store::ErrorClass::ALL {
            let n = load(&wr.errors_by_class[class as usize]);
            self.c("mdrec_write_errors_total", &[("class", class.as_str())], n);
        }
        let rejected = [
            ("data_error", &wr.rejected_rows),
            ("conflict", &wr.conflicts),
        ];
        for (reason, n) in rejected {
            self.c("mdrec_rejected_rows_total", &[("reason", reason)], load(n));
        }
        for (result, n) in ["applied", "refused"].iter().zip(&stats.reloads) {
            self.c("mdrec_config_reloads_total", &[("result", result)], load(n));
        }
        self.c("mdrec_spooled_rows_total", &[], load(&wr.spooled_rows));
        self.c("mdrec_replayed_rows_total", &[], load(&wr.replayed_rows));
        self.c("mdrec_dropped_rows_total", &[], load(&wr.dropped_rows));
        self.g("mdrec_spool_bytes", &[], load(&wr.spool_bytes) as f64);
        self.g("mdrec_spool_files", &[], load(&wr.spool_files) as f64);
        let up = wr.failing_since_ms.load(Ordering::Relaxed) == 0;
        self.g("mdrec_database_up", &[], if up { 1.0 } else { 0.0 });
        self.g("mdrec_queue_depth", &[], stats.queue_depth() as f64);
        self.g("mdrec_queue_bytes", &[], stats.queue_bytes() as f64);
    }

    /// Backfill's counters and the REST client's requests per endpoint and outcome.
    /// The archive's counters, and the disk budget (read now).
    fn copy_archive(&self, stats: &RunStats, config: &Config) {
        let a = &stats.archive;
        self.c("mdrec_archive_parts_total", &[], load(&a.parts));
        self.c("mdrec_archive_rows_total", &[], load(&a.rows));
        self.c("mdrec_archive_bytes_total", &[], load(&a.bytes));
        self.c("mdrec_archive_rewritten_total", &[], load(&a.rewritten));
        self.c("mdrec_archive_failures_total", &[], load(&a.failures));
        self.c(
            "mdrec_archive_deleted_rows_total",
            &[],
            load(&a.deleted_rows),
        );
        let failing = a.failing_since_ms.load(Ordering::Relaxed) != 0;
        self.g("mdrec_archive_failing", &[], f64::from(u8::from(failing)));
        let lag = a.lag_ms.load(Ordering::Relaxed) as f64 / 1000.0;
        self.g("mdrec_archive_lag_seconds", &[], lag);
        let on = a.enabled.load(Ordering::Relaxed);
        let period = if on {
            config.archive.period_s as f64
        } else {
            0.0
        };
        self.g("mdrec_archive_period_seconds", &[], period);
        let db = load(&a.database_bytes) as f64;
        self.g("mdrec_database_bytes", &[], db);
        let dirs = crate::archive::watched_dirs(config);
        if let Some(free) = dirs
            .iter()
            .filter_map(|d| crate::archive::free_bytes(d))
            .min()
        {
            self.g("mdrec_disk_free_bytes", &[], free as f64);
        }
        let budget = config.storage.min_free_bytes as f64;
        self.g("mdrec_disk_min_free_bytes", &[], budget);
        let exhausted = a.budget_exhausted.load(Ordering::Relaxed);
        self.g(
            "mdrec_disk_budget_exhausted",
            &[],
            f64::from(u8::from(exhausted)),
        );
    }

    fn copy_backfill(&self, stats: &RunStats) {
        let b = &stats.backfill;
        self.c("mdrec_backfill_checks_total", &[], load(&b.runs));
        self.c("mdrec_backfill_failures_total", &[], load(&b.failures));
        let trades = [("table", "trades")];
        self.c(
            "mdrec_backfill_rows_total",
            &trades,
            load(&b.trades_recovered),
        );
        let klines = [("table", "klines")];
        self.c(
            "mdrec_backfill_rows_total",
            &klines,
            load(&b.bars_recovered),
        );
        self.c(
            "mdrec_backfill_fetched_rows_total",
            &trades,
            load(&b.trades_fetched),
        );
        let Some(rest) = &stats.rest else {
            return;
        };
        let by: Vec<_> = crate::runtime::lock(&rest.by_endpoint)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        for ((endpoint, outcome), n) in by {
            if outcome == "bad_body" {
                self.c("mdrec_rest_bad_bodies_total", &[("endpoint", &endpoint)], n);
            } else {
                let l = [("endpoint", endpoint.as_str()), ("outcome", outcome)];
                self.c("mdrec_rest_requests_total", &l, n);
            }
        }
    }
}

fn load(a: &std::sync::atomic::AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// Reconnects by reason: every known reason (at zero until it happens), then any other.
fn reconnects(w: &WorkerStats) -> Vec<(&'static str, u64)> {
    let counted = crate::runtime::lock(&w.reconnects);
    let known = crate::stats::RECONNECT_REASONS;
    known
        .iter()
        .map(|r| (*r, counted.get(r).copied().unwrap_or(0)))
        .chain(
            counted
                .iter()
                .filter(|(k, _)| !known.contains(k))
                .map(|(k, v)| (*k, *v)),
        )
        .collect()
}

/// What `/healthz` found.
#[derive(Debug, serde::Serialize)]
pub struct Health {
    pub healthy: bool,
    pub problems: Vec<String>,
    /// Per configured symbol: seconds since its last market data (None: none yet).
    pub last_data_s: std::collections::BTreeMap<String, Option<f64>>,
}

/// Healthy when database writes succeed and every configured symbol received data within
/// its silence timeout.
pub fn health(stats: &RunStats, config: &Config) -> Health {
    let now = now_ms();
    let mut problems = Vec::new();
    let failing = stats.writer.failing_since_ms.load(Ordering::Relaxed);
    if stats.writer.db_pending.load(Ordering::Relaxed) {
        problems.push(format!(
            "database: not answering since start-up {:.1} s ago (recording into the spool)",
            (now - failing) as f64 / 1000.0
        ));
    } else if failing != 0 {
        problems.push(format!(
            "database: writes failing for {:.1} s (rows go to the spool)",
            (now - failing) as f64 / 1000.0
        ));
    }
    let archive_failing = stats.archive.failing_since_ms.load(Ordering::Relaxed);
    if archive_failing != 0 {
        problems.push(format!(
            "archive: failing for {:.0} s, retrying (nothing is deleted that is not archived): {}",
            (now - archive_failing) as f64 / 1000.0,
            crate::runtime::lock(&stats.archive.last_error)
        ));
    }
    if stats.archive.budget_exhausted.load(Ordering::Relaxed) {
        problems.push(format!(
            "disk: below its budget ({} bytes free wanted) with no archived rows left to delete",
            config.storage.min_free_bytes
        ));
    }
    let limit = config.connection.silence_timeout().as_secs_f64();
    let mut last_data_s = std::collections::BTreeMap::new();
    for symbol in stats.workers.symbols() {
        let last = stats
            .workers
            .get(&symbol)
            .map(|w| w.last_data_ms.load(Ordering::Relaxed))
            .filter(|&t| t > 0);
        let age = last.map(|t| (now - t).max(0) as f64 / 1000.0);
        let stale = age.is_none_or(|a| a > limit);
        // messages still arrive but none is kept: say so, and why
        let dropped = stats.workers.get(&symbol).and_then(|w| {
            let t = w.last_invalid_ms.load(Ordering::Relaxed);
            let recent = t > 0 && (now - t) as f64 / 1000.0 <= limit;
            let kinds: Vec<&str> = crate::venue::validate::Invalid::KINDS
                .iter()
                .zip(&w.invalid_by_kind)
                .filter(|(_, n)| n.load(Ordering::Relaxed) > 0)
                .map(|(k, _)| *k)
                .collect();
            recent.then(|| kinds.join(", "))
        });
        match (age, dropped) {
            (_, Some(kinds)) if stale => problems.push(format!(
                "{symbol}: receiving, all dropped as invalid ({kinds})"
            )),
            (None, _) => problems.push(format!("{symbol}: no market data received yet")),
            (Some(a), _) if a > limit => problems.push(format!(
                "{symbol}: no market data for {a:.1} s (silence timeout {limit:.0} s)"
            )),
            _ => {}
        }
        last_data_s.insert(symbol.clone(), age);
    }
    Health {
        healthy: problems.is_empty(),
        problems,
        last_data_s,
    }
}

struct Ctx {
    exporter: Exporter,
    stats: Arc<RunStats>,
    config: Arc<Config>,
    store: Arc<Store>,
}

async fn metrics(State(ctx): State<Arc<Ctx>>) -> Response {
    let body = ctx
        .exporter
        .render(&ctx.stats, &ctx.store, &ctx.config)
        .await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn healthz(State(ctx): State<Arc<Ctx>>) -> Response {
    let h = health(&ctx.stats, &ctx.config);
    let status = if h.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(h)).into_response()
}

/// Binds `listen` and serves until `shutdown`; returns the bound address.
/// The metrics listener, bound before anything else starts (a busy port stops start-up with
/// nothing created).
pub async fn bind(listen: &str) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context;
    tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the metrics listener on {listen}"))
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    exporter: Exporter,
    stats: Arc<RunStats>,
    config: Arc<Config>,
    store: Arc<Store>,
    shutdown: CancellationToken,
    tasks: &tokio_util::task::TaskTracker,
) -> anyhow::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    let ctx = Arc::new(Ctx {
        exporter,
        stats,
        config,
        store,
    });
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .route("/healthz", axum::routing::get(healthz))
        .with_state(ctx);
    tasks.spawn(async move {
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "metrics server stopped");
        }
    });
    tracing::info!(%addr, "serving /metrics and /healthz");
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(symbols: &[&str]) -> Config {
        let list: Vec<String> = symbols.iter().map(|s| format!("{s:?}")).collect();
        let c = crate::venue::registry::parse_config(&format!(
            "[venue]\nkind = \"cdc-v1\"\n[record]\nsymbols = [{}]\n[connection]\nsilence_timeout_s = 10\n",
            list.join(", ")
        ))
        .unwrap();
        crate::venue::registry::check_config(&c).unwrap();
        c
    }

    #[test]
    fn health_needs_database_writes_and_fresh_data_for_every_symbol() {
        let cfg = config(&["btcusdt", "ethusdt"]);
        let stats = RunStats::default();
        for s in ["btcusdt", "ethusdt"] {
            stats.workers.insert(s, Arc::default());
        }
        let h = health(&stats, &cfg);
        assert!(!h.healthy);
        assert_eq!(h.problems.len(), 2, "no data yet: {:?}", h.problems);
        for (_, w) in stats.workers.all() {
            w.last_data_ms.store(now_ms() - 2_000, Ordering::Relaxed);
        }
        assert!(health(&stats, &cfg).healthy);
        stats
            .worker("ethusdt")
            .last_data_ms
            .store(now_ms() - 11_000, Ordering::Relaxed);
        let h = health(&stats, &cfg);
        assert_eq!(h.problems.len(), 1);
        assert!(
            h.problems[0].starts_with("ethusdt: no market data for 11"),
            "{:?}",
            h.problems
        );
        stats
            .worker("ethusdt")
            .last_data_ms
            .store(now_ms(), Ordering::Relaxed);
        stats
            .writer
            .failing_since_ms
            .store(now_ms() - 3_000, Ordering::Relaxed);
        let h = health(&stats, &cfg);
        assert!(!h.healthy);
        assert!(
            h.problems[0].starts_with("database: writes failing"),
            "{:?}",
            h.problems
        );
    }

    #[test]
    fn every_exported_name_follows_prometheus_conventions() {
        for (name, unit, _) in DESCRIPTIONS {
            assert!(name.starts_with("mdrec_"), "{name}");
            assert!(
                name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{name}"
            );
            if unit == Some(Unit::Seconds) {
                assert!(name.ends_with("_seconds"), "{name}");
            }
            if unit == Some(Unit::Bytes) {
                assert!(name.ends_with("_bytes"), "{name}");
            }
        }
    }
}
