//! The one way a task instance or a dag run changes state.
//!
//! Every state change flow makes goes through [`ti_transition`] or [`run_transition`], inside
//! the caller's transaction:
//!
//! 1. The model's table (`flow_model::transition`) must allow every candidate from-state for
//!    the actor. An illegal request is a bug in the caller: it fails the transaction and
//!    changes nothing.
//! 2. The rows are updated with a guard on their current state (and, where asked, their try
//!    number, owning worker or heartbeat age) and `RETURNING`: a row another actor changed
//!    meanwhile is left alone, which is a normal outcome, not an error.
//! 3. Only the rows that changed are recorded (`ti_transition`, `dag_run_transition`), with the
//!    state they really left and the actor; a try that ended also gets its history row.
//! 4. The loops that have something new to do are woken.
//!
//! What a target state implies for the other columns (a claim bumps the try number, a clear
//! forgets the try's dates, a deferral names its trigger) is decided here too, once.
//! Creating rows (a run and its task instances, the instances of a mapped task) is not a state
//! change and happens elsewhere.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use flow_metrics::Handoff;
use flow_model::transition::Actor;
use flow_model::{DagRunState, TaskInstanceState as S};
use sqlx::{Any, Row, Transaction};

use crate::task_instances::{TI_COLUMNS, TiKey, TiRow, insert_transitions, ti_row};
use crate::{Backend, Result, Store, StoreError};

/// A bound value of a statement built at run time.
#[derive(Debug, Clone)]
enum Param {
    Int(Option<i64>),
    Text(Option<String>),
}

/// An SQL statement and its parameters, numbered as they are added.
#[derive(Debug, Default)]
struct Sql {
    text: String,
    params: Vec<Param>,
}

impl Sql {
    fn int(&mut self, v: Option<i64>) -> String {
        self.params.push(Param::Int(v));
        format!("${}", self.params.len())
    }

    fn text(&mut self, v: Option<&str>) -> String {
        self.params.push(Param::Text(v.map(str::to_owned)));
        format!("${}", self.params.len())
    }

    fn query(&self) -> crate::dag_runs::AnyQuery<'_> {
        let mut q = sqlx::query(&self.text);
        for p in &self.params {
            q = match p {
                Param::Int(v) => q.bind(*v),
                Param::Text(v) => q.bind(v.as_deref()),
            };
        }
        q
    }
}

/// One task instance to move, with what differs per row.
#[derive(Debug, Clone)]
pub(crate) struct TiChange {
    pub key: TiKey,
    /// Recorded with the transition.
    pub reason: Option<String>,
    /// Guard: applied only while the task instance is on this try (a worker's report).
    pub try_number: Option<i64>,
    /// `up_for_retry`, `up_for_reschedule`: when the scheduler may schedule it again.
    pub next_retry_at: Option<i64>,
    /// A finished try's rendered template fields.
    pub rendered_fields: Option<String>,
    /// A finished mapped try's label (`map_index_template`).
    pub rendered_map_index: Option<String>,
    /// A clear: the task's retries, granted anew from the current try on
    /// (`max_tries = try_number + retries`).
    pub retries: Option<i64>,
}

impl TiChange {
    pub(crate) fn new(key: TiKey) -> Self {
        TiChange {
            key,
            reason: None,
            try_number: None,
            next_retry_at: None,
            rendered_fields: None,
            rendered_map_index: None,
            retries: None,
        }
    }

    pub(crate) fn reason(mut self, reason: Option<String>) -> Self {
        self.reason = reason;
        self
    }
}

