//! Reading a file's rows page by page into a sink.

use super::grid::book_grid;
use super::plan::{Part, Window, gap_in, grid_step, steps};
use super::request::{Kind, Request};
use super::rows::{
    PAGE, Sink, Val, delta_row, gap_row, hive_key, kline_row, text, ticker_row, trade_row,
};
use crate::store::{DeltaRange, Range, Store};

/// Reads a part's rows page by page into `sink`; returns how many.
pub(super) async fn produce(
    store: &Store,
    venue: &'static str,
    req: &Request,
    part: &Part,
    sink: &mut (dyn Sink + Send),
    progress: &mut (dyn FnMut(u64) + Send),
) -> anyhow::Result<u64> {
    let mut p = Pages {
        store,
        venue,
        req,
        symbol: part.symbol.as_str(),
        win: part.win,
        sink,
        progress,
        n: 0,
        hive_key: hive_key(req),
    };
    match req.kind {
        Kind::Book if req.grid().is_some() => p.grid().await?,
        Kind::Trades => p.trades().await?,
        Kind::Klines => p.klines().await?,
        Kind::Book => p.books().await?,
        Kind::BookDeltas => p.deltas().await?,
        Kind::Tickers => p.tickers().await?,
        Kind::Gaps => p.gaps().await?,
    }
    Ok(p.n)
}

/// One file's rows being read: where from, where to, how many so far.
struct Pages<'a> {
    store: &'a Store,
    venue: &'static str,
    req: &'a Request,
    symbol: &'a str,
    win: Window,
    sink: &'a mut (dyn Sink + Send),
    progress: &'a mut (dyn FnMut(u64) + Send),
    n: u64,
    /// The cell the layout leaves out (the symbol, in a hive layout).
    hive_key: Option<usize>,
}

impl Pages<'_> {
    fn emit(&mut self, mut rows: Vec<Vec<Val>>) -> anyhow::Result<()> {
        if let Some(i) = self.hive_key {
            for r in &mut rows {
                r.remove(i);
            }
        }
        self.n += rows.len() as u64;
        self.sink.write(rows)?;
        (self.progress)(self.n);
        Ok(())
    }

    /// The page of the window after the keyset position `after`.
    fn range(&self, after: (i64, i64)) -> Range {
        Range {
            from_ms: self.win.from,
            to_ms: self.win.to,
            after,
            limit: PAGE,
        }
    }

    async fn grid(&mut self) -> anyhow::Result<()> {
        let (store, venue, req, symbol) = (self.store, self.venue, self.req, self.symbol);
        let step = grid_step(store, venue, symbol, req.step).await?;
        let every = req.grid().unwrap_or(1000);
        let win = self.win;
        book_grid(store, venue, req, symbol, step, every, win, &mut |rows| {
            self.emit(rows)
        })
        .await
    }

    async fn trades(&mut self) -> anyhow::Result<()> {
        let mut after = (i64::MIN, i64::MIN);
        loop {
            let range = self.range(after);
            let t = self
                .store
                .trades_page(self.venue, self.symbol, &range)
                .await?;
            let Some(last) = t.last() else { break };
            after = (last.event_time_ms, last.trade_id);
            self.emit(t.into_iter().map(trade_row).collect())?;
        }
        Ok(())
    }

    async fn klines(&mut self) -> anyhow::Result<()> {
        let mut after = (i64::MIN, i64::MIN);
        loop {
            let range = self.range(after);
            let k = self
                .store
                .klines_page(self.venue, self.symbol, &self.req.interval, &range)
                .await?;
            let Some(last) = k.last() else { break };
            after = (last.open_time_ms, 0);
            self.emit(k.into_iter().map(kline_row).collect())?;
        }
        Ok(())
    }

    /// Stored full books, one depth step at a time, in the key's order: every page an index
    /// seek.
    async fn books(&mut self) -> anyhow::Result<()> {
        let (store, venue, symbol, win) = (self.store, self.venue, self.symbol, self.win);
        for step in steps(store, venue, symbol, self.req.kind, self.req.step).await? {
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
                self.emit(out)?;
            }
        }
        Ok(())
    }

    async fn deltas(&mut self) -> anyhow::Result<()> {
        let (store, venue, symbol, win) = (self.store, self.venue, self.symbol, self.win);
        for step in steps(store, venue, symbol, self.req.kind, self.req.step).await? {
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
                self.emit(d.into_iter().map(delta_row).collect())?;
            }
        }
        Ok(())
    }

    async fn tickers(&mut self) -> anyhow::Result<()> {
        let win = self.win;
        let mut after = i64::MIN;
        loop {
            let t = self
                .store
                .tickers_page(self.venue, self.symbol, after, (win.from, win.to), PAGE)
                .await?;
            let Some(last) = t.last() else { break };
            after = last.recv_time_us;
            self.emit(t.into_iter().map(ticker_row).collect())?;
        }
        Ok(())
    }

    /// Holes overlapping the request, each in the file of the day it starts on (or the
    /// first file, when it began before the window).
    async fn gaps(&mut self) -> anyhow::Result<()> {
        let (req, win) = (self.req, self.win);
        let rows: Vec<Vec<Val>> = self
            .store
            .load_gaps(self.venue, Some(self.symbol))
            .await?
            .into_iter()
            .filter(|g| gap_in(g, req.from_ms, req.to_ms))
            .filter(|g| {
                let at = g.start_ms.max(req.from_ms);
                (at >= win.from || win.first) && at < win.to
            })
            .map(gap_row)
            .collect();
        if !rows.is_empty() {
            self.emit(rows)?;
        }
        Ok(())
    }
}
