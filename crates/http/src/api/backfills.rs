//! `/api/v2/backfills`: Airflow 3's backfill routes: create (and dry-run), list, get, pause,
//! unpause, cancel. The store does the work; `flow dags backfill` and the web UI's trigger
//! page create backfills the same way.

use axum::extract::{Path, RawQuery, State};
use axum::response::Json;
use chrono::{DateTime, Utc};
use flow_model::Permission;
use flow_store::{BackfillError, BackfillRow, NewBackfill, Planned, ReprocessBehavior};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::dag_runs::parse_time;
use super::dags::time;
use super::{ApiError, ApiResult, ApiUser, Body, audit, paging, query_pairs, read_body};
use crate::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(dry_run))
        .routes(routes!(get_one))
        .routes(routes!(pause))
        .routes(routes!(unpause))
        .routes(routes!(cancel))
}

/// Airflow's `BackfillPostBody`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackfillBody {
    pub dag_id: String,
    pub from_date: String,
    pub to_date: String,
    #[serde(default)]
    pub run_backwards: bool,
    #[schema(value_type = Option<Object>)]
    pub dag_run_conf: Option<Value>,
    /// `none` (default), `failed` or `completed`.
    pub reprocess_behavior: Option<String>,
    /// 10 by default, as Airflow's.
    pub max_active_runs: Option<i64>,
    /// Accepted for Airflow's clients.
    #[allow(dead_code)]
    pub run_on_latest_version: Option<bool>,
}

/// Airflow's `BackfillResponse`.
#[derive(Debug, Serialize, ToSchema)]
pub struct BackfillResponse {
    pub id: i64,
    pub dag_id: String,
    pub from_date: Option<String>,
    pub to_date: Option<String>,
    #[schema(value_type = Object)]
    pub dag_run_conf: Value,
    pub is_paused: bool,
    pub reprocess_behavior: String,
    pub max_active_runs: i64,
    pub created_at: Option<String>,
    pub completed_at: Option<String>,
    pub updated_at: Option<String>,
    pub dag_display_name: String,
}

/// Airflow's `BackfillCollectionResponse`.
#[derive(Debug, Serialize, ToSchema)]
pub struct BackfillCollection {
    pub backfills: Vec<BackfillResponse>,
    pub total_entries: i64,
}

/// One date of a dry run (Airflow's `DryRunBackfillResponse`).
#[derive(Debug, Serialize, ToSchema)]
pub struct DryRunBackfill {
    pub logical_date: Option<String>,
}

/// Airflow's `DryRunBackfillCollectionResponse`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DryRunCollection {
    pub backfills: Vec<DryRunBackfill>,
    pub total_entries: usize,
}

fn response(b: &BackfillRow) -> BackfillResponse {
    BackfillResponse {
        id: b.id,
        dag_id: b.dag_id.clone(),
        from_date: time(Some(b.from_date)),
        to_date: time(Some(b.to_date)),
        dag_run_conf: b.dag_run_conf.clone(),
        is_paused: b.is_paused,
        reprocess_behavior: b.reprocess_behavior.clone(),
        max_active_runs: b.max_active_runs,
        created_at: time(Some(b.created_at)),
        completed_at: time(b.completed_at),
        updated_at: time(Some(b.updated_at)),
        dag_display_name: b.dag_id.clone(),
    }
}

fn not_found(id: i64) -> ApiError {
    ApiError::not_found(format!("Could not find backfill with id {id}"))
}

/// Largest number of runs one backfill may make.
const MAX_RUNS: usize = 10_000;

/// The request checked, with the DAG and the timetable's runs in the range.
struct Checked {
    dag: flow_dag::Dag,
    hash: String,
    new: NewBackfill,
    infos: Vec<flow_dag::schedule::DagRunInfo>,
}