/// What every row of one transition shares: extra guards and the values the target state
/// takes.
#[derive(Debug, Clone, Default)]
pub(crate) struct TiEffect {
    /// Guard: the row belongs to this worker.
    pub worker_is: Option<String>,
    /// Guard: the row's last heartbeat is older than this (microseconds), or missing.
    pub heartbeat_before: Option<i64>,
    /// Guard: the row was queued before this (microseconds).
    pub queued_before: Option<i64>,
    /// `running`: the worker that runs the try, and its host.
    pub worker: Option<String>,
    pub hostname: Option<String>,
    /// `scheduled` (a resumed sensor), `up_for_reschedule`, `deferred`: how the next claim
    /// continues the try, and with what.
    pub next_method: Option<String>,
    pub next_kwargs: Option<String>,
    /// `deferred`: the trigger and when the wait times out (microseconds).
    pub trigger: Option<(i64, i64)>,
    /// The try ending does not count against the task's retries (handed back by a worker
    /// that was stopped): one more try is granted.
    pub grant_try: bool,
}

/// A transition applied to one row: which change asked for it, the state it left, and the row
/// as it is now.
#[derive(Debug, Clone)]
pub(crate) struct Applied {
    pub index: usize,
    pub from: S,
    pub row: TiRow,
}

/// Which optional per-row values a batch carries (the VALUES columns after the key).
#[derive(Debug, Clone, Copy)]
struct Shape {
    try_number: bool,
    next_retry_at: bool,
    rendered_fields: bool,
    rendered_map_index: bool,
    retries: bool,
}

impl Shape {
    fn of(changes: &[TiChange]) -> Self {
        Shape {
            try_number: changes.iter().any(|c| c.try_number.is_some()),
            next_retry_at: changes.iter().any(|c| c.next_retry_at.is_some()),
            rendered_fields: changes.iter().any(|c| c.rendered_fields.is_some()),
            rendered_map_index: changes.iter().any(|c| c.rendered_map_index.is_some()),
            retries: changes.iter().any(|c| c.retries.is_some()),
        }
    }

    fn columns(self) -> usize {
        4 + usize::from(self.try_number)
            + usize::from(self.next_retry_at)
            + usize::from(self.rendered_fields)
            + usize::from(self.rendered_map_index)
            + usize::from(self.retries)
    }

    /// The VALUES column holding an optional value (`v.column5`, ...); only asked for values
    /// the shape carries.
    fn column(self, which: Extra) -> String {
        let present = [
            (Extra::TryNumber, self.try_number),
            (Extra::NextRetryAt, self.next_retry_at),
            (Extra::RenderedFields, self.rendered_fields),
            (Extra::RenderedMapIndex, self.rendered_map_index),
            (Extra::Retries, self.retries),
        ];
        let before = present
            .iter()
            .take_while(|(e, _)| *e != which)
            .filter(|(_, p)| *p)
            .count();
        format!("v.column{}", 5 + before)
    }
}

/// The optional per-row values, in VALUES column order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extra {
    TryNumber,
    NextRetryAt,
    RenderedFields,
    RenderedMapIndex,
    Retries,
}

/// Whether a try was executing in this state (so leaving it ends the try).
fn executing(s: S) -> bool {
    matches!(s, S::Running | S::Shutdown | S::Restarting)
}

