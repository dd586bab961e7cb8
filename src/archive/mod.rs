//! The archive: closed periods of every market-data table as zstd Parquet in a directory or
//! S3-compatible storage (`target.rs`), each part read back and compared with the database
//! before it is published and recorded (`verify.rs`), exactly once: one part per table,
//! symbol and period under a fixed name, written again (replacing it) when rows of its
//! period reach the database later (the writer marks them, `store::ledger`).
//!
//! A round: for every venue, table and symbol, the periods that ended `settle` ago and are
//! not archived yet, in order; then the late periods. Parts go to `_staging/` first, are
//! read back from there, then moved to their place; only then does the ledger say so. A
//! crash at any point leaves either no ledger row (the part is written again under the same
//! name) or a verified part. One archiver per archive at a time.

mod crash;
pub mod retention;
pub mod target;
pub mod tiers;
pub mod verify;

use anyhow::Context;
use futures_util::StreamExt;

use crate::export::archive::{self as parts, TABLES, per_venue};
use crate::store::Store;
use crate::store::archived::{DirtyRow, PartRow};
use crash::crash_point;
pub use retention::{Pruned, prune, prune_early};
use target::{STAGING, Target, part_path};

/// How periods are cut.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub period_ms: i64,
    pub settle_ms: i64,
}

impl Settings {
    pub fn from_config(c: &crate::config::ArchiveConfig) -> Settings {
        Settings {
            period_ms: c.period_s as i64 * 1000,
            settle_ms: c.settle_s as i64 * 1000,
        }
    }
}

/// What a round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Parts written (late periods written again included).
    pub parts: u64,
    pub rows: u64,
    pub bytes: u64,
    /// Late periods written again.
    pub rewritten: u64,
}

/// Archives every period that ends at or before `before_ms` (and `settle` before now).
pub async fn run(
    store: &Store,
    target: &Target,
    s: Settings,
    before_ms: i64,
) -> anyhow::Result<Report> {
    run_paced(store, target, s, before_ms, &|| false).await
}

/// [`run`], waiting before each part while `busy` says recording needs the machine.
pub async fn run_paced(
    store: &Store,
    target: &Target,
    s: Settings,
    before_ms: i64,
    busy: &(dyn Fn() -> bool + Sync),
) -> anyhow::Result<Report> {
    let now = crate::model::now_ms();
    let before = before_ms.min(now - s.settle_ms);
    clear_staging(target).await?;
    let mut report = Report::default();
    let mut pending = Pending::default();
    for venue in store.venues().await? {
        let Some(venue) = crate::venue::registry::static_name(&venue) else {
            continue;
        };
        let symbols = store.symbols_with_data(venue).await?;
        for table in TABLES {
            let streams: Vec<&str> = if per_venue(table) {
                vec![""]
            } else {
                symbols.iter().map(String::as_str).collect()
            };
            // several streams at a time: a part waits mostly on the object store's round
            // trips and the database's reads
            let jobs: Vec<_> = streams
                .into_iter()
                .map(|symbol| {
                    let at = Stream {
                        venue,
                        table,
                        symbol,
                    };
                    archive_stream(store, target, at, (s.period_ms, before), busy)
                })
                .collect();
            // recorded once every stream of the table is done: a stream waiting unpolled
            // in the buffer may hold a pooled connection the recording would wait for
            let done: Vec<_> = futures_util::stream::iter(jobs)
                .buffer_unordered(STREAMS_AT_ONCE)
                .collect()
                .await;
            for parts in done {
                pending.0.extend(parts?);
                if pending.0.len() >= 500 {
                    pending.flush(store, &mut report).await?;
                }
            }
            pending.flush(store, &mut report).await?;
        }
    }
    for d in store.dirty_periods().await? {
        rewrite_late(store, target, s, &d, &mut report).await?;
    }
    Ok(report)
}

/// Leftovers of a round that did not finish: never published, never recorded.
async fn clear_staging(target: &Target) -> anyhow::Result<()> {
    for (path, _) in target.list(STAGING).await? {
        target.delete(&path).await?;
    }
    Ok(())
}

/// One table of one symbol (gaps and sessions: of the venue, symbol "").
struct Stream<'a> {
    venue: &'static str,
    table: &'static str,
    symbol: &'a str,
}

/// Parts published but not recorded yet, and the marks to move: recorded together, a few
/// hundred at a time (a crash before that writes them again under the same names).
#[derive(Default)]
struct Pending(Vec<(PartRow, i64)>);