async fn check(state: &AppState, user: &ApiUser, b: BackfillBody) -> ApiResult<Checked> {
    let from = parse_time(&["body", "from_date"], &b.from_date)?;
    let to = parse_time(&["body", "to_date"], &b.to_date)?;
    if to < from {
        return Err(ApiError::invalid(
            &["body", "to_date"],
            "to_date must be on or after from_date",
        ));
    }
    let reprocess = match b.reprocess_behavior.as_deref() {
        None => ReprocessBehavior::None,
        Some(s) => ReprocessBehavior::parse(s).ok_or_else(|| {
            ApiError::invalid(
                &["body", "reprocess_behavior"],
                "Input should be 'failed', 'completed' or 'none'",
            )
        })?,
    };
    let max_active_runs = b.max_active_runs.unwrap_or(10);
    if !(1..=1000).contains(&max_active_runs) {
        return Err(ApiError::invalid(
            &["body", "max_active_runs"],
            "max_active_runs is 1 to 1000",
        ));
    }
    let conf = match b.dag_run_conf {
        None | Some(Value::Null) => Value::Object(serde_json::Map::new()),
        Some(v @ Value::Object(_)) => v,
        Some(_) => {
            return Err(ApiError::invalid(
                &["body", "dag_run_conf"],
                "Input should be a valid dictionary",
            ));
        }
    };
    let (dag, hash) = super::load_dag(state, &b.dag_id)
        .await?
        .ok_or_else(|| super::dag_not_found(&b.dag_id))?;
    flow_dag::params::validate_conf(&dag.params, &conf)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let infos = dag.timetable.runs_in_range(from, to, MAX_RUNS + 1);
    if infos.len() > MAX_RUNS {
        return Err(ApiError::invalid(
            &["body", "to_date"],
            format!("the range holds more than {MAX_RUNS} runs; backfill it in parts"),
        ));
    }
    Ok(Checked {
        dag,
        hash,
        new: NewBackfill {
            dag_id: b.dag_id,
            from_date: from,
            to_date: to,
            conf,
            reprocess,
            max_active_runs,
            run_backwards: b.run_backwards,
            triggering_user: Some(user.username.clone()),
        },
        infos,
    })
}

