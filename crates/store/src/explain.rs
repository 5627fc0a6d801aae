//! "Why isn't it running?": the dependencies that hold a task instance, in the words of
//! Airflow's `GET .../dependencies` (`[{name, reason}]`), plus what Airflow cannot say: no
//! live worker serving its queue, the trigger a deferred task waits on. Shared by the REST
//! API, the task instance page and `flow tasks explain`, so the three never disagree.

use chrono::{DateTime, Duration, Utc};
use flow_dag::Dag;
use flow_model::{DagRunState, TaskInstanceState as S, TriggerDecision, UpstreamStates};
use sqlx::Row;

use crate::dag_runs::DagRunRow;
use crate::task_instances::TiRow;
use crate::{Result, Store, from_micros, opt_from_micros};

/// One thing that holds a task instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TiDependency {
    /// Airflow's dependency name (`Trigger Rule`, `Pool Slots Available`, ...).
    pub name: String,
    pub reason: String,
}

/// How recent a worker's or triggerer's heartbeat must be for it to count as alive.
const ALIVE_WITHIN: i64 = 30;

fn dep(name: &str, reason: String) -> TiDependency {
    TiDependency {
        name: name.to_owned(),
        reason,
    }
}

impl Store {
    /// What holds `ti` (of `run`, of `dag` when the DAG is still known) at `now`, sorted by
    /// name: nothing for a running or finished task instance.
    pub async fn ti_dependencies(
        &self,
        dag: Option<&Dag>,
        run: &DagRunRow,
        ti: &TiRow,
        now: DateTime<Utc>,
    ) -> Result<Vec<TiDependency>> {
        let mut deps = match ti.state {
            S::NoStatus | S::Scheduled | S::UpForRetry | S::UpForReschedule => {
                self.waiting_dependencies(dag, run, ti, now).await?
            }
            S::Queued => self.queued_dependencies(ti, now).await?,
            S::Deferred => self.deferred_dependencies(ti, now).await?,
            _ => Vec::new(),
        };
        deps.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(deps)
    }

