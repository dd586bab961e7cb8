//! The shutdown deadline: set once when shutdown starts; the worker close handshakes and the
//! writer's last writes shrink to fit it, so the process exits in time (what is not written by
//! then is in the spool, and the next start replays it).

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Room kept for the exit itself after the last write is abandoned.
const MARGIN: Duration = Duration::from_millis(300);

#[derive(Debug, Default)]
pub struct Deadline {
    at: Mutex<Option<Instant>>,
    changed: Notify,
}

impl Deadline {
    /// Starts the clock (later calls keep the first deadline).
    pub fn start(&self, within: Duration) {
        {
            let mut at = crate::runtime::lock(&self.at);
            if at.is_none() {
                *at = Some(Instant::now() + within);
            }
        }
        self.changed.notify_waiters();
    }

    /// A fast stop (a second SIGINT): the deadline is now. Close handshakes end and writes
    /// are abandoned at once; what is unwritten goes to the spool.
    pub fn hurry(&self) {
        {
            let mut at = crate::runtime::lock(&self.at);
            let now = Instant::now();
            *at = Some(at.map_or(now, |a| a.min(now)));
        }
        self.changed.notify_waiters();
    }

    fn at(&self) -> Option<Instant> {
        *crate::runtime::lock(&self.at)
    }

    /// Time left, or None while no shutdown is under way.
    pub fn remaining(&self) -> Option<Duration> {
        self.at()
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Resolves when the deadline (less the exit margin) passes; pending until shutdown starts.
    /// Races a write that began before shutdown, so it cannot outlive the deadline.
    pub async fn reached(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.at() {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at.checked_sub(MARGIN).unwrap_or(at)) => return,
                        _ = changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }

    /// `limit`, shortened to what is left (less a margin for the exit itself).
    pub fn cap(&self, limit: Duration) -> Duration {
        match self.remaining() {
            Some(r) => limit.min(r.saturating_sub(MARGIN)),
            None => limit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn caps_to_the_time_left() {
        let d = Deadline::default();
        assert_eq!(d.cap(Duration::from_secs(10)), Duration::from_secs(10));
        d.start(Duration::from_secs(5));
        d.start(Duration::from_secs(50)); // the first deadline stands
        assert_eq!(d.cap(Duration::from_secs(10)), Duration::from_millis(4700));
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(d.cap(Duration::from_secs(10)), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn reached_waits_for_start_then_for_the_time() {
        let d = std::sync::Arc::new(Deadline::default());
        let t0 = Instant::now();
        let waiter = tokio::spawn({
            let d = d.clone();
            async move {
                d.reached().await;
                Instant::now()
            }
        });
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert!(!waiter.is_finished(), "no shutdown, no deadline");
        d.start(Duration::from_secs(2));
        let at = waiter.await.unwrap();
        assert_eq!(at - t0, Duration::from_secs(102) - MARGIN);
    }

    #[tokio::test(start_paused = true)]
    async fn hurry_brings_the_deadline_forward() {
        let d = std::sync::Arc::new(Deadline::default());
        d.start(Duration::from_secs(20));
        let t0 = Instant::now();
        let waiter = tokio::spawn({
            let d = d.clone();
            async move {
                d.reached().await;
                Instant::now()
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        d.hurry();
        let at = waiter.await.unwrap();
        assert_eq!(at - t0, Duration::from_secs(1));
        assert_eq!(d.cap(Duration::from_secs(10)), Duration::ZERO);
    }
}
