//! `/api/v2/assets`: Airflow 3's asset routes: assets with the DAGs scheduled on them and the
//! tasks that update or read them, their events (listed, and created from outside, which
//! triggers the DAGs scheduled on the asset), the events queued for each DAG, and the events a
//! run consumed.

use std::collections::HashMap;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Json;
use chrono::{DateTime, Utc};
use flow_model::Permission;
use flow_store::{AssetEventQuery, AssetEventRow, AssetQuery, AssetRow, DagRunRow, QueuedEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::dag_runs::parse_time;
use super::dags::time;
use super::{
    ApiError, ApiResult, ApiUser, Body, audit, dag_not_found, paging, query_pairs, read_body,
};
use crate::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(list_events, create_event))
        .routes(routes!(get_one))
        .routes(routes!(asset_queued, asset_queued_delete))
        .routes(routes!(dag_queued, dag_queued_delete))
        .routes(routes!(dag_asset_queued, dag_asset_queued_delete))
        .routes(routes!(upstream_events))
}

/// Airflow's `DagScheduleAssetReference`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DagScheduleAssetReference {
    pub dag_id: String,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

/// Airflow's `TaskOutletAssetReference` / `TaskInletAssetReference`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskAssetReference {
    pub dag_id: String,
    pub task_id: String,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

/// Airflow's `LastAssetEventResponse`.
#[derive(Debug, Serialize, ToSchema)]
pub struct LastAssetEvent {
    pub id: Option<i64>,
    pub timestamp: Option<String>,
}

/// Airflow's `AssetResponse`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AssetResponse {
    pub id: i64,
    pub name: String,
    pub uri: String,
    pub group: String,
    #[schema(value_type = Object)]
    pub extra: Value,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    pub scheduled_dags: Vec<DagScheduleAssetReference>,
    pub producing_tasks: Vec<TaskAssetReference>,
    pub consuming_tasks: Vec<TaskAssetReference>,
    /// Asset aliases are resolved at run time in flow; none are listed.
    #[schema(value_type = Vec<Object>)]
    pub aliases: Vec<Value>,
    /// flow has no asset watchers.
    #[schema(value_type = Vec<Object>)]
    pub watchers: Vec<Value>,
    pub last_asset_event: Option<LastAssetEvent>,
}

/// Airflow's `AssetCollectionResponse`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AssetCollection {
    pub assets: Vec<AssetResponse>,
    pub total_entries: i64,
}

/// Airflow's `DagRunAssetReference`: a run an event triggered.
#[derive(Debug, Serialize, ToSchema)]
pub struct DagRunAssetReference {
    pub run_id: String,
    pub dag_id: String,
    pub logical_date: Option<String>,
    pub start_date: Option<String>,
    pub end_date: Option<String>,
    pub state: String,
    pub data_interval_start: Option<String>,
    pub data_interval_end: Option<String>,
}

/// Airflow's `AssetEventResponse`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AssetEventResponse {
    pub id: i64,
    pub asset_id: i64,
    pub uri: String,
    pub name: String,
    pub group: String,
    #[schema(value_type = Object)]
    pub extra: Value,
    pub source_task_id: Option<String>,
    pub source_dag_id: Option<String>,
    pub source_run_id: Option<String>,
    pub source_map_index: i64,
    pub created_dagruns: Vec<DagRunAssetReference>,
    pub timestamp: Option<String>,
}

/// Airflow's `AssetEventCollectionResponse`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AssetEventCollection {
    pub asset_events: Vec<AssetEventResponse>,
    pub total_entries: i64,
}

/// Airflow's `CreateAssetEventsBody`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAssetEventBody {
    pub asset_id: i64,
    #[schema(value_type = Option<Object>)]
    pub extra: Option<Value>,
    /// Accepted for Airflow's clients; flow has no partitions.
    #[allow(dead_code)]
    pub partition_key: Option<String>,
}

/// Airflow's `QueuedEventResponse`.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueuedEventResponse {
    pub dag_id: String,
    pub asset_id: i64,
    pub created_at: Option<String>,
    pub dag_display_name: String,
}

/// Airflow's `QueuedEventCollectionResponse`.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueuedEventCollection {
    pub queued_events: Vec<QueuedEventResponse>,
    pub total_entries: usize,
}

fn run_reference(r: &DagRunRow) -> DagRunAssetReference {
    DagRunAssetReference {
        run_id: r.run_id.clone(),
        dag_id: r.dag_id.clone(),
        logical_date: time(r.logical_date),
        start_date: time(r.start_date),
        end_date: time(r.end_date),
        state: r.state.as_str().to_owned(),
        data_interval_start: time(r.data_interval_start),
        data_interval_end: time(r.data_interval_end),
    }
}

