//! REST backfill of trades: at every (re)connect, once the new socket has delivered its first
//! frame (so the subscription is live and nothing later can fall between the two), fetch the
//! venue's recent trades and store them through the writer. Keys make the overlap with the
//! websocket harmless. Holes longer than the REST window are issue 4's gap records (not yet).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::rest::RestClient;
use crate::model::{Event, now_us};
use crate::venue::Venue;

#[derive(Debug, Default)]
pub struct BackfillStats {
    /// Trades fetched over REST and handed to the writer (most are duplicates of stored ones).
    pub trades_fetched: AtomicU64,
    pub runs: AtomicU64,
    pub failures: AtomicU64,
}

pub async fn run(
    venue: Arc<dyn Venue>,
    rest: Arc<RestClient>,
    mut requests: mpsc::Receiver<Arc<str>>,
    tx: mpsc::Sender<Event>,
    stats: Arc<BackfillStats>,
    shutdown: CancellationToken,
) {
    let mut pending: Vec<Arc<str>> = Vec::new();
    loop {
        if pending.is_empty() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = requests.recv() => match r {
                    Some(s) => pending.push(s),
                    None => return,
                },
            }
        }
        // coalesce: several reconnects of one symbol need one fetch
        while let Ok(s) = requests.try_recv() {
            pending.push(s);
        }
        let mut seen = HashSet::new();
        pending.retain(|s| seen.insert(s.clone()));
        let symbol = pending.remove(0);
        let path = venue.recent_trades_path(&symbol);
        let fetch = rest.get(&path);
        let body = tokio::select! {
            _ = shutdown.cancelled() => return,
            b = fetch => b,
        };
        stats.runs.fetch_add(1, Ordering::Relaxed);
        let trades = match body.and_then(|b| venue.parse_recent_trades(&b, &symbol, now_us())) {
            Ok(t) => t,
            Err(e) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(symbol = %symbol, error = %e, "trade backfill failed; the socket keeps recording");
                continue;
            }
        };
        stats
            .trades_fetched
            .fetch_add(trades.len() as u64, Ordering::Relaxed);
        for t in trades {
            if tx.send(Event::Trade(t)).await.is_err() {
                return;
            }
        }
    }
}
