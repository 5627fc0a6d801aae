//! flow-store: the metadata database. All SQL lives here.
//!
//! One [`Store`] serves PostgreSQL (production, several processes, many workers) and SQLite
//! (the embedded default for `flow standalone`). Queries are written once: times are BIGINT
//! microseconds, flags are 0/1 BIGINTs, JSON is TEXT, and placeholders are `$n`, which both
//! engines accept. The few statements that must differ (row locking for claims) branch on
//! [`Backend`].
//!
//! Every task instance and dag run state change goes through one primitive (`transition`): it
//! checks the model's table of who may move what from where, updates with a guard on the
//! current state, and records only the rows it changed, with their actor, in `ti_transition` /
//! `dag_run_transition`. Zero rows updated means another actor won the race, which callers
//! treat as a normal outcome, not an error.
//!
//! SQLite allows one writer at a time: writes go through a single-connection pool and start with
//! `BEGIN IMMEDIATE`, so concurrent writers queue instead of failing with "database is locked".

mod assets;
mod backfills;
mod bundles;
mod callbacks;
mod changes;
mod connections;
mod dag_runs;
mod dags;
mod deferral;
mod events;
mod explain;
mod jobs;
mod logs;
mod markers;
mod monitor;
mod pools;
mod queueing;
mod retention;
mod task_instances;
pub mod testing;
mod transition;
mod trigger;
mod users;
mod variables;
pub mod wake;
mod warnings;
mod xcom;

use std::str::FromStr;
use std::sync::{Arc, Once};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyPool, Executor, Transaction};
use tokio::sync::Notify;

pub use assets::{
    AssetEventQuery, AssetEventRow, AssetQuery, AssetReference, AssetRow, AssetUse, NewAssetEvent,
    QueuedEvent,
};
pub use backfills::{BackfillError, BackfillRow, NewBackfill, Planned, ReprocessBehavior};
pub use bundles::BundleFile;
pub use callbacks::{
    CALLBACK_LEASE, CALLBACK_MAX_ATTEMPTS, CallbackRow, CallbackTarget, NewCallback,
    event_for_outcome, new_callbacks,
};
pub use changes::{RunKey, RunTouch};
pub use connections::{Cipher, ConnectionSource};
pub use dag_runs::{DagRunRow, NewDagRun, RunFinish, RunQuery};
pub use dags::{
    DagDelete, DagQuery, DagRecord, DagRow, DagVersionRow, FileSync, ImportErrorRow, NextRun,
};
pub use deferral::{NEXT_EXECUTE_COMPLETE, NEXT_FAIL, NEXT_POKE, NewTrigger, TriggerRow};
pub use events::{EventCursor, EventGaps, EventTable, LifecycleEvent};
pub use explain::TiDependency;
pub use jobs::{JobQuery, JobRow, JobStart};
pub use logs::{LogLine, LogRead};
pub use monitor::{DagCounts, FailedTry, HourStats, MonitorCounts};
pub use pools::{DEFAULT_POOL, PoolRow, PoolWrite};
pub use queueing::{PoolUsage, QueueOutcome, QueueRequest, Refusal, RunStart};
pub use retention::{
    CleanCounts, CleanProgress, CleanReport, CleanRequest, CleanTable, RunSelection,
};
pub use task_instances::{
    ClaimedTi, ClearReport, CorruptRow, NewTaskInstance, StateChange, TaskStates, TiFinish, TiKey,
    TiQuery, TiRow, TiTryRow,
};
pub use trigger::{
    TriggerError, TriggerRequest, new_dag_run, new_task_instances, run_id_timestamp,
};
pub use users::{AuditEvent, AuditRow, NewUser, SessionRow, UserChange, UserRow};
pub use variables::{Variable, check_variable_key};
pub use wake::{WAKE_SCHEDULER, WAKE_TRIGGERER, WAKE_WORKERS};
pub use warnings::{DagWarningRow, WARNING_CONNECTION, WARNING_NONEXISTENT_POOL};
pub use xcom::XcomRow;

