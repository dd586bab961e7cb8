//! `/metrics` and `/healthz` during a simulator run: every metric family is there with
//! plausible values, rows written equal rows in the database, and health follows the data.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{recorder_config, sqlite_db, wait_for};
use mdrec::sim::{self, SimConfig};
use mdrec::store::Store;

const SYMBOLS: [&str; 2] = ["btcusdt", "ethusdt"];

/// `name{labels}` -> value, from the Prometheus text format.
fn parse(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn value(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("{key} missing from /metrics"))
}

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.expect("HTTP request");
    let status = r.status().as_u16();
    (status, r.text().await.expect("body"))
}

async fn count(store: &Store, table: &str) -> f64 {
    let sql = format!("SELECT COUNT(*) FROM {table}");
    let n: i64 = match store {
        Store::Sqlite(s) => sqlx::query_scalar(&sql).fetch_one(s.pool()).await,
        Store::Postgres(s) => sqlx::query_scalar(&sql).fetch_one(s.pool()).await,
    }
    .expect("count");
    n as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_during_a_run() {
    common::init_log();
    let (_dir, url) = sqlite_db();
    let sim = sim::start(SimConfig {
        seed: 71,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let cfg = recorder_config(
        &sim.ws_url(),
        &sim.rest_url(),
        &url,
        &SYMBOLS,
        // backfill off: every trade row then comes from a socket exactly once, so the
        // writer's counts can be compared with the tables one for one
        "[connection]\nsilence_timeout_s = 2\nreconnect_initial_ms = 200\n",
    );
    let run = common::Recorder::start(&cfg).await;
    let base = format!(
        "http://{}",
        run.stats.metrics_addr.get().expect("metrics served")
    );
    let store = Store::connect(&url).await.unwrap();

    wait_for("streaming", Duration::from_secs(30), || async {
        SYMBOLS.iter().all(|s| sim.delivered(s).len() >= 50)
    })
    .await;
    let (status, body) = get(&format!("{base}/healthz")).await;
    assert_eq!(status, 200, "healthy while streaming: {body}");
    let h: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(h["healthy"], true);

    // quiet the market and let the writer catch up, so counters and tables can be compared
    sim.halt();
    wait_for("the queue to drain", Duration::from_secs(30), || async {
        run.stats.queue_depth() == 0
            && common::stored_ids(&store, "btcusdt").await == sim.delivered("btcusdt")
            && common::stored_ids(&store, "ethusdt").await == sim.delivered("ethusdt")
    })
    .await;
    let (status, text) = get(&format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    let m = parse(&text);
    for family in [
        "mdrec_frames_received_total",
        "mdrec_messages_received_total",
        "mdrec_decode_errors_total",
        "mdrec_connects_total",
        "mdrec_last_message_age_seconds",
        "mdrec_rows_written_total",
        "mdrec_write_batch_rows",
        "mdrec_write_duration_seconds",
        "mdrec_queue_depth",
        "mdrec_spool_bytes",
        "mdrec_database_up",
        "mdrec_gaps",
        "mdrec_rest_requests_total",
        "mdrec_backfill_rows_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} has no TYPE line:\n{text}"
        );
    }
    for s in SYMBOLS {
        assert!(
            value(
                &m,
                &format!("mdrec_frames_received_total{{symbol=\"{s}\"}}")
            ) > 0.0
        );
        let trades = format!("mdrec_messages_received_total{{symbol=\"{s}\",channel=\"trades\"}}");
        assert!(value(&m, &trades) >= 50.0, "{trades}");
        let age = format!("mdrec_last_message_age_seconds{{symbol=\"{s}\",channel=\"book_0\"}}");
        assert!(value(&m, &age) < 30.0, "{age}");
        assert_eq!(
            value(
                &m,
                &format!("mdrec_decode_errors_total{{symbol=\"{s}\",kind=\"json\"}}")
            ),
            0.0
        );
        assert_eq!(
            value(&m, &format!("mdrec_connects_total{{symbol=\"{s}\"}}")),
            1.0
        );
        // no connection ended yet: every reason is there at zero (an alert needs the series)
        for reason in mdrec::stats::RECONNECT_REASONS {
            let key = format!("mdrec_reconnects_total{{symbol=\"{s}\",reason=\"{reason}\"}}");
            assert_eq!(value(&m, &key), 0.0, "{key}");
        }
    }
    // insert-only tables: what the writer wrote is what the database holds (a batch taken
    // from the queue may still be committing: compare again until both have it)
    wait_for(
        "rows written to equal the tables",
        Duration::from_secs(10),
        || async {
            let (_, text) = get(&format!("{base}/metrics")).await;
            let m = parse(&text);
            for table in ["trades", "book_snapshots", "tickers"] {
                let written = value(
                    &m,
                    &format!("mdrec_rows_written_total{{table=\"{table}\"}}"),
                );
                if written != count(&store, table).await {
                    return false;
                }
            }
            true
        },
    )
    .await;
    let batches = value(&m, "mdrec_write_batch_rows_count");
    assert!(batches > 0.0);
    assert!(value(&m, "mdrec_write_duration_seconds_sum") > 0.0);
    assert!(value(&m, "mdrec_write_batch_rows_sum") >= count(&store, "book_snapshots").await);
    assert_eq!(value(&m, "mdrec_queue_depth"), 0.0);
    assert_eq!(value(&m, "mdrec_spool_bytes"), 0.0);
    assert_eq!(value(&m, "mdrec_database_up"), 1.0);
    assert_eq!(value(&m, "mdrec_gaps{status=\"unrecoverable\"}"), 0.0);
    assert!(
        value(
            &m,
            "mdrec_rest_requests_total{endpoint=\"/v1/symbols\",outcome=\"ok\"}"
        ) >= 1.0
    );
    let trades_written = value(&m, "mdrec_rows_written_total{table=\"trades\"}");
    assert!(trades_written >= 100.0);
    assert_eq!(
        value(&m, "mdrec_backfill_rows_total{table=\"trades\"}"),
        0.0
    );

    // the venue goes silent (no data, no pings): unhealthy once the silence timeout passes
    sim.resume();
    sim.mute(true);
    wait_for("/healthz to say 503", Duration::from_secs(30), || async {
        get(&format!("{base}/healthz")).await.0 == 503
    })
    .await;
    let (_, body) = get(&format!("{base}/healthz")).await;
    let h: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(h["healthy"], false);
    let problems = h["problems"].to_string();
    assert!(
        SYMBOLS.iter().all(|s| problems.contains(s)),
        "names the silent symbols: {body}"
    );
    let m = parse(&get(&format!("{base}/metrics")).await.1);
    assert!(
        value(
            &m,
            "mdrec_reconnects_total{symbol=\"btcusdt\",reason=\"silence\"}"
        ) >= 1.0,
        "the silent socket was reopened"
    );
    sim.mute(false);
    wait_for("/healthz back to 200", Duration::from_secs(30), || async {
        get(&format!("{base}/healthz")).await.0 == 200
    })
    .await;
    eprintln!(
        "metrics: {} families, trades written {trades_written}, write batches {batches}",
        text.lines().filter(|l| l.starts_with("# TYPE")).count()
    );
    run.stop().await;
    store.close().await;
    sim.shutdown().await;
}

/// A channel that never delivered is on `/metrics` from its subscription on: its age grows
/// and its message count is 0, so an alert on the age sees a value, not "no data".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_that_never_delivered_has_an_age() {
    let (_dir, url) = sqlite_db();
    let sim = sim::start(SimConfig::default()).await.unwrap();
    sim.mute_channel(Some("market_btcusdt_ticker"));
    let cfg = recorder_config(&sim.ws_url(), &sim.rest_url(), &url, &["btcusdt"], "");
    let run = common::Recorder::start(&cfg).await;
    let base = format!("http://{}", run.stats.metrics_addr.get().expect("metrics"));
    wait_for("trades delivered", Duration::from_secs(30), || async {
        sim.delivered("btcusdt").len() >= 20
    })
    .await;
    let (_, text) = get(&format!("{base}/metrics")).await;
    let m = parse(&text);
    let labels = "{symbol=\"btcusdt\",channel=\"ticker\"}";
    assert_eq!(
        value(&m, &format!("mdrec_messages_received_total{labels}")),
        0.0
    );
    assert!(value(&m, &format!("mdrec_last_message_age_seconds{labels}")) >= 0.0);
    run.stop().await;
    sim.shutdown().await;
}