/// What moving to `to` from `from` does to the other columns, as SQL assignments.
fn assignments(from: S, to: S, shape: Shape, effect: &TiEffect, sql: &mut Sql) -> String {
    let now = "$2";
    let next_retry_at = if shape.next_retry_at {
        format!("CAST({} AS BIGINT)", shape.column(Extra::NextRetryAt))
    } else {
        "NULL".to_owned()
    };
    let mut set: Vec<String> = Vec::new();
    // A clear grants the task's retries anew from the current try on.
    let retries_granted = shape.retries.then(|| {
        format!(
            "max_tries = try_number + CAST({} AS BIGINT)",
            shape.column(Extra::Retries)
        )
    });
    if effect.grant_try {
        set.push("max_tries = max_tries + 1".to_owned());
    }
    match to {
        S::NoStatus => {
            set.extend(
                [
                    "start_date = NULL",
                    "end_date = NULL",
                    "duration = NULL",
                    "next_retry_at = NULL",
                    "next_method = NULL",
                    "next_kwargs = NULL",
                    "trigger_id = NULL",
                    "trigger_timeout = NULL",
                    "worker_id = NULL",
                    "rendered_map_index = NULL",
                ]
                .map(str::to_owned),
            );
            set.extend(retries_granted.clone());
        }
        S::Scheduled => {
            set.push(format!("scheduled_dttm = {now}"));
            set.extend(
                [
                    "next_retry_at = NULL",
                    "trigger_id = NULL",
                    "trigger_timeout = NULL",
                    "worker_id = NULL",
                ]
                .map(str::to_owned),
            );
            // A resumed sensor carries its event; a retry or a reschedule keeps what it had.
            if let Some(method) = &effect.next_method {
                let m = sql.text(Some(method));
                let k = sql.text(effect.next_kwargs.as_deref());
                set.push(format!("next_method = {m}"));
                set.push(format!("next_kwargs = {k}"));
            }
        }
        S::Queued => {
            set.push(format!("queued_dttm = {now}"));
            set.push("worker_id = NULL".to_owned());
        }
        S::Running => {
            // A new try unless the claim continues one (a sensor's next poke, a resumed
            // deferral): those keep their try number and start date.
            set.push(
                "try_number = CASE WHEN next_method IS NULL THEN try_number + 1 ELSE try_number END"
                    .to_owned(),
            );
            set.push(format!(
                "start_date = CASE WHEN next_method IS NULL THEN {now} ELSE COALESCE(start_date, {now}) END"
            ));
            set.extend(["end_date = NULL", "duration = NULL"].map(str::to_owned));
            set.push(format!("last_heartbeat_at = {now}"));
            if let Some(w) = &effect.worker {
                let w = sql.text(Some(w));
                set.push(format!("worker_id = {w}"));
            }
            if let Some(h) = &effect.hostname {
                let h = sql.text(Some(h));
                set.push(format!("hostname = {h}"));
            }
        }
        S::Restarting => {
            set.extend(
                [
                    "next_retry_at = NULL",
                    "next_method = NULL",
                    "next_kwargs = NULL",
                    "trigger_id = NULL",
                    "trigger_timeout = NULL",
                ]
                .map(str::to_owned),
            );
            set.extend(retries_granted.clone());
        }
        S::UpForReschedule => {
            set.push(format!("next_retry_at = {next_retry_at}"));
            let m = sql.text(effect.next_method.as_deref());
            let k = sql.text(effect.next_kwargs.as_deref());
            set.push(format!("next_method = {m}"));
            set.push(format!("next_kwargs = {k}"));
            set.push("worker_id = NULL".to_owned());
        }
        S::Deferred => {
            let (trigger_id, timeout) = effect.trigger.unzip();
            let t = sql.int(trigger_id);
            let o = sql.int(timeout);
            let m = sql.text(effect.next_method.as_deref());
            set.push(format!("trigger_id = {t}"));
            set.push(format!("trigger_timeout = {o}"));
            set.push(format!("next_method = {m}"));
            set.push("next_kwargs = NULL".to_owned());
            set.push("worker_id = NULL".to_owned());
        }
        S::Shutdown => {}
        S::Success | S::Failed | S::Skipped | S::UpForRetry | S::UpstreamFailed | S::Removed => {
            if executing(from) {
                set.push(format!("end_date = {now}"));
                set.push(format!("duration = ({now} - start_date) / 1000000.0"));
            }
            set.push(format!("next_retry_at = {next_retry_at}"));
            set.extend(
                [
                    "next_method = NULL",
                    "next_kwargs = NULL",
                    "trigger_id = NULL",
                    "trigger_timeout = NULL",
                ]
                .map(str::to_owned),
            );
            if shape.rendered_fields {
                set.push(format!(
                    "rendered_fields = COALESCE(CAST({} AS TEXT), rendered_fields)",
                    shape.column(Extra::RenderedFields)
                ));
            }
            if shape.rendered_map_index {
                set.push(format!(
                    "rendered_map_index = COALESCE(CAST({} AS TEXT), rendered_map_index)",
                    shape.column(Extra::RenderedMapIndex)
                ));
            }
        }
    }
    set.iter().map(|s| format!(", {s}")).collect()
}

