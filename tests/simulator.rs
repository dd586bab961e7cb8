//! The simulator on its own: REST endpoints, websocket behaviour (acks, unsub, req, echo,
//! pong enforcement), a market that trades with nobody listening, determinism by seed.

mod common;

use std::io::Read;
use std::time::Duration;

use common::wait_for;
use futures_util::{SinkExt, StreamExt};
use mdrec::sim::{self, SimConfig, SimHandle};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(sim: &SimHandle) -> Ws {
    tokio_tungstenite::connect_async(sim.ws_url())
        .await
        .expect("connect")
        .0
}

/// Next server frame as JSON text, inflating gzip; None when the connection ended.
async fn next_json(ws: &mut Ws, timeout: Duration) -> Option<String> {
    loop {
        let msg = tokio::time::timeout(timeout, ws.next()).await.ok()??.ok()?;
        match msg {
            Message::Binary(b) => {
                let mut s = String::new();
                flate2::read::GzDecoder::new(&b[..])
                    .read_to_string(&mut s)
                    .expect("gzip frame");
                return Some(s);
            }
            Message::Text(t) => return Some(t.to_string()),
            Message::Close(_) => return None,
            _ => continue,
        }
    }
}

/// Reads frames (answering pings) until one satisfies `pred`.
async fn until(
    ws: &mut Ws,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let text = next_json(ws, left)
            .await
            .unwrap_or_else(|| panic!("no frame for {what}"));
        let v: serde_json::Value = serde_json::from_str(&text).expect("server sends JSON");
        if let Some(p) = v.get("ping") {
            ws.send(Message::text(format!("{{\"pong\":{p}}}")))
                .await
                .unwrap();
        }
        if pred(&v) {
            return v;
        }
    }
}

