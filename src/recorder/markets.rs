//! The venue's market listing: stored in `markets`; a configured symbol the venue does not
//! list stops start-up, with the closest listed names (`allow_unlisted`: a warning, recorded
//! anyway); a listing that fails is logged and recording goes on. Under
//! `symbols = "all"` the listing is what is recorded: read before start-up, then again every
//! `relist_interval_s`, new instruments handed to the fleet and delisted ones retired.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::rest::RestClient;
use crate::config::{Config, ConfigError};
use crate::model::{Event, now_ms};
use crate::venue::{FetchError, Venue};

/// How long start-up, `check-config` and a reload wait for the venue's market listing.
pub const LISTING_WAIT: Duration = Duration::from_secs(5);

/// The venue's listing (None: it did not answer in `within`, or its listing was unreadable;
/// logged).
pub async fn listing(
    venue: &Arc<dyn Venue>,
    rest: &RestClient,
    within: Duration,
) -> Option<Vec<crate::model::Market>> {
    let path = venue.markets_path();
    let body = match tokio::time::timeout(within, rest.get(path)).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            tracing::warn!(path, error = %e, "could not list the venue's markets; symbols not checked");
            return None;
        }
        Err(_) => {
            tracing::warn!(
                path,
                timeout_s = within.as_secs(),
                "the venue's market listing did not answer; symbols not checked"
            );
            return None;
        }
    };
    match venue.parse_markets(&body, now_ms()) {
        Ok(m) => Some(m),
        Err(e) => {
            rest.stats.outcome(path, "bad_body");
            tracing::warn!(path, error = %e, "unreadable market listing; symbols not checked");
            None
        }
    }
}

/// Symbols the listing does not name: an error naming the closest listed names, or with
/// `allow_unlisted` a warning each (recorded anyway).
pub fn check_listed(
    symbols: &[String],
    markets: &[crate::model::Market],
    allow_unlisted: bool,
) -> Result<(), ConfigError> {
    let listed: HashSet<&str> = markets.iter().map(|m| &*m.symbol).collect();
    let unlisted: Vec<&String> = symbols
        .iter()
        .filter(|s| !listed.contains(s.as_str()))
        .collect();
    if unlisted.is_empty() {
        return Ok(());
    }
    if allow_unlisted {
        for s in &unlisted {
            tracing::warn!(symbol = %s, "the venue does not list this symbol (allow_unlisted): recording it anyway; its channels may stay silent");
        }
        return Ok(());
    }
    let each: Vec<String> = unlisted
        .iter()
        .map(|s| {
            let near = crate::config::closest_names(s, &listed);
            if near.is_empty() {
                format!("{s:?}")
            } else {
                format!("{s:?} (did you mean {}?)", near.join(" or "))
            }
        })
        .collect();
    Err(ConfigError::new(
        "record.symbols",
        format!(
            "the venue does not list {}; fix the name, or set [record] allow_unlisted = true to record it anyway",
            each.join(", ")
        ),
    ))
}

/// Queues one `markets` row per listed market.
pub async fn store(markets: Vec<crate::model::Market>, tx: &crate::store::queue::EventTx) {
    tracing::info!(listed = markets.len(), "venue markets listed");
    for m in markets {
        if tx.send(Event::Market(m)).await.is_err() {
            break;
        }
    }
}

/// The instruments `symbols = "all"` records, by the listing: tradable, of the configured
/// types, sorted.
fn wanted(
    venue: &Arc<dyn Venue>,
    config: &Config,
    body: &str,
) -> Result<(Vec<crate::model::Market>, BTreeSet<String>), FetchError> {
    let listing = venue.parse_listing(body, now_ms())?;
    let wanted = listing
        .iter()
        .filter(|l| l.tradable && config.record.records_type(l.kind))
        .map(|l| l.market.symbol.to_string())
        .collect();
    Ok((listing.into_iter().map(|l| l.market).collect(), wanted))
}

