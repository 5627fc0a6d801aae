//! Backfills as Airflow 3 models them: one row per backfill of a DAG over a range of logical
//! dates; its runs are made (or existing ones cleared, as `reprocess_behavior` says) when it
//! is created, carry its id, and start within its own `max_active_runs`. Pausing holds its
//! queued runs; cancelling fails them and completes it. The CLI, the REST API and the web UI
//! all create backfills here.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use flow_dag::Dag;
use flow_dag::schedule::DagRunInfo;
use flow_model::{DagRunState, DagRunType};
use serde_json::Value as Json;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::trigger::{TriggerError, TriggerRequest, new_dag_run, new_task_instances};
use crate::{Result, Store, StoreError, TiKey, from_micros, opt_from_micros, to_micros};

/// Which existing runs a backfill runs again (Airflow's `ReprocessBehavior`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReprocessBehavior {
    /// Dates that have a run are left alone.
    None,
    /// Failed runs are cleared and run again.
    Failed,
    /// Finished runs (succeeded or failed) are cleared and run again.
    Completed,
}

impl ReprocessBehavior {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(Self::None),
            "failed" => Some(Self::Failed),
            "completed" => Some(Self::Completed),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Failed => "failed",
            Self::Completed => "completed",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct BackfillRow {
    pub id: i64,
    pub dag_id: String,
    pub from_date: DateTime<Utc>,
    pub to_date: DateTime<Utc>,
    pub dag_run_conf: Json,
    pub is_paused: bool,
    pub reprocess_behavior: String,
    pub max_active_runs: i64,
    pub run_backwards: bool,
    pub triggering_user: Option<String>,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// What a user asks for.
#[derive(Debug, Clone)]
pub struct NewBackfill {
    pub dag_id: String,
    pub from_date: DateTime<Utc>,
    pub to_date: DateTime<Utc>,
    pub conf: Json,
    pub reprocess: ReprocessBehavior,
    pub max_active_runs: i64,
    pub run_backwards: bool,
    pub triggering_user: Option<String>,
}

/// What a backfill does with one logical date.
#[derive(Debug, Clone, PartialEq)]
pub enum Planned {
    /// A new run.
    Create,
    /// The existing run (by id) is cleared and runs again.
    Reprocess(String),
    /// Left alone, and why.
    Skip(String),
}

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error("dag `{dag_id}` has a backfill running already (id {id}); cancel it or wait for it")]
    AlreadyRunning { dag_id: String, id: i64 },
    #[error("no run to create: {0}")]
    NothingToDo(String),
    #[error(transparent)]
    Trigger(#[from] TriggerError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for BackfillError {
    fn from(e: sqlx::Error) -> Self {
        BackfillError::Store(e.into())
    }
}

const COLUMNS: &str = "id, dag_id, from_date, to_date, dag_run_conf, is_paused, \
    reprocess_behavior, max_active_runs, run_backwards, triggering_user, created_at, \
    completed_at, updated_at";

fn row(r: &AnyRow) -> Result<BackfillRow> {
    let conf: String = r.try_get("dag_run_conf")?;
    Ok(BackfillRow {
        id: r.try_get("id")?,
        dag_id: r.try_get("dag_id")?,
        from_date: from_micros(r.try_get("from_date")?),
        to_date: from_micros(r.try_get("to_date")?),
        dag_run_conf: serde_json::from_str(&conf)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        is_paused: r.try_get::<i64, _>("is_paused")? != 0,
        reprocess_behavior: r.try_get("reprocess_behavior")?,
        max_active_runs: r.try_get("max_active_runs")?,
        run_backwards: r.try_get::<i64, _>("run_backwards")? != 0,
        triggering_user: r.try_get("triggering_user")?,
        created_at: from_micros(r.try_get("created_at")?),
        completed_at: opt_from_micros(r.try_get("completed_at")?),
        updated_at: from_micros(r.try_get("updated_at")?),
    })
}

impl Store {
    /// What a backfill over `infos` (the timetable's runs in the range, oldest first) would
    /// do with each logical date, in the order its runs would start.
    pub async fn backfill_plan(
        &self,
        dag_id: &str,
        infos: &[DagRunInfo],
        reprocess: ReprocessBehavior,
        run_backwards: bool,
    ) -> Result<Vec<(DagRunInfo, Planned)>> {
        let existing: HashMap<DateTime<Utc>, (String, DagRunState)> = self
            .dag_run_list(dag_id, 1_000_000)
            .await?
            .into_iter()
            .filter_map(|r| Some((r.logical_date?, (r.run_id, r.state))))
            .collect();
        let mut plan: Vec<(DagRunInfo, Planned)> = infos
            .iter()
            .map(|info| {
                let planned = match existing.get(&info.logical_date) {
                    None => Planned::Create,
                    Some((run_id, state)) => match (state, reprocess) {
                        (DagRunState::Queued | DagRunState::Running, _) => {
                            Planned::Skip(format!("run {run_id} is {state}"))
                        }
                        (DagRunState::Failed, ReprocessBehavior::Failed)
                        | (
                            DagRunState::Failed | DagRunState::Success,
                            ReprocessBehavior::Completed,
                        ) => Planned::Reprocess(run_id.clone()),
                        _ => Planned::Skip(format!(
                            "run {run_id} exists ({state}); reprocess_behavior is {}",
                            reprocess.as_str()
                        )),
                    },
                };
                (*info, planned)
            })
            .collect();
        if run_backwards {
            plan.reverse();
        }
        Ok(plan)
    }

