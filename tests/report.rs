//! `mdrec coverage --html`: a recording with a cut (a hole filled from the venue's history)
//! and an unrecoverable hole on record, rendered by headless Chromium. The screenshot shows
//! the live time green, the filled hole amber, the unrecoverable one red at its place on the
//! symbol's timeline; the rendered page names both symbols, the verdicts and the hole.
//! Without Chromium the test prints SKIP; `MDREC_REQUIRE_CHROMIUM=1` makes that a failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{recorder_config, sqlite_db, wait_for};
use mdrec::sim::{self, SimConfig};
use mdrec::store::Store;
use mdrec::venue::cdc_v1::NAME;

const SYMBOLS: [&str; 2] = ["btcusdt", "ethusdt"];

fn chromium() -> Option<PathBuf> {
    let names = [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "headless_shell",
    ];
    let found = std::env::var_os("MDREC_CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| {
            names.iter().find_map(|n| {
                let out = Command::new("sh")
                    .args(["-c", &format!("command -v {n}")])
                    .output()
                    .ok()?;
                let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
                (out.status.success() && !p.is_empty()).then(|| PathBuf::from(p))
            })
        });
    if found.is_none() {
        assert!(
            std::env::var("MDREC_REQUIRE_CHROMIUM").as_deref() != Ok("1"),
            "MDREC_REQUIRE_CHROMIUM=1 but no chromium on PATH (or MDREC_CHROMIUM)"
        );
        common::not_tested(
            "no headless Chromium to render the report",
            "apt-get install chromium, or MDREC_CHROMIUM=/path/to/it",
        );
    }
    found
}

