//! The REST client: one shared request budget, timeouts, 429 with Retry-After honoured,
//! non-JSON error bodies reported (never parsed as data). A failure is returned, never panics.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::config::BackfillConfig;
use crate::runtime::backoff::ReconnectPolicy;
use crate::runtime::stagger::Stagger;

#[derive(Debug, Default)]
pub struct RestStats {
    pub requests: AtomicU64,
    pub ok: AtomicU64,
    pub throttled: AtomicU64,
    pub failed: AtomicU64,
    /// Attempts per (endpoint path, outcome): ok, throttled, http_error, transport_error,
    /// bad_body (a 200 whose body was an error envelope or malformed).
    pub by_endpoint: std::sync::Mutex<std::collections::BTreeMap<(String, &'static str), u64>>,
}

impl RestStats {
    /// Counts one attempt's outcome for `path` (its query string dropped).
    pub fn outcome(&self, path: &str, outcome: &'static str) {
        let endpoint = path.split('?').next().unwrap_or(path).to_string();
        *self
            .by_endpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((endpoint, outcome))
            .or_insert(0) += 1;
    }
}

pub struct RestClient {
    http: reqwest::Client,
    base: String,
    budget: Stagger,
    attempts: u32,
    pub stats: Arc<RestStats>,
}

impl RestClient {
    pub fn new(base: &str, cfg: &BackfillConfig) -> Result<RestClient, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(cfg.timeout_s))
            .user_agent(concat!("mdrec/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(RestClient {
            http,
            base: base.trim_end_matches('/').to_string(),
            budget: Stagger::new(cfg.rate_per_s),
            attempts: cfg.attempts,
            stats: Arc::default(),
        })
    }

    /// GET `path`, retrying 429s (after Retry-After, else backoff), 5xx and transport errors.
    pub async fn get(&self, path: &str) -> Result<String, String> {
        let url = format!("{}{path}", self.base);
        let mut delays = ReconnectPolicy {
            initial: Duration::from_millis(500),
            cap: Duration::from_secs(30),
        }
        .delays(None);
        let mut last = String::new();
        for attempt in 1..=self.attempts {
            self.budget.wait().await;
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            let wait = match self.http.get(&url).send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let retry_after = resp
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    match resp.text().await {
                        Ok(body) if status.is_success() => {
                            self.stats.ok.fetch_add(1, Ordering::Relaxed);
                            self.stats.outcome(path, "ok");
                            return Ok(body);
                        }
                        Ok(body) => {
                            let snippet: String = body.chars().take(80).collect();
                            last = format!("HTTP {status}: {snippet}");
                        }
                        Err(e) => last = format!("HTTP {status}, body unreadable: {e}"),
                    }
                    if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                        self.stats.throttled.fetch_add(1, Ordering::Relaxed);
                        self.stats.outcome(path, "throttled");
                        retry_after
                            .unwrap_or_else(|| delays.next().unwrap_or(Duration::from_secs(30)))
                    } else if status.is_success() {
                        self.stats.outcome(path, "transport_error");
                        delays.next().unwrap_or(Duration::from_secs(30))
                    } else if status.is_server_error() {
                        self.stats.outcome(path, "http_error");
                        delays.next().unwrap_or(Duration::from_secs(30))
                    } else {
                        self.stats.outcome(path, "http_error");
                        break; // 4xx other than 429: asking again will not help
                    }
                }
                Err(e) => {
                    self.stats.outcome(path, "transport_error");
                    last = e.to_string();
                    delays.next().unwrap_or(Duration::from_secs(30))
                }
            };
            if attempt < self.attempts {
                tracing::debug!(url = %url, error = %last, ?wait, "REST request failed; retrying");
                tokio::time::sleep(wait.min(Duration::from_secs(60))).await;
            }
        }
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
        Err(last)
    }
}