    /// Creates a backfill: its row, a queued run per date without one, and the runs
    /// `reprocess_behavior` names cleared to run again, all carrying its id. Refused while
    /// the DAG has a backfill that has not completed. Returns the backfill and its run ids, in
    /// the order they start.
    pub async fn backfill_create(
        &self,
        dag: &Dag,
        dag_hash: &str,
        new: &NewBackfill,
        infos: &[DagRunInfo],
        now: DateTime<Utc>,
    ) -> std::result::Result<(BackfillRow, Vec<String>), BackfillError> {
        let plan = self
            .backfill_plan(&new.dag_id, infos, new.reprocess, new.run_backwards)
            .await?;
        let now_us = to_micros(now);
        let mut tx = self.begin().await?;
        // One backfill per DAG at a time, decided under the lock every run-starting
        // transaction takes (two creators cannot both see none).
        crate::queueing::lock_queueing(&mut tx, self.backend()).await?;
        if let Some(r) =
            sqlx::query("SELECT id FROM backfill WHERE dag_id = $1 AND completed_at IS NULL")
                .bind(&new.dag_id)
                .fetch_optional(&mut *tx)
                .await?
        {
            return Err(BackfillError::AlreadyRunning {
                dag_id: new.dag_id.clone(),
                id: r.try_get("id")?,
            });
        }
        if !plan.iter().any(|(_, p)| !matches!(p, Planned::Skip(_))) {
            return Err(BackfillError::NothingToDo(if plan.is_empty() {
                "the schedule has no logical date in the range".to_owned()
            } else {
                format!(
                    "every logical date in the range has a run (reprocess_behavior {})",
                    new.reprocess.as_str()
                )
            }));
        }
        let created = sqlx::query(&format!(
            "INSERT INTO backfill (dag_id, from_date, to_date, dag_run_conf, is_paused, \
             reprocess_behavior, max_active_runs, run_backwards, triggering_user, created_at, \
             updated_at) VALUES ($1, $2, $3, $4, 0, $5, $6, $7, $8, $9, $9) RETURNING {COLUMNS}"
        ))
        .bind(&new.dag_id)
        .bind(to_micros(new.from_date))
        .bind(to_micros(new.to_date))
        .bind(new.conf.to_string())
        .bind(new.reprocess.as_str())
        .bind(new.max_active_runs)
        .bind(i64::from(new.run_backwards))
        .bind(&new.triggering_user)
        .bind(now_us)
        .fetch_one(&mut *tx)
        .await?;
        let backfill = row(&created)?;
        let tis = new_task_instances(dag);
        let mut run_ids = Vec::new();
        let mut reprocess = Vec::new();
        for (info, planned) in &plan {
            match planned {
                Planned::Skip(_) => {}
                Planned::Reprocess(run_id) => {
                    sqlx::query(
                        "UPDATE dag_run SET backfill_id = $1 WHERE dag_id = $2 AND run_id = $3",
                    )
                    .bind(backfill.id)
                    .bind(&new.dag_id)
                    .bind(run_id)
                    .execute(&mut *tx)
                    .await?;
                    reprocess.push(run_id.clone());
                    run_ids.push(run_id.clone());
                }
                Planned::Create => {
                    let req = TriggerRequest {
                        run_id: None,
                        run_type: DagRunType::Backfill,
                        logical_date: Some(info.logical_date),
                        data_interval: Some((info.data_interval.start, info.data_interval.end)),
                        run_after: Some(info.run_after),
                        conf: new.conf.clone(),
                        note: None,
                        triggered_by: Some(match &new.triggering_user {
                            Some(u) => format!("backfill:{u}"),
                            None => "backfill".to_owned(),
                        }),
                    };
                    let run = new_dag_run(dag, dag_hash, &req, now)?;
                    if let Some(created) =
                        crate::dag_runs::create_in(&mut tx, &run, &tis, now_us).await?
                    {
                        sqlx::query("UPDATE dag_run SET backfill_id = $1 WHERE id = $2")
                            .bind(backfill.id)
                            .bind(created.id)
                            .execute(&mut *tx)
                            .await?;
                        run_ids.push(created.run_id);
                    }
                }
            }
        }
        crate::wake::notify_in(self, &mut tx, crate::WAKE_SCHEDULER).await?;
        self.commit(tx).await?;
        // Cleared after the backfill exists: a run cleared moves back to queued and is
        // started within the backfill's limit.
        for run_id in &reprocess {
            let keys: Vec<(TiKey, i64)> = self
                .ti_list_for_run(&new.dag_id, run_id)
                .await?
                .into_iter()
                .map(|t| {
                    let retries = dag.task(&t.key.task_id).map_or(0, |x| i64::from(x.retries));
                    (t.key, retries)
                })
                .collect();
            self.ti_clear(&keys, now).await?;
        }
        Ok((backfill, run_ids))
    }

