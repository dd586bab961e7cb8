//! One builder of recorder configurations for tests, for every venue, written as TOML so the
//! parsing path is the real one. Left as they are, the streams are the ones `mdrec demo`
//! records from the venue's simulator (in the venue's own words), writes flush fast, metrics
//! listen on a free port, the simulator's clock may run ahead, and REST backfill is off
//! (tests of other mechanisms compare with what the sockets delivered).

use mdrec::config::Config;

pub struct TestConfig {
    kind: String,
    ws_url: String,
    rest_url: String,
    db_url: String,
    /// The TOML value of `symbols`.
    symbols: String,
    /// `[record]` lines besides `symbols` (None: trades, tickers and the demo's streams).
    streams: Option<String>,
    record_extra: String,
    writer: String,
    backfill: bool,
    /// `max_time_ahead_s = 86400`: the fast simulator clock accepted.
    fast_clock: bool,
    extra: String,
}

impl TestConfig {
    pub fn new(kind: &str, ws_url: &str, rest_url: &str, db_url: &str) -> TestConfig {
        TestConfig {
            kind: kind.to_string(),
            ws_url: ws_url.to_string(),
            rest_url: rest_url.to_string(),
            db_url: db_url.to_string(),
            symbols: "[]".into(),
            streams: None,
            record_extra: String::new(),
            writer: "flush_interval_ms = 50".into(),
            backfill: false,
            fast_clock: true,
            extra: String::new(),
        }
    }

    pub fn symbols<S: AsRef<str>>(mut self, symbols: &[S]) -> TestConfig {
        let q: Vec<String> = symbols
            .iter()
            .map(|s| format!("{:?}", s.as_ref()))
            .collect();
        self.symbols = format!("[{}]", q.join(", "));
        self
    }

    /// `symbols = "all"`: the venue's listing.
    pub fn all(mut self) -> TestConfig {
        self.symbols = "\"all\"".into();
        self
    }

    /// The `[record]` stream lines (trades, klines, depth, ticker) instead of the demo's.
    pub fn streams(mut self, lines: &str) -> TestConfig {
        self.streams = Some(lines.to_string());
        self
    }

    /// More `[record]` keys.
    pub fn record(mut self, lines: &str) -> TestConfig {
        self.record_extra = lines.to_string();
        self
    }

    /// The `[writer]` keys (default: `flush_interval_ms = 50`).
    pub fn writer(mut self, lines: &str) -> TestConfig {
        self.writer = lines.to_string();
        self
    }

    /// The recorder's own clock checks (`max_time_ahead_s` left at its default), for a
    /// simulator at real time.
    pub fn real_clock(mut self) -> TestConfig {
        self.fast_clock = false;
        self
    }

    pub fn backfill(mut self, on: bool) -> TestConfig {
        self.backfill = on;
        self
    }

    /// More sections at the end; a `[writer]` or `[backfill]` there replaces the builder's.
    pub fn extra(mut self, toml: &str) -> TestConfig {
        self.extra = toml.to_string();
        self
    }

    pub fn text(&self) -> String {
        let streams = self.streams.clone().unwrap_or_else(|| {
            let p = mdrec::sim::personality(&self.kind).expect("a simulated venue");
            format!("trades = true\nticker = true\n{}", p.demo_record)
        });
        let mut text = format!(
            r#"
[venue]
kind = "{}"
ws_url = "{}"
rest_url = "{}"

[database]
url = "{}"

[record]
symbols = {}
{streams}
{}
{}

[metrics]
listen = "127.0.0.1:0"
"#,
            self.kind,
            self.ws_url,
            self.rest_url,
            self.db_url,
            self.symbols,
            if self.fast_clock {
                "# the simulator's clock runs ahead of the wall clock\nmax_time_ahead_s = 86400"
            } else {
                ""
            },
            self.record_extra,
        );
        if !self.extra.contains("[writer]") {
            text.push_str(&format!("\n[writer]\n{}\n", self.writer));
            if self.db_url.starts_with("postgres") && !self.writer.contains("spool_dir") {
                text.push_str(&format!(
                    "spool_dir = {:?}\n",
                    super::pg_spool_dir(&self.db_url)
                ));
            }
        }
        text.push_str(&format!("\n{}\n", self.extra));
        if !self.extra.contains("[backfill]") {
            text.push_str(&format!("\n[backfill]\nenabled = {}\n", self.backfill));
        }
        text
    }

    pub fn build(&self) -> Config {
        let text = self.text();
        let c = mdrec::venue::registry::parse_config(&text).expect("test config parses");
        mdrec::venue::registry::check_config(&c).expect("test config valid");
        c
    }
}
