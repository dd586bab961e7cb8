//! Archived rows leaving the database: PostgreSQL's time partitions dropped whole once every
//! row in them is archived and old enough, the rest (SQLite, `trades`, rows in a default
//! partition) deleted a chunk per statement. Only archived rows ever leave.

use crate::store::Store;
use crate::store::partitions::{PARTITIONED, Partition};

/// What a pruning pass deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    pub parts: u64,
    pub rows: u64,
    /// Partitions dropped (PostgreSQL).
    pub partitions: u64,
}

const DAY_MS: i64 = 86_400_000;

/// How much exchange time a partition covers: the widest divisor of a day that holds whole
/// periods and is at most a quarter of `db_keep_s` (rows then stay at most a quarter longer
/// than kept), and never less than a period.
pub fn partition_ms(period_ms: i64, keep_ms: i64) -> i64 {
    let period = period_ms.clamp(1, DAY_MS);
    let most = period.max(keep_ms / 4);
    (1..=DAY_MS / period)
        .map(|n| n * period)
        .filter(|w| DAY_MS % w == 0 && *w <= most)
        .max()
        .unwrap_or(period)
}

/// Partitions ahead of recording (PostgreSQL): from the current one on, at least three
/// and at least [`AHEAD_MS`] ahead of now, for every partitioned table, so rows land in a
/// partition that can be dropped, not in the default. Returns how many were created.
pub async fn make_partitions(store: &Store, width_ms: i64, now_ms: i64) -> anyhow::Result<u64> {
    if !matches!(store, Store::Postgres(_)) {
        return Ok(0);
    }
    let first = now_ms.div_euclid(width_ms) * width_ms;
    let count = 3.max((AHEAD_MS + width_ms - 1) / width_ms + 1);
    let have = store.partitions().await?;
    let mut made = 0;
    for p in PARTITIONED.iter() {
        for i in 0..count {
            let (from, to) = (first + i * width_ms, first + (i + 1) * width_ms);
            // one that overlaps (a width changed between runs): its rows stay where they are
            if have
                .iter()
                .any(|x| x.of.table == p.table && x.from_ms < to && from < x.to_ms)
            {
                continue;
            }
            if store.create_partition(p, from, to).await? {
                tracing::debug!(table = p.table, from_ms = from, "partition created");
                made += 1;
            }
        }
    }
    Ok(made)
}

/// How far ahead partitions are made: the upkeep may be late by this much (a database
/// that did not answer, a lock not granted) before rows go to the default partition.
const AHEAD_MS: i64 = 15 * 60_000;

/// The daemon's partition upkeep, beside the archive's rounds (which may take longer than
/// the time ahead): [`make_partitions`] every minute or tenth of a partition, whichever is
/// shorter; a failure is logged and tried again at the next tick.
pub async fn keep_partitions_ahead(store: std::sync::Arc<Store>, width_ms: i64) {
    if !matches!(*store, Store::Postgres(_)) {
        return;
    }
    let every = std::time::Duration::from_millis((width_ms / 10).clamp(1_000, 60_000) as u64);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = make_partitions(&store, width_ms, crate::model::now_ms()).await {
            tracing::warn!(error = format!("{e:#}"), "making partitions ahead failed");
        }
    }
}

/// Deletes from the database the rows of archived periods that ended `keep_ms` before
/// `now_ms` (gaps and sessions stay: they are small and coverage reads them). A partition
/// that ends by then and holds only archived rows is dropped; rows in a partition that does
/// not end by then wait for its drop; the rest go a chunk per statement so the writer never
/// waits long. A period with a late row waiting to be archived keeps its rows until it is.
pub async fn prune(store: &Store, keep_ms: i64, now_ms: i64) -> anyhow::Result<Pruned> {
    let cutoff = now_ms - keep_ms;
    let mut out = Pruned::default();
    let spare = drop_partitions(store, cutoff, now_ms, &mut out).await?;
    chunks(store, cutoff, now_ms, &spare, out).await
}

/// Every archived row, now (the disk is below its budget): the partitions that hold only
/// archived rows dropped, every other archived row deleted in chunks.
pub async fn prune_early(store: &Store, now_ms: i64) -> anyhow::Result<Pruned> {
    let mut out = Pruned::default();
    drop_partitions(store, now_ms, now_ms, &mut out).await?;
    chunks(store, now_ms, now_ms, &[], out).await
}

/// Drops the partitions ending by `cutoff` that hold only archived rows; returns those
/// that do not end by then (their rows wait for the drop).
async fn drop_partitions(
    store: &Store,
    cutoff: i64,
    now_ms: i64,
    out: &mut Pruned,
) -> anyhow::Result<Vec<Partition>> {
    let mut spare = Vec::new();
    for p in store.partitions().await? {
        if p.to_ms > cutoff {
            spare.push(p);
            continue;
        }
        if let Some(rows) = store.drop_archived_partition(&p, now_ms).await? {
            super::crash::crash_point("deleting");
            tracing::debug!(partition = %p.name, rows, "archived partition dropped");
            out.rows += rows;
            out.partitions += 1;
        }
    }
    Ok(spare)
}

async fn chunks(
    store: &Store,
    cutoff: i64,
    now_ms: i64,
    spare: &[Partition],
    mut out: Pruned,
) -> anyhow::Result<Pruned> {
    const CHUNK: i64 = 5_000;
    loop {
        let parts = store.parts_to_prune(cutoff, 500, spare).await?;
        if parts.is_empty() {
            return Ok(out);
        }
        for p in &parts {
            loop {
                let n = store.delete_archived(p, CHUNK).await?;
                super::crash::crash_point("deleting");
                out.rows += n;
                if n < CHUNK as u64 {
                    break;
                }
            }
            store
                .mark_deleted(p, now_ms.max(p.archived_at_ms + 1))
                .await?;
            out.parts += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::partition_ms;

    #[test]
    fn partitions_hold_whole_periods_and_a_quarter_of_the_keep_at_most() {
        let (min, hour, day) = (60_000, 3_600_000, 86_400_000);
        // the defaults: day periods, a week kept
        assert_eq!(partition_ms(day, 7 * day), day);
        // minute periods kept two minutes: a partition a period
        assert_eq!(partition_ms(min, 2 * min), min);
        assert_eq!(partition_ms(min, 0), min);
        // minute periods kept a day: six hours
        assert_eq!(partition_ms(min, day), 6 * hour);
        // hour periods kept ten hours: two hours (a quarter is 2.5 h)
        assert_eq!(partition_ms(hour, 10 * hour), 2 * hour);
        // a week kept of minute periods: a day at most
        assert_eq!(partition_ms(min, 7 * day), day);
    }
}
