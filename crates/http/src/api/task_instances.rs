//! `/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances`: list, get and mark task
//! instances, in Airflow's `TaskInstanceResponse` shape.

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Json;
use axum::routing::get;
use chrono::Utc;
use flow_dag::Dag;
use flow_model::{Permission, TaskInstanceState};
use flow_store::{DagRunRow, TiKey, TiRow};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::dags::time;
use super::{ApiError, ApiResult, ApiUser, query_pairs};
use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances",
            get(list),
        )
        .route(
            "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}",
            get(get_one).patch(patch_one),
        )
}

/// A stable UUID for a task instance (Airflow's `id` is a UUID; flow keys by name).
fn ti_uuid(key: &TiKey) -> String {
    let digest = Sha256::digest(
        format!(
            "{}\u{0}{}\u{0}{}\u{0}{}",
            key.dag_id, key.run_id, key.task_id, key.map_index
        )
        .as_bytes(),
    );
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0f) | 0x50; // version 5 layout (name-based)
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

fn ti_response(t: &TiRow, run: &DagRunRow) -> Value {
    let state = match t.state {
        TaskInstanceState::NoStatus => Value::Null,
        s => Value::String(s.as_str().to_owned()),
    };
    json!({
        "id": ti_uuid(&t.key),
        "task_id": t.key.task_id,
        "dag_id": t.key.dag_id,
        "dag_run_id": t.key.run_id,
        "map_index": t.key.map_index,
        "logical_date": time(run.logical_date),
        "run_after": time(Some(run.run_after)),
        "start_date": time(t.start_date),
        "end_date": time(t.end_date),
        "duration": t.duration,
        "state": state,
        "try_number": t.try_number,
        "max_tries": t.max_tries,
        "task_display_name": t.key.task_id,
        "dag_display_name": t.key.dag_id,
        "hostname": if t.hostname.is_empty() { Value::Null } else { json!(t.hostname) },
        "unixname": Value::Null,
        "pool": t.pool,
        "pool_slots": t.pool_slots,
        "queue": t.queue,
        "priority_weight": t.priority_weight,
        "operator": t.operator,
        "operator_name": t.operator,
        "queued_when": time(t.queued_dttm),
        "scheduled_when": time(t.scheduled_dttm),
        "pid": Value::Null,
        "executor": Value::Null,
        "executor_config": "{}",
        "note": Value::Null,
        "rendered_map_index": Value::Null,
        "rendered_fields": {},
        "trigger": Value::Null,
        "triggerer_job": Value::Null,
        "dag_version": Value::Null,
    })
}

async fn run_of(state: &AppState, dag_id: &str, run_id: &str) -> ApiResult<DagRunRow> {
    if state.store().dag_get(dag_id).await?.is_none() {
        return Err(ApiError::not_found(format!(
            "The Dag with ID: `{dag_id}` was not found"
        )));
    }
    state
        .store()
        .dag_run_get(dag_id, run_id)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "The DagRun with dag_id: `{dag_id}` and run_id: `{run_id}` was not found"
            ))
        })
}

async fn list(
    State(state): State<AppState>,
    user: ApiUser,
    Path((dag_id, run_id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    user.require(Permission::Read)?;
    let pairs = query_pairs(raw.as_deref())?;
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let limit = super::dags::parse_int("limit", get("limit"), 50)?.min(100);
    let offset = super::dags::parse_int("offset", get("offset"), 0)?;
    let mut states: Vec<TaskInstanceState> = Vec::new();
    for (_, v) in pairs.iter().filter(|(k, _)| k == "state") {
        let s = match v.as_str() {
            "none" | "no_status" => TaskInstanceState::NoStatus,
            other => TaskInstanceState::parse(other).map_err(|_| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("Invalid value for state: `{other}`"),
                )
            })?,
        };
        states.push(s);
    }
    let task_filter = get("task_id");
    let runs: Vec<DagRunRow> = if run_id == "~" {
        if state.store().dag_get(&dag_id).await?.is_none() {
            return Err(ApiError::not_found(format!(
                "The Dag with ID: `{dag_id}` was not found"
            )));
        }
        state.store().dag_run_list(&dag_id, 100_000).await?
    } else {
        vec![run_of(&state, &dag_id, &run_id).await?]
    };
    let mut rows: Vec<(TiRow, &DagRunRow)> = Vec::new();
    for run in &runs {
        for t in state
            .store()
            .ti_list_for_run(&run.dag_id, &run.run_id)
            .await?
        {
            rows.push((t, run));
        }
    }
    rows.retain(|(t, _)| {
        (states.is_empty() || states.contains(&t.state))
            && task_filter.is_none_or(|id| t.key.task_id == id)
    });
    let order = get("order_by").unwrap_or("map_index");
    let (desc, key) = order
        .strip_prefix('-')
        .map_or((false, order), |k| (true, k));
    match key {
        "map_index" | "id" => rows.sort_by(|a, b| {
            (&a.0.key.run_id, a.0.key.map_index, &a.0.key.task_id).cmp(&(
                &b.0.key.run_id,
                b.0.key.map_index,
                &b.0.key.task_id,
            ))
        }),
        "start_date" => rows.sort_by_key(|r| r.0.start_date),
        "end_date" => rows.sort_by_key(|r| r.0.end_date),
        "state" => rows.sort_by(|a, b| a.0.state.as_str().cmp(b.0.state.as_str())),
        "try_number" => rows.sort_by_key(|r| r.0.try_number),
        "duration" => rows.sort_by(|a, b| {
            a.0.duration
                .unwrap_or(0.0)
                .total_cmp(&b.0.duration.unwrap_or(0.0))
        }),
        other => {
            return Err(ApiError::bad_request(format!(
                "Ordering with '{other}' is disallowed or the attribute does not exist on the model"
            )));
        }
    }
    if desc {
        rows.reverse();
    }
    let total = rows.len();
    let page: Vec<Value> = rows
        .iter()
        .skip(usize::try_from(offset).unwrap_or(usize::MAX))
        .take(usize::try_from(limit).unwrap_or(0))
        .map(|(t, r)| ti_response(t, r))
        .collect();
    Ok(Json(
        json!({ "task_instances": page, "total_entries": total }),
    ))
}

