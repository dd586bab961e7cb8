//! Book changes as stored: one `book_updates` row per book update (the changes one frame made
//! to one book), its levels packed as exact text (`b<price>:<qty>;a<price>:<qty>`), keyed by
//! a `book_streams` number. Packing and unpacking; the reads are in `book_read.rs`.

use super::error::StoreError;
use crate::decimal::Dec;
use crate::model::{BookDelta, BookSide};

/// One `book_updates` row as written: the levels of consecutive changes of one book in one
/// frame (same receive time, exchange time and update ids, seq rising).
#[derive(Debug, Clone, PartialEq)]
pub struct Packed<'a> {
    pub venue: &'static str,
    pub symbol: &'a str,
    pub depth_step: i16,
    pub recv_time_us: i64,
    pub first_seq: i32,
    pub event_time_ms: i64,
    pub update_id: Option<i64>,
    pub prev_update_id: Option<i64>,
    pub levels: String,
}

/// A book stream as `book_streams` keys it.
pub type StreamRow<'a> = (&'static str, &'a str, i16);

/// The batch's changes as rows, in their order. A frame whose changes reach two batches
/// becomes two rows (the second starts past the first's last seq), so writing the same
/// changes again, split or not, never stores a level twice under another key.
pub fn pack(deltas: &[BookDelta]) -> Vec<Packed<'_>> {
    let mut out: Vec<Packed<'_>> = Vec::new();
    let mut last_seq = 0;
    for d in deltas {
        let joins = out.last().is_some_and(|p| {
            p.symbol == &*d.symbol
                && p.venue == d.venue
                && p.depth_step == d.depth_step
                && p.recv_time_us == d.recv_time_us
                && p.event_time_ms == d.event_time_ms
                && p.update_id == d.update_id
                && p.prev_update_id == d.prev_update_id
                && d.seq > last_seq
        });
        match out.last_mut() {
            Some(p) if joins => {
                p.levels.push(';');
                push_level(&mut p.levels, d);
            }
            _ => {
                let mut levels = String::with_capacity(24);
                push_level(&mut levels, d);
                out.push(Packed {
                    venue: d.venue,
                    symbol: &d.symbol,
                    depth_step: d.depth_step,
                    recv_time_us: d.recv_time_us,
                    first_seq: d.seq,
                    event_time_ms: d.event_time_ms,
                    update_id: d.update_id,
                    prev_update_id: d.prev_update_id,
                    levels,
                });
            }
        }
        last_seq = d.seq;
    }
    out
}

/// The distinct streams of packed rows (a batch names few).
pub fn streams<'a>(rows: &[Packed<'a>]) -> Vec<StreamRow<'a>> {
    let mut s: Vec<StreamRow<'a>> = rows
        .iter()
        .map(|p| (p.venue, p.symbol, p.depth_step))
        .collect();
    s.sort_unstable();
    s.dedup();
    s
}

fn push_level(out: &mut String, d: &BookDelta) {
    out.push(match d.side {
        BookSide::Bid => 'b',
        BookSide::Ask => 'a',
    });
    out.push_str(d.price.as_str());
    out.push(':');
    out.push_str(d.qty.as_str());
}

/// The levels of a stored row: (side, price, qty) in the frame's order.
pub fn unpack_levels(levels: &str) -> Result<Vec<(BookSide, Dec, Dec)>, StoreError> {
    let corrupt = |m: String| StoreError::Corrupt(format!("book_updates levels: {m}"));
    levels
        .split(';')
        .map(|l| {
            let side = match l.as_bytes().first() {
                Some(b'b') => BookSide::Bid,
                Some(b'a') => BookSide::Ask,
                _ => return Err(corrupt(format!("no side in {l:?}"))),
            };
            let (p, q) = l[1..]
                .split_once(':')
                .ok_or_else(|| corrupt(format!("no ':' in {l:?}")))?;
            let p = Dec::parse(p).map_err(|e| corrupt(e.to_string()))?;
            let q = Dec::parse(q).map_err(|e| corrupt(e.to_string()))?;
            Ok((side, p, q))
        })
        .collect()
}

/// Level changes in a packed row: one more than its separators (SQL, both backends).
pub const LEVEL_COUNT: &str = "(LENGTH(levels) - LENGTH(REPLACE(levels, ';', '')) + 1)";

/// The packed rows with their stream's key, for queries that name columns unqualified
/// (`venue`, `symbol`, `depth_step`, `recv_time_us`, `event_time_ms`, `levels`).
pub const UPDATES: &str = "book_updates JOIN book_streams ON book_streams.id = book_updates.stream";
