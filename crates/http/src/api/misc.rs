//! Smaller read routes: import errors, event logs (flow's audit log), DAG sources and tags.

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use flow_model::Permission;
use serde_json::{Value, json};

use super::dags::time;
use super::{ApiError, ApiResult, ApiUser, paging, query_pairs};
use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v2/importErrors", get(import_errors))
        .route("/api/v2/importErrors/{import_error_id}", get(import_error))
        .route("/api/v2/eventLogs", get(event_logs))
        .route("/api/v2/dagSources/{dag_id}", get(dag_source))
        .route("/api/v2/dagTags", get(dag_tags))
}

fn import_error_json(e: &flow_store::ImportErrorRow) -> Value {
    json!({
        "import_error_id": e.id,
        "timestamp": time(Some(e.timestamp)),
        "filename": e.filename,
        "bundle_name": "dags-folder",
        "stack_trace": e.stacktrace,
    })
}

async fn import_errors(
    State(state): State<AppState>,
    user: ApiUser,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    user.require(Permission::Read)?;
    let pairs = query_pairs(raw.as_deref())?;
    let (limit, offset) = paging(&pairs)?;
    let mut errors = state.store().import_errors().await?;
    errors.sort_by_key(|e| e.id);
    let items: Vec<Value> = errors
        .iter()
        .skip(offset)
        .take(limit)
        .map(import_error_json)
        .collect();
    Ok(Json(
        json!({ "import_errors": items, "total_entries": errors.len() }),
    ))
}

async fn import_error(
    State(state): State<AppState>,
    user: ApiUser,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    user.require(Permission::Read)?;
    let id: i64 = id.parse().map_err(|_| {
        ApiError::invalid(
            &["path", "import_error_id"],
            "Input should be a valid integer",
        )
    })?;
    let errors = state.store().import_errors().await?;
    let e = errors.iter().find(|e| e.id == id).ok_or_else(|| {
        ApiError::not_found(format!(
            "The ImportError with import_error_id: `{id}` was not found"
        ))
    })?;
    Ok(Json(import_error_json(e)))
}

/// The audit log, as Airflow's event log.
async fn event_logs(
    State(state): State<AppState>,
    user: ApiUser,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    user.require(Permission::Read)?;
    let pairs = query_pairs(raw.as_deref())?;
    let (limit, offset) = paging(&pairs)?;
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let rows = state.store().audit_list(get("dag_id"), 10_000).await?;
    let rows: Vec<_> = rows
        .into_iter()
        .filter(|r| get("event").is_none_or(|e| r.event == e))
        .filter(|r| get("run_id").is_none_or(|x| r.run_id.as_deref() == Some(x)))
        .filter(|r| get("task_id").is_none_or(|x| r.task_id.as_deref() == Some(x)))
        .collect();
    let items: Vec<Value> = rows
        .iter()
        .skip(offset)
        .take(limit)
        .map(|r| {
            json!({
                "event_log_id": r.id,
                "when": time(Some(r.at)),
                "dag_id": r.dag_id,
                "task_id": r.task_id,
                "run_id": r.run_id,
                "map_index": Value::Null,
                "try_number": Value::Null,
                "event": r.event,
                "logical_date": Value::Null,
                "owner": r.username,
                "extra": r.extra,
                "dag_display_name": r.dag_id,
                "task_display_name": r.task_id,
            })
        })
        .collect();
    Ok(Json(
        json!({ "event_logs": items, "total_entries": rows.len() }),
    ))
}

/// The DAG's YAML source: JSON by default, plain text with `Accept: text/plain`.
async fn dag_source(
    State(state): State<AppState>,
    user: ApiUser,
    Path(dag_id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    user.require(Permission::Read)?;
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let store = state.store();
    let row = store
        .dag_get(&dag_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("The Dag with ID: `{dag_id}` was not found")))?;
    let content = store.dag_code_get(&row.fileloc).await?;
    if accept.starts_with("text/plain") {
        let mut response = content.unwrap_or_default().into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        return Ok(response);
    }
    if !(accept.starts_with("application/json") || accept.starts_with("*/*")) {
        return Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "Only application/json or text/plain is supported",
        ));
    }
    Ok(Json(json!({
        "content": content,
        "dag_id": dag_id,
        "version_number": 1,
        "dag_display_name": dag_id,
    }))
    .into_response())
}

/// Distinct tag names, as plain strings.
async fn dag_tags(
    State(state): State<AppState>,
    user: ApiUser,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    user.require(Permission::Read)?;
    let pairs = query_pairs(raw.as_deref())?;
    let (limit, offset) = paging(&pairs)?;
    let pattern = pairs
        .iter()
        .find(|(k, _)| k == "tag_name_pattern")
        .map(|(_, v)| v.to_lowercase());
    let mut tags: Vec<String> = state
        .store()
        .dag_list()
        .await?
        .into_iter()
        .flat_map(|d| d.tags)
        .filter(|t| {
            pattern
                .as_deref()
                .is_none_or(|p| t.to_lowercase().contains(p.trim_matches('%')))
        })
        .collect();
    tags.sort();
    tags.dedup();
    let page: Vec<&String> = tags.iter().skip(offset).take(limit).collect();
    Ok(Json(json!({ "tags": page, "total_entries": tags.len() })))
}
