//! Dag runs: creation (with their task instances, atomically) and state changes.

use chrono::{DateTime, Utc};
use flow_model::{DagRunState, DagRunType};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::task_instances::{NewTaskInstance, insert_task_instances};
use crate::transition::{RunChange, run_transition};
use crate::{
    Result, StateChange, Store, StoreError, from_micros, opt_from_micros, placeholders, to_micros,
};
use flow_model::Actor;

#[derive(Debug, Clone)]
pub struct NewDagRun {
    pub dag_id: String,
    pub run_id: String,
    pub run_type: DagRunType,
    /// `queued` normally; the scheduler moves it to `running` within `max_active_runs`.
    pub state: DagRunState,
    pub logical_date: Option<DateTime<Utc>>,
    pub data_interval_start: Option<DateTime<Utc>>,
    pub data_interval_end: Option<DateTime<Utc>>,
    pub run_after: DateTime<Utc>,
    pub conf: serde_json::Value,
    pub note: Option<String>,
    pub triggered_by: Option<String>,
    pub dag_hash: String,
}

/// A run the scheduler ends, with the DAG callbacks its end fires.
#[derive(Debug, Clone, PartialEq)]
pub struct RunFinish {
    pub dag_id: String,
    pub run_id: String,
    pub state: DagRunState,
    pub reason: Option<String>,
    pub callbacks: Vec<crate::NewCallback>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DagRunRow {
    pub id: i64,
    pub dag_id: String,
    pub run_id: String,
    pub run_type: DagRunType,
    pub state: DagRunState,
    pub logical_date: Option<DateTime<Utc>>,
    pub data_interval_start: Option<DateTime<Utc>>,
    pub data_interval_end: Option<DateTime<Utc>>,
    pub run_after: DateTime<Utc>,
    pub queued_at: Option<DateTime<Utc>>,
    pub start_date: Option<DateTime<Utc>>,
    pub end_date: Option<DateTime<Utc>>,
    pub conf: serde_json::Value,
    pub note: Option<String>,
    pub triggered_by: Option<String>,
    pub dag_hash: String,
    /// The backfill that made the run, whose `max_active_runs` it counts toward.
    pub backfill_id: Option<i64>,
}

pub(crate) const RUN_COLUMNS: &str = "id, dag_id, run_id, run_type, state, logical_date, \
    data_interval_start, data_interval_end, run_after, queued_at, start_date, end_date, conf, \
    note, triggered_by, dag_hash, backfill_id";

pub(crate) fn run_row(r: &AnyRow) -> Result<DagRunRow> {
    let run_type: String = r.try_get("run_type")?;
    let state: String = r.try_get("state")?;
    let conf: String = r.try_get("conf")?;
    Ok(DagRunRow {
        id: r.try_get("id")?,
        dag_id: r.try_get("dag_id")?,
        run_id: r.try_get("run_id")?,
        run_type: DagRunType::parse(&run_type).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        state: DagRunState::parse(&state).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        logical_date: opt_from_micros(r.try_get("logical_date")?),
        data_interval_start: opt_from_micros(r.try_get("data_interval_start")?),
        data_interval_end: opt_from_micros(r.try_get("data_interval_end")?),
        run_after: from_micros(r.try_get("run_after")?),
        queued_at: opt_from_micros(r.try_get("queued_at")?),
        start_date: opt_from_micros(r.try_get("start_date")?),
        end_date: opt_from_micros(r.try_get("end_date")?),
        conf: serde_json::from_str(&conf).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        note: r.try_get("note")?,
        triggered_by: r.try_get("triggered_by")?,
        dag_hash: r.try_get("dag_hash")?,
        backfill_id: r.try_get("backfill_id")?,
    })
}

/// Who creates runs of this type: the scheduler (schedules, events) or a person (manual runs,
/// backfills).
fn creator(run_type: DagRunType) -> Actor {
    match run_type {
        DagRunType::Scheduled | DagRunType::Event | DagRunType::AssetTriggered => Actor::Scheduler,
        DagRunType::Manual | DagRunType::Backfill => Actor::User,
    }
}

/// Inserts a run (nothing if it exists), its task instances and its first transition.
pub(crate) async fn create_in(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    run: &NewDagRun,
    task_instances: &[NewTaskInstance],
    now_us: i64,
) -> Result<Option<DagRunRow>> {
    let row = sqlx::query(&format!(
        "INSERT INTO dag_run (dag_id, run_id, run_type, state, logical_date, \
         data_interval_start, data_interval_end, run_after, queued_at, start_date, conf, note, \
         triggered_by, dag_hash, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
         ON CONFLICT DO NOTHING RETURNING {RUN_COLUMNS}"
    ))
    .bind(&run.dag_id)
    .bind(&run.run_id)
    .bind(run.run_type.as_str())
    .bind(run.state.as_str())
    .bind(run.logical_date.map(to_micros))
    .bind(run.data_interval_start.map(to_micros))
    .bind(run.data_interval_end.map(to_micros))
    .bind(to_micros(run.run_after))
    .bind(now_us)
    .bind((run.state == DagRunState::Running).then_some(now_us))
    .bind(run.conf.to_string())
    .bind(&run.note)
    .bind(&run.triggered_by)
    .bind(&run.dag_hash)
    .bind(now_us)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    insert_task_instances(tx, &run.dag_id, &run.run_id, task_instances, now_us).await?;
    crate::transition::record_run(
        tx,
        &run.dag_id,
        &run.run_id,
        None,
        creator(run.run_type),
        None,
        now_us,
    )
    .await?;
    Ok(Some(run_row(&row)?))
}

impl Store {
    /// Creates a run and its task instances in one transaction. Returns `None`, creating
    /// nothing, if a run with the same run_id exists, or (for scheduled and backfill runs) one
    /// with the same logical date: a restarted or second scheduler cannot create a run twice.
    pub async fn dag_run_create(
        &self,
        run: &NewDagRun,
        task_instances: &[NewTaskInstance],
        now: DateTime<Utc>,
    ) -> Result<Option<DagRunRow>> {
        let now_us = to_micros(now);
        let mut tx = self.begin().await?;
        let Some(row) = create_in(&mut tx, run, task_instances, now_us).await? else {
            tx.rollback().await?;
            return Ok(None);
        };
        crate::wake::notify_in(self, &mut tx, crate::WAKE_SCHEDULER).await?;
        self.commit(tx).await?;
        Ok(Some(row))
    }

