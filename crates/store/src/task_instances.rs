//! Task instances: creation, guarded state changes with history, claiming, heartbeats,
//! finishing, and the counts the scheduler's queueing decisions need.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use flow_model::TaskInstanceState as S;
use flow_model::transition::Actor;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use crate::{
    Backend, Result, Store, StoreError, from_micros, opt_from_micros, placeholders, to_micros,
};

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
    /// success, failed, skipped or up_for_retry.
    pub state: S,
    pub reason: Option<String>,
    pub next_retry_at: Option<DateTime<Utc>>,
    /// The `return_value` XCom, if any.
    pub xcom: Option<serde_json::Value>,
    pub rendered_fields: Option<String>,
    /// Log lines of the try not yet stored; written in the same transaction.
    pub logs: Vec<crate::LogLine>,
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

/// Slots in use per pool, running/queued counts per DAG and per task, for queueing decisions.
#[derive(Debug, Clone, Default)]
pub struct PoolUsage {
    /// pool -> (total slots, slots occupied by queued or running task instances)
    pub pools: HashMap<String, (i64, i64)>,
    /// dag_id -> queued + running task instances
    pub per_dag: HashMap<String, i64>,
    /// (dag_id, task_id) -> queued + running task instances
    pub per_task: HashMap<(String, String), i64>,
    /// all queued + running task instances
    pub total: i64,
}

const TI_COLUMNS: &str = "dag_id, run_id, task_id, map_index, state, try_number, max_tries, \
    operator, queue, pool, pool_slots, priority_weight, start_date, end_date, duration, \
    scheduled_dttm, queued_dttm, next_retry_at, hostname, worker_id, last_heartbeat_at, updated_at, \
    next_method, next_kwargs";

fn parse_state(s: &str) -> Result<S> {
    S::parse(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn ti_row(r: &AnyRow) -> Result<TiRow> {
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
    })
}

/// Rows of `(run_id, "task:state,task:state,...")` into `run_id -> task_id -> state`.
fn unpack_states(rows: &[AnyRow]) -> Result<HashMap<String, HashMap<String, S>>> {
    let mut out = HashMap::new();
    for row in rows {
        let run_id: String = row.try_get("run_id")?;
        let packed: Option<String> = row.try_get("states")?;
        let states = packed
            .unwrap_or_default()
            .split(',')
            .filter_map(|pair| pair.split_once(':'))
            .map(|(t, s)| Ok((t.to_owned(), parse_state(s)?)))
            .collect::<Result<HashMap<_, _>>>()?;
        out.insert(run_id, states);
    }
    Ok(out)
}

/// (from, to, reason) of changes applied by one batched UPDATE.
type ChangeGroup = (S, S, Option<String>);

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

