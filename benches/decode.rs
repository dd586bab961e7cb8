//! Decode + normalize of gzip v1 frames, beside a bare baseline on the same frames:
//! inflate (reused decompressor) + parse into `serde_json::Value`, and the naive way
//! (a new `GzDecoder` per frame + `Value`). Then today's exchange (plain JSON text frames)
//! per frame kind, beside `Value` on the same text.

use std::hint::black_box;
use std::io::{Read, Write};
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mdrec::venue::cdc_v1::CdcSession;
use mdrec::venue::cdc_v1::inflate::Inflater;
use mdrec::venue::{Frame, VenueSession};

fn gzip(s: &str) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(s.as_bytes()).unwrap();
    e.finish().unwrap()
}

/// Receive time of the benchmark frames: just after their exchange time, as on a live socket
/// (validation passes them all, skew included).
const RECV_US: i64 = 1_790_134_150_100_000;

fn trade_frame() -> String {
    let items: Vec<String> = (0..3)
        .map(|i| {
            format!(
                r#"{{"amount":"23311.6243695000000000","ds":"2026-09-23 11:29:10","id":{},"price":"86650.65","side":"BUY","ts":1790134150000,"vol":"0.2690300000000000"}}"#,
                13652120 + i
            )
        })
        .collect();
    format!(
        r#"{{"event_rep":"","channel":"market_btcusdt_trade_ticker","data":null,"tick":{{"data":[{}],"ts":1790134150000}},"ts":1790134150000,"status":"ok"}}"#,
        items.join(",")
    )
}

fn kline_frame() -> String {
    r#"{"event_rep":"","channel":"market_btcusdt_kline_1min","data":null,"tick":{"amount":"49855.9502090000000000","close":"86650.65","vol":"28616.7400000000000000","high":"86652.10","low":"86640.06","open":"86642.23","id":1790134140},"ts":1790134150000,"status":"ok"}"#.to_string()
}

fn depth_frame() -> String {
    let side = |base: f64, dir: f64| -> String {
        let v: Vec<String> = (0..20)
            .map(|i| {
                format!(
                    "[{:.2},{:.5}]",
                    base + dir * i as f64 * 0.37,
                    0.05 + i as f64 * 0.013
                )
            })
            .collect();
        v.join(",")
    };
    format!(
        r#"{{"event_rep":"","channel":"market_btcusdt_depth_step0","data":null,"tick":{{"asks":[{}],"buys":[{}]}},"ts":1790134142000,"status":"ok"}}"#,
        side(86764.73, 1.0),
        side(86621.91, -1.0)
    )
}

fn bench(c: &mut Criterion) {
    let frames = [
        ("trade", trade_frame()),
        ("kline", kline_frame()),
        ("depth20", depth_frame()),
    ];
    for (name, json) in &frames {
        let z = gzip(json);
        let mut g = c.benchmark_group(format!("frame/{name}"));
        g.throughput(Throughput::Elements(1));
        g.bench_function("mdrec_decode_normalize", |b| {
            let mut s = CdcSession::new(Arc::from("btcusdt"), 1 << 20);
            let mut out = Vec::with_capacity(8);
            b.iter(|| {
                out.clear();
                let r = s
                    .on_frame(Frame::Binary(black_box(&z)), RECV_US, &mut out)
                    .unwrap();
                black_box((&r, &out));
            })
        });
        g.bench_function("baseline_inflate_reused_value", |b| {
            let mut inf = Inflater::new(1 << 20);
            b.iter(|| {
                let bytes = inf.inflate(black_box(&z)).unwrap();
                let v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
                black_box(v);
            })
        });
        g.bench_function("baseline_new_gzdecoder_value", |b| {
            b.iter(|| {
                let mut d = flate2::read::GzDecoder::new(black_box(&z[..]));
                let mut buf = Vec::new();
                d.read_to_end(&mut buf).unwrap();
                let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
                black_box(v);
            })
        });
        g.finish();
    }
}

/// Exchange time of the exchange frames (ms), just before `RECV_US`.
const T_MS: i64 = RECV_US / 1000 - 50;

fn ex_push(channel: &str, sub: &str, extra: &str, data: &str) -> String {
    format!(
        r#"{{"id":-1,"method":"subscribe","code":0,"result":{{"instrument_name":"BTC_USD","subscription":"{sub}","channel":"{channel}"{extra},"data":{data}}}}}"#
    )
}

fn ex_levels(base: f64, dir: f64, n: usize) -> String {
    let v: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"["{:.2}","{:.8}","{}"]"#,
                base + dir * i as f64 * 0.5,
                0.0125 + i as f64 * 0.0031,
                1 + i % 4
            )
        })
        .collect();
    format!("[{}]", v.join(","))
}