impl Pending {
    async fn flush(&mut self, store: &Store, report: &mut Report) -> anyhow::Result<()> {
        if self.0.is_empty() {
            return Ok(());
        }
        store.record_parts(&self.0).await?;
        crash_point("recorded");
        for (p, _) in self.0.drain(..) {
            report.add(&p);
        }
        Ok(())
    }
}

/// Streams archived at once in a round.
const STREAMS_AT_ONCE: usize = 8;

/// The periods of one stream not archived yet, ending by `before`: their parts, published,
/// each with the mark it moves the stream to (to be recorded).
async fn archive_stream(
    store: &Store,
    target: &Target,
    at: Stream<'_>,
    (period, before): (i64, i64),
    busy: &(dyn Fn() -> bool + Sync),
) -> anyhow::Result<Vec<(PartRow, i64)>> {
    let mut out = Vec::new();
    let Stream {
        venue,
        table,
        symbol,
    } = at;
    let end = before.div_euclid(period) * period;
    let mut from = store
        .archived_through(table, venue, symbol)
        .await?
        .unwrap_or(i64::MIN);
    while from < end {
        // the next period holding a row (periods without rows have no part)
        let Some(t) = store.next_row_ms(table, venue, symbol, from).await? else {
            break;
        };
        let p = t.div_euclid(period) * period;
        if p >= end {
            break;
        }
        // the writer first: a deep queue means recording needs the CPU and the database
        while busy() {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
        let written = write_part(store, target, venue, table, symbol, (p, p + period)).await?;
        out.push((written, p + period));
        from = p + period;
    }
    if from < end {
        // nothing more to archive before `end`
        out.push((empty(table, venue, symbol, end), end));
    }
    Ok(out)
}

fn empty(table: &str, venue: &str, symbol: &str, at: i64) -> PartRow {
    PartRow {
        tbl: table.into(),
        venue: venue.into(),
        symbol: symbol.into(),
        period_start_ms: at,
        period_end_ms: at,
        path: String::new(),
        rows: 0,
        digest: String::new(),
        bytes: 0,
        archived_at_ms: crate::model::now_ms(),
        deleted_at_ms: None,
    }
}

impl Report {
    fn add(&mut self, p: &PartRow) {
        if p.rows > 0 {
            self.parts += 1;
            self.rows += p.rows as u64;
            self.bytes += p.bytes as u64;
        }
    }
}

/// One part: written to staging, read back and compared, published; the caller records it
/// (and moves the stream's mark past it).
async fn write_part(
    store: &Store,
    target: &Target,
    venue: &'static str,
    table: &'static str,
    symbol: &str,
    (from, to): (i64, i64),
) -> anyhow::Result<PartRow> {
    let what = format!(
        "{table} of {venue} {symbol} from {}",
        crate::coverage::format_time(from)
    );
    let meta = vec![
        ("mdrec.table".to_string(), table.to_string()),
        ("mdrec.venue".to_string(), venue.to_string()),
        ("mdrec.symbol".to_string(), symbol.to_string()),
        ("mdrec.period_start_ms".to_string(), from.to_string()),
        ("mdrec.period_end_ms".to_string(), to.to_string()),
        (
            "mdrec.decimals".to_string(),
            format!("DECIMAL(38,{})", parts::SCALE),
        ),
    ];
    let mut meta = meta;
    if let Some(c) = parts::coverage(store, venue, table, symbol, (from, to)).await? {
        meta.push(("mdrec.coverage".into(), c.to_string()));
    }
    let w = match store.archive_part(table, venue, symbol, from).await? {
        // its rows left the database: the part holds them, the database only late ones
        Some(prev) if prev.deleted_at_ms.is_some() => {
            let old = target
                .get_opt(&prev.path)
                .await?
                .with_context(|| format!("archiving {what}: its part {} is missing", prev.path))?;
            let old = verify::read_rows(table, &old)?;
            let db = parts::collect(store, venue, table, symbol, (from, to)).await?;
            parts::encode(table, parts::merge(table, old, db), meta)
        }
        _ => parts::write(store, venue, table, symbol, (from, to), meta).await,
    }
    .with_context(|| format!("archiving {what}"))?;
    let mut row = empty(table, venue, symbol, from);
    row.period_end_ms = to;
    if w.digest.rows == 0 {
        return Ok(row);
    }
    let path = part_path(table, venue, symbol, from);
    let staged = format!("{STAGING}/{}.parquet", uuid_like());
    let bytes = bytes::Bytes::from(w.bytes);
    let size = bytes.len();
    target.put(&staged, bytes).await?;
    crash_point("staged");
    let back = target.get(&staged).await?;
    let check = verify::read_back(table, &back).with_context(|| format!("reading back {what}"))?;
    if check.rows != w.digest.rows || check.hex() != w.digest.hex() {
        target.delete(&staged).await?;
        anyhow::bail!(
            "archiving {what}: the part read back holds {} rows (digest {}), the database {} ({})",
            check.rows,
            check.hex(),
            w.digest.rows,
            w.digest.hex()
        );
    }
    crash_point("verified");
    target.publish(&staged, &path).await?;
    crash_point("published");
    row.path = path;
    row.rows = w.digest.rows as i64;
    row.digest = w.digest.hex();
    row.bytes = size as i64;
    row.archived_at_ms = crate::model::now_ms();
    Ok(row)
}

/// A late period: the archive's periods within the writer's that the stream's mark has
/// passed are archived again (the rest the next round archives in order), then the mark is
/// cleared unless rows marked it again meanwhile.
async fn rewrite_late(
    store: &Store,
    target: &Target,
    s: Settings,
    d: &DirtyRow,
    report: &mut Report,
) -> anyhow::Result<()> {
    let table = TABLES.iter().copied().find(|t| *t == d.tbl);
    let venue = crate::venue::registry::static_name(&d.venue);
    if let (Some(table), Some(venue)) = (table, venue) {
        let through = store
            .archived_through(table, venue, &d.symbol)
            .await?
            .unwrap_or(i64::MIN);
        let p = s.period_ms;
        let mut from = d.period_start_ms.div_euclid(p) * p;
        while from < d.period_end_ms && from < through {
            // recording it does not move the stream's mark back
            let written =
                write_part(store, target, venue, table, &d.symbol, (from, from + p)).await?;
            store.record_part(&written, from + p).await?;
            crash_point("recorded");
            if written.rows > 0 {
                report.rewritten += 1;
            }
            report.add(&written);
            from += p;
        }
    }
    store.clear_dirty(d).await.map_err(Into::into)
}

/// A name no other staged part has.
fn uuid_like() -> String {
    format!(
        "{:x}-{:x}-{:016x}",
        crate::model::now_us(),
        std::process::id(),
        fastrand::u64(..)
    )
}

/// What the daemon's archiving needs: the archive, how periods are cut, how long archived
/// rows stay, and the disk budget with the places it watches.
pub struct Lifecycle {
    pub target: Target,
    pub settings: Settings,
    pub keep_ms: i64,
    pub min_free_bytes: u64,
    /// Directories on the disks the budget is for (the SQLite file's, the spool's).
    pub watched: Vec<std::path::PathBuf>,
    /// True while recording is behind (the writer's queue deep): archiving waits.
    pub busy: Busy,
}

/// Whether recording needs the machine now.
pub type Busy = std::sync::Arc<dyn Fn() -> bool + Send + Sync>;

/// The directories whose disks the budget is for: the spool's, and the SQLite file's.
pub fn watched_dirs(c: &crate::config::Config) -> Vec<std::path::PathBuf> {
    let mut watched = vec![c.spool_dir()];
    if let Some(f) = crate::config::sqlite_file(&c.database.url) {
        let dir = std::path::Path::new(f)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        watched.push(dir.to_path_buf());
    }
    watched
}

impl Lifecycle {
    pub fn from_config(c: &crate::config::Config, target: Target) -> Lifecycle {
        let watched = watched_dirs(c);
        Lifecycle {
            target,
            settings: Settings::from_config(&c.archive),
            keep_ms: c.archive.db_keep_s as i64 * 1000,
            min_free_bytes: c.storage.min_free_bytes,
            watched,
            busy: std::sync::Arc::new(|| false),
        }
    }

    /// The least free space among the watched disks (a directory not made yet: its parent's).
    pub fn free_bytes(&self) -> Option<u64> {
        self.watched.iter().filter_map(|d| free_bytes(d)).min()
    }
}

/// Free bytes (for an unprivileged writer) on the disk holding `dir`, or its nearest
/// existing ancestor.
pub fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    let mut d = Some(dir);
    while let Some(p) = d {
        if let Ok(s) = nix::sys::statvfs::statvfs(p) {
            return Some(s.blocks_available().saturating_mul(s.fragment_size()));
        }
        d = p.parent();
    }
    None
}

