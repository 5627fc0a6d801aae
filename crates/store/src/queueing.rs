//! The queueing critical section: limits that span rows (parallelism, pools, `max_active_*`)
//! are decided under one lock that every scheduler takes, over occupancy read inside that
//! lock, so any number of schedulers queue as one would.
//!
//! A scheduler first chooses candidates from its own view of the pass (cheap, possibly
//! stale); [`Store::ti_schedule_and_queue`] then takes the lock, re-reads what is queued and
//! running, and admits candidates in the scheduler's order with the same [`PoolUsage::admit`]
//! the scheduler used. Two schedulers that both saw a free slot cannot both fill it.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use flow_model::{Actor, DagRunState, TaskInstanceState as S};
use sqlx::{Any, Row, Transaction};

use crate::task_instances::{StateChange, TiKey, set_states_in};
use crate::transition::{RunChange, TiEffect, run_transition};
use crate::{Backend, Result, Store, to_micros};

/// `pg_advisory_xact_lock` key of the queueing critical section ("flowqueu" in ASCII): held
/// until the transaction that took it ends, so a scheduler that dies releases it.
const QUEUE_LOCK_KEY: i64 = 0x666c_6f77_7175_6575;

/// A scheduled task instance a scheduler wants queued, with the limits it must fit in.
#[derive(Debug, Clone)]
pub struct QueueRequest {
    pub key: TiKey,
    pub pool: String,
    pub pool_slots: i64,
    /// The DAG's `max_active_tasks`.
    pub max_active_tasks: i64,
    pub max_active_tis_per_dag: Option<i64>,
    pub max_active_tis_per_dagrun: Option<i64>,
    /// Recorded with the transition to queued (a queue no live worker serves, say).
    pub reason: Option<String>,
}

/// Slots in use per pool, queued + running counts per DAG, task and run's task: the
/// occupancy a queueing decision is made against.
#[derive(Debug, Clone, Default)]
pub struct PoolUsage {
    /// pool -> (total slots, slots occupied by queued or running task instances)
    pub pools: HashMap<String, (i64, i64)>,
    /// dag_id -> queued + running task instances
    pub per_dag: HashMap<String, i64>,
    /// (dag_id, task_id) -> queued + running task instances
    pub per_task: HashMap<(String, String), i64>,
    /// (dag_id, run_id, task_id) -> queued + running task instances
    pub per_run_task: HashMap<(String, String, String), i64>,
    /// all queued + running task instances
    pub total: i64,
}

/// Why a candidate was not queued (the first limit it hit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Parallelism,
    MaxActiveTasks,
    MaxActiveTisPerDag,
    MaxActiveTisPerDagrun,
    /// The pool is full, or does not exist (zero slots).
    Pool,
}

impl PoolUsage {
    /// Counts one queued or running task instance.
    pub fn add(&mut self, key: &TiKey, pool: &str, pool_slots: i64) {
        self.pools.entry(pool.to_owned()).or_insert((0, 0)).1 += pool_slots;
        *self.per_dag.entry(key.dag_id.clone()).or_default() += 1;
        *self
            .per_task
            .entry((key.dag_id.clone(), key.task_id.clone()))
            .or_default() += 1;
        *self
            .per_run_task
            .entry((key.dag_id.clone(), key.run_id.clone(), key.task_id.clone()))
            .or_default() += 1;
        self.total += 1;
    }