fn event_response(e: &AssetEventRow, runs: &HashMap<i64, Vec<DagRunRow>>) -> AssetEventResponse {
    AssetEventResponse {
        id: e.id,
        asset_id: e.asset_id,
        uri: e.uri.clone(),
        name: e.name.clone(),
        group: e.group.clone(),
        extra: e.extra.clone(),
        source_task_id: e.source_task_id.clone(),
        source_dag_id: e.source_dag_id.clone(),
        source_run_id: e.source_run_id.clone(),
        source_map_index: e.source_map_index,
        created_dagruns: runs
            .get(&e.id)
            .map(|rs| rs.iter().map(run_reference).collect())
            .unwrap_or_default(),
        timestamp: time(Some(e.timestamp)),
    }
}

async fn events_response(
    state: &AppState,
    events: &[AssetEventRow],
) -> ApiResult<Vec<AssetEventResponse>> {
    let ids: Vec<i64> = events.iter().map(|e| e.id).collect();
    let runs = state.store().asset_event_runs(&ids).await?;
    Ok(events.iter().map(|e| event_response(e, &runs)).collect())
}

async fn assets_response(state: &AppState, assets: &[AssetRow]) -> ApiResult<Vec<AssetResponse>> {
    let ids: Vec<i64> = assets.iter().map(|a| a.id).collect();
    let refs = state.store().asset_references(&ids).await?;
    let last = state.store().asset_last_events(&ids).await?;
    Ok(assets
        .iter()
        .map(|a| {
            let mine = refs.get(&a.id).map(Vec::as_slice).unwrap_or_default();
            let tasks = |kind: &str| {
                mine.iter()
                    .filter(|r| r.kind == kind)
                    .map(|r| TaskAssetReference {
                        dag_id: r.dag_id.clone(),
                        task_id: r.task_id.clone(),
                        created_at: time(Some(r.created_at)),
                        updated_at: time(Some(r.created_at)),
                    })
                    .collect()
            };
            AssetResponse {
                id: a.id,
                name: a.name.clone(),
                uri: a.uri.clone(),
                group: a.group.clone(),
                extra: a.extra.clone(),
                created_at: time(Some(a.created_at)),
                updated_at: time(Some(a.updated_at)),
                scheduled_dags: mine
                    .iter()
                    .filter(|r| r.kind == "schedule")
                    .map(|r| DagScheduleAssetReference {
                        dag_id: r.dag_id.clone(),
                        created_at: time(Some(r.created_at)),
                        updated_at: time(Some(r.created_at)),
                    })
                    .collect(),
                producing_tasks: tasks("outlet"),
                consuming_tasks: tasks("inlet"),
                aliases: Vec::new(),
                watchers: Vec::new(),
                last_asset_event: last.get(&a.id).map(|(id, at)| LastAssetEvent {
                    id: Some(*id),
                    timestamp: time(Some(*at)),
                }),
            }
        })
        .collect())
}

/// `order_by` as Airflow sends it (`-timestamp`), checked against what may be ordered by.
fn order_by(value: Option<&str>, allowed: &[&str]) -> ApiResult<Option<(String, bool)>> {
    let Some(v) = value else {
        return Ok(None);
    };
    let (desc, field) = match v.strip_prefix('-') {
        Some(f) => (true, f),
        None => (false, v),
    };
    if !allowed.contains(&field) {
        return Err(ApiError::bad_request(format!(
            "Ordering with '{field}' is disallowed or the attribute does not exist on the model"
        )));
    }
    Ok(Some((field.to_owned(), desc)))
}

fn asset_not_found(id: i64) -> ApiError {
    ApiError::not_found(format!("The Asset with ID: `{id}` was not found"))
}

fn int_param(name: &str, value: Option<&str>) -> ApiResult<Option<i64>> {
    value
        .map(|v| {
            v.parse::<i64>()
                .map_err(|_| ApiError::invalid(&["query", name], "Input should be a valid integer"))
        })
        .transpose()
}

