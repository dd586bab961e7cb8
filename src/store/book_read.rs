//! The reads of stored book changes both backends share (one SQL text, `$N` parameters,
//! like `read.rs`): pages of level changes, and the book rebuilt at a time.

use std::sync::Arc;

use super::book::unpack_levels;
use super::rows::{DeltaRange, apply_delta, levels_from_json, static_venue};
use super::{Store, StoreError, on_pool};
use crate::model::{BookDelta, BookSnapshot};

/// A stored row as read: receive time, first seq, exchange time, update ids, levels.
type UpdateRow = (i64, i64, i64, Option<i64>, Option<i64>, String);

const UPDATE_COLUMNS: &str = "u.recv_time_us, CAST(u.first_seq AS BIGINT), u.event_time_ms, \
     u.update_id, u.prev_update_id, u.levels FROM book_updates u \
     JOIN book_streams s ON s.id = u.stream \
     WHERE s.venue = $1 AND s.symbol = $2 AND s.depth_step = $3";

fn unpack_rows(
    rows: Vec<UpdateRow>,
    venue: &str,
    symbol: &str,
    depth_step: i16,
) -> Result<Vec<BookDelta>, StoreError> {
    let venue = static_venue(venue);
    let symbol: Arc<str> = Arc::from(symbol);
    let mut out = Vec::with_capacity(rows.len() * 2);
    for (recv_time_us, first_seq, event_time_ms, update_id, prev_update_id, levels) in rows {
        for (i, (side, price, qty)) in unpack_levels(&levels)?.into_iter().enumerate() {
            out.push(BookDelta {
                venue,
                symbol: symbol.clone(),
                depth_step,
                event_time_ms,
                recv_time_us,
                seq: i32::try_from(first_seq + i as i64)
                    .map_err(|_| StoreError::Corrupt(format!("book_updates seq {first_seq}")))?,
                side,
                price,
                qty,
                update_id,
                prev_update_id,
            });
        }
    }
    Ok(out)
}

impl Store {
    /// Book changes of one depth step after `r.after` (receive time, seq), exchange time in
    /// the range, in receive order: up to `r.limit` stored updates, each whole.
    pub async fn deltas_page(
        &self,
        venue: &str,
        symbol: &str,
        r: &DeltaRange,
    ) -> Result<Vec<BookDelta>, StoreError> {
        let sql = format!(
            "SELECT {UPDATE_COLUMNS} AND u.recv_time_us >= $4 \
             AND (u.recv_time_us > $4 OR u.first_seq > $5) \
             AND u.event_time_ms >= $6 AND u.event_time_ms < $7 \
             ORDER BY u.recv_time_us, u.first_seq LIMIT $8"
        );
        let rows: Vec<UpdateRow> = on_pool!(self, p => sqlx::query_as(&sql)
            .bind(venue)
            .bind(symbol)
            .bind(r.depth_step)
            .bind(r.after.0)
            .bind(r.after.1)
            .bind(r.from_ms)
            .bind(r.to_ms)
            .bind(r.limit)
            .fetch_all(p)
            .await)
        .map_err(StoreError::sql("select book_updates"))?;
        unpack_rows(rows, venue, symbol, r.depth_step)
    }

