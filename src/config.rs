//! Configuration: TOML file, validated once at start-up.
//!
//! Unknown keys are errors (a typo must not silently disable recording), and every error names
//! the key it is about, so `main` can print it and exit with code 2.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::model::InstrumentType;

/// Environment variable that overrides `database.url` (keeps passwords out of the config file).
pub const DATABASE_URL_ENV: &str = "MDREC_DATABASE_URL";

/// A configuration that cannot be used: `key` is the dotted key it is about (`record.depth`),
/// empty when it is about the file as a whole (unreadable, not TOML).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

/// The file a `sqlite:` database URL names (None: another database, or one in memory).
pub fn sqlite_file(url: &str) -> Option<&str> {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let file = path.split('?').next().unwrap_or(path);
    (!file.is_empty() && file != ":memory:").then_some(file)
}

/// A database as a spool names it: the SQLite file's absolute path, or PostgreSQL's user,
/// host, port and database (never a password). Two URLs naming the same database agree.
pub fn database_identity(url: &str) -> String {
    if url.starts_with("sqlite:") {
        return match sqlite_file(url) {
            Some(file) => {
                let abs = std::path::absolute(file).unwrap_or_else(|_| file.into());
                format!("sqlite://{}", abs.display())
            }
            None => "sqlite::memory:".to_string(),
        };
    }
    match url::Url::parse(url) {
        Ok(u) => {
            let db = u.path().trim_start_matches('/');
            let host = u.host_str().unwrap_or("localhost");
            let port = u.port().unwrap_or(5432);
            format!("postgres://{}@{host}:{port}/{db}", u.username())
        }
        Err(_) => redact_url(url),
    }
}

/// The dotted key an error is about: serde's path, except at the top level (`.`), where the
/// field is named only in the message (a missing or unknown section).
fn error_key(path: &str, message: &str) -> String {
    if path != "." {
        return path.to_string();
    }
    ["unknown field `", "missing field `"]
        .iter()
        .find_map(|p| message.strip_prefix(p))
        .and_then(|m| m.split('`').next())
        .unwrap_or_default()
        .to_string()
}

/// The 1-based line of the file where `key` (dotted: `record.depth`, or a section `foo`) is
/// set, found in the text: the key's line inside its section, or the section's header.
fn key_line(text: &str, key: &str) -> Option<usize> {
    let (section, name) = match key.rsplit_once('.') {
        Some((s, n)) => (s, n),
        None => ("", key),
    };
    if name.is_empty() {
        return None;
    }
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(h) = t.strip_prefix('[') {
            current = h
                .trim_start_matches('[')
                .split(']')
                .next()?
                .trim()
                .to_string();
            if section.is_empty() && current == name {
                return Some(i + 1);
            }
            continue;
        }
        let k = t.split('=').next().unwrap_or("").trim().trim_matches('"');
        if current == section && t.contains('=') && k == name {
            return Some(i + 1);
        }
    }
    None
}

/// Up to three of `listed` nearest to `s` (edit distance, case ignored), nearest first: the
/// names a refusal suggests ("did you mean ethusdt?").
pub fn closest_names(s: &str, listed: &std::collections::HashSet<&str>) -> Vec<String> {
    let want = s.to_lowercase();
    let mut near: Vec<(usize, &str)> = listed
        .iter()
        // the name itself is no suggestion ("did you mean XRP_USD?" for XRP_USD)
        .filter(|l| **l != s)
        .map(|l| (strsim::levenshtein(&want, &l.to_lowercase()), *l))
        .filter(|(d, _)| *d <= (want.chars().count() / 3).max(2))
        .collect();
    near.sort();
    // the same name in other letter case is the one meant
    if near.first().is_some_and(|(d, _)| *d == 0) {
        near.retain(|(d, _)| *d == 0);
    }
    near.into_iter()
        .take(3)
        .map(|(_, l)| l.to_string())
        .collect()
}

