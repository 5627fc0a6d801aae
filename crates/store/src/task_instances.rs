//! Task instances: creation, guarded state changes with history, claiming, heartbeats,
//! finishing, and the counts the scheduler's queueing decisions need.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use flow_model::TaskInstanceState as S;
use flow_model::transition::Actor;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use crate::transition::{RunChange, TiChange, TiEffect, TiMove, run_transition, ti_transition};
use crate::{
    Backend, Result, Store, StoreError, from_micros, opt_from_micros, placeholders, to_micros,
};
use flow_model::DagRunState;

/// Identifies a task instance.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TiKey {
    pub dag_id: String,
    pub run_id: String,
    pub task_id: String,
    pub map_index: i64,
}

impl TiKey {
    pub fn new(dag_id: &str, run_id: &str, task_id: &str, map_index: i64) -> Self {
        TiKey {
            dag_id: dag_id.to_owned(),
            run_id: run_id.to_owned(),
            task_id: task_id.to_owned(),
            map_index,
        }
    }
}

/// A task instance to create with its run.
#[derive(Debug, Clone)]
pub struct NewTaskInstance {
    pub task_id: String,
    pub map_index: i64,
    pub max_tries: i64,
    pub operator: String,
    pub queue: String,
    pub pool: String,
    pub pool_slots: i64,
    pub priority_weight: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TiRow {
    pub key: TiKey,
    pub state: S,
    pub try_number: i64,
    pub max_tries: i64,
    pub operator: String,
    pub queue: String,
    pub pool: String,
    pub pool_slots: i64,
    pub priority_weight: i64,
    pub start_date: Option<DateTime<Utc>>,
    pub end_date: Option<DateTime<Utc>>,
    pub duration: Option<f64>,
    pub scheduled_dttm: Option<DateTime<Utc>>,
    pub queued_dttm: Option<DateTime<Utc>>,
    pub next_retry_at: Option<DateTime<Utc>>,
    pub hostname: String,
    pub worker_id: Option<String>,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    /// How the next claim continues the try (`poke`, `execute_complete`, `__fail__`);
    /// `None` starts a new try.
    pub next_method: Option<String>,
    /// JSON: the reschedule's start, or the trigger's event.
    pub next_kwargs: Option<String>,
    /// A mapped task instance's label (its `map_index_template`, rendered after the try).
    pub rendered_map_index: Option<String>,
    /// The user's note on this instance (Airflow's task instance note).
    pub note: Option<String>,
}

impl TiRow {
    /// A row with its key and state and nothing else: every try field unset, one slot of the
    /// default pool. Callers set what they know on top.
    pub fn new(key: TiKey, state: S) -> TiRow {
        TiRow {
            key,
            state,
            try_number: 0,
            max_tries: 0,
            operator: String::new(),
            queue: String::new(),
            pool: String::new(),
            pool_slots: 1,
            priority_weight: 1,
            start_date: None,
            end_date: None,
            duration: None,
            scheduled_dttm: None,
            queued_dttm: None,
            next_retry_at: None,
            hostname: String::new(),
            worker_id: None,
            last_heartbeat_at: None,
            updated_at: DateTime::<Utc>::default(),
            next_method: None,
            next_kwargs: None,
            rendered_map_index: None,
            note: None,
        }
    }
}

/// A task instance a worker has just claimed (now `running`, try number bumped).
pub type ClaimedTi = TiRow;

/// One guarded state change: applied only if the current state is in `from`.
#[derive(Debug, Clone)]
pub struct StateChange {
    pub key: TiKey,
    pub from: Vec<S>,
    pub to: S,
    pub reason: Option<String>,
    /// For `up_for_retry`: when the retry may be scheduled.
    pub next_retry_at: Option<DateTime<Utc>>,
}

/// A worker's report of how a try ended.
#[derive(Debug, Clone)]
pub struct TiFinish {
    pub key: TiKey,
    pub try_number: i64,
    /// Guard: the worker that ran the try still owns the row (a fenced-off worker's late
    /// report changes nothing). `None` only where no worker ran it (tests, `tasks test`).
    pub worker_id: Option<String>,
    /// success, failed, skipped or up_for_retry.
    pub state: S,
    pub reason: Option<String>,
    pub next_retry_at: Option<DateTime<Utc>>,
    /// The `return_value` XCom, if any.
    pub xcom: Option<serde_json::Value>,
    pub rendered_fields: Option<String>,
    /// A mapped task instance's label, its `map_index_template` rendered after the try.
    pub rendered_map_index: Option<String>,
    /// Log lines of the try not yet stored; written in the same transaction.
    pub logs: Vec<crate::LogLine>,
    /// Task ids of the run skipped with a successful try, in the same transaction: the
    /// downstream tasks a branch did not follow. Only task instances that have not started
    /// (no status or scheduled) are skipped.
    pub skip: Vec<String>,
    /// XComs the try pushed under their own keys (`ti.xcom_push`), stored with its outcome.
    pub xcoms: Vec<(String, serde_json::Value)>,
    /// Asset events a success records (its outlets), in the same transaction.
    pub asset_events: Vec<crate::NewAssetEvent>,
    /// Callbacks the outcome fires (`on_failure_callback`, ...), recorded if it is applied.
    pub callbacks: Vec<crate::NewCallback>,
}

/// What a clear did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClearReport {
    /// Task instances reset to no state.
    pub cleared: usize,
    /// Running task instances moved to restarting: their worker kills and reruns them.
    pub restarting: usize,
    /// Finished dag runs moved back to queued.
    pub runs_requeued: usize,
}

pub(crate) const TI_COLUMNS: &str = "dag_id, run_id, task_id, map_index, state, try_number, max_tries, \
    operator, queue, pool, pool_slots, priority_weight, start_date, end_date, duration, \
    scheduled_dttm, queued_dttm, next_retry_at, hostname, worker_id, last_heartbeat_at, updated_at, \
    next_method, next_kwargs, rendered_map_index";

