//! One websocket connection, carrying the symbols and streams the venue's plan put on it:
//! connect, subscribe (paced as the venue asks), read frames, answer pings, route each event
//! to its symbol's marks and counters, hand events to the writer, reconnect with backoff
//! when the socket drops or goes silent. `state`: the worker and what it carries;
//! `connection`: a connection's steps; `reader`: its frames.

mod connection;
mod reader;
mod state;

use std::sync::atomic::Ordering;
use std::time::Duration;

use self::state::panic_message;
use crate::model::{Event, now_us};
use crate::runtime::backoff::ReconnectPolicy;
use crate::runtime::lock;

pub use self::state::{Control, Feed, Request, Shared, Worker};
pub use crate::stats::{ChannelStats, WorkerStats};

/// Runs a worker, restarting it after a panic with backoff; the other workers never notice.
/// Session rows the dead task left open are closed with the panic as their reason.
pub async fn supervise(w: Worker) {
    let mut delays = ReconnectPolicy::from_config(&w.config.connection).delays(None);
    loop {
        let task = tokio::spawn(w.clone().run());
        let err = match task.await {
            Ok(()) => return,
            Err(e) if e.is_panic() => panic_message(e.into_panic().as_ref()),
            Err(_) => return, // cancelled: the runtime is shutting down
        };
        w.each(|s| {
            s.restarts.fetch_add(1, Ordering::Relaxed);
            s.reconnect("panic");
        });
        tracing::error!(connection = %w.plan.name, error = %err, "worker panicked; restarting it");
        let open = std::mem::take(&mut *lock(&w.current));
        for mut s in open {
            s.disconnected_at_us = Some(now_us().max(s.connected_at_us));
            s.close_reason = Some(format!("worker panicked: {err}"));
            if w.tx.send(Event::Session(s)).await.is_err() {
                return;
            }
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(1));
        tokio::select! {
            _ = w.shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
