//! The writer: the only task that touches the database.
//!
//! It drains the bounded event queue into a [`Batch`] and flushes when the batch holds
//! `batch_rows` rows or `flush_interval_ms` after its first row, one transaction per flush.
//! A failed flush is retried with backoff and the batch is kept; meanwhile the queue fills
//! and the workers wait on it (backpressure, nothing dropped). When every sender is gone
//! (shutdown), it flushes what is left and returns.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Batch, Store};
use crate::config::WriterConfig;
use crate::model::Event;

/// Rows handed to the database, per table (after in-batch merging; duplicates of stored rows
/// are counted here but not stored twice).
#[derive(Debug, Default)]
pub struct WriterStats {
    pub trades: AtomicU64,
    pub klines: AtomicU64,
    pub book_snapshots: AtomicU64,
    pub book_deltas: AtomicU64,
    pub tickers: AtomicU64,
    pub sessions: AtomicU64,
    pub flushes: AtomicU64,
    pub flush_errors: AtomicU64,
}

impl WriterStats {
    fn record(&self, b: &Batch) {
        let add = |c: &AtomicU64, n: usize| c.fetch_add(n as u64, Ordering::Relaxed);
        add(&self.trades, b.trades.len());
        add(&self.klines, b.klines.len());
        add(&self.book_snapshots, b.snapshots.len());
        add(&self.book_deltas, b.deltas.len());
        add(&self.tickers, b.tickers.len());
        add(&self.sessions, b.sessions.len());
        self.flushes.fetch_add(1, Ordering::Relaxed);
    }
}

pub async fn run(
    store: Arc<Store>,
    mut rx: mpsc::Receiver<Event>,
    cfg: WriterConfig,
    stats: Arc<WriterStats>,
) {
    let mut batch = Batch::default();
    let mut buf: Vec<Event> = Vec::with_capacity(1024);
    let interval = Duration::from_millis(cfg.flush_interval_ms);
    let mut deadline: Option<Instant> = None;
    loop {
        let timer = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            n = rx.recv_many(&mut buf, 1024) => {
                if n == 0 {
                    break; // all senders gone: shutdown
                }
                for ev in buf.drain(..) {
                    batch.push(ev);
                }
                if deadline.is_none() {
                    deadline = Some(Instant::now() + interval);
                }
                if batch.rows() >= cfg.batch_rows {
                    flush(&store, &mut batch, &stats).await;
                    deadline = None;
                }
            }
            _ = timer => {
                flush(&store, &mut batch, &stats).await;
                deadline = None;
            }
        }
    }
    flush(&store, &mut batch, &stats).await;
    tracing::debug!("writer drained and stopped");
}

/// Writes the batch, retrying until the database takes it.
async fn flush(store: &Store, batch: &mut Batch, stats: &WriterStats) {
    if batch.is_empty() {
        return;
    }
    let mut delay = Duration::from_millis(100);
    let mut attempt = 0u32;
    loop {
        match store.write(batch).await {
            Ok(()) => {
                if attempt > 0 {
                    tracing::info!(attempts = attempt + 1, "database write succeeded again");
                }
                stats.record(batch);
                batch.clear();
                return;
            }
            Err(e) => {
                attempt += 1;
                stats.flush_errors.fetch_add(1, Ordering::Relaxed);
                if attempt == 1 || attempt.is_power_of_two() {
                    tracing::warn!(error = %e, rows = batch.rows(), attempt, "database write failed; keeping the batch and retrying");
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}
