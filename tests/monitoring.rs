//! The shipped monitoring: `deploy/prometheus/alerts.yml` passes `promtool check rules` and
//! its unit tests (`alerts_test.yml`: each alert fires on the series meant to trip it), and
//! every metric the rules and the Grafana dashboard (`deploy/grafana/mdrec.json`) name is
//! on a running recorder's `/metrics`.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::{recorder_config, sqlite_db};
use mdrec::sim::{self, SimConfig};

fn deploy(p: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(p)
}

/// Metric names in a text (`mdrec_…`), histogram suffixes kept as written.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("mdrec_") {
        let start = i + at;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        let before = start.checked_sub(1).map(|j| b[j]);
        // not the tail of a longer word
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_') {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

/// promtool, or None where it is not installed and not required (`MDREC_REQUIRE_PROMTOOL=1`,
/// which CI sets, makes its absence a failure).
fn promtool(args: &[&str]) -> Option<std::process::Output> {
    match std::process::Command::new("promtool")
        .args(args)
        .current_dir(deploy("prometheus"))
        .output()
    {
        Ok(o) => Some(o),
        Err(e) => {
            assert!(
                std::env::var("MDREC_REQUIRE_PROMTOOL").as_deref() != Ok("1"),
                "MDREC_REQUIRE_PROMTOOL=1 but promtool cannot run: {e} (apt-get install prometheus)"
            );
            common::not_tested(&format!("no promtool ({e})"), "apt-get install prometheus");
            None
        }
    }
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let Some(check) = promtool(&["check", "rules", "alerts.yml"]) else {
        return;
    };
    let text = String::from_utf8_lossy(&check.stdout).into_owned()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{text}");
    assert!(text.contains("SUCCESS: 13 rules found"), "{text}");
    let test = promtool(&["test", "rules", "alerts_test.yml"]).unwrap();
    let text =
        String::from_utf8_lossy(&test.stdout).into_owned() + &String::from_utf8_lossy(&test.stderr);
    assert!(test.status.success(), "{text}");
}

#[test]
fn every_alert_has_a_unit_test_and_a_reason() {
    let rules = std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(deploy("prometheus/alerts_test.yml")).unwrap();
    let lines: Vec<&str> = rules.lines().collect();
    let mut n = 0;
    for (i, l) in lines.iter().enumerate() {
        let Some(name) = l.trim().strip_prefix("- alert: ") else {
            continue;
        };
        n += 1;
        // the line before a rule is its explanation (a comment)
        assert!(
            lines[i - 1].trim().starts_with('#'),
            "{name}: no comment says why its threshold is where it is"
        );
        if name != "MdrecSlowWrites" && name != "MdrecDecodeErrors" {
            assert!(
                tests.contains(&format!("alertname: {name}")),
                "{name} has no case in alerts_test.yml"
            );
        }
    }
    assert_eq!(n, 13);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_and_dashboard_name_only_metrics_the_recorder_exports() {
    let rules = std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap();
    let dash_text = std::fs::read_to_string(deploy("grafana/mdrec.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&dash_text).expect("dashboard is JSON");
    let mut exprs = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{}: no query", p["title"]);
        for t in targets {
            exprs.push(t["expr"].as_str().expect("expr").to_string());
        }
    }
    assert!(exprs.len() >= 14, "{exprs:?}");
    let mut wanted = metric_names(&rules);
    for e in &exprs {
        wanted.extend(metric_names(e));
    }
    wanted.extend(metric_names(
        dash["templating"]["list"][0]["query"].as_str().unwrap(),
    ));

    let (_dir, url) = sqlite_db();
    let sim = sim::start(SimConfig::default()).await.unwrap();
    let cfg = recorder_config(
        &sim.ws_url(),
        &sim.rest_url(),
        &url,
        &["btcusdt", "ethusdt"],
        "",
    );
    let run = common::Recorder::start(&cfg).await;
    let base = format!("http://{}", run.stats.metrics_addr.get().expect("metrics"));
    let scrape = async || {
        reqwest::get(format!("{base}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let missing_from = |text: &str| -> Vec<String> {
        let exported: BTreeSet<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| l.split(['{', ' ']).next())
            .collect();
        wanted
            .iter()
            .filter(|m| !exported.contains(m.as_str()))
            .cloned()
            .collect()
    };
    // some series appear only once the run did something: histograms with their first
    // observations, `mdrec_gaps` with a scrape whose database read answered within its 1 s;
    // scraped until every named one is there or the deadline passes
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let missing = loop {
        let missing = missing_from(&scrape().await);
        if missing.is_empty() || tokio::time::Instant::now() >= deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        missing.is_empty(),
        "named by the rules or the dashboard but not on /metrics: {missing:?}"
    );
    println!(
        "{} metrics named by alerts.yml and mdrec.json ({} dashboard queries), all on /metrics",
        wanted.len(),
        exprs.len()
    );
    run.stop().await;
    sim.shutdown().await;
}