/// Who moves task instances from which states to which, with what shared effects.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TiMove<'a> {
    pub actor: Actor,
    /// The states the rows may be in; each must be allowed for (`to`, `actor`) by the model.
    pub from: &'a [S],
    pub to: S,
    pub effect: &'a TiEffect,
}

/// Moves the task instances of `changes` from any of `how.from` to `how.to`, inside `tx`.
/// Returns the changes that were applied; the others found their row in another state (or
/// on another try, worker or heartbeat than the guards ask for) and changed nothing.
pub(crate) async fn ti_transition(
    tx: &mut Transaction<'static, Any>,
    store: &Store,
    how: TiMove<'_>,
    changes: &[TiChange],
    now_us: i64,
) -> Result<Vec<Applied>> {
    let backend = store.backend();
    let TiMove {
        actor,
        from,
        to,
        effect,
    } = how;
    for &f in from {
        flow_model::check_transition(f, to, actor)?;
    }
    if changes.is_empty() || from.is_empty() {
        return Ok(Vec::new());
    }
    // Which state each row is in. With one candidate the guard in the UPDATE decides; with
    // several, read (and on PostgreSQL lock) the rows first, so that each is recorded with
    // the state it really left.
    let groups: Vec<(S, Vec<usize>)> = match from {
        [only] => vec![(*only, (0..changes.len()).collect())],
        _ => current_states(tx, backend, from, changes).await?,
    };
    let shape = Shape::of(changes);
    let mut applied = Vec::new();
    for (state, members) in groups {
        for chunk in members.chunks(crate::rows_per_statement(tx, shape.columns())) {
            applied
                .extend(update_chunk(tx, state, to, shape, effect, changes, chunk, now_us).await?);
        }
    }
    record(tx, store, actor, to, changes, &applied, now_us).await?;
    Ok(applied)
}

/// The current state of each change's row, grouped by state (first appearance first), for the
/// rows whose state is one of `from`.
async fn current_states(
    tx: &mut Transaction<'static, Any>,
    backend: Backend,
    from: &[S],
    changes: &[TiChange],
) -> Result<Vec<(S, Vec<usize>)>> {
    let lock = match backend {
        Backend::Postgres => " FOR UPDATE",
        Backend::Sqlite => "",
    };
    let mut found: HashMap<&TiKey, S> = HashMap::new();
    let index: HashMap<&TiKey, usize> = changes
        .iter()
        .enumerate()
        .map(|(i, c)| (&c.key, i))
        .collect();
    for chunk in changes.chunks(crate::rows_per_statement(tx, 4)) {
        let mut sql = Sql::default();
        let values: Vec<String> = chunk
            .iter()
            .map(|c| {
                format!(
                    "({}, {}, {}, {})",
                    sql.text(Some(&c.key.dag_id)),
                    sql.text(Some(&c.key.run_id)),
                    sql.text(Some(&c.key.task_id)),
                    sql.int(Some(c.key.map_index))
                )
            })
            .collect();
        let states: Vec<String> = from.iter().map(|s| sql.text(Some(s.as_str()))).collect();
        sql.text = format!(
            "SELECT dag_id, run_id, task_id, map_index, state FROM task_instance \
             WHERE (dag_id, run_id, task_id, map_index) IN (VALUES {}) AND state IN ({}){lock}",
            values.join(", "),
            states.join(", ")
        );
        for row in sql.query().fetch_all(&mut **tx).await? {
            let key = TiKey {
                dag_id: row.try_get("dag_id")?,
                run_id: row.try_get("run_id")?,
                task_id: row.try_get("task_id")?,
                map_index: row.try_get("map_index")?,
            };
            let state = crate::task_instances::parse_state(&row.try_get::<String, _>("state")?)?;
            if let Some(&i) = index.get(&key) {
                found.insert(&changes[i].key, state);
            }
        }
    }
    let mut groups: Vec<(S, Vec<usize>)> = Vec::new();
    for (i, c) in changes.iter().enumerate() {
        let Some(&state) = found.get(&c.key) else {
            continue;
        };
        match groups.iter_mut().find(|(s, _)| *s == state) {
            Some((_, members)) => members.push(i),
            None => groups.push((state, vec![i])),
        }
    }
    Ok(groups)
}