/// The daemon's archiving (`[archive] url`), beside the writer, until `stop`: a round
/// every minute (or period, if shorter); then archived rows older than `db_keep_s` are
/// deleted from the database; and while the disk is below `[storage] min_free_bytes`, every
/// archived row, oldest first. A failed round (object store down, refusing, slow) is logged
/// and tried again after a doubling pause (5 s to 5 min); nothing is deleted that is not
/// archived, so a failure loses nothing.
pub async fn keep_archiving(
    store: std::sync::Arc<Store>,
    life: Lifecycle,
    stats: std::sync::Arc<crate::stats::ArchiveStats>,
    stop: tokio_util::sync::CancellationToken,
) {
    use std::sync::atomic::Ordering::Relaxed;
    stats.enabled.store(true, Relaxed);
    let s = life.settings;
    // partitions are made on their own clock: a round may take longer than the time ahead
    let width = retention::partition_ms(s.period_ms, life.keep_ms);
    let _upkeep = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
        retention::keep_partitions_ahead(store.clone(), width),
    ));
    let every =
        std::time::Duration::from_millis(s.period_ms.min(s.settle_ms).clamp(1_000, 60_000) as u64);
    let mut pause = std::time::Duration::from_secs(5);
    loop {
        let next = match round(&store, &life, &stats).await {
            Ok(()) => {
                pause = std::time::Duration::from_secs(5);
                stats.failing_since_ms.store(0, Relaxed);
                every
            }
            Err(e) => {
                let error = format!("{e:#}");
                tracing::warn!(error, archive = %life.target.url, retry_in = ?pause, "archiving failed");
                stats.failures.fetch_add(1, Relaxed);
                let _ = stats.failing_since_ms.compare_exchange(
                    0,
                    crate::model::now_ms(),
                    Relaxed,
                    Relaxed,
                );
                *crate::runtime::lock(&stats.last_error) = error;
                let p = pause;
                pause = (pause * 2).min(std::time::Duration::from_secs(300));
                p
            }
        };
        if let Ok(Some(m)) = store.oldest_archive_mark().await {
            let due = m + s.period_ms + s.settle_ms;
            stats
                .lag_ms
                .store((crate::model::now_ms() - due).max(0), Relaxed);
        }
        if let Ok(b) = store.database_bytes().await {
            stats.database_bytes.store(b, Relaxed);
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(next) => {}
        }
    }
}

