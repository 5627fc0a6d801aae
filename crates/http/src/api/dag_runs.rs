//! `/api/v2/dags/{dag_id}/dagRuns`: trigger, list, get, mark and delete runs, in Airflow's
//! `DAGRunResponse` shape. Triggering goes through the same store call as `flow dags trigger`
//! and the web UI.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use chrono::{DateTime, Utc};
use flow_model::{DagRunState, DagRunType, Permission, TaskInstanceState};
use flow_store::{DagRunRow, RunQuery, TiKey, TriggerError, TriggerRequest};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::dags::time;
use super::schema::{DagRunCollection, DagRunResponse, ErrorBody, TaskInstanceCollection};
use super::{ApiError, ApiResult, ApiUser, Body, find_run, query_pairs, read_body};
use crate::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, trigger, bulk))
        .routes(routes!(list_batch))
        .routes(routes!(get_one, patch_one, delete_one))
        .routes(routes!(clear))
        .routes(routes!(clear_many))
}

/// Airflow 3's `triggered_by` values from what flow records.
fn triggered_by(recorded: Option<&str>) -> (Option<String>, Option<String>) {
    let Some(text) = recorded else {
        return (None, None);
    };
    let (kind, user) = text.split_once(':').unwrap_or((text, ""));
    let kind = match kind {
        "ui" => "ui",
        "cli" => "cli",
        "api" | "rest_api" => "rest_api",
        "scheduler" => "timetable",
        "backfill" => "backfill",
        "asset" => "asset",
        _ => "operator",
    };
    let user = (!user.is_empty()).then(|| user.to_owned());
    (Some(kind.to_owned()), user)
}

pub fn run_response(r: &DagRunRow) -> DagRunResponse {
    let (by, user) = triggered_by(r.triggered_by.as_deref());
    let duration = match (r.start_date, r.end_date) {
        (Some(s), Some(e)) => Some((e - s).num_microseconds().unwrap_or(0) as f64 / 1e6),
        _ => None,
    };
    // Airflow has no type for Kafka-triggered runs; its event-driven runs are asset-triggered.
    let run_type = match r.run_type {
        DagRunType::Event => "asset_triggered",
        other => other.as_str(),
    };
    DagRunResponse {
        dag_run_id: r.run_id.clone(),
        dag_id: r.dag_id.clone(),
        logical_date: time(r.logical_date),
        queued_at: time(r.queued_at),
        start_date: time(r.start_date),
        end_date: time(r.end_date),
        duration,
        data_interval_start: time(r.data_interval_start),
        data_interval_end: time(r.data_interval_end),
        run_after: time(Some(r.run_after)),
        last_scheduling_decision: None,
        run_type: run_type.to_owned(),
        state: r.state.as_str().to_owned(),
        triggered_by: by,
        triggering_user_name: user,
        conf: Some(r.conf.clone()),
        note: r.note.clone(),
        dag_versions: Vec::new(),
        bundle_version: None,
        dag_display_name: r.dag_id.clone(),
        partition_key: None,
    }
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

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = TriggerDAGRunPostBody)]
#[serde(deny_unknown_fields)]
struct TriggerBody {
    #[serde(default)]
    dag_run_id: Option<String>,
    #[serde(default)]
    #[schema(format = DateTime)]
    logical_date: Option<String>,
    #[serde(default)]
    #[schema(format = DateTime)]
    run_after: Option<String>,
    #[serde(default)]
    #[schema(format = DateTime)]
    data_interval_start: Option<String>,
    #[serde(default)]
    #[schema(format = DateTime)]
    data_interval_end: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    conf: Option<Value>,
    #[serde(default)]
    #[schema(max_length = 1000)]
    note: Option<String>,
    #[serde(default)]
    partition_key: Option<String>,
}

