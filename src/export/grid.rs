//! The book rebuilt on a time grid from stored full books and changes (see `export`'s
//! module comment for where it is unknown).

use std::collections::VecDeque;
use std::sync::Arc;

use super::plan::Window;
use super::request::Request;
use super::rows::{PAGE, Val, text};
use crate::model::{BookDelta, BookSnapshot, StreamKey};
use crate::store::{DeltaRange, Store};

/// A paged stream of one book stream's full books or changes, in receive order.
pub(super) struct Pager<T> {
    buf: VecDeque<T>,
    done: bool,
}

impl<T> Pager<T> {
    fn new() -> Pager<T> {
        Pager {
            buf: VecDeque::new(),
            done: false,
        }
    }

    fn refill(&mut self, page: Vec<T>) {
        self.done = (page.len() as i64) < PAGE;
        self.buf.extend(page);
    }
}

/// The book being rebuilt, and until when it stands for the venue's.
pub(super) struct Rebuilt {
    book: BookSnapshot,
    /// When (our clock, ms) the connection it came from closed; None: open, or unknown.
    closed_at_ms: Option<i64>,
    /// Exchange time of the first break in the stream recorded after its full book (a hole
    /// of the book stream, as `book --at` reads them): unknown from there to the next.
    broken_at_ms: Option<i64>,
}

impl Rebuilt {
    /// Until when the book stands: the recorded break, else the connection's close in
    /// exchange time (by the clock offset of the last row applied).
    fn until_ms(&self) -> i64 {
        let closed = self.closed_at_ms.map_or(i64::MAX, |c| {
            c.saturating_add(self.book.event_time_ms - self.book.recv_time_us.div_euclid(1000))
        });
        closed.min(self.broken_at_ms.unwrap_or(i64::MAX))
    }
}

/// The book at every multiple of `every` in the window (see the module comment).
#[allow(clippy::too_many_arguments)]
pub(super) async fn book_grid(
    store: &Store,
    venue: &'static str,
    req: &Request,
    symbol: &str,
    step: i16,
    every: i64,
    win: Window,
    emit: &mut (dyn FnMut(Vec<Vec<Val>>) -> anyhow::Result<()> + Send),
) -> anyhow::Result<()> {
    let sessions = store.session_spans(venue, symbol).await?;
    // when (our clock) the connection a full book came from closed
    let closed_at = |recv_us: i64| {
        let at = recv_us.div_euclid(1000);
        sessions
            .iter()
            .rev()
            .find(|(c, d)| *c <= at && d.is_none_or(|d| at <= d))
            .and_then(|(_, d)| *d)
    };
    let stream = StreamKey::Book(step).name();
    let mut breaks: Vec<i64> = store
        .load_gaps(venue, Some(symbol))
        .await?
        .into_iter()
        .filter(|g| g.stream == stream)
        .map(|g| g.start_ms)
        .collect();
    breaks.sort_unstable();
    let mut g = align_up(win.from, every);
    // the full book in force at the first grid time, then everything received after it
    let base = store.snapshot_before(venue, symbol, step, g).await?;
    let mut snap_after = base.map_or(i64::MIN, |r| r - 1);
    let mut delta_range = DeltaRange {
        depth_step: step,
        after: (base.unwrap_or(i64::MIN), i64::MAX),
        from_ms: i64::MIN,
        to_ms: win.to,
        limit: PAGE,
    };
    let mut snaps: Pager<crate::store::figures::BookRow> = Pager::new();
    let mut deltas: Pager<BookDelta> = Pager::new();
    let mut state: Option<Rebuilt> = None;
    let mut out: Vec<Vec<Val>> = Vec::new();
    loop {
        if snaps.buf.is_empty() && !snaps.done {
            let page = store
                .book_rows_page(venue, symbol, step, snap_after, i64::MIN, win.to, PAGE)
                .await?;
            if let Some(last) = page.last() {
                snap_after = last.0;
            }
            snaps.refill(page);
        }
        if deltas.buf.is_empty() && !deltas.done {
            let page = store.deltas_page(venue, symbol, &delta_range).await?;
            if let Some(last) = page.last() {
                delta_range.after = (last.recv_time_us, last.seq.into());
            }
            deltas.refill(page);
        }
        // at one receive time the changes come first: a full book stored with them
        // already holds them
        let take_delta = match (deltas.buf.front(), snaps.buf.front()) {
            (Some(d), Some(s)) => d.recv_time_us <= s.0,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        let t = if take_delta {
            deltas.buf.front().map(|d| d.event_time_ms)
        } else {
            snaps.buf.front().map(|s| s.1)
        }
        .unwrap_or(i64::MAX);
        g = fill(&state, g, t.min(win.to), every, req, &mut out);
        if out.len() >= PAGE as usize {
            emit(std::mem::take(&mut out))?;
        }
        if take_delta {
            let Some(d) = deltas.buf.pop_front() else {
                continue;
            };
            if let Some(s) = state.as_mut() {
                crate::store::apply_delta(&mut s.book, d.side, d.price, d.qty);
                s.book.event_time_ms = d.event_time_ms;
                s.book.recv_time_us = d.recv_time_us;
            }
        } else {
            let Some((recv, event, _, bids, asks)) = snaps.buf.pop_front() else {
                continue;
            };
            state = Some(Rebuilt {
                book: BookSnapshot {
                    venue,
                    symbol: Arc::from(symbol),
                    depth_step: step,
                    event_time_ms: event,
                    recv_time_us: recv,
                    bids: crate::store::levels_from_json(&bids)?,
                    asks: crate::store::levels_from_json(&asks)?,
                },
                closed_at_ms: closed_at(recv),
                broken_at_ms: breaks.iter().copied().find(|b| *b >= event),
            });
        }
    }
    fill(&state, g, win.to, every, req, &mut out);
    if !out.is_empty() {
        emit(out)?;
    }
    Ok(())
}

/// Rows for the grid times from `g` up to (not including) `limit`; returns the next grid
/// time. Where the book is unknown the times are skipped.
pub(super) fn fill(
    state: &Option<Rebuilt>,
    mut g: i64,
    limit: i64,
    every: i64,
    req: &Request,
    out: &mut Vec<Vec<Val>>,
) -> i64 {
    while g < limit {
        let Some(s) = state.as_ref().filter(|s| g < s.until_ms()) else {
            // nothing changes before the next row: jump there
            return align_up(limit, every).max(g);
        };
        let b = &s.book;
        let mut row = Vec::with_capacity(6 + 4 * req.depth);
        row.extend([
            text(b.venue),
            text(&*b.symbol),
            Val::Int(b.depth_step.into()),
            Val::Int(g),
            Val::Int(b.event_time_ms),
            Val::Int(b.recv_time_us),
        ]);
        for i in 0..req.depth {
            for side in [&b.bids, &b.asks] {
                match side.get(i) {
                    Some((p, q)) => row.extend([Val::Dec(p.clone()), Val::Dec(q.clone())]),
                    None => row.extend([Val::Null, Val::Null]),
                }
            }
        }
        out.push(row);
        g = g.saturating_add(every);
    }
    g
}

/// The first multiple of `every` at or after `t`.
pub(super) fn align_up(t: i64, every: i64) -> i64 {
    let r = t.rem_euclid(every);
    if r == 0 {
        t
    } else {
        t.saturating_add(every - r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_times_align_up() {
        assert_eq!(align_up(1001, 1000), 2000);
        assert_eq!(align_up(-1, 1000), 0);
        assert_eq!(align_up(3000, 1000), 3000);
    }
}
