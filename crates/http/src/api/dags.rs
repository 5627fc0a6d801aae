//! `/api/v2/dags`: list, get and pause DAGs, in Airflow's `DAGResponse` shape.

use axum::Router;
use axum::extract::{Path, State};
use axum::response::Json;
use axum::routing::get;
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use flow_model::Permission;
use flow_store::DagRow;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiResult, ApiUser};
use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v2/dags", get(list))
        .route("/api/v2/dags/{dag_id}", get(get_one).patch(patch_one))
}

/// Airflow's datetime form: ISO 8601, UTC as `Z`.
pub fn time(t: Option<DateTime<Utc>>) -> Value {
    t.map_or(Value::Null, |t| {
        Value::String(t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    })
}

fn dag_response(d: &DagRow, has_import_errors: bool) -> Value {
    let owners: Vec<&str> = d
        .owners
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .collect();
    let periodic = !matches!(
        d.schedule.as_str(),
        "None" | "none" | "" | "@once" | "@continuous"
    );
    json!({
        "dag_id": d.dag_id,
        "dag_display_name": d.dag_id,
        "is_paused": d.is_paused,
        "is_stale": !d.is_active,
        "last_parsed_time": time(Some(d.last_parsed_time)),
        "last_parse_duration": Value::Null,
        "last_expired": Value::Null,
        "bundle_name": "dags-folder",
        "bundle_version": Value::Null,
        "relative_fileloc": d.relative_fileloc,
        "fileloc": d.fileloc,
        "description": d.description,
        "timetable_summary": d.timetable_summary,
        "timetable_description": d.timetable_summary,
        "timetable_partitioned": false,
        // Client 3.3 requires these: cron and interval schedules are periodic and backfillable.
        "timetable_periodic": periodic,
        "is_backfillable": periodic,
        "tags": d.tags.iter().map(|t| json!({
            "name": t, "dag_id": d.dag_id, "dag_display_name": d.dag_id,
        })).collect::<Vec<_>>(),
        "max_active_tasks": d.max_active_tasks,
        "max_active_runs": d.max_active_runs,
        "max_consecutive_failed_dag_runs": 0,
        "has_task_concurrency_limits": false,
        "has_import_errors": has_import_errors,
        "next_dagrun_logical_date": time(d.next_dagrun),
        "next_dagrun_data_interval_start": time(d.next_dagrun_data_interval_start),
        "next_dagrun_data_interval_end": time(d.next_dagrun_data_interval_end),
        "next_dagrun_run_after": time(d.next_dagrun_create_after),
        "owners": owners,
        "allowed_run_types": Value::Null,
        "file_token": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&d.relative_fileloc),
    })
}

/// Query parameters of `GET /dags` that flow supports (others are accepted and ignored).
#[derive(Default)]
struct ListQuery {
    limit: Option<String>,
    offset: Option<String>,
    dag_id_pattern: Option<String>,
    paused: Option<String>,
    tags: Vec<String>,
    order_by: Option<String>,
    exclude_stale: Option<String>,
}

pub fn parse_int(name: &str, value: Option<&str>, default: i64) -> ApiResult<i64> {
    match value {
        None => Ok(default),
        Some(v) => v.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            ApiError::invalid(
                &["query", name],
                "Input should be a valid non-negative integer",
            )
        }),
    }
}

fn parse_bool(name: &str, value: Option<&str>) -> ApiResult<Option<bool>> {
    match value.map(str::to_ascii_lowercase).as_deref() {
        None => Ok(None),
        Some("true" | "1" | "yes") => Ok(Some(true)),
        Some("false" | "0" | "no") => Ok(Some(false)),
        Some(_) => Err(ApiError::invalid(
            &["query", name],
            "Input should be a valid boolean",
        )),
    }
}

/// SQL-LIKE-style pattern as Airflow uses (`%` and `_` wildcards, case-insensitive, substring
/// by default); `~` matches everything.
fn matches_pattern(pattern: &str, text: &str) -> bool {
    if pattern == "~" || pattern.is_empty() {
        return true;
    }
    let p = pattern.to_lowercase();
    let t = text.to_lowercase();
    if !p.contains('%') && !p.contains('_') {
        return t.contains(&p);
    }
    like(p.as_bytes(), t.as_bytes())
}

fn like(p: &[u8], t: &[u8]) -> bool {
    match p.first() {
        None => t.is_empty(),
        Some(b'%') => (0..=t.len()).any(|i| like(&p[1..], &t[i..])),
        Some(b'_') => !t.is_empty() && like(&p[1..], &t[1..]),
        Some(c) => t.first() == Some(c) && like(&p[1..], &t[1..]),
    }
}

