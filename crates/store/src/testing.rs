//! Fresh databases for tests: a SQLite file in a temporary folder, or a new PostgreSQL
//! database on the server at `FLOW_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`), dropped afterwards.
//!
//! Outside CI a missing PostgreSQL server skips those tests loudly; with `CI=true` it fails.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Backend, Result, Store, StoreError};

/// A throwaway database. Call [`TestDb::drop_db`] at the end of a test.
#[derive(Debug)]
pub struct TestDb {
    pub store: Store,
    pub url: String,
    admin_url: Option<String>,
    db_name: Option<String>,
    dir: Option<PathBuf>,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{prefix}_{}_{n}_{nanos}", std::process::id())
}

/// The PostgreSQL server tests use.
pub fn postgres_admin_url() -> String {
    std::env::var("FLOW_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

fn with_database(url: &str, db: &str) -> String {
    match url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{db}"),
        None => format!("{url}/{db}"),
    }
}

impl TestDb {
    /// A migrated SQLite database in a new temporary folder.
    pub async fn sqlite() -> Result<TestDb> {
        let dir = std::env::temp_dir().join(unique("flow_test"));
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let url = dir.join("flow.db").display().to_string();
        let store = Store::connect(&url).await?;
        store.migrate().await?;
        Ok(TestDb {
            store,
            url,
            admin_url: None,
            db_name: None,
            dir: Some(dir),
        })
    }

    /// A migrated PostgreSQL database, or `None` (with a loud message) when no server is
    /// reachable outside CI. Under `CI=true` an unreachable server is an error.
    pub async fn postgres() -> Result<Option<TestDb>> {
        let admin_url = postgres_admin_url();
        let admin = match Store::connect(&admin_url).await {
            Ok(s) => s,
            Err(e) => {
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    return Err(StoreError::Invalid(format!(
                        "CI=true but PostgreSQL at {} is unreachable: {e}",
                        crate::redact_url(&admin_url)
                    )));
                }
                eprintln!(
                    "SKIPPED: PostgreSQL at {} unreachable ({e}); set FLOW_TEST_DATABASE_URL",
                    crate::redact_url(&admin_url)
                );
                return Ok(None);
            }
        };
        let name = unique("flow_test");
        // The name is generated above from digits and underscores, never from input.
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(admin.read_pool())
            .await?;
        admin.close().await;
        let url = with_database(&admin_url, &name);
        let store = Store::connect(&url).await?;
        store.migrate().await?;
        Ok(Some(TestDb {
            store,
            url,
            admin_url: Some(admin_url),
            db_name: Some(name),
            dir: None,
        }))
    }

    /// Both backends (PostgreSQL only when reachable, see [`TestDb::postgres`]).
    pub async fn all() -> Result<Vec<TestDb>> {
        let mut out = vec![TestDb::sqlite().await?];
        if let Some(pg) = TestDb::postgres().await? {
            out.push(pg);
        }
        Ok(out)
    }

    pub fn backend(&self) -> Backend {
        self.store.backend()
    }

    /// Kills every connection to this PostgreSQL database (as a server restart would), from
    /// an administrative connection. Returns how many were killed; 0 on SQLite.
    pub async fn terminate_connections(&self) -> Result<u64> {
        let (Some(admin_url), Some(name)) = (&self.admin_url, &self.db_name) else {
            return Ok(0);
        };
        let admin = Store::connect(admin_url).await?;
        let n = sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
        )
        .bind(name)
        .fetch_all(admin.read_pool())
        .await?
        .len();
        admin.close().await;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Every transition recorded in this database that the model's tables forbid, described;
    /// empty when all of them were legal. Reads through a connection of its own, so it works
    /// after the test closed its store (or a `flow` process wrote everything).
    pub async fn illegal_transitions(&self) -> Result<Vec<String>> {
        let store = Store::connect(&self.url).await?;
        let found = store.illegal_transitions().await;
        store.close().await;
        found
    }

    /// Checks that every recorded transition was legal ([`TestDb::illegal_transitions`]),
    /// then closes the store and removes the database. An illegal transition is an error,
    /// after the database is gone.
    pub async fn drop_db(self) -> Result<()> {
        let illegal = self.illegal_transitions().await;
        self.drop_unchecked().await?;
        let illegal = illegal?;
        if illegal.is_empty() {
            return Ok(());
        }
        Err(StoreError::Invalid(format!(
            "the database recorded transitions the model forbids:\n{}",
            illegal.join("\n")
        )))
    }

    /// Closes the store and removes the database without checking its transitions (for tests
    /// that write rows by hand).
    pub async fn drop_unchecked(self) -> Result<()> {
        self.store.close().await;
        if let (Some(admin_url), Some(name)) = (&self.admin_url, &self.db_name) {
            let admin = Store::connect(admin_url).await?;
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(admin.read_pool())
                .await?;
            admin.close().await;
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        Ok(())
    }
}

impl Store {
    /// Runs a statement as it is: for tests that write what flow itself never would (a
    /// corrupt row, a row from the past). Returns the rows affected.
    pub async fn execute_raw(&self, sql: &str) -> Result<u64> {
        Ok(sqlx::query(sql).execute(&self.write).await?.rows_affected())
    }

    /// `SELECT COUNT(*) FROM {from}`: for tests that check what a statement left behind
    /// (`from` is the test's own text, a table and an optional `WHERE`).
    pub async fn count_raw(&self, from: &str) -> Result<i64> {
        Ok(sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {from}"))
            .fetch_one(self.read_pool())
            .await?)
    }

    /// Replays every recorded task instance and dag run transition through the model's
    /// tables (`flow_model::check_transition`, `check_run_transition`) and describes those
    /// it forbids, with how often each happened.
    pub async fn illegal_transitions(&self) -> Result<Vec<String>> {
        use flow_model::{DagRunState, TaskInstanceState};
        let mut out = self
            .illegal_in("ti_transition", "task instance", |f, t, a| {
                match (TaskInstanceState::parse(f), TaskInstanceState::parse(t)) {
                    (Ok(f), Ok(t)) => {
                        flow_model::check_transition(f, t, a).map_err(|e| e.to_string())
                    }
                    _ => Err("unknown state".to_owned()),
                }
            })
            .await?;
        // A run's creation is recorded with no from-state: nothing to check.
        out.extend(
            self.illegal_in("dag_run_transition", "dag run", |f, t, a| {
                match (DagRunState::parse(f), DagRunState::parse(t)) {
                    (Ok(f), Ok(t)) => {
                        flow_model::check_run_transition(f, t, a).map_err(|e| e.to_string())
                    }
                    _ => Err("unknown state".to_owned()),
                }
            })
            .await?,
        );
        Ok(out)
    }

    /// The distinct (from, to, actor) rows of a transition table that `judge` refuses.
    async fn illegal_in(
        &self,
        table: &str,
        what: &str,
        judge: impl Fn(&str, &str, flow_model::Actor) -> std::result::Result<(), String>,
    ) -> Result<Vec<String>> {
        use sqlx::Row;
        // The table name is one of the two constants above, never input.
        let rows = sqlx::query(&format!(
            "SELECT from_state, to_state, actor, COUNT(*) AS n FROM {table} \
             WHERE from_state IS NOT NULL \
             GROUP BY from_state, to_state, actor ORDER BY from_state, to_state, actor"
        ))
        .fetch_all(self.read_pool())
        .await?;
        let mut out = Vec::new();
        for r in rows {
            let (from, to, actor): (String, String, String) =
                (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
            let n: i64 = r.try_get("n")?;
            let legal = match actor.parse::<flow_model::Actor>() {
                Ok(a) => judge(&from, &to, a),
                Err(_) => Err("unknown actor".to_owned()),
            };
            if let Err(e) = legal {
                out.push(format!("{what} {from} -> {to} by {actor} ({n}x): {e}"));
            }
        }
        Ok(out)
    }

    /// A connection's stored columns as the database holds them (tokens, not secrets), so
    /// tests can prove nothing readable is at rest.
    /// A variable's value column as stored (a Fernet token for a secret one).
    pub async fn raw_variable_value(&self, key: &str) -> Result<String> {
        Ok(
            sqlx::query_scalar("SELECT val FROM variable WHERE key = $1")
                .bind(key)
                .fetch_one(self.read_pool())
                .await?,
        )
    }

    pub async fn raw_connection_columns(&self, conn_id: &str) -> Result<String> {
        use sqlx::Row;
        let row = sqlx::query(
            "SELECT COALESCE(password, '') AS p, COALESCE(extra, '') AS e FROM connection \
             WHERE conn_id = $1",
        )
        .bind(conn_id)
        .fetch_one(self.read_pool())
        .await?;
        Ok(format!(
            "{} {}",
            row.try_get::<String, _>("p")?,
            row.try_get::<String, _>("e")?
        ))
    }
}
