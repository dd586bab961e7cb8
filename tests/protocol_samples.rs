//! Every v1 sample payload in tests/fixtures/protocol-samples is a table case: parsed to the
//! expected events, answered, or rejected with a clear error. Server frames are decoded both
//! as plain text and as gzip binary frames, which must agree.

use std::io::Write;
use std::sync::Arc;

use mdrec::decimal::Dec;
use mdrec::model::{BookSide, Event, Side, Source};
use mdrec::venue::cdc_v1::channel::{Channel, Stream};
use mdrec::venue::cdc_v1::{self, CdcSession, rest};
use mdrec::venue::{DecodeError, Frame, Reaction, VenueSession};

const DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/protocol-samples"
);
const RECV: i64 = 1_800_000_000_123_456;

fn read(name: &str) -> String {
    std::fs::read_to_string(format!("{DIR}/{name}")).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn dec(s: &str) -> Dec {
    Dec::parse(s).unwrap()
}

fn gzip(s: &str) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(s.as_bytes()).unwrap();
    e.finish().unwrap()
}

/// Decodes a server frame for `symbol`'s connection, as text and as gzip; both must agree.
fn decode(symbol: &str, name: &str) -> Result<(Reaction, Vec<Event>), DecodeError> {
    let text = read(name);
    let run = |frame: Frame<'_>| {
        let mut s = CdcSession::new(Arc::from(symbol), 1 << 20);
        let mut out = Vec::new();
        s.on_frame(frame, RECV, &mut out).map(|r| (r, out))
    };
    let plain = run(Frame::Text(text.trim()));
    let zipped = gzip(text.trim());
    assert_eq!(
        plain,
        run(Frame::Binary(&zipped)),
        "{name}: text and gzip decode differ"
    );
    plain
}

fn events(symbol: &str, name: &str) -> Vec<Event> {
    let (r, ev) = decode(symbol, name).unwrap_or_else(|e| panic!("{name}: {e}"));
    // captured frames are years old: kept, counted as venue clock skew, never invalid
    assert_eq!((r.reply, r.control), (None, false), "{name}");
    assert_eq!(r.findings.first, None, "{name}: nothing invalid");
    ev
}

