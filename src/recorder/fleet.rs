//! The set of connections while the run goes on: the venue's plan at start-up, then
//! connections for symbols the venue lists later, for symbols a connection had to shed (the
//! venue refused more subscriptions there), and the retirement of delisted symbols. Workers
//! and the relisting task ask; the fleet starts workers and tells them what leaves.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use super::marks::{self, Marks};
pub use super::worker::Request;
use super::worker::{self, Control, Feed, Worker, WorkerStats};
use crate::stats::RunStats;
use crate::store::Store;
use crate::venue::{ConnectionPlan, SocketLimits};

/// The marks of every recorded symbol, shared by workers and backfill.
pub type MarksMap = Arc<std::sync::RwLock<HashMap<Arc<str>, Arc<Marks>>>>;

/// The marks of `symbol` (fresh ones for a symbol not, or no longer, recorded).
pub fn marks_of(map: &MarksMap, symbol: &Arc<str>, ids: crate::venue::TradeIds) -> Arc<Marks> {
    map.read()
        .unwrap_or_else(|p| p.into_inner())
        .get(symbol)
        .cloned()
        .unwrap_or_else(|| Arc::new(Marks::new(ids)))
}

pub struct Fleet {
    pub shared: worker::Shared,
    pub stats: Arc<RunStats>,
    pub marks: MarksMap,
    pub store: Arc<Store>,
    /// Worker tasks (the writer waits for them at shutdown).
    pub tasks: TaskTracker,
    /// Who carries each symbol.
    carriers: HashMap<Arc<str>, mpsc::UnboundedSender<Control>>,
}

impl Fleet {
    pub fn new(
        shared: worker::Shared,
        stats: Arc<RunStats>,
        marks: MarksMap,
        store: Arc<Store>,
        tasks: TaskTracker,
    ) -> Fleet {
        Fleet {
            shared,
            stats,
            marks,
            store,
            tasks,
            carriers: HashMap::new(),
        }
    }

    /// Starts one worker per planned connection; each symbol's counters and marks are
    /// registered (or kept, for a symbol moving between connections).
    pub fn start(&mut self, plan: Vec<ConnectionPlan>, mut feeds: HashMap<Arc<str>, Feed>) {
        let venue = &self.shared.venue;
        for conn in plan {
            let conn_feeds: Vec<Feed> = conn
                .symbols
                .iter()
                .map(|s| {
                    feeds.remove(s).unwrap_or_else(|| {
                        let stats = Arc::new(WorkerStats::default());
                        self.stats.workers.insert(s, stats.clone());
                        Feed {
                            symbol: s.clone(),
                            stats,
                            marks: marks_of(&self.marks, s, venue.trade_ids()),
                        }
                    })
                })
                .collect();
            let symbols = conn.symbols.clone();
            let (w, control) = Worker::new(&self.shared, Arc::new(conn), conn_feeds);
            for s in symbols {
                self.carriers.insert(s, control.clone());
            }
            let alive = self.stats.supervisors_alive.clone();
            let connections = self.stats.connections.clone();
            let shutdown = self.shared.shutdown.clone();
            alive.fetch_add(1, Ordering::Relaxed);
            connections.fetch_add(1, Ordering::Relaxed);
            self.tasks.spawn(async move {
                worker::supervise(w).await;
                if !shutdown.is_cancelled() {
                    // its symbols all left: one connection fewer to watch
                    connections.fetch_sub(1, Ordering::Relaxed);
                }
                alive.fetch_sub(1, Ordering::Relaxed);
            });
        }
    }

    /// Serves requests until shutdown.
    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Request>) {
        let shutdown = self.shared.shutdown.clone();
        loop {
            let req = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = rx.recv() => match r { Some(r) => r, None => return },
            };
            match req {
                Request::Add(symbols) => self.add(symbols).await,
                Request::Retire(symbols, reason) => self.retire(symbols, reason),
                Request::Move { feeds, streams } => {
                    let venue = &self.shared.venue;
                    let limits = SocketLimits {
                        streams: streams.min(venue.socket_limits().streams),
                        ..venue.socket_limits()
                    };
                    let record = &self.shared.config.record;
                    let plan = crate::venue::pack(
                        feeds
                            .iter()
                            .map(|f| (f.symbol.clone(), venue.streams(&f.symbol, record))),
                        limits,
                    );
                    tracing::info!(
                        symbols = feeds.len(),
                        connections = plan.len(),
                        streams_per_connection = limits.streams,
                        "opening connections for symbols another connection shed"
                    );
                    let feeds = feeds.into_iter().map(|f| (f.symbol.clone(), f)).collect();
                    self.start(plan, feeds);
                }
            }
        }
    }

    /// New symbols: their marks read from what is stored (an instrument recorded before,
    /// delisted and listed again continues where it ended), holes left open handed to
    /// backfill, then connections planned for them alone.
    async fn add(&mut self, symbols: Vec<Arc<str>>) {
        let symbols: Vec<Arc<str>> = symbols
            .into_iter()
            .filter(|s| !self.carriers.contains_key(s))
            .collect();
        if symbols.is_empty() {
            return;
        }
        let venue = self.shared.venue.clone();
        let names: Vec<String> = symbols.iter().map(|s| s.to_string()).collect();
        let config = self.shared.config.clone();
        match marks::load(&self.store, venue.as_ref(), &names, config.record.klines()).await {
            Ok((loaded, leftovers)) => {
                self.marks
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(loaded);
                if let Some(b) = &self.shared.backfill {
                    for c in leftovers {
                        let _ = b.send(c);
                    }
                }
            }
            Err(e) => {
                // recorded from now on; what was stored before is not joined to it
                tracing::warn!(error = %e, symbols = symbols.len(), "could not read where new symbols' stored streams end; recording them from now");
                let mut map = self.marks.write().unwrap_or_else(|p| p.into_inner());
                for s in &symbols {
                    map.entry(s.clone())
                        .or_insert_with(|| Arc::new(Marks::new(venue.trade_ids())));
                }
            }
        }
        let plan = venue.plan(&symbols, &config.record);
        tracing::info!(symbols = symbols.len(), connections = plan.len(), first = %symbols[0], "recording instruments the venue listed since start-up");
        self.start(plan, HashMap::new());
    }

    /// Delisted symbols leave their connections; their counters and marks go.
    fn retire(&mut self, symbols: Vec<Arc<str>>, reason: String) {
        let mut by_worker: Vec<(mpsc::UnboundedSender<Control>, Vec<Arc<str>>)> = Vec::new();
        for s in symbols {
            let Some(c) = self.carriers.remove(&s) else {
                continue;
            };
            match by_worker.iter_mut().find(|(w, _)| w.same_channel(&c)) {
                Some((_, v)) => v.push(s),
                None => by_worker.push((c, vec![s])),
            }
        }
        for (control, symbols) in by_worker {
            for s in &symbols {
                self.stats.workers.remove(s);
                self.marks
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(s);
            }
            let _ = control.send(Control::Retire(symbols, reason.clone()));
        }
    }
}
