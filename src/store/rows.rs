//! What both backends share about rows: refused rows (`rejected_rows`), pages by time, book
//! levels as JSON, and decoding stored words back into model values.

use super::error::StoreError;
use crate::decimal::Dec;
use crate::model::{BookSnapshot, Event, Side, Source, Trade};

pub(crate) const REJECT_SQL: &str = "INSERT INTO rejected_rows (venue, symbol, kind, reason, error, row_json, \
                          stored_json, row_key, rejected_at_ms) \
                          VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                          ON CONFLICT (reason, row_key) DO NOTHING";

/// Inserts `Rejected` rows in an open transaction of either backend.
macro_rules! insert_rejected {
    ($tx:expr, $rows:expr) => {
        for r in $rows {
            sqlx::query($crate::store::rows::REJECT_SQL)
                .bind(&r.venue)
                .bind(&r.symbol)
                .bind(&r.kind)
                .bind(&r.reason)
                .bind(r.error.as_deref())
                .bind(&r.row_json)
                .bind(r.stored_json.as_deref())
                .bind(r.row_key())
                .bind(r.rejected_at_ms)
                .execute(&mut *$tx)
                .await
                .map_err($crate::store::StoreError::sql("insert rejected_rows"))?;
        }
    };
}
pub(crate) use insert_rejected;

/// A row the database would not store as market data, kept with the reason (the
/// `rejected_rows` table, or the quarantine file when the database refuses even that).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Rejected {
    pub venue: String,
    pub symbol: String,
    /// The table the row was meant for.
    pub kind: String,
    /// `data_error` or `conflict`.
    pub reason: String,
    pub error: Option<String>,
    pub row_json: String,
    pub stored_json: Option<String>,
    pub rejected_at_ms: i64,
}

impl Rejected {
    /// A row the database refused, with the database's message.
    pub fn data_error(ev: &Event, error: &str) -> Rejected {
        let (venue, symbol) = ev.venue_symbol();
        Rejected {
            venue: venue.to_string(),
            symbol: crate::model::safe_text(symbol, crate::model::MAX_TEXT_BYTES).into_owned(),
            kind: ev.table().as_str().to_string(),
            reason: "data_error".into(),
            error: Some(crate::model::safe_text(error, 2048).into_owned()),
            row_json: event_json(ev),
            stored_json: None,
            rejected_at_ms: crate::model::now_ms(),
        }
    }

    /// A trade whose key is stored with other content: both versions kept.
    pub fn conflict(new: &Trade, stored: &Trade) -> Rejected {
        let mut what = Vec::new();
        if new.side != stored.side {
            what.push(format!(
                "side {} -> {}",
                stored.side.as_str(),
                new.side.as_str()
            ));
        }
        if new.price != stored.price {
            what.push(format!(
                "price {} -> {}",
                stored.price.as_str(),
                new.price.as_str()
            ));
        }
        if new.qty != stored.qty {
            what.push(format!(
                "qty {} -> {}",
                stored.qty.as_str(),
                new.qty.as_str()
            ));
        }
        if new.event_time_ms != stored.event_time_ms {
            what.push(format!(
                "event_time_ms {} -> {}",
                stored.event_time_ms, new.event_time_ms
            ));
        }
        Rejected {
            venue: new.venue.to_string(),
            symbol: new.symbol.to_string(),
            kind: "trades".into(),
            reason: "conflict".into(),
            error: Some(format!(
                "trade id {} is stored with other content: {}",
                new.trade_id,
                what.join(", ")
            )),
            row_json: event_json(&Event::Trade(new.clone())),
            stored_json: Some(event_json(&Event::Trade(stored.clone()))),
            rejected_at_ms: crate::model::now_ms(),
        }
    }

    /// Identifies the row across replays: FNV-1a 64 over its JSON, and the JSON's length.
    pub fn row_key(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in self.row_json.as_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("{h:016x}-{}", self.row_json.len())
    }
}

/// An event as JSON text that any database takes: NUL is escaped by serde_json (`\u0000`),
/// never raw.
pub fn event_json(ev: &Event) -> String {
    serde_json::to_string(ev)
        .unwrap_or_else(|e| format!("{{\"unserializable\":{:?}}}", e.to_string()))
}