/// Copies a task instance's current try into the history table (one row per try).
/// Moves finished tries out of `running`, many per statement, each only if it is still
/// running that try. Returns the (key, try) pairs that were applied.
async fn finish_updates<'a>(
    tx: &mut Transaction<'static, Any>,
    finishes: &'a [TiFinish],
    now_us: i64,
) -> Result<std::collections::HashSet<(&'a TiKey, i64)>> {
    const COLS: usize = 8;
    let mut done = std::collections::HashSet::new();
    for chunk in finishes.chunks(crate::rows_per_statement(tx, COLS)) {
        let values: Vec<String> = (0..chunk.len())
            .map(|i| format!("({})", placeholders(2 + i * COLS, COLS)))
            .collect();
        // VALUES columns are named column1.. on both PostgreSQL and SQLite; NULLs need a type.
        let sql = format!(
            "UPDATE task_instance SET state = v.column1, end_date = $1, updated_at = $1, \
             duration = ($1 - start_date) / 1000000.0, \
             next_retry_at = CAST(v.column2 AS BIGINT), \
             next_method = NULL, next_kwargs = NULL, \
             rendered_fields = COALESCE(CAST(v.column3 AS TEXT), rendered_fields) \
             FROM (VALUES {}) v \
             WHERE task_instance.dag_id = v.column4 AND task_instance.run_id = v.column5 \
             AND task_instance.task_id = v.column6 AND task_instance.map_index = v.column7 \
             AND task_instance.try_number = v.column8 AND task_instance.state = 'running' \
             RETURNING task_instance.dag_id, task_instance.run_id, task_instance.task_id, \
             task_instance.map_index, task_instance.try_number",
            values.join(", ")
        );
        let mut q = sqlx::query(&sql).bind(now_us);
        for f in chunk {
            q = q
                .bind(f.state.as_str())
                .bind(f.next_retry_at.map(to_micros))
                .bind(f.rendered_fields.as_deref())
                .bind(&f.key.dag_id)
                .bind(&f.key.run_id)
                .bind(&f.key.task_id)
                .bind(f.key.map_index)
                .bind(f.try_number);
        }
        for row in q.fetch_all(&mut **tx).await? {
            let dag_id: String = row.try_get(0)?;
            let task_id: String = row.try_get(2)?;
            let run_id: String = row.try_get(1)?;
            let map_index: i64 = row.try_get(3)?;
            let try_number: i64 = row.try_get(4)?;
            if let Some(f) = chunk.iter().find(|f| {
                f.key.task_id == task_id
                    && f.key.run_id == run_id
                    && f.key.dag_id == dag_id
                    && f.key.map_index == map_index
                    && f.try_number == try_number
            }) {
                done.insert((&f.key, f.try_number));
            }
        }
    }
    Ok(done)
}