/// One frame of each kind today's exchange sends for `book.{I}.50` with updates, trades, a
/// candlestick and a ticker: what the 800-instrument harness runs receive.
fn exchange_frames() -> Vec<(&'static str, Vec<String>)> {
    let trades: Vec<String> = (0..3)
        .map(|i| {
            format!(
                r#"{{"d":"{}","t":{T_MS},"p":"86650.65","q":"0.00120000","s":"BUY","i":"BTC_USD","m":"{}"}}"#,
                4_611_686_018_427_387_904i64 + i,
                i
            )
        })
        .collect();
    let trade = ex_push(
        "trade",
        "trade.BTC_USD",
        "",
        &format!("[{}]", trades.join(",")),
    );
    let snapshot = |u: i64| {
        ex_push(
            "book",
            "book.BTC_USD.50",
            r#","depth":50"#,
            &format!(
                r#"[{{"asks":{},"bids":{},"t":{T_MS},"tt":{T_MS},"u":{u},"cs":0}}]"#,
                ex_levels(86651.0, 1.0, 50),
                ex_levels(86650.5, -1.0, 50)
            ),
        )
    };
    let delta = |u: i64| {
        ex_push(
            "book.update",
            "book.BTC_USD.50",
            r#","depth":50"#,
            &format!(
                r#"[{{"update":{{"asks":{},"bids":{}}},"t":{T_MS},"tt":{T_MS},"u":{u},"pu":{},"cs":0}}]"#,
                ex_levels(86651.0 + (u % 7) as f64, 1.0, 2),
                ex_levels(86650.5 - (u % 5) as f64, -1.0, 2),
                u - 1
            ),
        )
    };
    // a snapshot, then 99 chained updates: the stream as a subscription delivers it
    let mut book = vec![snapshot(1_000)];
    book.extend((1_001..1_100).map(delta));
    let candle = ex_push(
        "candlestick",
        "candlestick.1m.BTC_USD",
        r#","interval":"1m""#,
        &format!(
            r#"[{{"o":"86642.23","h":"86652.10","l":"86640.06","c":"86650.65","v":"28.61674","t":{}}}]"#,
            T_MS - T_MS % 60_000
        ),
    );
    let ticker = ex_push(
        "ticker",
        "ticker.BTC_USD",
        "",
        &format!(
            r#"[{{"i":"BTC_USD","h":"86700.50","l":"86600.20","a":"86650.65","c":"-0.0123","b":"86650.50","bs":"0.51200","k":"86651.00","ks":"0.12500","v":"1234.56789","vv":"106978512.34","oi":"0","t":{T_MS}}}]"#
        ),
    );
    vec![
        ("ex_trade3", vec![trade]),
        ("ex_book50_updates", book),
        ("ex_candle", vec![candle]),
        ("ex_ticker", vec![ticker]),
    ]
}

fn bench_exchange(c: &mut Criterion) {
    use mdrec::venue::cdc_exchange::{Dialect, ExchangeSession, RULES};
    for (name, frames) in exchange_frames() {
        // what is measured is the data path: every frame yields events, no break, no finding
        let mut s = ExchangeSession::new(Dialect::Exchange, vec![Arc::from("BTC_USD")], RULES);
        for f in &frames {
            let mut out = Vec::new();
            let r = s.on_frame(Frame::Text(f), RECV_US, &mut out).unwrap();
            assert!(!out.is_empty() && r.breaks.is_empty(), "{name}: {r:?}");
            assert_eq!(r.findings, Default::default(), "{name}");
        }
        let mut g = c.benchmark_group(format!("frame/{name}"));
        g.throughput(Throughput::Elements(1));
        g.bench_function("mdrec_decode_normalize", |b| {
            let mut s = ExchangeSession::new(Dialect::Exchange, vec![Arc::from("BTC_USD")], RULES);
            let mut out = Vec::with_capacity(8);
            let mut i = 0;
            b.iter(|| {
                out.clear();
                let f = &frames[i % frames.len()];
                i += 1;
                let r = s.on_frame(Frame::Text(black_box(f)), RECV_US, &mut out);
                assert!(r.is_ok(), "{name}: {r:?}");
                black_box((&r, &out));
            })
        });
        g.bench_function("baseline_value", |b| {
            let mut i = 0;
            b.iter(|| {
                let f = &frames[i % frames.len()];
                i += 1;
                let v: serde_json::Value = serde_json::from_str(black_box(f)).unwrap();
                black_box(v);
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench, bench_exchange);
criterion_main!(benches);
