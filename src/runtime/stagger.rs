//! Connection attempts of all workers share a rate, so hundreds of symbols do not open (or
//! reopen after a network blip) at the same instant.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

pub struct Stagger {
    interval: Duration,
    /// The earliest instant the next attempt may start; each caller takes a slot and moves it on.
    next: Mutex<Instant>,
}

impl Stagger {
    /// `per_second` attempts per second across all workers.
    pub fn new(per_second: u32) -> Stagger {
        Stagger {
            interval: Duration::from_secs(1) / per_second.max(1),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits for this caller's slot.
    pub async fn wait(&self) {
        let slot = {
            let mut next = self.next.lock().await;
            let slot = (*next).max(Instant::now());
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn spaces_attempts_at_the_configured_rate() {
        let s = Arc::new(Stagger::new(4));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..9 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                s.wait().await;
                Instant::now()
            }));
        }
        let mut times = Vec::new();
        for t in tasks {
            times.push(t.await.unwrap() - start);
        }
        times.sort();
        // 9 attempts at 4/s: slots 0, 0.25 s, ..., 2 s
        assert_eq!(times.first().copied(), Some(Duration::ZERO));
        assert_eq!(times.last().copied(), Some(Duration::from_secs(2)));
        for w in times.windows(2) {
            assert_eq!(w[1] - w[0], Duration::from_millis(250));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_stagger_does_not_delay() {
        let s = Stagger::new(2);
        tokio::time::sleep(Duration::from_secs(10)).await;
        let t = Instant::now();
        s.wait().await;
        assert_eq!(Instant::now(), t);
    }
}
