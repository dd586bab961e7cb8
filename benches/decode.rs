//! Decode + normalize of gzip v1 frames, beside a bare baseline on the same frames:
//! inflate (reused decompressor) + parse into `serde_json::Value`, and the naive way
//! (a new `GzDecoder` per frame + `Value`).

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

criterion_group!(benches, bench);
criterion_main!(benches);
