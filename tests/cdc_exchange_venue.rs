//! The Exchange API venue's plans, checks and history paging, without IO: 120 instruments x 4
//! channels on as few sockets as the 400-channel cap allows, subscriptions batched under the
//! request rate, `get-trades` paged back by time to the anchor, `get-candlestick` paged
//! forward, and configuration in the exchange's words.

use std::sync::Arc;

use mdrec::config::VenueOptions;
use mdrec::model::TradeMark;
use mdrec::venue::cdc_exchange::venue::{
    BARS_PER_PAGE, CHANNELS_PER_REQUEST, CHANNELS_PER_SOCKET, TRADES_PER_PAGE,
};
use mdrec::venue::cdc_exchange::{make_exchange, make_v2};
use mdrec::venue::{HistoryRequest, Reach, Venue};

/// `[record]` as parsed (the venue is not registered yet, so keys it would default are given).
fn record(symbols: &[String], extra: &str) -> mdrec::config::RecordConfig {
    let list: Vec<String> = symbols.iter().map(|s| format!("{s:?}")).collect();
    let mut extra = extra.to_string();
    if !extra.contains("klines") {
        extra.push_str("\nklines = [\"1m\"]");
    }
    if !extra.contains("depth") {
        extra.push_str("\ndepth = 10");
    }
    let text = format!(
        "[venue]\n[record]\nsymbols = [{}]\ntrades = true\nticker = true\n{extra}\n",
        list.join(", ")
    );
    mdrec::venue::registry::parse_config(&text)
        .expect("parses")
        .record
}

fn exchange() -> Arc<dyn Venue> {
    make_exchange(&VenueOptions::new()).expect("no options")
}