/// Which engine a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("invalid database URL `{url}`: {reason}")]
    Url { url: String, reason: String },
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Invalid(String),
    /// A caller asked for a task instance transition the model forbids: a bug, not input.
    #[error("illegal transition: {0}")]
    IllegalTransition(#[from] flow_model::IllegalTransition),
    #[error("illegal transition: {0}")]
    IllegalRunTransition(#[from] flow_model::IllegalRunTransition),
}

impl StoreError {
    /// Whether the error is the database being unreachable or busy (a dropped connection, a
    /// pool timeout, a server shutting down, a lock or serialization conflict), so that the
    /// same call may well succeed later; not a problem with the data or the request.
    pub fn is_transient(&self) -> bool {
        let StoreError::Database(e) = self else {
            return false;
        };
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Protocol(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                // PostgreSQL classes 08 (connection), 53 (resources), 57 (operator
                // intervention: shutdown), serialization failures and deadlocks; SQLite's
                // BUSY (5) and LOCKED (6).
                code.starts_with("08")
                    || code.starts_with("53")
                    || code.starts_with("57")
                    || code == "40001"
                    || code == "40P01"
                    || code == "5"
                    || code == "6"
            }),
            _ => false,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A handle on the metadata database; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Backend,
    /// Reads (and, on PostgreSQL, writes).
    read: AnyPool,
    /// Writes. On SQLite a single connection, so writers in this process queue here.
    write: AnyPool,
    url_redacted: String,
    /// Kept for LISTEN connections on PostgreSQL; never logged.
    url: String,
    /// This store's own wake-ups (see [`wake::LocalWakes`]), shared by its clones.
    wakes: Arc<wake::LocalWakes>,
}

static DRIVERS: Once = Once::new();

/// Hides the password of a database URL, for logs and messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((creds, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match creds.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

impl Store {
    /// Connects to `postgres://...`, `sqlite://path` or a plain file path (SQLite). SQLite
    /// files are created if missing and opened in WAL mode with durable commits.
    pub async fn connect(url: &str) -> Result<Store> {
        Store::connect_sized(url, 8).await
    }

    /// [`Store::connect`] with `pool_size` connections per pool on PostgreSQL (one pool for
    /// writes, one for reads, plus one listening connection: a process opens up to
    /// `2 x pool_size + 1`). SQLite ignores it.
    pub async fn connect_sized(url: &str, pool_size: u32) -> Result<Store> {
        let pool_size = pool_size.max(1);
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let (backend, url) = normalize_url(url)?;
        let opts = AnyConnectOptions::from_str(&url).map_err(|e| StoreError::Url {
            url: redact_url(&url),
            reason: e.to_string(),
        })?;
        let store = match backend {
            Backend::Postgres => {
                // Two pools of 8 by default: as many connections per process as one pool of 16.
                let write = AnyPoolOptions::new()
                    .max_connections(pool_size)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect_with(opts.clone())
                    .await?;
                // Reads skip sqlx's ping before each acquire: it doubled the round trips of
                // every API request. A read on a connection that died fails once (callers
                // retry or answer 503) and the pool drops that connection.
                let read = AnyPoolOptions::new()
                    .max_connections(pool_size)
                    .acquire_timeout(Duration::from_secs(30))
                    .test_before_acquire(false)
                    .connect_with(opts)
                    .await?;
                Store {
                    backend,
                    read,
                    write,
                    url_redacted: redact_url(&url),
                    url: url.clone(),
                    wakes: Arc::default(),
                }
            }
            Backend::Sqlite => {
                // WAL lets readers run beside the writer; FULL makes every commit durable;
                // busy_timeout makes other processes wait. Each connection keeps its own page
                // cache: the readers' stay small (the kernel caches the file anyway), so that
                // an idle daemon stays small.
                let pool = |n: u32, cache_kib: u32| {
                    let pragmas = format!(
                        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; \
                         PRAGMA busy_timeout=30000; PRAGMA foreign_keys=ON; \
                         PRAGMA cache_size=-{cache_kib};"
                    );
                    AnyPoolOptions::new()
                        .max_connections(n)
                        .acquire_timeout(Duration::from_secs(60))
                        .after_connect(move |conn, _meta| {
                            let pragmas = pragmas.clone();
                            Box::pin(async move {
                                conn.execute(pragmas.as_str()).await?;
                                Ok(())
                            })
                        })
                };
                let write = pool(1, 2048).connect_with(opts.clone()).await?;
                let read = pool(4, 256).connect_with(opts).await?;
                Store {
                    backend,
                    read,
                    write,
                    url_redacted: redact_url(&url),
                    url: url.clone(),
                    wakes: Arc::default(),
                }
            }
        };
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// For statements over tables that grow or churn fast (the transition tail, the queued
    /// and running task instances): whether to keep the prepared statement. PostgreSQL plans
    /// a kept one once per connection and may keep that plan after the table has grown, and
    /// a plan made while `task_instance` was nearly empty scanned all of it under the
    /// queueing lock. Not kept there, the statement is planned each time with its values and
    /// the table's current size (a few tens of microseconds). SQLite plans from its indexes
    /// alone and keeps its statements.
    pub(crate) fn keep_statement(&self) -> bool {
        self.backend == Backend::Sqlite
    }

    /// The URL with its password hidden.
    pub fn redacted_url(&self) -> &str {
        &self.url_redacted
    }

    /// Starts a write transaction (`BEGIN IMMEDIATE` on SQLite: take the write lock up front
    /// rather than fail when a read turns into a write).
    pub(crate) async fn begin(&self) -> Result<Transaction<'static, Any>> {
        Ok(match self.backend {
            Backend::Postgres => self.write.begin().await?,
            Backend::Sqlite => {
                let tx = self.write.begin_with("BEGIN IMMEDIATE").await?;
                // The write lock is ours: what an earlier transaction notified and did not
                // commit was rolled back.
                self.wakes.begun();
                tx
            }
        })
    }

    /// Commits `tx`, then wakes this process's loops for what it notified (SQLite; on
    /// PostgreSQL NOTIFY does it). A commit through `tx.commit()` loses nothing: other
    /// processes, and this one's watcher, still see its wake-ups.
    pub(crate) async fn commit(&self, tx: Transaction<'static, Any>) -> Result<()> {
        let notified = self.wakes.take_pending();
        tx.commit().await?;
        self.wakes.committed(notified);
        Ok(())
    }

    fn migrator(&self) -> sqlx::migrate::Migrator {
        match self.backend {
            Backend::Postgres => sqlx::migrate!("../../migrations/postgres"),
            Backend::Sqlite => sqlx::migrate!("../../migrations/sqlite"),
        }
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<()> {
        self.migrator().run(&self.write).await?;
        Ok(())
    }

    /// Migrations known to this binary that the database has not applied yet.
    pub async fn pending_migrations(&self) -> Result<Vec<String>> {
        // Before the first migration the bookkeeping table does not exist: nothing applied.
        let applied: Vec<i64> = sqlx::query_scalar::<_, i64>(
            "SELECT version FROM _sqlx_migrations WHERE success = TRUE",
        )
        .fetch_all(&self.read)
        .await
        .unwrap_or_default();
        Ok(self
            .migrator()
            .iter()
            .filter(|m| !applied.contains(&m.version))
            .map(|m| format!("{} {}", m.version, m.description))
            .collect())
    }

    /// Migrations applied to the database that this binary does not know: a newer flow
    /// migrated it. Such a database must not be migrated or written by this binary.
    pub async fn unknown_migrations(&self) -> Result<Vec<i64>> {
        let applied: Vec<i64> = sqlx::query_scalar::<_, i64>(
            "SELECT version FROM _sqlx_migrations WHERE success = TRUE ORDER BY version",
        )
        .fetch_all(&self.read)
        .await
        .unwrap_or_default();
        let known: Vec<i64> = self.migrator().iter().map(|m| m.version).collect();
        Ok(applied.into_iter().filter(|v| !known.contains(v)).collect())
    }

    /// Drops every table and applies the migrations again.
    pub async fn reset(&self) -> Result<()> {
        let tables = [
            "dag_favorite",
            "dag_warning",
            "dag_version_log",
            "backfill",
            "callback_request",
            "dag_run_asset_event",
            "asset_dag_run_queue",
            "asset_event",
            "asset_reference",
            "asset",
            "variable",
            "dag_run_transition",
            "flow_meta",
            "dag_bundle_file",
            "dag_bundle_blob",
            "trigger",
            "connection",
            "audit_log",
            "web_session",
            "flow_user",
            "log_chunk",
            "xcom",
            "ti_transition",
            "task_instance_history",
            "task_instance",
            "dag_run",
            "import_error",
            "dag_code",
            "serialized_dag",
            "dag",
            "slot_pool",
            "job",
            "dag_version",
            "wake_signal",
            "_sqlx_migrations",
        ];
        for t in tables {
            // Table names are constants above, never input.
            sqlx::query(&format!("DROP TABLE IF EXISTS {t}"))
                .execute(&self.write)
                .await?;
        }
        self.migrate().await
    }

    /// Refreshes the planner's statistics and reclaims dead rows (`VACUUM ANALYZE` on
    /// PostgreSQL, `ANALYZE` on SQLite): what a database settles into after bulk loads, so that
    /// benchmarks measure that state rather than autovacuum catching up.
    pub async fn analyze(&self) -> Result<()> {
        let sql = match self.backend {
            Backend::Postgres => "VACUUM ANALYZE",
            Backend::Sqlite => "ANALYZE",
        };
        sqlx::query(sql).execute(&self.write).await?;
        Ok(())
    }

    /// A cheap round trip, for health checks.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.read).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.read.close().await;
        self.write.close().await;
    }

    pub(crate) fn read_pool(&self) -> &AnyPool {
        &self.read
    }

    /// Wakes the in-process loop of each channel in `wakes` ([`WAKE_SCHEDULER`],
    /// [`WAKE_WORKERS`], [`WAKE_TRIGGERER`]) when any process notifies that channel (see
    /// [`wake`]), until the process ends.
    pub fn spawn_wake_listener(&self, wakes: Vec<(&'static str, Arc<Notify>)>) {
        if wakes.is_empty() {
            return;
        }
        match self.backend {
            Backend::Postgres => {
                tokio::spawn(wake::listen_postgres(self.url.clone(), wakes));
            }
            Backend::Sqlite => {
                self.wakes.listen(&wakes);
                if !self.url.contains(":memory:") {
                    tokio::spawn(wake::watch_sqlite(
                        self.url.clone(),
                        self.wakes.clone(),
                        wakes,
                    ));
                }
            }
        }
    }
}

/// Creates the database a PostgreSQL URL names, if the server does not have it yet (through
/// the server's `postgres` database). Returns whether it was created. SQLite files are
/// created on connect, so a SQLite URL returns false.
pub async fn create_database_if_missing(url: &str) -> Result<bool> {
    let (backend, url) = normalize_url(url)?;
    if backend != Backend::Postgres {
        return Ok(false);
    }
    let bad = |reason: &str| StoreError::Url {
        url: redact_url(&url),
        reason: reason.to_owned(),
    };
    let (base, rest) = url
        .rsplit_once('/')
        .ok_or_else(|| bad("no database name"))?;
    let (name, query) = rest.split_once('?').unwrap_or((rest, ""));
    // The name goes into CREATE DATABASE, which cannot bind it: only plain names.
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(bad("the database name must be letters, digits and `_`"));
    }
    let admin_url = if query.is_empty() {
        format!("{base}/postgres")
    } else {
        format!("{base}/postgres?{query}")
    };
    let admin = Store::connect(&admin_url).await?;
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_optional(&admin.read)
        .await?;
    if exists.is_none() {
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin.write)
            .await?;
    }
    admin.close().await;
    Ok(exists.is_none())
}