pub(crate) fn parse_state(s: &str) -> Result<S> {
    S::parse(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(crate) fn ti_row(r: &AnyRow) -> Result<TiRow> {
    let state: String = r.try_get("state")?;
    Ok(TiRow {
        key: TiKey {
            dag_id: r.try_get("dag_id")?,
            run_id: r.try_get("run_id")?,
            task_id: r.try_get("task_id")?,
            map_index: r.try_get("map_index")?,
        },
        state: parse_state(&state)?,
        try_number: r.try_get("try_number")?,
        max_tries: r.try_get("max_tries")?,
        operator: r.try_get("operator")?,
        queue: r.try_get("queue")?,
        pool: r.try_get("pool")?,
        pool_slots: r.try_get("pool_slots")?,
        priority_weight: r.try_get("priority_weight")?,
        start_date: opt_from_micros(r.try_get("start_date")?),
        end_date: opt_from_micros(r.try_get("end_date")?),
        duration: r.try_get("duration")?,
        scheduled_dttm: opt_from_micros(r.try_get("scheduled_dttm")?),
        queued_dttm: opt_from_micros(r.try_get("queued_dttm")?),
        next_retry_at: opt_from_micros(r.try_get("next_retry_at")?),
        hostname: r.try_get("hostname")?,
        worker_id: r.try_get("worker_id")?,
        last_heartbeat_at: opt_from_micros(r.try_get("last_heartbeat_at")?),
        updated_at: from_micros(r.try_get("updated_at")?),
        next_method: r.try_get("next_method")?,
        next_kwargs: r.try_get("next_kwargs")?,
        rendered_map_index: r.try_get("rendered_map_index")?,
        note: None,
    })
}

/// [`ti_row`] with the user's note, for the reads that show one (`SELECT {TI_COLUMNS}, note`):
/// the claim and the scheduler's scans leave the note out of their hot queries.
fn noted_ti_row(r: &AnyRow) -> Result<TiRow> {
    Ok(TiRow {
        note: r.try_get("note")?,
        ..ti_row(r)?
    })
}

/// A row the store could not read, with the run it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptRow {
    pub dag_id: String,
    pub run_id: String,
    pub error: String,
}

impl CorruptRow {
    pub(crate) fn of(r: &AnyRow, e: StoreError) -> Self {
        CorruptRow {
            dag_id: r.try_get("dag_id").unwrap_or_default(),
            run_id: r.try_get("run_id").unwrap_or_default(),
            error: e.to_string(),
        }
    }
}

/// The lean row of [`Store::ti_list_active_runs`].
pub(crate) fn lean_ti_row(r: &AnyRow) -> Result<TiRow> {
    let state: String = r.try_get("state")?;
    Ok(TiRow {
        try_number: r.try_get("try_number")?,
        max_tries: r.try_get("max_tries")?,
        pool: r.try_get("pool")?,
        pool_slots: r.try_get("pool_slots")?,
        priority_weight: r.try_get("priority_weight")?,
        scheduled_dttm: opt_from_micros(r.try_get("scheduled_dttm")?),
        next_retry_at: opt_from_micros(r.try_get("next_retry_at")?),
        // For the hand-off from an upstream's outcome to its downstream being scheduled.
        end_date: opt_from_micros(r.try_get("end_date")?),
        ..TiRow::new(key_of(r)?, parse_state(&state)?)
    })
}

/// The instances of one task in one run, as the grid and the graph show them: one state for
/// an unmapped task, one per map index for a mapped one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskStates {
    pub mapped: bool,
    pub states: Vec<S>,
}

impl TaskStates {
    /// The state that stands for all of them (see [`S::summary`]).
    pub fn summary(&self) -> S {
        S::summary(self.states.iter().copied()).unwrap_or(S::NoStatus)
    }

    /// How many instances are in each state, most frequent first.
    pub fn counts(&self) -> Vec<(S, usize)> {
        let mut counts: Vec<(S, usize)> = Vec::new();
        for s in &self.states {
            match counts.iter_mut().find(|(c, _)| c == s) {
                Some((_, n)) => *n += 1,
                None => counts.push((*s, 1)),
            }
        }
        counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.as_str().cmp(b.0.as_str())));
        counts
    }
}

/// `task:state:m` (mapped instance) or `task:state:-`, packed by the database.
const PACKED_STATE: &str =
    "t.task_id || ':' || t.state || ':' || CASE WHEN t.map_index >= 0 THEN 'm' ELSE '-' END";

