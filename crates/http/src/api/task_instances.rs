//! `/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances`: list, get and mark task
//! instances, in Airflow's `TaskInstanceResponse` shape.

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Json;
use axum::routing::get;
use chrono::Utc;
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
        .route(
            "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/logs/{try_number}",
            get(logs),
        )
        .route(
            "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/xcomEntries",
            get(xcom_list),
        )
        .route(
            "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/xcomEntries/{xcom_key}",
            get(xcom_get),
        )
        .route(
            "/api/v2/dags/{dag_id}/clearTaskInstances",
            axum::routing::post(clear),
        )
}

/// Lines per log response; the continuation token (the last line's position) fetches more.
const LOG_CHUNK: i64 = 10_000;

/// `GET .../logs/{try_number}`: JSON `{"content": [{"timestamp", "event", ...}],
/// "continuation_token"}`, or NDJSON with the token in `Airflow-Continuation-Token`.
async fn logs(
    State(state): State<AppState>,
    user: ApiUser,
    Path((dag_id, run_id, task_id, try_number)): Path<(String, String, String, String)>,
    headers: axum::http::HeaderMap,
    RawQuery(raw): RawQuery,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse as _;
    user.require(Permission::Read)?;
    let try_number: i64 = try_number.parse().ok().filter(|n| *n >= 0).ok_or_else(|| {
        ApiError::invalid(&["path", "try_number"], "Input should be a valid integer")
    })?;
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("*/*");
    let ndjson = accept.starts_with("application/x-ndjson");
    if !(ndjson || accept.starts_with("application/json") || accept.starts_with("*/*")) {
        return Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "Only application/json or application/x-ndjson is supported",
        ));
    }
    let (ti, _) = find(&state, &dag_id, &run_id, &task_id).await?;
    if try_number > ti.try_number.max(1) {
        return Err(ApiError::not_found("TaskInstance not found"));
    }
    let pairs = query_pairs(raw.as_deref())?;
    let after = match pairs.iter().find(|(k, _)| k == "token") {
        Some((_, t)) => t.parse::<i64>().map_err(|_| {
            ApiError::bad_request("Bad Signature. Please use only the tokens provided by the API.")
        })?,
        None => 0,
    };
    let full = pairs
        .iter()
        .any(|(k, v)| k == "full_content" && v == "true");
    let limit = if full { i64::MAX / 2 } else { LOG_CHUNK };
    let page = state
        .store()
        .log_read(&ti.key, try_number, after, limit)
        .await?;
    let content: Vec<Value> = page
        .lines
        .iter()
        .map(|l| {
            json!({
                "timestamp": time(Some(l.at)),
                "event": l.line,
                "stream": l.stream,
            })
        })
        .collect();
    // A token while more may come: the try still runs, or this page was full.
    let running = matches!(
        ti.state,
        TaskInstanceState::Running | TaskInstanceState::Queued | TaskInstanceState::Scheduled
    ) && try_number == ti.try_number;
    let more = running || content.len() as i64 >= limit;
    let token = if more {
        Value::String(page.next.max(after).to_string())
    } else {
        Value::Null
    };
    if ndjson {
        let mut body = String::new();
        for c in &content {
            body.push_str(&c.to_string());
            body.push('\n');
        }
        let mut response = body.into_response();
        let h = response.headers_mut();
        h.insert(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/x-ndjson"),
        );
        if let Value::String(t) = &token
            && let Ok(v) = axum::http::HeaderValue::from_str(t)
        {
            h.insert("Airflow-Continuation-Token", v);
        }
        return Ok(response);
    }
    Ok(Json(json!({ "content": content, "continuation_token": token })).into_response())
}

fn xcom_json(x: &flow_store::XcomRow, dag_id: &str, run: &DagRunRow) -> Value {
    json!({
        "key": x.key,
        "timestamp": time(Some(x.timestamp)),
        "logical_date": time(run.logical_date),
        "map_index": x.map_index,
        "task_id": x.task_id,
        "dag_id": dag_id,
        "run_id": run.run_id,
        "dag_display_name": dag_id,
        "task_display_name": x.task_id,
        "run_after": time(Some(run.run_after)),
    })
}