    /// The book at exchange time `at_ms` (None: the newest): the last snapshot at or before
    /// it, with the changes received after that snapshot (and before the next) up to `at_ms`.
    pub async fn load_book(
        &self,
        venue: &str,
        symbol: &str,
        depth_step: i16,
        at_ms: Option<i64>,
    ) -> Result<Option<BookSnapshot>, StoreError> {
        let order = if at_ms.is_some() {
            "event_time_ms DESC, recv_time_us DESC"
        } else {
            "recv_time_us DESC"
        };
        let sql = format!(
            "SELECT recv_time_us, event_time_ms, CAST(bids AS TEXT), CAST(asks AS TEXT) \
             FROM book_snapshots WHERE venue = $1 AND symbol = $2 AND depth_step = $3 \
             AND event_time_ms <= $4 ORDER BY {order} LIMIT 1"
        );
        let snap: Option<(i64, i64, String, String)> = on_pool!(self, p => sqlx::query_as(&sql)
            .bind(venue)
            .bind(symbol)
            .bind(depth_step)
            .bind(at_ms.unwrap_or(i64::MAX))
            .fetch_optional(p)
            .await)
        .map_err(StoreError::sql("select book_snapshots"))?;
        let Some((recv_time_us, event_time_ms, bids, asks)) = snap else {
            return Ok(None);
        };
        let mut book = BookSnapshot {
            venue: static_venue(venue),
            symbol: Arc::from(symbol),
            depth_step,
            event_time_ms,
            recv_time_us,
            bids: levels_from_json(&bids)?,
            asks: levels_from_json(&asks)?,
        };
        // changes after the next snapshot belong to that snapshot
        let next: Option<i64> = on_pool!(self, p => sqlx::query_scalar(
            "SELECT MIN(recv_time_us) FROM book_snapshots \
             WHERE venue = $1 AND symbol = $2 AND depth_step = $3 AND recv_time_us > $4")
            .bind(venue)
            .bind(symbol)
            .bind(depth_step)
            .bind(book.recv_time_us)
            .fetch_one(p)
            .await)
        .map_err(StoreError::sql("select book_snapshots"))?;
        let sql = format!(
            "SELECT {UPDATE_COLUMNS} AND u.recv_time_us > $4 AND u.recv_time_us < $5 \
             AND u.event_time_ms <= $6 ORDER BY u.recv_time_us, u.first_seq"
        );
        let rows: Vec<UpdateRow> = on_pool!(self, p => sqlx::query_as(&sql)
            .bind(venue)
            .bind(symbol)
            .bind(depth_step)
            .bind(book.recv_time_us)
            .bind(next.filter(|_| at_ms.is_some()).unwrap_or(i64::MAX))
            .bind(at_ms.unwrap_or(i64::MAX))
            .fetch_all(p)
            .await)
        .map_err(StoreError::sql("select book_updates"))?;
        for (recv, _, event, _, _, levels) in rows {
            for (side, price, qty) in unpack_levels(&levels)? {
                apply_delta(&mut book, side, price, qty);
            }
            book.recv_time_us = recv;
            book.event_time_ms = event;
        }
        Ok(Some(book))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decimal::Dec;
    use crate::model::BookSide;
    use crate::store::book::pack;

    fn delta(recv: i64, seq: i32, side: BookSide, p: &str, q: &str) -> BookDelta {
        BookDelta {
            venue: "cdc-exchange",
            symbol: Arc::from("BTC_USD"),
            depth_step: 50,
            event_time_ms: recv / 1000,
            recv_time_us: recv,
            seq,
            side,
            price: Dec::parse(p).unwrap(),
            qty: Dec::parse(q).unwrap(),
            update_id: Some(recv),
            prev_update_id: Some(recv - 1),
        }
    }

    #[test]
    fn a_frame_is_one_row_and_its_levels_come_back_exactly() {
        let d = vec![
            delta(10, 0, BookSide::Bid, "86691.90", "0.09026"),
            delta(10, 1, BookSide::Ask, "86692.28", "0"),
            delta(11, 0, BookSide::Ask, "9744.2500000000000000123", "3.473"),
        ];
        let p = pack(&d);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].levels, "b86691.9:0.09026;a86692.28:0");
        assert_eq!(p[0].first_seq, 0);
        let rows: Vec<UpdateRow> = p
            .iter()
            .map(|p| {
                let r = (p.recv_time_us, p.first_seq as i64, p.event_time_ms);
                (
                    r.0,
                    r.1,
                    r.2,
                    p.update_id,
                    p.prev_update_id,
                    p.levels.clone(),
                )
            })
            .collect();
        assert_eq!(unpack_rows(rows, "cdc-exchange", "BTC_USD", 50).unwrap(), d);
    }

    #[test]
    fn a_frame_split_over_two_batches_keeps_distinct_keys() {
        let d = [
            delta(10, 0, BookSide::Bid, "1", "2"),
            delta(10, 1, BookSide::Bid, "3", "4"),
            delta(10, 2, BookSide::Ask, "5", "6"),
        ];
        let (a, b) = (pack(&d[..2]), pack(&d[2..]));
        assert_eq!((a.len(), b.len()), (1, 1));
        assert_eq!((a[0].first_seq, b[0].first_seq), (0, 2));
        // seq going back within one receive time starts a new row
        let back = vec![d[1].clone(), d[0].clone()];
        assert_eq!(pack(&back).len(), 2);
    }

    #[test]
    fn damaged_levels_are_an_error_not_a_panic() {
        for bad in ["", "x1:2", "b1", "b1:x", "b:2", "a1:2;"] {
            assert!(unpack_levels(bad).is_err(), "{bad:?}");
        }
        assert_eq!(unpack_levels("a1:2").unwrap().len(), 1);
    }
}