    /// A task instance waiting to be queued: the run, the DAG, its retry or reschedule time,
    /// its trigger rule, `depends_on_past`, its pool and the concurrency limits.
    async fn waiting_dependencies(
        &self,
        dag: Option<&Dag>,
        run: &DagRunRow,
        ti: &TiRow,
        now: DateTime<Utc>,
    ) -> Result<Vec<TiDependency>> {
        let dag_id = ti.key.dag_id.as_str();
        let mut deps = Vec::new();
        if run.state != DagRunState::Running {
            let mut reason = format!(
                "Task instance's dagrun was not in the 'running' state but in the state '{}'.",
                run.state
            );
            if run.state == DagRunState::Queued
                && let Some(dag) = dag
            {
                let running = self
                    .dag_run_list_in_states(&[DagRunState::Running])
                    .await?
                    .0
                    .iter()
                    .filter(|r| r.dag_id == dag_id && r.backfill_id == run.backfill_id)
                    .count();
                reason.push_str(&format!(
                    " The DAG has {running} running run(s) of max_active_runs {}.",
                    dag.max_active_runs
                ));
            }
            deps.push(dep("Dagrun Running", reason));
        }
        if self.dag_get(dag_id).await?.is_some_and(|d| d.is_paused) {
            deps.push(dep(
                "Dag Not Paused",
                format!("Task's DAG '{dag_id}' is paused."),
            ));
        }
        if let Some(at) = ti.next_retry_at.filter(|at| *at > now)
            && matches!(ti.state, S::UpForRetry | S::UpForReschedule)
        {
            let name = if ti.state == S::UpForRetry {
                "Not In Retry Period"
            } else {
                "Ready To Reschedule"
            };
            deps.push(dep(
                name,
                format!(
                    "Task is not ready for retry yet but will be retried automatically. Current date is {} and task will be retried at {}.",
                    now.to_rfc3339(),
                    at.to_rfc3339()
                ),
            ));
        }
        let Some(dag) = dag else {
            deps.push(dep(
                "Dag Loaded",
                format!("The DAG '{dag_id}' is not in the dags folder any more."),
            ));
            return Ok(deps);
        };
        let Some(task) = dag.task(&ti.key.task_id) else {
            deps.push(dep(
                "Task Instance State",
                "The task is no longer in the DAG.".to_owned(),
            ));
            return Ok(deps);
        };
        let run_tis = self.ti_list_for_run(dag_id, &run.run_id).await?;
        if ti.state == S::NoStatus {
            let upstream_ids: Vec<String> = task.upstream.iter().map(ToString::to_string).collect();
            let states: Vec<S> = run_tis
                .iter()
                .filter(|t| upstream_ids.contains(&t.key.task_id))
                .map(|t| t.state)
                .collect();
            let counts = UpstreamStates::from_states(states);
            if task.trigger_rule.evaluate(&counts) != TriggerDecision::Schedule {
                deps.push(dep(
                    "Trigger Rule",
                    trigger_reason(task.trigger_rule.as_str(), &counts, &upstream_ids),
                ));
            }
        }
        if task.depends_on_past
            && let Some(reason) = self.previous_run_holds(run, ti).await?
        {
            deps.push(dep("Previous Dagrun State", reason));
        }
        match self.pool_get(&ti.pool).await? {
            Some(pool) => {
                let open = if pool.slots < 0 {
                    i64::MAX
                } else {
                    pool.slots - pool.occupied()
                };
                if open < ti.pool_slots {
                    deps.push(dep(
                        "Pool Slots Available",
                        format!(
                            "Not scheduling since there are {} open slots in pool {} ({} slots: {} running, {} queued) and require {} pool slots",
                            open.max(0),
                            pool.name,
                            pool.slots,
                            pool.running,
                            pool.queued,
                            ti.pool_slots
                        ),
                    ));
                }
            }
            None => deps.push(dep(
                "Pool Slots Available",
                format!(
                    "Tasks using non-existent pool '{}' will not be scheduled",
                    ti.pool
                ),
            )),
        }
        let (dag_active, task_active) = self.ti_count_active(dag_id, &ti.key.task_id).await?;
        if dag_active >= i64::from(dag.max_active_tasks) {
            deps.push(dep(
                "Task Instance Slots Available",
                format!(
                    "The maximum number of running tasks ({}) for this task's DAG '{dag_id}' has been reached.",
                    dag.max_active_tasks
                ),
            ));
        }
        if let Some(limit) = task.max_active_tis_per_dag
            && task_active >= i64::from(limit)
        {
            deps.push(dep(
                "Task Concurrency",
                format!("The max task concurrency ({limit}) has been reached."),
            ));
        }
        if let Some(limit) = task.max_active_tis_per_dagrun {
            let in_run = run_tis
                .iter()
                .filter(|t| t.key.task_id == ti.key.task_id)
                .filter(|t| matches!(t.state, S::Queued | S::Running | S::Deferred))
                .count();
            if i64::try_from(in_run).unwrap_or(i64::MAX) >= i64::from(limit) {
                deps.push(dep(
                    "Task Concurrency",
                    format!("The max task concurrency per run ({limit}) has been reached."),
                ));
            }
        }
        Ok(deps)
    }

    /// A queued task instance waits for a worker serving its queue to claim it.
    async fn queued_dependencies(
        &self,
        ti: &TiRow,
        now: DateTime<Utc>,
    ) -> Result<Vec<TiDependency>> {
        let served = self
            .served_queues(now - Duration::seconds(ALIVE_WITHIN))
            .await?;
        let since = ti
            .queued_dttm
            .map_or_else(String::new, |q| format!(" since {}", q.to_rfc3339()));
        if served.contains(&ti.queue) {
            return Ok(vec![dep(
                "Worker Slots Available",
                format!(
                    "Queued{since}: a worker serving queue '{}' claims it as soon as it has a free slot.",
                    ti.queue
                ),
            )]);
        }
        let mut others: Vec<String> = served.into_iter().collect();
        others.sort();
        let serving = if others.is_empty() {
            "no worker is alive".to_owned()
        } else {
            format!("live workers serve {}", others.join(", "))
        };
        Ok(vec![dep(
            "Worker Serving Queue",
            format!(
                "Queued{since} on queue '{}', which no live worker serves ({serving}): start one with `flow worker --queues {}`.",
                ti.queue, ti.queue
            ),
        )])
    }

