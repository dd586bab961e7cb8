//! The one list of venues, and a configuration made whole against it: the file parsed,
//! the venue's defaults filled in, checked by `config` and by the venue itself.

use std::path::Path;
use std::sync::Arc;

use super::{Venue, cdc_exchange, cdc_v1};
use crate::config::{Config, ConfigError, VenueConfig, VenueOptions};

/// Builds a venue's implementation from its own `[venue]` keys (beyond kind and the URLs),
/// refusing keys it does not know (the error names the key).
pub type MakeVenue = fn(&VenueOptions) -> Result<Arc<dyn Venue>, ConfigError>;

/// Every venue: its `venue.kind` (the `venue` column value) and its constructor. The one
/// place a new venue is registered.
/// The first is the default `venue.kind`.
pub const REGISTRY: &[(&str, MakeVenue)] = &[
    (cdc_exchange::EXCHANGE, cdc_exchange::make_exchange),
    (cdc_exchange::V2, cdc_exchange::make_v2),
    (cdc_v1::NAME, cdc_v1::make),
];

/// The venue named by `venue.kind` with its options left at their defaults.
pub fn venue_for(kind: &str) -> Option<Arc<dyn Venue>> {
    let (_, make) = REGISTRY.iter().find(|(n, _)| *n == kind)?;
    make(&VenueOptions::new()).ok()
}

/// The venue a configuration names, built with its options.
pub fn configured(venue: &VenueConfig) -> Result<Arc<dyn Venue>, ConfigError> {
    let Some((_, make)) = REGISTRY.iter().find(|(n, _)| *n == venue.kind) else {
        return Err(ConfigError::new(
            "venue.kind",
            format!("unknown venue {:?}; supported: {}", venue.kind, kinds()),
        ));
    };
    make(&venue.options)
}

/// The static name of a known venue (rows read back from storage carry `&'static str`).
pub fn static_name(name: &str) -> Option<&'static str> {
    REGISTRY.iter().map(|(n, _)| *n).find(|n| *n == name)
}

