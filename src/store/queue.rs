//! The bounded queue from workers and backfill into the writer: bounded in events
//! (`writer.queue_capacity`) and in bytes (`writer.queue_bytes`), so a burst of large books
//! cannot hold more memory than the operator set, whatever the mix. A full queue makes the
//! senders wait (backpressure); nothing is dropped.

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc};

use crate::model::Event;

/// An event queued with its size (`Event::approx_bytes`, measured once, at the sender): the
/// byte bound's unit and the batch's byte count.
#[derive(Debug)]
pub struct Queued {
    pub ev: Event,
    pub bytes: usize,
}

/// The writer is gone: nothing more can be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

#[derive(Clone)]
pub struct EventTx {
    tx: mpsc::Sender<Queued>,
    bytes: Arc<Semaphore>,
    limit: usize,
}

pub struct EventRx {
    rx: mpsc::Receiver<Queued>,
    bytes: Arc<Semaphore>,
    limit: usize,
}

/// Watches the queue without keeping it open (metrics, health).
#[derive(Clone, Debug)]
pub struct QueueGauge {
    tx: mpsc::WeakSender<Queued>,
    bytes: Arc<Semaphore>,
    limit: usize,
}

/// A queue of at most `capacity` events and about `bytes` bytes of them.
pub fn channel(capacity: usize, bytes: usize) -> (EventTx, EventRx) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    // a semaphore holds at most usize::MAX >> 3 permits
    let limit = bytes
        .clamp(1, Semaphore::MAX_PERMITS)
        .min(u32::MAX as usize);
    let sem = Arc::new(Semaphore::new(limit));
    (
        EventTx {
            tx,
            bytes: sem.clone(),
            limit,
        },
        EventRx {
            rx,
            bytes: sem,
            limit,
        },
    )
}

/// What an event of `bytes` holds the queue's byte budget for: an event larger than the
/// whole budget takes all of it (it still passes, alone).
fn cost(bytes: usize, limit: usize) -> u32 {
    bytes.clamp(1, limit) as u32
}

impl EventTx {
    /// Queues `ev`, waiting while the queue is full (in events or in bytes).
    pub async fn send(&self, ev: Event) -> Result<(), Closed> {
        let bytes = ev.approx_bytes();
        let n = cost(bytes, self.limit);
        self.bytes
            .acquire_many(n)
            .await
            .map_err(|_| Closed)?
            .forget();
        self.tx.send(Queued { ev, bytes }).await.map_err(|_| {
            self.bytes.add_permits(n as usize);
            Closed
        })
    }

    pub fn gauge(&self) -> QueueGauge {
        QueueGauge {
            tx: self.tx.downgrade(),
            bytes: self.bytes.clone(),
            limit: self.limit,
        }
    }
}

impl EventRx {
    /// Up to `most` events into `buf`, waiting for the first; 0 once every sender is gone.
    pub async fn recv_many(&mut self, buf: &mut Vec<Queued>, most: usize) -> usize {
        let start = buf.len();
        let n = self.rx.recv_many(buf, most).await;
        self.release(&buf[start..]);
        n
    }

    /// One event if one is waiting (never waits).
    pub fn try_recv(&mut self) -> Option<Queued> {
        let ev = self.rx.try_recv().ok()?;
        self.release(std::slice::from_ref(&ev));
        Some(ev)
    }

    fn release(&self, evs: &[Queued]) {
        let n: usize = evs.iter().map(|q| cost(q.bytes, self.limit) as usize).sum();
        if n > 0 {
            self.bytes.add_permits(n);
        }
    }
}

impl Drop for EventRx {
    fn drop(&mut self) {
        // senders waiting for room learn that none will come
        self.bytes.close();
    }
}

impl QueueGauge {
    /// Events waiting now.
    pub fn depth(&self) -> usize {
        self.tx
            .upgrade()
            .map(|tx| tx.max_capacity() - tx.capacity())
            .unwrap_or(0)
    }

    /// Bytes of the events waiting now (their `approx_bytes`).
    pub fn bytes(&self) -> usize {
        if self.bytes.is_closed() {
            return 0;
        }
        self.limit.saturating_sub(self.bytes.available_permits())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decimal::Dec;
    use crate::model::BookSnapshot;
    use futures_util::FutureExt;

    fn book(levels: usize) -> Event {
        let l = (Dec::parse("100.5").unwrap(), Dec::parse("1").unwrap());
        Event::BookSnapshot(BookSnapshot {
            venue: "cdc-exchange",
            symbol: "BTC_USD".into(),
            depth_step: 50,
            event_time_ms: 1,
            recv_time_us: 1,
            bids: vec![l.clone(); levels],
            asks: vec![l; levels],
        })
    }

    #[tokio::test]
    async fn the_byte_bound_holds_senders_until_the_writer_takes_events() {
        let one = book(50).approx_bytes();
        // room for two books by bytes, a thousand events by count
        let (tx, mut rx) = channel(1000, 2 * one + one / 2);
        tx.send(book(50)).await.unwrap();
        tx.send(book(50)).await.unwrap();
        let gauge = tx.gauge();
        assert_eq!(gauge.depth(), 2);
        assert_eq!(gauge.bytes(), 2 * one);
        // the third waits: the bytes are spent although the count has room
        let mut third = Box::pin(tx.send(book(50)));
        assert!(
            (&mut third).now_or_never().is_none(),
            "sent past the byte bound"
        );
        let mut buf = Vec::new();
        assert_eq!(rx.recv_many(&mut buf, 1).await, 1);
        third.await.unwrap();
        assert_eq!(gauge.depth(), 2);
        // an event larger than the whole budget still passes, alone
        let (tx, mut rx) = channel(10, 100);
        tx.send(book(50)).await.unwrap();
        assert!(Box::pin(tx.send(book(1))).now_or_never().is_none());
        assert!(rx.try_recv().is_some());
        tx.send(book(1)).await.unwrap();
        // the writer gone: senders are told, waiting ones too
        let (tx, rx) = channel(10, one);
        tx.send(book(50)).await.unwrap();
        let waiting = tx.send(book(50));
        drop(rx);
        assert_eq!(waiting.await, Err(Closed));
        assert_eq!(tx.send(book(1)).await, Err(Closed));
    }
}
