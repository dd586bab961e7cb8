//! PostgreSQL's time partitions of the market-data tables (migration 0009): created ahead
//! of the rows that go into them, dropped once every row in them is archived, so retention
//! is a `DROP TABLE` instead of deleting row by row. SQLite has none: its retention is the
//! chunked delete (`archived.rs`).

use super::{Store, StoreError};

/// A partitioned table: its archive name, its database table, the partition column and its
/// units per millisecond, the exchange time the archive's periods are cut by, and what gives
/// a row's venue and symbol.
#[derive(Debug, PartialEq, Eq)]
pub struct Partitioned {
    pub tbl: &'static str,
    pub table: &'static str,
    pub key: &'static str,
    per_ms: i64,
    time: &'static str,
    /// `FROM {partition} t {join}`: rows with `venue` and `symbol` columns.
    join: &'static str,
}

impl Partitioned {
    /// Whether the partition column is the archive's period column: a partition then holds
    /// exactly the rows of the periods inside it.
    fn by_period(&self) -> bool {
        self.key == self.time
    }
}

pub static PARTITIONED: [Partitioned; 4] = [
    Partitioned {
        tbl: "klines",
        table: "klines",
        key: "open_time_ms",
        per_ms: 1,
        time: "open_time_ms",
        join: "",
    },
    Partitioned {
        tbl: "book_snapshots",
        table: "book_snapshots",
        key: "recv_time_us",
        per_ms: 1000,
        time: "event_time_ms",
        join: "",
    },
    Partitioned {
        tbl: "book_deltas",
        table: "book_updates",
        key: "recv_time_us",
        per_ms: 1000,
        time: "event_time_ms",
        join: "JOIN book_streams s ON s.id = t.stream",
    },
    Partitioned {
        tbl: "tickers",
        table: "tickers",
        key: "recv_time_us",
        per_ms: 1000,
        time: "event_time_ms",
        join: "",
    },
];

/// A range partition: rows whose partition column is in `[from_ms, to_ms)` (the bounds
/// in milliseconds whatever the column's unit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub of: &'static Partitioned,
    pub name: String,
    pub from_ms: i64,
    pub to_ms: i64,
}

/// DDL waits at most this long for the writer's transactions: a lock it cannot get now is
/// tried again next round, and the writer never queues behind it for longer.
const LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '2s'";

/// Runs a statement that takes locks: false when it waited [`LOCK_TIMEOUT`] in vain (the
/// caller gives up for this round and the transaction rolls back).
async fn locking(tx: &mut sqlx::PgConnection, sql: &str) -> Result<bool, StoreError> {
    match sqlx::query(sql).execute(&mut *tx).await {
        Ok(_) => Ok(true),
        Err(e) if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("55P03") => {
            tracing::debug!(
                statement = sql,
                "lock not granted in time: tried again next round"
            );
            Ok(false)
        }
        Err(e) => Err(StoreError::sql("partition DDL")(e)),
    }
}

fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `FOR VALUES FROM ('a') TO ('b')` as PostgreSQL prints a range bound; None for DEFAULT.
fn bounds(expr: &str) -> Option<(i64, i64)> {
    let nums: Vec<i64> = expr
        .split(|c: char| !(c.is_ascii_digit() || c == '-'))
        .filter(|s| !s.is_empty() && *s != "-")
        .filter_map(|s| s.parse().ok())
        .collect();
    match nums[..] {
        [a, b] if expr.starts_with("FOR VALUES FROM") => Some((a, b)),
        _ => None,
    }
}

impl Store {
    /// The range partitions of the partitioned tables, by table and start (none on SQLite,
    /// or on a PostgreSQL database not migrated to partitions).
    pub async fn partitions(&self) -> Result<Vec<Partition>, StoreError> {
        let Store::Postgres(s) = self else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for p in PARTITIONED.iter() {
            let rows: Vec<(String, String)> = sqlx::query_as(
                "SELECT c.relname::text, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i \
                 JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass($1)",
            )
            .bind(p.table)
            .fetch_all(s.pool())
            .await
            .map_err(StoreError::sql("list partitions"))?;
            for (name, bound) in rows {
                if let Some((from, to)) = bounds(&bound) {
                    out.push(Partition {
                        of: p,
                        from_ms: from.div_euclid(p.per_ms),
                        to_ms: to.div_euclid(p.per_ms),
                        name,
                    });
                }
            }
        }
        out.sort_by(|a, b| (a.of.table, a.from_ms).cmp(&(b.of.table, b.from_ms)));
        Ok(out)
    }

