//! Start-up listing of the venue's markets: stored in `markets`, and configured symbols the
//! venue does not list are reported once. A failed listing is logged; recording goes on.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::Config;
use crate::model::{Event, now_ms};
use crate::venue::Venue;

/// Fetches the listing and queues one `markets` row per listed market.
/// Returns the configured symbols the venue does not list (None when the listing failed).
pub async fn sync(
    venue: &Arc<dyn Venue>,
    config: &Config,
    tx: &mpsc::Sender<Event>,
) -> Option<Vec<String>> {
    let url = format!(
        "{}{}",
        config.venue.rest_url.trim_end_matches('/'),
        venue.markets_path()
    );
    let body = match fetch(
        &url,
        Duration::from_secs(config.connection.connect_timeout_s),
    )
    .await
    {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(url = %url, error = %e, "could not list the venue's markets; recording anyway");
            return None;
        }
    };
    let markets = match venue.parse_markets(&body, now_ms()) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(url = %url, error = %e, "unreadable market listing; recording anyway");
            return None;
        }
    };
    let unlisted: Vec<String> = config
        .record
        .symbols
        .iter()
        .filter(|s| !markets.iter().any(|m| &*m.symbol == s.as_str()))
        .cloned()
        .collect();
    for s in &unlisted {
        tracing::warn!(symbol = %s, "the venue does not list this symbol; its channels may stay silent");
    }
    tracing::info!(listed = markets.len(), "venue markets listed");
    for m in markets {
        if tx.send(Event::Market(m)).await.is_err() {
            break;
        }
    }
    Some(unlisted)
}

async fn fetch(url: &str, timeout: Duration) -> Result<String, String> {
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .user_agent(concat!("mdrec/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| e.to_string())?;
    let resp = client.get(url).send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp.text().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!(
            "HTTP {status}: {}",
            body.chars().take(120).collect::<String>()
        ));
    }
    Ok(body)
}
