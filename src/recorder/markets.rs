//! Start-up listing of the venue's markets: stored in `markets`, and configured symbols the
//! venue does not list are reported once. A failed listing is logged; recording goes on.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::rest::RestClient;
use crate::config::Config;
use crate::model::{Event, now_ms};
use crate::venue::Venue;

/// Fetches the listing and queues one `markets` row per listed market.
/// Returns the configured symbols the venue does not list (None when the listing failed).
pub async fn sync(
    venue: &Arc<dyn Venue>,
    config: &Config,
    rest: &RestClient,
    tx: &mpsc::Sender<Event>,
) -> Option<Vec<String>> {
    let path = venue.markets_path();
    let body = match rest.get(path).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(path, error = %e, "could not list the venue's markets; recording anyway");
            return None;
        }
    };
    let markets = match venue.parse_markets(&body, now_ms()) {
        Ok(m) => m,
        Err(e) => {
            rest.stats.outcome(path, "bad_body");
            tracing::warn!(path, error = %e, "unreadable market listing; recording anyway");
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