/// [`record_history`] for many task instances, in as few statements as the backend allows.
async fn record_history_many(
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

async fn record_history(
    tx: &mut Transaction<'static, Any>,
    key: &TiKey,
    reason: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO task_instance_history (dag_id, run_id, task_id, map_index, try_number, \
         state, start_date, end_date, duration, hostname, operator, queue, pool, reason) \
         SELECT dag_id, run_id, task_id, map_index, try_number, state, start_date, end_date, \
         duration, hostname, operator, queue, pool, $5 FROM task_instance \
         WHERE dag_id = $1 AND run_id = $2 AND task_id = $3 AND map_index = $4 AND try_number > 0 \
         ON CONFLICT (dag_id, run_id, task_id, map_index, try_number) DO UPDATE SET \
         state = excluded.state, end_date = excluded.end_date, duration = excluded.duration, \
         reason = excluded.reason",
    )
    .bind(&key.dag_id)
    .bind(&key.run_id)
    .bind(&key.task_id)
    .bind(key.map_index)
    .bind(reason)
    .execute(&mut **tx)
    .await?;
    Ok(())
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
            "SELECT {TI_COLUMNS} FROM task_instance WHERE dag_id = $1 AND run_id = $2 \
             ORDER BY task_id, map_index"
        ))
        .bind(dag_id)
        .bind(run_id)
        .fetch_all(self.read_pool())
        .await?;
        rows.iter().map(ti_row).collect()
    }

    /// Task instances of every queued or running dag run, in one query, with the columns
    /// scheduling decisions use (key, state, tries, pool, priority, schedule and retry times);
    /// the others are left empty. This is read on every scheduler pass, so it stays lean.
    pub async fn ti_list_active_runs(&self) -> Result<Vec<TiRow>> {
        let rows = sqlx::query(
            "SELECT ti.dag_id, ti.run_id, ti.task_id, ti.map_index, ti.state, ti.try_number, \
             ti.max_tries, ti.pool, ti.pool_slots, ti.priority_weight, ti.scheduled_dttm, \
             ti.next_retry_at FROM task_instance ti JOIN dag_run r \
             ON r.dag_id = ti.dag_id AND r.run_id = ti.run_id \
             WHERE r.state IN ('queued', 'running')",
        )
        .fetch_all(self.read_pool())
        .await?;
        rows.iter()
            .map(|r| {
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
                    operator: String::new(),
                    queue: String::new(),
                    pool: r.try_get("pool")?,
                    pool_slots: r.try_get("pool_slots")?,
                    priority_weight: r.try_get("priority_weight")?,
                    start_date: None,
                    end_date: None,
                    duration: None,
                    scheduled_dttm: opt_from_micros(r.try_get("scheduled_dttm")?),
                    queued_dttm: None,
                    next_retry_at: opt_from_micros(r.try_get("next_retry_at")?),
                    hostname: String::new(),
                    worker_id: None,
                    last_heartbeat_at: None,
                    updated_at: DateTime::<Utc>::default(),
                    next_method: None,
                    next_kwargs: None,
                })
            })
            .collect()
    }

    pub async fn ti_get(&self, key: &TiKey) -> Result<Option<TiRow>> {
        let row = sqlx::query(&format!(
            "SELECT {TI_COLUMNS} FROM task_instance WHERE {}",
            key_where(1)
        ))
        .bind(&key.dag_id)
        .bind(&key.run_id)
        .bind(&key.task_id)
        .bind(key.map_index)
        .fetch_optional(self.read_pool())
        .await?;
        row.as_ref().map(ti_row).transpose()
    }

    /// `run_id -> task_id -> state` for some runs of a DAG (unmapped task instances), for
    /// the grid. One row per run comes back, the states packed by the database, so a grid of
    /// 100 runs x 200 tasks is one small result rather than 20,000 rows.
    pub async fn ti_states_for_runs(
        &self,
        dag_id: &str,
        run_ids: &[String],
    ) -> Result<HashMap<String, HashMap<String, S>>> {
        let mut out = HashMap::new();
        if run_ids.is_empty() {
            return Ok(out);
        }
        // Task ids and states cannot contain ':' or ',' (ids are [A-Za-z0-9_.-]).
        let packed = match self.backend() {
            Backend::Postgres => "string_agg(task_id || ':' || state, ',')",
            Backend::Sqlite => "group_concat(task_id || ':' || state, ',')",
        };
        for chunk in run_ids.chunks(500) {
            let sql = format!(
                "SELECT run_id, {packed} AS states FROM task_instance \
                 WHERE dag_id = $1 AND map_index = -1 AND run_id IN ({}) GROUP BY run_id",
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

    /// [`Store::ti_states_for_runs`] for the latest `n` runs of a DAG (as
    /// [`Store::dag_run_list`] orders them), choosing the runs in the same query.
    pub async fn ti_states_for_latest_runs(
        &self,
        dag_id: &str,
        n: i64,
    ) -> Result<HashMap<String, HashMap<String, S>>> {
        let packed = match self.backend() {
            Backend::Postgres => "string_agg(task_id || ':' || state, ',')",
            Backend::Sqlite => "group_concat(task_id || ':' || state, ',')",
        };
        let sql = format!(
            "SELECT run_id, {packed} AS states FROM task_instance \
             WHERE dag_id = $1 AND map_index = -1 AND run_id IN ( \
               SELECT run_id FROM dag_run WHERE dag_id = $1 \
               ORDER BY run_after DESC, id DESC LIMIT $2) \
             GROUP BY run_id"
        );
        let rows = sqlx::query(&sql)
            .bind(dag_id)
            .bind(n)
            .fetch_all(self.read_pool())
            .await?;
        unpack_states(&rows)
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
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let now_us = to_micros(now);
        let mut tx = self.begin().await?;
        let mut applied = vec![false; changes.len()];
        let mut transitions = Vec::new();
        let lock = match self.backend() {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        };
        // Simple changes (one expected state, no retry time, no try ending) go in one UPDATE
        // per (from, to, reason): a scheduler pass that queues a hundred task instances pays a
        // few statements, not a hundred. Groups run in order of first appearance, so a task
        // instance scheduled and queued in one call is scheduled first.
        let is_simple = |c: &StateChange| {
            c.from.len() == 1
                && c.next_retry_at.is_none()
                && !(c.from[0] == S::Running && (c.to.is_finished() || c.to == S::UpForRetry))
        };
        let mut groups: Vec<(ChangeGroup, Vec<usize>)> = Vec::new();
        for (i, c) in changes.iter().enumerate().filter(|(_, c)| is_simple(c)) {
            let group = (c.from[0], c.to, c.reason.clone());
            match groups.iter_mut().find(|(g, _)| *g == group) {
                Some((_, members)) => members.push(i),
                None => groups.push((group, vec![i])),
            }
        }
        for ((from, to, reason), members) in &groups {
            for chunk in members.chunks(crate::rows_per_statement(&tx, 4)) {
                let values: Vec<String> = (0..chunk.len())
                    .map(|j| format!("({})", placeholders(3 + j * 4, 4)))
                    .collect();
                let sql = format!(
                    "UPDATE task_instance SET state = $1, updated_at = $2, \
                     scheduled_dttm = CASE WHEN $1 = 'scheduled' THEN $2 ELSE scheduled_dttm END, \
                     queued_dttm = CASE WHEN $1 = 'queued' THEN $2 ELSE queued_dttm END, \
                     next_retry_at = NULL, \
                     next_method = CASE WHEN $1 IN ('scheduled', 'queued', 'running', 'up_for_reschedule') THEN next_method ELSE NULL END, \
                     next_kwargs = CASE WHEN $1 IN ('scheduled', 'queued', 'running', 'up_for_reschedule') THEN next_kwargs ELSE NULL END, \
                     trigger_id = NULL, trigger_timeout = NULL, \
                     end_date = CASE WHEN $1 = 'none' THEN NULL ELSE end_date END, \
                     start_date = CASE WHEN $1 = 'none' THEN NULL ELSE start_date END, \
                     worker_id = CASE WHEN $1 IN ('none', 'scheduled', 'queued') THEN NULL ELSE worker_id END \
                     WHERE state = ${} AND (dag_id, run_id, task_id, map_index) IN (VALUES {}) \
                     RETURNING dag_id, run_id, task_id, map_index, try_number",
                    3 + chunk.len() * 4,
                    values.join(", ")
                );
                let mut q = sqlx::query(&sql).bind(to.as_str()).bind(now_us);
                for &i in chunk {
                    let k = &changes[i].key;
                    q = q
                        .bind(&k.dag_id)
                        .bind(&k.run_id)
                        .bind(&k.task_id)
                        .bind(k.map_index);
                }
                q = q.bind(from.as_str());
                let index: HashMap<&TiKey, usize> =
                    chunk.iter().map(|&i| (&changes[i].key, i)).collect();
                for row in q.fetch_all(&mut *tx).await? {
                    let key = TiKey {
                        dag_id: row.try_get("dag_id")?,
                        run_id: row.try_get("run_id")?,
                        task_id: row.try_get("task_id")?,
                        map_index: row.try_get("map_index")?,
                    };
                    let try_number: i64 = row.try_get("try_number")?;
                    if let Some(&i) = index.get(&key) {
                        applied[i] = true;
                    }
                    transitions.push((key, try_number, *from, *to, reason.clone()));
                }
            }
        }
        for (i, c) in changes.iter().enumerate() {
            if is_simple(c) {
                continue;
            }
            // With one allowed from-state (the scheduler's usual case) a single guarded UPDATE
            // decides; otherwise read the current state first to record the real from-state.
            let state = if let [only] = c.from.as_slice() {
                *only
            } else {
                let current = sqlx::query(&format!(
                    "SELECT state FROM task_instance WHERE {}{lock}",
                    key_where(1)
                ))
                .bind(&c.key.dag_id)
                .bind(&c.key.run_id)
                .bind(&c.key.task_id)
                .bind(c.key.map_index)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(current) = current else {
                    applied[i] = false;
                    continue;
                };
                let state = parse_state(&current.try_get::<String, _>("state")?)?;
                if !c.from.contains(&state) {
                    applied[i] = false;
                    continue;
                }
                state
            };
            let finished_now = c.to.is_finished() || c.to == S::UpForRetry;
            let sql = format!(
                "UPDATE task_instance SET state = $1, updated_at = $2, \
                 scheduled_dttm = CASE WHEN $1 = 'scheduled' THEN $2 ELSE scheduled_dttm END, \
                 queued_dttm = CASE WHEN $1 = 'queued' THEN $2 ELSE queued_dttm END, \
                 next_retry_at = $3, \
                 next_method = CASE WHEN $1 IN ('scheduled', 'queued', 'running', 'up_for_reschedule') THEN next_method ELSE NULL END, \
                 next_kwargs = CASE WHEN $1 IN ('scheduled', 'queued', 'running', 'up_for_reschedule') THEN next_kwargs ELSE NULL END, \
                 trigger_id = NULL, trigger_timeout = NULL, \
                 end_date = CASE WHEN $4 = 1 THEN $2 WHEN $1 = 'none' THEN NULL ELSE end_date END, \
                 start_date = CASE WHEN $1 = 'none' THEN NULL ELSE start_date END, \
                 worker_id = CASE WHEN $1 IN ('none', 'scheduled', 'queued') THEN NULL ELSE worker_id END \
                 WHERE {} AND state = $9 RETURNING try_number",
                key_where(5)
            );
            let row = sqlx::query(&sql)
                .bind(c.to.as_str())
                .bind(now_us)
                .bind(c.next_retry_at.map(to_micros))
                .bind(i64::from(finished_now && state == S::Running))
                .bind(&c.key.dag_id)
                .bind(&c.key.run_id)
                .bind(&c.key.task_id)
                .bind(c.key.map_index)
                .bind(state.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            let Some(row) = row else {
                applied[i] = false;
                continue;
            };
            let try_number: i64 = row.try_get("try_number")?;
            if state == S::Running && finished_now {
                record_history(&mut tx, &c.key, c.reason.as_deref()).await?;
            }
            transitions.push((c.key.clone(), try_number, state, c.to, c.reason.clone()));
            applied[i] = true;
        }
        insert_transitions(&mut tx, &transitions, actor, now_us).await?;
        if transitions.iter().any(|t| t.3 == S::Queued) {
            crate::notify_in(self.backend(), &mut tx, crate::WAKE_WORKERS).await?;
        }
        if actor == Actor::User && !transitions.is_empty() {
            // A hand-made change may unblock downstream tasks or finish the run.
            crate::notify_in(self.backend(), &mut tx, crate::WAKE_SCHEDULER).await?;
        }
        tx.commit().await?;
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
        let now_us = to_micros(now);
        let lock = match self.backend() {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE task_instance SET state = 'running', \
             try_number = CASE WHEN next_method IS NULL THEN try_number + 1 ELSE try_number END, \
             start_date = CASE WHEN next_method IS NULL THEN $1 ELSE COALESCE(start_date, $1) END, \
             end_date = NULL, duration = NULL, hostname = $2, worker_id = $3, \
             last_heartbeat_at = $1, updated_at = $1 \
             WHERE (dag_id, run_id, task_id, map_index) IN ( \
               SELECT dag_id, run_id, task_id, map_index FROM task_instance \
               WHERE state = 'queued' AND queue IN ({}) \
               ORDER BY priority_weight DESC, queued_dttm LIMIT $4{lock}) \
             AND state = 'queued' RETURNING {TI_COLUMNS}",
            placeholders(5, queues.len())
        );
        let mut q = sqlx::query(&sql)
            .bind(now_us)
            .bind(hostname)
            .bind(worker_id)
            .bind(limit);
        for queue in queues {
            q = q.bind(queue);
        }
        let mut tx = self.begin().await?;
        let rows = q.fetch_all(&mut *tx).await?;
        let claimed: Vec<TiRow> = rows.iter().map(ti_row).collect::<Result<_>>()?;
        let transitions: Vec<_> = claimed
            .iter()
            .map(|t| (t.key.clone(), t.try_number, S::Queued, S::Running, None))
            .collect();
        insert_transitions(&mut tx, &transitions, Actor::Worker, now_us).await?;
        tx.commit().await?;
        Ok(claimed)
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
        tx.commit().await?;
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
        let mut tx = self.begin().await?;
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
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 0 {
                lost.push(key.clone());
            }
        }
        tx.commit().await?;
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
        let mut applied = Vec::with_capacity(finishes.len());
        let mut transitions = Vec::new();
        let mut histories: Vec<(&TiKey, Option<&str>)> = Vec::new();
        // Log lines are kept even when the outcome is not applied (a rescued try's output).
        let lines: Vec<(&TiKey, i64, &crate::LogLine)> = finishes
            .iter()
            .flat_map(|f| f.logs.iter().map(move |l| (&f.key, f.try_number, l)))
            .collect();
        crate::logs::append_many_in(&mut tx, &lines).await?;
        let done = finish_updates(&mut tx, finishes, now_us).await?;
        for f in finishes {
            let key = (&f.key, f.try_number);
            if !done.contains(&key) {
                applied.push(false);
                continue;
            }
            histories.push((&f.key, f.reason.as_deref()));
            transitions.push((
                f.key.clone(),
                f.try_number,
                S::Running,
                f.state,
                f.reason.clone(),
            ));
            if let Some(value) = &f.xcom {
                crate::xcom::upsert(&mut tx, &f.key, "return_value", value, now_us).await?;
            }
            applied.push(true);
        }
        record_history_many(&mut tx, &histories).await?;
        insert_transitions(&mut tx, &transitions, Actor::Worker, now_us).await?;
        if !transitions.is_empty() {
            crate::notify_in(self.backend(), &mut tx, crate::WAKE_SCHEDULER).await?;
        }
        tx.commit().await?;
        Ok(applied)
    }

    /// Running task instances whose last heartbeat is older than `cutoff` (zombies).
    pub async fn ti_list_stale_running(&self, cutoff: DateTime<Utc>) -> Result<Vec<TiRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {TI_COLUMNS} FROM task_instance WHERE state = 'running' \
             AND (last_heartbeat_at IS NULL OR last_heartbeat_at < $1)"
        ))
        .bind(to_micros(cutoff))
        .fetch_all(self.read_pool())
        .await?;
        rows.iter().map(ti_row).collect()
    }

    /// Occupancy of pools, DAGs and tasks by queued and running task instances.
    pub async fn ti_pool_usage(&self) -> Result<PoolUsage> {
        let mut usage = PoolUsage::default();
        for r in sqlx::query("SELECT pool, slots FROM slot_pool")
            .fetch_all(self.read_pool())
            .await?
        {
            usage
                .pools
                .insert(r.try_get("pool")?, (r.try_get("slots")?, 0));
        }
        let rows = sqlx::query(
            "SELECT dag_id, task_id, pool, CAST(SUM(pool_slots) AS BIGINT) AS slots, COUNT(*) AS n \
             FROM task_instance WHERE state IN ('queued', 'running') \
             GROUP BY dag_id, task_id, pool",
        )
        .fetch_all(self.read_pool())
        .await?;
        for r in rows {
            let dag_id: String = r.try_get("dag_id")?;
            let task_id: String = r.try_get("task_id")?;
            let pool: String = r.try_get("pool")?;
            let slots: i64 = r.try_get("slots")?;
            let n: i64 = r.try_get("n")?;
            usage.pools.entry(pool).or_insert((0, 0)).1 += slots;
            *usage.per_dag.entry(dag_id.clone()).or_default() += n;
            *usage.per_task.entry((dag_id, task_id)).or_default() += n;
            usage.total += n;
        }
        Ok(usage)
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
    pub async fn ti_clear(&self, keys: &[(TiKey, i64)], now: DateTime<Utc>) -> Result<ClearReport> {
        let now_us = to_micros(now);
        let mut report = ClearReport::default();
        let mut tx = self.begin().await?;
        let mut transitions = Vec::new();
        let mut runs: std::collections::BTreeSet<(String, String)> = Default::default();
        for (key, retries) in keys {
            let row = sqlx::query(&format!(
                "SELECT state, try_number FROM task_instance WHERE {}",
                key_where(1)
            ))
            .bind(&key.dag_id)
            .bind(&key.run_id)
            .bind(&key.task_id)
            .bind(key.map_index)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else { continue };
            let state = parse_state(&row.try_get::<String, _>("state")?)?;
            let try_number: i64 = row.try_get("try_number")?;
            let to = match state {
                S::Running => S::Restarting,
                S::NoStatus | S::Removed | S::Restarting | S::Shutdown => continue,
                _ => S::NoStatus,
            };
            sqlx::query(&format!(
                "UPDATE task_instance SET state = $1, max_tries = $2, updated_at = $3, \
                 next_retry_at = NULL, \
                 next_method = NULL, next_kwargs = NULL, trigger_id = NULL, trigger_timeout = NULL, \
                 start_date = CASE WHEN $1 = 'none' THEN NULL ELSE start_date END, \
                 end_date = CASE WHEN $1 = 'none' THEN NULL ELSE end_date END, \
                 worker_id = CASE WHEN $1 = 'none' THEN NULL ELSE worker_id END \
                 WHERE {} AND state = $8",
                key_where(4)
            ))
            .bind(to.as_str())
            .bind(try_number + retries)
            .bind(now_us)
            .bind(&key.dag_id)
            .bind(&key.run_id)
            .bind(&key.task_id)
            .bind(key.map_index)
            .bind(state.as_str())
            .execute(&mut *tx)
            .await?;
            crate::xcom::delete_in(&mut tx, key).await?;
            if to == S::Restarting {
                report.restarting += 1;
            } else {
                report.cleared += 1;
            }
            transitions.push((
                key.clone(),
                try_number,
                state,
                to,
                Some("cleared".to_owned()),
            ));
            runs.insert((key.dag_id.clone(), key.run_id.clone()));
        }
        insert_transitions(&mut tx, &transitions, Actor::User, now_us).await?;
        for (dag_id, run_id) in runs {
            let requeued = sqlx::query(
                "UPDATE dag_run SET state = 'queued', end_date = NULL, updated_at = $1 \
                 WHERE dag_id = $2 AND run_id = $3 AND state IN ('success', 'failed')",
            )
            .bind(now_us)
            .bind(&dag_id)
            .bind(&run_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if requeued > 0 {
                crate::dag_runs::record_run_transition(&mut tx, &dag_id, &run_id, now_us).await?;
            }
            report.runs_requeued += usize::try_from(requeued).unwrap_or(0);
        }
        crate::notify_in(self.backend(), &mut tx, crate::WAKE_SCHEDULER).await?;
        tx.commit().await?;
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
        let now_us = to_micros(now);
        let mut tx = self.begin().await?;
        let row = sqlx::query(&format!(
            "UPDATE task_instance SET state = 'running', try_number = try_number + 1, \
             next_method = NULL, next_kwargs = NULL, \
             start_date = $1, end_date = NULL, duration = NULL, last_heartbeat_at = $1, \
             updated_at = $1 WHERE {} AND state = 'restarting' AND worker_id = $6 \
             RETURNING {TI_COLUMNS}",
            key_where(2)
        ))
        .bind(now_us)
        .bind(&key.dag_id)
        .bind(&key.run_id)
        .bind(&key.task_id)
        .bind(key.map_index)
        .bind(worker_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(None);
        };
        let ti = ti_row(&row)?;
        insert_transitions(
            &mut tx,
            &[(
                ti.key.clone(),
                ti.try_number,
                S::Restarting,
                S::Running,
                Some("restarted after clear".into()),
            )],
            Actor::Worker,
            now_us,
        )
        .await?;
        tx.commit().await?;
        Ok(Some(ti))
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
        tx.commit().await?;
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
            "SELECT {TI_COLUMNS}, COUNT(*) OVER () AS total_rows FROM task_instance \
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
        Ok((rows.iter().map(ti_row).collect::<Result<_>>()?, total))
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