/// One guarded UPDATE of the rows `chunk` (indexes into `changes`), all currently in `from`.
#[allow(clippy::too_many_arguments)]
async fn update_chunk(
    tx: &mut Transaction<'static, Any>,
    from: S,
    to: S,
    shape: Shape,
    effect: &TiEffect,
    changes: &[TiChange],
    chunk: &[usize],
    now_us: i64,
) -> Result<Vec<Applied>> {
    let mut sql = Sql::default();
    sql.text(Some(to.as_str())); // $1
    sql.int(Some(now_us)); // $2
    let set = assignments(from, to, shape, effect, &mut sql);
    let values: Vec<String> = chunk
        .iter()
        .map(|&i| {
            let c = &changes[i];
            let mut cols = vec![
                sql.text(Some(&c.key.dag_id)),
                sql.text(Some(&c.key.run_id)),
                sql.text(Some(&c.key.task_id)),
                sql.int(Some(c.key.map_index)),
            ];
            if shape.try_number {
                cols.push(sql.int(c.try_number));
            }
            if shape.next_retry_at {
                cols.push(sql.int(c.next_retry_at));
            }
            if shape.rendered_fields {
                cols.push(sql.text(c.rendered_fields.as_deref()));
            }
            if shape.rendered_map_index {
                cols.push(sql.text(c.rendered_map_index.as_deref()));
            }
            if shape.retries {
                cols.push(sql.int(c.retries));
            }
            format!("({})", cols.join(", "))
        })
        .collect();
    let from_param = sql.text(Some(from.as_str()));
    let mut guards = format!(" AND task_instance.state = {from_param}");
    if shape.try_number {
        guards.push_str(&format!(
            " AND (CAST({c} AS BIGINT) IS NULL OR task_instance.try_number = CAST({c} AS BIGINT))",
            c = shape.column(Extra::TryNumber)
        ));
    }
    if let Some(w) = &effect.worker_is {
        let w = sql.text(Some(w));
        guards.push_str(&format!(" AND task_instance.worker_id = {w}"));
    }
    if let Some(before) = effect.heartbeat_before {
        let b = sql.int(Some(before));
        guards.push_str(&format!(
            " AND (task_instance.last_heartbeat_at IS NULL OR task_instance.last_heartbeat_at < {b})"
        ));
    }
    if let Some(before) = effect.queued_before {
        let b = sql.int(Some(before));
        guards.push_str(&format!(" AND task_instance.queued_dttm < {b}"));
    }
    let returning: Vec<String> = TI_COLUMNS
        .split(',')
        .map(|c| format!("task_instance.{}", c.trim()))
        .collect();
    // VALUES columns are named column1.. on both PostgreSQL and SQLite.
    sql.text = format!(
        "UPDATE task_instance SET state = $1, updated_at = $2{set} FROM (VALUES {}) v \
         WHERE task_instance.dag_id = v.column1 AND task_instance.run_id = v.column2 \
         AND task_instance.task_id = v.column3 \
         AND task_instance.map_index = CAST(v.column4 AS BIGINT){guards} \
         RETURNING {}",
        values.join(", "),
        returning.join(", ")
    );
    let index: HashMap<&TiKey, usize> = chunk.iter().map(|&i| (&changes[i].key, i)).collect();
    let mut applied = Vec::new();
    for r in sql.query().fetch_all(&mut **tx).await? {
        let row = ti_row(&r)?;
        if let Some(&i) = index.get(&row.key) {
            applied.push(Applied {
                index: i,
                from,
                row,
            });
        }
    }
    Ok(applied)
}

