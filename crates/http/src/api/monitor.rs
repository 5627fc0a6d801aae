//! Read routes for watching a deployment: run counts per DAG (`dagStats`), DAG warnings,
//! plugins and providers (flow's built-in operators, as the Airflow providers they stand
//! for), favourite DAGs, and the task-instance routes whose answer in flow is "none" (extra
//! links, external log URLs, human-in-the-loop details), in Airflow 3.3's shapes.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use flow_model::{DagRunState, Permission};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::dags::time;
use super::{ApiError, ApiResult, ApiUser, paging, query_pairs};
use crate::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(dag_stats))
        .routes(routes!(dag_warnings))
        .routes(routes!(plugins))
        .routes(routes!(plugin_import_errors))
        .routes(routes!(providers))
        .routes(routes!(favorite))
        .routes(routes!(unfavorite))
        .routes(routes!(extra_links))
        .routes(routes!(external_log_url))
        .routes(routes!(hitl_details))
        .routes(routes!(hitl_detail))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DagStatsStateResponse {
    pub state: String,
    pub count: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DagStatsResponse {
    pub dag_id: String,
    pub dag_display_name: String,
    pub stats: Vec<DagStatsStateResponse>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DagStatsCollectionResponse {
    pub dags: Vec<DagStatsResponse>,
    pub total_entries: usize,
}

/// Runs per DAG and state: every DAG with runs (or those of `dag_ids`), every run state
/// listed, 0 where it has none, as Airflow's.
#[utoipa::path(get, path = "/api/v2/dagStats", tag = "DagStats",
    summary = "How many runs each DAG has in each state",
    params(("dag_ids" = Option<Vec<String>>, Query, explode = true)),
    responses((status = 200, body = DagStatsCollectionResponse)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn dag_stats(
    State(state): State<AppState>,
    user: ApiUser,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<DagStatsCollectionResponse>> {
    user.require(Permission::Read)?;
    let pairs = query_pairs(raw.as_deref())?;
    let wanted: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == "dag_ids")
        .map(|(_, v)| v.as_str())
        .collect();
    let counts = state.store().dag_run_state_counts().await?;
    let mut dag_ids: Vec<&str> = counts
        .iter()
        .map(|(d, _, _)| d.as_str())
        .filter(|d| wanted.is_empty() || wanted.contains(d))
        .collect();
    dag_ids.sort_unstable();
    dag_ids.dedup();
    let dags: Vec<DagStatsResponse> = dag_ids
        .into_iter()
        .map(|dag_id| DagStatsResponse {
            dag_id: dag_id.to_owned(),
            dag_display_name: dag_id.to_owned(),
            stats: [
                DagRunState::Queued,
                DagRunState::Running,
                DagRunState::Success,
                DagRunState::Failed,
            ]
            .into_iter()
            .map(|s| DagStatsStateResponse {
                state: s.as_str().to_owned(),
                count: counts
                    .iter()
                    .find(|(d, st, _)| d == dag_id && st == s.as_str())
                    .map_or(0, |(_, _, n)| *n),
            })
            .collect(),
        })
        .collect();
    Ok(Json(DagStatsCollectionResponse {
        total_entries: dags.len(),
        dags,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = DAGWarningResponse)]
pub struct DagWarningResponse {
    pub dag_id: String,
    pub dag_display_name: String,
    pub warning_type: String,
    pub message: String,
    #[schema(format = DateTime)]
    pub timestamp: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = DAGWarningCollectionResponse)]
pub struct DagWarningCollectionResponse {
    pub dag_warnings: Vec<DagWarningResponse>,
    pub total_entries: usize,
}

/// Airflow's three warning types; flow's own (`missing connection`) are listed only when
/// asked for by `warning_type`, so that clients generated from Airflow's spec, whose enum
/// has only these three, never meet a value they refuse.
const AIRFLOW_WARNING_TYPES: [&str; 3] = [
    "asset conflict",
    "non-existent pool",
    "runtime varying value",
];

/// Standing problems with DAGs (a pool that does not exist, a connection a Kafka trigger
/// needs), as Airflow's `dagWarnings`.
#[utoipa::path(get, path = "/api/v2/dagWarnings", tag = "DagWarning",
    summary = "Standing problems with DAGs",
    params(
        ("dag_id" = Option<String>, Query),
        ("warning_type" = Option<String>, Query, description = "Airflow's `asset conflict`, `non-existent pool`, `runtime varying value`, or flow's `missing connection`"),
        ("limit" = Option<i64>, Query, minimum = 0),
        ("offset" = Option<i64>, Query, minimum = 0),
        ("order_by" = Option<Vec<String>>, Query, explode = true),
    ),
    responses((status = 200, body = DagWarningCollectionResponse)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn dag_warnings(
    State(state): State<AppState>,
    user: ApiUser,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<DagWarningCollectionResponse>> {
    user.require(Permission::Read)?;
    let pairs = query_pairs(raw.as_deref())?;
    let (limit, offset) = paging(&pairs)?;
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let warning_type = get("warning_type");
    if let Some(t) = warning_type
        && !AIRFLOW_WARNING_TYPES.contains(&t)
        && t != flow_store::WARNING_CONNECTION
    {
        return Err(ApiError::invalid(
            &["query", "warning_type"],
            format!(
                "Input should be 'asset conflict', 'non-existent pool', 'runtime varying value' or '{}'",
                flow_store::WARNING_CONNECTION
            ),
        ));
    }
    let mut rows: Vec<_> = state
        .store()
        .dag_warnings(get("dag_id"), warning_type)
        .await?
        .into_iter()
        .filter(|w| {
            warning_type.is_some() || AIRFLOW_WARNING_TYPES.contains(&w.warning_type.as_str())
        })
        .collect();
    let order = get("order_by").unwrap_or("dag_id");
    let (field, desc) = order
        .strip_prefix('-')
        .map_or((order, false), |f| (f, true));
    match field {
        "dag_id" => rows.sort_by(|a, b| a.dag_id.cmp(&b.dag_id)),
        "warning_type" => rows.sort_by(|a, b| a.warning_type.cmp(&b.warning_type)),
        "message" => rows.sort_by(|a, b| a.message.cmp(&b.message)),
        "timestamp" => rows.sort_by_key(|a| a.timestamp),
        other => {
            return Err(ApiError::bad_request(format!(
                "Ordering with '{other}' is disallowed or the attribute does not exist on the model"
            )));
        }
    }
    if desc {
        rows.reverse();
    }
    Ok(Json(DagWarningCollectionResponse {
        total_entries: rows.len(),
        dag_warnings: rows
            .into_iter()
            .skip(offset)
            .take(limit)
            .map(|w| DagWarningResponse {
                dag_display_name: w.dag_id.clone(),
                dag_id: w.dag_id,
                warning_type: w.warning_type,
                message: w.message,
                timestamp: time(Some(w.timestamp)),
            })
            .collect(),
    }))
}

/// flow loads no plugins: operators are built in (see `providers`).
#[utoipa::path(get, path = "/api/v2/plugins", tag = "Plugin",
    summary = "Plugins (none: flow's operators are built in)",
    params(("limit" = Option<i64>, Query, minimum = 0), ("offset" = Option<i64>, Query, minimum = 0)),
    responses((status = 200, description = "`{\"plugins\": [], \"total_entries\": 0}`")),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn plugins(user: ApiUser, RawQuery(raw): RawQuery) -> ApiResult<Json<Value>> {
    user.require(Permission::Read)?;
    paging(&query_pairs(raw.as_deref())?)?;
    Ok(Json(json!({"plugins": [], "total_entries": 0})))
}

#[utoipa::path(get, path = "/api/v2/plugins/importErrors", tag = "Plugin",
    summary = "Plugins that failed to load (none)",
    responses((status = 200, description = "`{\"import_errors\": [], \"total_entries\": 0}`")),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn plugin_import_errors(user: ApiUser) -> ApiResult<Json<Value>> {
    user.require(Permission::Read)?;
    Ok(Json(json!({"import_errors": [], "total_entries": 0})))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderResponse {
    pub package_name: String,
    pub description: String,
    pub version: String,
    pub documentation_url: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderCollectionResponse {
    pub providers: Vec<ProviderResponse>,
    pub total_entries: usize,
}

/// The Airflow providers whose operators flow runs natively, and what of each it has.
const PROVIDERS: [(&str, &str); 9] = [
    (
        "apache-airflow-providers-standard",
        "Built into flow: BashOperator, PythonOperator (and @task), EmptyOperator, BranchPythonOperator, ShortCircuitOperator, TriggerDagRunOperator, ExternalTaskSensor, DateTimeSensor, TimeDeltaSensor, FileSensor, PythonSensor",
    ),
    (
        "apache-airflow-providers-apache-kafka",
        "Built into flow: ProduceToTopicOperator, ConsumeFromTopicOperator, AwaitMessageSensor, AwaitMessageTrigger",
    ),
    (
        "apache-airflow-providers-common-sql",
        "Built into flow: SQLExecuteQueryOperator, SqlSensor",
    ),
    (
        "apache-airflow-providers-postgres",
        "Built into flow: postgres connections for the SQL operators",
    ),
    (
        "apache-airflow-providers-mysql",
        "Built into flow: mysql connections for the SQL operators",
    ),
    (
        "apache-airflow-providers-sqlite",
        "Built into flow: sqlite connections for the SQL operators",
    ),
    (
        "apache-airflow-providers-http",
        "Built into flow: HttpOperator, HttpSensor",
    ),
    (
        "apache-airflow-providers-smtp",
        "Built into flow: EmailOperator, SmtpNotifier, email_on_failure",
    ),
    (
        "apache-airflow-providers-slack",
        "Built into flow: SlackNotifier and SlackWebhookNotifier (webhook connections)",
    ),
];

/// The built-in operators, as the Airflow providers they stand for.
#[utoipa::path(get, path = "/api/v2/providers", tag = "Provider",
    summary = "The Airflow providers whose operators flow has built in",
    params(("limit" = Option<i64>, Query, minimum = 0), ("offset" = Option<i64>, Query, minimum = 0)),
    responses((status = 200, body = ProviderCollectionResponse)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn providers(
    user: ApiUser,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<ProviderCollectionResponse>> {
    user.require(Permission::Read)?;
    let (limit, offset) = paging(&query_pairs(raw.as_deref())?)?;
    Ok(Json(ProviderCollectionResponse {
        total_entries: PROVIDERS.len(),
        providers: PROVIDERS
            .iter()
            .skip(offset)
            .take(limit)
            .map(|(name, description)| ProviderResponse {
                package_name: (*name).to_owned(),
                description: (*description).to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                documentation_url: None,
            })
            .collect(),
    }))
}

async fn set_favorite(
    state: &AppState,
    user: &ApiUser,
    dag_id: &str,
    on: bool,
) -> ApiResult<Response> {
    user.require(Permission::Read)?;
    if state.store().dag_get(dag_id).await?.is_none() {
        return Err(ApiError::not_found(format!(
            "Dag with id '{dag_id}' not found"
        )));
    }
    if !state
        .store()
        .dag_favorite_set(&user.username, dag_id, on)
        .await?
    {
        let detail = if on {
            "Dag is already marked as favorite"
        } else {
            "Dag is not marked as favorite"
        };
        return Err(ApiError::new(StatusCode::CONFLICT, detail));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Marks a DAG as one of the caller's favourites (listed first on the DAG list).
#[utoipa::path(post, path = "/api/v2/dags/{dag_id}/favorite", tag = "DAG",
    summary = "Mark a DAG as a favourite of the caller",
    params(("dag_id" = String, Path)),
    responses((status = 204, description = "Marked"), (status = 409, description = "Already a favourite")),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn favorite(
    State(state): State<AppState>,
    user: ApiUser,
    Path(dag_id): Path<String>,
) -> ApiResult<Response> {
    set_favorite(&state, &user, &dag_id, true).await
}

#[utoipa::path(post, path = "/api/v2/dags/{dag_id}/unfavorite", tag = "DAG",
    summary = "Unmark a DAG as a favourite of the caller",
    params(("dag_id" = String, Path)),
    responses((status = 204, description = "Unmarked"), (status = 409, description = "Not a favourite")),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn unfavorite(
    State(state): State<AppState>,
    user: ApiUser,
    Path(dag_id): Path<String>,
) -> ApiResult<Response> {
    set_favorite(&state, &user, &dag_id, false).await
}

/// A task instance's operator extra links: flow's operators define none.
#[utoipa::path(get, path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/links", tag = "Extra Links",
    summary = "A task instance's extra links (flow's operators define none)",
    params(("dag_id" = String, Path), ("dag_run_id" = String, Path), ("task_id" = String, Path),
        ("map_index" = Option<i64>, Query), ("try_number" = Option<i64>, Query)),
    responses((status = 200, description = "`{\"extra_links\": {}, \"total_entries\": 0}`")),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn extra_links(
    State(state): State<AppState>,
    user: ApiUser,
    Path((dag_id, run_id, task_id)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    user.require(Permission::Read)?;
    task_instance_exists(&state, &dag_id, &run_id, &task_id).await?;
    Ok(Json(json!({"extra_links": {}, "total_entries": 0})))
}

/// flow keeps task logs in its database, not in an external log service: Airflow's answer
/// for a log handler without external URLs.
#[utoipa::path(get, path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/externalLogUrl/{try_number}", tag = "Task Instance",
    summary = "External log URL (none: logs are in flow's database)",
    params(("dag_id" = String, Path), ("dag_run_id" = String, Path), ("task_id" = String, Path),
        ("try_number" = i64, Path), ("map_index" = Option<i64>, Query)),
    responses((status = 400, description = "Task log handler does not support external logs.")),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn external_log_url(
    State(state): State<AppState>,
    user: ApiUser,
    Path((dag_id, run_id, task_id, _try)): Path<(String, String, String, String)>,
) -> ApiResult<Response> {
    user.require(Permission::Read)?;
    task_instance_exists(&state, &dag_id, &run_id, &task_id).await?;
    Err(ApiError::bad_request(
        "Task log handler does not support external logs.",
    ))
}

/// Human-in-the-loop details of a run: flow has no HITL operators, so there are none.
#[utoipa::path(get, path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/hitlDetails", tag = "Task Instance",
    summary = "Human-in-the-loop details (none: flow has no HITL operators)",
    params(("dag_id" = String, Path), ("dag_run_id" = String, Path)),
    responses((status = 200, description = "`{\"hitl_details\": [], \"total_entries\": 0}`")),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn hitl_details(
    State(state): State<AppState>,
    user: ApiUser,
    Path((dag_id, run_id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    user.require(Permission::Read)?;
    if dag_id != "~" && run_id != "~" {
        super::find_run(&state, &dag_id, &run_id).await?;
    }
    Ok(Json(json!({"hitl_details": [], "total_entries": 0})))
}

#[utoipa::path(get, path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/{map_index}/hitlDetails", tag = "Task Instance",
    summary = "A task instance's human-in-the-loop detail (never: flow has no HITL operators)",
    params(("dag_id" = String, Path), ("dag_run_id" = String, Path), ("task_id" = String, Path), ("map_index" = i64, Path)),
    responses((status = 404, description = "No HITL detail")),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn hitl_detail(
    user: ApiUser,
    Path((dag_id, run_id, task_id, map_index)): Path<(String, String, String, String)>,
) -> ApiResult<Response> {
    user.require(Permission::Read)?;
    Err(ApiError::not_found(format!(
        "Human-in-the-loop detail does not exist for Task Instance with id dag_id={dag_id}, run_id={run_id}, task_id={task_id}, map_index={map_index}"
    )))
}

async fn task_instance_exists(
    state: &AppState,
    dag_id: &str,
    run_id: &str,
    task_id: &str,
) -> ApiResult<()> {
    let found = state
        .store()
        .ti_list_for_run(dag_id, run_id)
        .await?
        .iter()
        .any(|t| t.key.task_id == task_id);
    if !found {
        return Err(ApiError::not_found(format!(
            "Task Instance not found for dag_id={dag_id}, run_id={run_id}, task_id={task_id}"
        )));
    }
    Ok(())
}
