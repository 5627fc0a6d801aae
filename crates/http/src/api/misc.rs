//! Smaller read routes: import errors, event logs (flow's audit log), DAG sources and tags.

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use flow_model::Permission;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::dags::time;
use super::schema::{
    DagSource, DagTagCollection, ErrorBody, EventLog, EventLogCollection, ImportError,
    ImportErrorCollection, Job, JobCollection,
};
use super::{ApiError, ApiResult, ApiUser, paging, query_pairs};
use crate::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(import_errors))
        .routes(routes!(import_error))
        .routes(routes!(event_logs))
        .routes(routes!(event_log_one))
        .routes(routes!(dag_source))
        .routes(routes!(dag_tags))
        .routes(routes!(jobs))
}

/// The processes of the deployment (Airflow's jobs): schedulers, workers, triggerers, web
/// servers, each with its host and latest heartbeat.
#[utoipa::path(get, path = "/api/v2/jobs", tag = "Job",
    summary = "Jobs: schedulers, workers, triggerers and web servers with their heartbeats",
    params(
        ("limit" = Option<i64>, Query, minimum = 0),
        ("offset" = Option<i64>, Query, minimum = 0),
        ("job_state" = Option<String>, Query),
        ("job_type" = Option<String>, Query),
        ("hostname" = Option<String>, Query),
        ("is_alive" = Option<bool>, Query),
    ),
    responses((status = 200, body = JobCollection)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn jobs(
    State(state): State<AppState>,
    user: ApiUser,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<JobCollection>> {
    user.require(Permission::Read)?;
    let pairs = query_pairs(raw.as_deref())?;
    let (limit, offset) = paging(&pairs)?;
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.to_owned())
    };
    let alive = match get("is_alive").as_deref() {
        None => None,
        Some("true" | "True" | "1") => Some(true),
        Some("false" | "False" | "0") => Some(false),
        Some(_) => {
            return Err(ApiError::invalid(
                &["query", "is_alive"],
                "Input should be a valid boolean, unable to interpret input",
            ));
        }
    };
    // Airflow's `scheduler_health_check_threshold`.
    let since = chrono::Utc::now() - chrono::Duration::seconds(30);
    let query = flow_store::JobQuery {
        job_type: get("job_type"),
        state: get("job_state"),
        hostname: get("hostname"),
        alive: alive.map(|a| (a, since)),
        limit: i64::try_from(limit).unwrap_or(i64::MAX),
        offset: i64::try_from(offset).unwrap_or(0),
    };
    let (rows, total) = state.store().job_list(&query).await?;
    Ok(Json(JobCollection {
        jobs: rows
            .into_iter()
            .map(|j| Job {
                id: j.id,
                dag_id: None,
                state: Some(j.state),
                job_type: Some(j.job_type),
                start_date: time(Some(j.start_date)),
                end_date: time(j.end_date),
                latest_heartbeat: time(Some(j.latest_heartbeat)),
                executor_class: None,
                hostname: Some(j.hostname),
                unixname: j.unixname,
                dag_display_name: None,
            })
            .collect(),
        total_entries: total,
    }))
}

fn import_error_response(e: &flow_store::ImportErrorRow) -> ImportError {
    ImportError {
        import_error_id: e.id,
        timestamp: time(Some(e.timestamp)),
        filename: e.filename.clone(),
        bundle_name: Some("dags-folder".into()),
        stack_trace: e.stacktrace.clone(),
    }
}