/// Lists the venue's instruments for `symbols = "all"`, asking again with a back-off while
/// the venue does not answer; a refusal that will not pass, or a listing without any
/// instrument of the configured types, stops start-up.
pub async fn list_all(
    venue: &Arc<dyn Venue>,
    config: &Config,
    rest: &RestClient,
    shutdown: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<Vec<String>> {
    let path = venue.markets_path();
    let mut delay = Duration::from_secs(1);
    loop {
        let err = match rest.get(path).await {
            Ok(body) => match wanted(venue, config, &body) {
                Ok((_, w)) if w.is_empty() => anyhow::bail!(
                    "record.symbols = \"all\": the venue lists no tradable instrument{}",
                    config
                        .record
                        .instrument_types
                        .as_ref()
                        .map(|t| format!(" of the types {}", t.join(", ")))
                        .unwrap_or_default()
                ),
                Ok((_, w)) => {
                    tracing::info!(
                        instruments = w.len(),
                        "recording every instrument the venue lists"
                    );
                    return Ok(w.into_iter().collect());
                }
                Err(e) => e,
            },
            Err(e) => e,
        };
        if !err.retryable() {
            anyhow::bail!(
                "record.symbols = \"all\": listing the venue's instruments at {}{path} failed: {err}",
                crate::config::redact_url(&config.venue.rest_url)
            );
        }
        tracing::warn!(path, error = %err, retry_in_s = delay.as_secs(), "could not list the venue's instruments; asking again");
        tokio::select! {
            _ = shutdown.cancelled() => anyhow::bail!("shutdown before the venue listed its instruments"),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(60));
    }
}

/// `symbols = "all"`: the listing again every `relist_interval_s` (the first at once):
/// stored, new instruments handed to the fleet, instruments missing from two listings in
/// a row (or no longer tradable) retired. A failed or empty listing changes nothing.
pub async fn relist(
    venue: &Arc<dyn Venue>,
    config: &Config,
    rest: &RestClient,
    tx: &crate::store::queue::EventTx,
    fleet: &mpsc::UnboundedSender<super::fleet::Request>,
) {
    let path = venue.markets_path();
    let every = Duration::from_secs(config.record.relist_interval_s.max(1));
    let mut recorded: BTreeSet<String> = config.record.symbols.iter().cloned().collect();
    let mut missing_once: HashSet<String> = HashSet::new();
    let mut first = true;
    loop {
        if !first {
            tokio::time::sleep(every).await;
        }
        first = false;
        let listed = match rest.get(path).await {
            Ok(body) => wanted(venue, config, &body),
            Err(e) => Err(e),
        };
        let (markets, wanted) = match listed {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(path, error = %e, "relisting the venue's instruments failed; keeping what is recorded");
                continue;
            }
        };
        for m in markets {
            if tx.send(Event::Market(m)).await.is_err() {
                return;
            }
        }
        if wanted.is_empty() {
            tracing::warn!(
                path,
                "the venue's listing names no instrument to record; keeping what is recorded"
            );
            continue;
        }
        let new: Vec<Arc<str>> = wanted
            .difference(&recorded)
            .map(|s| Arc::from(s.as_str()))
            .collect();
        if !new.is_empty() {
            tracing::info!(instruments = new.len(), first = %new[0], "the venue lists new instruments");
            recorded.extend(new.iter().map(|s| s.to_string()));
            if fleet.send(super::fleet::Request::Add(new)).is_err() {
                return;
            }
        }
        let missing: Vec<String> = recorded.difference(&wanted).cloned().collect();
        let (gone, first_time): (Vec<String>, Vec<String>) =
            missing.into_iter().partition(|s| missing_once.contains(s));
        missing_once = first_time.into_iter().collect();
        if !gone.is_empty() {
            tracing::warn!(instruments = gone.len(), first = %gone[0], "instruments delisted (or no longer trading): closing them");
            for s in &gone {
                recorded.remove(s);
            }
            let gone = gone.iter().map(|s| Arc::from(s.as_str())).collect();
            let why = "delisted: the venue no longer lists it as trading".to_string();
            if fleet
                .send(super::fleet::Request::Retire(gone, why))
                .is_err()
            {
                return;
            }
        }
    }
}