async fn round(
    store: &Store,
    life: &Lifecycle,
    stats: &crate::stats::ArchiveStats,
) -> anyhow::Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    let r = run_paced(store, &life.target, life.settings, i64::MAX, &*life.busy).await?;
    stats.parts.fetch_add(r.parts, Relaxed);
    stats.rows.fetch_add(r.rows, Relaxed);
    stats.bytes.fetch_add(r.bytes, Relaxed);
    stats.rewritten.fetch_add(r.rewritten, Relaxed);
    if r.parts > 0 {
        tracing::info!(
            parts = r.parts,
            rows = r.rows,
            bytes = r.bytes,
            rewritten = r.rewritten,
            archive = %life.target.url,
            "archived"
        );
    }
    let now = crate::model::now_ms();
    let kept = prune(store, life.keep_ms, now).await?;
    stats.deleted_rows.fetch_add(kept.rows, Relaxed);
    if kept.rows > 0 {
        tracing::info!(
            parts = kept.parts,
            rows = kept.rows,
            partitions = kept.partitions,
            "deleted archived rows past db_keep_s"
        );
    }
    // pages a deletion freed inside a SQLite file are free space the file grows into first
    let free = |reusable: u64| life.free_bytes().map(|f| f + reusable);
    if free(store.reusable_bytes().await?).is_some_and(|f| f < life.min_free_bytes) {
        let early = prune_early(store, now).await?;
        stats.deleted_rows.fetch_add(early.rows, Relaxed);
        let free = free(store.reusable_bytes().await?).unwrap_or(0);
        stats
            .budget_exhausted
            .store(free < life.min_free_bytes, Relaxed);
        if free < life.min_free_bytes {
            tracing::error!(
                free_bytes = free,
                min_free_bytes = life.min_free_bytes,
                deleted_rows = early.rows,
                "the disk is below its budget and no archived rows are left to delete: \
                 recording goes on until the disk is full"
            );
        } else {
            tracing::warn!(
                deleted_rows = early.rows,
                free_bytes = free,
                "the disk was below its budget: archived rows deleted early"
            );
        }
    }
    Ok(())
}