/// Rows of `(run_id, "task:state:m,...")` into `run_id -> task_id -> states`.
fn unpack_states(rows: &[AnyRow]) -> Result<HashMap<String, HashMap<String, TaskStates>>> {
    let mut out: HashMap<String, HashMap<String, TaskStates>> = HashMap::new();
    for row in rows {
        let run_id: String = row.try_get("run_id")?;
        let packed: Option<String> = row.try_get("states")?;
        let tasks = out.entry(run_id).or_default();
        for item in packed.unwrap_or_default().split(',') {
            let mut parts = item.splitn(3, ':');
            let (Some(task), Some(state), Some(kind)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let entry = tasks.entry(task.to_owned()).or_default();
            entry.mapped |= kind == "m";
            entry.states.push(parse_state(state)?);
        }
    }
    Ok(out)
}

pub(crate) async fn insert_task_instances(
    tx: &mut Transaction<'static, Any>,
    dag_id: &str,
    run_id: &str,
    tis: &[NewTaskInstance],
    now_us: i64,
) -> Result<()> {
    const COLS: usize = 11;
    for chunk in tis.chunks(crate::rows_per_statement(tx, COLS)) {
        // Every new task instance starts with no state ('none').
        let values: Vec<String> = (0..chunk.len())
            .map(|i| format!("({}, 'none')", placeholders(i * COLS + 1, COLS)))
            .collect();
        let sql = format!(
            "INSERT INTO task_instance (dag_id, run_id, task_id, map_index, max_tries, operator, \
             queue, pool, pool_slots, priority_weight, updated_at, state) VALUES {} \
             ON CONFLICT (dag_id, run_id, task_id, map_index) DO NOTHING",
            values.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for ti in chunk {
            q = q
                .bind(dag_id)
                .bind(run_id)
                .bind(&ti.task_id)
                .bind(ti.map_index)
                .bind(ti.max_tries)
                .bind(&ti.operator)
                .bind(&ti.queue)
                .bind(&ti.pool)
                .bind(ti.pool_slots)
                .bind(ti.priority_weight)
                .bind(now_us);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

pub(crate) async fn insert_transitions(
    tx: &mut Transaction<'static, Any>,
    rows: &[(TiKey, i64, S, S, Option<String>)],
    actor: Actor,
    now_us: i64,
) -> Result<()> {
    const COLS: usize = 10;
    for chunk in rows.chunks(crate::rows_per_statement(tx, COLS)) {
        let values: Vec<String> = (0..chunk.len())
            .map(|i| format!("({})", placeholders(i * COLS + 1, COLS)))
            .collect();
        let sql = format!(
            "INSERT INTO ti_transition (dag_id, run_id, task_id, map_index, try_number, \
             from_state, to_state, actor, reason, at) VALUES {}",
            values.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for (key, try_number, from, to, reason) in chunk {
            q = q
                .bind(&key.dag_id)
                .bind(&key.run_id)
                .bind(&key.task_id)
                .bind(key.map_index)
                .bind(*try_number)
                .bind(from.as_str())
                .bind(to.as_str())
                .bind(actor.as_str())
                .bind(reason.clone())
                .bind(now_us);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Copies the current try of each task instance into the history table (one row per try).
pub(crate) async fn record_history_many(
    tx: &mut Transaction<'static, Any>,
    rows: &[(&TiKey, Option<&str>)],
) -> Result<()> {
    const COLS: usize = 5;
    for chunk in rows.chunks(crate::rows_per_statement(tx, COLS)) {
        let values: Vec<String> = (0..chunk.len())
            .map(|i| format!("({})", placeholders(i * COLS + 1, COLS)))
            .collect();
        // VALUES columns are named column1.. on both PostgreSQL and SQLite.
        let sql = format!(
            "INSERT INTO task_instance_history (dag_id, run_id, task_id, map_index, try_number, \
             state, start_date, end_date, duration, hostname, operator, queue, pool, reason) \
             SELECT ti.dag_id, ti.run_id, ti.task_id, ti.map_index, ti.try_number, ti.state, \
             ti.start_date, ti.end_date, ti.duration, ti.hostname, ti.operator, ti.queue, \
             ti.pool, v.column5 FROM task_instance ti JOIN (VALUES {}) v \
             ON ti.dag_id = v.column1 AND ti.run_id = v.column2 AND ti.task_id = v.column3 \
             AND ti.map_index = v.column4 WHERE ti.try_number > 0 \
             ON CONFLICT (dag_id, run_id, task_id, map_index, try_number) DO UPDATE SET \
             state = excluded.state, end_date = excluded.end_date, duration = excluded.duration, \
             reason = excluded.reason",
            values.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for (key, reason) in chunk {
            q = q
                .bind(&key.dag_id)
                .bind(&key.run_id)
                .bind(&key.task_id)
                .bind(key.map_index)
                .bind(*reason);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// A task instance's key from a row that selected its four key columns.
pub(crate) fn key_of(r: &AnyRow) -> Result<TiKey> {
    Ok(TiKey {
        dag_id: r.try_get("dag_id")?,
        run_id: r.try_get("run_id")?,
        task_id: r.try_get("task_id")?,
        map_index: r.try_get("map_index")?,
    })
}

/// [`StateChange`]s through the transition primitive, inside `tx`: one guarded transition per
/// (from-states, to) group, groups in order of first appearance (so that a task instance
/// scheduled and queued in one call is scheduled first). Returns, per change, whether it was
/// applied.
pub(crate) async fn set_states_in(
    tx: &mut Transaction<'static, Any>,
    store: &Store,
    changes: &[StateChange],
    actor: Actor,
    effect: &TiEffect,
    now_us: i64,
) -> Result<Vec<bool>> {
    let mut applied = vec![false; changes.len()];
    // (from-states, to) -> indexes of the changes asking for it.
    type Groups<'c> = Vec<((&'c [S], S), Vec<usize>)>;
    let mut groups: Groups<'_> = Vec::new();
    for (i, c) in changes.iter().enumerate() {
        let group = (c.from.as_slice(), c.to);
        match groups.iter_mut().find(|(g, _)| *g == group) {
            Some((_, members)) => members.push(i),
            None => groups.push((group, vec![i])),
        }
    }
    for ((from, to), members) in groups {
        let rows: Vec<TiChange> = members
            .iter()
            .map(|&i| {
                let c = &changes[i];
                TiChange {
                    next_retry_at: c.next_retry_at.map(to_micros),
                    ..TiChange::new(c.key.clone()).reason(c.reason.clone())
                }
            })
            .collect();
        for a in ti_transition(
            tx,
            store,
            TiMove {
                actor,
                from,
                to,
                effect,
            },
            &rows,
            now_us,
        )
        .await?
        {
            applied[members[a.index]] = true;
        }
    }
    Ok(applied)
}

fn key_where(start: usize) -> String {
    format!(
        "dag_id = ${} AND run_id = ${} AND task_id = ${} AND map_index = ${}",
        start,
        start + 1,
        start + 2,
        start + 3
    )
}

impl Store {
    /// All task instances of a run, by task id.
    pub async fn ti_list_for_run(&self, dag_id: &str, run_id: &str) -> Result<Vec<TiRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {TI_COLUMNS}, note FROM task_instance WHERE dag_id = $1 AND run_id = $2 \
             ORDER BY task_id, map_index"
        ))
        .bind(dag_id)
        .bind(run_id)
        .fetch_all(self.read_pool())
        .await?;
        rows.iter().map(noted_ti_row).collect()
    }

    /// Task instances of every queued or running dag run, in one query, with the columns
    /// scheduling decisions use (key, state, tries, pool, priority, schedule, retry and end
    /// times);
    /// the others are left empty. This is read on every scheduler pass, so it stays lean.
    /// A row that cannot be read (an unknown state written by hand, say) is left out and
    /// reported with its run, so that one bad row holds up its own run and nothing else.
    pub async fn ti_list_active_runs(&self) -> Result<(Vec<TiRow>, Vec<CorruptRow>)> {
        let rows = sqlx::query(
            "SELECT ti.dag_id, ti.run_id, ti.task_id, ti.map_index, ti.state, ti.try_number, \
             ti.max_tries, ti.pool, ti.pool_slots, ti.priority_weight, ti.scheduled_dttm, \
             ti.next_retry_at, ti.end_date FROM task_instance ti JOIN dag_run r \
             ON r.dag_id = ti.dag_id AND r.run_id = ti.run_id \
             WHERE r.state IN ('queued', 'running')",
        )
        .fetch_all(self.read_pool())
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        let mut corrupt = Vec::new();
        for r in &rows {
            match lean_ti_row(r) {
                Ok(ti) => out.push(ti),
                Err(e) => corrupt.push(CorruptRow::of(r, e)),
            }
        }
        Ok((out, corrupt))
    }

    /// Task instances waiting in `queued` since before `cutoff` (no worker claimed them), with
    /// how often this try was requeued for it already.
    pub async fn ti_list_stuck_queued(&self, cutoff: DateTime<Utc>) -> Result<Vec<(TiRow, i64)>> {
        let rows = sqlx::query(&format!(
            "SELECT {TI_COLUMNS}, (SELECT COUNT(*) FROM ti_transition t \
               WHERE t.dag_id = task_instance.dag_id AND t.run_id = task_instance.run_id \
               AND t.task_id = task_instance.task_id AND t.map_index = task_instance.map_index \
               AND t.try_number = task_instance.try_number \
               AND t.from_state = 'queued' AND t.to_state = 'scheduled') AS requeues \
             FROM task_instance WHERE state = 'queued' AND queued_dttm < $1"
        ))
        .bind(to_micros(cutoff))
        .fetch_all(self.read_pool())
        .await?;
        rows.iter()
            .map(|r| Ok((ti_row(r)?, r.try_get("requeues")?)))
            .collect()
    }

    pub async fn ti_get(&self, key: &TiKey) -> Result<Option<TiRow>> {
        let row = sqlx::query(&format!(
            "SELECT {TI_COLUMNS}, note FROM task_instance WHERE {}",
            key_where(1)
        ))
        .bind(&key.dag_id)
        .bind(&key.run_id)
        .bind(&key.task_id)
        .bind(key.map_index)
        .fetch_optional(self.read_pool())
        .await?;
        row.as_ref().map(noted_ti_row).transpose()
    }

    /// `run_id -> task_id -> states` for some runs of a DAG, for the grid and the graph (every
    /// instance of a mapped task). One row per run comes back, the states packed by the
    /// database, so a grid of 100 runs x 200 tasks is one small result rather than 20,000 rows.
    pub async fn ti_states_for_runs(
        &self,
        dag_id: &str,
        run_ids: &[String],
    ) -> Result<HashMap<String, HashMap<String, TaskStates>>> {
        let mut out = HashMap::new();
        if run_ids.is_empty() {
            return Ok(out);
        }
        // Task ids and states cannot contain ':' or ',' (ids are [A-Za-z0-9_.-]).
        let packed = match self.backend() {
            Backend::Postgres => format!("string_agg({PACKED_STATE}, ',')"),
            Backend::Sqlite => format!("group_concat({PACKED_STATE}, ',')"),
        };
        // One correlated aggregate per run: each reads its run's rows in primary-key order,
        // so no plan (fresh statistics or not) sorts all 20,000 rows by run id first.
        for chunk in run_ids.chunks(500) {
            let sql = format!(
                "SELECT r.run_id, (SELECT {packed} FROM task_instance t \
                   WHERE t.dag_id = r.dag_id AND t.run_id = r.run_id) AS states \
                 FROM dag_run r WHERE r.dag_id = $1 AND r.run_id IN ({})",
                placeholders(2, chunk.len())
            );
            let mut q = sqlx::query(&sql).bind(dag_id);
            for r in chunk {
                q = q.bind(r);
            }
            out.extend(unpack_states(&q.fetch_all(self.read_pool()).await?)?);
        }
        Ok(out)
    }

    /// `(run_id, task_id, seconds)` for the tasks that ran in the latest `n` runs of a DAG: from
    /// the first instance's start to the last one's end (a mapped task's instances together),
    /// for the per-task duration chart.
    pub async fn ti_durations_for_latest_runs(
        &self,
        dag_id: &str,
        n: i64,
    ) -> Result<Vec<(String, String, f64)>> {
        let rows = sqlx::query(
            "SELECT run_id, task_id, MIN(start_date) AS started, MAX(end_date) AS ended \
             FROM task_instance \
             WHERE dag_id = $1 AND start_date IS NOT NULL AND end_date IS NOT NULL \
               AND run_id IN (SELECT run_id FROM dag_run WHERE dag_id = $1 \
                              ORDER BY run_after DESC, id DESC LIMIT $2) \
             GROUP BY run_id, task_id",
        )
        .bind(dag_id)
        .bind(n)
        .fetch_all(self.read_pool())
        .await?;
        rows.iter()
            .map(|r| {
                let started: i64 = r.try_get("started")?;
                let ended: i64 = r.try_get("ended")?;
                Ok((
                    r.try_get("run_id")?,
                    r.try_get("task_id")?,
                    (ended - started).max(0) as f64 / 1_000_000.0,
                ))
            })
            .collect()
    }

    /// Sets (or, with `None`, removes) the note of each task instance; returns how many exist.
    pub async fn ti_set_note(&self, keys: &[TiKey], note: Option<&str>) -> Result<u64> {
        let mut tx = self.write.begin().await?;
        let mut n = 0;
        for key in keys {
            n += sqlx::query(&format!(
                "UPDATE task_instance SET note = $1 WHERE {}",
                key_where(2)
            ))
            .bind(note)
            .bind(&key.dag_id)
            .bind(&key.run_id)
            .bind(&key.task_id)
            .bind(key.map_index)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(n)
    }

    /// The rendered template fields of a task instance's latest try (JSON text), if any.
    pub async fn ti_rendered_fields(&self, key: &TiKey) -> Result<Option<String>> {
        let row = sqlx::query(&format!(
            "SELECT rendered_fields FROM task_instance WHERE {}",
            key_where(1)
        ))
        .bind(&key.dag_id)
        .bind(&key.run_id)
        .bind(&key.task_id)
        .bind(key.map_index)
        .fetch_optional(self.read_pool())
        .await?;
        Ok(match row {
            Some(r) => r.try_get("rendered_fields")?,
            None => None,
        })
    }

    /// Applies guarded state changes in one transaction and records each applied one with
    /// `actor`. Returns, per change, whether it was applied (its current state was in `from`).
    pub async fn ti_set_states(
        &self,
        changes: &[StateChange],
        actor: Actor,
        now: DateTime<Utc>,
    ) -> Result<Vec<bool>> {
        self.ti_set_states_with(changes, actor, &TiEffect::default(), now)
            .await
    }

    /// Zombie rescue: [`Store::ti_set_states`] for task instances whose worker stopped
    /// heartbeating, each applied only if its heartbeat is still older than `stale_before`
    /// (a heartbeat that arrived meanwhile wins).
    pub async fn ti_rescue_stale(
        &self,
        changes: &[StateChange],
        stale_before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<bool>> {
        let effect = TiEffect {
            heartbeat_before: Some(to_micros(stale_before)),
            ..TiEffect::default()
        };
        self.ti_set_states_with(changes, Actor::Scheduler, &effect, now)
            .await
    }

    /// `task_queued_timeout`: [`Store::ti_set_states`] for queued task instances no worker
    /// claimed, each applied only if it is still queued since before `queued_before`.
    pub async fn ti_release_stuck(
        &self,
        changes: &[StateChange],
        queued_before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<bool>> {
        let effect = TiEffect {
            queued_before: Some(to_micros(queued_before)),
            ..TiEffect::default()
        };
        self.ti_set_states_with(changes, Actor::Scheduler, &effect, now)
            .await
    }

    async fn ti_set_states_with(
        &self,
        changes: &[StateChange],
        actor: Actor,
        effect: &TiEffect,
        now: DateTime<Utc>,
    ) -> Result<Vec<bool>> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin().await?;
        let applied = set_states_in(&mut tx, self, changes, actor, effect, to_micros(now)).await?;
        self.commit(tx).await?;
        Ok(applied)
    }

    /// Claims up to `limit` queued task instances from `queues` for a worker: they become
    /// `running` with the try number bumped and a first heartbeat. On PostgreSQL concurrent
    /// claimers skip each other's rows (`FOR UPDATE SKIP LOCKED`); on SQLite the write lock
    /// serializes them. A row is claimed by exactly one worker.
    pub async fn ti_claim(
        &self,
        worker_id: &str,
        hostname: &str,
        queues: &[String],
        limit: i64,
        now: DateTime<Utc>,
    ) -> Result<Vec<ClaimedTi>> {
        if limit <= 0 || queues.is_empty() {
            return Ok(Vec::new());
        }
        let lock = match self.backend() {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "SELECT dag_id, run_id, task_id, map_index FROM task_instance \
             WHERE state = 'queued' AND queue IN ({}) \
             ORDER BY priority_weight DESC, queued_dttm, map_index LIMIT $1{lock}",
            placeholders(2, queues.len())
        );
        let mut q = sqlx::query(&sql)
            .bind(limit)
            .persistent(self.keep_statement());
        for queue in queues {
            q = q.bind(queue);
        }
        let mut tx = self.begin().await?;
        let changes = q
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| Ok(TiChange::new(key_of(r)?)))
            .collect::<Result<Vec<_>>>()?;
        let effect = TiEffect {
            worker: Some(worker_id.to_owned()),
            hostname: Some(hostname.to_owned()),
            ..TiEffect::default()
        };
        let mut applied = ti_transition(
            &mut tx,
            self,
            TiMove {
                actor: Actor::Worker,
                from: &[S::Queued],
                to: S::Running,
                effect: &effect,
            },
            &changes,
            to_micros(now),
        )
        .await?;
        self.commit(tx).await?;
        // In the order they were chosen: highest priority first.
        applied.sort_by_key(|a| a.index);
        Ok(applied.into_iter().map(|a| a.row).collect())
    }

    /// Marks task instances `to` by hand (success, failed, skipped), from whatever state a
    /// user may move them from. A running one is stopped by its worker at its next heartbeat.
    /// Returns the keys that were marked.
    pub async fn ti_mark(&self, keys: &[TiKey], to: S, now: DateTime<Utc>) -> Result<Vec<TiKey>> {
        let from = flow_model::transition::allowed_from(to, Actor::User);
        let changes: Vec<StateChange> = keys
            .iter()
            .map(|k| StateChange {
                key: k.clone(),
                from: from.clone(),
                to,
                reason: Some(format!("marked {to} by a user")),
                next_retry_at: None,
            })
            .collect();
        let applied = self.ti_set_states(&changes, Actor::User, now).await?;
        Ok(keys
            .iter()
            .zip(applied)
            .filter(|(_, a)| *a)
            .map(|(k, _)| k.clone())
            .collect())
    }

    /// Expands a mapped task of a run to `length` instances (Airflow's `expand_mapped_task`),
    /// in one transaction. Its unexpanded instance (map index -1) becomes instance 0 and
    /// instances 1 to `length - 1` are created, all without state; with `length` 0 it is
    /// skipped instead. A task expanded before and cleared since (every instance without
    /// state or removed) is revised to the new length: instances past it are removed, missing
    /// ones created. If any instance has moved on (another scheduler expanded it and
    /// scheduled it first), nothing changes. Returns the map indexes ready to be scheduled.
    pub async fn ti_expand(
        &self,
        dag_id: &str,
        run_id: &str,
        template: &NewTaskInstance,
        length: usize,
        now: DateTime<Utc>,
    ) -> Result<Vec<i64>> {
        let now_us = to_micros(now);
        let task_id = template.task_id.as_str();
        let backend = self.backend();
        let lock = match backend {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        };
        let mut tx = self.begin().await?;
        let rows = sqlx::query(&format!(
            "SELECT map_index, state FROM task_instance \
             WHERE dag_id = $1 AND run_id = $2 AND task_id = $3{lock}"
        ))
        .bind(dag_id)
        .bind(run_id)
        .bind(task_id)
        .fetch_all(&mut *tx)
        .await?;
        let mut current: std::collections::BTreeMap<i64, S> = Default::default();
        for r in &rows {
            current.insert(
                r.try_get("map_index")?,
                parse_state(&r.try_get::<String, _>("state")?)?,
            );
        }
        if current.is_empty()
            || current
                .values()
                .any(|s| !matches!(s, S::NoStatus | S::Removed))
        {
            tx.rollback().await?;
            return Ok(Vec::new());
        }
        let key = |i: i64| TiKey::new(dag_id, run_id, task_id, i);
        let no_effect = TiEffect::default();
        let length = i64::try_from(length).unwrap_or(i64::MAX);
        if length == 0 {
            // Nothing to map over: the task is skipped, as in Airflow.
            let waiting: Vec<TiChange> = current
                .iter()
                .filter(|(_, s)| **s == S::NoStatus)
                .map(|(i, _)| {
                    TiChange::new(key(*i))
                        .reason(Some("mapped over an empty list: nothing to run".to_owned()))
                })
                .collect();
            let how = TiMove {
                actor: Actor::Scheduler,
                from: &[S::NoStatus],
                to: S::Skipped,
                effect: &no_effect,
            };
            ti_transition(&mut tx, self, how, &waiting, now_us).await?;
            self.commit(tx).await?;
            return Ok(Vec::new());
        }
        if current.contains_key(&-1) {
            // The unexpanded instance becomes instance 0, with what was recorded of it.
            for table in ["task_instance", "ti_transition"] {
                // Table names are constants here, never input.
                sqlx::query(&format!(
                    "UPDATE {table} SET map_index = 0 \
                     WHERE dag_id = $1 AND run_id = $2 AND task_id = $3 AND map_index = -1"
                ))
                .bind(dag_id)
                .bind(run_id)
                .bind(task_id)
                .execute(&mut *tx)
                .await?;
            }
            let state = current.remove(&-1).unwrap_or(S::NoStatus);
            current.insert(0, state);
        }
        let missing: Vec<NewTaskInstance> = (0..length)
            .filter(|i| !current.contains_key(i))
            .map(|i| NewTaskInstance {
                map_index: i,
                ..template.clone()
            })
            .collect();
        insert_task_instances(&mut tx, dag_id, run_id, &missing, now_us).await?;
        let restored: Vec<TiChange> = current
            .iter()
            .filter(|(i, s)| **i < length && **s == S::Removed)
            .map(|(i, _)| {
                TiChange::new(key(*i)).reason(Some(format!("mapped again ({length} instances)")))
            })
            .collect();
        let how = TiMove {
            actor: Actor::Scheduler,
            from: &[S::Removed],
            to: S::NoStatus,
            effect: &no_effect,
        };
        ti_transition(&mut tx, self, how, &restored, now_us).await?;
        let beyond: Vec<TiChange> = current
            .iter()
            .filter(|(i, s)| **i >= length && **s == S::NoStatus)
            .map(|(i, _)| {
                TiChange::new(key(*i))
                    .reason(Some(format!("the task maps over {length} values now")))
            })
            .collect();
        let how = TiMove {
            actor: Actor::Scheduler,
            from: &[S::NoStatus],
            to: S::Removed,
            effect: &no_effect,
        };
        ti_transition(&mut tx, self, how, &beyond, now_us).await?;
        self.commit(tx).await?;
        Ok((0..length).collect())
    }

    /// Creates task instances (no state) for tasks added to the DAG after the run was
    /// created; existing ones are left alone.
    pub async fn ti_create_missing(
        &self,
        dag_id: &str,
        run_id: &str,
        tis: &[NewTaskInstance],
        now: DateTime<Utc>,
    ) -> Result<()> {
        if tis.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        insert_task_instances(&mut tx, dag_id, run_id, tis, to_micros(now)).await?;
        self.commit(tx).await?;
        Ok(())
    }

    /// Records that a worker is still running these tries. Returns the keys it no longer owns
    /// (cleared, marked or rescued meanwhile): the worker should stop them.
    pub async fn ti_heartbeat(
        &self,
        worker_id: &str,
        running: &[(TiKey, i64)],
        now: DateTime<Utc>,
    ) -> Result<Vec<TiKey>> {
        let now_us = to_micros(now);
        let mut lost = Vec::new();
        // One statement per try, each its own transaction: a heartbeat holding the lock of one
        // row while it waits for another deadlocked with the same worker's outcome reports.
        for (key, try_number) in running {
            let n = sqlx::query(&format!(
                "UPDATE task_instance SET last_heartbeat_at = $1 WHERE {} \
                 AND try_number = $6 AND worker_id = $7 AND state = 'running'",
                key_where(2)
            ))
            .bind(now_us)
            .bind(&key.dag_id)
            .bind(&key.run_id)
            .bind(&key.task_id)
            .bind(key.map_index)
            .bind(*try_number)
            .bind(worker_id)
            .execute(&self.write)
            .await?
            .rows_affected();
            if n == 0 {
                lost.push(key.clone());
            }
        }
        Ok(lost)
    }

    /// Records how a try ended, with its XCom, history row and last log lines, in one
    /// transaction. Applied only if the task instance is still `running` this try (a
    /// zombie-rescued or cleared task's late report changes nothing; its log lines are kept).
    /// Returns whether it was applied.
    pub async fn ti_finish(&self, f: &TiFinish, now: DateTime<Utc>) -> Result<bool> {
        Ok(self
            .ti_finish_many(std::slice::from_ref(f), now)
            .await?
            .first()
            .copied()
            .unwrap_or(false))
    }

    /// [`Store::ti_finish`] for many tries in one transaction: a busy worker pays one commit
    /// for all the tries that ended since its last report.
    pub async fn ti_finish_many(
        &self,
        finishes: &[TiFinish],
        now: DateTime<Utc>,
    ) -> Result<Vec<bool>> {
        let now_us = to_micros(now);
        let mut tx = self.begin().await?;
        // Log lines are kept even when the outcome is not applied (a rescued try's output).
        let lines: Vec<(&TiKey, i64, &crate::LogLine)> = finishes
            .iter()
            .flat_map(|f| f.logs.iter().map(move |l| (&f.key, f.try_number, l)))
            .collect();
        crate::logs::append_many_in(&mut tx, &lines).await?;
        let mut applied = vec![false; finishes.len()];
        // One guarded transition per outcome state and worker, each row guarded by its try.
        type Group<'f> = ((S, Option<&'f str>), Vec<usize>);
        let mut by_state: Vec<Group<'_>> = Vec::new();
        for (i, f) in finishes.iter().enumerate() {
            let group = (f.state, f.worker_id.as_deref());
            match by_state.iter_mut().find(|(g, _)| *g == group) {
                Some((_, members)) => members.push(i),
                None => by_state.push((group, vec![i])),
            }
        }
        for ((state, worker), members) in by_state {
            let effect = TiEffect {
                worker_is: worker.map(str::to_owned),
                ..TiEffect::default()
            };
            let changes: Vec<TiChange> = members
                .iter()
                .map(|&i| {
                    let f = &finishes[i];
                    TiChange {
                        try_number: Some(f.try_number),
                        next_retry_at: f.next_retry_at.map(to_micros),
                        rendered_fields: f.rendered_fields.clone(),
                        rendered_map_index: f.rendered_map_index.clone(),
                        ..TiChange::new(f.key.clone()).reason(f.reason.clone())
                    }
                })
                .collect();
            let done = ti_transition(
                &mut tx,
                self,
                TiMove {
                    actor: Actor::Worker,
                    from: &[S::Running],
                    to: state,
                    effect: &effect,
                },
                &changes,
                now_us,
            )
            .await?;
            let mut xcoms = Vec::new();
            let mut skips = Vec::new();
            let mut events = Vec::new();
            for a in done {
                let f = &finishes[members[a.index]];
                if !f.callbacks.is_empty() {
                    let target = crate::CallbackTarget {
                        dag_id: f.key.dag_id.clone(),
                        run_id: f.key.run_id.clone(),
                        task_id: Some(f.key.task_id.clone()),
                        map_index: f.key.map_index,
                        try_number: f.try_number,
                    };
                    crate::callbacks::insert_in(&mut tx, &target, &f.callbacks, now_us).await?;
                }
                if state == S::Success {
                    let source = crate::assets::EventSource {
                        dag_id: &f.key.dag_id,
                        task_id: &f.key.task_id,
                        run_id: &f.key.run_id,
                        map_index: f.key.map_index,
                    };
                    events.extend(f.asset_events.iter().map(|e| (e, Some(source))));
                }
                if let Some(value) = &f.xcom {
                    xcoms.push((&f.key, "return_value", value));
                }
                for (key, value) in &f.xcoms {
                    xcoms.push((&f.key, key.as_str(), value));
                }
                if !f.skip.is_empty() {
                    skips.push(f);
                }
                applied[members[a.index]] = true;
            }
            crate::xcom::upsert_many(&mut tx, &xcoms, now_us).await?;
            if !events.is_empty() {
                crate::assets::record_events_in(self, &mut tx, &events, now_us).await?;
            }
            for f in skips {
                skip_in_run(&mut tx, self, f, now_us).await?;
            }
        }
        self.commit(tx).await?;
        Ok(applied)
    }

    /// How many task instances of a DAG, and of one of its tasks, are queued or running now
    /// (what `max_active_tasks` and `max_active_tis_per_dag` count).
    pub async fn ti_count_active(&self, dag_id: &str, task_id: &str) -> Result<(i64, i64)> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS dag_count, \
             COALESCE(SUM(CASE WHEN task_id = $2 THEN 1 ELSE 0 END), 0) AS task_count \
             FROM task_instance WHERE dag_id = $1 AND state IN ('queued', 'running')",
        )
        .bind(dag_id)
        .bind(task_id)
        .fetch_one(self.read_pool())
        .await?;
        Ok((row.try_get("dag_count")?, row.try_get("task_count")?))
    }

    /// Task instances a worker owns (running, or being restarted or stopped by it) whose last
    /// heartbeat is older than `cutoff`: zombies, whose worker is gone.
    pub async fn ti_list_stale_running(&self, cutoff: DateTime<Utc>) -> Result<Vec<TiRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {TI_COLUMNS} FROM task_instance \
             WHERE state IN ('running', 'restarting', 'shutdown') \
             AND (last_heartbeat_at IS NULL OR last_heartbeat_at < $1)"
        ))
        .bind(to_micros(cutoff))
        .fetch_all(self.read_pool())
        .await?;
        rows.iter().map(ti_row).collect()
    }

    /// The recorded transitions of a task instance, oldest first: `(try, from, to, actor,
    /// reason, at)`.
    pub async fn ti_transitions(
        &self,
        key: &TiKey,
    ) -> Result<Vec<(i64, String, String, String, Option<String>, DateTime<Utc>)>> {
        let rows = sqlx::query(&format!(
            "SELECT try_number, from_state, to_state, actor, reason, at FROM ti_transition \
             WHERE {} ORDER BY id",
            key_where(1)
        ))
        .bind(&key.dag_id)
        .bind(&key.run_id)
        .bind(&key.task_id)
        .bind(key.map_index)
        .fetch_all(self.read_pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("try_number")?,
                    r.try_get("from_state")?,
                    r.try_get("to_state")?,
                    r.try_get("actor")?,
                    r.try_get("reason")?,
                    from_micros(r.try_get("at")?),
                ))
            })
            .collect()
    }

    /// Clears task instances so that they run again (Airflow's clear): finished and waiting
    /// ones go back to no state, running ones to `restarting` (their worker kills the try and
    /// runs it again). Each gets its task's retries anew, loses its XComs, and its dag run, if
    /// finished, is queued again. `keys` pairs each task instance with its task's retries.
    /// Everything happens in one transaction, each row guarded by the state it is in then: a
    /// try that ends meanwhile is cleared as finished, not restarted.
    pub async fn ti_clear(&self, keys: &[(TiKey, i64)], now: DateTime<Utc>) -> Result<ClearReport> {
        let now_us = to_micros(now);
        let mut report = ClearReport::default();
        let changes: Vec<TiChange> = keys
            .iter()
            .map(|(key, retries)| TiChange {
                retries: Some(*retries),
                ..TiChange::new(key.clone()).reason(Some("cleared".to_owned()))
            })
            .collect();
        let mut tx = self.begin().await?;
        let effect = TiEffect::default();
        let restarting = ti_transition(
            &mut tx,
            self,
            TiMove {
                actor: Actor::User,
                from: &[S::Running],
                to: S::Restarting,
                effect: &effect,
            },
            &changes,
            now_us,
        )
        .await?;
        let from = flow_model::transition::allowed_from(S::NoStatus, Actor::User);
        let cleared = ti_transition(
            &mut tx,
            self,
            TiMove {
                actor: Actor::User,
                from: &from,
                to: S::NoStatus,
                effect: &effect,
            },
            &changes,
            now_us,
        )
        .await?;
        report.restarting = restarting.len();
        report.cleared = cleared.len();
        let mut runs: std::collections::BTreeSet<(String, String)> = Default::default();
        for a in restarting.iter().chain(&cleared) {
            crate::xcom::delete_in(&mut tx, &a.row.key).await?;
            runs.insert((a.row.key.dag_id.clone(), a.row.key.run_id.clone()));
        }
        let runs: Vec<RunChange> = runs
            .into_iter()
            .map(|(dag_id, run_id)| RunChange {
                dag_id,
                run_id,
                reason: Some("task instances cleared".to_owned()),
            })
            .collect();
        let requeued = run_transition(
            &mut tx,
            self,
            Actor::User,
            &[DagRunState::Success, DagRunState::Failed],
            DagRunState::Queued,
            &runs,
            now_us,
        )
        .await?;
        report.runs_requeued = requeued.len();
        self.commit(tx).await?;
        Ok(report)
    }

    /// A worker takes back a task instance that was cleared while it ran it (`restarting`):
    /// once the old try is killed, the next try starts on the same worker.
    pub async fn ti_restart(
        &self,
        key: &TiKey,
        worker_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<ClaimedTi>> {
        let mut tx = self.begin().await?;
        let effect = TiEffect {
            worker_is: Some(worker_id.to_owned()),
            ..TiEffect::default()
        };
        let change = TiChange::new(key.clone()).reason(Some("restarted after clear".to_owned()));
        let applied = ti_transition(
            &mut tx,
            self,
            TiMove {
                actor: Actor::Worker,
                from: &[S::Restarting],
                to: S::Running,
                effect: &effect,
            },
            &[change],
            to_micros(now),
        )
        .await?;
        self.commit(tx).await?;
        Ok(applied.into_iter().next().map(|a| a.row))
    }

    /// The tries the store says `worker_id` is running: (key, try number).
    pub async fn ti_running_of_worker(&self, worker_id: &str) -> Result<Vec<(TiKey, i64)>> {
        let rows = sqlx::query(
            "SELECT dag_id, run_id, task_id, map_index, try_number FROM task_instance \
             WHERE state = 'running' AND worker_id = $1",
        )
        .bind(worker_id)
        .fetch_all(self.read_pool())
        .await?;
        rows.iter()
            .map(|r| Ok((key_of(r)?, r.try_get("try_number")?)))
            .collect()
    }

    /// A stopping worker hands back tries it killed: each goes to `up_for_retry`, due at once,
    /// with one more try granted, so it runs again elsewhere without costing a retry. Guarded
    /// by the try number and the worker still owning the row. Returns how many were handed back.
    pub async fn ti_hand_back(
        &self,
        tries: &[(TiKey, i64)],
        worker_id: &str,
        now: DateTime<Utc>,
    ) -> Result<usize> {
        if tries.is_empty() {
            return Ok(0);
        }
        let now_us = to_micros(now);
        let effect = TiEffect {
            worker_is: Some(worker_id.to_owned()),
            grant_try: true,
            ..TiEffect::default()
        };
        let changes: Vec<TiChange> = tries
            .iter()
            .map(|(key, try_number)| TiChange {
                try_number: Some(*try_number),
                next_retry_at: Some(now_us),
                ..TiChange::new(key.clone()).reason(Some(format!(
                    "handed back: worker {worker_id} stopped before the try finished; it does \
                     not count against retries"
                )))
            })
            .collect();
        let mut tx = self.begin().await?;
        let applied = ti_transition(
            &mut tx,
            self,
            TiMove {
                actor: Actor::Worker,
                from: &[S::Running],
                to: S::UpForRetry,
                effect: &effect,
            },
            &changes,
            now_us,
        )
        .await?;
        self.commit(tx).await?;
        Ok(applied.len())
    }

    /// Every pool and its slots.
    pub async fn pool_list(&self) -> Result<HashMap<String, i64>> {
        let rows = sqlx::query("SELECT pool, slots FROM slot_pool")
            .fetch_all(self.read_pool())
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("pool")?, r.try_get("slots")?)))
            .collect()
    }

    /// Creates or resizes a pool.
    pub async fn pool_set(&self, pool: &str, slots: i64, description: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO slot_pool (pool, slots, description) VALUES ($1, $2, $3) \
             ON CONFLICT (pool) DO UPDATE SET slots = excluded.slots, \
             description = excluded.description",
        )
        .bind(pool)
        .bind(slots)
        .bind(description)
        .execute(&mut *tx)
        .await?;
        crate::dags::bump_dag_version(&mut tx).await?;
        self.commit(tx).await?;
        Ok(())
    }
}