    /// Whether `r` fits within every limit; if so, counts it as queued.
    pub fn admit(&mut self, r: &QueueRequest, parallelism: i64) -> Result<(), Refusal> {
        if self.total >= parallelism {
            return Err(Refusal::Parallelism);
        }
        let dag_n = self.per_dag.get(&r.key.dag_id).copied().unwrap_or(0);
        if dag_n >= r.max_active_tasks {
            return Err(Refusal::MaxActiveTasks);
        }
        let task_key = (r.key.dag_id.clone(), r.key.task_id.clone());
        let task_n = self.per_task.get(&task_key).copied().unwrap_or(0);
        if r.max_active_tis_per_dag.is_some_and(|m| task_n >= m) {
            return Err(Refusal::MaxActiveTisPerDag);
        }
        let run_task_key = (
            r.key.dag_id.clone(),
            r.key.run_id.clone(),
            r.key.task_id.clone(),
        );
        let run_task_n = self.per_run_task.get(&run_task_key).copied().unwrap_or(0);
        if r.max_active_tis_per_dagrun.is_some_and(|m| run_task_n >= m) {
            return Err(Refusal::MaxActiveTisPerDagrun);
        }
        // A pool that does not exist has no slots; one of -1 slots has no limit.
        let (slots, used) = self.pools.get(&r.pool).copied().unwrap_or((0, 0));
        if slots >= 0 && used + r.pool_slots > slots {
            return Err(Refusal::Pool);
        }
        self.add(&r.key, &r.pool, r.pool_slots);
        Ok(())
    }
}

/// A queued run a scheduler wants to start, with its DAG's `max_active_runs`.
#[derive(Debug, Clone)]
pub struct RunStart {
    pub dag_id: String,
    pub run_id: String,
    /// The DAG's, or for a backfill's run the backfill's.
    pub max_active_runs: i64,
    /// A backfill's runs count toward its own limit only; the others toward the DAG's.
    pub backfill_id: Option<i64>,
}

/// What [`Store::ti_schedule_and_queue`] did.
#[derive(Debug, Clone, Default)]
pub struct QueueOutcome {
    /// Per state change: whether it was applied.
    pub applied: Vec<bool>,
    /// Task instances queued.
    pub queued: Vec<TiKey>,
}

impl Store {
    /// Applies a pass's guarded state changes, then queues `candidates` in their order within
    /// `parallelism`, the pools' slots and each candidate's limits, all in one transaction.
    /// With candidates, the transaction first takes the queueing lock (PostgreSQL: a
    /// transaction-scoped advisory lock; SQLite: its write lock) and counts what is queued and
    /// running after taking it, so concurrent schedulers never exceed a limit together.
    pub async fn ti_schedule_and_queue(
        &self,
        changes: &[StateChange],
        candidates: &[QueueRequest],
        parallelism: i64,
        now: DateTime<Utc>,
    ) -> Result<QueueOutcome> {
        if changes.is_empty() && candidates.is_empty() {
            return Ok(QueueOutcome::default());
        }
        let now_us = to_micros(now);
        let mut tx = self.begin().await?;
        if !candidates.is_empty() {
            // Before any write: a scheduler holding row locks must not wait for this lock
            // while the holder waits for those rows.
            lock_queueing(&mut tx, self.backend()).await?;
        }
        let effect = TiEffect::default();
        let applied =
            set_states_in(&mut tx, self, changes, Actor::Scheduler, &effect, now_us).await?;
        let mut queued = Vec::new();
        if !candidates.is_empty() {
            let mut usage = usage_in(&mut tx, self.keep_statement()).await?;
            let admitted: Vec<StateChange> = candidates
                .iter()
                .filter(|c| usage.admit(c, parallelism).is_ok())
                .map(|c| StateChange {
                    key: c.key.clone(),
                    from: vec![S::Scheduled],
                    to: S::Queued,
                    reason: c.reason.clone(),
                    next_retry_at: None,
                })
                .collect();
            let done =
                set_states_in(&mut tx, self, &admitted, Actor::Scheduler, &effect, now_us).await?;
            queued = admitted
                .into_iter()
                .zip(done)
                .filter(|(_, ok)| *ok)
                .map(|(c, _)| c.key)
                .collect();
        }
        self.commit(tx).await?;
        Ok(QueueOutcome { applied, queued })
    }

