//! Where the archive lives: a local directory (`file:///...`) or S3-compatible storage
//! (`s3://bucket/prefix`, credentials, region and endpoint from the `AWS_*` environment
//! variables), behind one object-store interface; and the archive's layout.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures_util::StreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

/// Where parts are written first: outside every table's directory, so a reader globbing a
/// table never sees a part before it is verified.
pub const STAGING: &str = "_staging";

pub struct Target {
    store: Arc<dyn ObjectStore>,
    /// The URL as it may be shown (no credentials are in it: they come from the environment).
    pub url: String,
}

impl Target {
    /// Opens the archive at `url`; a local directory is created.
    pub fn open(url: &str) -> anyhow::Result<Target> {
        Target::open_at(url, None)
    }

    /// The same, S3 through `endpoint` instead of the environment's.
    pub fn open_with_endpoint(url: &str, endpoint: &str) -> anyhow::Result<Target> {
        Target::open_at(url, Some(endpoint))
    }

    fn open_at(url: &str, endpoint: Option<&str>) -> anyhow::Result<Target> {
        // the HTTP client under S3 uses rustls without a built-in provider: ring, as the rest
        // of mdrec (a no-op once installed)
        let _ = rustls::crypto::ring::default_provider().install_default();
        let store: Arc<dyn ObjectStore> = if let Some(path) = url.strip_prefix("file://") {
            anyhow::ensure!(
                path.starts_with('/'),
                "archive URL {url:?}: a directory is file:///absolute/path"
            );
            std::fs::create_dir_all(path)
                .with_context(|| format!("create the archive directory {path}"))?;
            Arc::new(
                object_store::local::LocalFileSystem::new_with_prefix(path)
                    .with_context(|| format!("open the archive directory {path}"))?,
            )
        } else if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            anyhow::ensure!(!bucket.is_empty(), "archive URL {url:?} names no bucket");
            let retry = object_store::RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(30),
                ..Default::default()
            };
            let mut b = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_retry(retry);
            if let Some(e) = endpoint {
                b = b.with_endpoint(e);
            }
            let s3 = b.build().with_context(|| format!("archive URL {url:?}"))?;
            let prefix = prefix.trim_matches('/');
            if prefix.is_empty() {
                Arc::new(s3)
            } else {
                Arc::new(object_store::prefix::PrefixStore::new(s3, prefix))
            }
        } else {
            anyhow::bail!("archive URL {url:?}: use file:///a/directory or s3://bucket/prefix");
        };
        Ok(Target {
            store,
            url: url.to_string(),
        })
    }

    pub async fn put(&self, path: &str, bytes: Bytes) -> anyhow::Result<()> {
        self.store
            .put(&ObjPath::from(path), PutPayload::from(bytes))
            .await
            .with_context(|| format!("write {path} to {}", self.url))?;
        Ok(())
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Bytes> {
        let r = self
            .store
            .get(&ObjPath::from(path))
            .await
            .with_context(|| format!("read {path} from {}", self.url))?;
        r.bytes()
            .await
            .with_context(|| format!("read {path} from {}", self.url))
    }

    /// None when the object does not exist.
    pub async fn get_opt(&self, path: &str) -> anyhow::Result<Option<Bytes>> {
        match self.store.get(&ObjPath::from(path)).await {
            Ok(r) => {
                Ok(Some(r.bytes().await.with_context(|| {
                    format!("read {path} from {}", self.url)
                })?))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("read {path} from {}", self.url)),
        }
    }

    /// Moves `from` to `to`, replacing it (a local rename is atomic; S3 copies, then deletes).
    pub async fn publish(&self, from: &str, to: &str) -> anyhow::Result<()> {
        self.store
            .rename(&ObjPath::from(from), &ObjPath::from(to))
            .await
            .with_context(|| format!("publish {to} in {}", self.url))
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<()> {
        match self.store.delete(&ObjPath::from(path)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("delete {path} in {}", self.url)),
        }
    }

    /// Every object under `prefix`: (path, size).
    pub async fn list(&self, prefix: &str) -> anyhow::Result<Vec<(String, u64)>> {
        let prefix = ObjPath::from(prefix);
        let mut s = self.store.list(Some(&prefix));
        let mut out = Vec::new();
        while let Some(m) = s.next().await {
            let m = m.with_context(|| format!("list {prefix} in {}", self.url))?;
            out.push((m.location.to_string(), m.size));
        }
        out.sort();
        Ok(out)
    }

    /// The names one level under `prefix` (a hive directory's `key=value` children).
    pub async fn dirs(&self, prefix: &str) -> anyhow::Result<Vec<String>> {
        let prefix = ObjPath::from(prefix);
        let listed = self
            .store
            .list_with_delimiter(Some(&prefix))
            .await
            .with_context(|| format!("list {prefix} in {}", self.url))?;
        let mut out: Vec<String> = listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect();
        out.sort();
        Ok(out)
    }
}

pub use crate::export::plan::{date, hive_decoded, hive_value};

/// Where a part is published: `{table}/venue=V/symbol=S/date=D/part-HHMMSS.parquet` (gaps
/// and sessions, of the venue: `{table}/venue=V/date=D/part-HHMMSS.parquet`), HHMMSS the
/// period's start.
pub fn part_path(table: &str, venue: &str, symbol: &str, period_start_ms: i64) -> String {
    let time = chrono::DateTime::from_timestamp_millis(period_start_ms)
        .map(|t| t.format("%H%M%S").to_string())
        .unwrap_or_default();
    let sym = if symbol.is_empty() {
        String::new()
    } else {
        format!("symbol={}/", hive_value(symbol))
    };
    format!(
        "{table}/venue={}/{sym}date={}/part-{time}.parquet",
        hive_value(venue),
        date(period_start_ms)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_laid_out_by_table_venue_symbol_and_day() {
        // 2026-12-07 13:05 UTC
        let t = 1_796_648_700_000;
        assert_eq!(
            part_path("trades", "cdc-exchange", "BTC/USD", t),
            "trades/venue=cdc-exchange/symbol=BTC%2FUSD/date=2026-12-07/part-130500.parquet"
        );
        assert_eq!(
            part_path("gaps", "cdc-v1", "", 1_796_601_600_000),
            "gaps/venue=cdc-v1/date=2026-12-07/part-000000.parquet"
        );
    }
}