/// `POST .../dagRuns`: 200 with the new run (Airflow's declared code; the python client
/// relies on it), 409 for a duplicate run id.
#[utoipa::path(post, path = "/api/v2/dags/{dag_id}/dagRuns", tag = "DagRun", summary = "Trigger a DAG run",
    params(("dag_id" = String, Path)),
    request_body = TriggerBody,
    responses(
        (status = 200, body = DagRunResponse),
        (status = 409, description = "A run with this dag_run_id or logical_date exists", body = ErrorBody),
    ),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn trigger(
    State(state): State<AppState>,
    user: ApiUser,
    Path(dag_id): Path<String>,
    body: Body<TriggerBody>,
) -> ApiResult<Json<DagRunResponse>> {
    user.require(Permission::EditDags)?;
    let body = read_body(body)?;
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
    if body.note.as_ref().is_some_and(|n| n.chars().count() > 1000) {
        return Err(ApiError::invalid(
            &["body", "note"],
            "String should have at most 1000 characters",
        ));
    }
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

/// Run states from repeated `state` query values (422 naming a bad one).
fn parse_states<'a>(values: impl Iterator<Item = &'a str>) -> ApiResult<Vec<DagRunState>> {
    values
        .map(|v| {
            DagRunState::parse(v).map_err(|_| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("Invalid value for state. Valid values are queued, running, success, failed; got `{v}`"),
                )
            })
        })
        .collect()
}

/// `order_by` (`-` for descending) as a run column, or Airflow's 400.
fn parse_order(order: &str) -> ApiResult<(String, bool)> {
    let (desc, key) = order
        .strip_prefix('-')
        .map_or((false, order), |k| (true, k));
    let column = if key == "dag_run_id" { "run_id" } else { key };
    if !RunQuery::ORDER_COLUMNS.contains(&column) {
        return Err(ApiError::bad_request(format!(
            "Ordering with '{key}' is disallowed or the attribute does not exist on the model"
        )));
    }
    Ok((column.to_owned(), desc))
}

async fn run_page(state: &AppState, q: &RunQuery) -> ApiResult<DagRunCollection> {
    let (runs, total) = state.store().dag_run_query(q).await?;
    Ok(DagRunCollection {
        dag_runs: runs.iter().map(run_response).collect(),
        total_entries: total,
    })
}

