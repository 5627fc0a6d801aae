//! Sensors that free their worker slot: `up_for_reschedule` (poke again later) and `deferred`
//! (a trigger, run by a triggerer, waits for the event). Both continue the same try: the next
//! claim keeps the try number and hands the worker `next_method` / `next_kwargs`.
//!
//! A trigger row is owned by one triggerer at a time (`triggerer_id`, kept alive by its
//! heartbeat); a triggerer that dies leaves rows that another takes over once stale. Firing a
//! trigger and resuming its task instance is one transaction, guarded by `state = 'deferred'`,
//! so a trigger fired twice (two triggerers across a takeover) resumes the task once.

use chrono::{DateTime, Utc};
use flow_model::TaskInstanceState as S;
use flow_model::transition::Actor;
use sqlx::Row;

use crate::task_instances::insert_transitions;
use crate::{Result, Store, TiKey, from_micros, opt_from_micros, to_micros};

/// A trigger as a triggerer runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct TriggerRow {
    pub id: i64,
    /// What kind of wait (`flow.triggers.DateTimeTrigger`, ...).
    pub classpath: String,
    pub kwargs: serde_json::Value,
    pub created_date: DateTime<Utc>,
    /// The earliest timeout of the task instances waiting on it.
    pub timeout_at: Option<DateTime<Utc>>,
}

/// What a deferring task waits for.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTrigger {
    pub classpath: String,
    pub kwargs: serde_json::Value,
    /// The task instance resumes to fail after this (the sensor's timeout).
    pub timeout_at: DateTime<Utc>,
}

/// `next_method` of a task instance resumed by its trigger's event.
pub const NEXT_EXECUTE_COMPLETE: &str = "execute_complete";
/// `next_method` of a task instance whose deferral timed out.
pub const NEXT_FAIL: &str = "__fail__";
/// `next_method` of a rescheduled sensor's next poke.
pub const NEXT_POKE: &str = "poke";