    /// Starts queued runs in the order given, each only while its DAG has fewer than its
    /// `max_active_runs` running runs, counted under the queueing lock so that concurrent
    /// schedulers never start more between them. Returns the (dag_id, run_id) started.
    pub async fn dag_run_start_queued(
        &self,
        candidates: &[RunStart],
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, String)>> {
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin().await?;
        lock_queueing(&mut tx, self.backend()).await?;
        let mut running: HashMap<(String, Option<i64>), i64> = HashMap::new();
        for r in sqlx::query(
            "SELECT dag_id, backfill_id, COUNT(*) AS n FROM dag_run WHERE state = 'running' \
             GROUP BY dag_id, backfill_id",
        )
        .fetch_all(&mut *tx)
        .await?
        {
            running.insert(
                (r.try_get("dag_id")?, r.try_get("backfill_id")?),
                r.try_get("n")?,
            );
        }
        let mut admitted = Vec::new();
        for c in candidates {
            let n = running
                .entry((c.dag_id.clone(), c.backfill_id))
                .or_default();
            if *n >= c.max_active_runs {
                continue;
            }
            *n += 1;
            admitted.push(RunChange {
                dag_id: c.dag_id.clone(),
                run_id: c.run_id.clone(),
                reason: None,
            });
        }
        let started = run_transition(
            &mut tx,
            self,
            Actor::Scheduler,
            &[DagRunState::Queued],
            DagRunState::Running,
            &admitted,
            to_micros(now),
        )
        .await?;
        self.commit(tx).await?;
        Ok(started
            .into_iter()
            .map(|(i, _)| (admitted[i].dag_id.clone(), admitted[i].run_id.clone()))
            .collect())
    }

    /// Occupancy of pools, DAGs and tasks by queued and running task instances.
    pub async fn ti_pool_usage(&self) -> Result<PoolUsage> {
        let mut tx = self.read_pool().begin().await?;
        let usage = usage_in(&mut tx, self.keep_statement()).await?;
        tx.rollback().await?;
        Ok(usage)
    }
}

pub(crate) async fn lock_queueing(
    tx: &mut Transaction<'static, Any>,
    backend: Backend,
) -> Result<()> {
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(QUEUE_LOCK_KEY)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Pool slots and what queued and running (and, where a pool says so, deferred) task
/// instances occupy, read in `tx`.
async fn usage_in(tx: &mut Transaction<'static, Any>, keep: bool) -> Result<PoolUsage> {
    let mut usage = PoolUsage::default();
    for r in sqlx::query("SELECT pool, slots FROM slot_pool")
        .fetch_all(&mut **tx)
        .await?
    {
        usage
            .pools
            .insert(r.try_get("pool")?, (r.try_get("slots")?, 0));
    }
    let rows = sqlx::query(
        "SELECT dag_id, run_id, task_id, pool, CAST(SUM(pool_slots) AS BIGINT) AS slots, \
         COUNT(*) AS n FROM task_instance WHERE state IN ('queued', 'running') \
         GROUP BY dag_id, run_id, task_id, pool",
    )
    .persistent(keep)
    .fetch_all(&mut **tx)
    .await?;
    for r in rows {
        let dag_id: String = r.try_get("dag_id")?;
        let run_id: String = r.try_get("run_id")?;
        let task_id: String = r.try_get("task_id")?;
        let pool: String = r.try_get("pool")?;
        let slots: i64 = r.try_get("slots")?;
        let n: i64 = r.try_get("n")?;
        usage.pools.entry(pool).or_insert((0, 0)).1 += slots;
        *usage.per_dag.entry(dag_id.clone()).or_default() += n;
        *usage
            .per_task
            .entry((dag_id.clone(), task_id.clone()))
            .or_default() += n;
        *usage
            .per_run_task
            .entry((dag_id, run_id, task_id))
            .or_default() += n;
        usage.total += n;
    }
    // A pool that includes deferred task instances counts their slots too (Airflow 2.7's
    // `include_deferred`); they take no worker slot, so no other limit counts them.
    let deferred = sqlx::query(
        "SELECT t.pool, CAST(SUM(t.pool_slots) AS BIGINT) AS slots FROM task_instance t \
         JOIN slot_pool p ON p.pool = t.pool AND p.include_deferred = 1 \
         WHERE t.state = 'deferred' GROUP BY t.pool",
    )
    .persistent(keep)
    .fetch_all(&mut **tx)
    .await?;
    for r in deferred {
        let slots: i64 = r.try_get("slots")?;
        usage.pools.entry(r.try_get("pool")?).or_insert((0, 0)).1 += slots;
    }
    Ok(usage)
}
