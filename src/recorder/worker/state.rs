//! A worker and what it carries: its symbols (feeds) with their counters and marks, what it
//! shares with the run, and what the fleet tells it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::model::{Session, StreamKey};
use crate::recorder::marks::{HoleCheck, Marks};
use crate::runtime::lock;
use crate::runtime::stagger::Stagger;
use crate::stats::WorkerStats;
use crate::venue::{ConnectionPlan, Subscription, Venue, VenueSession};

/// What the fleet is asked to do.
#[derive(Debug)]
pub enum Request {
    /// Symbols to record from now on (listed since start-up).
    Add(Vec<Arc<str>>),
    /// Symbols no longer listed: unsubscribed and their sessions closed with `reason`.
    Retire(Vec<Arc<str>>, String),
    /// Symbols a connection shed because the venue refused more subscriptions there: onto new
    /// connections carrying at most `streams` streams each.
    Move { feeds: Vec<Feed>, streams: usize },
}

/// One symbol a connection carries: its counters and its marks.
#[derive(Clone, Debug)]
pub struct Feed {
    pub symbol: Arc<str>,
    pub stats: Arc<WorkerStats>,
    /// How far this symbol's streams are known complete (shared with backfill).
    pub marks: Arc<Marks>,
}

/// One connection: the symbols and streams the venue's plan put on it.
#[derive(Clone)]
pub struct Worker {
    pub venue: Arc<dyn Venue>,
    pub plan: Arc<ConnectionPlan>,
    /// One per symbol of the plan, in its order.
    pub feeds: Arc<[Feed]>,
    /// Symbol -> index into `feeds`.
    pub(super) index: Arc<HashMap<Arc<str>, usize>>,
    pub config: Arc<Config>,
    /// Into the writer; a full queue makes this worker wait (backpressure).
    pub tx: crate::store::queue::EventTx,
    pub shutdown: CancellationToken,
    /// Connection attempts of all workers share this rate.
    pub stagger: Arc<Stagger>,
    /// The open connection's session rows (one per symbol), so the supervisor can close them
    /// if this task dies.
    pub current: Arc<std::sync::Mutex<Vec<Session>>>,
    /// Set when shutdown starts; the close handshake fits in it.
    pub deadline: Arc<crate::runtime::deadline::Deadline>,
    /// Hands holes to the backfill task (None: backfill off).
    pub backfill: Option<mpsc::UnboundedSender<HoleCheck>>,
    /// Per feed: still carried here (a symbol delisted or moved to another connection is
    /// not; it is neither subscribed nor counted here again).
    pub(super) active: Arc<[AtomicBool]>,
    /// Streams the venue refused as bad requests: never asked for again.
    pub(super) refused: Arc<std::sync::Mutex<HashSet<Stream>>>,
    /// Orders from the fleet; one receiver, kept across panics.
    pub(super) control: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Control>>>,
    /// Asks for new connections (symbols the venue would not take more streams of here).
    pub(super) fleet: Option<mpsc::UnboundedSender<Request>>,
    pub(super) tls: Arc<rustls::ClientConfig>,
}

/// One stream of one symbol.
pub(super) type Stream = (Arc<str>, StreamKey);

/// What the fleet tells a running worker.
#[derive(Debug)]
pub enum Control {
    /// Stop carrying these symbols (delisted): their streams are unsubscribed and their
    /// sessions closed with the reason; a worker left with none ends.
    Retire(Vec<Arc<str>>, String),
}

/// What a worker shares with the rest of the run.
pub struct Shared {
    pub venue: Arc<dyn Venue>,
    pub config: Arc<Config>,
    pub tx: crate::store::queue::EventTx,
    pub shutdown: CancellationToken,
    pub stagger: Arc<Stagger>,
    pub deadline: Arc<crate::runtime::deadline::Deadline>,
    pub backfill: Option<mpsc::UnboundedSender<HoleCheck>>,
    /// Where workers ask for new connections (None: they cannot split).
    pub fleet: Option<mpsc::UnboundedSender<Request>>,
    /// The run's TLS trust (compiled-in roots plus `connection.ca_file`).
    pub tls: Arc<rustls::ClientConfig>,
}

impl Worker {
    /// The worker and the sender the fleet controls it with.
    pub fn new(
        shared: &Shared,
        plan: Arc<ConnectionPlan>,
        feeds: Vec<Feed>,
    ) -> (Worker, mpsc::UnboundedSender<Control>) {
        let index = feeds
            .iter()
            .enumerate()
            .map(|(i, f)| (f.symbol.clone(), i))
            .collect();
        let (control_tx, control) = mpsc::unbounded_channel();
        let w = Worker {
            active: feeds.iter().map(|_| AtomicBool::new(true)).collect(),
            refused: Default::default(),
            control: Arc::new(tokio::sync::Mutex::new(control)),
            fleet: shared.fleet.clone(),
            tls: shared.tls.clone(),
            venue: shared.venue.clone(),
            plan,
            feeds: feeds.into(),
            index: Arc::new(index),
            config: shared.config.clone(),
            tx: shared.tx.clone(),
            shutdown: shared.shutdown.clone(),
            stagger: shared.stagger.clone(),
            current: Default::default(),
            deadline: shared.deadline.clone(),
            backfill: shared.backfill.clone(),
        };
        (w, control_tx)
    }

    pub(super) fn is_active(&self, i: usize) -> bool {
        self.active[i].load(Ordering::Relaxed)
    }

    /// Counts a happening of the connection for every symbol it carries (each of their feeds
    /// saw it: a reconnect, a skipped frame).
    pub(super) fn each(&self, f: impl Fn(&WorkerStats)) {
        for (i, feed) in self.feeds.iter().enumerate() {
            if self.is_active(i) {
                f(&feed.stats);
            }
        }
    }

    /// The plan as it stands: symbols still carried, streams not refused.
    pub(super) fn live_plan(&self) -> ConnectionPlan {
        let refused = lock(&self.refused);
        let carried = |s: &Arc<str>| self.index.get(s).is_some_and(|&i| self.is_active(i));
        ConnectionPlan {
            name: self.plan.name.clone(),
            symbols: self
                .plan
                .symbols
                .iter()
                .filter(|s| carried(s))
                .cloned()
                .collect(),
            streams: self
                .plan
                .streams
                .iter()
                .filter(|(s, k)| carried(s) && !refused.contains(&(s.clone(), k.clone())))
                .cloned()
                .collect(),
        }
    }

    pub(super) fn decoder(&self) -> Box<dyn VenueSession> {
        self.venue.session(
            &self.live_plan().symbols,
            self.config.connection.max_frame_bytes,
            self.venue.rules().with_clocks(&self.config.record),
        )
    }

    /// The feeds a subscription opens streams of, each once.
    pub(super) fn feeds_of(&self, sub: &Subscription) -> Vec<usize> {
        let mut out: Vec<usize> = sub
            .streams
            .iter()
            .filter_map(|(s, _)| self.index.get(s).copied())
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// The text of a panic payload.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