    /// [`Store::dag_run_create`] for many runs in one transaction (one commit for a batch of
    /// event runs). Returns, per run, whether it was created (false: it already existed).
    pub async fn dag_run_create_many(
        &self,
        runs: &[(NewDagRun, Vec<NewTaskInstance>)],
        now: DateTime<Utc>,
    ) -> Result<Vec<bool>> {
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        let now_us = to_micros(now);
        let mut tx = self.begin().await?;
        let mut created = Vec::with_capacity(runs.len());
        for (run, tis) in runs {
            created.push(create_in(&mut tx, run, tis, now_us).await?.is_some());
        }
        if created.iter().any(|c| *c) {
            crate::wake::notify_in(self, &mut tx, crate::WAKE_SCHEDULER).await?;
        }
        self.commit(tx).await?;
        Ok(created)
    }

    pub async fn dag_run_get(&self, dag_id: &str, run_id: &str) -> Result<Option<DagRunRow>> {
        let row = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM dag_run WHERE dag_id = $1 AND run_id = $2"
        ))
        .bind(dag_id)
        .bind(run_id)
        .fetch_optional(self.read_pool())
        .await?;
        row.as_ref().map(run_row).transpose()
    }

    /// A DAG's run at a logical date (what ExternalTaskSensor looks for).
    pub async fn dag_run_at(
        &self,
        dag_id: &str,
        logical_date: DateTime<Utc>,
    ) -> Result<Option<DagRunRow>> {
        let row = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM dag_run WHERE dag_id = $1 AND logical_date = $2"
        ))
        .bind(dag_id)
        .bind(to_micros(logical_date))
        .fetch_optional(self.read_pool())
        .await?;
        row.as_ref().map(run_row).transpose()
    }

    /// How many runs a DAG has.
    pub async fn dag_run_count(&self, dag_id: &str) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM dag_run WHERE dag_id = $1")
                .bind(dag_id)
                .fetch_one(self.read_pool())
                .await?,
        )
    }

    pub async fn dag_run_list(&self, dag_id: &str, limit: i64) -> Result<Vec<DagRunRow>> {
        self.dag_run_page(dag_id, limit, 0).await
    }

    /// A page of a DAG's runs, newest first: the grid pages through them this way.
    pub async fn dag_run_page(
        &self,
        dag_id: &str,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<DagRunRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM dag_run WHERE dag_id = $1 \
             ORDER BY run_after DESC, id DESC LIMIT $2 OFFSET $3"
        ))
        .bind(dag_id)
        .bind(limit)
        .bind(offset)
        .fetch_all(self.read_pool())
        .await?;
        rows.iter().map(run_row).collect()
    }

    /// Runs in the given states, oldest first. A row that cannot be read (a state or conf
    /// written by hand, say) is left out and reported, so that it holds up nothing else.
    pub async fn dag_run_list_in_states(
        &self,
        states: &[DagRunState],
    ) -> Result<(Vec<DagRunRow>, Vec<crate::CorruptRow>)> {
        if states.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM dag_run WHERE state IN ({}) ORDER BY run_after, id",
            placeholders(1, states.len())
        );
        let mut q = sqlx::query(&sql);
        for s in states {
            q = q.bind(s.as_str());
        }
        let rows = q.fetch_all(self.read_pool()).await?;
        let mut out = Vec::with_capacity(rows.len());
        let mut corrupt = Vec::new();
        for r in &rows {
            match run_row(r) {
                Ok(run) => out.push(run),
                Err(e) => corrupt.push(crate::CorruptRow {
                    dag_id: r.try_get("dag_id").unwrap_or_default(),
                    run_id: r.try_get("run_id").unwrap_or_default(),
                    error: e.to_string(),
                }),
            }
        }
        Ok((out, corrupt))
    }

    /// The latest automated run (scheduled or backfill, as Airflow counts them), for the
    /// next-run maths: a backfilled date is not scheduled again.
    pub async fn dag_run_latest_automated(&self, dag_id: &str) -> Result<Option<DagRunRow>> {
        let row = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM dag_run WHERE dag_id = $1 \
             AND run_type IN ('scheduled', 'backfill') AND logical_date IS NOT NULL \
             ORDER BY logical_date DESC LIMIT 1"
        ))
        .bind(dag_id)
        .fetch_optional(self.read_pool())
        .await?;
        row.as_ref().map(run_row).transpose()
    }

    /// Compare-and-set of a run's state by `actor`, through the transition primitive. Moving
    /// to running stamps `start_date` (once); moving to success or failed stamps `end_date`.
    /// Returns whether this call made the change.
    #[allow(clippy::too_many_arguments)]
    pub async fn dag_run_set_state_if(
        &self,
        dag_id: &str,
        run_id: &str,
        from: &[DagRunState],
        to: DagRunState,
        actor: Actor,
        reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let run = RunChange {
            dag_id: dag_id.to_owned(),
            run_id: run_id.to_owned(),
            reason: reason.map(str::to_owned),
        };
        let mut tx = self.begin().await?;
        let applied =
            run_transition(&mut tx, self, actor, from, to, &[run], to_micros(now)).await?;
        self.commit(tx).await?;
        Ok(!applied.is_empty())
    }

    /// Ends running runs in one transaction (the scheduler's decisions of a pass): each moves
    /// from running to its `state` unless something else changed it first, and the DAG
    /// callbacks of those that moved are recorded with them. Returns, in order, whether each
    /// moved.
    pub async fn dag_run_finish_many(
        &self,
        runs: &[RunFinish],
        now: DateTime<Utc>,
    ) -> Result<Vec<bool>> {
        let mut moved = vec![false; runs.len()];
        if runs.is_empty() {
            return Ok(moved);
        }
        let mut tx = self.begin().await?;
        let mut states: Vec<DagRunState> = runs.iter().map(|r| r.state).collect();
        states.sort_by_key(|s| s.as_str());
        states.dedup();
        for to in states {
            let members: Vec<usize> = (0..runs.len()).filter(|i| runs[*i].state == to).collect();
            let changes: Vec<RunChange> = members
                .iter()
                .map(|i| RunChange {
                    dag_id: runs[*i].dag_id.clone(),
                    run_id: runs[*i].run_id.clone(),
                    reason: runs[*i].reason.clone(),
                })
                .collect();
            let applied = run_transition(
                &mut tx,
                self,
                Actor::Scheduler,
                &[DagRunState::Running],
                to,
                &changes,
                to_micros(now),
            )
            .await?;
            for (index, _) in applied {
                let r = &runs[members[index]];
                moved[members[index]] = true;
                if !r.callbacks.is_empty() {
                    let target = crate::CallbackTarget {
                        dag_id: r.dag_id.clone(),
                        run_id: r.run_id.clone(),
                        task_id: None,
                        map_index: -1,
                        try_number: 0,
                    };
                    crate::callbacks::insert_in(&mut tx, &target, &r.callbacks, to_micros(now))
                        .await?;
                }
            }
        }
        self.commit(tx).await?;
        Ok(moved)
    }

    /// Marks a run by hand, as Airflow's "mark success / mark failed" do: to success, every
    /// unfinished task instance becomes success; to failed, running ones become failed and the
    /// other unfinished ones skipped. One transaction. Returns false when the run does not
    /// exist.
    pub async fn dag_run_mark(
        &self,
        dag_id: &str,
        run_id: &str,
        to: DagRunState,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        use flow_model::TaskInstanceState as S;
        let now_us = to_micros(now);
        let mut tx = self.begin().await?;
        let exists: Option<i64> =
            sqlx::query_scalar("SELECT id FROM dag_run WHERE dag_id = $1 AND run_id = $2")
                .bind(dag_id)
                .bind(run_id)
                .fetch_optional(&mut *tx)
                .await?;
        if exists.is_none() {
            tx.rollback().await?;
            return Ok(false);
        }
        let rows = sqlx::query(
            "SELECT dag_id, run_id, task_id, map_index, state FROM task_instance \
             WHERE dag_id = $1 AND run_id = $2",
        )
        .bind(dag_id)
        .bind(run_id)
        .fetch_all(&mut *tx)
        .await?;
        let mut unfinished = Vec::new();
        for r in &rows {
            let state = crate::task_instances::parse_state(&r.try_get::<String, _>("state")?)?;
            if state.is_unfinished() {
                unfinished.push((crate::task_instances::key_of(r)?, state));
            }
        }
        let mark = |key: &crate::TiKey, to: S| StateChange {
            key: key.clone(),
            from: flow_model::transition::allowed_from(to, Actor::User),
            to,
            reason: Some(format!("marked {to} with its run")),
            next_retry_at: None,
        };
        let changes: Vec<StateChange> = match to {
            DagRunState::Success => unfinished
                .iter()
                .map(|(k, _)| mark(k, S::Success))
                .collect(),
            DagRunState::Failed => unfinished
                .iter()
                .map(|(k, s)| {
                    mark(
                        k,
                        if *s == S::Running {
                            S::Failed
                        } else {
                            S::Skipped
                        },
                    )
                })
                .collect(),
            DagRunState::Queued | DagRunState::Running => Vec::new(),
        };
        crate::task_instances::set_states_in(
            &mut tx,
            self,
            &changes,
            Actor::User,
            &Default::default(),
            now_us,
        )
        .await?;
        let from: Vec<_> = flow_model::transition::run_allowed_from(to, Actor::User);
        let run = RunChange {
            dag_id: dag_id.to_owned(),
            run_id: run_id.to_owned(),
            reason: Some(format!("marked {to} by a user")),
        };
        run_transition(&mut tx, self, Actor::User, &from, to, &[run], now_us).await?;
        self.commit(tx).await?;
        Ok(true)
    }

    /// Deletes a run with its task instances, their history, transitions, XComs and logs.
    /// Returns false when there was no such run.
    pub async fn dag_run_delete(&self, dag_id: &str, run_id: &str) -> Result<bool> {
        let mut tx = self.begin().await?;
        for table in [
            "log_chunk",
            "xcom",
            "ti_transition",
            "task_instance_history",
            "task_instance",
            "dag_run_asset_event",
            "callback_request",
        ] {
            // Table names are constants above, never input.
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE dag_id = $1 AND run_id = $2"
            ))
            .bind(dag_id)
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        }
        let n = sqlx::query("DELETE FROM dag_run WHERE dag_id = $1 AND run_id = $2")
            .bind(dag_id)
            .bind(run_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        self.commit(tx).await?;
        Ok(n > 0)
    }

    /// The states of the latest `n` runs of each of `dag_ids`, newest first, as
    /// `dag_id -> [(run_id, state)]`: the DAG list's coloured dots in one query.
    pub async fn dag_run_recent_states(
        &self,
        dag_ids: &[String],
        n: i64,
    ) -> Result<std::collections::HashMap<String, Vec<(String, DagRunState)>>> {
        let mut out: std::collections::HashMap<String, Vec<(String, DagRunState)>> =
            std::collections::HashMap::new();
        for chunk in dag_ids.chunks(500) {
            if chunk.is_empty() {
                continue;
            }
            let sql = format!(
                "SELECT dag_id, run_id, state FROM ( \
                   SELECT dag_id, run_id, state, \
                   ROW_NUMBER() OVER (PARTITION BY dag_id ORDER BY run_after DESC, id DESC) AS rn \
                   FROM dag_run WHERE dag_id IN ({})) ranked \
                 WHERE rn <= $1 ORDER BY dag_id, rn",
                placeholders(2, chunk.len())
            );
            let mut q = sqlx::query(&sql).bind(n);
            for d in chunk {
                q = q.bind(d);
            }
            for row in q.fetch_all(self.read_pool()).await? {
                let state: String = row.try_get("state")?;
                let state =
                    DagRunState::parse(&state).map_err(|e| StoreError::Invalid(e.to_string()))?;
                out.entry(row.try_get("dag_id")?)
                    .or_default()
                    .push((row.try_get("run_id")?, state));
            }
        }
        Ok(out)
    }

    /// Task instance state counts of the latest run of each of `dag_ids` (the DAG list's
    /// "recent tasks"), as `dag_id -> [(state, count)]`.
    pub async fn ti_state_counts_latest_run(
        &self,
        dag_ids: &[String],
    ) -> Result<std::collections::HashMap<String, Vec<(flow_model::TaskInstanceState, i64)>>> {
        let mut out: std::collections::HashMap<String, Vec<_>> = std::collections::HashMap::new();
        for chunk in dag_ids.chunks(500) {
            if chunk.is_empty() {
                continue;
            }
            let sql = format!(
                "SELECT ti.dag_id, ti.state, COUNT(*) AS n FROM task_instance ti JOIN ( \
                   SELECT dag_id, run_id FROM ( \
                     SELECT dag_id, run_id, ROW_NUMBER() OVER ( \
                       PARTITION BY dag_id ORDER BY run_after DESC, id DESC) AS rn \
                     FROM dag_run WHERE dag_id IN ({})) ranked WHERE rn = 1) latest \
                 ON latest.dag_id = ti.dag_id AND latest.run_id = ti.run_id \
                 GROUP BY ti.dag_id, ti.state ORDER BY ti.dag_id, ti.state",
                placeholders(1, chunk.len())
            );
            let mut q = sqlx::query(&sql);
            for d in chunk {
                q = q.bind(d);
            }
            for row in q.fetch_all(self.read_pool()).await? {
                let state: String = row.try_get("state")?;
                let state = flow_model::TaskInstanceState::parse(&state)
                    .map_err(|e| StoreError::Invalid(e.to_string()))?;
                out.entry(row.try_get("dag_id")?)
                    .or_default()
                    .push((state, row.try_get("n")?));
            }
        }
        Ok(out)
    }
}