/// One finished (or the current) try of a task instance, from `task_instance_history`.
#[derive(Debug, Clone, PartialEq)]
pub struct TiTryRow {
    pub key: TiKey,
    pub try_number: i64,
    pub state: S,
    pub start_date: Option<DateTime<Utc>>,
    pub end_date: Option<DateTime<Utc>>,
    pub duration: Option<f64>,
    pub hostname: String,
    pub operator: String,
    pub queue: String,
    pub pool: String,
}

impl Store {
    /// The recorded tries of a task instance, oldest first (Airflow's `tries` endpoint adds
    /// the current try on top).
    pub async fn ti_tries(&self, key: &TiKey) -> Result<Vec<TiTryRow>> {
        let rows = sqlx::query(
            "SELECT try_number, state, start_date, end_date, duration, hostname, operator, \
             queue, pool FROM task_instance_history WHERE dag_id = $1 AND run_id = $2 \
             AND task_id = $3 AND map_index = $4 ORDER BY try_number",
        )
        .bind(&key.dag_id)
        .bind(&key.run_id)
        .bind(&key.task_id)
        .bind(key.map_index)
        .fetch_all(self.read_pool())
        .await?;
        rows.iter()
            .map(|r| {
                let state: String = r.try_get("state")?;
                Ok(TiTryRow {
                    key: key.clone(),
                    try_number: r.try_get("try_number")?,
                    state: parse_state(&state)?,
                    start_date: opt_from_micros(r.try_get("start_date")?),
                    end_date: opt_from_micros(r.try_get("end_date")?),
                    duration: r.try_get("duration")?,
                    hostname: r.try_get("hostname")?,
                    operator: r.try_get("operator")?,
                    queue: r.try_get("queue")?,
                    pool: r.try_get("pool")?,
                })
            })
            .collect()
    }
}