async fn xcom_list(
    State(state): State<AppState>,
    user: ApiUser,
    Path((dag_id, run_id, task_id)): Path<(String, String, String)>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    user.require(Permission::Read)?;
    let run = run_of(&state, &dag_id, &run_id).await?;
    let pairs = query_pairs(raw.as_deref())?;
    let key_filter = pairs
        .iter()
        .find(|(k, _)| k == "xcom_key")
        .map(|(_, v)| v.clone());
    let mut rows: Vec<_> = state
        .store()
        .xcom_list_for_run(&dag_id, &run_id)
        .await?
        .into_iter()
        .filter(|x| task_id == "~" || x.task_id == task_id)
        .filter(|x| key_filter.as_deref().is_none_or(|k| x.key == k))
        .collect();
    rows.sort_by(|a, b| (&a.task_id, a.map_index, &a.key).cmp(&(&b.task_id, b.map_index, &b.key)));
    let items: Vec<Value> = rows.iter().map(|x| xcom_json(x, &dag_id, &run)).collect();
    Ok(Json(
        json!({ "xcom_entries": items, "total_entries": rows.len() }),
    ))
}

async fn xcom_get(
    State(state): State<AppState>,
    user: ApiUser,
    Path((dag_id, run_id, task_id, key)): Path<(String, String, String, String)>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    user.require(Permission::Read)?;
    let run = run_of(&state, &dag_id, &run_id).await?;
    let pairs = query_pairs(raw.as_deref())?;
    let map_index = match pairs.iter().find(|(k, _)| k == "map_index") {
        None => -1,
        Some((_, v)) => v.parse::<i64>().map_err(|_| {
            ApiError::invalid(&["query", "map_index"], "Input should be a valid integer")
        })?,
    };
    let stringify = pairs.iter().any(|(k, v)| k == "stringify" && v == "true");
    let x = state
        .store()
        .xcom_list_for_run(&dag_id, &run_id)
        .await?
        .into_iter()
        .find(|x| x.task_id == task_id && x.key == key && x.map_index == map_index)
        .ok_or_else(|| ApiError::not_found(format!("XCom entry with key: `{key}` not found")))?;
    let mut out = xcom_json(&x, &dag_id, &run);
    out["value"] = if stringify {
        Value::String(match &x.value {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        })
    } else {
        x.value.clone()
    };
    Ok(Json(out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClearBody {
    #[serde(default = "yes")]
    dry_run: bool,
    #[serde(default)]
    dag_run_id: Option<String>,
    #[serde(default = "yes")]
    only_failed: bool,
    #[serde(default)]
    only_running: bool,
    #[serde(default)]
    task_ids: Option<Vec<Value>>,
    #[serde(default)]
    include_upstream: bool,
    #[serde(default)]
    include_downstream: bool,
    #[serde(default = "yes")]
    reset_dag_runs: bool,
    #[serde(default)]
    start_date: Option<String>,
    #[serde(default)]
    end_date: Option<String>,
    #[serde(default)]
    include_future: bool,
    #[serde(default)]
    include_past: bool,
    #[serde(default)]
    prevent_running_task: bool,
    #[serde(default)]
    run_on_latest_version: bool,
}

fn yes() -> bool {
    true
}

/// `POST /dags/{dag_id}/clearTaskInstances`: the task instances selected (dry run, Airflow's
/// default) or cleared so that they run again.
async fn clear(
    State(state): State<AppState>,
    user: ApiUser,
    Path(dag_id): Path<String>,
    body: Result<Json<ClearBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    user.require(Permission::EditDags)?;
    let Json(body) = body.map_err(|e| ApiError::invalid(&["body"], e.body_text()))?;
    if body.only_failed && body.only_running {
        return Err(ApiError::invalid(
            &["body"],
            "only_failed and only_running cannot both be true",
        ));
    }
    if body.include_future
        || body.include_past
        || body.run_on_latest_version
        || !body.reset_dag_runs
    {
        return Err(ApiError::bad_request(
            "include_future, include_past, run_on_latest_version and reset_dag_runs=false are not supported yet",
        ));
    }
    let (dag, _) = super::load_dag(&state, &dag_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("The Dag with ID: `{dag_id}` was not found")))?;
    let start = body
        .start_date
        .as_deref()
        .map(|t| super::dag_runs::parse_time(&["body", "start_date"], t))
        .transpose()?;
    let end = body
        .end_date
        .as_deref()
        .map(|t| super::dag_runs::parse_time(&["body", "end_date"], t))
        .transpose()?;
    let runs: Vec<DagRunRow> = match &body.dag_run_id {
        Some(id) => vec![run_of(&state, &dag_id, id).await?],
        None => state
            .store()
            .dag_run_list(&dag_id, 100_000)
            .await?
            .into_iter()
            .filter(|r| {
                let when = r.logical_date.unwrap_or(r.run_after);
                start.is_none_or(|s| when >= s) && end.is_none_or(|e| when <= e)
            })
            .collect(),
    };
    let wanted: Vec<String> = match &body.task_ids {
        None => dag.tasks.iter().map(|t| t.task_id.to_string()).collect(),
        Some(ids) => ids
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                Value::Array(pair) => pair
                    .first()
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        ApiError::invalid(
                            &["body", "task_ids"],
                            "expected a task id or [task_id, map_index]",
                        )
                    }),
                _ => Err(ApiError::invalid(
                    &["body", "task_ids"],
                    "expected a task id or [task_id, map_index]",
                )),
            })
            .collect::<ApiResult<_>>()?,
    };
    let selected = dag.with_relatives(wanted, body.include_downstream, body.include_upstream);
    let mut chosen: Vec<(TiRow, DagRunRow)> = Vec::new();
    for run in &runs {
        for t in state.store().ti_list_for_run(&dag_id, &run.run_id).await? {
            let keep = selected.contains(&t.key.task_id)
                && !matches!(
                    t.state,
                    TaskInstanceState::NoStatus | TaskInstanceState::Removed
                )
                && (!body.only_failed
                    || matches!(
                        t.state,
                        TaskInstanceState::Failed | TaskInstanceState::UpstreamFailed
                    ))
                && (!body.only_running || t.state == TaskInstanceState::Running);
            if keep {
                chosen.push((t, run.clone()));
            }
        }
    }
    if body.prevent_running_task
        && chosen
            .iter()
            .any(|(t, _)| t.state == TaskInstanceState::Running)
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "Task instances are running; set prevent_running_task to false to clear them",
        ));
    }
    if !body.dry_run && !chosen.is_empty() {
        let keys: Vec<(TiKey, i64)> = chosen
            .iter()
            .map(|(t, _)| {
                let retries = dag
                    .task(&t.key.task_id)
                    .map_or(0, |task| i64::from(task.retries));
                (t.key.clone(), retries)
            })
            .collect();
        state.store().ti_clear(&keys, Utc::now()).await?;
        super::audit(
            &state,
            &user,
            "clear",
            Some(&dag_id),
            body.dag_run_id.as_deref(),
        )
        .await;
    }
    let items: Vec<Value> = chosen.iter().map(|(t, r)| ti_response(t, r)).collect();
    Ok(Json(
        json!({ "task_instances": items, "total_entries": items.len() }),
    ))
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
    super::find_run(state, dag_id, run_id).await
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
    let (limit, offset) = super::paging(&pairs)?;
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
        .skip(offset)
        .take(limit)
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
    let (dag, _) = super::load_dag(&state, &dag_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("The Dag with ID: `{dag_id}` was not found")))?;
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