/// Which runs a paged run list shows, in the order given; what the REST API's run lists
/// (`GET /dags/{id|~}/dagRuns`, `POST /dags/~/dagRuns/list`) ask of the database, so that a
/// page of 50 costs 50 rows whatever the history holds.
#[derive(Debug, Clone, Default)]
pub struct RunQuery {
    /// Empty means every DAG.
    pub dag_ids: Vec<String>,
    /// Empty means every state.
    pub states: Vec<DagRunState>,
    /// Column to order by (one of [`RunQuery::ORDER_COLUMNS`]) and whether descending.
    pub order_by: Option<(String, bool)>,
    pub limit: i64,
    pub offset: i64,
}

impl RunQuery {
    /// Columns a run list may be ordered by; `id` breaks ties.
    pub const ORDER_COLUMNS: [&str; 8] = [
        "id",
        "run_after",
        "logical_date",
        "start_date",
        "end_date",
        "state",
        "dag_id",
        "run_id",
    ];
}

impl Store {
    /// One page of runs and the number of runs matching in all.
    pub async fn dag_run_query(&self, q: &RunQuery) -> Result<(Vec<DagRunRow>, i64)> {
        let mut conditions = Vec::new();
        let mut n = 0;
        let mut next = |count: usize| {
            let p = placeholders(n + 1, count);
            n += count;
            p
        };
        if !q.dag_ids.is_empty() {
            conditions.push(format!("dag_id IN ({})", next(q.dag_ids.len())));
        }
        if !q.states.is_empty() {
            conditions.push(format!("state IN ({})", next(q.states.len())));
        }
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        let (column, desc) = q.order_by.clone().unwrap_or_else(|| ("id".into(), false));
        let column = RunQuery::ORDER_COLUMNS
            .iter()
            .find(|c| **c == column)
            .ok_or_else(|| StoreError::Corrupt(format!("cannot order runs by `{column}`")))?;
        let dir = if desc { "DESC" } else { "ASC" };
        let (limit, offset) = (next(1), next(1));
        let page_sql = format!(
            "SELECT {RUN_COLUMNS}, COUNT(*) OVER () AS total_rows FROM dag_run {filter} \
             ORDER BY {column} {dir}, id {dir} \
             LIMIT {limit} OFFSET {offset}"
        );
        let count_sql = format!("SELECT COUNT(*) FROM dag_run {filter}");
        let (rows, total) = page_with_total(
            self.read_pool(),
            bind_run_filters(sqlx::query(&page_sql), q)
                .bind(q.limit)
                .bind(q.offset),
            bind_run_filters(sqlx::query(&count_sql), q),
        )
        .await?;
        Ok((rows.iter().map(run_row).collect::<Result<_>>()?, total))
    }

