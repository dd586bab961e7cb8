//! Every `p2_ws_*` sample (today's Crypto.com Exchange socket and its v2 dialect) is a table
//! case: decoded to the expected events, answered, taken as an ack, reported as a book break,
//! or rejected with a clear error. Client requests are checked against the frames the venue
//! builds. Samples that are a frame's `result` object alone are decoded inside a push envelope.

use std::sync::Arc;

use mdrec::decimal::Dec;
use mdrec::model::{BookSide, Event, Side, StreamKey};
use mdrec::venue::cdc_exchange::{
    self, BookUpdates, Channel, Dialect, ExchangeSession, RULES, check_symbol, interval,
};
use mdrec::venue::{DecodeError, Frame, Reaction, RefusalKind, VenueSession};

const DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/protocol-samples"
);
/// A receive time after every sample's exchange time and within the venue's rules for the
/// recent ones (old samples' times are checked against a wide window).
const RECV: i64 = 1_790_114_300_000_000;

fn read(name: &str) -> String {
    std::fs::read_to_string(format!("{DIR}/{name}")).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn dec(s: &str) -> Dec {
    Dec::parse(s).unwrap()
}

/// The frame as the socket would carry it: `result`-only samples wrapped in a push.
fn frame_text(name: &str) -> String {
    let text = read(name);
    let v: serde_json::Value = serde_json::from_str(&text).expect("samples are JSON");
    if v.get("subscription").is_some() {
        format!(r#"{{"id":-1,"method":"subscribe","code":0,"result":{text}}}"#)
    } else {
        text
    }
}

/// The instrument a sample is about (its subscription or channel), for the session.
fn instrument(text: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let sub = v
        .pointer("/result/subscription")
        .or_else(|| v.get("channel"))?
        .as_str()?;
    Channel::parse(sub).map(|c| c.instrument().to_string())
}

fn session(dialect: Dialect, symbols: &[&str]) -> ExchangeSession {
    // old documentation samples carry times from 2020 on: widen the window backwards only
    let rules = mdrec::venue::validate::Rules {
        earliest_ms: 1_577_836_800_000,
        max_ahead_ms: 400 * 86_400_000,
        ..RULES
    };
    ExchangeSession::new(
        dialect,
        symbols.iter().map(|s| Arc::from(*s)).collect(),
        rules,
    )
}

fn decode_in(s: &mut ExchangeSession, text: &str) -> Result<(Reaction, Vec<Event>), DecodeError> {
    let mut out = Vec::new();
    s.on_frame(Frame::Text(text), RECV, &mut out)
        .map(|r| (r, out))
}

/// Decodes a sample on a fresh connection subscribed to its instrument.
fn decode(dialect: Dialect, name: &str) -> Result<(Reaction, Vec<Event>), DecodeError> {
    let text = frame_text(name);
    let symbol = instrument(&text).unwrap_or_else(|| "BTC_USD".into());
    let mut s = session(dialect, &[&symbol]);
    decode_in(&mut s, &text)
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Counts {
    trades: usize,
    books: usize,
    deltas: usize,
    bars: usize,
    tickers: usize,
}

fn counts(events: &[Event]) -> Counts {
    let mut c = Counts::default();
    for e in events {
        match e {
            Event::Trade(_) => c.trades += 1,
            Event::BookSnapshot(_) => c.books += 1,
            Event::BookDelta(_) => c.deltas += 1,
            Event::Kline(_) => c.bars += 1,
            Event::Ticker(_) => c.tickers += 1,
            _ => {}
        }
    }
    c
}

/// What a sample must come to.
#[derive(Debug)]
enum Want {
    Data(Counts),
    /// A heartbeat: answered with this frame.
    Reply(&'static str),
    /// An ack or a reply without rows: alive, nothing stored.
    Ack,
    /// A delta that cannot be applied on a fresh connection (no full book yet).
    Break,
    /// Refused with this kind and a message containing the text.
    Rejected(&'static str, &'static str),
    /// The venue's refusal of one of our requests: its kind, the request id, the stream it
    /// names, and text in its detail.
    Refused(
        RefusalKind,
        Option<u64>,
        Option<(&'static str, StreamKey)>,
        &'static str,
    ),
    /// A client request: checked against the venue's builder below.
    Request,
}

fn data(trades: usize, books: usize, bars: usize, tickers: usize) -> Want {
    Want::Data(Counts {
        trades,
        books,
        bars,
        tickers,
        deltas: 0,
    })
}

use Dialect::{Exchange, V2};

/// (sample, dialect its connection speaks, what it must come to).
type Case = (&'static str, Dialect, fn() -> Want);

const TABLE: &[Case] = &[
    (
        "p2_ws_book_result_v2_cryptofeed_docstring_trimmed.json",
        V2,
        || Want::Rejected("json", "missing field `t`"),
    ),
    (
        "p2_ws_book_result_v2_rs_crypto_com_exchange_doc2020.json",
        V2,
        || data(0, 1, 0, 0),
    ),
    (
        "p2_ws_book_snapshot_nemanull_captured.json",
        Exchange,
        || data(0, 1, 0, 0),
    ),
    ("p2_ws_book_snapshot_officialdoc.json", Exchange, || {
        data(0, 1, 0, 0)
    }),
    (
        "p2_ws_book_snapshot_push_live2026_cryptocogs.json",
        Exchange,
        || data(0, 1, 0, 0),
    ),
    (
        "p2_ws_book_snapshot_result_ccxt_comment_2022.json",
        V2,
        || data(0, 1, 0, 0),
    ),
    (
        "p2_ws_book_snapshot_v2_cryptofeed_captured.json",
        V2,
        || data(0, 1, 0, 0),
    ),
    (
        "p2_ws_book_update_delta_nemanull_captured.json",
        Exchange,
        || Want::Break,
    ),
    ("p2_ws_book_update_delta_officialdoc.json", Exchange, || {
        Want::Break
    }),
    (
        "p2_ws_book_update_empty_nemanull_captured.json",
        Exchange,
        || Want::Break,
    ),
    (
        "p2_ws_book_update_result_ccxt_comment_2024.json",
        Exchange,
        || Want::Break,
    ),
    ("p2_ws_candlestick_push_exchdocs_doc.json", Exchange, || {
        data(0, 0, 1, 0)
    }),
    (
        "p2_ws_candlestick_push_live2026_cryptocogs.json",
        Exchange,
        || data(0, 0, 1, 0),
    ),
    (
        "p2_ws_candlestick_result_v2_cryptofeed_docstring.json",
        V2,
        || data(0, 0, 1, 0),
    ),
    (
        "p2_ws_candlestick_result_v2_rs_crypto_com_exchange.json",
        V2,
        || {
            // its high (161.96) is below its open and close: invalid, counted, not stored
            data(0, 0, 0, 0)
        },
    ),
    ("p2_ws_error_invalid_channel_ccxt_comment.json", V2, || {
        // v2 answers with id 0: not one of ours (ours start at 1)
        Want::Refused(RefusalKind::BadRequest, None, None, "venue error 10004")
    }),
    (
        "p2_ws_error_max_subscriptions_nemanull_captured.json",
        Exchange,
        || {
            Want::Refused(
                RefusalKind::TooManyStreams,
                Some(9),
                None,
                "venue error 40107",
            )
        },
    ),
    (
        "p2_ws_error_unknown_method_nemanull_captured.json",
        Exchange,
        || Want::Refused(RefusalKind::BadRequest, None, None, "No such method"),
    ),
    (
        "p2_ws_error_unknown_symbol_nemanull_captured.json",
        Exchange,
        || {
            Want::Refused(
                RefusalKind::BadRequest,
                Some(11),
                Some(("NOPEUSD-PERP", StreamKey::Book(50))),
                "Unknown symbol",
            )
        },
    ),
    ("p2_ws_heartbeat_live2026_cryptocogs.json", Exchange, || {
        Want::Reply(r#"{"id":1782032467342,"method":"public/respond-heartbeat"}"#)
    }),
    ("p2_ws_heartbeat_nemanull_captured.json", Exchange, || {
        Want::Reply(r#"{"id":1790114291578,"method":"public/respond-heartbeat"}"#)
    }),
    (
        "p2_ws_respond_heartbeat_nemanull_captured.json",
        Exchange,
        || Want::Request,
    ),
    ("p2_ws_respond_heartbeat_request.json", Exchange, || {
        Want::Request
    }),
    (
        "p2_ws_subscribe_ack_book_bare_live2026_cryptocogs.json",
        Exchange,
        || Want::Ack,
    ),
    (
        "p2_ws_subscribe_ack_book_nemanull_captured.json",
        Exchange,
        || Want::Ack,
    ),
    (
        "p2_ws_subscribe_ack_ticker_live2026_cryptocogs.json",
        Exchange,
        || Want::Ack,
    ),
    (
        "p2_ws_subscribe_ack_v2_cryptofeed_captured.json",
        V2,
        || Want::Ack,
    ),
    (
        "p2_ws_subscribe_first_data_funding_nemanull_captured.json",
        Exchange,
        || Want::Rejected("unexpected", "funding.BTCUSD-PERP"),
    ),
    (
        "p2_ws_subscribe_request_book_delta_nemanull_captured.json",
        Exchange,
        || Want::Request,
    ),
    (
        "p2_ws_subscribe_request_book_delta_officialdoc.json",
        Exchange,
        || Want::Request,
    ),
    ("p2_ws_subscribe_request_ccxt.json", Exchange, || {
        Want::Request
    }),
    ("p2_ws_subscribe_request_cryptofeed.json", V2, || {
        Want::Request
    }),
    (
        "p2_ws_subscribe_request_trade_v2_cryptofeed_captured.json",
        V2,
        || Want::Request,
    ),
    ("p2_ws_ticker_push_exchdocs_doc.json", Exchange, || {
        data(0, 0, 0, 1)
    }),
    (
        "p2_ws_ticker_push_live2026_cryptocogs.json",
        Exchange,
        || data(0, 0, 0, 1),
    ),
    ("p2_ws_ticker_push_v2_cryptofeed_captured.json", V2, || {
        data(0, 0, 0, 1)
    }),
    (
        "p2_ws_ticker_result_v2_cryptofeed_docstring.json",
        V2,
        || data(0, 0, 0, 1),
    ),
    ("p2_ws_trade_push_exchdocs_doc.json", Exchange, || {
        data(1, 0, 0, 0)
    }),
    (
        "p2_ws_trade_push_live2026_cryptocogs.json",
        Exchange,
        || data(1, 0, 0, 0),
    ),
    ("p2_ws_trade_push_v2_cryptofeed_captured.json", V2, || {
        data(2, 0, 0, 0)
    }),
    ("p2_ws_trade_result_ccxt_comment_2022.json", V2, || {
        data(1, 0, 0, 0)
    }),
    (
        "p2_ws_trade_result_v2_cryptofeed_docstring.json",
        V2,
        || data(1, 0, 0, 0),
    ),
    (
        "p2_ws_trade_result_v2_rs_crypto_com_exchange.json",
        V2,
        || data(1, 0, 0, 0),
    ),
    ("p2_ws_unsubscribe_ack_ccxt_comment.json", Exchange, || {
        Want::Ack
    }),
    (
        "p2_ws_unsubscribe_request_exchdocs_doc.json",
        Exchange,
        || Want::Request,
    ),
];

#[test]
fn every_ws_sample_is_in_the_table() {
    let mut files: Vec<String> = std::fs::read_dir(DIR)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("p2_ws_"))
        .collect();
    files.sort();
    let mut covered: Vec<String> = TABLE.iter().map(|(n, _, _)| n.to_string()).collect();
    covered.sort();
    assert_eq!(files, covered);
}

#[test]
fn every_ws_sample_comes_to_what_the_table_says() {
    for (name, dialect, want) in TABLE {
        let got = decode(*dialect, name);
        match (want(), got) {
            (Want::Data(c), Ok((r, events))) => {
                assert_eq!(counts(&events), c, "{name}: {r:?}");
                assert!(r.breaks.is_empty() && r.reply.is_none(), "{name}");
            }
            (Want::Reply(text), Ok((r, events))) => {
                assert_eq!(r.reply.as_deref(), Some(text), "{name}");
                assert!(r.control && events.is_empty(), "{name}");
            }
            (Want::Ack, Ok((r, events))) => {
                assert!(
                    r.control && events.is_empty() && r.reply.is_none(),
                    "{name}"
                );
            }
            (Want::Break, Ok((r, events))) => {
                assert!(events.is_empty(), "{name}: a delta before any book applied");
                assert_eq!(r.breaks.len(), 1, "{name}");
                assert!(
                    r.breaks[0].detail.contains("before any full book"),
                    "{name}"
                );
            }
            (Want::Rejected(kind, text), Err(e)) => {
                assert_eq!(e.kind(), kind, "{name}: {e}");
                assert!(e.to_string().contains(text), "{name}: {e}");
            }
            (Want::Refused(kind, request, stream, text), Ok((r, events))) => {
                assert!(r.control && events.is_empty(), "{name}");
                let [f] = &r.refusals[..] else {
                    panic!("{name}: one refusal wanted, got {:?}", r.refusals)
                };
                assert_eq!((f.kind, f.request), (kind, request), "{name}");
                let named: Vec<(&str, StreamKey)> =
                    f.streams.iter().map(|(s, k)| (&**s, k.clone())).collect();
                assert_eq!(named, stream.into_iter().collect::<Vec<_>>(), "{name}");
                assert!(f.detail.contains(text), "{name}: {}", f.detail);
            }
            (Want::Request, Err(e)) => {
                // a client frame is not something a server sends
                assert_eq!(e.kind(), "unexpected", "{name}: {e}");
            }
            (w, g) => panic!("{name}: wanted {w:?}, got {g:?}"),
        }
    }
}

#[test]
fn trades_keep_19_digit_ids_exact_and_the_takers_side() {
    let (_, ev) = decode(V2, "p2_ws_trade_push_v2_cryptofeed_captured.json").unwrap();
    let ids: Vec<i64> = ev
        .iter()
        .map(|e| match e {
            Event::Trade(t) => t.trade_id,
            _ => 0,
        })
        .collect();
    // oldest first (same time: by id); through f64 the first would read ...713216
    assert_eq!(ids, [2008994977608570022, 2008994977608713094]);
    let Event::Trade(t) = &ev[1] else { panic!() };
    assert_eq!((t.venue, &*t.symbol), ("cdc-v2", "GRT_CRO"));
    assert_eq!(
        (t.side, &t.price, &t.qty),
        (Side::Sell, &dec("1.024"), &dec("9.77"))
    );
    assert_eq!(t.event_time_ms, 1637709515997);
    let (_, ev) = decode(Exchange, "p2_ws_trade_push_live2026_cryptocogs.json").unwrap();
    let Event::Trade(t) = &ev[0] else { panic!() };
    assert_eq!(t.trade_id, 1782032437671850129);
    assert_eq!((t.venue, t.side), ("cdc-exchange", Side::Sell));
    assert_eq!((&t.price, &t.qty), (&dec("63958.47"), &dec("0.04333")));
    // lowercase sides (v2 library samples) read the same
    let (_, ev) = decode(V2, "p2_ws_trade_result_v2_rs_crypto_com_exchange.json").unwrap();
    let Event::Trade(t) = &ev[0] else { panic!() };
    assert_eq!(t.side, Side::Buy);
}

#[test]
fn tickers_store_the_last_price_and_the_change_as_given() {
    let (_, ev) = decode(Exchange, "p2_ws_ticker_push_live2026_cryptocogs.json").unwrap();
    let Event::Ticker(t) = &ev[0] else { panic!() };
    assert_eq!(t.close, Some(dec("63958.47")), "a is the last price");
    assert_eq!(t.change, Some(dec("0.0092")), "c is the 24 h change");
    assert_eq!(t.volume, Some(dec("2657.5053")));
    assert_eq!(t.quote_volume, Some(dec("169819487.92")));
    assert_eq!(
        (
            t.bid.clone(),
            t.bid_qty.clone(),
            t.ask.clone(),
            t.ask_qty.clone()
        ),
        (
            Some(dec("63962.64")),
            Some(dec("0.27217")),
            Some(dec("63962.65")),
            Some(dec("0.23532"))
        ),
        "b/bs and k/ks: the best bid and ask with their sizes"
    );
    let (_, ev) = decode(V2, "p2_ws_ticker_push_v2_cryptofeed_captured.json").unwrap();
    let Event::Ticker(t) = &ev[0] else { panic!() };
    assert_eq!(
        (t.close.clone(), t.change.clone()),
        (Some(dec("14.94")), Some(dec("-3.59")))
    );
}

#[test]
fn books_keep_exact_levels_and_chain_deltas_by_u_and_pu() {
    let (_, ev) = decode(V2, "p2_ws_book_snapshot_v2_cryptofeed_captured.json").unwrap();
    let Event::BookSnapshot(b) = &ev[0] else {
        panic!()
    };
    assert_eq!(
        (b.depth_step, &b.bids[0]),
        (150, &(dec("1.024"), dec("14.28")))
    );
    assert!(b.bids.contains(&(dec("0.972"), dec("2500.00"))));

    // the captured delta does not follow the captured snapshot: a break, nothing applied
    let mut s = session(Exchange, &["ETHUSD-PERP"]);
    let (_, ev) = decode_in(&mut s, &read("p2_ws_book_snapshot_nemanull_captured.json")).unwrap();
    assert_eq!(counts(&ev).books, 1);
    let delta = read("p2_ws_book_update_delta_nemanull_captured.json");
    let (r, ev) = decode_in(&mut s, &delta).unwrap();
    assert!(ev.is_empty());
    assert_eq!(r.breaks.len(), 1);
    let b = &r.breaks[0];
    assert_eq!((&*b.symbol, b.depth_step), ("ETHUSD-PERP", 50));
    assert_eq!((b.last_ms, b.at_ms), (1790114273395, 1790114273659));
    assert!(
        b.detail.contains("the last applied was 375554806244928"),
        "{}",
        b.detail
    );
    // broken: later deltas are dropped silently until a full book
    let (r, ev) = decode_in(&mut s, &delta).unwrap();
    assert!(ev.is_empty() && r.breaks.is_empty());

    // a full book whose u is the delta's pu: the delta applies, level by level, with its ids
    let snapshot = read("p2_ws_book_snapshot_nemanull_captured.json")
        .replace("375554806244928", "375554807297984");
    decode_in(&mut s, &snapshot).unwrap();
    let (r, ev) = decode_in(&mut s, &delta).unwrap();
    assert!(r.breaks.is_empty());
    assert_eq!(counts(&ev).deltas, 4);
    let Event::BookDelta(d) = &ev[0] else {
        panic!()
    };
    assert_eq!(
        (d.side, &d.price, &d.qty),
        (BookSide::Bid, &dec("2748.12"), &dec("0"))
    );
    assert_eq!(
        (d.update_id, d.prev_update_id),
        (Some(375554807336512), Some(375554807297984))
    );
    // the next delta must follow 375554807336512: the same frame again is a break
    let (r, _) = decode_in(&mut s, &delta).unwrap();
    assert_eq!(r.breaks.len(), 1);

    // an idle book's empty delta, chained: alive, nothing stored
    let mut s = session(Exchange, &["NVDAUSD-PERP"]);
    let empty = read("p2_ws_book_update_empty_nemanull_captured.json");
    let v: serde_json::Value = serde_json::from_str(&empty).unwrap();
    let pu = v.pointer("/result/data/0/pu").unwrap().to_string();
    let snapshot = read("p2_ws_book_snapshot_nemanull_captured.json")
        .replace("ETHUSD-PERP", "NVDAUSD-PERP")
        .replace("375554806244928", &pu);
    decode_in(&mut s, &snapshot).unwrap();
    let (r, ev) = decode_in(&mut s, &empty).unwrap();
    assert!(ev.is_empty() && r.breaks.is_empty() && r.control);
    assert_eq!(
        r.alive,
        [(
            Arc::<str>::from("NVDAUSD-PERP"),
            mdrec::model::StreamKey::Book(50)
        )],
        "the book's channel is alive, not silent"
    );
}

#[test]
fn candlesticks_close_when_a_later_bar_arrives() {
    let mut s = session(Exchange, &["BTC_USD"]);
    let push = read("p2_ws_candlestick_push_live2026_cryptocogs.json");
    let (_, ev) = decode_in(&mut s, &push).unwrap();
    let Event::Kline(k) = &ev[0] else { panic!() };
    assert_eq!(
        (&*k.interval, k.open_time_ms, k.closed),
        ("1m", 1782014460000, false)
    );
    assert_eq!(
        k.event_time_ms, 1782014515996,
        "ut is the bar's last update"
    );
    // the next minute's bar closes this one
    let later = push.replace("1782014460000", "1782014520000");
    let (_, ev) = decode_in(&mut s, &later).unwrap();
    let closed: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            Event::Kline(k) => Some((k.open_time_ms, k.closed)),
            _ => None,
        })
        .collect();
    assert_eq!(closed, [(1782014460000, true), (1782014520000, false)]);
    let bars = |ev: &[Event]| -> Vec<(i64, bool)> {
        ev.iter()
            .filter_map(|e| match e {
                Event::Kline(k) => Some((k.open_time_ms, k.closed)),
                _ => None,
            })
            .collect()
    };
    // an invalid later bar (its high below its open) still closes the one before, and is
    // dropped once: it is not kept to be closed (and dropped again) by the next
    let invalid = push
        .replace("1782014460000", "1782014580000")
        .replace("\"h\":\"64356.28\"", "\"h\":\"1\"");
    let (r, ev) = decode_in(&mut s, &invalid).unwrap();
    assert_eq!(bars(&ev), [(1782014520000, true)]);
    assert_eq!(r.findings.invalid_total(), 1);
    let next = push.replace("1782014460000", "1782014640000");
    let (r, ev) = decode_in(&mut s, &next).unwrap();
    assert_eq!(bars(&ev), [(1782014640000, false)]);
    assert_eq!(r.findings.invalid_total(), 0);
}

#[test]
fn requests_are_built_as_the_venue_takes_them() {
    // heartbeats are answered with the id digit for digit (the probe's answer had spaces)
    for (hb, answer) in [
        (
            "p2_ws_heartbeat_live2026_cryptocogs.json",
            "p2_ws_respond_heartbeat_request.json",
        ),
        (
            "p2_ws_heartbeat_nemanull_captured.json",
            "p2_ws_respond_heartbeat_nemanull_captured.json",
        ),
    ] {
        let (r, _) = decode(Exchange, hb).unwrap();
        let ours: serde_json::Value = serde_json::from_str(&r.reply.unwrap()).unwrap();
        let theirs: serde_json::Value = serde_json::from_str(&read(answer)).unwrap();
        assert_eq!(ours, theirs, "{hb}");
    }
    // a subscription: id, method, channels, nonce; book deltas ask for updates
    let want: serde_json::Value =
        serde_json::from_str(&read("p2_ws_subscribe_request_book_delta_officialdoc.json")).unwrap();
    let channels = vec!["book.BTCUSD-PERP.10".to_string()];
    let ours: serde_json::Value = serde_json::from_str(&cdc_exchange::subscribe_request(
        1,
        &channels,
        BookUpdates::Delta,
        1613571154900,
    ))
    .unwrap();
    let keys = |v: &serde_json::Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&ours), keys(&want));
    assert_eq!(keys(&ours["params"]), keys(&want["params"]));
    assert_eq!(ours["params"]["channels"], want["params"]["channels"]);
    assert_eq!(
        ours["params"]["book_subscription_type"],
        "SNAPSHOT_AND_UPDATE"
    );
    // trades and tickers: channels only
    let want: serde_json::Value = serde_json::from_str(&read(
        "p2_ws_subscribe_request_trade_v2_cryptofeed_captured.json",
    ))
    .unwrap();
    let channels: Vec<String> = want["params"]["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    let ours: serde_json::Value = serde_json::from_str(&cdc_exchange::subscribe_request(
        7,
        &channels,
        BookUpdates::Delta,
        1,
    ))
    .unwrap();
    assert_eq!(ours["params"], want["params"]);
}

#[test]
fn vocabulary_is_the_exchanges() {
    assert!(check_symbol("BTC_USD").is_ok() && check_symbol("BTCUSD-PERP").is_ok());
    assert!(check_symbol("btcusdt").is_err() && check_symbol("").is_err());
    assert_eq!(
        interval(Exchange, "1h").and_then(|i| i.fixed_ms()),
        Some(3_600_000)
    );
    assert_eq!(
        interval(Exchange, "14D").and_then(|i| i.fixed_ms()),
        Some(14 * 86_400_000)
    );
    assert!(interval(Exchange, "1M").is_some_and(|i| i.fixed_ms().is_none()));
    // each dialect its own names
    assert!(interval(Exchange, "2h").is_some() && interval(V2, "2h").is_none());
    assert!(interval(V2, "6h").is_some() && interval(Exchange, "6h").is_none());
    assert!(interval(Exchange, "1min").is_none());
    assert_eq!(Exchange.depths(), [10, 50]);
    assert_eq!(V2.depths(), [10, 150]);
}

mod rest_samples {
    use super::*;
    use mdrec::venue::FetchError;
    use mdrec::venue::cdc_exchange::rest;

    fn sym(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    /// Every `p2_rest_` sample and what it must come to: rows (count), or the typed refusal.
    #[test]
    fn every_rest_sample_is_parsed_or_refused_with_its_kind() {
        let trades = |d, name: &str, s: &str| {
            rest::parse_trades(d, &read(name), &sym(s), RECV).map(|v| v.len())
        };
        let candles = |d, name: &str, s: &str, iv: &str| {
            rest::parse_candles(d, &read(name), &sym(s), &sym(iv), RECV).map(|v| v.len())
        };
        let instruments =
            |d, name: &str| rest::parse_instruments(d, &read(name), 1).map(|v| v.len());
        let book = |name: &str| rest::parse_book(&read(name)).map(|(b, a, _)| b.len() + a.len());
        let cases: Vec<(&str, Result<usize, FetchError>)> = vec![
            (
                "p2_rest_get_trades_ccxt_static.json",
                trades(Exchange, "p2_rest_get_trades_ccxt_static.json", "XRP_USDT"),
            ),
            (
                "p2_rest_get_trades_cryptocogs_captured.json",
                trades(
                    Exchange,
                    "p2_rest_get_trades_cryptocogs_captured.json",
                    "BTC_USD",
                ),
            ),
            (
                "p2_rest_get_trades_exchdocs_doc.json",
                trades(
                    Exchange,
                    "p2_rest_get_trades_exchdocs_doc.json",
                    "BTCUSD-PERP",
                ),
            ),
            (
                "p2_rest_get_candlestick_ccxt_static.json",
                candles(
                    Exchange,
                    "p2_rest_get_candlestick_ccxt_static.json",
                    "BTC_USDT",
                    "1h",
                ),
            ),
            (
                "p2_rest_get_candlestick_cryptocogs_captured.json",
                candles(
                    Exchange,
                    "p2_rest_get_candlestick_cryptocogs_captured.json",
                    "BTC_USD",
                    "1m",
                ),
            ),
            (
                "p2_rest_get_candlestick_exchdocs_doc.json",
                candles(
                    Exchange,
                    "p2_rest_get_candlestick_exchdocs_doc.json",
                    "BTCUSD-PERP",
                    "5m",
                ),
            ),
            (
                "p2_rest_get_instruments_v1_cryptocogs_captured.json",
                instruments(
                    Exchange,
                    "p2_rest_get_instruments_v1_cryptocogs_captured.json",
                ),
            ),
            (
                "p2_rest_get_instruments_v1_exchdocs_doc.json",
                instruments(Exchange, "p2_rest_get_instruments_v1_exchdocs_doc.json"),
            ),
            (
                "p2_rest_get_instruments_v2_cryptofeed_sample_data.json",
                instruments(V2, "p2_rest_get_instruments_v2_cryptofeed_sample_data.json"),
            ),
            (
                "p2_rest_get_book_ccxt_static.json",
                book("p2_rest_get_book_ccxt_static.json"),
            ),
            (
                "p2_rest_get_book_cryptocogs_captured.json",
                book("p2_rest_get_book_cryptocogs_captured.json"),
            ),
            (
                "p2_rest_get_book_exchdocs_doc.json",
                book("p2_rest_get_book_exchdocs_doc.json"),
            ),
            (
                "p2_rest_get_tickers_ccxt_static.json",
                rest::parse_tickers(
                    Exchange,
                    &read("p2_rest_get_tickers_ccxt_static.json"),
                    RECV,
                )
                .map(|v| v.len()),
            ),
            (
                "p2_rest_error_404_unknown_path_nemanull_captured.json",
                trades(
                    Exchange,
                    "p2_rest_error_404_unknown_path_nemanull_captured.json",
                    "BTC_USD",
                ),
            ),
            (
                "p2_rest_error_429_exchdocs_doc.json",
                trades(Exchange, "p2_rest_error_429_exchdocs_doc.json", "BTC_USD"),
            ),
            (
                "p2_rest_error_invalid_instrument_nemanull_captured.json",
                trades(
                    Exchange,
                    "p2_rest_error_invalid_instrument_nemanull_captured.json",
                    "NOPE_USD",
                ),
            ),
        ];
        let want: &[(&str, Result<usize, &str>)] = &[
            ("p2_rest_get_trades_ccxt_static.json", Ok(25)),
            ("p2_rest_get_trades_cryptocogs_captured.json", Ok(1)),
            ("p2_rest_get_trades_exchdocs_doc.json", Ok(1)),
            ("p2_rest_get_candlestick_ccxt_static.json", Ok(1)),
            ("p2_rest_get_candlestick_cryptocogs_captured.json", Ok(1)),
            ("p2_rest_get_candlestick_exchdocs_doc.json", Ok(1)),
            ("p2_rest_get_instruments_v1_cryptocogs_captured.json", Ok(1)),
            ("p2_rest_get_instruments_v1_exchdocs_doc.json", Ok(1)),
            (
                "p2_rest_get_instruments_v2_cryptofeed_sample_data.json",
                Ok(250),
            ),
            ("p2_rest_get_book_ccxt_static.json", Ok(10)),
            ("p2_rest_get_book_cryptocogs_captured.json", Ok(4)),
            // the docs' example has no `t`: refused, not given a made-up time
            ("p2_rest_get_book_exchdocs_doc.json", Err("bad_body")),
            ("p2_rest_get_tickers_ccxt_static.json", Ok(1)),
            (
                "p2_rest_error_404_unknown_path_nemanull_captured.json",
                Err("bad_body"),
            ),
            ("p2_rest_error_429_exchdocs_doc.json", Err("rate_limited")),
            (
                "p2_rest_error_invalid_instrument_nemanull_captured.json",
                Err("refused"),
            ),
        ];
        assert_eq!(cases.len(), want.len());
        for ((name, got), (wname, want)) in cases.into_iter().zip(want) {
            assert_eq!(name, *wname);
            match (got, want) {
                (Ok(n), Ok(w)) => assert_eq!(n, *w, "{name}"),
                (Err(e), Err(kind)) => assert_eq!(e.kind(), *kind, "{name}: {e}"),
                (g, w) => panic!("{name}: wanted {w:?}, got {g:?}"),
            }
        }
        // and every REST sample is in the list
        let mut files: Vec<String> = std::fs::read_dir(DIR)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("p2_rest_"))
            .collect();
        files.sort();
        let mut listed: Vec<String> = want.iter().map(|(n, _)| n.to_string()).collect();
        listed.sort();
        assert_eq!(files, listed);
    }

    #[test]
    fn rest_rows_are_exact_and_typed() {
        // a bare 19-digit `tn`, a lowercase side
        let t = rest::parse_trades(
            Exchange,
            &read("p2_rest_get_trades_cryptocogs_captured.json"),
            &sym("BTC_USD"),
            RECV,
        )
        .unwrap();
        assert_eq!(
            (t[0].trade_id, t[0].side, &t[0].price),
            (1781981518402983395, Side::Buy, &dec("63778.90"))
        );
        assert_eq!(t[0].source, mdrec::model::Source::Rest);
        // strings everywhere (the docs): time and id read exactly
        let t = rest::parse_trades(
            Exchange,
            &read("p2_rest_get_trades_exchdocs_doc.json"),
            &sym("BTCUSD-PERP"),
            RECV,
        )
        .unwrap();
        assert_eq!(
            (t[0].trade_id, t[0].event_time_ms, t[0].side),
            (15281981878, 1613547060925, Side::Sell)
        );
        // oldest first whatever the venue's order
        let t = rest::parse_trades(
            Exchange,
            &read("p2_rest_get_trades_ccxt_static.json"),
            &sym("XRP_USDT"),
            RECV,
        )
        .unwrap();
        assert!(
            t.windows(2)
                .all(|w| (w[0].event_time_ms, w[0].trade_id) < (w[1].event_time_ms, w[1].trade_id))
        );
        // the newest bar may be forming: all but it are final
        let k = rest::parse_candles(
            Exchange,
            &read("p2_rest_get_candlestick_exchdocs_doc.json"),
            &sym("BTCUSD-PERP"),
            &sym("5m"),
            RECV,
        )
        .unwrap();
        assert_eq!(
            (k[0].open_time_ms, &*k[0].interval, k[0].closed),
            (1613544000000, "5m", false)
        );
        assert_eq!(k[0].open, dec("50508.5"));
        // both listing shapes
        let l = rest::parse_instruments(
            Exchange,
            &read("p2_rest_get_instruments_v1_exchdocs_doc.json"),
            7,
        )
        .unwrap();
        assert_eq!(&*l[0].market.symbol, "BTCUSD-PERP");
        assert_eq!(l[0].kind.as_deref(), Some("PERPETUAL_SWAP"));
        assert_eq!(
            (l[0].market.price_precision, l[0].market.qty_precision),
            (Some(2), Some(4))
        );
        let l = rest::parse_instruments(
            V2,
            &read("p2_rest_get_instruments_v2_cryptofeed_sample_data.json"),
            7,
        )
        .unwrap();
        assert_eq!(
            (&*l[0].market.symbol, l[0].market.venue),
            ("RSR_USDT", "cdc-v2")
        );
        assert_eq!(l[0].market.quote.as_deref(), Some("USDT"));
        // a refusal keeps the venue's code and message
        match rest::parse_trades(
            Exchange,
            &read("p2_rest_error_invalid_instrument_nemanull_captured.json"),
            &sym("NOPE_USD"),
            RECV,
        ) {
            Err(FetchError::Refused {
                code,
                message,
                retryable,
            }) => {
                assert_eq!(
                    (code.as_str(), message.as_str(), retryable),
                    ("40004", "Invalid instrument_name", false)
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