fn control(symbol: &str, name: &str) {
    let (r, ev) = decode(symbol, name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(
        r.control && r.reply.is_none() && ev.is_empty(),
        "{name}: {r:?} {ev:?}"
    );
}

fn rejected(symbol: &str, name: &str, needle: &str) {
    match decode(symbol, name) {
        Err(e) => assert!(
            e.to_string().contains(needle),
            "{name}: {e} lacks {needle:?}"
        ),
        Ok(r) => panic!("{name}: accepted {r:?}"),
    }
}

fn trades(ev: &[Event]) -> Vec<&mdrec::model::Trade> {
    ev.iter()
        .map(|e| match e {
            Event::Trade(t) => t,
            other => panic!("not a trade: {other:?}"),
        })
        .collect()
}

/// Files covered below; the last test checks the directory holds no others.
const COVERED: &[&str] = &[
    "p1_rest_get_records_klines_chainup_doc.json",
    "p1_rest_get_ticker_chainup_doc.json",
    "p1_rest_get_trades_chainup_doc.json",
    "p1_rest_market_dept_chainup_doc_INVALID_JSON.txt",
    "p1_rest_symbols_chainup_doc.json",
    "p1_ws_depth_empty_book_grovex_captured.json",
    "p1_ws_depth_incremental_chainup_doc.json",
    "p1_ws_depth_invalid_channel_omnix_captured.json",
    "p1_ws_depth_req_rep_bitrue_doc.json",
    "p1_ws_depth_step2_tick_grovex_captured.json",
    "p1_ws_depth_sub_ack_bitrue_doc.json",
    "p1_ws_depth_sub_request_grovex_captured.json",
    "p1_ws_depth_tick_bitrue_doc.json",
    "p1_ws_depth_tick_grovex_captured.json",
    "p1_ws_depth_tick_omnix_captured_1.json",
    "p1_ws_depth_tick_omnix_captured_2.json",
    "p1_ws_kline_req_chainup_doc.json",
    "p1_ws_kline_req_rep_bitrue_doc.json",
    "p1_ws_kline_sub_ack_bitrue_doc.json",
    "p1_ws_kline_tick_bitrue_doc.json",
    "p1_ws_ping_bitrue_doc.json",
    "p1_ws_ping_omnix_captured.json",
    "p1_ws_pong_bitrue_doc.json",
    "p1_ws_pong_omnix_captured.json",
    "p1_ws_review_rep_chainup_doc.json",
    "p1_ws_review_req_chainup_doc.json",
    "p1_ws_sub_ack_kline_chainup_doc.json",
    "p1_ws_sub_ack_trade_bitrue_doc.json",
    "p1_ws_sub_request_trade_bitrue_doc.json",
    "p1_ws_ticker_tick_bitrue_doc.json",
    "p1_ws_ticker_tick_grovex_captured.json",
    "p1_ws_ticker_tick_omnix_captured.json",
    "p1_ws_trade_req_rep_bitrue_doc.json",
    "p1_ws_trade_req_rep_grovex_captured.json",
    "p1_ws_trade_tick_bitrue_doc.json",
    "p1_ws_trade_tick_chainup_doc.json",
    "p1_ws_trade_tick_grovex_captured.json",
    "p1_ws_trade_tick_omnix_captured.json",
    "p1_ws_unknown_event_echo_grovex_captured.json",
    "p1_ws_unsub_request_bitrue_doc.json",
];

#[test]
fn every_sample_file_is_in_the_table() {
    let mut files: Vec<String> = std::fs::read_dir(DIR)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("p1_"))
        .collect();
    files.sort();
    let mut covered: Vec<String> = COVERED.iter().map(|s| s.to_string()).collect();
    covered.sort();
    assert_eq!(files, covered);
}

