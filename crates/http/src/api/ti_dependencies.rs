//! `GET .../taskInstances/{task_id}[/{map_index}]/dependencies`: why a task instance is not
//! running, as Airflow's `TaskDependencyCollectionResponse` (`[{name, reason}]`, sorted by
//! name), from the store's `ti_dependencies` (the task instance page and `flow tasks explain`
//! say the same). An instance that is running or finished has none.

use axum::extract::{Path, State};
use axum::response::Json;
use chrono::Utc;
use flow_model::Permission;
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
    let dag = super::load_dag(state, dag_id).await?.map(|(d, _)| d);
    let deps = store
        .ti_dependencies(dag.as_ref(), &run, &ti, Utc::now())
        .await?;
    Ok(TaskDependencyCollectionResponse {
        dependencies: deps
            .into_iter()
            .map(|d| TaskDependencyResponse {
                name: d.name,
                reason: d.reason,
            })
            .collect(),
    })
}