fn normalize_url(url: &str) -> Result<(Backend, String)> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok((Backend::Postgres, url.to_owned()));
    }
    if let Some(rest) = url.strip_prefix("sqlite:") {
        let rest = rest.trim_start_matches("//");
        let sep = if rest.contains('?') { '&' } else { '?' };
        let url = if rest.contains("mode=") {
            format!("sqlite://{rest}")
        } else {
            format!("sqlite://{rest}{sep}mode=rwc")
        };
        return Ok((Backend::Sqlite, url));
    }
    if url.contains("://") {
        return Err(StoreError::Url {
            url: redact_url(url),
            reason: "only postgres:// and sqlite:// URLs are supported".into(),
        });
    }
    Ok((Backend::Sqlite, format!("sqlite://{url}?mode=rwc")))
}

/// Microseconds since the epoch, the storage form of every instant.
pub fn to_micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub fn from_micros(us: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(us).single().unwrap_or_default()
}

pub(crate) fn opt_from_micros(us: Option<i64>) -> Option<DateTime<Utc>> {
    us.map(from_micros)
}

/// How many rows of `cols` bound values one multi-row statement should carry on this
/// connection. SQLite looks up every `$n` placeholder by a linear scan of the statement's
/// parameter names (sqlx binds by name), so a statement's binding cost grows with the square of
/// its parameter count: there, statements stay near 128 parameters. PostgreSQL has no such cost;
/// 500 rows stay well under its 65,535-parameter limit.
pub(crate) fn rows_per_statement(conn: &sqlx::AnyConnection, cols: usize) -> usize {
    if conn.backend_name().eq_ignore_ascii_case("sqlite") {
        (128 / cols.max(1)).max(1)
    } else {
        500
    }
}

/// `$start, $start+1, ...` placeholders for an IN list of `n` values.
pub(crate) fn placeholders(start: usize, n: usize) -> String {
    (start..start + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            normalize_url("/tmp/x.db").unwrap(),
            (Backend::Sqlite, "sqlite:///tmp/x.db?mode=rwc".into())
        );
        assert_eq!(
            normalize_url("sqlite:///tmp/x.db").unwrap().1,
            "sqlite:///tmp/x.db?mode=rwc"
        );
        assert_eq!(
            normalize_url("postgres://u@h/db").unwrap().0,
            Backend::Postgres
        );
        assert!(normalize_url("mysql://h/db").is_err());
        assert_eq!(
            redact_url("postgres://flow:s3cret@db:5432/flow"),
            "postgres://flow:***@db:5432/flow"
        );
        assert_eq!(placeholders(3, 2), "$3, $4");
    }
}
