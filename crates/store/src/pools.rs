//! Pools: their slots and what occupies them, for the API and the web UI (the scheduler reads
//! slots with [`Store::pool_list`] and occupancy under the queueing lock).

use sqlx::Row;

use crate::{Result, Store};

/// The pool every task without `pool:` uses; it cannot be deleted or renamed.
pub const DEFAULT_POOL: &str = "default_pool";

/// A pool with the slots its task instances take, by state (Airflow's `PoolResponse`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRow {
    pub name: String,
    pub slots: i64,
    pub description: String,
    /// Deferred task instances hold their slots too.
    pub include_deferred: bool,
    pub running: i64,
    pub queued: i64,
    pub scheduled: i64,
    pub deferred: i64,
}

impl PoolRow {
    /// Slots taken: running and queued, and deferred where the pool says so.
    pub fn occupied(&self) -> i64 {
        self.running
            + self.queued
            + if self.include_deferred {
                self.deferred
            } else {
                0
            }
    }

    /// Slots free (never below zero, even when a pool was shrunk under its load).
    pub fn open(&self) -> i64 {
        (self.slots - self.occupied()).max(0)
    }
}

/// What a pool change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolWrite {
    Done,
    /// No such pool (update, delete).
    Missing,
    /// A pool with that name exists (create, rename).
    Exists,
}

impl Store {
    /// Every pool with its occupancy, by name.
    pub async fn pool_rows(&self) -> Result<Vec<PoolRow>> {
        self.pool_rows_where(None).await
    }

    /// One pool with its occupancy.
    pub async fn pool_get(&self, name: &str) -> Result<Option<PoolRow>> {
        Ok(self.pool_rows_where(Some(name)).await?.into_iter().next())
    }

    async fn pool_rows_where(&self, name: Option<&str>) -> Result<Vec<PoolRow>> {
        let filter = if name.is_some() {
            "WHERE p.pool = $1"
        } else {
            ""
        };
        let sql = format!(
            "SELECT p.pool, p.slots, p.description, p.include_deferred, \
             CAST(COALESCE(SUM(CASE WHEN t.state = 'running' THEN t.pool_slots END), 0) AS BIGINT) AS running, \
             CAST(COALESCE(SUM(CASE WHEN t.state = 'queued' THEN t.pool_slots END), 0) AS BIGINT) AS queued, \
             CAST(COALESCE(SUM(CASE WHEN t.state = 'scheduled' THEN t.pool_slots END), 0) AS BIGINT) AS scheduled, \
             CAST(COALESCE(SUM(CASE WHEN t.state = 'deferred' THEN t.pool_slots END), 0) AS BIGINT) AS deferred \
             FROM slot_pool p LEFT JOIN task_instance t ON t.pool = p.pool \
             AND t.state IN ('running', 'queued', 'scheduled', 'deferred') \
             {filter} GROUP BY p.pool, p.slots, p.description, p.include_deferred ORDER BY p.pool"
        );
        let mut q = sqlx::query(&sql);
        if let Some(name) = name {
            q = q.bind(name);
        }
        let rows = q.fetch_all(self.read_pool()).await?;
        rows.iter()
            .map(|r| {
                Ok(PoolRow {
                    name: r.try_get("pool")?,
                    slots: r.try_get("slots")?,
                    description: r.try_get("description")?,
                    include_deferred: r.try_get::<i64, _>("include_deferred")? != 0,
                    running: r.try_get("running")?,
                    queued: r.try_get("queued")?,
                    scheduled: r.try_get("scheduled")?,
                    deferred: r.try_get("deferred")?,
                })
            })
            .collect()
    }

    /// Creates a pool; [`PoolWrite::Exists`] if one has the name.
    pub async fn pool_create(
        &self,
        name: &str,
        slots: i64,
        description: &str,
        include_deferred: bool,
    ) -> Result<PoolWrite> {
        let mut tx = self.begin().await?;
        let n = sqlx::query(
            "INSERT INTO slot_pool (pool, slots, description, include_deferred) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (pool) DO NOTHING",
        )
        .bind(name)
        .bind(slots)
        .bind(description)
        .bind(i64::from(include_deferred))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        self.finish_write(tx, n, PoolWrite::Exists).await
    }

    /// Changes a pool (its name too, when `new_name` differs; task instances keep the pool
    /// name they were created with, as in Airflow).
    pub async fn pool_update(
        &self,
        name: &str,
        new_name: &str,
        slots: i64,
        description: &str,
        include_deferred: bool,
    ) -> Result<PoolWrite> {
        let mut tx = self.begin().await?;
        if new_name != name {
            let taken: Option<String> =
                sqlx::query_scalar("SELECT pool FROM slot_pool WHERE pool = $1")
                    .bind(new_name)
                    .fetch_optional(&mut *tx)
                    .await?;
            if taken.is_some() {
                tx.rollback().await?;
                return Ok(PoolWrite::Exists);
            }
        }
        let n = sqlx::query(
            "UPDATE slot_pool SET pool = $1, slots = $2, description = $3, include_deferred = $4 \
             WHERE pool = $5",
        )
        .bind(new_name)
        .bind(slots)
        .bind(description)
        .bind(i64::from(include_deferred))
        .bind(name)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        self.finish_write(tx, n, PoolWrite::Missing).await
    }

    /// Deletes a pool (never [`DEFAULT_POOL`]: the caller refuses it).
    pub async fn pool_delete(&self, name: &str) -> Result<PoolWrite> {
        let mut tx = self.begin().await?;
        let n = sqlx::query("DELETE FROM slot_pool WHERE pool = $1 AND pool <> $2")
            .bind(name)
            .bind(DEFAULT_POOL)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        self.finish_write(tx, n, PoolWrite::Missing).await
    }

    /// Ends a pool write: when no row changed it rolls back and answers `unchanged`; else
    /// the DAG version moves (schedulers re-read pools with the DAG rows) and it commits.
    async fn finish_write(
        &self,
        mut tx: sqlx::Transaction<'static, sqlx::Any>,
        changed: u64,
        unchanged: PoolWrite,
    ) -> Result<PoolWrite> {
        if changed == 0 {
            tx.rollback().await?;
            return Ok(unchanged);
        }
        crate::dags::bump_dag_version(&mut tx).await?;
        self.commit(tx).await?;
        Ok(PoolWrite::Done)
    }
}