    /// A deferred task instance waits on its trigger, run by a triggerer.
    async fn deferred_dependencies(
        &self,
        ti: &TiRow,
        now: DateTime<Utc>,
    ) -> Result<Vec<TiDependency>> {
        let row = sqlx::query(
            "SELECT t.id, t.classpath, t.created_date, t.triggerer_id, t.triggerer_heartbeat \
             FROM trigger t JOIN task_instance ti ON ti.trigger_id = t.id \
             WHERE ti.dag_id = $1 AND ti.run_id = $2 AND ti.task_id = $3 AND ti.map_index = $4",
        )
        .bind(&ti.key.dag_id)
        .bind(&ti.key.run_id)
        .bind(&ti.key.task_id)
        .bind(ti.key.map_index)
        .fetch_optional(self.read_pool())
        .await?;
        let Some(row) = row else {
            return Ok(vec![dep(
                "Trigger",
                "Deferred, but its trigger is gone: the scheduler fails or retries it when its timeout passes.".to_owned(),
            )]);
        };
        let id: i64 = row.try_get("id")?;
        let classpath: String = row.try_get("classpath")?;
        let created = from_micros(row.try_get("created_date")?);
        let triggerer: Option<String> = row.try_get("triggerer_id")?;
        let beat = opt_from_micros(row.try_get("triggerer_heartbeat")?);
        let runner = match (triggerer, beat) {
            (Some(t), Some(b)) if now - b <= Duration::seconds(ALIVE_WITHIN) => {
                format!(
                    "triggerer {t} runs it (heartbeat {}s ago)",
                    (now - b).num_seconds()
                )
            }
            (Some(t), _) => {
                format!("triggerer {t} took it but stopped heartbeating; another takes it over")
            }
            (None, _) => {
                "no triggerer has taken it yet: is `flow triggerer` (or `flow standalone`) running?"
                    .to_owned()
            }
        };
        Ok(vec![dep(
            "Trigger",
            format!(
                "Deferred since {} on trigger {id} ({classpath}); {runner}.",
                created.to_rfc3339()
            ),
        )])
    }

    /// `depends_on_past`: the same task in the previous run must have succeeded or been
    /// skipped.
    async fn previous_run_holds(&self, run: &DagRunRow, ti: &TiRow) -> Result<Option<String>> {
        let runs = self.dag_run_list(&ti.key.dag_id, 1000).await?;
        let this = run.logical_date.unwrap_or(run.run_after);
        let previous = runs
            .iter()
            .filter(|r| r.run_id != run.run_id && r.logical_date.unwrap_or(r.run_after) < this)
            .max_by_key(|r| r.logical_date.unwrap_or(r.run_after));
        let Some(previous) = previous else {
            return Ok(None);
        };
        let prev = self
            .ti_list_for_run(&ti.key.dag_id, &previous.run_id)
            .await?
            .into_iter()
            .find(|t| t.key.task_id == ti.key.task_id && t.key.map_index == ti.key.map_index);
        Ok(match prev {
            Some(p) if matches!(p.state, S::Success | S::Skipped) => None,
            Some(p) => Some(format!(
                "depends_on_past is true for this task, but the previous task instance in run '{}' is in the state '{}' which is not a successful state.",
                previous.run_id, p.state
            )),
            None => None,
        })
    }
}

/// Airflow's TriggerRuleDep wording, with the upstream counts.
fn trigger_reason(rule: &str, c: &UpstreamStates, upstream: &[String]) -> String {
    format!(
        "Task's trigger rule '{rule}' is not met: {} of {} upstream task instance(s) done. \
         upstream_states=(success={}, skipped={}, failed={}, upstream_failed={}, removed={}, done={}), \
         upstream_task_ids={{{}}}",
        c.done,
        c.total,
        c.success,
        c.skipped,
        c.failed,
        c.upstream_failed,
        c.removed,
        c.done,
        upstream.join(", ")
    )
}
