//! Reading a file's rows page by page into a sink.

use super::grid::book_grid;
use super::plan::{Part, gap_in, grid_step, steps};
use super::request::{Kind, Request};
use super::rows::{PAGE, Sink, Val, delta_row, kline_row, opt_text, text, ticker_row, trade_row};
use crate::store::{DeltaRange, Range, Store};

/// Reads a part's rows page by page into `sink`; returns how many.
pub(super) async fn produce(
    store: &Store,
    venue: &'static str,
    req: &Request,
    part: &Part,
    sink: &mut dyn Sink,
    progress: &mut dyn FnMut(u64),
) -> anyhow::Result<u64> {
    let symbol = part.symbol.as_str();
    let win = part.win;
    let mut n = 0u64;
    let mut emit = |rows: Vec<Vec<Val>>, sink: &mut dyn Sink, n: &mut u64| -> anyhow::Result<()> {
        *n += rows.len() as u64;
        sink.write(rows)?;
        progress(*n);
        Ok(())
    };
    let range = |after| Range {
        from_ms: win.from,
        to_ms: win.to,
        after,
        limit: PAGE,
    };
    match req.kind {
        Kind::Book if req.grid().is_some() => {
            let step = grid_step(store, venue, symbol, req.step).await?;
            let every = req.grid().unwrap_or(1000);
            book_grid(store, venue, req, symbol, step, every, win, &mut |rows| {
                emit(rows, sink, &mut n)
            })
            .await?;
        }
        Kind::Trades => {
            let mut after = (i64::MIN, i64::MIN);
            loop {
                let t = store.trades_page(venue, symbol, &range(after)).await?;
                let Some(last) = t.last() else { break };
                after = (last.event_time_ms, last.trade_id);
                emit(t.into_iter().map(trade_row).collect(), sink, &mut n)?;
            }
        }
        Kind::Klines => {
            let mut after = (i64::MIN, i64::MIN);
            loop {
                let k = store
                    .klines_page(venue, symbol, &req.interval, &range(after))
                    .await?;
                let Some(last) = k.last() else { break };
                after = (last.open_time_ms, 0);
                emit(k.into_iter().map(kline_row).collect(), sink, &mut n)?;
            }
        }
        Kind::Book => {
            // one depth step at a time, in the key's order: every page an index seek
            for step in steps(store, venue, symbol, req.kind, req.step).await? {
                let mut after = i64::MIN;
                loop {
                    let rows = store
                        .book_rows_page(venue, symbol, step, after, win.from, win.to, PAGE)
                        .await?;
                    let Some(last) = rows.last() else { break };
                    after = last.0;
                    let mut out = Vec::with_capacity(rows.len());
                    for (recv, event, step, bids, asks) in rows {
                        out.push(vec![
                            text(venue),
                            text(symbol),
                            Val::Int(step),
                            Val::Int(recv),
                            Val::Int(event),
                            Val::Levels(crate::store::levels_from_json(&bids)?),
                            Val::Levels(crate::store::levels_from_json(&asks)?),
                        ]);
                    }
                    emit(out, sink, &mut n)?;
                }
            }
        }
        Kind::BookDeltas => {
            for step in steps(store, venue, symbol, req.kind, req.step).await? {
                let mut r = DeltaRange {
                    depth_step: step,
                    after: (i64::MIN, i64::MIN),
                    from_ms: win.from,
                    to_ms: win.to,
                    limit: PAGE,
                };
                loop {
                    let d = store.deltas_page(venue, symbol, &r).await?;
                    let Some(last) = d.last() else { break };
                    r.after = (last.recv_time_us, last.seq.into());
                    emit(d.into_iter().map(delta_row).collect(), sink, &mut n)?;
                }
            }
        }
        Kind::Tickers => {
            let mut after = i64::MIN;
            loop {
                let t = store
                    .tickers_page(venue, symbol, after, (win.from, win.to), PAGE)
                    .await?;
                let Some(last) = t.last() else { break };
                after = last.recv_time_us;
                emit(t.into_iter().map(ticker_row).collect(), sink, &mut n)?;
            }
        }
        Kind::Gaps => {
            let rows: Vec<Vec<Val>> = store
                .load_gaps(venue, Some(symbol))
                .await?
                .into_iter()
                .filter(|g| gap_in(g, req.from_ms, req.to_ms))
                .filter(|g| {
                    let at = g.start_ms.max(req.from_ms);
                    (at >= win.from || win.first) && at < win.to
                })
                .map(|g| {
                    vec![
                        text(g.venue),
                        text(&*g.symbol),
                        Val::Text(g.stream),
                        Val::Int(g.start_ms),
                        g.end_ms.map_or(Val::Null, Val::Int),
                        text(g.status.as_str()),
                        Val::Int(g.detected_at_ms),
                        g.resolved_at_ms.map_or(Val::Null, Val::Int),
                        Val::Int(g.rows_recovered),
                        opt_text(g.detail),
                    ]
                })
                .collect();
            if !rows.is_empty() {
                emit(rows, sink, &mut n)?;
            }
        }
    }
    Ok(n)
}
