//! `/api/v2/dags/{dag_id}/dagRuns`: trigger, list, get, mark and delete runs, in Airflow's
//! `DAGRunResponse` shape. Triggering goes through the same store call as `flow dags trigger`
//! and the web UI.

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use flow_model::{DagRunState, DagRunType, Permission};
use flow_store::{DagRunRow, TriggerError, TriggerRequest};
use serde::Deserialize;
use serde_json::{Value, json};

use super::dags::time;
use super::{ApiError, ApiResult, ApiUser, find_run, query_pairs};
use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v2/dags/{dag_id}/dagRuns", get(list).post(trigger))
        .route(
            "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}",
            get(get_one).patch(patch_one).delete(delete_one),
        )
}

/// Airflow 3's `triggered_by` values from what flow records.
fn triggered_by(recorded: Option<&str>) -> (Value, Value) {
    let Some(text) = recorded else {
        return (Value::Null, Value::Null);
    };
    let (kind, user) = text.split_once(':').unwrap_or((text, ""));
    let kind = match kind {
        "ui" => "ui",
        "cli" => "cli",
        "api" | "rest_api" => "rest_api",
        "scheduler" => "timetable",
        "backfill" => "backfill",
        _ => "operator",
    };
    let user = if user.is_empty() {
        Value::Null
    } else {
        Value::String(user.to_owned())
    };
    (Value::String(kind.to_owned()), user)
}

pub fn run_response(r: &DagRunRow) -> Value {
    let (by, user) = triggered_by(r.triggered_by.as_deref());
    let duration = match (r.start_date, r.end_date) {
        (Some(s), Some(e)) => json!((e - s).num_microseconds().unwrap_or(0) as f64 / 1e6),
        _ => Value::Null,
    };
    let run_type = match r.run_type {
        DagRunType::Event => "asset_triggered",
        other => other.as_str(),
    };
    json!({
        "dag_run_id": r.run_id,
        "dag_id": r.dag_id,
        "logical_date": time(r.logical_date),
        "queued_at": time(r.queued_at),
        "start_date": time(r.start_date),
        "end_date": time(r.end_date),
        "duration": duration,
        "data_interval_start": time(r.data_interval_start),
        "data_interval_end": time(r.data_interval_end),
        "run_after": time(Some(r.run_after)),
        "last_scheduling_decision": Value::Null,
        "run_type": run_type,
        "state": r.state.as_str(),
        "triggered_by": by,
        "triggering_user_name": user,
        "conf": r.conf,
        "note": r.note,
        "dag_versions": [],
        "bundle_version": Value::Null,
        "dag_display_name": r.dag_id,
        "partition_key": Value::Null,
    })
}

/// An aware datetime from a request body or query (`Z`, `+00:00` or `+0000`).
pub fn parse_time(loc: &[&str], text: &str) -> ApiResult<DateTime<Utc>> {
    let fixed = if text.len() > 5 && (text.ends_with("+0000") || text.ends_with("-0000")) {
        format!("{}+00:00", &text[..text.len() - 5])
    } else {
        text.to_owned()
    };
    DateTime::parse_from_rfc3339(&fixed)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            ApiError::invalid(
                loc,
                "Input should be a valid datetime with a timezone (e.g. 2025-01-01T00:00:00Z)",
            )
        })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TriggerBody {
    #[serde(default)]
    dag_run_id: Option<String>,
    #[serde(default)]
    logical_date: Option<String>,
    #[serde(default)]
    run_after: Option<String>,
    #[serde(default)]
    data_interval_start: Option<String>,
    #[serde(default)]
    data_interval_end: Option<String>,
    #[serde(default)]
    conf: Option<Value>,
    #[serde(default)]
    note: Option<String>,
    #[serde(default)]
    partition_key: Option<String>,
}

/// `POST .../dagRuns`: 200 with the new run (Airflow's declared code; the python client
/// relies on it), 409 for a duplicate run id.
async fn trigger(
    State(state): State<AppState>,
    user: ApiUser,
    Path(dag_id): Path<String>,
    body: Result<Json<TriggerBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    user.require(Permission::EditDags)?;
    let Json(body) = body.map_err(|e| ApiError::invalid(&["body"], e.body_text()))?;
    let (dag, hash) = super::load_dag(&state, &dag_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("DAG with dag_id: '{dag_id}' not found")))?;
    let logical = body
        .logical_date
        .as_deref()
        .map(|t| parse_time(&["body", "logical_date"], t))
        .transpose()?;
    let run_after = body
        .run_after
        .as_deref()
        .map(|t| parse_time(&["body", "run_after"], t))
        .transpose()?;
    let interval = match (&body.data_interval_start, &body.data_interval_end) {
        (Some(s), Some(e)) => Some((
            parse_time(&["body", "data_interval_start"], s)?,
            parse_time(&["body", "data_interval_end"], e)?,
        )),
        (None, None) => None,
        _ => {
            return Err(ApiError::invalid(
                &["body"],
                "data_interval_start and data_interval_end must be given together",
            ));
        }
    };
    if body.partition_key.is_some() {
        return Err(ApiError::bad_request(
            "partitioned timetables are not supported",
        ));
    }
    let conf = match body.conf {
        None | Some(Value::Null) => json!({}),
        Some(v @ Value::Object(_)) => v,
        Some(_) => {
            return Err(ApiError::invalid(
                &["body", "conf"],
                "Input should be an object",
            ));
        }
    };
    let mut request = TriggerRequest::manual(conf);
    request.run_id = body.dag_run_id.filter(|s| !s.is_empty());
    request.logical_date = logical;
    request.data_interval = interval;
    request.run_after = run_after;
    request.note = body.note;
    request.triggered_by = Some(format!("api:{}", user.username));
    let run = match state
        .store()
        .dag_run_trigger(&dag, &hash, &request, Utc::now())
        .await
    {
        Ok(run) => run,
        Err(TriggerError::Duplicate { dag_id, run_id }) => {
            return Err(ApiError {
                status: StatusCode::CONFLICT,
                detail: json!({
                    "reason": "Unique constraint violation",
                    "statement": "hidden",
                    "orig_error": "hidden",
                    "message": format!("dag run `{run_id}` of dag `{dag_id}` already exists"),
                }),
            });
        }
        Err(TriggerError::Store(e)) => return Err(e.into()),
        Err(e) => return Err(ApiError::bad_request(e.to_string())),
    };
    super::audit(&state, &user, "trigger", Some(&dag_id), Some(&run.run_id)).await;
    Ok(Json(run_response(&run)))
}