#[utoipa::path(get, path = "/api/v2/dags/{dag_id}/dagRuns", tag = "DagRun",
    summary = "List a DAG's runs (`~` for every DAG)",
    params(
        ("dag_id" = String, Path, description = "A DAG id, or `~` for all"),
        ("limit" = Option<i64>, Query, minimum = 0),
        ("offset" = Option<i64>, Query, minimum = 0),
        ("state" = Option<Vec<String>>, Query, explode = true, description = "queued, running, success or failed"),
        ("order_by" = Option<String>, Query, description = "id, run_after, logical_date, start_date, end_date, state, dag_id or dag_run_id; `-` for descending"),
    ),
    responses((status = 200, body = DagRunCollection)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn list(
    State(state): State<AppState>,
    user: ApiUser,
    Path(dag_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<DagRunCollection>> {
    user.require(Permission::Read)?;
    let pairs = query_pairs(raw.as_deref())?;
    let (limit, offset) = super::paging(&pairs)?;
    let states = parse_states(
        pairs
            .iter()
            .filter(|(k, _)| k == "state")
            .map(|(_, v)| v.as_str()),
    )?;
    let order = pairs
        .iter()
        .find(|(k, _)| k == "order_by")
        .map_or("id", |(_, v)| v.as_str());
    let mut q = RunQuery {
        states,
        order_by: Some(parse_order(order)?),
        limit: i64::try_from(limit).unwrap_or(i64::MAX),
        offset: i64::try_from(offset).unwrap_or(i64::MAX),
        ..RunQuery::default()
    };
    if dag_id != "~" {
        if state.store().dag_get(&dag_id).await?.is_none() {
            return Err(super::dag_not_found(&dag_id));
        }
        q.dag_ids = vec![dag_id];
    }
    run_page(&state, &q).await.map(Json)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = DAGRunsBatchBody)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    #[serde(default)]
    order_by: Option<String>,
    #[serde(default)]
    #[schema(minimum = 0)]
    page_offset: Option<i64>,
    #[serde(default)]
    #[schema(minimum = 0)]
    page_limit: Option<i64>,
    #[serde(default)]
    dag_ids: Option<Vec<String>>,
    #[serde(default)]
    states: Option<Vec<Option<String>>>,
}

/// `POST /dags/~/dagRuns/list`: runs of many DAGs, filters in the body.
#[utoipa::path(post, path = "/api/v2/dags/~/dagRuns/list", tag = "DagRun",
    summary = "List runs across DAGs, filters in the body",
    request_body = BatchBody,
    responses((status = 200, body = DagRunCollection)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn list_batch(
    State(state): State<AppState>,
    user: ApiUser,
    body: Body<BatchBody>,
) -> ApiResult<Json<DagRunCollection>> {
    user.require(Permission::Read)?;
    let body = read_body(body)?;
    let nonneg = |name: &str, v: Option<i64>, default: i64| match v {
        None => Ok(default),
        Some(n) if n >= 0 => Ok(n),
        Some(_) => Err(ApiError::invalid(
            &["body", name],
            "Input should be greater than or equal to 0",
        )),
    };
    let states = parse_states(body.states.iter().flatten().flatten().map(String::as_str))?;
    let q = RunQuery {
        dag_ids: body.dag_ids.unwrap_or_default(),
        states,
        order_by: Some(parse_order(body.order_by.as_deref().unwrap_or("id"))?),
        limit: nonneg("page_limit", body.page_limit, 100)?.min(100),
        offset: nonneg("page_offset", body.page_offset, 0)?,
    };
    run_page(&state, &q).await.map(Json)
}

#[utoipa::path(get, path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}", tag = "DagRun", summary = "Get a run",
    params(("dag_id" = String, Path), ("dag_run_id" = String, Path)),
    responses((status = 200, body = DagRunResponse)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn get_one(
    State(state): State<AppState>,
    user: ApiUser,
    Path((dag_id, run_id)): Path<(String, String)>,
) -> ApiResult<Json<DagRunResponse>> {
    user.require(Permission::Read)?;
    Ok(Json(run_response(
        &find_run(&state, &dag_id, &run_id).await?,
    )))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = DAGRunPatchBody)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    /// `success` or `failed` (or `queued`, to run it again).
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    #[schema(max_length = 1000)]
    note: Option<String>,
}

/// `PATCH .../dagRuns/{id}`: mark the run success or failed (its unfinished task instances
/// follow, as in the UI and `flow runs mark`), queue it again, or set its note.
#[utoipa::path(patch, path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}", tag = "DagRun",
    summary = "Mark a run success, failed or queued, or set its note",
    params(
        ("dag_id" = String, Path),
        ("dag_run_id" = String, Path),
        ("update_mask" = Option<Vec<String>>, Query, explode = true, description = "`state` and/or `note`"),
    ),
    request_body = PatchBody,
    responses((status = 200, body = DagRunResponse)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn patch_one(
    State(state): State<AppState>,
    user: ApiUser,
    Path((dag_id, run_id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    body: Body<PatchBody>,
) -> ApiResult<Json<DagRunResponse>> {
    user.require(Permission::EditDags)?;
    let body = read_body(body)?;
    let mask: Vec<String> = query_pairs(raw.as_deref())?
        .into_iter()
        .filter(|(k, _)| k == "update_mask")
        .map(|(_, v)| v)
        .collect();
    if let Some(bad) = mask
        .iter()
        .find(|m| !matches!(m.as_str(), "state" | "note"))
    {
        return Err(ApiError::bad_request(format!(
            "Invalid field `{bad}` in update mask"
        )));
    }
    let wants = |field: &str| mask.is_empty() || mask.iter().any(|m| m == field);
    let run = find_run(&state, &dag_id, &run_id).await?;
    let patch = RunPatch {
        state: body.state.as_deref().filter(|_| wants("state")),
        note: body.note.as_deref().filter(|_| wants("note")),
    };
    apply_patch(&state, &user, &run, patch).await?;
    Ok(Json(run_response(
        &find_run(&state, &dag_id, &run_id).await?,
    )))
}

/// What a patch changes on a run: its state, its note (`""` removes it), or both.
struct RunPatch<'a> {
    state: Option<&'a str>,
    note: Option<&'a str>,
}

/// Applies a patch to one run, the note first (as Airflow, so the state change sees it):
/// `success`/`failed` mark the run and its unfinished task instances, `queued` clears it.
/// Shared by `PATCH .../dagRuns/{id}` and the bulk `PATCH .../dagRuns`.
async fn apply_patch(
    state: &AppState,
    user: &ApiUser,
    run: &DagRunRow,
    patch: RunPatch<'_>,
) -> ApiResult<()> {
    let (dag_id, run_id) = (run.dag_id.as_str(), run.run_id.as_str());
    let to = match patch.state {
        None => None,
        Some("success") => Some(DagRunState::Success),
        Some("failed") => Some(DagRunState::Failed),
        Some("queued") => Some(DagRunState::Queued),
        Some(other) => {
            return Err(ApiError::invalid(
                &["body", "state"],
                format!("Input should be 'queued', 'success' or 'failed', got '{other}'"),
            ));
        }
    };
    if let Some(note) = patch.note {
        if note.chars().count() > 1000 {
            return Err(ApiError::invalid(
                &["body", "note"],
                "String should have at most 1000 characters",
            ));
        }
        let note = Some(note).filter(|n| !n.is_empty());
        state.store().dag_run_set_note(dag_id, run_id, note).await?;
        super::audit(state, user, "set run note", Some(dag_id), Some(run_id)).await;
    }
    let Some(to) = to else {
        return Ok(());
    };
    if to == DagRunState::Queued {
        let keys = clearable(state, run, false).await?;
        state.store().ti_clear(&keys, Utc::now()).await?;
    } else {
        state
            .store()
            .dag_run_mark(dag_id, run_id, to, Utc::now())
            .await?;
    }
    let event = format!("mark run {}", patch.state.unwrap_or_default());
    super::audit(state, user, &event, Some(dag_id), Some(run_id)).await;
    Ok(())
}

/// The task instances of a run that clearing it resets (all that have run, or only the
/// failed ones), with each task's retries.
async fn clearable(
    state: &AppState,
    run: &DagRunRow,
    only_failed: bool,
) -> ApiResult<Vec<(TiKey, i64)>> {
    let (dag, _) = super::load_dag(state, &run.dag_id)
        .await?
        .ok_or_else(|| super::dag_not_found(&run.dag_id))?;
    Ok(state
        .store()
        .ti_list_for_run(&run.dag_id, &run.run_id)
        .await?
        .into_iter()
        .filter(|t| {
            !matches!(
                t.state,
                TaskInstanceState::NoStatus | TaskInstanceState::Removed
            ) && (!only_failed
                || matches!(
                    t.state,
                    TaskInstanceState::Failed | TaskInstanceState::UpstreamFailed
                ))
        })
        .map(|t| {
            let retries = dag
                .task(&t.key.task_id)
                .map_or(0, |task| i64::from(task.retries));
            (t.key, retries)
        })
        .collect())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = DAGRunClearBody)]
#[serde(deny_unknown_fields)]
struct ClearBody {
    #[serde(default = "yes")]
    dry_run: bool,
    #[serde(default)]
    only_failed: bool,
    #[serde(default)]
    run_on_latest_version: bool,
}

fn yes() -> bool {
    true
}

/// A dry run lists what would be cleared; a real clear returns the run, queued again.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
enum ClearResponse {
    DryRun(TaskInstanceCollection),
    Cleared(DagRunResponse),
}

/// `POST .../dagRuns/{id}/clear`: reset the run's task instances so the run goes again.
#[utoipa::path(post, path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/clear", tag = "DagRun",
    summary = "Clear a run (dry run by default)",
    params(("dag_id" = String, Path), ("dag_run_id" = String, Path)),
    request_body = ClearBody,
    responses((status = 200, description = "The task instances that would be cleared (dry run), or the run", body = ClearResponse)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn clear(
    State(state): State<AppState>,
    user: ApiUser,
    Path((dag_id, run_id)): Path<(String, String)>,
    body: Body<ClearBody>,
) -> ApiResult<Json<ClearResponse>> {
    user.require(Permission::EditDags)?;
    let body = read_body(body)?;
    if body.run_on_latest_version {
        return Err(ApiError::bad_request(
            "run_on_latest_version is not supported: flow always runs the DAG's current version",
        ));
    }
    let run = find_run(&state, &dag_id, &run_id).await?;
    let keys = clearable(&state, &run, body.only_failed).await?;
    if body.dry_run {
        let mut items = Vec::new();
        for (key, _) in &keys {
            if let Some(t) = state.store().ti_get(key).await? {
                items.push(super::task_instances::ti_response(&t, &run));
            }
        }
        return Ok(Json(ClearResponse::DryRun(TaskInstanceCollection {
            total_entries: items.len(),
            task_instances: items,
        })));
    }
    state.store().ti_clear(&keys, Utc::now()).await?;
    super::audit(&state, &user, "clear", Some(&dag_id), Some(&run_id)).await;
    Ok(Json(ClearResponse::Cleared(run_response(
        &find_run(&state, &dag_id, &run_id).await?,
    ))))
}

/// One run of `clearDagRuns` (Airflow's `BulkDAGRunBody`).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ClearManyRun {
    dag_run_id: String,
    dag_id: Option<String>,
    /// Accepted for Airflow's clients; not used by a clear.
    #[allow(dead_code)]
    state: Option<String>,
    #[allow(dead_code)]
    note: Option<String>,
}

/// Airflow 3.3's `BulkDAGRunClearBody`, without partitions.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ClearManyBody {
    #[serde(default = "yes")]
    dry_run: bool,
    #[serde(default)]
    only_failed: bool,
    #[serde(default)]
    only_new: bool,
    run_on_latest_version: Option<bool>,
    note: Option<String>,
    #[serde(default)]
    dag_runs: Vec<ClearManyRun>,
    partition_key: Option<String>,
    partition_date_start: Option<String>,
    partition_date_end: Option<String>,
}

/// A dry run lists what would be cleared; a real clear returns the runs, queued again.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
enum ClearManyResponse {
    DryRun(TaskInstanceCollection),
    Cleared(DagRunCollection),
}

/// `POST /api/v2/dags/{dag_id}/clearDagRuns` (Airflow 3.3): clears several runs of a DAG (or
/// of any DAG with `~`, each entry naming its DAG) in one request, dry run by default.
#[utoipa::path(post, path = "/api/v2/dags/{dag_id}/clearDagRuns", tag = "DagRun",
    summary = "Clear several runs (dry run by default)",
    params(("dag_id" = String, Path)),
    request_body = ClearManyBody,
    responses((status = 200, description = "The task instances that would be cleared (dry run), or the runs", body = ClearManyResponse)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn clear_many(
    State(state): State<AppState>,
    user: ApiUser,
    Path(dag_id): Path<String>,
    body: Body<ClearManyBody>,
) -> ApiResult<Json<ClearManyResponse>> {
    user.require(Permission::EditDags)?;
    let body = read_body(body)?;
    if body.partition_key.is_some()
        || body.partition_date_start.is_some()
        || body.partition_date_end.is_some()
    {
        return Err(ApiError::bad_request(
            "partitions are not supported: flow's runs have no partition keys; name the runs in `dag_runs`",
        ));
    }
    if body.only_new || body.run_on_latest_version == Some(true) || body.note.is_some() {
        return Err(ApiError::bad_request(
            "only_new, run_on_latest_version and note are not supported",
        ));
    }
    let wildcard = dag_id == "~";
    let mut runs: Vec<(String, String)> = Vec::new();
    for r in &body.dag_runs {
        let entry_dag = match (&r.dag_id, wildcard) {
            (Some(d), _) if d != "~" => d.clone(),
            (_, true) => {
                return Err(ApiError::bad_request(format!(
                    "When the URL dag_id is '~', every entry must provide a concrete dag_id (missing on dag_run_id: '{}').",
                    r.dag_run_id
                )));
            }
            _ => dag_id.clone(),
        };
        if !wildcard && entry_dag != dag_id {
            return Err(ApiError::bad_request(format!(
                "Entry dag_id '{entry_dag}' does not match the URL dag_id '{dag_id}'."
            )));
        }
        let key = (entry_dag, r.dag_run_id.clone());
        if !runs.contains(&key) {
            runs.push(key);
        }
    }
    let mut found = Vec::with_capacity(runs.len());
    for (d, r) in &runs {
        let run = find_run(&state, d, r).await?;
        let keys = clearable(&state, &run, body.only_failed).await?;
        found.push((run, keys));
    }
    if body.dry_run {
        let mut items = Vec::new();
        for (run, keys) in &found {
            for (key, _) in keys {
                if let Some(t) = state.store().ti_get(key).await? {
                    items.push(super::task_instances::ti_response(&t, run));
                }
            }
        }
        return Ok(Json(ClearManyResponse::DryRun(TaskInstanceCollection {
            total_entries: items.len(),
            task_instances: items,
        })));
    }
    let mut cleared = Vec::with_capacity(found.len());
    for (run, keys) in &found {
        state.store().ti_clear(keys, Utc::now()).await?;
        super::audit(&state, &user, "clear", Some(&run.dag_id), Some(&run.run_id)).await;
        cleared.push(run_response(
            &find_run(&state, &run.dag_id, &run.run_id).await?,
        ));
    }
    Ok(Json(ClearManyResponse::Cleared(DagRunCollection {
        total_entries: i64::try_from(cleared.len()).unwrap_or(i64::MAX),
        dag_runs: cleared,
    })))
}

#[utoipa::path(delete, path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}", tag = "DagRun",
    summary = "Delete a run with its task instances, logs and XComs",
    params(("dag_id" = String, Path), ("dag_run_id" = String, Path)),
    responses((status = 204, description = "Deleted")),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn delete_one(
    State(state): State<AppState>,
    user: ApiUser,
    Path((dag_id, run_id)): Path<(String, String)>,
) -> ApiResult<Response> {
    user.require(Permission::EditDags)?;
    delete_run(&state, &user, &dag_id, &run_id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Deletes a run with its task instances, logs and XComs, as Airflow only when it is not
/// running (409): a running run's tasks are still writing to it.
async fn delete_run(state: &AppState, user: &ApiUser, dag_id: &str, run_id: &str) -> ApiResult<()> {
    let not_found = || {
        ApiError::not_found(format!(
            "The DagRun with dag_id: `{dag_id}` and run_id: `{run_id}` was not found"
        ))
    };
    let run = state
        .store()
        .dag_run_get(dag_id, run_id)
        .await?
        .ok_or_else(not_found)?;
    if run.state == DagRunState::Running {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "The DagRun with dag_id: `{dag_id}` and run_id: `{run_id}` cannot be deleted in running state"
            ),
        ));
    }
    if !state.store().dag_run_delete(dag_id, run_id).await? {
        return Err(not_found());
    }
    super::audit(state, user, "delete run", Some(dag_id), Some(run_id)).await;
    Ok(())
}

/// One entity of a bulk dag-run action (Airflow's `BulkDAGRunBody`).
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = BulkDAGRunBody)]
#[serde(deny_unknown_fields)]
struct BulkRunBody {
    dag_run_id: String,
    #[serde(default)]
    dag_id: Option<String>,
    /// `queued`, `success` or `failed`.
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    #[schema(max_length = 1000)]
    note: Option<String>,
}

/// `PATCH /api/v2/dags/{dag_id}/dagRuns` (Airflow 3.3): update (state and/or note) or delete
/// several runs in one request, of this DAG or, with `~`, of the DAG each entity names.
/// Creating runs this way is refused (405 per entity), as Airflow: trigger them instead.
#[utoipa::path(patch, path = "/api/v2/dags/{dag_id}/dagRuns", tag = "DagRun",
    summary = "Update or delete several runs",
    params(("dag_id" = String, Path)),
    request_body(content = super::bulk::BulkBody, description = "Actions whose entities are `BulkDAGRunBody` objects (or run ids, to delete)"),
    responses((status = 200, body = super::bulk::BulkResponse)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn bulk(
    State(state): State<AppState>,
    user: ApiUser,
    Path(dag_id): Path<String>,
    body: Body<super::bulk::BulkBody>,
) -> ApiResult<Json<super::bulk::BulkResponse>> {
    user.require(Permission::EditDags)?;
    let body = read_body(body)?;
    let mut out = super::bulk::BulkResponse::for_actions(&body.actions)?;
    for action in &body.actions {
        if let Some(v) = action.action_on_non_existence.as_deref()
            && !matches!(v, "fail" | "skip")
        {
            return Err(ApiError::invalid(
                &["body", "actions", "action_on_non_existence"],
                format!("Input should be 'fail' or 'skip', got '{v}'"),
            ));
        }
        if action.action == "create" {
            out.slot("create")?.record(Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "Dag Runs bulk create is not supported. Use the trigger Dag Run endpoint instead.",
            )));
            continue;
        }
        let mut seen: Vec<(String, String)> = Vec::new();
        for entity in &action.entities {
            let outcome = bulk_one(&state, &user, &dag_id, action, entity, &mut seen).await;
            out.slot(&action.action)?.record(outcome);
        }
    }
    Ok(Json(out))
}