/// The registered kinds, quoted, for messages: `"cdc-v1"`.
pub fn kinds() -> String {
    REGISTRY
        .iter()
        .map(|(n, _)| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses TOML text and fills in what it leaves out from the venue's defaults (no
/// validation, no environment).
pub fn parse_config(text: &str) -> Result<Config, ConfigError> {
    let mut cfg = Config::from_toml(text)?;
    fill_defaults(&mut cfg);
    Ok(cfg)
}

/// Reads a config file (`MDREC_DATABASE_URL` applied), fills in the venue's defaults and
/// checks it.
pub fn load_config(path: &Path) -> Result<Config, ConfigError> {
    let (mut cfg, text) = Config::read_text(path)?;
    fill_defaults(&mut cfg);
    check_config(&cfg).map_err(|e| e.located(path, &text))?;
    Ok(cfg)
}

/// Checks every key: the venue's own (`[venue]` options, the words of `[record]`) and the
/// rest; returns the venue the configuration names.
pub fn check_config(cfg: &Config) -> Result<Arc<dyn Venue>, ConfigError> {
    let venue = configured(&cfg.venue)?;
    cfg.check_sources()?;
    venue.check_record(&cfg.record)?;
    cfg.check_limits()?;
    Ok(venue)
}

/// Keys left out take the venue's defaults; `kind` left out is the first registered.
fn fill_defaults(cfg: &mut Config) {
    if cfg.venue.kind.is_empty()
        && let Some((first, _)) = REGISTRY.first()
    {
        cfg.venue.kind = first.to_string();
    }
    if let Some(venue) = venue_for(&cfg.venue.kind) {
        let d = venue.defaults();
        if cfg.venue.ws_url.is_empty() {
            cfg.venue.ws_url = d.ws_url.to_string();
        }
        if cfg.venue.rest_url.is_empty() {
            cfg.venue.rest_url = d.rest_url.to_string();
        }
        cfg.record.klines.get_or_insert(d.klines);
        cfg.record.depth.get_or_insert(d.depth);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConnectionConfig, DepthSetting, WriterConfig};

    const GOOD: &str = r#"
[venue]
kind = "cdc-v1"
ws_url = "wss://ws.crypto.com/kline-api/ws"
rest_url = "https://api.crypto.com"

[database]
url = "sqlite://mdrec.db"

[record]
symbols = ["btcusdt", "ethusdt"]
trades = true
klines = ["1min", "60min"]
depth = "step0"
ticker = false

[connection]
silence_timeout_s = 30

[metrics]
listen = "127.0.0.1:9187"
"#;

    #[test]
    fn brief_example_parses() {
        let c = parse_config(GOOD).unwrap();
        check_config(&c).unwrap();
        assert_eq!(c.record.symbols, ["btcusdt", "ethusdt"]);
        assert_eq!(c.record.depth(), &DepthSetting::Word("step0".into()));
        assert_eq!(c.connection.silence_timeout_s, 30);
    }

    fn err_key(text: &str) -> String {
        match parse_config(text).and_then(|c| check_config(&c).map(|_| c)) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.key,
        }
    }

    #[test]
    fn all_symbols_is_a_word_the_list_may_be() {
        let text = GOOD.replace(
            "symbols = [\"btcusdt\", \"ethusdt\"]",
            "symbols = \"all\"\ninstrument_types = [\"spot\", \"perpetual\"]",
        );
        let c = parse_config(&text).unwrap();
        check_config(&c).unwrap();
        assert!(c.record.all && c.record.symbols.is_empty());
        assert_eq!(c.record.relist_interval_s, 600);
        use crate::model::InstrumentType::*;
        assert!(c.record.records_type(Spot) && c.record.records_type(Perpetual));
        assert!(!c.record.records_type(Future));
        let listed = parse_config(GOOD).unwrap();
        assert!(!listed.record.all && listed.record.records_type(Future));
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (GOOD.replace("symbols =", "symbls ="), "record.symbls"),
            (
                GOOD.replace("[metrics]", "[writer]\nqueue_bytes = 4096\n[metrics]"),
                "writer.queue_bytes",
            ),
            (
                GOOD.replace("depth = \"step0\"", "depth = \"step5\""),
                "record.depth",
            ),
            (
                GOOD.replace("depth = \"step0\"", "depth = 3"),
                "record.depth",
            ),
            (GOOD.replace("\"60min\"", "\"2min\""), "record.klines"),
            (
                GOOD.replace("silence_timeout_s = 30", "silence_timeout_s = 0"),
                "connection.silence_timeout_s",
            ),
            (
                GOOD.replace("silence_timeout_s = 30", "silence_timeout_s = \"x\""),
                "connection.silence_timeout_s",
            ),
            (GOOD.replace("[metrics]", "[metrix]"), "metrix"),
            (GOOD.replace("wss://ws", "https://ws"), "venue.ws_url"),
            (
                GOOD.replace("sqlite://mdrec.db", "mysql://x"),
                "database.url",
            ),
            (
                GOOD.replace("\"btcusdt\", ", "\"BTC-USDT\", "),
                "record.symbols",
            ),
            (
                GOOD.replace("127.0.0.1:9187", "localhost"),
                "metrics.listen",
            ),
            (
                GOOD.replace("kind = \"cdc-v1\"", "kind = \"binance\""),
                "venue.kind",
            ),
            (
                GOOD.replace("symbols = [\"btcusdt\", \"ethusdt\"]", "symbols = \"some\""),
                "record.symbols",
            ),
            (
                GOOD.replace("ticker = ", "instrument_types = [\"spot\"]\nticker = "),
                "record.instrument_types",
            ),
            (
                GOOD.replace(
                    "symbols = [\"btcusdt\", \"ethusdt\"]",
                    "symbols = \"all\"\ninstrument_types = [\"swap\"]",
                ),
                "record.instrument_types",
            ),
            (
                GOOD.replace(
                    "symbols = [\"btcusdt\", \"ethusdt\"]",
                    "symbols = \"all\"\nrelist_interval_s = 0",
                ),
                "record.relist_interval_s",
            ),
        ];
        for (text, key) in cases {
            assert_eq!(err_key(&text), key);
        }
    }

    #[test]
    fn shipped_example_is_valid_and_matches_defaults() {
        let c = parse_config(include_str!("../../deploy/mdrec.example.toml")).unwrap();
        check_config(&c).unwrap();
        let d = ConnectionConfig::default();
        assert_eq!(c.connection.max_frame_bytes, d.max_frame_bytes);
        assert_eq!(c.connection.reconnect_initial_ms, d.reconnect_initial_ms);
        assert_eq!(c.writer.batch_rows, WriterConfig::default().batch_rows);
        assert_eq!(
            c.writer.queue_capacity,
            WriterConfig::default().queue_capacity
        );
    }

    #[test]
    fn left_out_keys_take_the_venues_defaults_and_its_options_are_its_own() {
        let c = parse_config("[venue]\n[record]\nsymbols = [\"BTC_USD\"]\n").unwrap();
        check_config(&c).unwrap();
        assert_eq!(
            c.venue.kind, "cdc-exchange",
            "today's exchange is the default"
        );
        let d = venue_for(&c.venue.kind).unwrap().defaults();
        assert_eq!(c.venue.ws_url, d.ws_url);
        assert_eq!(c.venue.rest_url, d.rest_url);
        assert_eq!(c.record.klines(), d.klines);
        assert_eq!(c.record.depth(), &d.depth);
        // a key the venue does not know is named in the error
        let text = GOOD.replace("[venue]\n", "[venue]\nbook_updates = \"delta\"\n");
        assert_eq!(err_key(&text), "venue.book_updates");
        // depth words are the venue's: a number means nothing to v1
        let c = parse_config(&GOOD.replace("depth = \"step0\"", "depth = 10")).unwrap();
        assert_eq!(c.record.depth(), &DepthSetting::Number(10));
        assert_eq!(check_config(&c).err().unwrap().key, "record.depth");
    }

    #[test]
    fn depth_false_disables() {
        let c = parse_config(&GOOD.replace("depth = \"step0\"", "depth = false")).unwrap();
        assert_eq!(c.record.depth(), &DepthSetting::Off);
    }

    #[test]
    fn debug_hides_password() {
        let c =
            parse_config(&GOOD.replace("sqlite://mdrec.db", "postgres://rec:s3cret@db.example/md"))
                .unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cret"), "{dbg}");
        assert!(dbg.contains("****"));
    }
}