/// A command line that cannot be carried out as given, naming the flag (exit 2, like a bad
/// configuration).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag}: {message}")]
pub struct UsageError {
    pub flag: &'static str,
    pub message: String,
}

impl UsageError {
    pub fn new(flag: &'static str, message: impl Into<String>) -> UsageError {
        UsageError {
            flag,
            message: message.into(),
        }
    }
}

impl ConfigError {
    /// The error placed in the file it is about: `(PATH, line N)` where the key is set there
    /// (a key the file leaves out is only named).
    pub fn located(mut self, path: &Path, text: &str) -> ConfigError {
        let at = match key_line(text, &self.key) {
            Some(n) => format!("{}, line {n}", path.display()),
            None => path.display().to_string(),
        };
        self.message = format!("{} ({at})", self.message);
        self
    }

    fn render(&self) -> String {
        if self.key.is_empty() {
            format!("config: {}", self.message)
        } else {
            format!("config key `{}`: {}", self.key, self.message)
        }
    }

    pub fn new(key: &str, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.to_string(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub venue: VenueConfig,
    #[serde(default)]
    pub database: DatabaseConfig,
    pub record: RecordConfig,
    #[serde(default)]
    pub connection: ConnectionConfig,
    #[serde(default)]
    pub writer: WriterConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    #[serde(default)]
    pub backfill: BackfillConfig,
    #[serde(default)]
    pub archive: ArchiveConfig,
    #[serde(default)]
    pub storage: StorageConfig,
}

/// The disk the database and the spool are on.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Below this many free bytes, archived rows are deleted from the database early, oldest
    /// first (rows not archived yet never are).
    #[serde(default = "default_min_free")]
    pub min_free_bytes: u64,
}

fn default_min_free() -> u64 {
    5 << 30
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            min_free_bytes: default_min_free(),
        }
    }
}

/// Closed periods of the market data as zstd Parquet in a directory or object storage, and
/// how long the database keeps what is archived.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    /// "" = no archive; `file:///var/lib/mdrec/archive` or `s3://bucket/prefix` (credentials
    /// and endpoint from the `AWS_*` environment variables).
    #[serde(default, serialize_with = "masked_url")]
    pub url: String,
    /// Exchange time one part covers: a divisor of a day, at least 60.
    #[serde(default = "default_archive_period")]
    pub period_s: u64,
    /// A period is archived this long after it ends.
    #[serde(default = "default_archive_settle")]
    pub settle_s: u64,
    /// Archived rows stay in the database this long after their period ends; 0 deletes them
    /// once archived.
    #[serde(default = "default_db_keep")]
    pub db_keep_s: u64,
}

fn default_db_keep() -> u64 {
    7 * 86_400
}

fn default_archive_period() -> u64 {
    86_400
}
fn default_archive_settle() -> u64 {
    3_600
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            url: String::new(),
            period_s: default_archive_period(),
            settle_s: default_archive_settle(),
            db_keep_s: default_db_keep(),
        }
    }
}