impl Store {
    /// Reschedule mode: the running try frees its slot until `at`. Guarded by the try and the
    /// worker, like a finish.
    pub async fn ti_reschedule(
        &self,
        key: &TiKey,
        try_number: i64,
        worker_id: &str,
        at: DateTime<Utc>,
        started_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let now_us = to_micros(now);
        let kwargs = serde_json::json!({"started_at": started_at.to_rfc3339()}).to_string();
        let mut tx = self.begin().await?;
        let n = sqlx::query(
            "UPDATE task_instance SET state = 'up_for_reschedule', next_retry_at = $1, \
             next_method = $2, next_kwargs = $3, worker_id = NULL, updated_at = $4 \
             WHERE dag_id = $5 AND run_id = $6 AND task_id = $7 AND map_index = $8 \
             AND try_number = $9 AND worker_id = $10 AND state = 'running'",
        )
        .bind(to_micros(at))
        .bind(NEXT_POKE)
        .bind(kwargs)
        .bind(now_us)
        .bind(&key.dag_id)
        .bind(&key.run_id)
        .bind(&key.task_id)
        .bind(key.map_index)
        .bind(try_number)
        .bind(worker_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        let reason = Some(format!("poke again at {}", at.to_rfc3339()));
        insert_transitions(
            &mut tx,
            &[(
                key.clone(),
                try_number,
                S::Running,
                S::UpForReschedule,
                reason,
            )],
            Actor::Worker,
            now_us,
        )
        .await?;
        crate::notify_in(self.backend(), &mut tx, crate::WAKE_SCHEDULER).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Deferrable mode: the running try hands its wait to a new trigger and frees its slot.
    pub async fn ti_defer(
        &self,
        key: &TiKey,
        try_number: i64,
        worker_id: &str,
        trigger: &NewTrigger,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let (classpath, kwargs, timeout_at) =
            (&trigger.classpath, &trigger.kwargs, trigger.timeout_at);
        let now_us = to_micros(now);
        let mut tx = self.begin().await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO trigger (classpath, kwargs, created_date) VALUES ($1, $2, $3) \
             RETURNING id",
        )
        .bind(classpath)
        .bind(kwargs.to_string())
        .bind(now_us)
        .fetch_one(&mut *tx)
        .await?;
        let n = sqlx::query(
            "UPDATE task_instance SET state = 'deferred', trigger_id = $1, trigger_timeout = $2, \
             next_method = $3, next_kwargs = NULL, worker_id = NULL, updated_at = $4 \
             WHERE dag_id = $5 AND run_id = $6 AND task_id = $7 AND map_index = $8 \
             AND try_number = $9 AND worker_id = $10 AND state = 'running'",
        )
        .bind(id)
        .bind(to_micros(timeout_at))
        .bind(NEXT_EXECUTE_COMPLETE)
        .bind(now_us)
        .bind(&key.dag_id)
        .bind(&key.run_id)
        .bind(&key.task_id)
        .bind(key.map_index)
        .bind(try_number)
        .bind(worker_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        insert_transitions(
            &mut tx,
            &[(
                key.clone(),
                try_number,
                S::Running,
                S::Deferred,
                Some(format!("deferred to trigger {id} ({classpath})")),
            )],
            Actor::Worker,
            now_us,
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Takes up to `limit` triggers nobody runs, or whose triggerer has been silent since
    /// `stale_before`, for `triggerer_id`. Returns every trigger it now runs that is not in
    /// `running` (the ids it already has).
    pub async fn trigger_claim(
        &self,
        triggerer_id: &str,
        limit: i64,
        stale_before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<TriggerRow>> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE trigger SET triggerer_id = $1, triggerer_heartbeat = $2 WHERE id IN ( \
             SELECT id FROM trigger WHERE triggerer_id IS NULL OR triggerer_heartbeat < $3 \
             ORDER BY id LIMIT $4)",
        )
        .bind(triggerer_id)
        .bind(to_micros(now))
        .bind(to_micros(stale_before))
        .bind(limit)
        .execute(&mut *tx)
        .await?;
        let rows = sqlx::query(
            "SELECT t.id, t.classpath, t.kwargs, t.created_date, \
             (SELECT MIN(ti.trigger_timeout) FROM task_instance ti WHERE ti.trigger_id = t.id) \
             AS timeout_at FROM trigger t WHERE t.triggerer_id = $1 ORDER BY t.id",
        )
        .bind(triggerer_id)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| {
                let kwargs: String = r.try_get("kwargs")?;
                Ok(TriggerRow {
                    id: r.try_get("id")?,
                    classpath: r.try_get("classpath")?,
                    kwargs: serde_json::from_str(&kwargs)
                        .map_err(|e| crate::StoreError::Corrupt(format!("trigger kwargs: {e}")))?,
                    created_date: from_micros(r.try_get("created_date")?),
                    timeout_at: opt_from_micros(r.try_get("timeout_at")?),
                })
            })
            .collect()
    }

    /// The triggerer is alive: its rows stay its own.
    pub async fn trigger_heartbeat(&self, triggerer_id: &str, now: DateTime<Utc>) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE trigger SET triggerer_heartbeat = $1 WHERE triggerer_id = $2")
            .bind(to_micros(now))
            .bind(triggerer_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The trigger's event happened: its task instances go back to `scheduled` carrying the
    /// event, and the trigger row goes. Returns how many task instances resumed (0 if they
    /// were cleared or marked meanwhile, or another triggerer fired first).
    pub async fn trigger_fire(
        &self,
        trigger_id: i64,
        event: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<usize> {
        self.trigger_end(
            trigger_id,
            NEXT_EXECUTE_COMPLETE,
            event,
            "trigger fired",
            now,
        )
        .await
    }

    /// The trigger itself failed (a bad connection, say): its task instances resume to fail.
    pub async fn trigger_fail(
        &self,
        trigger_id: i64,
        error: &str,
        now: DateTime<Utc>,
    ) -> Result<usize> {
        let event = serde_json::json!({ "error": error });
        self.trigger_end(trigger_id, NEXT_FAIL, &event, "trigger failed", now)
            .await
    }

    async fn trigger_end(
        &self,
        trigger_id: i64,
        next_method: &str,
        event: &serde_json::Value,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<usize> {
        let now_us = to_micros(now);
        let mut tx = self.begin().await?;
        let rows = sqlx::query(
            "UPDATE task_instance SET state = 'scheduled', next_method = $1, next_kwargs = $2, \
             trigger_id = NULL, trigger_timeout = NULL, scheduled_dttm = $3, updated_at = $3 \
             WHERE trigger_id = $4 AND state = 'deferred' \
             RETURNING dag_id, run_id, task_id, map_index, try_number",
        )
        .bind(next_method)
        .bind(event.to_string())
        .bind(now_us)
        .bind(trigger_id)
        .fetch_all(&mut *tx)
        .await?;
        let transitions = resumed(&rows, reason)?;
        insert_transitions(&mut tx, &transitions, Actor::Triggerer, now_us).await?;
        sqlx::query("DELETE FROM trigger WHERE id = $1")
            .bind(trigger_id)
            .execute(&mut *tx)
            .await?;
        if !transitions.is_empty() {
            crate::notify_in(self.backend(), &mut tx, crate::WAKE_SCHEDULER).await?;
        }
        tx.commit().await?;
        Ok(transitions.len())
    }

    /// Deferred task instances whose `trigger_timeout` passed resume to fail (Airflow's
    /// scheduler does the same), whether or not a triggerer is running.
    pub async fn ti_expire_deferrals(&self, now: DateTime<Utc>) -> Result<usize> {
        let now_us = to_micros(now);
        let mut tx = self.begin().await?;
        let event =
            serde_json::json!({"error": "the deferral timed out", "timeout": true}).to_string();
        let rows = sqlx::query(
            "UPDATE task_instance SET state = 'scheduled', next_method = $1, next_kwargs = $2, \
             trigger_id = NULL, trigger_timeout = NULL, scheduled_dttm = $3, updated_at = $3 \
             WHERE state = 'deferred' AND trigger_timeout < $3 \
             RETURNING dag_id, run_id, task_id, map_index, try_number",
        )
        .bind(NEXT_FAIL)
        .bind(event)
        .bind(now_us)
        .fetch_all(&mut *tx)
        .await?;
        let transitions = resumed(&rows, "deferral timed out")?;
        insert_transitions(&mut tx, &transitions, Actor::Triggerer, now_us).await?;
        tx.commit().await?;
        Ok(transitions.len())
    }

    /// Deletes triggers no deferred task instance waits on any more (cleared, marked, timed
    /// out). Returns how many went.
    pub async fn trigger_cleanup(&self) -> Result<u64> {
        let mut tx = self.begin().await?;
        let n = sqlx::query(
            "DELETE FROM trigger WHERE NOT EXISTS (SELECT 1 FROM task_instance ti \
             WHERE ti.trigger_id = trigger.id AND ti.state = 'deferred')",
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    /// How many triggers exist and how many task instances are deferred (for health).
    pub async fn trigger_counts(&self) -> Result<(i64, i64)> {
        let triggers: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM trigger")
            .fetch_one(self.read_pool())
            .await?;
        let deferred: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM task_instance WHERE state = 'deferred'")
                .fetch_one(self.read_pool())
                .await?;
        Ok((triggers, deferred))
    }
}

type Transition = (TiKey, i64, S, S, Option<String>);

fn resumed(rows: &[sqlx::any::AnyRow], reason: &str) -> Result<Vec<Transition>> {
    rows.iter()
        .map(|r| {
            Ok((
                TiKey {
                    dag_id: r.try_get("dag_id")?,
                    run_id: r.try_get("run_id")?,
                    task_id: r.try_get("task_id")?,
                    map_index: r.try_get("map_index")?,
                },
                r.try_get("try_number")?,
                S::Deferred,
                S::Scheduled,
                Some(reason.to_owned()),
            ))
        })
        .collect()
}