    /// Sets (or, with `None`, removes) a run's note. Returns false when there is no such run.
    pub async fn dag_run_set_note(
        &self,
        dag_id: &str,
        run_id: &str,
        note: Option<&str>,
    ) -> Result<bool> {
        let n = sqlx::query("UPDATE dag_run SET note = $1 WHERE dag_id = $2 AND run_id = $3")
            .bind(note)
            .bind(dag_id)
            .bind(run_id)
            .execute(&self.write)
            .await?
            .rows_affected();
        Ok(n > 0)
    }
}

pub(crate) type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Binds a [`RunQuery`]'s filter values in the order its `WHERE` clause names them.
fn bind_run_filters<'q>(mut query: AnyQuery<'q>, q: &'q RunQuery) -> AnyQuery<'q> {
    for d in &q.dag_ids {
        query = query.bind(d.as_str());
    }
    for s in &q.states {
        query = query.bind(s.as_str());
    }
    query
}

/// Runs a page query that selects `COUNT(*) OVER () AS total_rows` beside its columns, and
/// returns its rows with the number matching in all: read from the first row (one round trip),
/// or, for a page past the end, from `count` (the same filter, `SELECT COUNT(*)`).
pub(crate) async fn page_with_total<'q>(
    pool: &sqlx::AnyPool,
    page: AnyQuery<'q>,
    count: AnyQuery<'q>,
) -> Result<(Vec<AnyRow>, i64)> {
    let rows = page.fetch_all(pool).await?;
    let total: i64 = match rows.first() {
        Some(r) => r.try_get("total_rows")?,
        None => count.fetch_one(pool).await?.try_get(0)?,
    };
    Ok((rows, total))
}