impl ArchiveConfig {
    fn check(&self) -> Result<(), ConfigError> {
        if self.period_s < 60 || 86_400 % self.period_s != 0 {
            return Err(ConfigError::new(
                "archive.period_s",
                format!(
                    "{} is not a divisor of a day (86400) of at least 60",
                    self.period_s
                ),
            ));
        }
        if !self.url.is_empty() {
            let scheme = self.url.split_once("://").map(|(s, _)| s);
            if !matches!(scheme, Some("file" | "s3")) {
                return Err(ConfigError::new(
                    "archive.url",
                    "must be \"\", file:///a/directory or s3://bucket/prefix",
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackfillConfig {
    /// Fetch the venue's recent trades over REST at every (re)connect, to fill what the
    /// socket missed.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// REST requests per second, all symbols together (venues throttle by IP).
    #[serde(default = "default_rest_rate")]
    pub rate_per_s: u32,
    /// Give up a REST request after this long.
    #[serde(default = "default_rest_timeout")]
    pub timeout_s: u64,
    /// Attempts per request (429 and transport errors are retried, honouring Retry-After).
    #[serde(default = "default_rest_attempts")]
    pub attempts: u32,
    /// Every this many seconds, look for bars missing or not final in the stored kline grid
    /// (behind the forming bar) and fetch them; 0 turns the audit off.
    #[serde(default = "default_audit_interval")]
    pub audit_interval_s: u64,
}

fn default_audit_interval() -> u64 {
    300
}

fn default_rest_rate() -> u32 {
    5
}
fn default_rest_timeout() -> u64 {
    10
}
fn default_rest_attempts() -> u32 {
    5
}

impl Default for BackfillConfig {
    fn default() -> Self {
        BackfillConfig {
            enabled: true,
            rate_per_s: default_rest_rate(),
            timeout_s: default_rest_timeout(),
            attempts: default_rest_attempts(),
            audit_interval_s: default_audit_interval(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// From SIGTERM to exit at most this long: close handshakes and last writes shrink to fit;
    /// whatever the database has not taken by then is in the spool. Keep it below systemd's
    /// TimeoutStopSec.
    #[serde(default = "default_shutdown_timeout")]
    pub timeout_s: u64,
}

fn default_shutdown_timeout() -> u64 {
    20
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            timeout_s: default_shutdown_timeout(),
        }
    }
}

/// A venue's own `[venue]` keys, read and checked by its constructor.
pub type VenueOptions = std::collections::BTreeMap<String, toml::Value>;

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct VenueConfig {
    /// One of the registered venues; left out, the venue registry fills in its default.
    #[serde(default)]
    pub kind: String,
    /// Default: the venue's.
    #[serde(default)]
    pub ws_url: String,
    /// Default: the venue's.
    #[serde(default)]
    pub rest_url: String,
    /// Every other key: the venue's own (unknown ones are refused by the venue).
    #[serde(flatten)]
    pub options: VenueOptions,
}

#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Printed with any password masked.
    #[serde(default = "default_db_url", serialize_with = "masked_url")]
    pub url: String,
}

fn default_db_url() -> String {
    "sqlite://mdrec.db".into()
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: default_db_url(),
        }
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &redact_url(&self.url))
            .finish()
    }
}

fn masked_url<S: Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redact_url(url))
}

impl Serialize for DepthSetting {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            DepthSetting::Off => s.serialize_bool(false),
            DepthSetting::On => s.serialize_bool(true),
            DepthSetting::Word(w) => s.serialize_str(w),
            DepthSetting::Number(n) => s.serialize_i64(*n),
        }
    }
}