async fn find(
    state: &AppState,
    dag_id: &str,
    run_id: &str,
    task_id: &str,
) -> ApiResult<(TiRow, DagRunRow)> {
    let run = run_of(state, dag_id, run_id).await?;
    let key = TiKey::new(dag_id, run_id, task_id, -1);
    let ti = state.store().ti_get(&key).await?.ok_or_else(|| {
        ApiError::not_found(format!(
            "The Task Instance with dag_id: `{dag_id}`, run_id: `{run_id}`, task_id: `{task_id}` and map_index: `-1` was not found"
        ))
    })?;
    Ok((ti, run))
}

async fn get_one(
    State(state): State<AppState>,
    user: ApiUser,
    Path((dag_id, run_id, task_id)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    user.require(Permission::Read)?;
    let (ti, run) = find(&state, &dag_id, &run_id, &task_id).await?;
    Ok(Json(ti_response(&ti, &run)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    new_state: Option<String>,
    #[serde(default)]
    note: Option<String>,
    #[serde(default)]
    include_upstream: bool,
    #[serde(default)]
    include_downstream: bool,
    #[serde(default)]
    include_future: bool,
    #[serde(default)]
    include_past: bool,
}

/// `PATCH .../taskInstances/{task_id}`: mark success, failed or skipped (with upstream or
/// downstream). Answers with the task instances it changed; 409 when it changed none.
async fn patch_one(
    State(state): State<AppState>,
    user: ApiUser,
    Path((dag_id, run_id, task_id)): Path<(String, String, String)>,
    body: Result<Json<PatchBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    user.require(Permission::EditDags)?;
    let Json(body) = body.map_err(|e| ApiError::invalid(&["body"], e.body_text()))?;
    let (ti, run) = find(&state, &dag_id, &run_id, &task_id).await?;
    if body.note.is_some() || body.include_future || body.include_past {
        return Err(ApiError::bad_request(
            "notes and include_future/include_past are not supported yet",
        ));
    }
    let to = match body
        .new_state
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("success") => TaskInstanceState::Success,
        Some("failed") => TaskInstanceState::Failed,
        Some("skipped") => TaskInstanceState::Skipped,
        _ => {
            return Err(ApiError::invalid(
                &["body", "new_state"],
                "Input should be 'success', 'failed' or 'skipped'",
            ));
        }
    };
    let (data, _) = state
        .store()
        .serialized_dag_get(&dag_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("The Dag with ID: `{dag_id}` was not found")))?;
    let dag = Dag::from_json(&data)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let selected = dag.with_relatives(
        [ti.key.task_id.clone()],
        body.include_downstream,
        body.include_upstream,
    );
    let keys: Vec<TiKey> = selected
        .iter()
        .map(|t| TiKey::new(dag_id.as_str(), run_id.as_str(), t.as_str(), -1))
        .collect();
    let marked = state.store().ti_mark(&keys, to, Utc::now()).await?;
    if marked.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("Task id {task_id} is already in {} state", ti.state),
        ));
    }
    let event = format!("mark {}", to.as_str());
    super::audit(&state, &user, &event, Some(&dag_id), Some(&run_id)).await;
    let mut out = Vec::new();
    for key in &marked {
        if let Some(t) = state.store().ti_get(key).await? {
            out.push(ti_response(&t, &run));
        }
    }
    Ok(Json(
        json!({ "task_instances": out, "total_entries": out.len() }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_version_5_uuids() {
        let k = TiKey::new("d", "r", "t", -1);
        let id = ti_uuid(&k);
        assert_eq!(id, ti_uuid(&k));
        assert_ne!(id, ti_uuid(&TiKey::new("d", "r", "u", -1)));
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('5'));
        assert!(matches!(&parts[3][..1], "8" | "9" | "a" | "b"));
    }
}
