//! Database errors by what can be done about them, and the connection guard that closes a
//! connection whose state an error left unknown.

// Causes are printed in the message and not exposed as `source()`: an error chain printed
// whole (`{:#}`) would repeat each cause once per level.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {op}: {cause}")]
    Sql {
        op: &'static str,
        cause: sqlx::Error,
    },
    #[error("migration failed: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    #[error("unsupported database URL {0:?}: use sqlite:PATH or postgres://...")]
    Url(String),
    #[error("stored value unreadable: {0}")]
    Corrupt(String),
    #[error("cannot {op} {}: {cause}", path.display())]
    Io {
        op: &'static str,
        path: std::path::PathBuf,
        cause: std::io::Error,
    },
    /// The database could not be opened; the message says what to fix.
    #[error("{message}")]
    Open { message: String, class: ErrorClass },
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> StoreError {
        StoreError::Migrate(e)
    }
}

impl StoreError {
    /// Wraps a sqlx error with the operation it interrupted.
    pub fn sql(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
        move |cause| StoreError::Sql { op, cause }
    }

    /// A unique key met a stored row (PostgreSQL `unique_violation`).
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, StoreError::Sql { cause: sqlx::Error::Database(e), .. } if e.is_unique_violation())
    }

    /// What kind of failure this is, which decides what the writer does with the batch.
    pub fn class(&self) -> ErrorClass {
        match self {
            StoreError::Sql { cause, .. } => classify(cause),
            // a migration that could not run because the database is away is no schema fault
            StoreError::Migrate(
                sqlx::migrate::MigrateError::Execute(e)
                | sqlx::migrate::MigrateError::ExecuteMigration(e, _),
            ) => classify(e),
            StoreError::Migrate(_) => ErrorClass::Schema,
            StoreError::Url(_) => ErrorClass::Permission,
            StoreError::Corrupt(_) => ErrorClass::Data,
            StoreError::Io { cause, .. } => match cause.kind() {
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
                    ErrorClass::Permission
                }
                _ => ErrorClass::Unavailable,
            },
            StoreError::Open { class, .. } => *class,
        }
    }
}

/// Database failures by what can be done about them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorClass {
    /// Not reachable, connection broken, disk full, out of resources: spool and retry.
    Unavailable,
    /// No answer in time, locked, deadlock: spool and retry.
    Timeout,
    /// The database refused some row (constraint, encoding, range): split the batch, store
    /// every good row, quarantine the bad ones.
    Data,
    /// Authentication or privileges: spool and retry until the operator fixes it.
    Permission,
    /// A table or column is missing or different: spool and retry until fixed.
    Schema,
}

impl ErrorClass {
    pub const ALL: [ErrorClass; 5] = [
        ErrorClass::Unavailable,
        ErrorClass::Timeout,
        ErrorClass::Data,
        ErrorClass::Permission,
        ErrorClass::Schema,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Unavailable => "unavailable",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Data => "data",
            ErrorClass::Permission => "permission",
            ErrorClass::Schema => "schema",
        }
    }
}

/// Classifies by SQLSTATE (PostgreSQL) or result code (SQLite). Anything unknown counts as
/// unavailable: retrying is safe, while quarantining a good row is not.
pub fn classify(e: &sqlx::Error) -> ErrorClass {
    use sqlx::Error as E;
    match e {
        E::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            if db
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .is_some()
            {
                pg_class(&code)
            } else {
                let primary = code.parse::<i64>().map(|c| c & 0xff).unwrap_or(-1);
                sqlite_class(primary, db.message())
            }
        }
        E::Encode(_) | E::TypeNotFound { .. } => ErrorClass::Data,
        E::ColumnNotFound(_) | E::ColumnIndexOutOfBounds { .. } => ErrorClass::Schema,
        E::Configuration(_) | E::Tls(_) => ErrorClass::Permission,
        // PoolTimedOut included: no connection could be opened in time (refused, unreachable)
        _ => ErrorClass::Unavailable,
    }
}

fn pg_class(sqlstate: &str) -> ErrorClass {
    match sqlstate.get(..2).unwrap_or("") {
        // data exception, integrity constraint, program limit (e.g. index row too large)
        "22" | "23" | "54" => ErrorClass::Data,
        // invalid authorization; invalid catalog name (no such database)
        "28" | "3D" => ErrorClass::Permission,
        "42" if sqlstate == "42501" => ErrorClass::Permission,
        "42" | "3F" => ErrorClass::Schema,
        // query canceled (statement_timeout), transaction rollback (deadlock, serialization)
        "57" if sqlstate == "57014" => ErrorClass::Timeout,
        "40" | "55" => ErrorClass::Timeout,
        _ => ErrorClass::Unavailable,
    }
}

fn sqlite_class(primary: i64, message: &str) -> ErrorClass {
    match primary {
        18 | 19 | 20 | 25 => ErrorClass::Data, // TOOBIG, CONSTRAINT, MISMATCH, RANGE
        5 | 6 => ErrorClass::Timeout,          // BUSY, LOCKED
        3 | 8 | 23 => ErrorClass::Permission,  // PERM, READONLY, AUTH
        1 if message.contains("no such") || message.contains("has no column") => ErrorClass::Schema,
        _ => ErrorClass::Unavailable, // FULL, IOERR, CANTOPEN, CORRUPT, NOMEM, ...
    }
}

/// A pooled connection that goes back to the pool only when the work on it finished cleanly:
/// after an error, or a write abandoned at a timeout, its state is unknown (a transaction
/// the database may have rolled back by itself, a half-read reply), so it is closed and the
/// pool opens a fresh one.
pub(crate) struct Checked<DB: sqlx::Database> {
    conn: sqlx::pool::PoolConnection<DB>,
    clean: bool,
}

impl<DB: sqlx::Database> Checked<DB> {
    pub async fn acquire(pool: &sqlx::Pool<DB>) -> Result<Self, StoreError> {
        let conn = pool
            .acquire()
            .await
            .map_err(StoreError::sql("acquire a connection"))?;
        Ok(Checked { conn, clean: false })
    }

    /// The work finished (committed or cleanly rolled back): the connection may be reused.
    pub fn clean(&mut self) {
        self.clean = true;
    }

    pub fn conn(&mut self) -> &mut DB::Connection {
        &mut self.conn
    }
}

impl<DB: sqlx::Database> Drop for Checked<DB> {
    fn drop(&mut self) {
        if !self.clean {
            self.conn.close_on_drop();
        }
    }
}