/// A page of one run's task instances, filtered and ordered by the database: what the REST
/// API's task instance list asks for.
#[derive(Debug, Clone, Default)]
pub struct TiQuery {
    pub dag_id: String,
    pub run_id: String,
    /// Empty means every state.
    pub states: Vec<S>,
    pub task_id: Option<String>,
    /// One of [`TiQuery::ORDER_COLUMNS`], and whether descending.
    pub order_by: Option<(String, bool)>,
    pub limit: i64,
    pub offset: i64,
}

impl TiQuery {
    pub const ORDER_COLUMNS: [&str; 7] = [
        "map_index",
        "task_id",
        "start_date",
        "end_date",
        "state",
        "try_number",
        "duration",
    ];
}

impl Store {
    /// One page of a run's task instances and how many match in all.
    pub async fn ti_query(&self, q: &TiQuery) -> Result<(Vec<TiRow>, i64)> {
        let mut filter = String::from("dag_id = $1 AND run_id = $2");
        let mut n = 2;
        if !q.states.is_empty() {
            filter.push_str(&format!(
                " AND state IN ({})",
                placeholders(n + 1, q.states.len())
            ));
            n += q.states.len();
        }
        if q.task_id.is_some() {
            n += 1;
            filter.push_str(&format!(" AND task_id = ${n}"));
        }
        let (column, desc) = q
            .order_by
            .clone()
            .unwrap_or_else(|| ("map_index".into(), false));
        let column = TiQuery::ORDER_COLUMNS
            .iter()
            .find(|c| **c == column)
            .ok_or_else(|| {
                StoreError::Corrupt(format!("cannot order task instances by `{column}`"))
            })?;
        let dir = if desc { "DESC" } else { "ASC" };
        let page_sql = format!(
            "SELECT {TI_COLUMNS}, note, COUNT(*) OVER () AS total_rows FROM task_instance \
             WHERE {filter} \
             ORDER BY {column} {dir}, task_id {dir}, map_index {dir} LIMIT ${} OFFSET ${}",
            n + 1,
            n + 2
        );
        let count_sql = format!("SELECT COUNT(*) FROM task_instance WHERE {filter}");
        let (rows, total) = crate::dag_runs::page_with_total(
            self.read_pool(),
            bind_ti_filters(sqlx::query(&page_sql), q)
                .bind(q.limit)
                .bind(q.offset),
            bind_ti_filters(sqlx::query(&count_sql), q),
        )
        .await?;
        Ok((rows.iter().map(noted_ti_row).collect::<Result<_>>()?, total))
    }
}

