//! v1's own words that every part of the folder reads: its kind and its interval names.

/// The `venue.kind` and the `venue` column value.
pub const NAME: &str = "cdc-v1";

/// v1's kline intervals, by its own names; `1month` is a calendar month.
pub const INTERVALS: [&str; 8] = [
    "1min", "5min", "15min", "30min", "60min", "1day", "1week", "1month",
];