/// Headless Chromium on a file of its own profile (tests run in parallel).
fn headless(bin: &Path, profile: &Path, args: &[&str], page: &Path) -> std::process::Output {
    let out = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--force-device-scale-factor=1", "--window-size=1100,2400"])
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn rgb(hex: &str) -> [u8; 3] {
    let v = u32::from_str_radix(hex.trim_start_matches('#'), 16).unwrap();
    [(v >> 16) as u8, (v >> 8) as u8, v as u8]
}

/// The screenshot as rows of RGB pixels.
fn pixels(png_path: &Path) -> Vec<Vec<[u8; 3]>> {
    let file = std::io::BufReader::new(std::fs::File::open(png_path).unwrap());
    let mut reader = png::Decoder::new(file).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let bpp = match info.color_type {
        png::ColorType::Rgba => 4,
        png::ColorType::Rgb => 3,
        other => panic!("screenshot colour type {other:?}"),
    };
    buf[..info.buffer_size()]
        .chunks(info.line_size)
        .map(|line| {
            line.chunks(bpp)
                .take(info.width as usize)
                .map(|p| [p[0], p[1], p[2]])
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_html_report_shows_live_filled_and_lost_time() {
    let Some(bin) = chromium() else { return };
    let (dir, db) = sqlite_db();
    // the simulated clock at the wall clock's pace, so holes (exchange time) and sessions
    // (our clock) share one timeline
    let sim = sim::start(SimConfig {
        seed: 23,
        symbols: SYMBOLS.iter().map(|s| s.to_string()).collect(),
        speed: 1,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let cfg = recorder_config(
        &sim.ws_url(),
        &sim.rest_url(),
        &db,
        &SYMBOLS,
        "[connection]\nreconnect_initial_ms = 300\n\n[backfill]\nrate_per_s = 50\n",
    );
    let run = common::Recorder::start(&cfg).await;
    let store = Store::connect(&db).await.unwrap();
    wait_for("streaming", Duration::from_secs(30), || async {
        SYMBOLS.iter().all(|s| sim.delivered(s).len() >= 20)
    })
    .await;
    sim.cut_connections();
    wait_for(
        "the cut's holes filled",
        Duration::from_secs(30),
        || async {
            let g = store.load_gaps(NAME, None).await.unwrap_or_default();
            g.iter().filter(|g| g.stream == "trades").count() >= SYMBOLS.len()
                && g.iter().all(|g| g.status.as_str() == "filled")
        },
    )
    .await;
    let after_cut = sim.delivered("btcusdt").len();
    wait_for("streaming again", Duration::from_secs(30), || async {
        sim.delivered("btcusdt").len() >= after_cut + 40
    })
    .await;
    run.stop().await;

    // the recorded window, and an unrecoverable hole from 40 % to 60 % of it
    let c = mdrec::coverage::compute(&store, NAME, &[], None, None, None)
        .await
        .unwrap();
    let (from, to) = (c.from_ms, c.to_ms);
    assert!(to - from > 500, "a window to draw: {from}..{to}");
    let (a, b) = (from + (to - from) * 2 / 5, from + (to - from) * 3 / 5);
    let Store::Sqlite(s) = &store else {
        unreachable!()
    };
    sqlx::query(
        "INSERT INTO gaps (venue, symbol, stream, start_ms, end_ms, status, detected_at_ms, detail) \
         VALUES ($1, 'btcusdt', 'trades', $2, $3, 'unrecoverable', $3, 'beyond the venue''s history')",
    )
    .bind(NAME)
    .bind(a)
    .bind(b)
    .execute(s.pool())
    .await
    .unwrap();
    store.close().await;

    let page = dir.path().join("coverage.html");
    let out = Command::new(env!("CARGO_BIN_EXE_mdrec"))
        .args(["coverage", "--db", &db, "--html"])
        .arg(&page)
        .env_remove("MDREC_DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dir.path().join("coverage.html.partial").exists());
    // a second report to the same file is refused (as export refuses), then replaced on --force
    let again = |force: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_mdrec"));
        c.args(["coverage", "--db", &db, "--html"])
            .arg(&page)
            .env_remove("MDREC_DATABASE_URL");
        if force {
            c.arg("--force");
        }
        c.output().unwrap()
    };
    let refused = again(false);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("exists: pass --force"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(again(true).status.success());

    // the page as Chromium parsed it
    let profile = tempfile::tempdir().unwrap();
    let dom = headless(&bin, profile.path(), &["--dump-dom"], &page);
    let dom = String::from_utf8_lossy(&dom.stdout).to_string();
    for s in SYMBOLS {
        assert!(
            dom.contains(&format!("data-symbol=\"{s}\"")),
            "{s} has a section"
        );
    }
    assert_eq!(
        dom.matches("<svg class=\"timeline\"").count(),
        SYMBOLS.len()
    );
    assert!(dom.contains("trades unrecoverable"), "the hole is listed");
    assert!(
        dom.contains("beyond the venue's history"),
        "with its detail, escaped and back"
    );
    assert!(dom.contains(">holes filled<"), "the cut's period verdict");
    assert!(
        dom.contains("unrecoverable ("),
        "the lost period with its length"
    );

    // the picture: colours where the holes and the live time are
    let shot = dir.path().join("coverage.png");
    headless(
        &bin,
        profile.path(),
        &[&format!("--screenshot={}", shot.display())],
        &page,
    );
    // MDREC_REPORT_DIR keeps the page and its picture to look at
    if let Some(keep) = std::env::var_os("MDREC_REPORT_DIR") {
        let keep = PathBuf::from(keep);
        let _ = std::fs::copy(&page, keep.join("coverage.html"));
        let _ = std::fs::copy(&shot, keep.join("coverage.png"));
    }
    let img = pixels(&shot);
    let (live, filled, hole) = (
        rgb(mdrec::report::LIVE),
        rgb(mdrec::report::FILLED),
        rgb(mdrec::report::HOLE),
    );
    let count = |row: &[[u8; 3]], c: [u8; 3]| row.iter().filter(|p| **p == c).count();
    // timeline rows: wider runs of the live colour than the legend's square
    let bars: Vec<&Vec<[u8; 3]>> = img.iter().filter(|r| count(r, live) > 100).collect();
    assert!(!bars.is_empty(), "live time is drawn green");
    assert!(
        bars.iter().any(|r| count(r, filled) > 0),
        "the filled hole is drawn amber on a timeline"
    );
    // the unrecoverable hole: one bar's rows, red over its middle fifth
    let red_rows: Vec<&Vec<[u8; 3]>> = img.iter().filter(|r| count(r, hole) > 100).collect();
    assert!(!red_rows.is_empty(), "the unrecoverable hole is drawn red");
    let row = red_rows[red_rows.len() / 2];
    // the bar: the run of timeline colours around the red, over the blended pixel where two
    // meet (the label's anti-aliased text is apart from it)
    let paint = [live, filled, hole, rgb(mdrec::report::DOWN)];
    let painted = |x: usize| row.get(x).is_some_and(|p| paint.contains(p));
    let first_red = row.iter().position(|p| *p == hole).unwrap();
    // (up to 5 blended pixels in a row: a recording cut into many short sessions, as on a
    // loaded machine, draws many segment edges close together)
    const GAP: usize = 6;
    let mut x0 = first_red;
    while let Some(d) = (1..=GAP).find(|&d| x0 >= d && painted(x0 - d)) {
        x0 -= d;
    }
    let mut x1 = first_red;
    while let Some(d) = (1..=GAP).find(|&d| painted(x1 + d)) {
        x1 += d;
    }
    let (x0, x1) = (x0 as f64, x1 as f64);
    let reds: Vec<f64> = (0..row.len())
        .filter(|&x| row[x] == hole)
        .map(|x| (x as f64 - x0) / (x1 - x0))
        .collect();
    let (lo, hi) = (reds[0], reds[reds.len() - 1]);
    assert!(
        (lo - 0.4).abs() < 0.02 && (hi - 0.6).abs() < 0.02,
        "red from {lo:.3} to {hi:.3} of the bar, the hole is 0.4..0.6"
    );
    eprintln!(
        "report: {} timeline rows, red {lo:.3}..{hi:.3} of the bar",
        bars.len()
    );
    sim.shutdown().await;
}