    /// Creates the partition of `table` for `[from_ms, to_ms)`, moving into it the rows the
    /// default partition holds for that range (rows written before it existed). The caller
    /// picks a range no partition overlaps (PostgreSQL refuses one that does). Returns
    /// whether it was created (false: a lock not granted in time).
    pub async fn create_partition(
        &self,
        p: &Partitioned,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<bool, StoreError> {
        let Store::Postgres(s) = self else {
            return Ok(false);
        };
        let e = StoreError::sql("create partition");
        let mut tx = s.pool().begin().await.map_err(e)?;
        let schema: String = sqlx::query_scalar(
            "SELECT relnamespace::regnamespace::text FROM pg_class WHERE oid = to_regclass($1)",
        )
        .bind(p.table)
        .fetch_one(&mut *tx)
        .await
        .map_err(StoreError::sql("partitioned table's schema"))?;
        let (parent, default, part) = (
            format!("{schema}.{}", quoted(p.table)),
            format!("{schema}.{}", quoted(&format!("{}_default", p.table))),
            format!("{schema}.{}", quoted(&format!("{}_p{from_ms}", p.table))),
        );
        let (key, from, to) = (p.key, from_ms * p.per_ms, to_ms * p.per_ms);
        for sql in [
            LOCK_TIMEOUT.to_string(),
            // no row may reach the default's range between the move and the attach
            format!("LOCK TABLE {default} IN SHARE ROW EXCLUSIVE MODE"),
            format!("CREATE TABLE {part} (LIKE {parent} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"),
            format!(
                "WITH moved AS (DELETE FROM {default} WHERE {key} >= {from} \
                 AND {key} < {to} RETURNING *) INSERT INTO {part} SELECT * FROM moved"
            ),
            format!(
                "ALTER TABLE {parent} ATTACH PARTITION {part} FOR VALUES FROM ({from}) TO ({to})"
            ),
        ] {
            if !locking(&mut tx, &sql).await? {
                return Ok(false);
            }
        }
        tx.commit()
            .await
            .map_err(StoreError::sql("commit partition"))?;
        Ok(true)
    }

    /// Drops a partition if every row in it is archived: each row's symbol archived past
    /// the row's exchange time, no late period holding it waiting to be archived again.
    /// Checked with the partition locked, so no row arrives between the check and the drop.
    /// Where the partition holds exactly whole periods (bars), their parts are on record as
    /// deleted in the same transaction; otherwise the chunked pass that follows finds their
    /// rows gone and records it. Returns the rows dropped, or None when it was kept.
    pub async fn drop_archived_partition(
        &self,
        p: &Partition,
        now_ms: i64,
    ) -> Result<Option<u64>, StoreError> {
        let Store::Postgres(s) = self else {
            return Ok(None);
        };
        let of = p.of;
        let name = quoted(&p.name);
        let e = StoreError::sql("drop partition");
        let mut tx = s.pool().begin().await.map_err(e)?;
        for sql in [
            LOCK_TIMEOUT.to_string(),
            format!("LOCK TABLE {name} IN ACCESS EXCLUSIVE MODE"),
        ] {
            if !locking(&mut tx, &sql).await? {
                return Ok(None);
            }
        }
        let (v, sym) = match of.join {
            "" => ("t.venue", "t.symbol"),
            _ => ("s.venue", "s.symbol"),
        };
        let time = format!("t.{}", of.time);
        let (held, unarchived): (i64, bool) = sqlx::query_as(&format!(
            "SELECT (SELECT COUNT(*) FROM {name}), EXISTS (SELECT 1 FROM {name} t {join} \
             WHERE NOT EXISTS (SELECT 1 FROM archive_marks m WHERE m.tbl = $1 AND m.venue = {v} \
             AND m.symbol = {sym} AND m.through_ms > {time}) \
             OR EXISTS (SELECT 1 FROM archive_dirty d WHERE d.tbl = $1 AND d.venue = {v} \
             AND d.symbol = {sym} AND d.period_start_ms <= {time} AND d.period_end_ms > {time}))",
            join = of.join,
        ))
        .bind(of.tbl)
        .fetch_one(&mut *tx)
        .await
        .map_err(StoreError::sql("check partition archived"))?;
        if unarchived {
            return Ok(None);
        }
        // the parent's lock: the writer's inserts hold it briefly
        if !locking(&mut tx, &format!("DROP TABLE {name}")).await? {
            return Ok(None);
        }
        if of.by_period() {
            sqlx::query(
                "UPDATE archive_parts SET deleted_at_ms = GREATEST($4, archived_at_ms + 1) \
                 WHERE tbl = $1 AND period_start_ms >= $2 AND period_end_ms <= $3 \
                 AND (deleted_at_ms IS NULL OR archived_at_ms > deleted_at_ms)",
            )
            .bind(of.tbl)
            .bind(p.from_ms)
            .bind(p.to_ms)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::sql("update archive_parts"))?;
        }
        tx.commit()
            .await
            .map_err(StoreError::sql("commit partition drop"))?;
        Ok(Some(held as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::bounds;

    #[test]
    fn range_bounds_as_postgres_prints_them() {
        assert_eq!(
            bounds("FOR VALUES FROM ('0') TO ('60000')"),
            Some((0, 60000))
        );
        assert_eq!(
            bounds("FOR VALUES FROM ('-60000') TO ('1796083200000')"),
            Some((-60000, 1796083200000))
        );
        assert_eq!(bounds("DEFAULT"), None);
    }
}