/// Where a page of book changes starts: one depth step, after (receive time, seq), with
/// exchange time in `[from_ms, to_ms)`.
#[derive(Debug, Clone, Copy)]
pub struct DeltaRange {
    pub depth_step: i16,
    pub after: (i64, i64),
    pub from_ms: i64,
    pub to_ms: i64,
    pub limit: i64,
}

pub(crate) fn parse_book_side(s: &str) -> Result<crate::model::BookSide, StoreError> {
    match s {
        "bid" => Ok(crate::model::BookSide::Bid),
        "ask" => Ok(crate::model::BookSide::Ask),
        other => Err(StoreError::Corrupt(format!("book side {other:?}"))),
    }
}

/// A page of rows by time: `from_ms <= t < to_ms`, strictly after the keyset position `after`
/// (time, id; for bars only the time counts), at most `limit` rows.
#[derive(Debug, Clone, Copy)]
pub struct Range {
    pub from_ms: i64,
    pub to_ms: i64,
    pub after: (i64, i64),
    pub limit: i64,
}

impl Range {
    /// Where an index scan starts: the later of the range start and the keyset position (a
    /// separate `(time, id) > (..)` filter would not seek, and every page would rescan).
    pub fn lower(&self) -> i64 {
        self.from_ms.max(self.after.0)
    }

    pub const ALL: Range = Range {
        from_ms: i64::MIN,
        to_ms: i64::MAX,
        after: (i64::MIN, i64::MIN),
        limit: i64::MAX,
    };
}

/// `[["price","qty"],...]` with exact strings.
pub fn levels_to_json(levels: &[(Dec, Dec)]) -> String {
    let v: Vec<[&str; 2]> = levels
        .iter()
        .map(|(p, q)| [p.as_str(), q.as_str()])
        .collect();
    serde_json::to_string(&v).unwrap_or_else(|_| "[]".into())
}

pub fn levels_from_json(text: &str) -> Result<Vec<(Dec, Dec)>, StoreError> {
    let v: Vec<[String; 2]> =
        serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("book levels: {e}")))?;
    v.into_iter()
        .map(|[p, q]| {
            Ok((
                Dec::parse(&p).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                Dec::parse(&q).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            ))
        })
        .collect()
}

/// Applies a level change: qty zero removes the level; levels stay best first.
pub fn apply_delta(book: &mut BookSnapshot, side: crate::model::BookSide, price: Dec, qty: Dec) {
    use crate::model::BookSide;
    let levels = match side {
        BookSide::Bid => &mut book.bids,
        BookSide::Ask => &mut book.asks,
    };
    let pos = levels.iter().position(|(p, _)| *p == price);
    match (pos, qty.is_zero()) {
        (Some(i), true) => {
            levels.remove(i);
        }
        (Some(i), false) => levels[i].1 = qty,
        (None, true) => {}
        (None, false) => {
            let at = levels
                .iter()
                .position(|(p, _)| match side {
                    BookSide::Bid => *p < price,
                    BookSide::Ask => *p > price,
                })
                .unwrap_or(levels.len());
            levels.insert(at, (price, qty));
        }
    }
}

pub(crate) fn req(v: Option<Dec>, col: &str) -> Result<Dec, StoreError> {
    v.ok_or_else(|| StoreError::Corrupt(format!("{col} is NULL")))
}

pub(crate) fn parse_side(s: &str) -> Result<Side, StoreError> {
    Side::parse(s).ok_or_else(|| StoreError::Corrupt(format!("side {s:?}")))
}

pub(crate) fn parse_source(s: &str) -> Result<Source, StoreError> {
    match s {
        "ws" => Ok(Source::Ws),
        "rest" => Ok(Source::Rest),
        other => Err(StoreError::Corrupt(format!("source {other:?}"))),
    }
}

/// Rows carry `&'static str` venue names; map a stored name back to the known one.
pub(crate) fn static_venue(v: &str) -> &'static str {
    crate::venue::registry::static_name(v).unwrap_or("unknown")
}
