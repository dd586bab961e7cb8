//! Property tests (bounded fuzzing, run in CI) over the v1 venue's decoder, normalizer and
//! REST parsers: whatever bytes or JSON a venue sends, decoding never panics, and every event
//! it emits passes the venue's validation (no invalid value reaches the writer).

use std::sync::Arc;

use mdrec::model::Event;
use mdrec::venue::cdc_v1::{CdcSession, CdcV1, RULES};
use mdrec::venue::validate::Verdict;
use mdrec::venue::{Frame, Venue, VenueSession};
use proptest::prelude::*;

/// Receive time of the fuzzed frames (µs).
const RECV_US: i64 = 1_790_134_150_100_000;

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn assert_all_valid(events: &[Event]) -> Result<(), TestCaseError> {
    for ev in events {
        let v = RULES.check(ev, RECV_US / 1000);
        prop_assert!(
            matches!(v, Verdict::Valid | Verdict::Skewed),
            "invalid event emitted: {ev:?} ({v:?})"
        );
    }
    Ok(())
}

/// Numbers a hostile venue might send, as JSON (numbers and strings, odd spellings).
fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("\"-0.0\"".to_string()),
        Just("1e400".to_string()),
        Just("\"NaN\"".to_string()),
        Just("null".to_string()),
        Just(i64::MAX.to_string()),
        Just(i64::MIN.to_string()),
        Just(format!("\"1.{}\"", "9".repeat(80))),
        (-1_000_000i64..1_000_000_000).prop_map(|n| n.to_string()),
        (0u32..100_000, 0u32..100_000_000).prop_map(|(a, b)| format!("\"{a}.{b:08}\"")),
        "[0-9.eE+-]{1,12}".prop_map(|s| format!("\"{s}\"")),
    ]
}

fn time() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0".to_string()),
        Just("-1".to_string()),
        Just(i64::MAX.to_string()),
        Just("1790134150".to_string()),
        Just("1790134150000".to_string()),
        (1_790_000_000_000i64..1_800_000_000_000).prop_map(|n| n.to_string()),
        number(),
    ]
}

fn side() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\"BUY\"".to_string()),
        Just("\"sell\"".to_string()),
        Just("\"\\u0000\"".to_string()),
        Just("1".to_string()),
    ]
}

