//! `/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances`: list, get and mark task
//! instances, in Airflow's `TaskInstanceResponse` shape.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Json;
use chrono::Utc;
use flow_model::{Permission, TaskInstanceState};
use flow_store::{DagRunRow, TiKey, TiRow, TiTryRow};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::dags::time;
use super::schema::{
    ErrorBody, LogMessage, LogResponse, TaskInstanceCollection, TaskInstanceHistory,
    TaskInstanceHistoryCollection, TaskInstanceResponse, XcomCollection, XcomEntry, XcomValue,
};
use super::{ApiError, ApiResult, ApiUser, Body, query_pairs, read_body};
use crate::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(list_batch))
        .routes(routes!(get_one, patch_one))
        .routes(routes!(get_mapped, patch_mapped))
        .routes(routes!(list_mapped))
        .routes(routes!(tries))
        .routes(routes!(try_one))
        .routes(routes!(mapped_tries))
        .routes(routes!(mapped_try_one))
        .routes(routes!(logs))
        .routes(routes!(xcom_get, xcom_patch, xcom_delete))
        .routes(routes!(xcom_list, xcom_create))
        .routes(routes!(clear))
        .routes(routes!(patch_group))
        .routes(routes!(patch_group_dry_run))
}

/// Lines per log response; the continuation token (the last line's position) fetches more.
const LOG_CHUNK: i64 = 10_000;

/// `GET .../logs/{try_number}`: JSON `{"content": [{"timestamp", "event", ...}],
/// "continuation_token"}`, or NDJSON with the token in `Airflow-Continuation-Token`.
#[utoipa::path(get, path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/logs/{try_number}", tag = "Task Instance",
    summary = "Read a try's log: JSON, NDJSON (`Accept: application/x-ndjson`) or plain text (`Accept: text/plain`); the continuation token is in the body or the `Airflow-Continuation-Token` header",
    params(
        ("dag_id" = String, Path), ("dag_run_id" = String, Path), ("task_id" = String, Path),
        ("try_number" = i64, Path, minimum = 0),
        ("full_content" = Option<bool>, Query, description = "Every line at once instead of pages of 10,000"),
        ("token" = Option<String>, Query, description = "The continuation token of the previous page"),
        ("map_index" = Option<i64>, Query),
    ),
    responses(
        (status = 200, description = "Log lines", content(
            (LogResponse = "application/json"),
            (String = "application/x-ndjson"),
            (String = "text/plain"),
        )),
        (status = 406, description = "None of JSON, NDJSON or plain text was acceptable", body = ErrorBody),
    ),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
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
    // Plain text is what Airflow 2's API served and what `curl` users want; Airflow 3
    // answers it with 406, flow keeps it.
    let plain = accept.starts_with("text/plain");
    if !(ndjson || plain || accept.starts_with("application/json") || accept.starts_with("*/*")) {
        return Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "Only application/json, application/x-ndjson or text/plain is supported",
        ));
    }
    let pairs = query_pairs(raw.as_deref())?;
    let (ti, _) = find(&state, &dag_id, &run_id, &task_id, map_index_query(&pairs)?).await?;
    if try_number > ti.try_number.max(1) {
        return Err(ApiError::not_found("TaskInstance not found"));
    }
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
    let content: Vec<LogMessage> = page
        .lines
        .iter()
        .map(|l| LogMessage {
            timestamp: time(Some(l.at)),
            event: l.line.clone(),
            stream: l.stream.clone(),
        })
        .collect();
    // A token while more may come: the try still runs, or this page was full.
    let running = matches!(
        ti.state,
        TaskInstanceState::Running | TaskInstanceState::Queued | TaskInstanceState::Scheduled
    ) && try_number == ti.try_number;
    let more = running || content.len() as i64 >= limit;
    let token = more.then(|| page.next.max(after).to_string());
    if ndjson || plain {
        let mut body = String::new();
        for c in &content {
            if plain {
                body.push_str(&c.event);
            } else {
                body.push_str(&serde_json::to_string(c).unwrap_or_default());
            }
            body.push('\n');
        }
        let mut response = body.into_response();
        let h = response.headers_mut();
        h.insert(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static(if plain {
                "text/plain; charset=utf-8"
            } else {
                "application/x-ndjson"
            }),
        );
        if let Some(t) = &token
            && let Ok(v) = axum::http::HeaderValue::from_str(t)
        {
            h.insert("Airflow-Continuation-Token", v);
        }
        return Ok(response);
    }
    Ok(Json(LogResponse {
        content,
        continuation_token: token,
    })
    .into_response())
}

fn xcom_entry(x: &flow_store::XcomRow, dag_id: &str, run: &DagRunRow) -> XcomEntry {
    XcomEntry {
        key: x.key.clone(),
        timestamp: time(Some(x.timestamp)),
        logical_date: time(run.logical_date),
        map_index: x.map_index,
        task_id: x.task_id.clone(),
        dag_id: dag_id.to_owned(),
        run_id: run.run_id.clone(),
        dag_display_name: dag_id.to_owned(),
        task_display_name: x.task_id.clone(),
        run_after: time(Some(run.run_after)),
    }
}