/// The URL with any password replaced, for logs and `Debug`.
/// Both places a PostgreSQL URL can carry one are masked: `user:PASS@host` and
/// `?password=PASS` (also `sslpassword`).
pub fn redact_url(raw: &str) -> String {
    let parsed = url::Url::parse(raw)
        .ok()
        .filter(|u| !(u.cannot_be_a_base() && raw.contains('@')));
    let Some(mut u) = parsed else {
        // not a URL (a bare path, say): shown as typed unless it could hold a password
        let lower = raw.to_ascii_lowercase();
        if raw.contains('@') || lower.contains("password") {
            return "<unparsable url>".to_string();
        }
        return raw.to_string();
    };
    let secret =
        |k: &str| k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case("sslpassword");
    let in_query = u.query_pairs().any(|(k, _)| secret(&k));
    if u.password().is_none() && !in_query {
        return raw.to_string();
    }
    if u.password().is_some() {
        let _ = u.set_password(Some("****"));
    }
    if in_query {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if secret(&k) {
                    "****".to_string()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.to_string()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RecordConfig {
    /// As the venue spells them (the venue checks them). `symbols = "all"` in the file leaves
    /// this empty and sets `all`: the recorder fills it from the venue's listing.
    pub symbols: Vec<String>,
    /// `symbols = "all"`: every instrument the venue lists (and lists later), by
    /// `instrument_types`.
    #[serde(skip)]
    pub all: bool,
    /// With `symbols = "all"`: the instrument types to record (`spot`, `perpetual`,
    /// `future`, `other`); left out: all of them.
    #[serde(default)]
    pub instrument_types: Option<Vec<String>>,
    /// With `symbols = "all"`: seconds between listings (new instruments are picked up,
    /// delisted ones closed).
    #[serde(default = "default_relist")]
    pub relist_interval_s: u64,
    /// A listed symbol the venue's listing does not name is an error at start-up (and at a
    /// reload) unless this is set: then it is recorded with a warning (its channels may stay
    /// silent).
    #[serde(default)]
    pub allow_unlisted: bool,
    #[serde(default = "yes")]
    pub trades: bool,
    /// The venue's interval names; left out: the venue's default ([`RecordConfig::klines`]).
    #[serde(default)]
    pub klines: Option<Vec<String>>,
    /// The venue's book variant; left out: the venue's default ([`RecordConfig::depth`]).
    #[serde(default)]
    pub depth: Option<DepthSetting>,
    /// Book levels per side asked for in the depth subscription.
    #[serde(default = "default_depth_levels")]
    pub depth_levels: u32,
    /// Do not store a full book identical to the previous one on the same connection (venues
    /// resend unchanged books every few seconds).
    #[serde(default = "yes")]
    pub depth_dedupe: bool,
    #[serde(default)]
    pub ticker: bool,
    /// An exchange time further ahead of the receive time than this makes the message
    /// invalid (it is counted, not stored).
    #[serde(default = "default_time_ahead")]
    pub max_time_ahead_s: u64,
    /// A live row whose exchange time is further than this from the receive time is counted
    /// as venue clock skew (`mdrec_clock_skew_total`) and kept.
    #[serde(default = "default_clock_skew")]
    pub clock_skew_s: u64,
}

fn default_relist() -> u64 {
    600
}

fn default_time_ahead() -> u64 {
    300
}

fn default_clock_skew() -> u64 {
    60
}

impl RecordConfig {
    /// The configured intervals (the venue's default once parsed).
    pub fn klines(&self) -> &[String] {
        self.klines.as_deref().unwrap_or(&[])
    }

    /// The configured book variant (the venue's default once parsed).
    pub fn depth(&self) -> &DepthSetting {
        self.depth.as_ref().unwrap_or(&DepthSetting::Off)
    }

    /// Whether `symbols = "all"` records an instrument of this type.
    pub fn records_type(&self, kind: InstrumentType) -> bool {
        self.instrument_types
            .as_ref()
            .is_none_or(|t| t.iter().any(|n| n == kind.name()))
    }
}

fn yes() -> bool {
    true
}
fn default_depth_levels() -> u32 {
    150
}

/// `depth`: `false` (no book), `true` (the venue's default book), or one of the venue's
/// words or numbers for its book variants; the venue reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DepthSetting {
    Off,
    On,
    Word(String),
    Number(i64),
}

impl<'de> Deserialize<'de> for DepthSetting {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Flag(bool),
            Number(i64),
            Name(String),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::Flag(false) => DepthSetting::Off,
            Raw::Flag(true) => DepthSetting::On,
            Raw::Number(n) => DepthSetting::Number(n),
            Raw::Name(n) => DepthSetting::Word(n),
        })
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfig {
    /// A socket silent this long (data and pings both count) is reopened.
    #[serde(default = "default_silence")]
    pub silence_timeout_s: u64,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_s: u64,
    /// A subscribed channel silent this long while another channel of the same connection
    /// delivers is subscribed again.
    #[serde(default = "default_channel_silence")]
    pub channel_silence_s: u64,
    /// First reconnect delay; doubles up to `reconnect_max_s`, with jitter.
    #[serde(default = "default_reconnect_initial")]
    pub reconnect_initial_ms: u64,
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_s: u64,
    /// Connection attempts per second across all symbols (staggers start-up and mass reconnects).
    #[serde(default = "default_connect_rate")]
    pub connect_rate_per_s: u32,
    /// Largest inflated frame accepted (decompression-bomb guard).
    #[serde(default = "default_max_frame")]
    pub max_frame_bytes: usize,
    /// How long shutdown waits for the venue to answer our close frame.
    #[serde(default = "default_close_grace")]
    pub close_grace_ms: u64,
    /// PEM file of CA certificates trusted besides the compiled-in roots (a private CA, a
    /// TLS-inspecting proxy), for websockets and REST alike.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<std::path::PathBuf>,
}

fn default_silence() -> u64 {
    30
}
fn default_connect_timeout() -> u64 {
    10
}
fn default_channel_silence() -> u64 {
    120
}
fn default_reconnect_initial() -> u64 {
    500
}
fn default_reconnect_max() -> u64 {
    60
}
fn default_connect_rate() -> u32 {
    20
}
fn default_max_frame() -> usize {
    8 * 1024 * 1024
}
fn default_close_grace() -> u64 {
    2000
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            silence_timeout_s: default_silence(),
            connect_timeout_s: default_connect_timeout(),
            channel_silence_s: default_channel_silence(),
            reconnect_initial_ms: default_reconnect_initial(),
            reconnect_max_s: default_reconnect_max(),
            connect_rate_per_s: default_connect_rate(),
            max_frame_bytes: default_max_frame(),
            close_grace_ms: default_close_grace(),
            ca_file: None,
        }
    }
}

