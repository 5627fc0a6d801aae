//! Callback requests: the callbacks and notifiers an event fired, made in the transaction that
//! records the event (a try's outcome, a run's end), claimed by a worker's callback runner with
//! a lease, and retried with a backoff. A callback never changes a task instance or a run: it
//! only reads them and writes its own row (and log lines).

use chrono::{DateTime, Duration, Utc};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Backend, Result, Store, from_micros, opt_from_micros, to_micros};

/// One callback of an event, to run.
#[derive(Debug, Clone, PartialEq)]
pub struct NewCallback {
    /// `on_failure_callback`, ...
    pub event: String,
    /// Its position in the task's (or DAG's) list for the event.
    pub index: i64,
    /// What it is, for pages and logs (`webhook hooks.example.com`).
    pub description: String,
    /// The state that fired it.
    pub state: String,
    pub reason: Option<String>,
}

/// Whose event: a task instance's try, or a run (no task).
#[derive(Debug, Clone, PartialEq)]
pub struct CallbackTarget {
    pub dag_id: String,
    pub run_id: String,
    pub task_id: Option<String>,
    pub map_index: i64,
    pub try_number: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CallbackRow {
    pub id: i64,
    pub target: CallbackTarget,
    pub event: String,
    pub index: i64,
    pub description: String,
    pub state: String,
    pub reason: Option<String>,
    /// `pending`, `running`, `success` or `failed`.
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: DateTime<Utc>,
    pub claimed_by: Option<String>,
    pub claimed_at: Option<DateTime<Utc>>,
    pub log: String,
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, dag_id, run_id, task_id, map_index, try_number, event, callback_index, \
    description, state, reason, status, attempts, next_attempt_at, claimed_by, claimed_at, log, \
    created_at";

fn row(r: &AnyRow) -> Result<CallbackRow> {
    Ok(CallbackRow {
        id: r.try_get("id")?,
        target: CallbackTarget {
            dag_id: r.try_get("dag_id")?,
            run_id: r.try_get("run_id")?,
            task_id: r.try_get("task_id")?,
            map_index: r.try_get("map_index")?,
            try_number: r.try_get("try_number")?,
        },
        event: r.try_get("event")?,
        index: r.try_get("callback_index")?,
        description: r.try_get("description")?,
        state: r.try_get("state")?,
        reason: r.try_get("reason")?,
        status: r.try_get("status")?,
        attempts: r.try_get("attempts")?,
        next_attempt_at: from_micros(r.try_get("next_attempt_at")?),
        claimed_by: r.try_get("claimed_by")?,
        claimed_at: opt_from_micros(r.try_get("claimed_at")?),
        log: r.try_get("log")?,
        created_at: from_micros(r.try_get("created_at")?),
    })
}

/// How long a claimed callback is its runner's: past this, another runner may take it (its
/// runner died). Longer than any callback may run.
pub const CALLBACK_LEASE: Duration = Duration::minutes(5);

/// Attempts before a callback is given up.
pub const CALLBACK_MAX_ATTEMPTS: i64 = 3;

/// The wait before attempt `n + 1` after `n` failed: 5 s, 30 s.
fn backoff(attempts: i64) -> Duration {
    match attempts {
        0 | 1 => Duration::seconds(5),
        _ => Duration::seconds(30),
    }
}

/// Records callbacks to run, in the caller's transaction.
pub(crate) async fn insert_in(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    target: &CallbackTarget,
    callbacks: &[NewCallback],
    now_us: i64,
) -> Result<()> {
    for c in callbacks {
        sqlx::query(
            "INSERT INTO callback_request (dag_id, run_id, task_id, map_index, try_number, event, \
             callback_index, description, state, reason, status, attempts, next_attempt_at, \
             created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'pending', 0, $11, $11, $11)",
        )
        .bind(&target.dag_id)
        .bind(&target.run_id)
        .bind(&target.task_id)
        .bind(target.map_index)
        .bind(target.try_number)
        .bind(&c.event)
        .bind(c.index)
        .bind(&c.description)
        .bind(&c.state)
        .bind(&c.reason)
        .bind(now_us)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

impl Store {
    /// Records callbacks to run (those no state change records: a try starting, a try the
    /// scheduler ended).
    pub async fn callback_enqueue(
        &self,
        target: &CallbackTarget,
        callbacks: &[NewCallback],
        now: DateTime<Utc>,
    ) -> Result<()> {
        if callbacks.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        insert_in(&mut tx, target, callbacks, to_micros(now)).await?;
        self.commit(tx).await
    }

    /// Claims up to `limit` callbacks that are due (or whose runner's lease ran out) for
    /// `runner`, counting the attempt. Two runners never claim the same one.
    pub async fn callback_claim(
        &self,
        runner: &str,
        limit: i64,
        now: DateTime<Utc>,
    ) -> Result<Vec<CallbackRow>> {
        let now_us = to_micros(now);
        let stale_us = to_micros(now - CALLBACK_LEASE);
        let lock = match self.backend() {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        // A cheap read first: an idle runner takes no write lock (SQLite) every poll.
        let due = sqlx::query(
            "SELECT id FROM callback_request WHERE (status = 'pending' AND next_attempt_at <= $1) \
             OR (status = 'running' AND claimed_at < $2) LIMIT 1",
        )
        .bind(now_us)
        .bind(stale_us)
        .fetch_optional(self.read_pool())
        .await?;
        if due.is_none() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin().await?;
        // A callback whose runner died mid-attempt on its last attempt is given up, not run
        // again forever.
        sqlx::query(
            "UPDATE callback_request SET status = 'failed', claimed_by = NULL, claimed_at = NULL, \
             log = log || $1, updated_at = $2 WHERE status = 'running' AND claimed_at < $3 \
             AND attempts >= $4",
        )
        .bind("its runner stopped during the last attempt; given up\n")
        .bind(now_us)
        .bind(stale_us)
        .bind(CALLBACK_MAX_ATTEMPTS)
        .execute(&mut *tx)
        .await?;
        let ids: Vec<i64> = sqlx::query(&format!(
            "SELECT id FROM callback_request WHERE (status = 'pending' AND next_attempt_at <= $1) \
             OR (status = 'running' AND claimed_at < $2) ORDER BY id LIMIT $3{lock}"
        ))
        .bind(now_us)
        .bind(stale_us)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.try_get("id"))
        .collect::<std::result::Result<_, _>>()?;
        let mut claimed = Vec::with_capacity(ids.len());
        for id in ids {
            let r = sqlx::query(&format!(
                "UPDATE callback_request SET status = 'running', claimed_by = $1, claimed_at = $2, \
                 attempts = attempts + 1, updated_at = $2 WHERE id = $3 RETURNING {COLUMNS}"
            ))
            .bind(runner)
            .bind(now_us)
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
            claimed.push(row(&r)?);
        }
        self.commit(tx).await?;
        Ok(claimed)
    }

    /// Records an attempt's end: success, or a failure retried after a backoff until the
    /// last attempt. Guarded by the runner's claim; returns the new status, `None` if the
    /// claim was lost (another runner took the callback over).
    pub async fn callback_attempt_done(
        &self,
        claimed: &CallbackRow,
        runner: &str,
        ok: bool,
        log: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<String>> {
        let now_us = to_micros(now);
        let id = claimed.id;
        let mut tx = self.begin().await?;
        // Guarded by the claim itself (runner and attempt): a later claim of the same row,
        // even by the same runner after its lease ran out, is not this attempt's.
        let Some(current) = sqlx::query(
            "SELECT attempts FROM callback_request WHERE id = $1 AND status = 'running' \
             AND claimed_by = $2 AND attempts = $3",
        )
        .bind(id)
        .bind(runner)
        .bind(claimed.attempts)
        .fetch_optional(&mut *tx)
        .await?
        else {
            tx.rollback().await?;
            return Ok(None);
        };
        let attempts: i64 = current.try_get("attempts")?;
        let status = if ok {
            "success"
        } else if attempts >= CALLBACK_MAX_ATTEMPTS {
            "failed"
        } else {
            "pending"
        };
        let next = now + backoff(attempts);
        sqlx::query(
            "UPDATE callback_request SET status = $1, log = log || $3, next_attempt_at = $4, \
             claimed_by = NULL, claimed_at = NULL, updated_at = $5 WHERE id = $2",
        )
        .bind(status)
        .bind(id)
        .bind(log)
        .bind(to_micros(next))
        .bind(now_us)
        .execute(&mut *tx)
        .await?;
        self.commit(tx).await?;
        Ok(Some(status.to_owned()))
    }

    /// The callbacks of a task instance (all its tries), oldest first.
    pub async fn callback_list_for_ti(
        &self,
        dag_id: &str,
        run_id: &str,
        task_id: &str,
        map_index: i64,
    ) -> Result<Vec<CallbackRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM callback_request WHERE dag_id = $1 AND run_id = $2 \
             AND task_id = $3 AND map_index = $4 ORDER BY id"
        ))
        .bind(dag_id)
        .bind(run_id)
        .bind(task_id)
        .bind(map_index)
        .fetch_all(self.read_pool())
        .await?;
        rows.iter().map(row).collect()
    }

    /// A run's callbacks: its own (no task) and, with `all`, its task instances'.
    pub async fn callback_list_for_run(
        &self,
        dag_id: &str,
        run_id: &str,
        all: bool,
    ) -> Result<Vec<CallbackRow>> {
        let filter = if all { "" } else { " AND task_id IS NULL" };
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM callback_request WHERE dag_id = $1 AND run_id = $2{filter} \
             ORDER BY id"
        ))
        .bind(dag_id)
        .bind(run_id)
        .fetch_all(self.read_pool())
        .await?;
        rows.iter().map(row).collect()
    }
}

/// The event a try's outcome fires: success, failure, retry, or a skip the try decided.
pub fn event_for_outcome(
    state: flow_model::TaskInstanceState,
) -> Option<flow_dag::callbacks::CallbackEvent> {
    use flow_dag::callbacks::CallbackEvent as E;
    use flow_model::TaskInstanceState as S;
    match state {
        S::Success => Some(E::OnSuccess),
        S::Failed => Some(E::OnFailure),
        S::UpForRetry => Some(E::OnRetry),
        S::Skipped => Some(E::OnSkipped),
        _ => None,
    }
}

/// The callbacks `event` fires, as rows to record.
pub fn new_callbacks(
    callbacks: &flow_dag::callbacks::Callbacks,
    event: flow_dag::callbacks::CallbackEvent,
    state: &str,
    reason: Option<&str>,
) -> Vec<NewCallback> {
    callbacks
        .get(event)
        .iter()
        .enumerate()
        .map(|(i, c)| NewCallback {
            event: event.key().to_owned(),
            index: i64::try_from(i).unwrap_or(i64::MAX),
            description: c.describe(),
            state: state.to_owned(),
            reason: reason.map(str::to_owned),
        })
        .collect()
}