/// Records the applied changes: transitions, the history row of each try that ended, and the
/// wake-ups.
async fn record(
    tx: &mut Transaction<'static, Any>,
    store: &Store,
    actor: Actor,
    to: S,
    changes: &[TiChange],
    applied: &[Applied],
    now_us: i64,
) -> Result<()> {
    if applied.is_empty() {
        return Ok(());
    }
    let transitions: Vec<_> = applied
        .iter()
        .map(|a| {
            (
                a.row.key.clone(),
                a.row.try_number,
                a.from,
                to,
                changes[a.index].reason.clone(),
            )
        })
        .collect();
    insert_transitions(tx, &transitions, actor, now_us).await?;
    observe(to, applied);
    let ended = !matches!(to, S::Running | S::Restarting | S::Shutdown | S::NoStatus);
    let histories: Vec<(&TiKey, Option<&str>)> = applied
        .iter()
        .filter(|a| ended && executing(a.from))
        .map(|a| (&a.row.key, changes[a.index].reason.as_deref()))
        .collect();
    crate::task_instances::record_history_many(tx, &histories).await?;
    if to == S::Queued {
        crate::wake::notify_in(store, tx, crate::WAKE_WORKERS).await?;
    }
    // The scheduler decides what follows anything it did not do itself (a try that ended, a
    // hand-made change, a resumed sensor).
    if actor != Actor::Scheduler && to != S::Running {
        crate::wake::notify_in(store, tx, crate::WAKE_SCHEDULER).await?;
    }
    Ok(())
}

/// Records the hand-offs and outcomes of applied changes in this process's metrics. Counted
/// inside the transaction: a batch that rolls back is rare and retried, so a count may run
/// one ahead, never behind.
fn observe(to: S, applied: &[Applied]) {
    let m = flow_metrics::metrics();
    let span = |from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>| match (from, to) {
        (Some(f), Some(t)) => Some((t - f).to_std().unwrap_or_default()),
        _ => None,
    };
    for a in applied {
        let row = &a.row;
        match (a.from, to) {
            (S::Scheduled, S::Queued) => {
                if let Some(d) = span(row.scheduled_dttm, row.queued_dttm) {
                    m.observe_handoff(Handoff::TiScheduledToQueued, d);
                }
            }
            (S::Queued, S::Running) => {
                m.ti_start
                    .get_or_create(&[
                        ("dag_id", row.key.dag_id.clone()),
                        ("task_id", row.key.task_id.clone()),
                    ])
                    .inc();
                if let Some(d) = span(row.queued_dttm, row.start_date) {
                    m.observe_handoff(Handoff::TiQueuedToRunning, d);
                }
            }
            (from, to) if executing(from) && !executing(to) && to != S::NoStatus => {
                m.ti_finish
                    .get_or_create(&[
                        ("dag_id", row.key.dag_id.clone()),
                        ("task_id", row.key.task_id.clone()),
                        ("state", to.as_str().to_owned()),
                    ])
                    .inc();
                if let Some(d) = span(row.start_date, row.end_date) {
                    m.observe_handoff(Handoff::TiRunningToFinished, d);
                }
            }
            _ => {}
        }
    }
}

/// Records a run's hand-off to running, or its duration when it ends, in this process's
/// metrics (`queued_at` and `start_date` as they were before the change, in microseconds).
fn observe_run(
    dag_id: &str,
    to: DagRunState,
    queued_at: Option<i64>,
    started: Option<i64>,
    now_us: i64,
) {
    let m = flow_metrics::metrics();
    match to {
        DagRunState::Running => {
            if let (Some(q), None) = (queued_at, started) {
                m.observe_handoff(
                    Handoff::RunQueuedToRunning,
                    flow_metrics::span_us(q, now_us),
                );
            }
        }
        DagRunState::Success | DagRunState::Failed => {
            if let Some(begin) = started.or(queued_at) {
                m.dagrun_duration
                    .get_or_create(&[
                        ("dag_id", dag_id.to_owned()),
                        ("state", to.as_str().to_owned()),
                    ])
                    .observe(flow_metrics::span_us(begin, now_us).as_secs_f64());
            }
        }
        DagRunState::Queued => {}
    }
}