/// Structurally plausible v1 frames with hostile values in every field.
fn frame() -> impl Strategy<Value = String> {
    let trade = (number(), number(), number(), time(), side(), any::<i64>()).prop_map(
        |(price, vol, amount, ts, side, id)| {
            format!(
                r#"{{"channel":"market_btcusdt_trade_ticker","ts":1790134150000,"tick":{{"data":[{{"id":{id},"price":{price},"vol":{vol},"amount":{amount},"side":{side},"ts":{ts}}}]}}}}"#
            )
        },
    );
    let kline = (number(), number(), number(), number(), number(), time()).prop_map(
        |(open, high, low, close, vol, id)| {
            format!(
                r#"{{"channel":"market_btcusdt_kline_1min","ts":1790134150000,"tick":{{"id":{id},"open":{open},"high":{high},"low":{low},"close":{close},"vol":{vol},"amount":{vol}}}}}"#
            )
        },
    );
    let book = (
        prop::collection::vec((number(), number()), 0..6),
        prop::collection::vec((number(), number()), 0..6),
        time(),
    )
        .prop_map(|(asks, bids, ts)| {
            let lv = |v: Vec<(String, String)>| {
                v.into_iter()
                    .map(|(p, q)| format!("[{p},{q}]"))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            format!(
                r#"{{"channel":"market_btcusdt_depth_step0","ts":{ts},"tick":{{"asks":[{}],"buys":[{}]}}}}"#,
                lv(asks),
                lv(bids)
            )
        });
    let delta = (number(), number(), side(), time()).prop_map(|(p, q, s, ts)| {
        format!(
            r#"{{"channel":"market_btcusdt_depth_step0","ts":{ts},"tick":{{"side":{s},"price":{p},"volume":{q}}}}}"#
        )
    });
    let ticker = (number(), number(), number(), number(), time()).prop_map(|(o, h, l, c, ts)| {
        format!(
            r#"{{"channel":"market_btcusdt_ticker","ts":{ts},"tick":{{"open":{o},"high":{h},"low":{l},"close":{c},"vol":{o},"amount":{h},"rose":{l}}}}}"#
        )
    });
    prop_oneof![trade, kline, book, delta, ticker]
}

fn session() -> CdcSession {
    CdcSession::new(Arc::from("btcusdt"), 1 << 16)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut s = session();
        let mut out = Vec::new();
        let _ = s.on_frame(Frame::Binary(&bytes), RECV_US, &mut out);
        assert_all_valid(&out)?;
        // the same bytes behind a valid gzip header
        out.clear();
        let _ = s.on_frame(Frame::Binary(&gzip(&bytes)), RECV_US, &mut out);
        assert_all_valid(&out)?;
        if let Ok(text) = std::str::from_utf8(&bytes) {
            out.clear();
            let _ = s.on_frame(Frame::Text(text), RECV_US, &mut out);
            assert_all_valid(&out)?;
        }
    }

    #[test]
    fn hostile_values_never_become_invalid_events(frames in prop::collection::vec(frame(), 1..8)) {
        // one session across the frames: open bars carry state from frame to frame
        let mut s = session();
        let mut out = Vec::new();
        for f in &frames {
            let _ = s.on_frame(Frame::Text(f), RECV_US, &mut out);
            let _ = s.on_frame(Frame::Binary(&gzip(f.as_bytes())), RECV_US + 1, &mut out);
        }
        assert_all_valid(&out)?;
    }

    #[test]
    fn rest_parsers_never_panic(body in ".{0,300}", trades in prop::collection::vec((number(), number(), time(), side()), 0..5)) {
        let v = CdcV1;
        let sym: Arc<str> = Arc::from("btcusdt");
        let iv: Arc<str> = Arc::from("1min");
        let _ = v.parse_markets(&body, 1);
        let mut history = v.trade_history(&sym, None, None);
        let _ = history.next_request();
        let _ = history.take(&body, RECV_US);
        if let Some(mut bars) = v.kline_history(&sym, &iv, Some(0)) {
            let _ = bars.next_request();
            let _ = bars.take_rest(&body, RECV_US);
            let _ = bars.next_request();
            bars.take_socket(&[]);
            let _ = bars.answered();
        }
        let items: Vec<String> = trades
            .into_iter()
            .enumerate()
            .map(|(i, (p, a, t, s))| format!(r#"{{"id":{i},"price":{p},"amount":{a},"ctime":{t},"side":{s}}}"#))
            .collect();
        let reply = format!(r#"{{"code":"0","msg":"suc","data":[{}]}}"#, items.join(","));
        let _ = history.take(&reply, RECV_US);
        let _ = history.reach(None);
    }
}

/// Found by the property test: `abs` of i64::MIN overflowed in the seconds/milliseconds guess.
#[test]
fn extreme_times_do_not_overflow() {
    use mdrec::venue::cdc_v1::to_ms;
    assert_eq!(to_ms(i64::MIN), i64::MIN);
    assert_eq!(to_ms(i64::MAX), i64::MAX);
    assert_eq!(to_ms(1_790_134_150), 1_790_134_150_000);
    assert_eq!(to_ms(-1), -1000);
}

/// Found by the property test: a ticker stamped i64::MIN overflowed the "how far ahead"
/// offset the invalid-message log line reports.
#[test]
fn a_ticker_at_the_least_time_is_dropped_without_overflow() {
    let mut s = session();
    let mut out = Vec::new();
    let frame = r#"{"channel":"market_btcusdt_ticker","ts":-9223372036854775808,"tick":{"open":null,"high":0,"low":"-0.0","close":null,"vol":null,"amount":0,"rose":"-0.0"}}"#;
    let _ = s.on_frame(Frame::Text(frame), RECV_US, &mut out);
    assert!(
        out.iter().all(|e| !matches!(e, Event::Ticker(_))),
        "{out:?}"
    );
}