/// Binds a [`TiQuery`]'s filter values in the order its `WHERE` clause names them.
fn bind_ti_filters<'q>(
    mut query: crate::dag_runs::AnyQuery<'q>,
    q: &'q TiQuery,
) -> crate::dag_runs::AnyQuery<'q> {
    query = query.bind(q.dag_id.as_str()).bind(q.run_id.as_str());
    for s in &q.states {
        query = query.bind(s.as_str());
    }
    if let Some(t) = &q.task_id {
        query = query.bind(t.as_str());
    }
    query
}

/// Skips the task instances of `f.skip` in `f`'s run that have not started: the branches a
/// successful branch try did not follow.
async fn skip_in_run(
    tx: &mut Transaction<'static, Any>,
    store: &Store,
    f: &TiFinish,
    now_us: i64,
) -> Result<()> {
    let sql = format!(
        "SELECT task_id, map_index FROM task_instance WHERE dag_id = $1 AND run_id = $2 \
         AND task_id IN ({}) AND state IN ('none', 'scheduled')",
        placeholders(3, f.skip.len())
    );
    let mut query = sqlx::query(&sql)
        .bind(f.key.dag_id.as_str())
        .bind(f.key.run_id.as_str());
    for task_id in &f.skip {
        query = query.bind(task_id.as_str());
    }
    let rows = query.fetch_all(&mut **tx).await?;
    let reason = format!("skipped by `{}`, which did not follow it", f.key.task_id);
    let mut changes = Vec::with_capacity(rows.len());
    for row in rows {
        let task_id: String = row.try_get("task_id")?;
        let map_index: i64 = row.try_get("map_index")?;
        let key = TiKey {
            task_id,
            map_index,
            ..f.key.clone()
        };
        changes.push(TiChange::new(key).reason(Some(reason.clone())));
    }
    ti_transition(
        tx,
        store,
        TiMove {
            actor: Actor::Worker,
            from: &[S::NoStatus, S::Scheduled],
            to: S::Skipped,
            effect: &TiEffect::default(),
        },
        &changes,
        now_us,
    )
    .await?;
    Ok(())
}