/// One entity of a bulk update or delete: `dag_id.run_id` when done, `None` when skipped
/// (missing with `action_on_non_existence: skip`, or named twice).
async fn bulk_one(
    state: &AppState,
    user: &ApiUser,
    path_dag: &str,
    action: &super::bulk::BulkAction,
    entity: &Value,
    seen: &mut Vec<(String, String)>,
) -> ApiResult<Option<String>> {
    let update = action.action == "update";
    let body: BulkRunBody = match entity {
        Value::String(run_id) if !update => BulkRunBody {
            dag_run_id: run_id.clone(),
            dag_id: None,
            state: None,
            note: None,
        },
        Value::String(run_id) => {
            return Err(ApiError::bad_request(format!(
                "Bulk update requires a BulkDAGRunBody object, not a string for dag_run_id: {run_id}"
            )));
        }
        other => serde_json::from_value(other.clone())
            .map_err(|e| ApiError::invalid(&["body", "actions", "entities"], e.to_string()))?,
    };
    let dag_id = body.dag_id.clone().unwrap_or_else(|| path_dag.to_owned());
    if dag_id == "~" || body.dag_run_id == "~" {
        return Err(ApiError::bad_request(format!(
            "When using wildcard in path, dag_id must be specified in request body for dag_run_id: {}",
            body.dag_run_id
        )));
    }
    let key = (dag_id, body.dag_run_id.clone());
    if seen.contains(&key) {
        return Ok(None);
    }
    seen.push(key.clone());
    let (dag_id, run_id) = key;
    let Some(run) = state.store().dag_run_get(&dag_id, &run_id).await? else {
        if action.action_on_non_existence.as_deref() == Some("skip") {
            return Ok(None);
        }
        return Err(ApiError::not_found(format!(
            "The DagRun with dag_id: `{dag_id}` and run_id: `{run_id}` was not found"
        )));
    };
    if update {
        let mask = action.update_mask.clone().unwrap_or_default();
        if let Some(bad) = mask
            .iter()
            .find(|m| !matches!(m.as_str(), "state" | "note"))
        {
            return Err(ApiError::bad_request(format!(
                "Invalid field `{bad}` in update mask"
            )));
        }
        let wants = |field: &str| mask.is_empty() || mask.iter().any(|m| m == field);
        let patch = RunPatch {
            state: body.state.as_deref().filter(|_| wants("state")),
            note: body.note.as_deref().filter(|_| wants("note")),
        };
        apply_patch(state, user, &run, patch).await?;
    } else {
        delete_run(state, user, &dag_id, &run_id).await?;
    }
    Ok(Some(format!("{dag_id}.{run_id}")))
}
