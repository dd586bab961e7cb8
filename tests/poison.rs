//! Poison pills: a row the database refuses must cost that row alone. The writer splits a
//! refused batch until the bad rows are isolated, stores every good row and keeps the bad
//! ones in `rejected_rows` with the database's message; a spool file holding such a row
//! replays the same way. Database errors are classified once, each class from a real error.
//! On SQLite and PostgreSQL; the refusal is a real trigger in the real database.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::{PgDb, sqlite_db};
use mdrec::config::WriterConfig;
use mdrec::decimal::Dec;
use mdrec::model::{Event, Session, Side, Source, Trade};
use mdrec::stats::WriterStats;
use mdrec::store::spool::Spool;
use mdrec::store::writer;
use mdrec::store::{Batch, ErrorClass, Store, classify};

/// The price the test trigger refuses.
const POISON: &str = "13.37";

fn trade(id: i64, price: &str) -> Event {
    Event::Trade(Trade {
        venue: "cdc-v1",
        symbol: Arc::from("btcusdt"),
        trade_id: id,
        side: if id % 2 == 0 { Side::Buy } else { Side::Sell },
        price: Dec::parse(price).unwrap(),
        qty: Dec::parse("0.5").unwrap(),
        quote_qty: None,
        event_time_ms: 1_790_000_000_000 + id,
        recv_time_us: 1_790_000_000_000_000 + id,
        source: Source::Ws,
    })
}

/// 500 trades; every 71st carries the poison price (7 of them).
fn trades() -> (Vec<Event>, Vec<i64>, Vec<i64>) {
    let (mut evs, mut good, mut bad) = (Vec::new(), Vec::new(), Vec::new());
    for id in 1..=500 {
        if id % 71 == 0 {
            evs.push(trade(id, POISON));
            bad.push(id);
        } else {
            evs.push(trade(id, "100.25"));
            good.push(id);
        }
    }
    (evs, good, bad)
}

/// A trigger that refuses trades at the poison price, as a constraint would.
async fn add_poison_trigger(store: &Store) {
    match store {
        Store::Sqlite(s) => {
            sqlx::query(&format!(
                "CREATE TRIGGER poison BEFORE INSERT ON trades WHEN NEW.price = {POISON} \
                 BEGIN SELECT RAISE(ABORT, 'poison price refused'); END"
            ))
            .execute(s.pool())
            .await
            .unwrap();
        }
        Store::Postgres(s) => {
            sqlx::query(&format!(
                "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
                 IF NEW.price = {POISON} THEN RAISE EXCEPTION 'poison price refused' \
                 USING ERRCODE = 'check_violation'; END IF; RETURN NEW; END $$"
            ))
            .execute(s.pool())
            .await
            .unwrap();
            sqlx::query(
                "CREATE TRIGGER poison BEFORE INSERT ON trades FOR EACH ROW EXECUTE FUNCTION poison()",
            )
            .execute(s.pool())
            .await
            .unwrap();
        }
    }
}

fn cfg() -> WriterConfig {
    WriterConfig {
        batch_rows: 100,
        flush_interval_ms: 3_600_000,
        queue_capacity: 1024,
        ..WriterConfig::default()
    }
}

async fn stored_ids(store: &Store) -> Vec<i64> {
    store
        .load_trades("cdc-v1", "btcusdt")
        .await
        .unwrap()
        .iter()
        .map(|t| t.trade_id)
        .collect()
}

/// A migrated store whose trades table refuses the poison price.
async fn poisoned_store(url: &str) -> Arc<Store> {
    let store = Arc::new(Store::connect(url).await.unwrap());
    store.migrate().await.unwrap();
    add_poison_trigger(&store).await;
    store
}

/// Runs the writer (spool in `spool_dir`) over `events` until the queue closes: it replays
/// what the spool holds first, writes the events, and drains.
async fn write_through(
    store: &Arc<Store>,
    spool_dir: &Path,
    events: Vec<Event>,
) -> Arc<WriterStats> {
    let (tx, rx) = mdrec::store::queue::channel(events.len().max(1), 64 << 20);
    for ev in events {
        tx.send(ev).await.unwrap();
    }
    drop(tx);
    let stats = Arc::new(WriterStats::default());
    writer::run(
        store.clone(),
        rx,
        cfg(),
        stats.clone(),
        Some(Spool::open(spool_dir).unwrap()),
        Default::default(),
    )
    .await;
    stats
}

