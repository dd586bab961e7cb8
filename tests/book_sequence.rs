//! Books with sequence numbers: a venue that numbers its book updates (v1 on the wire, with
//! its incremental book numbered by a test session, as today's exchange numbers `u`/`pu`)
//! loses one update. The break is recorded as a hole of that book stream, the stream is
//! re-synced on the same connection (a fresh snapshot), the stored deltas carry their ids, the
//! book ends equal to the venue's, and `book_at` refuses to rebuild across the break.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::venue::TestVenue;
use common::{PgDb, recorder_config, sqlite_db, wait_for};
use mdrec::coverage::BookAt;
use mdrec::decimal::Dec;
use mdrec::model::{Event, GapStatus};
use mdrec::sim::{self, DepthMode, SimConfig};
use mdrec::store::Store;
use mdrec::venue::cdc_v1::NAME;
use mdrec::venue::{BookBreak, DecodeError, Frame, Reaction, VenueSession};
use tokio_util::sync::CancellationToken;

const SYMBOL: &str = "btcusdt";

/// Numbers v1's book updates as a venue with sequence numbers would; `lose` drops that many
/// delta frames as a lossy network would (their numbers are used up, so the next update
/// shows the break).
struct NumberedSession {
    inner: Box<dyn VenueSession>,
    lose: Arc<AtomicU32>,
    /// Per (symbol, step): the venue's next number, the last update applied (id, time) and
    /// whether the stream waits for a snapshot after a break.
    books: HashMap<(Arc<str>, i16), BookState>,
}

/// The venue's next number, the last update applied (id, exchange time), waiting for a
/// snapshot after a break.
type BookState = (i64, Option<(i64, i64)>, bool);

impl VenueSession for NumberedSession {
    fn on_frame(
        &mut self,
        frame: Frame<'_>,
        recv: i64,
        out: &mut Vec<Event>,
    ) -> Result<Reaction, DecodeError> {
        let start = out.len();
        let mut r = self.inner.on_frame(frame, recv, out)?;
        let mut kept = Vec::new();
        for ev in out.drain(start..) {
            match ev {
                Event::BookSnapshot(b) => {
                    let e = self
                        .books
                        .entry((b.symbol.clone(), b.depth_step))
                        .or_insert((1, None, false));
                    *e = (e.0 + 1, Some((e.0, b.event_time_ms)), false);
                    kept.push(Event::BookSnapshot(b));
                }
                Event::BookDelta(mut d) => {
                    let e = self
                        .books
                        .entry((d.symbol.clone(), d.depth_step))
                        .or_insert((1, None, false));
                    let id = e.0;
                    e.0 += 1;
                    if self
                        .lose
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok()
                    {
                        continue; // lost on the way
                    }
                    if e.2 {
                        continue; // broken: nothing applies until the next snapshot
                    }
                    match e.1 {
                        Some((last, last_ms)) if last != id - 1 => {
                            e.2 = true;
                            r.breaks.push(BookBreak {
                                symbol: d.symbol.clone(),
                                depth_step: d.depth_step,
                                last_ms,
                                at_ms: d.event_time_ms,
                                detail: format!("expected prev {last}, got {}", id - 1),
                                resync: Vec::new(),
                            });
                        }
                        _ => {
                            d.update_id = Some(id);
                            d.prev_update_id = Some(id - 1);
                            e.1 = Some((id, d.event_time_ms));
                            kept.push(Event::BookDelta(d));
                        }
                    }
                }
                other => kept.push(other),
            }
        }
        out.extend(kept);
        Ok(r)
    }
}

/// v1, with its book updates numbered by [`NumberedSession`].
fn numbered(lose: Arc<AtomicU32>) -> TestVenue {
    TestVenue {
        wrap_session: Some(Box::new(move |_, inner| {
            Box::new(NumberedSession {
                inner,
                lose: lose.clone(),
                books: HashMap::new(),
            })
        })),
        ..TestVenue::default()
    }
}

/// (update_id, prev_update_id) of the stored deltas, in order.
async fn delta_ids(store: &Store) -> Vec<(Option<i64>, Option<i64>)> {
    const SQL: &str = "SELECT update_id, prev_update_id FROM book_deltas \
                       WHERE symbol = 'btcusdt' ORDER BY recv_time_us, seq";
    match store {
        Store::Sqlite(s) => sqlx::query_as(SQL).fetch_all(s.pool()).await,
        Store::Postgres(s) => sqlx::query_as(SQL).fetch_all(s.pool()).await,
    }
    .expect("read deltas")
}

async fn snapshots(store: &Store) -> i64 {
    const SQL: &str = "SELECT COUNT(*) FROM book_snapshots WHERE symbol = 'btcusdt'";
    match store {
        Store::Sqlite(s) => sqlx::query_scalar(SQL).fetch_one(s.pool()).await,
        Store::Postgres(s) => sqlx::query_scalar(SQL).fetch_one(s.pool()).await,
    }
    .expect("count snapshots")
}

fn levels(v: &[(rust_decimal::Decimal, rust_decimal::Decimal)]) -> Vec<(Dec, Dec)> {
    v.iter()
        .map(|(p, q)| (Dec::from(*p), Dec::from(*q)))
        .collect()
}

