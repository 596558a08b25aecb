//! Opening SQLite databases the one durable way, with errors a person can act on.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags};
use rusqlite_migration::{M, Migrations};
use thiserror::Error;

/// How long a writer waits for another process's lock before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_millis(2_000);

/// Why a database could not be opened or used.
#[derive(Debug, Error)]
pub enum StoreError {
    /// Opening an existing database, but there is none.
    #[error("database {path} does not exist ({hint})")]
    Missing {
        /// The file looked for.
        path: PathBuf,
        /// What creates it.
        hint: &'static str,
    },
    /// Not a SQLite file, or damaged.
    #[error(
        "database {path} is corrupt or not a SQLite database ({detail}); \
         keep the file for recovery and restore from backup"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What SQLite said.
        detail: String,
    },
    /// Written by a newer sonotap.
    #[error(
        "database {path} has schema version {found}, newer than this sonotap supports \
         ({supported}); upgrade sonotap"
    )]
    TooNew {
        /// The file.
        path: PathBuf,
        /// Its schema version.
        found: i64,
        /// The newest this build knows.
        supported: usize,
    },
    /// Another process holds the write lock.
    #[error("database {path} is locked by another process (waited {} ms)", BUSY_TIMEOUT.as_millis())]
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// The content breaks an invariant sonotap relies on.
    #[error("database {path} is inconsistent: {detail}")]
    Inconsistent {
        /// The file.
        path: PathBuf,
        /// Which invariant.
        detail: String,
    },
    /// Any other SQLite failure (disk full, read-only file system, ...).
    #[error("database {path}: {source}")]
    Sqlite {
        /// The file.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
}

impl StoreError {
    /// Sorts a SQLite error into the cases an operator handles differently.
    pub fn from_sqlite(path: &Path, source: rusqlite::Error) -> Self {
        let code = match &source {
            rusqlite::Error::SqliteFailure(e, _) => Some(e.code),
            _ => None,
        };
        match code {
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => StoreError::Corrupt {
                path: path.into(),
                detail: source.to_string(),
            },
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
                StoreError::Locked { path: path.into() }
            }
            _ => StoreError::Sqlite {
                path: path.into(),
                source,
            },
        }
    }

    /// An invariant violation found while reading rows.
    pub fn inconsistent(path: &Path, detail: impl Into<String>) -> Self {
        StoreError::Inconsistent {
            path: path.into(),
            detail: detail.into(),
        }
    }
}

/// How long a writer sleeps between attempts to take the lock.
const BUSY_POLL: Duration = Duration::from_micros(250);

/// SQLite's own busy timeout sleeps 1, 2, 5, 10, 15, 20 … ms between
/// attempts, so a tap that finds the uplink's 2 ms write in progress could
/// sleep 20 ms; polling every 250 µs takes the lock as soon as it is free,
/// and still gives up after [`BUSY_TIMEOUT`].
fn wait_for_lock(attempts: i32) -> bool {
    let waited = BUSY_POLL.saturating_mul(u32::try_from(attempts).unwrap_or(u32::MAX));
    if waited >= BUSY_TIMEOUT {
        return false;
    }
    std::thread::sleep(BUSY_POLL);
    true
}

/// Which sonotap database a file must be: its migrations, a table its first
/// migration creates (present in every version of it), and what makes one.
#[derive(Debug, Clone, Copy)]
pub struct Schema {
    /// Migrations, oldest first; the schema version is the number applied.
    pub migrations: &'static [M<'static>],
    /// A table every version of the schema has (`meta`, `issuer_keys`).
    pub marker_table: &'static str,
    /// The command that creates the database (`run `sonotap hub init` first`).
    pub missing_hint: &'static str,
}