#[utoipa::path(get, path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/xcomEntries", tag = "XCom",
    summary = "List a task instance's XComs (`~` for every task of the run)",
    params(
        ("dag_id" = String, Path), ("dag_run_id" = String, Path),
        ("task_id" = String, Path, description = "A task id, or `~` for all"),
        ("xcom_key" = Option<String>, Query),
        ("limit" = Option<i64>, Query, minimum = 0),
        ("offset" = Option<i64>, Query, minimum = 0),
    ),
    responses((status = 200, body = XcomCollection)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn xcom_list(
    State(state): State<AppState>,
    user: ApiUser,
    Path((dag_id, run_id, task_id)): Path<(String, String, String)>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<XcomCollection>> {
    user.require(Permission::Read)?;
    let run = run_of(&state, &dag_id, &run_id).await?;
    let pairs = query_pairs(raw.as_deref())?;
    let (limit, offset) = super::paging(&pairs)?;
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
    Ok(Json(XcomCollection {
        xcom_entries: rows
            .iter()
            .skip(offset)
            .take(limit)
            .map(|x| xcom_entry(x, &dag_id, &run))
            .collect(),
        total_entries: rows.len(),
    }))
}

#[utoipa::path(get, path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/xcomEntries/{xcom_key}", tag = "XCom",
    summary = "Get an XCom with its value",
    params(
        ("dag_id" = String, Path), ("dag_run_id" = String, Path), ("task_id" = String, Path),
        ("xcom_key" = String, Path),
        ("map_index" = Option<i64>, Query),
        ("stringify" = Option<bool>, Query, description = "The value as a string"),
        ("deserialize" = Option<bool>, Query),
    ),
    responses((status = 200, body = XcomValue)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn xcom_get(
    State(state): State<AppState>,
    user: ApiUser,
    Path((dag_id, run_id, task_id, key)): Path<(String, String, String, String)>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<XcomValue>> {
    user.require(Permission::Read)?;
    let run = run_of(&state, &dag_id, &run_id).await?;
    let pairs = query_pairs(raw.as_deref())?;
    let map_index = map_index_query(&pairs)?;
    let stringify = pairs.iter().any(|(k, v)| k == "stringify" && v == "true");
    let x = state
        .store()
        .xcom_list_for_run(&dag_id, &run_id)
        .await?
        .into_iter()
        .find(|x| x.task_id == task_id && x.key == key && x.map_index == map_index)
        .ok_or_else(|| ApiError::not_found(format!("XCom entry with key: `{key}` not found")))?;
    let value = if stringify {
        Value::String(match &x.value {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        })
    } else {
        x.value.clone()
    };
    Ok(Json(XcomValue {
        entry: xcom_entry(&x, &dag_id, &run),
        value,
    }))
}

/// Airflow's `XComCreateBody`.
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = XComCreateBody)]
#[serde(deny_unknown_fields)]
struct XcomCreateBody {
    key: String,
    #[schema(value_type = Object)]
    value: Value,
    #[serde(default = "unmapped")]
    map_index: i64,
}

/// Airflow's `XComUpdateBody`.
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = XComUpdateBody)]
#[serde(deny_unknown_fields)]
struct XcomUpdateBody {
    #[schema(value_type = Object)]
    value: Value,
    #[serde(default = "unmapped")]
    map_index: i64,
}

fn unmapped() -> i64 {
    -1
}

/// The task instance an XCom write names, or Airflow's 404.
async fn xcom_owner(
    state: &AppState,
    dag_id: &str,
    run_id: &str,
    task_id: &str,
    map_index: i64,
) -> ApiResult<(TiKey, DagRunRow)> {
    let run = run_of(state, dag_id, run_id).await?;
    let exists = state
        .store()
        .ti_list_for_run(dag_id, run_id)
        .await?
        .iter()
        .any(|t| t.key.task_id == task_id && t.key.map_index == map_index);
    if !exists {
        return Err(ApiError::not_found(format!(
            "Task Instance not found for dag_id={dag_id}, run_id={run_id}, task_id={task_id}, map_index={map_index}"
        )));
    }
    Ok((TiKey::new(dag_id, run_id, task_id, map_index), run))
}

/// The stored XCom, read back for the response.
async fn xcom_read_back(
    state: &AppState,
    ti: &TiKey,
    key: &str,
    run: &DagRunRow,
) -> ApiResult<XcomValue> {
    let x = state
        .store()
        .xcom_list_for_run(&ti.dag_id, &ti.run_id)
        .await?
        .into_iter()
        .find(|x| x.task_id == ti.task_id && x.key == key && x.map_index == ti.map_index)
        .ok_or_else(|| ApiError::not_found(format!("XCom entry with key: `{key}` not found")))?;
    Ok(XcomValue {
        entry: xcom_entry(&x, &ti.dag_id, run),
        value: x.value.clone(),
    })
}

/// Whether an XCom exists.
async fn xcom_exists(state: &AppState, ti: &TiKey, key: &str) -> ApiResult<bool> {
    Ok(state
        .store()
        .xcom_list_for_run(&ti.dag_id, &ti.run_id)
        .await?
        .iter()
        .any(|x| x.task_id == ti.task_id && x.key == key && x.map_index == ti.map_index))
}

/// `POST .../xcomEntries`: a new XCom on a task instance (409 if the key exists).
#[utoipa::path(post, path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/xcomEntries", tag = "XCom",
    summary = "Create an XCom",
    params(("dag_id" = String, Path), ("dag_run_id" = String, Path), ("task_id" = String, Path)),
    request_body = XcomCreateBody,
    responses((status = 201, body = XcomValue)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn xcom_create(
    State(state): State<AppState>,
    user: ApiUser,
    Path((dag_id, run_id, task_id)): Path<(String, String, String)>,
    body: Body<XcomCreateBody>,
) -> ApiResult<(StatusCode, Json<XcomValue>)> {
    user.require(Permission::EditDags)?;
    let body = read_body(body)?;
    if body.key.trim().is_empty() || body.key.len() > 512 {
        return Err(ApiError::invalid(&["body", "key"], "1 to 512 characters"));
    }
    let (ti, run) = xcom_owner(&state, &dag_id, &run_id, &task_id, body.map_index).await?;
    if xcom_exists(&state, &ti, &body.key).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "The XCom with key: `{}` with mapped index: {} already exist.",
                body.key, body.map_index
            ),
        ));
    }
    state
        .store()
        .xcom_push(&ti, &body.key, &body.value, Utc::now())
        .await?;
    super::audit(&state, &user, "xcom_create", Some(&dag_id), Some(&run_id)).await;
    Ok((
        StatusCode::CREATED,
        Json(xcom_read_back(&state, &ti, &body.key, &run).await?),
    ))
}

