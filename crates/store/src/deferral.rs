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

use crate::task_instances::key_of;
use crate::transition::{TiChange, TiEffect, TiMove, ti_transition};
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
        let kwargs = serde_json::json!({"started_at": started_at.to_rfc3339()}).to_string();
        let change = TiChange {
            try_number: Some(try_number),
            next_retry_at: Some(to_micros(at)),
            ..TiChange::new(key.clone()).reason(Some(format!("poke again at {}", at.to_rfc3339())))
        };
        let effect = TiEffect {
            worker_is: Some(worker_id.to_owned()),
            next_method: Some(NEXT_POKE.to_owned()),
            next_kwargs: Some(kwargs),
            ..TiEffect::default()
        };
        let mut tx = self.begin().await?;
        let applied = ti_transition(
            &mut tx,
            self,
            TiMove {
                actor: Actor::Worker,
                from: &[S::Running],
                to: S::UpForReschedule,
                effect: &effect,
            },
            &[change],
            to_micros(now),
        )
        .await?;
        self.commit(tx).await?;
        Ok(!applied.is_empty())
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
        let change = TiChange {
            try_number: Some(try_number),
            ..TiChange::new(key.clone())
                .reason(Some(format!("deferred to trigger {id} ({classpath})")))
        };
        let effect = TiEffect {
            worker_is: Some(worker_id.to_owned()),
            next_method: Some(NEXT_EXECUTE_COMPLETE.to_owned()),
            trigger: Some((id, to_micros(timeout_at))),
            ..TiEffect::default()
        };
        let applied = ti_transition(
            &mut tx,
            self,
            TiMove {
                actor: Actor::Worker,
                from: &[S::Running],
                to: S::Deferred,
                effect: &effect,
            },
            &[change],
            now_us,
        )
        .await?;
        if applied.is_empty() {
            tx.rollback().await?;
            return Ok(false);
        }
        crate::wake::notify_in(self, &mut tx, crate::WAKE_TRIGGERER).await?;
        self.commit(tx).await?;
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
        self.commit(tx).await?;
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
        self.commit(tx).await?;
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
        let waiting = deferred_where(
            &mut tx,
            self.backend(),
            "trigger_id = $1",
            trigger_id,
            reason,
        )
        .await?;
        let effect = TiEffect {
            next_method: Some(next_method.to_owned()),
            next_kwargs: Some(event.to_string()),
            ..TiEffect::default()
        };
        let applied = ti_transition(
            &mut tx,
            self,
            TiMove {
                actor: Actor::Triggerer,
                from: &[S::Deferred],
                to: S::Scheduled,
                effect: &effect,
            },
            &waiting,
            now_us,
        )
        .await?;
        sqlx::query("DELETE FROM trigger WHERE id = $1")
            .bind(trigger_id)
            .execute(&mut *tx)
            .await?;
        self.commit(tx).await?;
        Ok(applied.len())
    }

    /// Deferred task instances whose `trigger_timeout` passed resume to fail (Airflow's
    /// scheduler does the same), whether or not a triggerer is running. `actor` is whoever
    /// calls: the scheduler, or a triggerer.
    pub async fn ti_expire_deferrals(&self, actor: Actor, now: DateTime<Utc>) -> Result<usize> {
        let now_us = to_micros(now);
        let mut tx = self.begin().await?;
        let expired = deferred_where(
            &mut tx,
            self.backend(),
            "trigger_timeout < $1",
            now_us,
            "deferral timed out",
        )
        .await?;
        let event =
            serde_json::json!({"error": "the deferral timed out", "timeout": true}).to_string();
        let effect = TiEffect {
            next_method: Some(NEXT_FAIL.to_owned()),
            next_kwargs: Some(event),
            ..TiEffect::default()
        };
        let applied = ti_transition(
            &mut tx,
            self,
            TiMove {
                actor,
                from: &[S::Deferred],
                to: S::Scheduled,
                effect: &effect,
            },
            &expired,
            now_us,
        )
        .await?;
        self.commit(tx).await?;
        Ok(applied.len())
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
        self.commit(tx).await?;
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

/// Deferred task instances matching `condition` (over `task_instance`, with `$1` bound to
/// `value`), locked on PostgreSQL, as changes with `reason`.
async fn deferred_where(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    backend: crate::Backend,
    condition: &str,
    value: i64,
    reason: &str,
) -> Result<Vec<TiChange>> {
    let lock = match backend {
        crate::Backend::Postgres => " FOR UPDATE",
        crate::Backend::Sqlite => "",
    };
    // `condition` is one of this module's constants, never input.
    let rows = sqlx::query(&format!(
        "SELECT dag_id, run_id, task_id, map_index FROM task_instance \
         WHERE state = 'deferred' AND {condition}{lock}"
    ))
    .bind(value)
    .fetch_all(&mut **tx)
    .await?;
    rows.iter()
        .map(|r| Ok(TiChange::new(key_of(r)?).reason(Some(reason.to_owned()))))
        .collect()
}