/// Opens (and, with `create`, makes) a database: WAL, `synchronous=FULL`,
/// foreign keys on, a busy timeout, and the schema migrated to the latest
/// of `migrations`. A database from a newer build is refused untouched.
///
/// Only `create` (an explicit `init`) makes a schema: without it a file
/// that has none (zero bytes, or an empty or foreign SQLite database) is
/// refused untouched as [`StoreError::Corrupt`], since taking it for a new
/// database would silently start over (no readers, no keys, the deny list
/// at version 1) where a real one was lost or truncated. With `create`, an
/// existing file is only taken if it is empty of tables or already this
/// schema.
pub fn open(path: &Path, schema: &Schema, create: bool) -> Result<Connection, StoreError> {
    let migrations = schema.migrations;
    let missing_hint = schema.missing_hint;
    let err = |e| StoreError::from_sqlite(path, e);
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    } else if !path.exists() {
        return Err(StoreError::Missing {
            path: path.into(),
            hint: missing_hint,
        });
    }
    let mut conn = Connection::open_with_flags(path, flags).map_err(err)?;
    conn.busy_handler(Some(wait_for_lock)).map_err(err)?;
    // The first statement that reads the file is where corruption shows.
    let found: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(err)?;
    // The kind before the version: another kind of sonotap database (a
    // reader's in the hub's place) is named as such, whatever its version.
    check_schema(&conn, path, schema, found, create)?;
    if found > migrations.len() as i64 || found < 0 {
        return Err(StoreError::TooNew {
            path: path.into(),
            found,
            supported: migrations.len(),
        });
    }
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))
        .map_err(err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::inconsistent(
            path,
            format!("cannot switch to WAL journal mode (got {mode})"),
        ));
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(err)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(err)?;
    Migrations::from_slice(migrations)
        .to_latest(&mut conn)
        .map_err(|e| match e {
            rusqlite_migration::Error::RusqliteError { err: source, .. } => {
                StoreError::from_sqlite(path, source)
            }
            other => StoreError::inconsistent(path, format!("schema migration failed: {other}")),
        })?;
    Ok(conn)
}

/// Refuses a file that is not (yet) this schema, unless `create` may make it.
fn check_schema(
    conn: &Connection,
    path: &Path,
    schema: &Schema,
    version: i64,
    create: bool,
) -> Result<(), StoreError> {
    let err = |e| StoreError::from_sqlite(path, e);
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(err)?;
    let corrupt = |detail: String| StoreError::Corrupt {
        path: path.into(),
        detail,
    };
    if version == 0 {
        if create && tables == 0 {
            return Ok(());
        }
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        return Err(corrupt(if size == 0 {
            "the file is empty (0 bytes), and only an init creates a database".into()
        } else if tables == 0 {
            "it has no schema, and only an init creates a database".into()
        } else {
            format!("it holds {tables} tables or indexes but no sonotap schema version")
        }));
    }
    if !has_table(conn, schema.marker_table).map_err(err)? {
        return Err(corrupt(format!(
            "schema version {version} but no `{}` table: not this kind of sonotap database",
            schema.marker_table
        )));
    }
    Ok(())
}

/// Opens an existing database read-only: no migration, no pragma that
/// writes, `query_only` on, so it never takes a write lock and never changes
/// the file (a database from a newer build is still refused, since its
/// tables may mean something else).
pub fn open_read_only(
    path: &Path,
    supported: usize,
    missing_hint: &'static str,
) -> Result<Connection, StoreError> {
    let err = |e| StoreError::from_sqlite(path, e);
    if !path.exists() {
        return Err(StoreError::Missing {
            path: path.into(),
            hint: missing_hint,
        });
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(err)?;
    conn.busy_handler(Some(wait_for_lock)).map_err(err)?;
    conn.pragma_update(None, "query_only", "ON").map_err(err)?;
    let found: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(err)?;
    if found > supported as i64 || found < 0 {
        return Err(StoreError::TooNew {
            path: path.into(),
            found,
            supported,
        });
    }
    if found == 0 {
        return Err(StoreError::Corrupt {
            path: path.into(),
            detail: "it has no schema (user_version 0): not a sonotap database".into(),
        });
    }
    Ok(conn)
}

/// Reads a fixed-size blob column, reporting a wrong size as inconsistency.
pub fn blob<const N: usize>(
    path: &Path,
    what: &str,
    bytes: Vec<u8>,
) -> Result<[u8; N], StoreError> {
    <[u8; N]>::try_from(bytes.as_slice()).map_err(|_| {
        StoreError::inconsistent(
            path,
            format!("{what} is {} bytes, expected {N}", bytes.len()),
        )
    })
}

/// Converts a stored integer to the unsigned type the domain uses.
pub fn unsigned<T: TryFrom<i64>>(path: &Path, what: &str, value: i64) -> Result<T, StoreError> {
    T::try_from(value)
        .map_err(|_| StoreError::inconsistent(path, format!("{what} {value} is out of range")))
}

/// SQLite integers are signed; every value sonotap stores fits (times,
/// sequence numbers and totals are far below 2^63), so saturating only
/// guards against nonsense input.
pub fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Whether the database has a table `name`: a database opened read-only
/// is not migrated, so a table a later schema added may be missing.
pub fn has_table(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get(0),
    )
}
