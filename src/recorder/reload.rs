//! SIGHUP: the configuration file read again. Symbols added to `[record] symbols` start
//! recording on connections of their own, symbols removed leave theirs (their sessions closed
//! with the reason); every other connection goes on untouched. A file that does not validate
//! is logged, naming the key, and the running configuration kept. Other changed settings are
//! named in the log: they take effect at the next start.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;

use super::fleet;
use crate::config::Config;
use crate::stats::RunStats;

/// Where the configuration comes from, and the reload requests (one per SIGHUP).
pub struct Reload {
    pub path: PathBuf,
    pub requests: mpsc::UnboundedReceiver<()>,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied: symbols started and stopped, settings that wait for a restart.
    Applied {
        added: Vec<String>,
        removed: Vec<String>,
        need_restart: Vec<String>,
    },
    /// The file does not validate (or cannot be read): nothing changed.
    Refused(String),
}

pub(super) struct Reloader {
    pub path: PathBuf,
    pub venue: Arc<dyn crate::venue::Venue>,
    pub rest: Arc<super::rest::RestClient>,
    /// The configuration running now (its symbols as recorded, after earlier reloads).
    pub running: Config,
    pub fleet: mpsc::UnboundedSender<fleet::Request>,
    pub stats: Arc<RunStats>,
}

impl Reloader {
    pub async fn reload(&mut self) -> Outcome {
        crate::ops::systemd::reloading();
        let outcome = match crate::venue::registry::load_config(&self.path) {
            Ok(new) => match self.check_added(&new).await {
                Ok(()) => self.apply(new),
                Err(e) => Outcome::Refused(e.to_string()),
            },
            Err(e) => Outcome::Refused(e.to_string()),
        };
        match &outcome {
            Outcome::Applied {
                added,
                removed,
                need_restart,
            } => {
                self.stats.reloads[0].fetch_add(1, Ordering::Relaxed);
                if !need_restart.is_empty() {
                    tracing::warn!(keys = %need_restart.join(", "),
                        "reload: these settings changed in the file and take effect at the next start");
                }
                tracing::info!(
                    path = %self.path.display(),
                    added = added.len(),
                    removed = removed.len(),
                    symbols = self.running.record.symbols.len(),
                    "configuration reloaded"
                );
            }
            Outcome::Refused(why) => {
                self.stats.reloads[1].fetch_add(1, Ordering::Relaxed);
                tracing::error!(path = %self.path.display(), error = %why,
                    "reload refused: the file does not validate; the running configuration is kept");
            }
        }
        crate::ops::systemd::ready(self.running.record.symbols.len());
        outcome
    }

    /// Symbols the file adds must be listed by the venue, as at start-up (when it answers).
    async fn check_added(&self, new: &Config) -> Result<(), crate::config::ConfigError> {
        if new.record.all || self.running.record.all {
            return Ok(());
        }
        let added: Vec<String> = new
            .record
            .symbols
            .iter()
            .filter(|s| !self.running.record.symbols.contains(s))
            .cloned()
            .collect();
        if added.is_empty() {
            return Ok(());
        }
        match super::markets::listing(&self.venue, &self.rest, super::markets::LISTING_WAIT).await {
            Some(m) => super::markets::check_listed(&added, &m, new.record.allow_unlisted),
            None => Ok(()),
        }
    }

    fn apply(&mut self, mut new: Config) -> Outcome {
        let mut need_restart = Vec::new();
        let (mut added, mut removed) = (Vec::new(), Vec::new());
        if new.record.all != self.running.record.all {
            need_restart.push("record.symbols (between a list and \"all\")".to_string());
        } else if !new.record.all {
            let old: BTreeSet<&String> = self.running.record.symbols.iter().collect();
            let now: BTreeSet<&String> = new.record.symbols.iter().collect();
            added = now.difference(&old).map(|s| s.to_string()).collect();
            removed = old.difference(&now).map(|s| s.to_string()).collect();
        }
        // the symbols as they will be recorded (under "all" the venue's listing decides)
        let symbols = if !new.record.all && need_restart.is_empty() {
            new.record.symbols.clone()
        } else {
            self.running.record.symbols.clone()
        };
        new.record.symbols = self.running.record.symbols.clone();
        need_restart.extend(changed_keys(&self.running, &new));
        if !removed.is_empty() {
            let gone = removed.iter().map(|s| Arc::from(s.as_str())).collect();
            let why = "removed from the configuration".to_string();
            let _ = self.fleet.send(fleet::Request::Retire(gone, why));
            tracing::info!(symbols = %removed.join(", "), "reload: no longer recording");
        }
        if !added.is_empty() {
            let new_ones = added.iter().map(|s| Arc::from(s.as_str())).collect();
            let _ = self.fleet.send(fleet::Request::Add(new_ones));
            tracing::info!(symbols = %added.join(", "), "reload: recording from now on");
        }
        self.running.record.symbols = symbols;
        Outcome::Applied {
            added,
            removed,
            need_restart,
        }
    }
}

/// Dotted keys whose values differ between two configurations (secrets compared as
/// printed, i.e. masked).
pub fn changed_keys(a: &Config, b: &Config) -> Vec<String> {
    let (Ok(a), Ok(b)) = (toml::Value::try_from(a), toml::Value::try_from(b)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    diff("", &a, &b, &mut out);
    out
}

fn diff(prefix: &str, a: &toml::Value, b: &toml::Value, out: &mut Vec<String>) {
    match (a, b) {
        (toml::Value::Table(x), toml::Value::Table(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(v), Some(w)) => diff(&key, v, w, out),
                    _ => out.push(key),
                }
            }
        }
        (x, y) if x != y => out.push(prefix.to_string()),
        _ => {}
    }
}
