//! `GET .../taskInstances/{task_id}[/{map_index}]/dependencies`: why a task instance is not
//! running, as Airflow's `TaskDependencyCollectionResponse` (`[{name, reason}]`, sorted by
//! name): the run not running, the DAG paused, the trigger rule with its upstream counts, the
//! retry period, `depends_on_past`, pool slots, `max_active_tasks`, `max_active_tis_per_dag`.
//! An instance that is running or finished has none.

use axum::extract::{Path, State};
use axum::response::Json;
use chrono::Utc;
use flow_model::{
    DagRunState, Permission, TaskInstanceState as S, TriggerDecision, UpstreamStates,
};
use flow_store::{DagRunRow, TiRow};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, ApiResult, ApiUser};
use crate::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(dependencies))
        .routes(routes!(mapped_dependencies))
}

/// One unmet dependency.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskDependencyResponse {
    pub name: String,
    pub reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TaskDependencyCollectionResponse {
    pub dependencies: Vec<TaskDependencyResponse>,
}

#[utoipa::path(get, path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/dependencies", tag = "Task Instance",
    summary = "Why a task instance is not running",
    params(("dag_id" = String, Path), ("dag_run_id" = String, Path), ("task_id" = String, Path)),
    responses((status = 200, body = TaskDependencyCollectionResponse)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn dependencies(
    State(state): State<AppState>,
    user: ApiUser,
    Path((dag_id, run_id, task_id)): Path<(String, String, String)>,
) -> ApiResult<Json<TaskDependencyCollectionResponse>> {
    user.require(Permission::Read)?;
    explain(&state, &dag_id, &run_id, &task_id, -1)
        .await
        .map(Json)
}

#[utoipa::path(get, path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/{map_index}/dependencies", tag = "Task Instance",
    summary = "Why an instance of a mapped task is not running",
    params(("dag_id" = String, Path), ("dag_run_id" = String, Path), ("task_id" = String, Path), ("map_index" = i64, Path)),
    responses((status = 200, body = TaskDependencyCollectionResponse)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn mapped_dependencies(
    State(state): State<AppState>,
    user: ApiUser,
    Path((dag_id, run_id, task_id, map_index)): Path<(String, String, String, String)>,
) -> ApiResult<Json<TaskDependencyCollectionResponse>> {
    user.require(Permission::Read)?;
    let map_index = map_index.parse::<i64>().map_err(|_| {
        ApiError::invalid(&["path", "map_index"], "Input should be a valid integer")
    })?;
    explain(&state, &dag_id, &run_id, &task_id, map_index)
        .await
        .map(Json)
}

fn dep(name: &str, reason: String) -> TaskDependencyResponse {
    TaskDependencyResponse {
        name: name.to_owned(),
        reason,
    }
}

async fn explain(
    state: &AppState,
    dag_id: &str,
    run_id: &str,
    task_id: &str,
    map_index: i64,
) -> ApiResult<TaskDependencyCollectionResponse> {
    let store = state.store();
    let run = super::find_run(state, dag_id, run_id).await?;
    let ti = store
        .ti_list_for_run(dag_id, run_id)
        .await?
        .into_iter()
        .find(|t| t.key.task_id == task_id && t.key.map_index == map_index)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "Task Instance not found for dag_id={dag_id}, run_id={run_id}, task_id={task_id}, map_index={map_index}"
            ))
        })?;
    let mut deps = Vec::new();
    if matches!(
        ti.state,
        S::NoStatus | S::Scheduled | S::UpForRetry | S::UpForReschedule
    ) {
        deps = unmet(state, &run, &ti).await?;
    }
    deps.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(TaskDependencyCollectionResponse { dependencies: deps })
}

async fn unmet(
    state: &AppState,
    run: &DagRunRow,
    ti: &TiRow,
) -> ApiResult<Vec<TaskDependencyResponse>> {
    let store = state.store();
    let dag_id = ti.key.dag_id.as_str();
    let mut deps = Vec::new();
    if run.state != DagRunState::Running {
        deps.push(dep(
            "Dagrun Running",
            format!(
                "Task instance's dagrun was not in the 'running' state but in the state '{}'.",
                run.state
            ),
        ));
    }
    if store.dag_get(dag_id).await?.is_some_and(|d| d.is_paused) {
        deps.push(dep(
            "Dag Not Paused",
            format!("Task's DAG '{dag_id}' is paused."),
        ));
    }
    let now = Utc::now();
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
    let Some((dag, _)) = super::load_dag(state, dag_id).await? else {
        return Ok(deps);
    };
    let Some(task) = dag.task(&ti.key.task_id) else {
        deps.push(dep(
            "Task Instance State",
            "The task is no longer in the DAG.".to_owned(),
        ));
        return Ok(deps);
    };
    let run_tis = store.ti_list_for_run(dag_id, &run.run_id).await?;
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
        && let Some(reason) = previous_run_holds(state, run, ti).await?
    {
        deps.push(dep("Previous Dagrun State", reason));
    }
    if let Some(pool) = store.pool_get(&ti.pool).await? {
        let open = if pool.slots < 0 {
            i64::MAX
        } else {
            pool.slots - pool.occupied()
        };
        if open < ti.pool_slots {
            deps.push(dep(
                "Pool Slots Available",
                format!(
                    "Not scheduling since there are {open} open slots in pool {} and require {} pool slots",
                    pool.name, ti.pool_slots
                ),
            ));
        }
    } else {
        deps.push(dep(
            "Pool Slots Available",
            format!(
                "Tasks using non-existent pool '{}' will not be scheduled",
                ti.pool
            ),
        ));
    }
    let (dag_active, task_active) = store.ti_count_active(dag_id, &ti.key.task_id).await?;
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
    Ok(deps)
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

/// `depends_on_past`: the same task in the previous run must have succeeded or been skipped.
async fn previous_run_holds(
    state: &AppState,
    run: &DagRunRow,
    ti: &TiRow,
) -> ApiResult<Option<String>> {
    let store = state.store();
    let runs = store.dag_run_list(&ti.key.dag_id, 1000).await?;
    let this = run.logical_date.unwrap_or(run.run_after);
    let previous = runs
        .iter()
        .filter(|r| r.run_id != run.run_id && r.logical_date.unwrap_or(r.run_after) < this)
        .max_by_key(|r| r.logical_date.unwrap_or(r.run_after));
    let Some(previous) = previous else {
        return Ok(None);
    };
    let prev = store
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