async fn list(
    State(state): State<AppState>,
    user: ApiUser,
    Path(dag_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    user.require(Permission::Read)?;
    let pairs = query_pairs(raw.as_deref())?;
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let (limit, offset) = super::paging(&pairs)?;
    let mut states = Vec::new();
    for (_, v) in pairs.iter().filter(|(k, _)| k == "state") {
        states.push(DagRunState::parse(v).map_err(|_| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("Invalid value for state. Valid values are queued, running, success, failed; got `{v}`"),
            )
        })?);
    }
    let store = state.store();
    let mut runs = if dag_id == "~" {
        store.dag_run_list_in_states(&DagRunState::ALL).await?
    } else {
        if store.dag_get(&dag_id).await?.is_none() {
            return Err(ApiError::not_found(format!(
                "The Dag with ID: `{dag_id}` was not found"
            )));
        }
        store.dag_run_list(&dag_id, 100_000).await?
    };
    runs.retain(|r| states.is_empty() || states.contains(&r.state));
    let order = get("order_by").unwrap_or("id");
    let (desc, key) = order
        .strip_prefix('-')
        .map_or((false, order), |k| (true, k));
    match key {
        "id" => runs.sort_by_key(|r| r.id),
        "run_after" => runs.sort_by_key(|r| (r.run_after, r.id)),
        "logical_date" => runs.sort_by_key(|r| (r.logical_date, r.id)),
        "start_date" => runs.sort_by_key(|r| (r.start_date, r.id)),
        "end_date" => runs.sort_by_key(|r| (r.end_date, r.id)),
        "state" => runs.sort_by(|a, b| (a.state.as_str(), a.id).cmp(&(b.state.as_str(), b.id))),
        "dag_id" => runs.sort_by(|a, b| (&a.dag_id, a.id).cmp(&(&b.dag_id, b.id))),
        "run_id" | "dag_run_id" => runs.sort_by(|a, b| (&a.run_id, a.id).cmp(&(&b.run_id, b.id))),
        other => {
            return Err(ApiError::bad_request(format!(
                "Ordering with '{other}' is disallowed or the attribute does not exist on the model"
            )));
        }
    }
    if desc {
        runs.reverse();
    }
    let total = runs.len();
    let page: Vec<Value> = runs
        .iter()
        .skip(offset)
        .take(limit)
        .map(run_response)
        .collect();
    Ok(Json(json!({ "dag_runs": page, "total_entries": total })))
}

async fn get_one(
    State(state): State<AppState>,
    user: ApiUser,
    Path((dag_id, run_id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    user.require(Permission::Read)?;
    Ok(Json(run_response(
        &find_run(&state, &dag_id, &run_id).await?,
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    note: Option<String>,
}

/// `PATCH .../dagRuns/{id}`: mark the run success or failed (its unfinished task instances
/// follow, as in the UI and `flow runs mark`).
async fn patch_one(
    State(state): State<AppState>,
    user: ApiUser,
    Path((dag_id, run_id)): Path<(String, String)>,
    body: Result<Json<PatchBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    user.require(Permission::EditDags)?;
    let Json(body) = body.map_err(|e| ApiError::invalid(&["body"], e.body_text()))?;
    find_run(&state, &dag_id, &run_id).await?;
    if body.note.is_some() {
        return Err(ApiError::bad_request(
            "editing run notes is not supported yet",
        ));
    }
    if let Some(s) = body.state.as_deref() {
        let to = match s {
            "success" => DagRunState::Success,
            "failed" => DagRunState::Failed,
            other => {
                return Err(ApiError::invalid(
                    &["body", "state"],
                    format!("Input should be 'success' or 'failed', got '{other}'"),
                ));
            }
        };
        state
            .store()
            .dag_run_mark(&dag_id, &run_id, to, Utc::now())
            .await?;
        let event = format!("mark run {}", to.as_str());
        super::audit(&state, &user, &event, Some(&dag_id), Some(&run_id)).await;
    }
    Ok(Json(run_response(
        &find_run(&state, &dag_id, &run_id).await?,
    )))
}

async fn delete_one(
    State(state): State<AppState>,
    user: ApiUser,
    Path((dag_id, run_id)): Path<(String, String)>,
) -> ApiResult<Response> {
    user.require(Permission::EditDags)?;
    if !state.store().dag_run_delete(&dag_id, &run_id).await? {
        return Err(ApiError::not_found(format!(
            "The DagRun with dag_id: `{dag_id}` and run_id: `{run_id}` was not found"
        )));
    }
    super::audit(&state, &user, "delete run", Some(&dag_id), Some(&run_id)).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}
