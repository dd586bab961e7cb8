//! The REST client: one shared request budget, timeouts, 429 with Retry-After honoured,
//! non-JSON error bodies reported (never parsed as data). A failure is returned, never panics.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::config::BackfillConfig;
use crate::runtime::backoff::ReconnectPolicy;
use crate::runtime::stagger::Stagger;
use crate::venue::FetchError;

pub use crate::stats::RestStats;

pub struct RestClient {
    http: reqwest::Client,
    /// The run's TLS trust, also for the history sockets backfill opens.
    pub tls: Arc<rustls::ClientConfig>,
    base: String,
    budget: Stagger,
    attempts: u32,
    pub stats: Arc<RestStats>,
}

impl RestClient {
    pub fn new(
        base: &str,
        cfg: &BackfillConfig,
        tls: &Arc<rustls::ClientConfig>,
    ) -> Result<RestClient, String> {
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(rustls::ClientConfig::clone(tls))
            .timeout(Duration::from_secs(cfg.timeout_s))
            .user_agent(concat!("mdrec/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(RestClient {
            http,
            tls: tls.clone(),
            base: base.trim_end_matches('/').to_string(),
            budget: Stagger::new(cfg.rate_per_s),
            attempts: cfg.attempts,
            stats: Arc::default(),
        })
    }

    /// GET `path`, retrying 429s (after Retry-After, else backoff), 5xx and transport errors.
    pub async fn get(&self, path: &str) -> Result<String, FetchError> {
        let url = format!("{}{path}", self.base);
        let mut delays = ReconnectPolicy {
            initial: Duration::from_millis(500),
            cap: Duration::from_secs(30),
        }
        .delays(None);
        let mut last = FetchError::Transport("no attempt made".into());
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
                            last = FetchError::Http {
                                status: status.as_u16(),
                                snippet: body.chars().take(80).collect(),
                            };
                        }
                        Err(e) if status.is_success() => {
                            last = FetchError::Transport(format!("body unreadable: {e}"));
                        }
                        Err(e) => {
                            last = FetchError::Http {
                                status: status.as_u16(),
                                snippet: format!("body unreadable: {e}"),
                            };
                        }
                    }
                    if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                        last = FetchError::RateLimited { retry_after };
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
                    last = FetchError::Transport(e.to_string());
                    delays.next().unwrap_or(Duration::from_secs(30))
                }
            };
            if attempt < self.attempts {
                tracing::debug!(url = %url, error = %last, wait_ms = wait.as_millis() as u64, "REST request failed; retrying");
                tokio::time::sleep(wait.min(Duration::from_secs(60))).await;
            }
        }
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
        Err(last)
    }
}