impl ConnectionConfig {
    pub fn silence_timeout(&self) -> Duration {
        Duration::from_secs(self.silence_timeout_s)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WriterConfig {
    /// Flush when this many rows are buffered.
    #[serde(default = "default_batch_rows")]
    pub batch_rows: usize,
    /// Flush at most this long after the first buffered row.
    #[serde(default = "default_flush_ms")]
    pub flush_interval_ms: u64,
    /// Events buffered between workers and the writer; a full queue slows the readers.
    #[serde(default = "default_queue")]
    pub queue_capacity: usize,
    /// The same queue's bound in bytes (events as held in memory): whichever bound is reached
    /// first makes the readers wait.
    #[serde(default = "default_queue_bytes")]
    pub queue_bytes: usize,
    /// A database write taking longer than this counts as failed (the batch goes to the spool).
    #[serde(default = "default_write_timeout")]
    pub write_timeout_s: u64,
    /// Where batches wait while the database is unavailable. Default: `$STATE_DIRECTORY/spool`
    /// under systemd, else `<sqlite file>-spool`, else `./mdrec-spool`.
    #[serde(default)]
    pub spool_dir: Option<std::path::PathBuf>,
    /// Past this many spooled bytes the writer stops taking events (backpressure) until the
    /// database is back.
    #[serde(default = "default_spool_max")]
    pub spool_max_bytes: u64,
}

fn default_write_timeout() -> u64 {
    10
}
fn default_spool_max() -> u64 {
    2 << 30
}

fn default_batch_rows() -> usize {
    2000
}
fn default_flush_ms() -> u64 {
    250
}
fn default_queue() -> usize {
    50_000
}
fn default_queue_bytes() -> usize {
    64 << 20
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            batch_rows: default_batch_rows(),
            flush_interval_ms: default_flush_ms(),
            queue_capacity: default_queue(),
            queue_bytes: default_queue_bytes(),
            write_timeout_s: default_write_timeout(),
            spool_dir: None,
            spool_max_bytes: default_spool_max(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of `/metrics` and `/healthz`; empty turns the server off.
    #[serde(default = "default_metrics_listen")]
    pub listen: String,
}

fn default_metrics_listen() -> String {
    "127.0.0.1:9187".into()
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: default_metrics_listen(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Config {
    /// The spool directory, defaults applied.
    pub fn spool_dir(&self) -> std::path::PathBuf {
        if let Some(d) = &self.writer.spool_dir {
            return d.clone();
        }
        if let Some(state) = std::env::var_os("STATE_DIRECTORY").filter(|s| !s.is_empty()) {
            // systemd may list several directories separated by ':'; the first is ours
            let first = state
                .to_string_lossy()
                .split(':')
                .next()
                .unwrap_or_default()
                .to_string();
            return std::path::Path::new(&first).join("spool");
        }
        match sqlite_file(&self.database.url) {
            Some(file) => std::path::PathBuf::from(format!("{file}-spool")),
            None => std::path::PathBuf::from("mdrec-spool"),
        }
    }

    /// Reads and parses a config file; applies `MDREC_DATABASE_URL`. The venue's defaults
    /// and checks are the venue registry's (`venue::registry::load_config`).
    pub fn read(path: &Path) -> Result<Config, ConfigError> {
        Config::read_text(path).map(|(c, _)| c)
    }

    /// [`Config::read`], and the file's text (to place later errors in it).
    pub fn read_text(path: &Path) -> Result<(Config, String), ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new("", format!("cannot read {}: {e}", path.display())))?;
        let mut cfg = Config::from_toml(&text).map_err(|e| e.located(path, &text))?;
        if let Ok(url) = std::env::var(DATABASE_URL_ENV)
            && !url.is_empty()
        {
            cfg.database.url = url;
        }
        Ok((cfg, text))
    }

    /// Parses TOML text (no validation, no environment, no venue defaults).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| {
            ConfigError::new("", format!("not valid TOML: {}", e.to_string().trim_end()))
        })?;
        // `symbols = "all"`: the one word the list may be
        let mut all = false;
        if let Some(toml::Value::Table(record)) = table.get_mut("record")
            && let Some(toml::Value::String(word)) = record.get("symbols")
        {
            if word != "all" {
                return Err(ConfigError::new(
                    "record.symbols",
                    format!("expected a list of symbols or \"all\", got {word:?}"),
                ));
            }
            all = true;
            record.insert("symbols".into(), toml::Value::Array(Vec::new()));
        }
        let mut cfg: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let message = e.inner().message().to_string();
                ConfigError::new(&error_key(&e.path().to_string(), &message), message)
            })?;
        cfg.record.all = all;
        Ok(cfg)
    }

    /// The keys checked before the venue reads `[record]`: URLs, the database, the symbol
    /// list and instrument types.
    pub fn check_sources(&self) -> Result<(), ConfigError> {
        check_url("venue.ws_url", &self.venue.ws_url, &["ws", "wss"])?;
        check_url("venue.rest_url", &self.venue.rest_url, &["http", "https"])?;
        let db = &self.database.url;
        if !(db.starts_with("sqlite:")
            || db.starts_with("postgres:")
            || db.starts_with("postgresql:"))
        {
            let hint = if db.starts_with('/') || db.starts_with('.') || db.ends_with(".db") {
                format!("; a SQLite file is sqlite://PATH, e.g. \"sqlite://{db}\"")
            } else {
                String::new()
            };
            return Err(ConfigError::new(
                "database.url",
                format!(
                    "must start with sqlite: or postgres:, got {:?}{hint}",
                    redact_url(db)
                ),
            ));
        }
        self.record.check_symbols()
    }

    /// Every other key: what the configuration asks to record, and the limits of each
    /// section.
    pub fn check_limits(&self) -> Result<(), ConfigError> {
        self.record.check_limits()?;
        self.connection.check()?;
        self.backfill.check()?;
        if self.shutdown.timeout_s == 0 {
            return Err(ConfigError::new("shutdown.timeout_s", "must be at least 1"));
        }
        self.writer.check()?;
        self.archive.check()?;
        if !self.metrics.listen.is_empty()
            && self.metrics.listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(ConfigError::new(
                "metrics.listen",
                format!(
                    "{:?} is not an address like 127.0.0.1:9187",
                    self.metrics.listen
                ),
            ));
        }
        Ok(())
    }
}