#[tokio::test]
async fn market_trades_with_nobody_listening_and_is_deterministic() {
    let a = sim::start(SimConfig {
        seed: 42,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let b = sim::start(SimConfig {
        seed: 42,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    wait_for("trades with no client", Duration::from_secs(20), || async {
        a.trades("btcusdt").len() >= 50 && b.trades("btcusdt").len() >= 50
    })
    .await;
    let key = |h: &SimHandle| -> Vec<_> {
        h.trades("btcusdt")
            .iter()
            .take(50)
            .map(|t| (t.id, t.side, t.price, t.qty))
            .collect()
    };
    assert_eq!(key(&a), key(&b), "same seed, same market");
    assert!(a.delivered("btcusdt").is_empty());
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn rest_endpoints() {
    let sim = sim::start(SimConfig::default()).await.unwrap();
    wait_for("some trades", Duration::from_secs(20), || async {
        sim.trades("btcusdt").len() >= 250
    })
    .await;
    sim.halt();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let get = |path: &str| {
        let url = format!("{}{path}", sim.rest_url());
        let http = http.clone();
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let body = get("/v1/symbols").await;
    let syms = mdrec::venue::cdc_v1::rest::parse_symbols(&body).unwrap();
    assert_eq!(
        syms.iter().map(|s| s.symbol.as_str()).collect::<Vec<_>>(),
        ["btcusdt", "ethusdt"]
    );

    let sym = std::sync::Arc::from("btcusdt");
    let trades =
        mdrec::venue::cdc_v1::rest::parse_trades(&get("/v1/trades?symbol=btcusdt").await, &sym, 0)
            .unwrap();
    let ledger = sim.trades("btcusdt");
    assert_eq!(trades.len(), 200, "the last 200");
    let tail = &ledger[ledger.len() - 200..];
    for (t, l) in trades.iter().zip(tail) {
        assert_eq!(
            (t.trade_id, t.side, t.event_time_ms),
            (l.id, l.side, l.time_ms)
        );
        assert_eq!(t.price, mdrec::decimal::Dec::from(l.price));
        assert_eq!(t.qty, mdrec::decimal::Dec::from(l.qty));
    }

    let iv = std::sync::Arc::from("1min");
    let bars = mdrec::venue::cdc_v1::rest::parse_klines(
        &get("/v1/klines?symbol=btcusdt&period=1").await,
        &sym,
        &iv,
        0,
    )
    .unwrap();
    let ledger_bars = sim.bars("btcusdt", "1min");
    assert_eq!(bars.len(), ledger_bars.len().min(300));
    assert_eq!(
        bars.last().unwrap().close,
        mdrec::decimal::Dec::from(ledger_bars.last().unwrap().close)
    );

    let (bids, asks) =
        mdrec::venue::cdc_v1::rest::parse_depth(&get("/v1/depth?symbol=btcusdt&type=step0").await)
            .unwrap();
    let (sb, sa) = sim.book("btcusdt", 0, 150).unwrap();
    assert_eq!(bids.len(), sb.len());
    assert_eq!(asks[0].0, mdrec::decimal::Dec::from(sa[0].0));
    let (b1, _) =
        mdrec::venue::cdc_v1::rest::parse_depth(&get("/v1/depth?symbol=btcusdt&type=step2").await)
            .unwrap();
    assert!(b1.len() < bids.len(), "step2 merges levels");

    let err =
        mdrec::venue::cdc_v1::rest::parse_trades(&get("/v1/trades?symbol=nope").await, &sym, 0)
            .unwrap_err();
    assert!(matches!(
        err,
        mdrec::venue::cdc_v1::rest::RestError::Venue { code: 10001, .. }
    ));
    sim.shutdown().await;
}

#[tokio::test]
async fn websocket_sub_ack_unsub_req_and_echo() {
    let sim = sim::start(SimConfig::default()).await.unwrap();
    let mut ws = connect(&sim).await;
    ws.send(Message::text(
        r#"{"event":"sub","params":{"channel":"market_btcusdt_trade_ticker","cb_id":"x"}}"#,
    ))
    .await
    .unwrap();
    let ack = until(&mut ws, "ack", |v| {
        v.get("event_rep").and_then(|e| e.as_str()) == Some("subed")
    })
    .await;
    assert_eq!(ack["channel"], "market_btcusdt_trade_ticker");
    let push = until(&mut ws, "trade push", |v| {
        v.get("tick").is_some_and(|t| !t.is_null())
    })
    .await;
    assert!(
        push["tick"]["data"][0]["side"]
            .as_str()
            .unwrap()
            .chars()
            .all(|c| c.is_ascii_uppercase())
    );

    ws.send(Message::text(r#"{"event":"req","params":{"channel":"market_btcusdt_kline_1min","cb_id":"h","since":"0"}}"#))
        .await
        .unwrap();
    let rep = until(&mut ws, "kline reply", |v| {
        v.get("event_rep").and_then(|e| e.as_str()) == Some("rep")
    })
    .await;
    assert!(!rep["data"].as_array().unwrap().is_empty());

    ws.send(Message::text(r#"{"event":"nope","params":{}}"#))
        .await
        .unwrap();
    until(&mut ws, "echo", |v| {
        v.get("event").and_then(|e| e.as_str()) == Some("nope")
    })
    .await;

    ws.send(Message::text(
        r#"{"event":"unsub","params":{"channel":"market_btcusdt_trade_ticker","cb_id":"x"}}"#,
    ))
    .await
    .unwrap();
    wait_for(
        "unsubscribe to register",
        Duration::from_secs(5),
        || async { sim.state().subscriptions == 0 },
    )
    .await;
    sim.shutdown().await;
}

#[tokio::test]
async fn no_acks_switch_and_bad_channel_empty_book() {
    let sim = sim::start(SimConfig {
        acks: false,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let mut ws = connect(&sim).await;
    ws.send(Message::text(
        r#"{"event":"sub","params":{"channel":"market_btcusdt_depth_step5","cb_id":"x"}}"#,
    ))
    .await
    .unwrap();
    let empty = until(&mut ws, "empty book", |_| true).await;
    assert_eq!(empty["tick"]["asks"], serde_json::json!([]));
    ws.send(Message::text(
        r#"{"event":"sub","params":{"channel":"market_btcusdt_depth_step0","cb_id":"x"}}"#,
    ))
    .await
    .unwrap();
    let first = until(&mut ws, "book", |v| v.get("ping").is_none()).await;
    assert!(
        first.get("event_rep").and_then(|e| e.as_str()) != Some("subed"),
        "no ack: {first}"
    );
    assert!(!first["tick"]["asks"].as_array().unwrap().is_empty());
    sim.shutdown().await;
}

#[tokio::test]
async fn a_client_that_never_pongs_is_hung_up() {
    let sim = sim::start(SimConfig {
        ping_interval: Duration::from_millis(100),
        max_missed_pongs: 2,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let mut silent = connect(&sim).await;
    let mut polite = connect(&sim).await;
    // the silent client reads but never answers: the server must drop it
    let silent_side = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut pings_seen = 0;
        loop {
            assert!(tokio::time::Instant::now() < deadline, "never hung up");
            match next_json(&mut silent, Duration::from_secs(5)).await {
                Some(t) if t.contains("ping") => pings_seen += 1,
                Some(_) => {}
                None => break,
            }
        }
        pings_seen
    };
    // meanwhile the polite client answers every ping and stays connected
    let polite_side = async {
        for _ in 0..10 {
            until(&mut polite, "ping", |v| v.get("ping").is_some()).await;
        }
    };
    let (pings_seen, ()) = tokio::join!(silent_side, polite_side);
    assert!(pings_seen >= 2);
    sim.shutdown().await;
}