async fn poison_is_isolated(url: &str) {
    let store = poisoned_store(url).await;
    let spool_dir = tempfile::tempdir().unwrap();
    let (mut evs, good, bad) = trades();
    // a close reason with NUL and a bell, as a hostile venue may send: stored, made safe
    evs.push(Event::Session(Session {
        venue: "cdc-v1",
        symbol: Arc::from("btcusdt"),
        session_id: "s1".into(),
        connected_at_us: 1,
        disconnected_at_us: Some(2),
        close_reason: Some("closed by venue: 1000 bye\0\u{7}".into()),
    }));
    let stats = write_through(&store, spool_dir.path(), evs).await;

    assert_eq!(stored_ids(&store).await, good, "every good trade stored");
    let rejected = store.rejected_rows().await.unwrap();
    let rejected_ids: Vec<i64> = rejected
        .iter()
        .map(|r| {
            let ev: serde_json::Value = serde_json::from_str(&r.row_json).unwrap();
            ev["Trade"]["trade_id"].as_i64().unwrap()
        })
        .collect();
    let mut sorted = rejected_ids.clone();
    sorted.sort();
    assert_eq!(sorted, bad, "exactly the poison trades are rejected");
    for r in &rejected {
        assert_eq!(
            (r.kind.as_str(), r.reason.as_str()),
            ("trades", "data_error")
        );
        assert!(
            r.error
                .as_deref()
                .unwrap_or("")
                .contains("poison price refused"),
            "{r:?}"
        );
        assert!(
            r.row_json.contains(&format!("\"{POISON}\"")),
            "exact price kept"
        );
    }
    assert_eq!(
        stats.rejected_rows.load(Ordering::Relaxed),
        bad.len() as u64
    );
    assert_eq!(
        stats.rows_of(mdrec::model::Table::Trades),
        good.len() as u64
    );
    assert_eq!(
        stats.spooled_rows.load(Ordering::Relaxed),
        0,
        "nothing spooled"
    );
    assert!(stats.errors_by_class[ErrorClass::Data as usize].load(Ordering::Relaxed) > 0);
    assert_eq!(stats.quarantined_to_file.load(Ordering::Relaxed), 0);
    let reasons = read_reasons(&store).await;
    assert_eq!(reasons, ["closed by venue: 1000 bye\u{fffd}\u{fffd}"]);

    // a spool file written while the database was down holds two poison trades: replay
    // stores the rest, rejects those two (one row each, however often replayed) and empties
    // the spool
    let mut spool = Spool::open(spool_dir.path()).unwrap();
    let mut b = Batch::default();
    for id in 1000..1050 {
        b.push(trade(id, if id % 25 == 0 { POISON } else { "99.5" }));
    }
    spool.append(&b).unwrap();
    spool.append(&b).unwrap(); // the same rows twice, as after a crash mid-replay
    let stats = write_through(&store, spool_dir.path(), Vec::new()).await;
    let ids = stored_ids(&store).await;
    let replayed: Vec<i64> = ids.iter().copied().filter(|i| *i >= 1000).collect();
    let want: Vec<i64> = (1000..1050).filter(|i| i % 25 != 0).collect();
    assert_eq!(replayed, want);
    assert!(
        Spool::open(spool_dir.path()).unwrap().is_empty(),
        "spool replayed"
    );
    assert_eq!(store.rejected_rows().await.unwrap().len(), bad.len() + 2);
    assert_eq!(
        stats.rejected_rows.load(Ordering::Relaxed),
        4,
        "two files, two each"
    );
    println!(
        "poison ({}): sent 500 + 2x50 spooled, stored {}, rejected {} (kept once each), spool left 0",
        if url.starts_with("sqlite") {
            "SQLite"
        } else {
            "PostgreSQL"
        },
        ids.len(),
        store.rejected_rows().await.unwrap().len()
    );
    store.close().await;
}