/// A dag run to move, and why.
#[derive(Debug, Clone)]
pub(crate) struct RunChange {
    pub dag_id: String,
    pub run_id: String,
    pub reason: Option<String>,
}

/// Moves dag runs from any of `from` to `to`, as `actor`, inside `tx`. Moving to running
/// stamps `start_date` (once), to success or failed stamps `end_date`, back to queued clears
/// it. Returns, per applied change, its index in `runs` and the state it left.
pub(crate) async fn run_transition(
    tx: &mut Transaction<'static, Any>,
    store: &Store,
    actor: Actor,
    from: &[DagRunState],
    to: DagRunState,
    runs: &[RunChange],
    now_us: i64,
) -> Result<Vec<(usize, DagRunState)>> {
    let backend = store.backend();
    for &f in from {
        flow_model::check_run_transition(f, to, actor)?;
    }
    if runs.is_empty() || from.is_empty() {
        return Ok(Vec::new());
    }
    let lock = match backend {
        Backend::Postgres => " FOR UPDATE",
        Backend::Sqlite => "",
    };
    let mut applied = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        let mut sql = Sql::default();
        let d = sql.text(Some(&run.dag_id));
        let r = sql.text(Some(&run.run_id));
        let states: Vec<String> = from.iter().map(|s| sql.text(Some(s.as_str()))).collect();
        sql.text = format!(
            "SELECT state, queued_at, start_date FROM dag_run \
             WHERE dag_id = {d} AND run_id = {r} AND state IN ({}){lock}",
            states.join(", ")
        );
        let Some(row) = sql.query().fetch_optional(&mut **tx).await? else {
            continue;
        };
        let state: String = row.try_get("state")?;
        let state = DagRunState::parse(&state).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let queued_at: Option<i64> = row.try_get("queued_at")?;
        let started: Option<i64> = row.try_get("start_date")?;
        let n = sqlx::query(
            "UPDATE dag_run SET state = $1, updated_at = $2, \
             start_date = CASE WHEN $1 = 'running' THEN COALESCE(start_date, $2) ELSE start_date END, \
             end_date = CASE WHEN $1 IN ('success', 'failed') THEN $2 ELSE NULL END, \
             queued_at = CASE WHEN $1 = 'queued' THEN $2 ELSE queued_at END \
             WHERE dag_id = $3 AND run_id = $4 AND state = $5",
        )
        .bind(to.as_str())
        .bind(now_us)
        .bind(&run.dag_id)
        .bind(&run.run_id)
        .bind(state.as_str())
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if n == 0 {
            continue;
        }
        observe_run(&run.dag_id, to, queued_at, started, now_us);
        record_run(
            tx,
            &run.dag_id,
            &run.run_id,
            Some(state),
            actor,
            run.reason.as_deref(),
            now_us,
        )
        .await?;
        applied.push((i, state));
    }
    if !applied.is_empty() && actor != Actor::Scheduler {
        crate::wake::notify_in(store, tx, crate::WAKE_SCHEDULER).await?;
    }
    Ok(applied)
}

/// Records a run's current state in `dag_run_transition`: a change from `from`, or its
/// creation (`from` None).
pub(crate) async fn record_run(
    tx: &mut Transaction<'static, Any>,
    dag_id: &str,
    run_id: &str,
    from: Option<DagRunState>,
    actor: Actor,
    reason: Option<&str>,
    now_us: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO dag_run_transition (dag_id, run_id, run_type, from_state, to_state, actor, \
         reason, at) \
         SELECT dag_id, run_id, run_type, $3, state, $4, $5, $6 FROM dag_run \
         WHERE dag_id = $1 AND run_id = $2",
    )
    .bind(dag_id)
    .bind(run_id)
    .bind(from.map(DagRunState::as_str))
    .bind(actor.as_str())
    .bind(reason)
    .bind(now_us)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
