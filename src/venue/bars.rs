//! Bars of venues whose pushes carry no closed flag: a bar is final once a later bar of its
//! interval arrives on the connection, and is then emitted again, closed.

use std::collections::HashMap;
use std::sync::Arc;

use crate::model::{Event, Kline};

/// Per (symbol index, interval): the newest bar of a connection, still open.
#[derive(Debug, Default)]
pub struct OpenBars {
    open: HashMap<(usize, Arc<str>), Kline>,
}

impl OpenBars {
    /// A bar of the connection's symbol `at` arrived. A later one closes the open bar (pushed
    /// again, closed), even when its own content is invalid: its time is news all the same.
    /// The bar is then checked (`admit`: false drops it, counted by the caller, and it is
    /// not kept open to be closed and dropped again). A valid one of the open bar's time or
    /// later becomes the open bar; an older one (a history reply, a late update) is final.
    pub fn push(
        &mut self,
        at: usize,
        mut k: Kline,
        admit: impl FnOnce(&Event) -> bool,
        out: &mut Vec<Event>,
    ) {
        let key = (at, k.interval.clone());
        let open = self.open.get(&key).map(|b| b.open_time_ms);
        if open.is_some_and(|t| t < k.open_time_ms)
            && let Some(mut done) = self.open.remove(&key)
        {
            done.closed = true;
            out.push(Event::Kline(done));
        }
        k.closed = open.is_some_and(|t| t > k.open_time_ms);
        let ev = Event::Kline(k);
        if !admit(&ev) {
            return;
        }
        if let Event::Kline(k) = &ev
            && !k.closed
        {
            self.open.insert(key, k.clone());
        }
        out.push(ev);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decimal::Dec;
    use crate::model::Source;

    fn bar(open_time_ms: i64, close: &str) -> Kline {
        let d = |s: &str| Dec::parse(s).unwrap();
        Kline {
            venue: "test",
            symbol: Arc::from("X"),
            interval: Arc::from("1m"),
            open_time_ms,
            open: d("1"),
            high: d("3"),
            low: d("1"),
            close: d(close),
            volume: d("5"),
            quote_volume: None,
            closed: false,
            event_time_ms: open_time_ms,
            recv_time_us: 0,
            source: Source::Ws,
        }
    }

    fn seen(out: &[Event]) -> Vec<(i64, String, bool)> {
        out.iter()
            .map(|e| match e {
                Event::Kline(k) => (k.open_time_ms, k.close.as_str().to_string(), k.closed),
                _ => panic!("not a bar"),
            })
            .collect()
    }

    #[test]
    fn a_bar_is_final_when_a_later_one_arrives() {
        let mut bars = OpenBars::default();
        let mut out = Vec::new();
        let valid = |_: &Event| true;
        bars.push(0, bar(60_000, "2"), valid, &mut out);
        bars.push(0, bar(60_000, "3"), valid, &mut out);
        bars.push(0, bar(120_000, "1"), valid, &mut out);
        // another symbol's bars are its own
        bars.push(1, bar(0, "2"), valid, &mut out);
        // an older bar is final at once
        bars.push(0, bar(0, "2"), valid, &mut out);
        assert_eq!(
            seen(&out),
            [
                (60_000, "2".into(), false),
                (60_000, "3".into(), false),
                (60_000, "3".into(), true),
                (120_000, "1".into(), false),
                (0, "2".into(), false),
                (0, "2".into(), true),
            ]
        );
    }

    #[test]
    fn an_invalid_later_bar_closes_the_open_one_and_is_not_kept() {
        let mut bars = OpenBars::default();
        let mut out = Vec::new();
        bars.push(0, bar(60_000, "2"), |_| true, &mut out);
        bars.push(0, bar(120_000, "9"), |_| false, &mut out);
        // nothing open is left to close: the next bar is only itself
        bars.push(0, bar(180_000, "1"), |_| true, &mut out);
        assert_eq!(
            seen(&out),
            [
                (60_000, "2".into(), false),
                (60_000, "2".into(), true),
                (180_000, "1".into(), false),
            ]
        );
    }
}