async fn read_reasons(store: &Store) -> Vec<String> {
    let sql = "SELECT close_reason FROM sessions ORDER BY session_id";
    match store {
        Store::Sqlite(s) => sqlx::query_scalar(sql).fetch_all(s.pool()).await,
        Store::Postgres(s) => sqlx::query_scalar(sql).fetch_all(s.pool()).await,
    }
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_poison_rows_are_isolated_and_kept() {
    let (dir, url) = sqlite_db();
    poison_is_isolated(&url).await;
    // the database and its WAL are the operator's alone, whatever the umask
    use std::os::unix::fs::PermissionsExt;
    for f in ["test.db", "test.db-wal"] {
        let p = dir.path().join(f);
        if p.exists() {
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
    }
}

/// When the database refuses even `rejected_rows`, refused rows go to the quarantine file
/// beside the spool, one JSON line each, and the good rows are still stored.
async fn refused_twice_goes_to_the_quarantine_file(url: &str) {
    let store = poisoned_store(url).await;
    let refuse_all = match &*store {
        Store::Sqlite(_) => vec![
            "CREATE TRIGGER no_rejects BEFORE INSERT ON rejected_rows \
             BEGIN SELECT RAISE(ABORT, 'rejected_rows refused too'); END"
                .to_string(),
        ],
        Store::Postgres(_) => vec![
            "CREATE FUNCTION no_rejects() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
             RAISE EXCEPTION 'rejected_rows refused too' USING ERRCODE = 'check_violation'; END $$"
                .to_string(),
            "CREATE TRIGGER no_rejects BEFORE INSERT ON rejected_rows FOR EACH ROW \
             EXECUTE FUNCTION no_rejects()"
                .to_string(),
        ],
    };
    for sql in refuse_all {
        match &*store {
            Store::Sqlite(s) => sqlx::query(&sql).execute(s.pool()).await.map(|_| ()),
            Store::Postgres(s) => sqlx::query(&sql).execute(s.pool()).await.map(|_| ()),
        }
        .unwrap();
    }
    let spool_dir = tempfile::tempdir().unwrap();
    let (evs, good, bad) = trades();
    let stats = write_through(&store, spool_dir.path(), evs).await;
    assert_eq!(stored_ids(&store).await, good);
    let file = spool_dir.path().join(writer::QUARANTINE_FILE);
    let text = std::fs::read_to_string(&file).unwrap();
    let kept: Vec<mdrec::store::Rejected> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(kept.len(), bad.len(), "one line per refused row");
    assert!(kept.iter().all(|r| r.row_json.contains(POISON)));
    assert_eq!(
        stats.quarantined_to_file.load(Ordering::Relaxed),
        bad.len() as u64
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_refused_twice_goes_to_the_quarantine_file() {
    let (_dir, url) = sqlite_db();
    refused_twice_goes_to_the_quarantine_file(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refused_twice_goes_to_the_quarantine_file() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    refused_twice_goes_to_the_quarantine_file(&db.url).await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_poison_rows_are_isolated_and_kept() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    poison_is_isolated(&db.url).await;
    db.drop_db().await;
}

/// Each error class from a real failure of a real database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_errors_are_classified() {
    use sqlx::Connection;
    let (dir, url) = sqlite_db();
    let store = Store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let Store::Sqlite(s) = &store else {
        unreachable!()
    };
    let mut batch = Batch::default();
    batch.push(trade(1, "1"));

    // data: a constraint refuses the row
    add_poison_trigger(&store).await;
    let mut bad = Batch::default();
    bad.push(trade(2, POISON));
    assert_eq!(
        store.write(&bad).await.unwrap_err().class(),
        ErrorClass::Data
    );

    // timeout: another connection holds the write lock and we will not wait
    let path = dir.path().join("test.db");
    let mut holder = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut holder)
        .await
        .unwrap();
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .busy_timeout(std::time::Duration::ZERO);
    let mut c = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
    let e = sqlx::query("INSERT INTO markets (venue, symbol, updated_at_ms) VALUES ('a','b',1)")
        .execute(&mut c)
        .await
        .unwrap_err();
    assert_eq!(classify(&e), ErrorClass::Timeout, "{e}");
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();

    // permission: a read-only database
    let ro = Store::connect(&format!("{url}?mode=ro")).await.unwrap();
    assert_eq!(
        ro.write(&batch).await.unwrap_err().class(),
        ErrorClass::Permission
    );
    ro.close().await;

    // schema: the table is gone
    sqlx::query("DROP TABLE trades")
        .execute(s.pool())
        .await
        .unwrap();
    assert_eq!(
        store.write(&batch).await.unwrap_err().class(),
        ErrorClass::Schema
    );

    // unavailable: the database file cannot be opened
    let e = Store::connect("sqlite:///nonexistent-dir-for-mdrec/x.db?mode=ro")
        .await
        .err()
        .unwrap();
    assert_eq!(e.class(), ErrorClass::Unavailable, "{e}");
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_errors_are_classified() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    let store = Store::connect(&db.url).await.unwrap();
    store.migrate().await.unwrap();
    let Store::Postgres(s) = &store else {
        unreachable!()
    };
    let mut batch = Batch::default();
    batch.push(trade(1, "1"));

    // data: a constraint, and text PostgreSQL cannot hold (NUL) sent past the sanitizer
    add_poison_trigger(&store).await;
    let mut bad = Batch::default();
    bad.push(trade(2, POISON));
    assert_eq!(
        store.write(&bad).await.unwrap_err().class(),
        ErrorClass::Data
    );
    let e = sqlx::query("INSERT INTO markets (venue, symbol, updated_at_ms) VALUES ('a', $1, 1)")
        .bind("x\0y")
        .execute(s.pool())
        .await
        .unwrap_err();
    assert_eq!(classify(&e), ErrorClass::Data, "{e}");

    // timeout: a lock held elsewhere and a statement timeout
    let role = format!("ro_{}", fastrand::u32(..));
    let mut holder = s.pool().begin().await.unwrap();
    sqlx::query("LOCK TABLE markets IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let timed = Store::connect(&format!("{}?options=-c%20statement_timeout%3D200", db.url))
        .await
        .unwrap();
    let mut m = Batch::default();
    m.push(Event::Market(mdrec::model::Market {
        venue: "cdc-v1",
        symbol: Arc::from("btcusdt"),
        base: None,
        quote: None,
        price_precision: None,
        qty_precision: None,
        updated_at_ms: 1,
    }));
    assert_eq!(
        timed.write(&m).await.unwrap_err().class(),
        ErrorClass::Timeout
    );
    holder.rollback().await.unwrap();
    timed.close().await;

    // permission: a role that may read but not write
    for sql in [
        format!("CREATE ROLE {role} LOGIN PASSWORD 'pw'"),
        format!("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}"),
    ] {
        sqlx::query(&sql).execute(s.pool()).await.unwrap();
    }
    let mut ro_url = url::Url::parse(&db.url).unwrap();
    ro_url.set_username(&role).unwrap();
    ro_url.set_password(Some("pw")).unwrap();
    let ro_url = ro_url.to_string();
    let ro = Store::connect(&ro_url).await.unwrap();
    assert_eq!(
        ro.write(&batch).await.unwrap_err().class(),
        ErrorClass::Permission
    );
    ro.close().await;

    // schema: the table is gone
    sqlx::query("DROP TABLE trades CASCADE")
        .execute(s.pool())
        .await
        .unwrap();
    assert_eq!(
        store.write(&batch).await.unwrap_err().class(),
        ErrorClass::Schema
    );
    store.close().await;

    // unavailable: nothing listens
    let e = Store::connect("postgres://postgres@127.0.0.1:1/postgres")
        .await
        .err()
        .unwrap();
    assert_eq!(e.class(), ErrorClass::Unavailable, "{e}");
    db.drop_db().await;
    let admin = Store::connect(&common::pg_admin_url()).await.unwrap();
    if let Store::Postgres(a) = &admin {
        let _ = sqlx::query(&format!("DROP ROLE IF EXISTS {role}"))
            .execute(a.pool())
            .await;
    }
    admin.close().await;
}