#[utoipa::path(post, path = "/api/v2/backfills", tag = "Backfill",
    summary = "Create a backfill: a run for each logical date of the range, started within its own max_active_runs",
    request_body = BackfillBody,
    responses((status = 200, body = BackfillResponse)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn create(
    State(state): State<AppState>,
    user: ApiUser,
    body: Body<BackfillBody>,
) -> ApiResult<Json<BackfillResponse>> {
    user.require(Permission::Operate)?;
    let c = check(&state, &user, read_body(body)?).await?;
    let (backfill, _) = state
        .store()
        .backfill_create(&c.dag, &c.hash, &c.new, &c.infos, Utc::now())
        .await
        .map_err(|e| match e {
            BackfillError::AlreadyRunning { .. } => {
                ApiError::new(axum::http::StatusCode::CONFLICT, e.to_string())
            }
            BackfillError::NothingToDo(_) => ApiError::invalid(&["body"], e.to_string()),
            BackfillError::Trigger(t) => ApiError::bad_request(t.to_string()),
            BackfillError::Store(s) => s.into(),
        })?;
    audit(
        &state,
        &user,
        "create_backfill",
        Some(&backfill.dag_id),
        None,
    )
    .await;
    Ok(Json(response(&backfill)))
}

#[utoipa::path(post, path = "/api/v2/backfills/dry_run", tag = "Backfill",
    summary = "The logical dates a backfill would run, without creating it",
    request_body = BackfillBody,
    responses((status = 200, body = DryRunCollection)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn dry_run(
    State(state): State<AppState>,
    user: ApiUser,
    body: Body<BackfillBody>,
) -> ApiResult<Json<DryRunCollection>> {
    user.require(Permission::Operate)?;
    let c = check(&state, &user, read_body(body)?).await?;
    let plan = state
        .store()
        .backfill_plan(
            &c.new.dag_id,
            &c.infos,
            c.new.reprocess,
            c.new.run_backwards,
        )
        .await?;
    let backfills: Vec<DryRunBackfill> = plan
        .iter()
        .filter(|(_, p)| !matches!(p, Planned::Skip(_)))
        .map(|(info, _)| DryRunBackfill {
            logical_date: time(Some(info.logical_date)),
        })
        .collect();
    Ok(Json(DryRunCollection {
        total_entries: backfills.len(),
        backfills,
    }))
}

#[utoipa::path(get, path = "/api/v2/backfills", tag = "Backfill",
    summary = "Backfills, newest first",
    params(
        ("dag_id" = Option<String>, Query),
        ("limit" = Option<i64>, Query, minimum = 0),
        ("offset" = Option<i64>, Query, minimum = 0),
    ),
    responses((status = 200, body = BackfillCollection)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn list(
    State(state): State<AppState>,
    user: ApiUser,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<BackfillCollection>> {
    user.require(Permission::Read)?;
    let pairs = query_pairs(raw.as_deref())?;
    let (limit, offset) = paging(&pairs)?;
    let dag_id = pairs
        .iter()
        .find(|(k, _)| k == "dag_id")
        .map(|(_, v)| v.as_str());
    let (rows, total) = state
        .store()
        .backfill_list(
            dag_id,
            i64::try_from(limit).unwrap_or(100),
            i64::try_from(offset).unwrap_or(i64::MAX),
        )
        .await?;
    Ok(Json(BackfillCollection {
        backfills: rows.iter().map(response).collect(),
        total_entries: total,
    }))
}

#[utoipa::path(get, path = "/api/v2/backfills/{backfill_id}", tag = "Backfill",
    summary = "One backfill",
    params(("backfill_id" = i64, Path)),
    responses((status = 200, body = BackfillResponse)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn get_one(
    State(state): State<AppState>,
    user: ApiUser,
    Path(id): Path<i64>,
) -> ApiResult<Json<BackfillResponse>> {
    user.require(Permission::Read)?;
    let b = state
        .store()
        .backfill_get(id)
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok(Json(response(&b)))
}

async fn set_paused(
    state: &AppState,
    user: &ApiUser,
    id: i64,
    paused: bool,
) -> ApiResult<Json<BackfillResponse>> {
    user.require(Permission::Operate)?;
    let store = state.store();
    let b = store.backfill_get(id).await?.ok_or_else(|| not_found(id))?;
    if b.completed_at.is_some() {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            format!(
                "Backfill {id} has completed and cannot be {}",
                if paused { "paused" } else { "unpaused" }
            ),
        ));
    }
    let b = store
        .backfill_set_paused(id, paused, Utc::now())
        .await?
        .ok_or_else(|| not_found(id))?;
    let event = if paused {
        "pause_backfill"
    } else {
        "unpause_backfill"
    };
    audit(state, user, event, Some(&b.dag_id), None).await;
    Ok(Json(response(&b)))
}

#[utoipa::path(put, path = "/api/v2/backfills/{backfill_id}/pause", tag = "Backfill",
    summary = "Pause a backfill: its queued runs wait",
    params(("backfill_id" = i64, Path)),
    responses((status = 200, body = BackfillResponse)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn pause(
    State(state): State<AppState>,
    user: ApiUser,
    Path(id): Path<i64>,
) -> ApiResult<Json<BackfillResponse>> {
    set_paused(&state, &user, id, true).await
}

#[utoipa::path(put, path = "/api/v2/backfills/{backfill_id}/unpause", tag = "Backfill",
    summary = "Unpause a backfill",
    params(("backfill_id" = i64, Path)),
    responses((status = 200, body = BackfillResponse)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn unpause(
    State(state): State<AppState>,
    user: ApiUser,
    Path(id): Path<i64>,
) -> ApiResult<Json<BackfillResponse>> {
    set_paused(&state, &user, id, false).await
}

#[utoipa::path(put, path = "/api/v2/backfills/{backfill_id}/cancel", tag = "Backfill",
    summary = "Cancel a backfill: its queued runs fail, running ones finish",
    params(("backfill_id" = i64, Path)),
    responses((status = 200, body = BackfillResponse)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn cancel(
    State(state): State<AppState>,
    user: ApiUser,
    Path(id): Path<i64>,
) -> ApiResult<Json<BackfillResponse>> {
    user.require(Permission::Operate)?;
    let b = state
        .store()
        .backfill_cancel(id, Utc::now())
        .await?
        .ok_or_else(|| not_found(id))?;
    audit(&state, &user, "cancel_backfill", Some(&b.dag_id), None).await;
    Ok(Json(response(&b)))
}

/// For the UI: parses a `datetime-local` or RFC 3339 value.
pub fn parse_form_time(text: &str) -> Option<DateTime<Utc>> {
    let t = text.trim();
    DateTime::parse_from_rfc3339(t)
        .map(|d| d.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M")
                .ok()
                .map(|n| n.and_utc())
        })
        .or_else(|| {
            chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|n| n.and_utc())
        })
}