#[test]
fn pings_are_answered_with_the_same_digits() {
    for (file, want) in [
        ("p1_ws_ping_bitrue_doc.json", r#"{"pong":1621418174969}"#),
        ("p1_ws_ping_omnix_captured.json", r#"{"pong":1790145583}"#),
    ] {
        let (r, ev) = decode("btcusdt", file).unwrap();
        assert_eq!(r.reply.as_deref(), Some(want));
        assert!(r.control && ev.is_empty());
        // the reply is exactly what the venue documents as the client's pong
        let pong_file = file.replace("ping", "pong");
        assert_eq!(read(&pong_file).trim(), want);
        control("btcusdt", &pong_file);
    }
}

#[test]
fn acks_and_review_are_control_frames() {
    control("adausdt", "p1_ws_depth_sub_ack_bitrue_doc.json");
    control("adausdt", "p1_ws_kline_sub_ack_bitrue_doc.json");
    control("adausdt", "p1_ws_sub_ack_trade_bitrue_doc.json");
    control("btcusdt", "p1_ws_sub_ack_kline_chainup_doc.json");
    control("btcusdt", "p1_ws_review_rep_chainup_doc.json");
}

#[test]
fn echoed_client_requests_and_bad_channels_are_rejected() {
    for f in [
        "p1_ws_unknown_event_echo_grovex_captured.json",
        "p1_ws_unsub_request_bitrue_doc.json",
        "p1_ws_depth_sub_request_grovex_captured.json",
        "p1_ws_sub_request_trade_bitrue_doc.json",
        "p1_ws_kline_req_chainup_doc.json",
        "p1_ws_review_req_chainup_doc.json",
    ] {
        rejected("btcusdt", f, "echoed a client event");
    }
    rejected(
        "e_btcusdt",
        "p1_ws_depth_invalid_channel_omnix_captured.json",
        "unknown channel",
    );
    rejected(
        "adausdt",
        "p1_ws_depth_req_rep_bitrue_doc.json",
        "without a channel",
    );
    // a frame for another symbol on this connection
    rejected(
        "ethusdt",
        "p1_ws_depth_tick_grovex_captured.json",
        "on the ethusdt connection",
    );
}

#[test]
fn our_requests_match_the_documented_ones() {
    let json = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
    let depth = Channel::new("btcusdt", Stream::Depth(0));
    assert_eq!(
        json(&cdc_v1::sub_request(&depth, 150)),
        json(&read("p1_ws_depth_sub_request_grovex_captured.json"))
    );
    let kline = Channel::new("btcusdt", Stream::Kline("1min".into()));
    assert_eq!(
        json(&cdc_v1::kline_history_request(&kline, "custom", 1506602880)),
        json(&read("p1_ws_kline_req_chainup_doc.json"))
    );
    // trade subscription: same event and channel as the documented one (which adds `top`)
    let doc = json(&read("p1_ws_sub_request_trade_bitrue_doc.json"));
    let ours = json(&cdc_v1::sub_request(
        &Channel::new("adausdt", Stream::Trades),
        150,
    ));
    assert_eq!(ours["event"], doc["event"]);
    assert_eq!(ours["params"]["channel"], doc["params"]["channel"]);
    assert_eq!(ours["params"]["cb_id"], doc["params"]["cb_id"]);
}

#[test]
fn trade_ticks() {
    let ev = events("ltcbtc", "p1_ws_trade_tick_bitrue_doc.json");
    let t = trades(&ev);
    assert_eq!(t.len(), 2);
    // stored oldest first
    assert_eq!(
        (t[0].trade_id, t[0].side, t[0].event_time_ms),
        (20482763, Side::Sell, 1621426160884)
    );
    assert_eq!(
        (t[0].price.as_str(), t[0].qty.as_str()),
        ("0.006278", "0.03")
    );
    assert_eq!(t[0].quote_qty, Some(dec("0.00018834")));
    assert_eq!((t[1].trade_id, t[1].side), (20482764, Side::Buy));
    assert!(
        t.iter()
            .all(|t| t.recv_time_us == RECV && t.source == Source::Ws && &*t.symbol == "ltcbtc")
    );

    let t2 = events("btcusdt", "p1_ws_trade_tick_chainup_doc.json");
    let t2 = trades(&t2);
    assert_eq!(
        t2.iter().map(|t| t.trade_id).collect::<Vec<_>>(),
        [12120, 12121]
    );
    assert_eq!(
        (t2[0].side, t2[0].price.as_str(), t2[0].qty.as_str()),
        (Side::Buy, "32.233", "232")
    );

    let g = events("btcusdt", "p1_ws_trade_tick_grovex_captured.json");
    let g = trades(&g);
    assert_eq!(g.len(), 1);
    assert_eq!(
        (
            g[0].trade_id,
            g[0].side,
            g[0].price.as_str(),
            g[0].qty.as_str()
        ),
        (13652120, Side::Buy, "86650.65", "0.26903")
    );
    assert_eq!(g[0].quote_qty, Some(dec("23311.6243695")));
    assert_eq!(g[0].event_time_ms, 1790134150000);
}

#[test]
fn trades_without_ids_get_stable_synthetic_ids() {
    let a = events("e_btcusdt", "p1_ws_trade_tick_omnix_captured.json");
    let b = events("e_btcusdt", "p1_ws_trade_tick_omnix_captured.json");
    let (a, b) = (trades(&a), trades(&b));
    assert_eq!(a.len(), 1);
    assert!(a[0].trade_id < 0, "synthetic ids are negative");
    assert_eq!(a[0].trade_id, b[0].trade_id, "same trade, same id");
    assert_eq!(
        (a[0].price.as_str(), a[0].qty.as_str(), a[0].event_time_ms),
        ("86491.7", "131", 1790145585695)
    );
}

#[test]
fn trade_replies() {
    let ev = events("adausdt", "p1_ws_trade_req_rep_bitrue_doc.json");
    let t = trades(&ev);
    assert_eq!(t.len(), 20);
    assert_eq!(t.first().unwrap().trade_id, 28187143);
    let newest = t.last().unwrap();
    assert_eq!(newest.trade_id, 28187162);
    // 32 decimals of zeros lose nothing and add nothing
    assert_eq!(newest.quote_qty, Some(dec("472.07373")));
    assert_eq!(
        (newest.price.as_str(), newest.qty.as_str()),
        ("1.7439", "270.7")
    );
    assert_eq!(newest.side, Side::Buy);

    let g = events("btcusdt", "p1_ws_trade_req_rep_grovex_captured.json");
    let g = trades(&g);
    assert_eq!(
        (g.len(), g[0].trade_id, g[0].side),
        (1, 13652127, Side::Sell)
    );
}

#[test]
fn klines() {
    let ev = events("adausdt", "p1_ws_kline_tick_bitrue_doc.json");
    let Event::Kline(k) = &ev[0] else {
        panic!("{ev:?}")
    };
    assert_eq!(ev.len(), 1);
    assert_eq!(
        (&*k.interval, k.open_time_ms, k.closed),
        ("1min", 1621412820000, false)
    );
    assert_eq!(
        (
            k.open.as_str(),
            k.high.as_str(),
            k.low.as_str(),
            k.close.as_str(),
            k.volume.as_str()
        ),
        ("1.7423", "1.7445", "1.7406", "1.7439", "28616.74")
    );
    assert_eq!(k.quote_volume, Some(dec("49855.950209")));
    assert_eq!(k.event_time_ms, 1621413503504);

    let ev = events("adausdt", "p1_ws_kline_req_rep_bitrue_doc.json");
    let ks: Vec<_> = ev
        .iter()
        .map(|e| match e {
            Event::Kline(k) => (k.open_time_ms, k.closed, k.close.to_string()),
            other => panic!("{other:?}"),
        })
        .collect();
    // the older bar is final, the newest may still be open
    assert_eq!(
        ks,
        [
            (1621326480000, false, "2.0968".to_string()),
            (1621326480000, true, "2.0968".to_string()),
            (1621326540000, false, "2.0991".to_string())
        ]
    );
}

#[test]
fn a_later_bar_closes_the_previous_one() {
    let mut s = CdcSession::new(Arc::from("btcusdt"), 1 << 20);
    let mut out = Vec::new();
    let bar = |id: i64, close: &str| {
        format!(
            r#"{{"channel":"market_btcusdt_kline_1min","ts":1790134150000,"tick":{{"id":{id},"open":1,"close":{close},"high":2,"low":1,"vol":5,"amount":6}}}}"#
        )
    };
    for f in [
        bar(1790134140, "1.1"),
        bar(1790134140, "1.2"),
        bar(1790134200, "1.5"),
    ] {
        s.on_frame(Frame::Text(&f), RECV, &mut out).unwrap();
    }
    let got: Vec<_> = out
        .iter()
        .map(|e| match e {
            Event::Kline(k) => (k.open_time_ms, k.close.to_string(), k.closed),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        got,
        [
            (1_790_134_140_000, "1.1".into(), false),
            (1_790_134_140_000, "1.2".into(), false),
            (1_790_134_140_000, "1.2".into(), true),
            (1_790_134_200_000, "1.5".into(), false)
        ]
    );
}

#[test]
fn depth_books_and_changes() {
    let ev = events("btcusdt", "p1_ws_depth_tick_grovex_captured.json");
    let Event::BookSnapshot(b) = &ev[0] else {
        panic!("{ev:?}")
    };
    assert_eq!(
        (b.depth_step, b.event_time_ms, b.bids.len(), b.asks.len()),
        (0, 1790134142000, 3, 3)
    );
    assert_eq!(b.bids[0], (dec("86621.91"), dec("0.05117")));
    assert_eq!(b.asks[2], (dec("86800.78"), dec("0.06277")));

    let ev = events("btcusdt", "p1_ws_depth_step2_tick_grovex_captured.json");
    let Event::BookSnapshot(b) = &ev[0] else {
        panic!("{ev:?}")
    };
    assert_eq!((b.depth_step, b.bids[0].0.as_str()), (2, "86621"));

    let ev = events("adausdt", "p1_ws_depth_tick_bitrue_doc.json");
    let Event::BookSnapshot(b) = &ev[0] else {
        panic!("{ev:?}")
    };
    assert_eq!(
        b.bids,
        vec![
            (dec("0.15579"), dec("110")),
            (dec("0.12579"), dec("100")),
            (dec("0.0526"), dec("924402.01"))
        ]
    );
    assert!(b.asks.is_empty());

    let ev = events("tigrinousdt", "p1_ws_depth_empty_book_grovex_captured.json");
    let Event::BookSnapshot(b) = &ev[0] else {
        panic!("{ev:?}")
    };
    assert!(b.bids.is_empty() && b.asks.is_empty());

    let one = events("e_btcusdt", "p1_ws_depth_tick_omnix_captured_1.json");
    let two = events("e_btcusdt", "p1_ws_depth_tick_omnix_captured_2.json");
    let (Event::BookSnapshot(a), Event::BookSnapshot(b)) = (&one[0], &two[0]) else {
        panic!()
    };
    assert_eq!(a.bids[1].1.as_str(), "18763");
    assert_eq!(b.bids[1].1.as_str(), "2025");

    let ev = events("btcusdt", "p1_ws_depth_incremental_chainup_doc.json");
    let Event::BookDelta(d) = &ev[0] else {
        panic!("{ev:?}")
    };
    assert_eq!(
        (
            d.side,
            d.price.as_str(),
            d.qty.as_str(),
            d.seq,
            d.event_time_ms
        ),
        (BookSide::Ask, "133.55", "44.22", 0, 1506584998239)
    );
}

#[test]
fn tickers() {
    let ev = events("xlmeth", "p1_ws_ticker_tick_bitrue_doc.json");
    let Event::Ticker(t) = &ev[0] else {
        panic!("{ev:?}")
    };
    assert_eq!(
        (
            t.close.as_ref().unwrap().as_str(),
            t.change.as_ref().unwrap().as_str()
        ),
        ("0.000309", "0")
    );
    let ev = events("btcusdt", "p1_ws_ticker_tick_grovex_captured.json");
    let Event::Ticker(t) = &ev[0] else {
        panic!("{ev:?}")
    };
    assert_eq!(t.quote_volume, Some(dec("307349564.1645482")));
    assert_eq!(
        (t.low.as_ref().unwrap().as_str(), t.event_time_ms),
        ("85114", 1790134139000)
    );
    let ev = events("e_btcusdt", "p1_ws_ticker_tick_omnix_captured.json");
    let Event::Ticker(t) = &ev[0] else {
        panic!("{ev:?}")
    };
    assert_eq!(t.volume, Some(dec("3436794")));
}

#[test]
fn rest_replies() {
    let sym: Arc<str> = Arc::from("btcusdt");
    let iv: Arc<str> = Arc::from("1min");
    let k = rest::parse_klines(
        &read("p1_rest_get_records_klines_chainup_doc.json"),
        &sym,
        &iv,
        RECV,
    )
    .unwrap();
    assert_eq!(k.len(), 3);
    assert_eq!(
        (
            k[0].open_time_ms,
            k[0].open.as_str(),
            k[0].volume.as_str(),
            k[0].closed
        ),
        (1514445780000, "1.12", "0", true)
    );
    assert!(!k[2].closed && k.iter().all(|k| k.source == Source::Rest));

    let t = rest::parse_trades(&read("p1_rest_get_trades_chainup_doc.json"), &sym, RECV).unwrap();
    assert_eq!(
        t.iter().map(|t| t.trade_id).collect::<Vec<_>>(),
        [447118, 447119, 447120, 447121]
    );
    // on REST, `amount` is the base quantity and `type` the side
    assert_eq!(
        (t[0].side, t[0].price.as_str(), t[0].qty.as_str()),
        (Side::Sell, "0.183324003", "2.92")
    );
    assert_eq!(t[0].event_time_ms, RECV / 1000, "no ctime: receive time");

    let s = rest::parse_symbols(&read("p1_rest_symbols_chainup_doc.json")).unwrap();
    assert_eq!(s.len(), 2);
    assert_eq!(
        (
            s[0].symbol.as_str(),
            s[0].base_coin.as_deref(),
            s[0].count_coin.as_deref()
        ),
        ("ethbtc", Some("eth"), Some("btc"))
    );

    let tk = rest::parse_ticker(&read("p1_rest_get_ticker_chainup_doc.json"), &sym, RECV).unwrap();
    assert_eq!(
        (tk.close.unwrap().as_str(), tk.event_time_ms),
        ("173.60263169", 1514448473626)
    );

    let bad = rest::parse_depth(&read("p1_rest_market_dept_chainup_doc_INVALID_JSON.txt"));
    assert!(matches!(bad, Err(rest::RestError::Malformed(_))), "{bad:?}");
}

#[test]
fn rest_errors() {
    let e = rest::envelope_data(r#"{"code":"10001","msg":"symbol not found","data":null}"#)
        .unwrap_err();
    assert_eq!(
        e,
        rest::RestError::Venue {
            code: 10001,
            msg: "symbol not found".into()
        }
    );
    let e = rest::envelope_data(r#"{"code":10001,"msg":"x"}"#).unwrap_err();
    assert!(matches!(e, rest::RestError::Venue { code: 10001, .. }));
    assert!(matches!(
        rest::envelope_data("<html>429 Too Many Requests</html>"),
        Err(rest::RestError::Malformed(_))
    ));
}

#[test]
fn malformed_frames_are_errors_not_panics() {
    let cases: &[(&str, &str)] = &[
        ("{", "json"),
        ("[]", "unexpected"),
        ("\"x\"", "json"),
        (
            r#"{"channel":"market_btcusdt_trade_ticker","tick":{"data":[{"id":1,"side":"HOLD","price":"1","vol":"1"}]}}"#,
            "unexpected",
        ),
        (
            r#"{"channel":"market_btcusdt_trade_ticker","tick":{"data":[{"id":1,"side":"buy","price":"1.2.3","vol":"1"}]}}"#,
            "json",
        ),
        (
            r#"{"channel":"market_btcusdt_trade_ticker","tick":{"data":[{"id":1,"side":"buy","price":null,"vol":"1"}]}}"#,
            "json",
        ),
        (
            r#"{"channel":"market_btcusdt_kline_1min","tick":{"id":"abc","open":1,"close":1,"high":1,"low":1,"vol":1}}"#,
            "json",
        ),
        (
            r#"{"channel":"market_btcusdt_depth_step0","tick":{"foo":1}}"#,
            "unexpected",
        ),
        (
            r#"{"channel":"market_btcusdt_depth_step0","tick":{"asks":[[1]]}}"#,
            "json",
        ),
        (
            r#"{"channel":"market_btcusdt_kline_7min","tick":{}}"#,
            "unexpected",
        ),
        (
            r#"{"channel":"market_btcusdt_trade_ticker","tick":null,"data":null,"status":"error"}"#,
            "unexpected",
        ),
    ];
    for (frame, kind) in cases {
        let mut s = CdcSession::new(Arc::from("btcusdt"), 1 << 20);
        let mut out = Vec::new();
        let e = s
            .on_frame(Frame::Text(frame), RECV, &mut out)
            .expect_err(frame);
        assert_eq!(e.kind(), *kind, "{frame}: {e}");
        assert!(out.is_empty(), "{frame}: events from a rejected frame");
    }
}