#[utoipa::path(get, path = "/api/v2/assets", tag = "Asset",
    summary = "Assets, with the DAGs scheduled on them and the tasks that update and read them",
    params(
        ("limit" = Option<i64>, Query, minimum = 0),
        ("offset" = Option<i64>, Query, minimum = 0),
        ("name_pattern" = Option<String>, Query, description = "Substring of the name, case-insensitive"),
        ("uri_pattern" = Option<String>, Query, description = "Substring of the URI, case-insensitive"),
        ("dag_ids" = Option<Vec<String>>, Query, explode = true, description = "Only assets these DAGs refer to"),
        ("only_active" = Option<bool>, Query, description = "Accepted; every known asset is listed"),
        ("order_by" = Option<String>, Query, description = "id, name, uri, created_at or updated_at; `-` for descending"),
    ),
    responses((status = 200, body = AssetCollection)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn list(
    State(state): State<AppState>,
    user: ApiUser,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<AssetCollection>> {
    user.require(Permission::Read)?;
    let pairs = query_pairs(raw.as_deref())?;
    let (limit, offset) = paging(&pairs)?;
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let pattern = |k: &str| get(k).map(|p| p.trim_matches('%').to_owned());
    let q = AssetQuery {
        uri_pattern: pattern("uri_pattern"),
        name_pattern: pattern("name_pattern"),
        dag_ids: pairs
            .iter()
            .filter(|(k, _)| k == "dag_ids")
            .flat_map(|(_, v)| v.split(',').map(str::to_owned))
            .filter(|v| !v.is_empty())
            .collect(),
        order_by: order_by(get("order_by"), &AssetQuery::ORDER_COLUMNS)?,
        limit: i64::try_from(limit).unwrap_or(100),
        offset: i64::try_from(offset).unwrap_or(i64::MAX),
    };
    let (assets, total) = state.store().asset_query(&q).await?;
    Ok(Json(AssetCollection {
        assets: assets_response(&state, &assets).await?,
        total_entries: total,
    }))
}

#[utoipa::path(get, path = "/api/v2/assets/{asset_id}", tag = "Asset",
    summary = "One asset",
    params(("asset_id" = i64, Path)),
    responses((status = 200, body = AssetResponse)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn get_one(
    State(state): State<AppState>,
    user: ApiUser,
    Path(asset_id): Path<i64>,
) -> ApiResult<Json<AssetResponse>> {
    user.require(Permission::Read)?;
    let asset = state
        .store()
        .asset_get(asset_id)
        .await?
        .ok_or_else(|| asset_not_found(asset_id))?;
    let mut out = assets_response(&state, std::slice::from_ref(&asset)).await?;
    out.pop().map(Json).ok_or_else(|| asset_not_found(asset_id))
}

#[utoipa::path(get, path = "/api/v2/assets/events", tag = "Asset",
    summary = "Asset events, with the runs each triggered",
    params(
        ("limit" = Option<i64>, Query, minimum = 0),
        ("offset" = Option<i64>, Query, minimum = 0),
        ("order_by" = Option<String>, Query, description = "timestamp (default), id, asset_id, source_dag_id, source_task_id or source_run_id; `-` for descending"),
        ("asset_id" = Option<i64>, Query),
        ("source_dag_id" = Option<String>, Query),
        ("source_task_id" = Option<String>, Query),
        ("source_run_id" = Option<String>, Query),
        ("source_map_index" = Option<i64>, Query),
        ("timestamp_gte" = Option<String>, Query),
        ("timestamp_lte" = Option<String>, Query),
    ),
    responses((status = 200, body = AssetEventCollection)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn list_events(
    State(state): State<AppState>,
    user: ApiUser,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<AssetEventCollection>> {
    user.require(Permission::Read)?;
    let pairs = query_pairs(raw.as_deref())?;
    let (limit, offset) = paging(&pairs)?;
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let when = |k: &str| -> ApiResult<Option<DateTime<Utc>>> {
        get(k).map(|v| parse_time(&["query", k], v)).transpose()
    };
    let q = AssetEventQuery {
        asset_id: int_param("asset_id", get("asset_id"))?,
        source_dag_id: get("source_dag_id").map(str::to_owned),
        source_task_id: get("source_task_id").map(str::to_owned),
        source_run_id: get("source_run_id").map(str::to_owned),
        source_map_index: int_param("source_map_index", get("source_map_index"))?,
        timestamp_gte: when("timestamp_gte")?,
        timestamp_lte: when("timestamp_lte")?,
        order_by: order_by(get("order_by"), &AssetEventQuery::ORDER_COLUMNS)?,
        limit: i64::try_from(limit).unwrap_or(100),
        offset: i64::try_from(offset).unwrap_or(i64::MAX),
    };
    let (events, total) = state.store().asset_event_query(&q).await?;
    Ok(Json(AssetEventCollection {
        asset_events: events_response(&state, &events).await?,
        total_entries: total,
    }))
}

/// The largest `extra` an event may carry, in bytes of JSON.
const MAX_EXTRA_BYTES: usize = 64 * 1024;

#[utoipa::path(post, path = "/api/v2/assets/events", tag = "Asset",
    summary = "Record an asset event from outside flow; the DAGs scheduled on the asset see it as any other",
    request_body = CreateAssetEventBody,
    responses((status = 200, body = AssetEventResponse)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn create_event(
    State(state): State<AppState>,
    user: ApiUser,
    body: Body<CreateAssetEventBody>,
) -> ApiResult<Json<AssetEventResponse>> {
    user.require(Permission::Operate)?;
    let b = read_body(body)?;
    let mut extra = match b.extra {
        None | Some(Value::Null) => serde_json::Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err(ApiError::invalid(
                &["body", "extra"],
                "Input should be a valid dictionary",
            ));
        }
    };
    if serde_json::to_string(&extra).map_or(0, |s| s.len()) > MAX_EXTRA_BYTES {
        return Err(ApiError::invalid(
            &["body", "extra"],
            format!("extra is at most {MAX_EXTRA_BYTES} bytes of JSON"),
        ));
    }
    // As Airflow: an event made through the API says so.
    extra.insert("from_rest_api".into(), Value::Bool(true));
    let event = state
        .store()
        .asset_event_create(b.asset_id, &Value::Object(extra), Utc::now())
        .await?
        .ok_or_else(|| asset_not_found(b.asset_id))?;
    audit(&state, &user, "create_asset_event", None, None).await;
    let mut out = events_response(&state, std::slice::from_ref(&event)).await?;
    out.pop()
        .map(Json)
        .ok_or_else(|| asset_not_found(b.asset_id))
}

async fn queued_response(
    state: &AppState,
    rows: Vec<QueuedEvent>,
) -> ApiResult<Json<QueuedEventCollection>> {
    let mut names: HashMap<String, String> = HashMap::new();
    for r in &rows {
        if names.contains_key(&r.dag_id) {
            continue;
        }
        let display = super::load_dag(state, &r.dag_id)
            .await?
            .and_then(|(d, _)| d.display_name)
            .unwrap_or_else(|| r.dag_id.clone());
        names.insert(r.dag_id.clone(), display);
    }
    let queued_events: Vec<QueuedEventResponse> = rows
        .into_iter()
        .map(|r| QueuedEventResponse {
            dag_display_name: names.get(&r.dag_id).cloned().unwrap_or_default(),
            dag_id: r.dag_id,
            asset_id: r.asset_id,
            created_at: time(Some(r.created_at)),
        })
        .collect();
    Ok(Json(QueuedEventCollection {
        total_entries: queued_events.len(),
        queued_events,
    }))
}

fn before(raw: Option<&str>) -> ApiResult<Option<DateTime<Utc>>> {
    let pairs = query_pairs(raw)?;
    pairs
        .iter()
        .find(|(k, _)| k == "before")
        .map(|(_, v)| parse_time(&["query", "before"], v))
        .transpose()
}

async fn require_dag(state: &AppState, dag_id: &str) -> ApiResult<()> {
    match super::load_dag(state, dag_id).await? {
        Some(_) => Ok(()),
        None => Err(dag_not_found(dag_id)),
    }
}

async fn require_asset(state: &AppState, asset_id: i64) -> ApiResult<()> {
    match state.store().asset_get(asset_id).await? {
        Some(_) => Ok(()),
        None => Err(asset_not_found(asset_id)),
    }
}

#[utoipa::path(get, path = "/api/v2/assets/{asset_id}/queuedEvents", tag = "Asset",
    summary = "Events of an asset waiting for the DAGs scheduled on it",
    params(("asset_id" = i64, Path), ("before" = Option<String>, Query)),
    responses((status = 200, body = QueuedEventCollection)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn asset_queued(
    State(state): State<AppState>,
    user: ApiUser,
    Path(asset_id): Path<i64>,
) -> ApiResult<Json<QueuedEventCollection>> {
    user.require(Permission::Read)?;
    require_asset(&state, asset_id).await?;
    let rows = state
        .store()
        .asset_queued_events(None, Some(asset_id))
        .await?;
    queued_response(&state, rows).await
}

#[utoipa::path(delete, path = "/api/v2/assets/{asset_id}/queuedEvents", tag = "Asset",
    summary = "Drop an asset's waiting events",
    params(("asset_id" = i64, Path), ("before" = Option<String>, Query)),
    responses((status = 204)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn asset_queued_delete(
    State(state): State<AppState>,
    user: ApiUser,
    Path(asset_id): Path<i64>,
    RawQuery(raw): RawQuery,
) -> ApiResult<StatusCode> {
    user.require(Permission::Operate)?;
    require_asset(&state, asset_id).await?;
    let before = before(raw.as_deref())?;
    state
        .store()
        .asset_queued_delete(None, Some(asset_id), before)
        .await?;
    audit(&state, &user, "delete_asset_queued_events", None, None).await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v2/dags/{dag_id}/assets/queuedEvents", tag = "Asset",
    summary = "Events waiting for a DAG scheduled on assets",
    params(("dag_id" = String, Path), ("before" = Option<String>, Query)),
    responses((status = 200, body = QueuedEventCollection)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn dag_queued(
    State(state): State<AppState>,
    user: ApiUser,
    Path(dag_id): Path<String>,
) -> ApiResult<Json<QueuedEventCollection>> {
    user.require(Permission::Read)?;
    require_dag(&state, &dag_id).await?;
    let rows = state
        .store()
        .asset_queued_events(Some(&dag_id), None)
        .await?;
    queued_response(&state, rows).await
}

#[utoipa::path(delete, path = "/api/v2/dags/{dag_id}/assets/queuedEvents", tag = "Asset",
    summary = "Drop the events waiting for a DAG",
    params(("dag_id" = String, Path), ("before" = Option<String>, Query)),
    responses((status = 204)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn dag_queued_delete(
    State(state): State<AppState>,
    user: ApiUser,
    Path(dag_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<StatusCode> {
    user.require(Permission::Operate)?;
    require_dag(&state, &dag_id).await?;
    let before = before(raw.as_deref())?;
    state
        .store()
        .asset_queued_delete(Some(&dag_id), None, before)
        .await?;
    audit(
        &state,
        &user,
        "delete_dag_asset_queued_events",
        Some(&dag_id),
        None,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v2/dags/{dag_id}/assets/{asset_id}/queuedEvents", tag = "Asset",
    summary = "The events of one asset waiting for a DAG",
    params(("dag_id" = String, Path), ("asset_id" = i64, Path), ("before" = Option<String>, Query)),
    responses((status = 200, body = QueuedEventResponse)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn dag_asset_queued(
    State(state): State<AppState>,
    user: ApiUser,
    Path((dag_id, asset_id)): Path<(String, i64)>,
) -> ApiResult<Json<QueuedEventResponse>> {
    user.require(Permission::Read)?;
    require_dag(&state, &dag_id).await?;
    let rows = state
        .store()
        .asset_queued_events(Some(&dag_id), Some(asset_id))
        .await?;
    let Json(mut all) = queued_response(&state, rows).await?;
    all.queued_events.pop().map(Json).ok_or_else(|| {
        ApiError::not_found(format!(
            "Queue event with dag_id: `{dag_id}` and asset_id: `{asset_id}` was not found"
        ))
    })
}

#[utoipa::path(delete, path = "/api/v2/dags/{dag_id}/assets/{asset_id}/queuedEvents", tag = "Asset",
    summary = "Drop one asset's events waiting for a DAG",
    params(("dag_id" = String, Path), ("asset_id" = i64, Path), ("before" = Option<String>, Query)),
    responses((status = 204)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn dag_asset_queued_delete(
    State(state): State<AppState>,
    user: ApiUser,
    Path((dag_id, asset_id)): Path<(String, i64)>,
    RawQuery(raw): RawQuery,
) -> ApiResult<StatusCode> {
    user.require(Permission::Operate)?;
    require_dag(&state, &dag_id).await?;
    let before = before(raw.as_deref())?;
    let n = state
        .store()
        .asset_queued_delete(Some(&dag_id), Some(asset_id), before)
        .await?;
    if n == 0 {
        return Err(ApiError::not_found(format!(
            "Queue event with dag_id: `{dag_id}` and asset_id: `{asset_id}` was not found"
        )));
    }
    audit(
        &state,
        &user,
        "delete_dag_asset_queued_event",
        Some(&dag_id),
        None,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/upstreamAssetEvents", tag = "DagRun",
    summary = "The asset events that triggered a run",
    params(("dag_id" = String, Path), ("dag_run_id" = String, Path)),
    responses((status = 200, body = AssetEventCollection)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn upstream_events(
    State(state): State<AppState>,
    user: ApiUser,
    Path((dag_id, run_id)): Path<(String, String)>,
) -> ApiResult<Json<AssetEventCollection>> {
    user.require(Permission::Read)?;
    super::find_run(&state, &dag_id, &run_id).await?;
    let events = state.store().asset_events_for_run(&dag_id, &run_id).await?;
    let asset_events = events_response(&state, &events).await?;
    Ok(Json(AssetEventCollection {
        total_entries: i64::try_from(asset_events.len()).unwrap_or(i64::MAX),
        asset_events,
    }))
}