async fn break_and_resync(db_url: &str) {
    let sim = sim::start(SimConfig {
        seed: 91,
        symbols: vec![SYMBOL.into()],
        depth_mode: DepthMode::Incremental,
        ..SimConfig::default()
    })
    .await
    .expect("simulator starts");
    let mut cfg = recorder_config(&sim.ws_url(), &sim.rest_url(), db_url, &[SYMBOL], "");
    cfg.record.depth_dedupe = false;
    let lose = Arc::new(AtomicU32::new(0));
    let stop = CancellationToken::new();
    common::init_log();
    let (_, stats, tasks) =
        mdrec::recorder::start(cfg, Arc::new(numbered(lose.clone())), stop.clone())
            .await
            .expect("recorder starts");
    let store = Store::connect(db_url).await.expect("open db");
    wait_for("deltas stored", Duration::from_secs(30), || async {
        delta_ids(&store).await.len() >= 20
    })
    .await;
    assert_eq!(snapshots(&store).await, 1, "one snapshot at subscribe");
    lose.store(1, Ordering::SeqCst);
    wait_for(
        "the break on record and a fresh snapshot",
        Duration::from_secs(30),
        || async {
            let gaps = store
                .load_gaps(NAME, Some(SYMBOL))
                .await
                .unwrap_or_default();
            gaps.iter().any(|g| g.stream == "book_0") && snapshots(&store).await >= 2
        },
    )
    .await;
    let after = delta_ids(&store).await.len();
    wait_for(
        "deltas after the re-sync",
        Duration::from_secs(30),
        || async { delta_ids(&store).await.len() >= after + 20 },
    )
    .await;
    sim.halt();
    let want = sim
        .book(SYMBOL, 0, 150)
        .map(|(b, a)| (levels(&b), levels(&a)));
    wait_for(
        "the stored book equals the venue's",
        Duration::from_secs(30),
        || async {
            let got = store
                .load_latest_book(NAME, SYMBOL, 0)
                .await
                .ok()
                .flatten()
                .map(|b| (b.bids, b.asks));
            got == want
        },
    )
    .await;
    stop.cancel();
    tasks.close();
    tasks.wait().await;

    let w = &stats.worker(SYMBOL);
    assert_eq!(w.book_breaks.load(Ordering::Relaxed), 1);
    assert!(w.resubscribes.load(Ordering::Relaxed) >= 1);
    let gaps = store.load_gaps(NAME, Some(SYMBOL)).await.expect("gaps");
    let book_gaps: Vec<_> = gaps.iter().filter(|g| g.stream == "book_0").collect();
    assert_eq!(book_gaps.len(), 1, "{gaps:?}");
    let g = book_gaps[0];
    assert_eq!(g.status, GapStatus::Unrecoverable);
    let end = g.end_ms.expect("a break has an end");
    assert!(g.start_ms <= end, "{g:?}");
    // every stored delta carries its ids, and they chain except across the break
    let ids = delta_ids(&store).await;
    assert!(
        ids.iter().all(|(u, p)| u.is_some() && p.is_some()),
        "{ids:?}"
    );
    let unchained = ids.windows(2).filter(|w| w[1].1 != w[0].0).count();
    assert_eq!(
        unchained, 1,
        "one jump in the chain (the lost update and the re-sync)"
    );

    // never rebuilt across the break; whole again from the snapshot after it
    match mdrec::coverage::book_at(&store, NAME, SYMBOL, 0, Some(end)).await {
        Ok(BookAt::Broken { break_from_ms, .. }) => assert_eq!(break_from_ms, g.start_ms),
        other => panic!("a book across the break: {other:?}"),
    }
    match mdrec::coverage::book_at(&store, NAME, SYMBOL, 0, None).await {
        Ok(BookAt::Book(b)) => assert_eq!(Some((b.bids, b.asks)), want),
        other => panic!("no book after the re-sync: {other:?}"),
    }
    // the book on a grid: rows before the break and after the re-sync, none in between
    let dir = tempfile::tempdir().unwrap();
    let mut req = mdrec::export::Request::new(
        mdrec::export::Kind::Book,
        SYMBOL,
        mdrec::export::Format::Csv,
        dir.path().join("grid.csv"),
    );
    req.every_ms = Some(50);
    req.depth = 1;
    mdrec::export::export(&store, NAME, &req, |_| {})
        .await
        .expect("grid export");
    let sql =
        "SELECT MIN(event_time_ms) FROM book_snapshots WHERE symbol = $1 AND event_time_ms >= $2";
    let resynced: Option<i64> = match &store {
        Store::Sqlite(s) => {
            sqlx::query_scalar(sql)
                .bind(SYMBOL)
                .bind(g.start_ms)
                .fetch_one(s.pool())
                .await
        }
        Store::Postgres(s) => {
            sqlx::query_scalar(sql)
                .bind(SYMBOL)
                .bind(g.start_ms)
                .fetch_one(s.pool())
                .await
        }
    }
    .unwrap();
    let resynced = resynced.expect("a full book after the break");
    let times: Vec<i64> = csv::Reader::from_path(dir.path().join("grid.csv"))
        .unwrap()
        .records()
        .map(|r| r.unwrap()[3].parse().unwrap())
        .collect();
    assert!(
        times.iter().any(|t| *t < g.start_ms),
        "rows before the break"
    );
    assert!(
        times.iter().any(|t| *t >= resynced),
        "rows after the re-sync"
    );
    let inside: Vec<&i64> = times
        .iter()
        .filter(|t| **t >= g.start_ms && **t < resynced)
        .collect();
    assert!(
        inside.is_empty(),
        "no book between the break at {} and the full book at {resynced}: {inside:?}",
        g.start_ms
    );
    eprintln!(
        "book sequence break: {} deltas stored with ids, break {}..{} ms recorded, {} snapshots",
        ids.len(),
        g.start_ms,
        end,
        snapshots(&store).await
    );
    store.close().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_book_sequence_break_is_a_hole_and_is_resynced() {
    let (_dir, url) = sqlite_db();
    break_and_resync(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_book_sequence_break_is_a_hole_and_is_resynced() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    break_and_resync(&db.url).await;
    db.drop_db().await;
}