#[utoipa::path(get, path = "/api/v2/importErrors", tag = "Import Error",
    summary = "DAG files that failed to load, with their diagnostics",
    params(
        ("limit" = Option<i64>, Query, minimum = 0),
        ("offset" = Option<i64>, Query, minimum = 0),
    ),
    responses((status = 200, body = ImportErrorCollection)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn import_errors(
    State(state): State<AppState>,
    user: ApiUser,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<ImportErrorCollection>> {
    user.require(Permission::Read)?;
    let pairs = query_pairs(raw.as_deref())?;
    let (limit, offset) = paging(&pairs)?;
    let mut errors = state.store().import_errors().await?;
    errors.sort_by_key(|e| e.id);
    Ok(Json(ImportErrorCollection {
        import_errors: errors
            .iter()
            .skip(offset)
            .take(limit)
            .map(import_error_response)
            .collect(),
        total_entries: errors.len(),
    }))
}

#[utoipa::path(get, path = "/api/v2/importErrors/{import_error_id}", tag = "Import Error",
    summary = "One import error",
    params(("import_error_id" = i64, Path)),
    responses((status = 200, body = ImportError)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn import_error(
    State(state): State<AppState>,
    user: ApiUser,
    Path(id): Path<String>,
) -> ApiResult<Json<ImportError>> {
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
    Ok(Json(import_error_response(e)))
}

/// The audit log, as Airflow's event log.
#[utoipa::path(get, path = "/api/v2/eventLogs", tag = "Event Log",
    summary = "The audit log: who triggered, paused, marked, cleared or deleted what",
    params(
        ("limit" = Option<i64>, Query, minimum = 0),
        ("offset" = Option<i64>, Query, minimum = 0),
        ("dag_id" = Option<String>, Query),
        ("event" = Option<String>, Query),
        ("run_id" = Option<String>, Query),
        ("task_id" = Option<String>, Query),
    ),
    responses((status = 200, body = EventLogCollection)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn event_logs(
    State(state): State<AppState>,
    user: ApiUser,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<EventLogCollection>> {
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
    Ok(Json(EventLogCollection {
        event_logs: rows
            .iter()
            .skip(offset)
            .take(limit)
            .map(event_log)
            .collect(),
        total_entries: rows.len(),
    }))
}

/// An audit log entry in Airflow's `EventLogResponse` shape.
fn event_log(r: &flow_store::AuditRow) -> EventLog {
    EventLog {
        event_log_id: r.id,
        when: time(Some(r.at)),
        dag_id: r.dag_id.clone(),
        task_id: r.task_id.clone(),
        run_id: r.run_id.clone(),
        map_index: None,
        try_number: None,
        event: r.event.clone(),
        logical_date: None,
        owner: Some(r.username.clone()),
        extra: r.extra.clone(),
        dag_display_name: r.dag_id.clone(),
        task_display_name: r.task_id.clone(),
    }
}

/// One audit log entry.
#[utoipa::path(get, path = "/api/v2/eventLogs/{event_log_id}", tag = "Event Log",
    summary = "One entry of the audit log",
    params(("event_log_id" = i64, Path)),
    responses((status = 200, body = EventLog)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn event_log_one(
    State(state): State<AppState>,
    user: ApiUser,
    Path(id): Path<String>,
) -> ApiResult<Json<EventLog>> {
    user.require(Permission::Read)?;
    let id: i64 = id.parse().map_err(|_| {
        ApiError::invalid(&["path", "event_log_id"], "Input should be a valid integer")
    })?;
    let row =
        state.store().audit_get(id).await?.ok_or_else(|| {
            ApiError::not_found(format!("The Event Log with id: `{id}` not found"))
        })?;
    Ok(Json(event_log(&row)))
}

/// The DAG's YAML source: JSON by default, plain text with `Accept: text/plain`.
#[utoipa::path(get, path = "/api/v2/dagSources/{dag_id}", tag = "DagSource",
    summary = "The DAG's YAML source (JSON, or plain text with `Accept: text/plain`)",
    params(("dag_id" = String, Path), ("version_number" = Option<i64>, Query)),
    responses(
        (status = 200, content((DagSource = "application/json"), (String = "text/plain"))),
        (status = 406, description = "Neither JSON nor plain text was acceptable", body = ErrorBody),
    ),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn dag_source(
    State(state): State<AppState>,
    user: ApiUser,
    Path(dag_id): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Response> {
    user.require(Permission::Read)?;
    let version: Option<i64> = query_pairs(raw.as_deref())?
        .iter()
        .find(|(k, _)| k == "version_number")
        .map(|(_, v)| {
            v.parse().map_err(|_| {
                ApiError::invalid(
                    &["query", "version_number"],
                    "Input should be a valid integer",
                )
            })
        })
        .transpose()?;
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let store = state.store();
    let row = store
        .dag_get(&dag_id)
        .await?
        .ok_or_else(|| super::dag_not_found(&dag_id))?;
    let (content, version_number) = match version {
        // An earlier version's source, as it was parsed.
        Some(n) => {
            let (_, source) = store.dag_version_get(&dag_id, n).await?.ok_or_else(|| {
                ApiError::not_found(format!(
                    "The Dag with ID: `{dag_id}` and version number: `{n}` was not found"
                ))
            })?;
            (Some(source), n)
        }
        None => {
            let (_, total) = store.dag_versions(&dag_id, true, 1, 0).await?;
            (store.dag_code_get(&row.fileloc).await?, total.max(1))
        }
    };
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
    Ok(Json(DagSource {
        content,
        dag_display_name: dag_id.clone(),
        dag_id,
        version_number: Some(version_number),
    })
    .into_response())
}

/// Distinct tag names, as plain strings.
#[utoipa::path(get, path = "/api/v2/dagTags", tag = "DAG", summary = "Tag names in use",
    params(
        ("limit" = Option<i64>, Query, minimum = 0),
        ("offset" = Option<i64>, Query, minimum = 0),
        ("tag_name_pattern" = Option<String>, Query),
    ),
    responses((status = 200, body = DagTagCollection)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn dag_tags(
    State(state): State<AppState>,
    user: ApiUser,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<DagTagCollection>> {
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
    Ok(Json(DagTagCollection {
        total_entries: tags.len(),
        tags: tags.into_iter().skip(offset).take(limit).collect(),
    }))
}