async fn list(
    State(state): State<AppState>,
    user: ApiUser,
    axum_extra_query: axum::extract::RawQuery,
) -> ApiResult<Json<Value>> {
    user.require(Permission::Read)?;
    let q = parse_list_query(axum_extra_query.0.as_deref())?;
    let limit = parse_int("limit", q.limit.as_deref(), 50)?.min(100);
    let offset = parse_int("offset", q.offset.as_deref(), 0)?;
    let paused = parse_bool("paused", q.paused.as_deref())?;
    let exclude_stale = parse_bool("exclude_stale", q.exclude_stale.as_deref())?.unwrap_or(true);
    let store = state.store();
    let errors: std::collections::HashSet<String> = store
        .import_errors()
        .await?
        .into_iter()
        .map(|e| e.filename)
        .collect();
    let mut dags: Vec<DagRow> = store
        .dag_list()
        .await?
        .into_iter()
        .filter(|d| !exclude_stale || d.is_active)
        .filter(|d| {
            q.dag_id_pattern
                .as_deref()
                .is_none_or(|p| matches_pattern(p, &d.dag_id))
        })
        .filter(|d| paused.is_none_or(|p| d.is_paused == p))
        .filter(|d| q.tags.is_empty() || q.tags.iter().any(|t| d.tags.contains(t)))
        .collect();
    match q.order_by.as_deref().unwrap_or("dag_id") {
        "dag_id" | "dag_display_name" => dags.sort_by(|a, b| a.dag_id.cmp(&b.dag_id)),
        "-dag_id" | "-dag_display_name" => dags.sort_by(|a, b| b.dag_id.cmp(&a.dag_id)),
        "next_dagrun" => dags.sort_by_key(|d| d.next_dagrun),
        "-next_dagrun" => dags.sort_by_key(|d| std::cmp::Reverse(d.next_dagrun)),
        other => {
            return Err(ApiError::bad_request(format!(
                "Ordering with '{other}' is disallowed or the attribute does not exist on the model"
            )));
        }
    }
    let total = dags.len();
    let page: Vec<Value> = dags
        .iter()
        .skip(usize::try_from(offset).unwrap_or(usize::MAX))
        .take(usize::try_from(limit).unwrap_or(0))
        .map(|d| dag_response(d, errors.contains(&d.fileloc)))
        .collect();
    Ok(Json(json!({ "dags": page, "total_entries": total })))
}

fn parse_list_query(raw: Option<&str>) -> ApiResult<ListQuery> {
    let mut q = ListQuery::default();
    for (k, v) in super::query_pairs(raw)? {
        match k.as_str() {
            "limit" => q.limit = Some(v),
            "offset" => q.offset = Some(v),
            "dag_id_pattern" => q.dag_id_pattern = Some(v),
            "paused" => q.paused = Some(v),
            "tags" => q.tags.push(v),
            "order_by" => q.order_by = Some(v),
            "exclude_stale" => q.exclude_stale = Some(v),
            _ => {}
        }
    }
    Ok(q)
}

async fn get_one(
    State(state): State<AppState>,
    user: ApiUser,
    Path(dag_id): Path<String>,
) -> ApiResult<Json<Value>> {
    user.require(Permission::Read)?;
    one(&state, &dag_id).await.map(Json)
}

async fn one(state: &AppState, dag_id: &str) -> ApiResult<Value> {
    let store = state.store();
    let d = store
        .dag_get(dag_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("The Dag with ID: `{dag_id}` was not found")))?;
    let has_errors = store
        .import_errors()
        .await?
        .iter()
        .any(|e| e.filename == d.fileloc);
    Ok(dag_response(&d, has_errors))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    is_paused: bool,
}

async fn patch_one(
    State(state): State<AppState>,
    user: ApiUser,
    Path(dag_id): Path<String>,
    body: Result<Json<PatchBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    user.require(Permission::EditDags)?;
    let Json(body) = body.map_err(|e| ApiError::invalid(&["body"], e.body_text()))?;
    if !state
        .store()
        .dag_set_paused(&dag_id, body.is_paused)
        .await?
    {
        return Err(ApiError::not_found(format!(
            "Dag with id: {dag_id} was not found"
        )));
    }
    let event = if body.is_paused { "paused" } else { "unpaused" };
    super::audit(&state, &user, event, Some(&dag_id), None).await;
    one(&state, &dag_id).await.map(Json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_as_airflow_matches_them() {
        assert!(matches_pattern("~", "anything"));
        assert!(matches_pattern("etl", "daily_ETL_job"));
        assert!(matches_pattern("etl%", "etl_daily"));
        assert!(!matches_pattern("etl%", "daily_etl"));
        assert!(matches_pattern("e_l", "etl"));
    }
}
