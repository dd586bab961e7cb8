//! systemd `Type=notify` integration: READY once the database is migrated and the workers are
//! started (and after each reload, announced by RELOADING), WATCHDOG=1 only while the writer
//! and the worker supervisors make progress, STOPPING on shutdown. Without `NOTIFY_SOCKET`
//! (not under systemd) every call is a no-op.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::model::now_ms;
use crate::stats::RunStats;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

pub fn ready(symbols: usize) {
    let status = format!("recording {symbols} symbols");
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// A reload began (SIGHUP); [`ready`] ends it. systemd 253 and later want the monotonic
/// time along with it.
pub fn reloading() {
    send(&[
        NotifyState::Reloading,
        NotifyState::monotonic_usec_now().unwrap_or(NotifyState::Status("reloading")),
    ]);
}

pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("draining the queue"),
    ]);
}

/// Why the daemon is not healthy enough to pet the watchdog, if it is not.
pub fn stalled(stats: &RunStats, stall: Duration) -> Option<String> {
    let connections = stats.connections();
    let beat = stats.writer.heartbeat_ms.load(Ordering::Relaxed);
    let age = now_ms() - beat;
    if beat == 0 || age > stall.as_millis() as i64 {
        return Some(format!("writer made no progress for {age} ms"));
    }
    let alive = stats.supervisors_alive.load(Ordering::Relaxed);
    if alive < connections {
        return Some(format!(
            "{alive} of {connections} connection supervisors running"
        ));
    }
    None
}

/// Pets the watchdog at half its interval while [`stalled`] finds nothing; stops at shutdown.
pub async fn watchdog(stats: Arc<RunStats>, shutdown: CancellationToken) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let period = interval / 2;
    let mut tick = tokio::time::interval(period);
    let mut reported = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match stalled(&stats, interval) {
            None => {
                reported = false;
                send(&[NotifyState::Watchdog]);
            }
            Some(why) if !reported => {
                reported = true;
                tracing::error!(reason = %why, "not petting the systemd watchdog");
            }
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_health() {
        let stats = RunStats::default();
        stats.connections.store(1, Ordering::Relaxed);
        let stall = Duration::from_secs(2);
        assert!(
            stalled(&stats, stall).unwrap().contains("writer"),
            "no heartbeat yet"
        );
        stats.writer.heartbeat_ms.store(now_ms(), Ordering::Relaxed);
        assert!(stalled(&stats, stall).unwrap().contains("supervisors"));
        stats.supervisors_alive.store(1, Ordering::Relaxed);
        assert_eq!(stalled(&stats, stall), None);
        stats
            .writer
            .heartbeat_ms
            .store(now_ms() - 5_000, Ordering::Relaxed);
        assert!(stalled(&stats, stall).unwrap().contains("no progress"));
    }
}