/// `Err` naming `key` when `value` is 0.
fn at_least_one(key: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::new(key, "must be at least 1"));
    }
    Ok(())
}

impl RecordConfig {
    fn check_symbols(&self) -> Result<(), ConfigError> {
        if self.symbols.is_empty() && !self.all {
            return Err(ConfigError::new(
                "record.symbols",
                "must name at least one symbol (or be \"all\")",
            ));
        }
        if let Some(types) = &self.instrument_types {
            if !self.all {
                return Err(ConfigError::new(
                    "record.instrument_types",
                    "only with symbols = \"all\"",
                ));
            }
            let names = InstrumentType::ALL.map(|t| t.name());
            for t in types {
                if !names.contains(&t.as_str()) {
                    return Err(ConfigError::new(
                        "record.instrument_types",
                        format!("unknown type {t:?}; one of {}", names.join(" ")),
                    ));
                }
            }
        }
        if self.relist_interval_s < 1 {
            return Err(ConfigError::new(
                "record.relist_interval_s",
                "must be at least 1 (seconds)",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for s in &self.symbols {
            if !seen.insert(s) {
                return Err(ConfigError::new(
                    "record.symbols",
                    format!("{s:?} is listed twice"),
                ));
            }
        }
        Ok(())
    }

    fn check_limits(&self) -> Result<(), ConfigError> {
        if !self.trades
            && self.klines().is_empty()
            && *self.depth() == DepthSetting::Off
            && !self.ticker
        {
            return Err(ConfigError::new(
                "record",
                "records nothing: enable trades, klines, depth or ticker",
            ));
        }
        if self.clock_skew_s == 0 {
            return Err(ConfigError::new(
                "record.clock_skew_s",
                "must be at least 1 (seconds)",
            ));
        }
        if self.max_time_ahead_s > 86_400 * 365 {
            return Err(ConfigError::new(
                "record.max_time_ahead_s",
                "must be at most a year (31536000 seconds)",
            ));
        }
        at_least_one("record.depth_levels", self.depth_levels.into())
    }
}

impl ConnectionConfig {
    fn check(&self) -> Result<(), ConfigError> {
        at_least_one("connection.silence_timeout_s", self.silence_timeout_s)?;
        at_least_one("connection.connect_timeout_s", self.connect_timeout_s)?;
        at_least_one("connection.channel_silence_s", self.channel_silence_s)?;
        at_least_one("connection.reconnect_initial_ms", self.reconnect_initial_ms)?;
        if self.reconnect_max_s == 0 || self.reconnect_max_s * 1000 < self.reconnect_initial_ms {
            return Err(ConfigError::new(
                "connection.reconnect_max_s",
                "must be at least 1 and not below reconnect_initial_ms",
            ));
        }
        at_least_one(
            "connection.connect_rate_per_s",
            self.connect_rate_per_s.into(),
        )?;
        if self.max_frame_bytes < 1024 {
            return Err(ConfigError::new(
                "connection.max_frame_bytes",
                "must be at least 1024",
            ));
        }
        Ok(())
    }
}

impl BackfillConfig {
    fn check(&self) -> Result<(), ConfigError> {
        at_least_one("backfill.rate_per_s", self.rate_per_s.into())?;
        at_least_one("backfill.timeout_s", self.timeout_s)?;
        at_least_one("backfill.attempts", self.attempts.into())
    }
}

impl WriterConfig {
    fn check(&self) -> Result<(), ConfigError> {
        at_least_one("writer.batch_rows", self.batch_rows as u64)?;
        at_least_one("writer.flush_interval_ms", self.flush_interval_ms)?;
        at_least_one("writer.write_timeout_s", self.write_timeout_s)?;
        if self
            .spool_dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            return Err(ConfigError::new("writer.spool_dir", "must not be empty"));
        }
        at_least_one("writer.queue_capacity", self.queue_capacity as u64)?;
        if self.queue_bytes < 1 << 20 {
            return Err(ConfigError::new(
                "writer.queue_bytes",
                format!("must be at least 1048576 (1 MiB), got {}", self.queue_bytes),
            ));
        }
        Ok(())
    }
}

fn check_url(key: &str, raw: &str, schemes: &[&str]) -> Result<(), ConfigError> {
    let u = url::Url::parse(raw).map_err(|e| ConfigError::new(key, format!("{raw:?}: {e}")))?;
    if !schemes.contains(&u.scheme()) {
        return Err(ConfigError::new(
            key,
            format!(
                "scheme must be one of {}, got {:?}",
                schemes.join("/"),
                u.scheme()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_names_are_near_by_spelling_and_the_same_name_in_other_case_wins() {
        let listed: std::collections::HashSet<&str> = ["ethusdt", "btcusdt", "ethbtc", "ETH_USD"]
            .into_iter()
            .collect();
        assert_eq!(closest_names("ethusd", &listed), ["ETH_USD", "ethusdt"]);
        assert_eq!(closest_names("BTCUSDT", &listed), ["btcusdt"]);
        assert_eq!(closest_names("eth_usd", &listed), ["ETH_USD"]);
        assert!(closest_names("dogecoin", &listed).is_empty());
    }
}

#[cfg(test)]
mod redact_tests {
    use super::redact_url;

    #[test]
    fn a_database_is_named_without_its_password_the_same_by_any_url() {
        use super::database_identity as id;
        assert_eq!(
            id("postgres://rec:hunter2@db.local/md"),
            "postgres://rec@db.local:5432/md"
        );
        assert_eq!(
            id("postgresql://rec@db.local:5432/md?sslmode=require"),
            id("postgres://rec:x@db.local/md")
        );
        assert_ne!(
            id("postgres://rec@db.local/md"),
            id("postgres://rec@db.local/other")
        );
        let here = std::env::current_dir().unwrap();
        assert_eq!(
            id("sqlite://rec.db"),
            format!("sqlite://{}", here.join("rec.db").display())
        );
        assert_eq!(id("sqlite://rec.db?mode=rwc"), id("sqlite:rec.db"));
    }

    #[test]
    fn a_name_is_never_its_own_suggestion() {
        let listed: std::collections::HashSet<&str> =
            ["XRP_USD", "XRP_USDT", "BTC_USD"].into_iter().collect();
        assert_eq!(super::closest_names("XRP_USD", &listed), ["XRP_USDT"]);
        assert_eq!(super::closest_names("xrp_usd", &listed), ["XRP_USD"]);
    }

    #[test]
    fn a_bare_path_as_the_database_is_shown_as_typed_with_the_url_to_use() {
        let mut c = super::Config::from_toml(
            "[venue]\nws_url = \"wss://x\"\nrest_url = \"https://x\"\n[database]\nurl = \"/var/lib/mdrec/rec.db\"\n[record]\nsymbols = [\"A\"]\n",
        )
        .unwrap();
        let e = c.check_sources().unwrap_err();
        assert_eq!(e.key, "database.url");
        assert!(
            e.message.contains("got \"/var/lib/mdrec/rec.db\"")
                && e.message.contains("sqlite:///var/lib/mdrec/rec.db"),
            "{}",
            e.message
        );
        // text that could hold a password stays hidden
        c.database.url = "rec:secret@db/x".into();
        let e = c.check_sources().unwrap_err();
        assert!(!e.message.contains("secret"), "{}", e.message);
    }

    #[test]
    fn passwords_are_masked_in_userinfo_and_query() {
        let u = redact_url("postgres://rec:hunter2@db.local:5432/md");
        assert!(!u.contains("hunter2") && u.contains("rec:****@"), "{u}");
        let u = redact_url("postgres://rec@db.local/md?sslmode=require&password=hunter2");
        assert!(!u.contains("hunter2"), "{u}");
        assert!(
            u.contains("sslmode=require") && u.contains("password=****"),
            "{u}"
        );
        let u = redact_url("postgres://db.local/md?PassWord=hunter2&sslpassword=s3cret");
        assert!(!u.contains("hunter2") && !u.contains("s3cret"), "{u}");
        assert_eq!(redact_url("sqlite://mdrec.db"), "sqlite://mdrec.db");
    }
}