/// `PATCH .../xcomEntries/{xcom_key}`: a new value for an existing XCom.
#[utoipa::path(patch, path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/xcomEntries/{xcom_key}", tag = "XCom",
    summary = "Update an XCom",
    params(("dag_id" = String, Path), ("dag_run_id" = String, Path), ("task_id" = String, Path), ("xcom_key" = String, Path)),
    request_body = XcomUpdateBody,
    responses((status = 200, body = XcomValue)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn xcom_patch(
    State(state): State<AppState>,
    user: ApiUser,
    Path((dag_id, run_id, task_id, key)): Path<(String, String, String, String)>,
    body: Body<XcomUpdateBody>,
) -> ApiResult<Json<XcomValue>> {
    user.require(Permission::EditDags)?;
    let body = read_body(body)?;
    let (ti, run) = xcom_owner(&state, &dag_id, &run_id, &task_id, body.map_index).await?;
    if !xcom_exists(&state, &ti, &key).await? {
        return Err(ApiError::not_found(format!(
            "The XCom with key: `{key}` with mapped index: {} not found.",
            body.map_index
        )));
    }
    state
        .store()
        .xcom_push(&ti, &key, &body.value, Utc::now())
        .await?;
    super::audit(&state, &user, "xcom_update", Some(&dag_id), Some(&run_id)).await;
    Ok(Json(xcom_read_back(&state, &ti, &key, &run).await?))
}

/// `DELETE .../xcomEntries/{xcom_key}?map_index=`: removes an XCom.
#[utoipa::path(delete, path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/xcomEntries/{xcom_key}", tag = "XCom",
    summary = "Delete an XCom",
    params(("dag_id" = String, Path), ("dag_run_id" = String, Path), ("task_id" = String, Path), ("xcom_key" = String, Path),
        ("map_index" = Option<i64>, Query)),
    responses((status = 204)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn xcom_delete(
    State(state): State<AppState>,
    user: ApiUser,
    Path((dag_id, run_id, task_id, key)): Path<(String, String, String, String)>,
    RawQuery(raw): RawQuery,
) -> ApiResult<StatusCode> {
    user.require(Permission::EditDags)?;
    let pairs = query_pairs(raw.as_deref())?;
    let map_index = map_index_query(&pairs)?;
    run_of(&state, &dag_id, &run_id).await?;
    let ti = TiKey::new(&dag_id, &run_id, &task_id, map_index);
    if !state.store().xcom_delete(&ti, &key).await? {
        return Err(ApiError::not_found(format!(
            "The XCom with key: `{key}` with mapped index: {map_index} not found."
        )));
    }
    super::audit(&state, &user, "xcom_delete", Some(&dag_id), Some(&run_id)).await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = ClearTaskInstancesBody)]
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
    /// Task ids, or `[task_id, map_index]` pairs.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    task_ids: Option<Vec<Value>>,
    #[serde(default)]
    include_upstream: bool,
    #[serde(default)]
    include_downstream: bool,
    #[serde(default = "yes")]
    reset_dag_runs: bool,
    #[serde(default)]
    #[schema(format = DateTime)]
    start_date: Option<String>,
    #[serde(default)]
    #[schema(format = DateTime)]
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
#[utoipa::path(post, path = "/api/v2/dags/{dag_id}/clearTaskInstances", tag = "Task Instance",
    summary = "Clear task instances so they run again (a dry run by default)",
    params(("dag_id" = String, Path)),
    request_body = ClearBody,
    responses(
        (status = 200, description = "The task instances cleared, or that a dry run would clear", body = TaskInstanceCollection),
        (status = 409, description = "prevent_running_task is set and some are running", body = ErrorBody),
    ),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn clear(
    State(state): State<AppState>,
    user: ApiUser,
    Path(dag_id): Path<String>,
    body: Body<ClearBody>,
) -> ApiResult<Json<TaskInstanceCollection>> {
    user.require(Permission::EditDags)?;
    let body = read_body(body)?;
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
        .ok_or_else(|| super::dag_not_found(&dag_id))?;
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
    let bad = || {
        ApiError::invalid(
            &["body", "task_ids"],
            "expected a task id or [task_id, map_index]",
        )
    };
    // Task ids, each with the map index asked for (`[task_id, map_index]`), if any.
    let wanted: Vec<(String, Option<i64>)> = match &body.task_ids {
        None => dag
            .tasks
            .iter()
            .map(|t| (t.task_id.to_string(), None))
            .collect(),
        Some(ids) => ids
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok((s.clone(), None)),
                Value::Array(pair) => match pair.as_slice() {
                    [Value::String(t), Value::Number(i)] => {
                        Ok((t.clone(), Some(i.as_i64().ok_or_else(bad)?)))
                    }
                    [Value::String(t)] => Ok((t.clone(), None)),
                    _ => Err(bad()),
                },
                _ => Err(bad()),
            })
            .collect::<ApiResult<_>>()?,
    };
    let selected = dag.with_relatives(
        wanted.iter().map(|(t, _)| t.clone()),
        body.include_downstream,
        body.include_upstream,
    );
    // A task named with map indexes keeps only those; its relatives keep every instance.
    let index_ok = |t: &TiRow| {
        let asked: Vec<Option<i64>> = wanted
            .iter()
            .filter(|(id, _)| *id == t.key.task_id)
            .map(|(_, i)| *i)
            .collect();
        asked.is_empty() || asked.iter().any(|i| i.is_none_or(|i| i == t.key.map_index))
    };
    let mut chosen: Vec<(TiRow, DagRunRow)> = Vec::new();
    for run in &runs {
        for t in state.store().ti_list_for_run(&dag_id, &run.run_id).await? {
            let keep = selected.contains(&t.key.task_id)
                && index_ok(&t)
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
        let keys = state.store().clear_across_markers(&dag, keys).await?;
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
    let items: Vec<TaskInstanceResponse> = chosen.iter().map(|(t, r)| ti_response(t, r)).collect();
    Ok(Json(TaskInstanceCollection {
        total_entries: items.len(),
        task_instances: items,
    }))
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

/// Airflow's task instance state string; `None` for no state yet.
fn state_of(s: TaskInstanceState) -> Option<String> {
    (s != TaskInstanceState::NoStatus).then(|| s.as_str().to_owned())
}

pub(super) fn ti_response(t: &TiRow, run: &DagRunRow) -> TaskInstanceResponse {
    let mut instance = try_response(&current_try(t), t);
    instance.queued_when = time(t.queued_dttm);
    instance.scheduled_when = time(t.scheduled_dttm);
    TaskInstanceResponse {
        id: ti_uuid(&t.key),
        instance,
        logical_date: time(run.logical_date),
        run_after: time(Some(run.run_after)),
        note: t.note.clone(),
        rendered_map_index: t.rendered_map_index.clone(),
        rendered_fields: Value::Object(serde_json::Map::new()),
        trigger: None,
        triggerer_job: None,
    }
}

/// The try a task instance is on, as its history row will record it.
fn current_try(ti: &TiRow) -> TiTryRow {
    TiTryRow {
        key: ti.key.clone(),
        try_number: ti.try_number,
        state: ti.state,
        start_date: ti.start_date,
        end_date: ti.end_date,
        duration: ti.duration,
        hostname: ti.hostname.clone(),
        operator: ti.operator.clone(),
        queue: ti.queue.clone(),
        pool: ti.pool.clone(),
    }
}

/// The run, or Airflow's 404 naming the DAG (when it does not exist) or the run. The DAG is
/// only looked up when the run is missing: one query on the common path.
async fn run_of(state: &AppState, dag_id: &str, run_id: &str) -> ApiResult<DagRunRow> {
    if let Some(run) = state.store().dag_run_get(dag_id, run_id).await? {
        return Ok(run);
    }
    if state.store().dag_get(dag_id).await?.is_none() {
        return Err(super::dag_not_found(dag_id));
    }
    Err(super::run_not_found(dag_id, run_id))
}

#[utoipa::path(get, path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances", tag = "Task Instance",
    summary = "List a run's task instances (`~` for every run of the DAG)",
    params(
        ("dag_id" = String, Path), ("dag_run_id" = String, Path, description = "A run id, or `~` for all"),
        ("limit" = Option<i64>, Query, minimum = 0),
        ("offset" = Option<i64>, Query, minimum = 0),
        ("state" = Option<Vec<String>>, Query, explode = true, description = "Task instance states; `none` or `no_status` for no state"),
        ("task_id" = Option<String>, Query),
        ("order_by" = Option<String>, Query, description = "map_index, start_date, end_date, state, try_number or duration; `-` for descending"),
    ),
    responses((status = 200, body = TaskInstanceCollection)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn list(
    State(state): State<AppState>,
    user: ApiUser,
    Path((dag_id, run_id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<TaskInstanceCollection>> {
    user.require(Permission::Read)?;
    let pairs = query_pairs(raw.as_deref())?;
    let params = ListParams::parse(&pairs)?;
    let task_filter = pairs
        .iter()
        .find(|(n, _)| n == "task_id")
        .map(|(_, v)| v.as_str());
    if run_id != "~" {
        // One run: filtered, ordered and paged by the database.
        let run = run_of(&state, &dag_id, &run_id).await?;
        return run_page(&state, &run, &params, task_filter.map(str::to_owned)).await;
    }
    let ListParams {
        limit,
        offset,
        states,
        order,
    } = params;
    if state.store().dag_get(&dag_id).await?.is_none() {
        return Err(super::dag_not_found(&dag_id));
    }
    let runs = state.store().dag_run_list(&dag_id, 100_000).await?;
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
    sort_rows(&mut rows, order)?;
    Ok(Json(page_of(&rows, offset, limit)))
}

/// One page of task instances (with their runs), and how many there are in all.
fn page_of(rows: &[(TiRow, &DagRunRow)], offset: usize, limit: usize) -> TaskInstanceCollection {
    TaskInstanceCollection {
        total_entries: rows.len(),
        task_instances: rows
            .iter()
            .skip(offset)
            .take(limit)
            .map(|(t, r)| ti_response(t, r))
            .collect(),
    }
}

/// Orders task instances (with their runs) by `order` (`-` for descending), as the list
/// routes do for more than one run.
fn sort_rows(rows: &mut [(TiRow, &DagRunRow)], order: &str) -> ApiResult<()> {
    let (desc, key) = order
        .strip_prefix('-')
        .map_or((false, order), |k| (true, k));
    match key {
        "dag_id" => rows.sort_by(|a, b| a.0.key.dag_id.cmp(&b.0.key.dag_id)),
        "run_id" | "dag_run_id" => rows.sort_by(|a, b| a.0.key.run_id.cmp(&b.0.key.run_id)),
        "task_id" => rows.sort_by(|a, b| a.0.key.task_id.cmp(&b.0.key.task_id)),
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
    Ok(())
}

/// Airflow's `TaskInstancesBatchBody`: every filter optional; `state` may hold `null` (no
/// state).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TaskInstancesBatchBody {
    pub dag_ids: Option<Vec<String>>,
    pub dag_run_ids: Option<Vec<String>>,
    pub task_ids: Option<Vec<String>>,
    pub state: Option<Vec<Option<String>>>,
    pub pool: Option<Vec<String>>,
    pub queue: Option<Vec<String>>,
    /// Accepted; flow has one executor.
    pub executor: Option<Vec<String>>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub logical_date_gt: Option<chrono::DateTime<Utc>>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub logical_date_gte: Option<chrono::DateTime<Utc>>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub logical_date_lt: Option<chrono::DateTime<Utc>>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub logical_date_lte: Option<chrono::DateTime<Utc>>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub run_after_gt: Option<chrono::DateTime<Utc>>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub run_after_gte: Option<chrono::DateTime<Utc>>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub run_after_lt: Option<chrono::DateTime<Utc>>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub run_after_lte: Option<chrono::DateTime<Utc>>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub start_date_gt: Option<chrono::DateTime<Utc>>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub start_date_gte: Option<chrono::DateTime<Utc>>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub start_date_lt: Option<chrono::DateTime<Utc>>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub start_date_lte: Option<chrono::DateTime<Utc>>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub end_date_gt: Option<chrono::DateTime<Utc>>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub end_date_gte: Option<chrono::DateTime<Utc>>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub end_date_lt: Option<chrono::DateTime<Utc>>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub end_date_lte: Option<chrono::DateTime<Utc>>,
    pub duration_gt: Option<f64>,
    pub duration_gte: Option<f64>,
    pub duration_lt: Option<f64>,
    pub duration_lte: Option<f64>,
    pub page_offset: Option<usize>,
    pub page_limit: Option<usize>,
    pub order_by: Option<String>,
}

/// Whether `v` lies within the bounds (an absent value is outside any bound).
fn within<T: PartialOrd + Copy>(
    v: Option<T>,
    gt: Option<T>,
    gte: Option<T>,
    lt: Option<T>,
    lte: Option<T>,
) -> bool {
    if gt.is_none() && gte.is_none() && lt.is_none() && lte.is_none() {
        return true;
    }
    let Some(v) = v else { return false };
    gt.is_none_or(|b| v > b)
        && gte.is_none_or(|b| v >= b)
        && lt.is_none_or(|b| v < b)
        && lte.is_none_or(|b| v <= b)
}

#[utoipa::path(post, path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/list", tag = "Task Instance",
    summary = "Task instances across DAGs and runs, filtered by a body (`~` for any DAG or run)",
    params(("dag_id" = String, Path), ("dag_run_id" = String, Path)),
    request_body = TaskInstancesBatchBody,
    responses((status = 200, body = TaskInstanceCollection)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn list_batch(
    State(state): State<AppState>,
    user: ApiUser,
    Path((dag_id, run_id)): Path<(String, String)>,
    body: Body<TaskInstancesBatchBody>,
) -> ApiResult<Json<TaskInstanceCollection>> {
    user.require(Permission::Read)?;
    let b = read_body(body)?;
    let states: Option<Vec<TaskInstanceState>> = b
        .state
        .as_ref()
        .map(|list| {
            list.iter()
                .map(|s| match s.as_deref() {
                    None | Some("none") | Some("no_status") => Ok(TaskInstanceState::NoStatus),
                    Some(other) => TaskInstanceState::parse(other).map_err(|_| {
                        ApiError::invalid(
                            &["body", "state"],
                            format!("Invalid value for state: `{other}`"),
                        )
                    }),
                })
                .collect()
        })
        .transpose()?;
    let dag_ids: Vec<String> = if dag_id != "~" {
        if state.store().dag_get(&dag_id).await?.is_none() {
            return Err(super::dag_not_found(&dag_id));
        }
        vec![dag_id.clone()]
    } else if let Some(ids) = &b.dag_ids {
        ids.clone()
    } else {
        state
            .store()
            .dag_list()
            .await?
            .into_iter()
            .map(|d| d.dag_id)
            .collect()
    };
    let mut runs: Vec<DagRunRow> = Vec::new();
    for d in &dag_ids {
        for r in state.store().dag_run_list(d, 100_000).await? {
            let wanted_run = if run_id != "~" {
                r.run_id == run_id
            } else {
                b.dag_run_ids
                    .as_ref()
                    .is_none_or(|ids| ids.contains(&r.run_id))
            };
            if wanted_run
                && within(
                    r.logical_date,
                    b.logical_date_gt,
                    b.logical_date_gte,
                    b.logical_date_lt,
                    b.logical_date_lte,
                )
                && within(
                    Some(r.run_after),
                    b.run_after_gt,
                    b.run_after_gte,
                    b.run_after_lt,
                    b.run_after_lte,
                )
            {
                runs.push(r);
            }
        }
    }
    let mut rows: Vec<(TiRow, &DagRunRow)> = Vec::new();
    for run in &runs {
        for t in state
            .store()
            .ti_list_for_run(&run.dag_id, &run.run_id)
            .await?
        {
            let keep = b
                .task_ids
                .as_ref()
                .is_none_or(|ids| ids.contains(&t.key.task_id))
                && states.as_ref().is_none_or(|s| s.contains(&t.state))
                && b.pool.as_ref().is_none_or(|p| p.contains(&t.pool))
                && b.queue.as_ref().is_none_or(|q| q.contains(&t.queue))
                && within(
                    t.start_date,
                    b.start_date_gt,
                    b.start_date_gte,
                    b.start_date_lt,
                    b.start_date_lte,
                )
                && within(
                    t.end_date,
                    b.end_date_gt,
                    b.end_date_gte,
                    b.end_date_lt,
                    b.end_date_lte,
                )
                && within(
                    t.duration,
                    b.duration_gt,
                    b.duration_gte,
                    b.duration_lt,
                    b.duration_lte,
                );
            if keep {
                rows.push((t, run));
            }
        }
    }
    sort_rows(&mut rows, b.order_by.as_deref().unwrap_or("map_index"))?;
    let (offset, limit) = (b.page_offset.unwrap_or(0), b.page_limit.unwrap_or(100));
    Ok(Json(page_of(&rows, offset, limit)))
}

/// The `map_index` query parameter (-1, an unmapped task instance, when absent).
fn map_index_query(pairs: &[(String, String)]) -> ApiResult<i64> {
    match pairs.iter().find(|(k, _)| k == "map_index") {
        None => Ok(-1),
        Some((_, v)) => v.parse::<i64>().map_err(|_| {
            ApiError::invalid(&["query", "map_index"], "Input should be a valid integer")
        }),
    }
}

/// A task instance and its run, or Airflow's 404s: for a mapped task asked without a map
/// index, "add the map_index value to the URL"; for a map index it does not have, "The
/// Mapped Task Instance ... was not found".
async fn find(
    state: &AppState,
    dag_id: &str,
    run_id: &str,
    task_id: &str,
    map_index: i64,
) -> ApiResult<(TiRow, DagRunRow)> {
    let run = run_of(state, dag_id, run_id).await?;
    let key = TiKey::new(dag_id, run_id, task_id, map_index);
    if let Some(ti) = state.store().ti_get(&key).await? {
        return Ok((ti, run));
    }
    if map_index >= 0 {
        return Err(ApiError::not_found(format!(
            "The Mapped Task Instance with dag_id: `{dag_id}`, run_id: `{run_id}`, task_id: `{task_id}`, and map_index: `{map_index}` was not found"
        )));
    }
    let mapped = state
        .store()
        .ti_list_for_run(dag_id, run_id)
        .await?
        .iter()
        .any(|t| t.key.task_id == task_id && t.key.map_index >= 0);
    if mapped {
        return Err(ApiError::not_found(
            "Task instance is mapped, add the map_index value to the URL",
        ));
    }
    Err(ApiError::not_found(format!(
        "The Task Instance with dag_id: `{dag_id}`, run_id: `{run_id}`, task_id: `{task_id}` and map_index: `-1` was not found"
    )))
}

/// A map index from the path.
fn path_map_index(text: &str) -> ApiResult<i64> {
    text.parse::<i64>()
        .map_err(|_| ApiError::invalid(&["path", "map_index"], "Input should be a valid integer"))
}

#[utoipa::path(get, path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}", tag = "Task Instance", summary = "Get a task instance",
    params(("dag_id" = String, Path), ("dag_run_id" = String, Path), ("task_id" = String, Path)),
    responses((status = 200, body = TaskInstanceResponse)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn get_one(
    State(state): State<AppState>,
    user: ApiUser,
    Path((dag_id, run_id, task_id)): Path<(String, String, String)>,
) -> ApiResult<Json<TaskInstanceResponse>> {
    user.require(Permission::Read)?;
    let (ti, run) = find(&state, &dag_id, &run_id, &task_id, -1).await?;
    Ok(Json(ti_response(&ti, &run)))
}

#[utoipa::path(get, path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/{map_index}", tag = "Task Instance", summary = "Get one instance of a mapped task",
    params(("dag_id" = String, Path), ("dag_run_id" = String, Path), ("task_id" = String, Path), ("map_index" = i64, Path)),
    responses((status = 200, body = TaskInstanceResponse)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn get_mapped(
    State(state): State<AppState>,
    user: ApiUser,
    Path((dag_id, run_id, task_id, map_index)): Path<(String, String, String, String)>,
) -> ApiResult<Json<TaskInstanceResponse>> {
    user.require(Permission::Read)?;
    let map_index = path_map_index(&map_index)?;
    let (ti, run) = find(&state, &dag_id, &run_id, &task_id, map_index).await?;
    Ok(Json(ti_response(&ti, &run)))
}

/// `GET .../taskInstances/{task_id}/listMapped`: the instances of a mapped task, by map index.
#[utoipa::path(get, path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/listMapped", tag = "Task Instance",
    summary = "List the instances of a mapped task",
    params(
        ("dag_id" = String, Path), ("dag_run_id" = String, Path), ("task_id" = String, Path),
        ("limit" = Option<i64>, Query, minimum = 0),
        ("offset" = Option<i64>, Query, minimum = 0),
        ("state" = Option<Vec<String>>, Query, explode = true),
        ("order_by" = Option<String>, Query, description = "map_index, start_date, end_date, state, try_number or duration; `-` for descending"),
    ),
    responses((status = 200, body = TaskInstanceCollection)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn list_mapped(
    State(state): State<AppState>,
    user: ApiUser,
    Path((dag_id, run_id, task_id)): Path<(String, String, String)>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<TaskInstanceCollection>> {
    user.require(Permission::Read)?;
    let run = run_of(&state, &dag_id, &run_id).await?;
    let (dag, _) = super::load_dag(&state, &dag_id)
        .await?
        .ok_or_else(|| super::dag_not_found(&dag_id))?;
    if !dag.task(&task_id).is_some_and(flow_dag::Task::is_mapped) {
        return Err(ApiError::not_found(format!(
            "Task id {task_id} is not mapped"
        )));
    }
    let pairs = query_pairs(raw.as_deref())?;
    let params = ListParams::parse(&pairs)?;
    run_page(&state, &run, &params, Some(task_id)).await
}

/// What a list of task instances asks for: a page, states (none: all) and `order_by`.
struct ListParams<'q> {
    limit: usize,
    offset: usize,
    states: Vec<TaskInstanceState>,
    order: &'q str,
}

impl<'q> ListParams<'q> {
    fn parse(pairs: &'q [(String, String)]) -> ApiResult<Self> {
        let (limit, offset) = super::paging(pairs)?;
        Ok(ListParams {
            limit,
            offset,
            states: parse_states(pairs)?,
            order: pairs
                .iter()
                .find(|(n, _)| n == "order_by")
                .map_or("map_index", |(_, v)| v.as_str()),
        })
    }
}

/// One run's task instances as `list` and `listMapped` serve them: filtered by `state` (and
/// `task_id`), ordered by `order_by` (`id` is the map index; `-` for descending) and paged, all
/// by the database.
async fn run_page(
    state: &AppState,
    run: &DagRunRow,
    params: &ListParams<'_>,
    task_id: Option<String>,
) -> ApiResult<Json<TaskInstanceCollection>> {
    let order = params.order;
    let (desc, key) = order
        .strip_prefix('-')
        .map_or((false, order), |k| (true, k));
    let column = if key == "id" { "map_index" } else { key };
    if !flow_store::TiQuery::ORDER_COLUMNS.contains(&column) {
        return Err(ApiError::bad_request(format!(
            "Ordering with '{key}' is disallowed or the attribute does not exist on the model"
        )));
    }
    let (rows, total) = state
        .store()
        .ti_query(&flow_store::TiQuery {
            dag_id: run.dag_id.clone(),
            run_id: run.run_id.clone(),
            states: params.states.clone(),
            task_id,
            order_by: Some((column.to_owned(), desc)),
            limit: i64::try_from(params.limit).unwrap_or(i64::MAX),
            offset: i64::try_from(params.offset).unwrap_or(i64::MAX),
        })
        .await?;
    Ok(Json(TaskInstanceCollection {
        total_entries: usize::try_from(total).unwrap_or(0),
        task_instances: rows.iter().map(|t| ti_response(t, run)).collect(),
    }))
}

/// `state` query values (`none` or `no_status` for no state), or 422 naming a bad one.
fn parse_states(pairs: &[(String, String)]) -> ApiResult<Vec<TaskInstanceState>> {
    pairs
        .iter()
        .filter(|(k, _)| k == "state")
        .map(|(_, v)| match v.as_str() {
            "none" | "no_status" => Ok(TaskInstanceState::NoStatus),
            other => TaskInstanceState::parse(other).map_err(|_| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("Invalid value for state: `{other}`"),
                )
            }),
        })
        .collect()
}

fn try_response(t: &TiTryRow, ti: &TiRow) -> TaskInstanceHistory {
    TaskInstanceHistory {
        task_id: t.key.task_id.clone(),
        dag_id: t.key.dag_id.clone(),
        dag_run_id: t.key.run_id.clone(),
        map_index: t.key.map_index,
        start_date: time(t.start_date),
        end_date: time(t.end_date),
        duration: t.duration,
        state: state_of(t.state),
        try_number: t.try_number,
        max_tries: ti.max_tries,
        task_display_name: t.key.task_id.clone(),
        dag_display_name: t.key.dag_id.clone(),
        hostname: (!t.hostname.is_empty()).then(|| t.hostname.clone()),
        unixname: None,
        pool: t.pool.clone(),
        pool_slots: ti.pool_slots,
        queue: Some(t.queue.clone()),
        priority_weight: Some(ti.priority_weight),
        operator: Some(t.operator.clone()),
        operator_name: Some(t.operator.clone()),
        queued_when: None,
        scheduled_when: None,
        pid: None,
        executor: None,
        executor_config: "{}".to_owned(),
        dag_version: None,
    }
}

/// Every try of a task instance: the recorded history, with the current try as the task
/// instance now shows it (unless it is waiting to retry, when its try is already recorded).
async fn all_tries(
    state: &AppState,
    dag_id: &str,
    run_id: &str,
    task_id: &str,
    map_index: i64,
) -> ApiResult<Vec<TaskInstanceHistory>> {
    let (ti, _) = find(state, dag_id, run_id, task_id, map_index).await?;
    // The history is ordered by try; the current try is the last one.
    let live = ti.try_number > 0 && ti.state != TaskInstanceState::UpForRetry;
    let mut tries = state.store().ti_tries(&ti.key).await?;
    if live {
        tries.retain(|t| t.try_number != ti.try_number);
        tries.push(current_try(&ti));
    }
    Ok(tries.iter().map(|t| try_response(t, &ti)).collect())
}

#[utoipa::path(get, path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/tries", tag = "Task Instance",
    summary = "Every try of a task instance",
    params(("dag_id" = String, Path), ("dag_run_id" = String, Path), ("task_id" = String, Path),
        ("map_index" = Option<i64>, Query)),
    responses((status = 200, body = TaskInstanceHistoryCollection)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn tries(
    State(state): State<AppState>,
    user: ApiUser,
    Path((dag_id, run_id, task_id)): Path<(String, String, String)>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<TaskInstanceHistoryCollection>> {
    user.require(Permission::Read)?;
    let map_index = map_index_query(&query_pairs(raw.as_deref())?)?;
    let items = all_tries(&state, &dag_id, &run_id, &task_id, map_index).await?;
    Ok(Json(TaskInstanceHistoryCollection {
        total_entries: items.len(),
        task_instances: items,
    }))
}

#[utoipa::path(get, path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/{map_index}/tries", tag = "Task Instance",
    summary = "Every try of one instance of a mapped task",
    params(("dag_id" = String, Path), ("dag_run_id" = String, Path), ("task_id" = String, Path),
        ("map_index" = i64, Path)),
    responses((status = 200, body = TaskInstanceHistoryCollection)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn mapped_tries(
    State(state): State<AppState>,
    user: ApiUser,
    Path((dag_id, run_id, task_id, map_index)): Path<(String, String, String, String)>,
) -> ApiResult<Json<TaskInstanceHistoryCollection>> {
    user.require(Permission::Read)?;
    let map_index = path_map_index(&map_index)?;
    let items = all_tries(&state, &dag_id, &run_id, &task_id, map_index).await?;
    Ok(Json(TaskInstanceHistoryCollection {
        total_entries: items.len(),
        task_instances: items,
    }))
}

#[utoipa::path(get, path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/{map_index}/tries/{task_try_number}", tag = "Task Instance",
    summary = "One try of one instance of a mapped task",
    params(("dag_id" = String, Path), ("dag_run_id" = String, Path), ("task_id" = String, Path),
        ("map_index" = i64, Path), ("task_try_number" = i64, Path)),
    responses((status = 200, body = TaskInstanceHistory)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn mapped_try_one(
    State(state): State<AppState>,
    user: ApiUser,
    Path((dag_id, run_id, task_id, map_index, try_number)): Path<(
        String,
        String,
        String,
        String,
        String,
    )>,
) -> ApiResult<Json<TaskInstanceHistory>> {
    user.require(Permission::Read)?;
    let map_index = path_map_index(&map_index)?;
    one_try(&state, &dag_id, &run_id, &task_id, map_index, &try_number).await
}

#[utoipa::path(get, path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/tries/{task_try_number}", tag = "Task Instance",
    summary = "One try of a task instance",
    params(("dag_id" = String, Path), ("dag_run_id" = String, Path), ("task_id" = String, Path),
        ("task_try_number" = i64, Path), ("map_index" = Option<i64>, Query)),
    responses((status = 200, body = TaskInstanceHistory)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn try_one(
    State(state): State<AppState>,
    user: ApiUser,
    Path((dag_id, run_id, task_id, try_number)): Path<(String, String, String, String)>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<TaskInstanceHistory>> {
    user.require(Permission::Read)?;
    let map_index = map_index_query(&query_pairs(raw.as_deref())?)?;
    one_try(&state, &dag_id, &run_id, &task_id, map_index, &try_number).await
}

async fn one_try(
    state: &AppState,
    dag_id: &str,
    run_id: &str,
    task_id: &str,
    map_index: i64,
    try_number: &str,
) -> ApiResult<Json<TaskInstanceHistory>> {
    let n: i64 = try_number.parse().map_err(|_| {
        ApiError::invalid(
            &["path", "task_try_number"],
            "Input should be a valid integer",
        )
    })?;
    all_tries(state, dag_id, run_id, task_id, map_index)
        .await?
        .into_iter()
        .find(|t| t.try_number == n)
        .map(Json)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "The Task Instance with dag_id: `{dag_id}`, run_id: `{run_id}`, task_id: `{task_id}`, try_number: `{n}` and map_index: `{map_index}` was not found"
            ))
        })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = PatchTaskInstanceBody)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    /// `success`, `failed` or `skipped`.
    new_state: Option<String>,
    /// The instance's note (at most 1,000 characters; `""` removes it), with or without a
    /// new state.
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
#[utoipa::path(patch, path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}", tag = "Task Instance",
    summary = "Mark a task instance (and optionally its relatives) success, failed or skipped",
    params(("dag_id" = String, Path), ("dag_run_id" = String, Path), ("task_id" = String, Path)),
    request_body = PatchBody,
    responses(
        (status = 200, description = "The task instances changed", body = TaskInstanceCollection),
        (status = 409, description = "Already in that state", body = ErrorBody),
    ),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn patch_one(
    State(state): State<AppState>,
    user: ApiUser,
    Path((dag_id, run_id, task_id)): Path<(String, String, String)>,
    body: Body<PatchBody>,
) -> ApiResult<Json<TaskInstanceCollection>> {
    user.require(Permission::EditDags)?;
    let body = read_body(body)?;
    patch(&state, &user, &dag_id, &run_id, &task_id, None, body).await
}

/// `PATCH .../taskInstances/{task_id}/{map_index}`: mark one instance of a mapped task.
#[utoipa::path(patch, path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/{map_index}", tag = "Task Instance",
    summary = "Mark one instance of a mapped task (and optionally its relatives) success, failed or skipped",
    params(("dag_id" = String, Path), ("dag_run_id" = String, Path), ("task_id" = String, Path), ("map_index" = i64, Path)),
    request_body = PatchBody,
    responses(
        (status = 200, description = "The task instances changed", body = TaskInstanceCollection),
        (status = 409, description = "Already in that state", body = ErrorBody),
    ),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn patch_mapped(
    State(state): State<AppState>,
    user: ApiUser,
    Path((dag_id, run_id, task_id, map_index)): Path<(String, String, String, String)>,
    body: Body<PatchBody>,
) -> ApiResult<Json<TaskInstanceCollection>> {
    user.require(Permission::EditDags)?;
    let body = read_body(body)?;
    let map_index = path_map_index(&map_index)?;
    patch(
        &state,
        &user,
        &dag_id,
        &run_id,
        &task_id,
        Some(map_index),
        body,
    )
    .await
}

/// Marks the task instance (one map index, or every instance of the task when none is
/// given, as Airflow does) and its chosen relatives (every instance of theirs).
async fn patch(
    state: &AppState,
    user: &ApiUser,
    dag_id: &str,
    run_id: &str,
    task_id: &str,
    map_index: Option<i64>,
    body: PatchBody,
) -> ApiResult<Json<TaskInstanceCollection>> {
    let (dag_id, run_id) = (dag_id.to_owned(), run_id.to_owned());
    let run = run_of(state, &dag_id, &run_id).await?;
    let instances = state.store().ti_list_for_run(&dag_id, &run_id).await?;
    let mine: Vec<&TiRow> = instances
        .iter()
        .filter(|t| t.key.task_id == task_id && map_index.is_none_or(|i| t.key.map_index == i))
        .collect();
    let Some(ti) = mine.first().copied() else {
        find(state, &dag_id, &run_id, task_id, map_index.unwrap_or(-1)).await?;
        return Err(ApiError::not_found("TaskInstance not found"));
    };
    let note = body.note.as_deref().map(checked_note).transpose()?;
    let noted: Vec<TiKey> = mine.iter().map(|t| t.key.clone()).collect();
    if body.new_state.is_none() {
        // A note alone (Airflow's update_mask=note): the instance (every instance of a mapped
        // task without a map index), whatever its state.
        let Some(note) = note else {
            // Neither a state nor a note: the answer about the missing state (422).
            return Err(mark_state(&body)
                .err()
                .unwrap_or_else(|| ApiError::bad_request("nothing to change")));
        };
        if body.include_future || body.include_past {
            return Err(ApiError::bad_request(
                "include_future/include_past are not supported yet",
            ));
        }
        state.store().ti_set_note(&noted, note).await?;
        super::audit(state, user, "set note", Some(&dag_id), Some(&run_id)).await;
        return marked_response(state, &noted, &run).await;
    }
    let to = mark_state(&body)?;
    let (dag, _) = super::load_dag(state, &dag_id)
        .await?
        .ok_or_else(|| super::dag_not_found(&dag_id))?;
    let selected = dag.with_relatives(
        [ti.key.task_id.clone()],
        body.include_downstream,
        body.include_upstream,
    );
    let keys: Vec<TiKey> = instances
        .iter()
        .filter(|t| selected.contains(&t.key.task_id))
        .filter(|t| t.key.task_id != task_id || map_index.is_none_or(|i| t.key.map_index == i))
        .map(|t| t.key.clone())
        .collect();
    let mut marked = state.store().ti_mark(&keys, to, Utc::now()).await?;
    if let Some(note) = note {
        state.store().ti_set_note(&noted, note).await?;
        super::audit(state, user, "set note", Some(&dag_id), Some(&run_id)).await;
        let more: Vec<TiKey> = noted.into_iter().filter(|k| !marked.contains(k)).collect();
        marked.extend(more);
    } else if marked.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("Task id {task_id} is already in {} state", ti.state),
        ));
    }
    let event = format!("mark {}", to.as_str());
    super::audit(state, user, &event, Some(&dag_id), Some(&run_id)).await;
    marked_response(state, &marked, &run).await
}

/// Airflow's note limit (1,000 characters); an empty note removes it.
fn checked_note(note: &str) -> ApiResult<Option<&str>> {
    if note.chars().count() > NOTE_MAX {
        return Err(ApiError::invalid(
            &["body", "note"],
            format!("String should have at most {NOTE_MAX} characters"),
        ));
    }
    Ok((!note.is_empty()).then_some(note))
}

/// The longest task instance note (Airflow's `max_length`).
pub(crate) const NOTE_MAX: usize = 1000;

/// The state a mark asks for; what the marks do not support is refused.
fn mark_state(body: &PatchBody) -> ApiResult<TaskInstanceState> {
    if body.include_future || body.include_past {
        return Err(ApiError::bad_request(
            "include_future/include_past are not supported yet",
        ));
    }
    match body
        .new_state
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("success") => Ok(TaskInstanceState::Success),
        Some("failed") => Ok(TaskInstanceState::Failed),
        Some("skipped") => Ok(TaskInstanceState::Skipped),
        _ => Err(ApiError::invalid(
            &["body", "new_state"],
            "Input should be 'success', 'failed' or 'skipped'",
        )),
    }
}

/// The task instances a mark changed, as they are now.
async fn marked_response(
    state: &AppState,
    marked: &[TiKey],
    run: &DagRunRow,
) -> ApiResult<Json<TaskInstanceCollection>> {
    let mut out = Vec::new();
    for key in marked {
        if let Some(t) = state.store().ti_get(key).await? {
            out.push(ti_response(&t, run));
        }
    }
    Ok(Json(TaskInstanceCollection {
        total_entries: out.len(),
        task_instances: out,
    }))
}

/// `PATCH .../taskInstances/{task_id}` for every task of a task group (nested groups
/// included), as Airflow 3's `taskGroupInstances`.
#[utoipa::path(patch, path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskGroupInstances/{group_id}", tag = "Task Instance",
    summary = "Mark every task instance of a task group (and optionally their relatives) success, failed or skipped",
    params(("dag_id" = String, Path), ("dag_run_id" = String, Path), ("group_id" = String, Path)),
    request_body = PatchBody,
    responses(
        (status = 200, description = "The task instances changed", body = TaskInstanceCollection),
        (status = 409, description = "Already in that state", body = ErrorBody),
    ),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn patch_group(
    State(state): State<AppState>,
    user: ApiUser,
    Path((dag_id, run_id, group_id)): Path<(String, String, String)>,
    body: Body<PatchBody>,
) -> ApiResult<Json<TaskInstanceCollection>> {
    user.require(Permission::EditDags)?;
    let body = read_body(body)?;
    group(&state, &user, &dag_id, &run_id, &group_id, body, false).await
}

/// What [`patch_group`] would mark, changing nothing.
#[utoipa::path(patch, path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskGroupInstances/{group_id}/dry_run", tag = "Task Instance",
    summary = "The task instances marking a task group would change",
    params(("dag_id" = String, Path), ("dag_run_id" = String, Path), ("group_id" = String, Path)),
    request_body = PatchBody,
    responses((status = 200, body = TaskInstanceCollection)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn patch_group_dry_run(
    State(state): State<AppState>,
    user: ApiUser,
    Path((dag_id, run_id, group_id)): Path<(String, String, String)>,
    body: Body<PatchBody>,
) -> ApiResult<Json<TaskInstanceCollection>> {
    user.require(Permission::EditDags)?;
    let body = read_body(body)?;
    group(&state, &user, &dag_id, &run_id, &group_id, body, true).await
}

async fn group(
    state: &AppState,
    user: &ApiUser,
    dag_id: &str,
    run_id: &str,
    group_id: &str,
    body: PatchBody,
    dry_run: bool,
) -> ApiResult<Json<TaskInstanceCollection>> {
    let run = run_of(state, dag_id, run_id).await?;
    let (dag, _) = super::load_dag(state, dag_id)
        .await?
        .ok_or_else(|| super::dag_not_found(dag_id))?;
    let prefix = format!("{group_id}.");
    let members: Vec<String> = dag
        .tasks
        .iter()
        .filter(|t| {
            t.group_id
                .as_deref()
                .is_some_and(|g| g == group_id || g.starts_with(&prefix))
        })
        .map(|t| t.task_id.to_string())
        .collect();
    if members.is_empty() {
        return Err(ApiError::not_found(format!(
            "Task group {group_id} not found in Dag {dag_id}"
        )));
    }
    if body.note.is_some() {
        return Err(ApiError::bad_request(
            "a task group has no note: set notes on its task instances",
        ));
    }
    let to = mark_state(&body)?;
    let selected = dag.with_relatives(
        members.iter().cloned(),
        body.include_downstream,
        body.include_upstream,
    );
    let instances = state.store().ti_list_for_run(dag_id, run_id).await?;
    let chosen: Vec<&TiRow> = instances
        .iter()
        .filter(|t| selected.contains(&t.key.task_id) && t.state != to)
        .collect();
    if dry_run {
        let out: Vec<_> = chosen.iter().map(|t| ti_response(t, &run)).collect();
        return Ok(Json(TaskInstanceCollection {
            total_entries: out.len(),
            task_instances: out,
        }));
    }
    let keys: Vec<TiKey> = chosen.iter().map(|t| t.key.clone()).collect();
    let marked = state.store().ti_mark(&keys, to, Utc::now()).await?;
    if marked.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("Task group {group_id} is already in {} state", to.as_str()),
        ));
    }
    let event = format!("mark {} (task group {group_id})", to.as_str());
    super::audit(state, user, &event, Some(dag_id), Some(run_id)).await;
    marked_response(state, &marked, &run).await
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