    pub async fn backfill_get(&self, id: i64) -> Result<Option<BackfillRow>> {
        let r = sqlx::query(&format!("SELECT {COLUMNS} FROM backfill WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.read_pool())
            .await?;
        r.as_ref().map(row).transpose()
    }

    /// Backfills, newest first (of one DAG, or all), and how many there are.
    pub async fn backfill_list(
        &self,
        dag_id: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<BackfillRow>, i64)> {
        let total: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM backfill WHERE ($1 IS NULL OR dag_id = $1)")
                .bind(dag_id)
                .fetch_one(self.read_pool())
                .await?
                .try_get("n")?;
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM backfill WHERE ($1 IS NULL OR dag_id = $1) \
             ORDER BY id DESC LIMIT $2 OFFSET $3"
        ))
        .bind(dag_id)
        .bind(limit)
        .bind(offset)
        .fetch_all(self.read_pool())
        .await?;
        Ok((rows.iter().map(row).collect::<Result<_>>()?, total))
    }

    /// Backfills that have not completed, by id: what the scheduler starts runs for.
    pub async fn backfill_active(&self) -> Result<HashMap<i64, BackfillRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM backfill WHERE completed_at IS NULL"
        ))
        .fetch_all(self.read_pool())
        .await?;
        rows.iter().map(|r| row(r).map(|b| (b.id, b))).collect()
    }

    /// Pauses or unpauses a backfill that has not completed; `None` if there is none such.
    pub async fn backfill_set_paused(
        &self,
        id: i64,
        paused: bool,
        now: DateTime<Utc>,
    ) -> Result<Option<BackfillRow>> {
        let mut tx = self.begin().await?;
        let n = sqlx::query(
            "UPDATE backfill SET is_paused = $1, updated_at = $2 WHERE id = $3 \
             AND completed_at IS NULL",
        )
        .bind(i64::from(paused))
        .bind(to_micros(now))
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        if !paused {
            crate::wake::notify_in(self, &mut tx, crate::WAKE_SCHEDULER).await?;
        }
        self.commit(tx).await?;
        self.backfill_get(id).await
    }

    /// Cancels a backfill, as Airflow does: paused and completed now, its queued runs failed
    /// (running ones finish). `None` if there is no such backfill.
    pub async fn backfill_cancel(
        &self,
        id: i64,
        now: DateTime<Utc>,
    ) -> Result<Option<BackfillRow>> {
        let Some(b) = self.backfill_get(id).await? else {
            return Ok(None);
        };
        if b.completed_at.is_some() {
            return Ok(Some(b));
        }
        let now_us = to_micros(now);
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE backfill SET is_paused = 1, completed_at = $1, updated_at = $1 WHERE id = $2",
        )
        .bind(now_us)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let queued: Vec<String> =
            sqlx::query("SELECT run_id FROM dag_run WHERE backfill_id = $1 AND state = 'queued'")
                .bind(id)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get("run_id"))
                .collect::<std::result::Result<_, _>>()?;
        let changes: Vec<crate::transition::RunChange> = queued
            .into_iter()
            .map(|run_id| crate::transition::RunChange {
                dag_id: b.dag_id.clone(),
                run_id,
                reason: Some(format!("backfill {id} was cancelled")),
            })
            .collect();
        crate::transition::run_transition(
            &mut tx,
            self,
            flow_model::Actor::User,
            &[DagRunState::Queued],
            DagRunState::Failed,
            &changes,
            now_us,
        )
        .await?;
        self.commit(tx).await?;
        self.backfill_get(id).await
    }

    /// Completes the backfills among `ids` whose runs have all ended.
    pub async fn backfill_complete_if_done(&self, ids: &[i64], now: DateTime<Utc>) -> Result<()> {
        for id in ids {
            sqlx::query(
                "UPDATE backfill SET completed_at = $1, updated_at = $1 WHERE id = $2 \
                 AND completed_at IS NULL AND NOT EXISTS (SELECT 1 FROM dag_run \
                 WHERE backfill_id = $2 AND state IN ('queued', 'running'))",
            )
            .bind(to_micros(now))
            .bind(*id)
            .execute(&self.write)
            .await?;
        }
        Ok(())
    }
}