#[test]
fn a_whole_exchange_on_a_few_sockets() {
    let symbols: Vec<String> = (0..120).map(|i| format!("C{i}_USD")).collect();
    let rec = record(&symbols, "klines = [\"1m\"]\ndepth = 50");
    let venue = exchange();
    let arcs: Vec<Arc<str>> = symbols.iter().map(|s| Arc::from(s.as_str())).collect();
    let plan = venue.plan(&arcs, &rec);
    // 480 channels, 380 a socket: two sockets, no symbol split across them
    assert_eq!(plan.len(), 2);
    assert_eq!(plan[0].streams.len(), CHANNELS_PER_SOCKET);
    assert_eq!(plan[0].symbols.len() + plan[1].symbols.len(), 120);
    assert!(plan.iter().all(|c| c.streams.len() <= 400));
    let limits = venue.socket_limits();
    assert!(limits.sends_per_s.is_some_and(|r| r <= 100));
    assert!(limits.settle >= std::time::Duration::from_secs(1));
    for conn in &plan {
        let frames = venue.subscribe_frames(conn, &rec);
        let mut channels = 0;
        for f in &frames {
            let v: serde_json::Value = serde_json::from_str(&f.frame).unwrap();
            let list = v["params"]["channels"].as_array().unwrap();
            assert!(list.len() <= CHANNELS_PER_REQUEST);
            assert_eq!(list.len(), f.streams.len());
            assert_eq!(v["method"], "subscribe");
            assert!(v["nonce"].is_i64() && v["id"].is_u64());
            // book parameters only on frames of books
            let books = list
                .iter()
                .all(|c| c.as_str().unwrap().starts_with("book."));
            assert_eq!(
                v["params"]["book_subscription_type"] == "SNAPSHOT_AND_UPDATE",
                books,
                "{}",
                f.frame
            );
            channels += list.len();
        }
        assert_eq!(channels, conn.streams.len());
        // a socket's subscriptions fit in well under two seconds of its request budget
        let secs = frames.len() as f64 / limits.sends_per_s.unwrap() as f64;
        assert!(secs < 1.0, "{} frames", frames.len());
        let ids: std::collections::BTreeSet<_> = frames
            .iter()
            .map(|f| {
                serde_json::from_str::<serde_json::Value>(&f.frame).unwrap()["id"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(ids.len(), frames.len(), "unique request ids");
    }
}

#[test]
fn configuration_is_checked_in_the_exchanges_words() {
    let venue = exchange();
    let ok = record(
        &["BTC_USD".into(), "BTCUSD-PERP".into()],
        "klines = [\"1m\", \"1h\", \"1D\"]\ndepth = 50",
    );
    venue.check_record(&ok).unwrap();
    let key = |r: &mdrec::config::RecordConfig| venue.check_record(r).unwrap_err().key;
    assert_eq!(key(&record(&["btcusdt".into()], "")), "record.symbols");
    assert_eq!(
        key(&record(&["BTC_USD".into()], "klines = [\"1min\"]")),
        "record.klines"
    );
    assert_eq!(
        key(&record(&["BTC_USD".into()], "depth = 20")),
        "record.depth"
    );
    assert_eq!(
        key(&record(&["BTC_USD".into()], "depth = \"step0\"")),
        "record.depth"
    );
    // v2's depths and timeframes are its own
    let v2 = make_v2(&VenueOptions::new()).unwrap();
    v2.check_record(&record(
        &["BTC_USDT".into()],
        "klines = [\"6h\"]\ndepth = 150",
    ))
    .unwrap();
    assert_eq!(
        v2.check_record(&record(&["BTC_USDT".into()], "depth = 50"))
            .unwrap_err()
            .key,
        "record.depth"
    );
    // the venue's own keys
    let opt = |k: &str, v: &str| {
        let mut o = VenueOptions::new();
        o.insert(k.into(), toml::Value::String(v.into()));
        o
    };
    assert!(make_exchange(&opt("book_updates", "snapshot")).is_ok());
    assert!(make_exchange(&opt("book_updates", "delta")).is_ok());
    assert_eq!(
        make_exchange(&opt("book_updates", "fast"))
            .err()
            .unwrap()
            .key,
        "venue.book_updates"
    );
    assert_eq!(
        make_v2(&opt("book_updates", "delta")).err().unwrap().key,
        "venue.book_updates"
    );
    assert_eq!(
        make_exchange(&opt("bookupdates", "delta"))
            .err()
            .unwrap()
            .key,
        "venue.bookupdates"
    );
    // defaults point at today's exchange
    let d = venue.defaults();
    assert_eq!(d.ws_url, "wss://stream.crypto.com/exchange/v1/market");
    assert_eq!(d.rest_url, "https://api.crypto.com/exchange/v1");
    assert_eq!(venue.name(), "cdc-exchange");
}

/// A `get-trades` reply with one trade per millisecond in `from..to` (newest first).
fn trades_page(from: i64, to: i64) -> String {
    let rows: Vec<String> = (from..to)
        .rev()
        .map(|t| {
            format!(
                r#"{{"d":"{}","t":{t},"tn":{},"q":"0.1","p":"100.5","s":"buy","i":"BTC_USD"}}"#,
                t * 1_000_000 + 7,
                t * 1_000_000
            )
        })
        .collect();
    format!(
        r#"{{"id":1,"method":"public/get-trades","code":0,"result":{{"data":[{}]}}}}"#,
        rows.join(",")
    )
}

fn param(path: &str, key: &str) -> Option<i64> {
    path.split(['?', '&'])
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
}

#[test]
fn trades_are_paged_back_by_time_to_the_anchor() {
    let venue = exchange();
    let anchor = TradeMark {
        time_ms: 1_000,
        trade_id: 1_000_000_007,
    };
    // the venue has one trade a millisecond up to 1400: three pages back to the anchor
    let mut h = venue.trade_history(&Arc::from("BTC_USD"), Some(anchor), None);
    let mut got = Vec::new();
    let mut pages = 0;
    while let Some(path) = h.next_request() {
        pages += 1;
        assert_eq!(param(&path, "start_ts"), Some(1_000));
        assert_eq!(param(&path, "count"), Some(TRADES_PER_PAGE as i64));
        let end = param(&path, "end_ts").unwrap_or(1_400);
        let from = (end - TRADES_PER_PAGE as i64).max(1_000);
        got.extend(h.take(&trades_page(from, end), 1).unwrap());
    }
    assert_eq!(pages, 3);
    assert_eq!(h.reach(None), Reach::Anchor);
    let mut times: Vec<i64> = got.iter().map(|t| t.event_time_ms).collect();
    times.sort();
    times.dedup();
    assert_eq!(
        times,
        (1_000..1_400).collect::<Vec<_>>(),
        "every millisecond, overlaps deduped later"
    );

    // the venue's history ends before the anchor: an empty page, the hole is short of it
    let mut h = venue.trade_history(&Arc::from("BTC_USD"), Some(anchor), None);
    let path = h.next_request().unwrap();
    assert_eq!(param(&path, "end_ts"), None);
    h.take(&trades_page(1_250, 1_400), 1).unwrap();
    let path = h.next_request().unwrap();
    assert_eq!(param(&path, "end_ts"), Some(1_251));
    h.take(&trades_page(0, 0), 1).unwrap();
    assert_eq!(h.next_request(), None);
    assert!(matches!(h.reach(None), Reach::Short { .. }));

    // a venue whose window begins after the anchor answers from its edge: a short page
    // without the anchor is short of it too
    let mut h = venue.trade_history(&Arc::from("BTC_USD"), Some(anchor), None);
    h.next_request().unwrap();
    h.take(&trades_page(1_300, 1_400), 1).unwrap();
    assert_eq!(h.next_request(), None);
    assert!(matches!(h.reach(None), Reach::Short { .. }));

    // the hole's far end known (the socket's first trade): the walk starts there
    let until = TradeMark {
        time_ms: 1_300,
        trade_id: 5,
    };
    let mut h = venue.trade_history(&Arc::from("BTC_USD"), Some(anchor), Some(until));
    let path = h.next_request().unwrap();
    assert_eq!(param(&path, "end_ts"), Some(1_301));
    h.take(&trades_page(1_000, 1_101), 1).unwrap();
    assert_eq!(h.next_request(), None);
    assert_eq!(h.reach(Some(until)), Reach::Anchor);

    // nothing recorded before: the newest page is history, no walk
    let mut h = venue.trade_history(&Arc::from("BTC_USD"), None, None);
    let path = h.next_request().unwrap();
    assert_eq!(param(&path, "start_ts"), None);
    h.take(&trades_page(1_250, 1_400), 1).unwrap();
    assert_eq!(h.next_request(), None);
    assert_eq!(h.reach(None), Reach::Anchor);
}

#[test]
fn a_trade_walk_pages_on_until_the_anchor_however_long_the_hole() {
    // 300 pages of history between the anchor and now: the walk is not cut short by a page
    // count (that would turn a hole the venue can fill into an unrecoverable one)
    let venue = exchange();
    let anchor = TradeMark {
        time_ms: 1_000,
        trade_id: 1_000_000_007,
    };
    let newest = 1_000 + 300 * TRADES_PER_PAGE as i64;
    let mut h = venue.trade_history(&Arc::from("BTC_USD"), Some(anchor), None);
    let (mut pages, mut oldest) = (0, i64::MAX);
    while let Some(path) = h.next_request() {
        pages += 1;
        assert!(pages <= 400, "the walk does not end");
        let end = param(&path, "end_ts").unwrap_or(newest);
        let from = (end - TRADES_PER_PAGE as i64).max(1_000);
        for t in h.take(&trades_page(from, end), 1).unwrap() {
            oldest = oldest.min(t.event_time_ms);
        }
    }
    assert!(pages > 300, "{pages} pages");
    assert_eq!(oldest, 1_000);
    assert_eq!(h.reach(None), Reach::Anchor);
}

/// A `get-candlestick` reply with 1m bars at the given minutes.
fn candles_page(minutes: std::ops::Range<i64>) -> String {
    let rows: Vec<String> = minutes
        .map(|m| {
            format!(
                r#"{{"o":"1","h":"2","l":"0.5","c":"1.5","v":"3","t":{}}}"#,
                1_700_000_040_000 + m * 60_000
            )
        })
        .collect();
    format!(
        r#"{{"id":1,"method":"public/get-candlestick","code":0,"result":{{"interval":"1m","data":[{}]}}}}"#,
        rows.join(",")
    )
}

#[test]
fn candlesticks_are_paged_forward_from_the_hole() {
    let venue = exchange();
    let t0 = 1_700_000_040_000;
    let mut h = venue
        .kline_history(&Arc::from("BTC_USD"), &Arc::from("1m"), Some(t0))
        .unwrap();
    let pages = BARS_PER_PAGE as i64;
    let Some(HistoryRequest::Rest(p)) = h.next_request() else {
        panic!()
    };
    assert_eq!(param(&p, "start_ts"), Some(t0));
    h.take_rest(&candles_page(0..pages), 1).unwrap();
    let Some(HistoryRequest::Rest(p)) = h.next_request() else {
        panic!()
    };
    assert_eq!(param(&p, "start_ts"), Some(t0 + pages * 60_000));
    h.take_rest(&candles_page(pages..pages + 10), 1).unwrap();
    assert_eq!(h.next_request(), None, "a short page is the newest");
    assert_eq!(
        h.answered(),
        [
            (t0, t0 + (pages - 1) * 60_000),
            (t0 + pages * 60_000, t0 + (pages + 9) * 60_000)
        ]
    );
    // timeframes outside the dialect have no history
    assert!(
        venue
            .kline_history(&Arc::from("BTC_USD"), &Arc::from("1min"), None)
            .is_none()
    );
}
