//! `/api/v2/dags`: list, get, pause and delete DAGs, their details and their tasks, in
//! Airflow's `DAGResponse`, `DAGDetailsResponse` and `TaskResponse` shapes.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use flow_dag::{Dag, Task};
use flow_model::{DagRunState, Permission};
use flow_store::{DagDelete, DagRow, RunQuery};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::schema::{
    DagCollection, DagDetails, DagResponse, DagTag, ErrorBody, TaskCollection, TaskResponse,
    TimeDelta,
};
use super::{ApiError, ApiResult, ApiUser, Body, query_pairs, read_body};
use crate::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, patch_many))
        .routes(routes!(get_one, patch_one, delete_one))
        .routes(routes!(details))
        .routes(routes!(tasks))
        .routes(routes!(task))
}

/// Airflow's datetime form: ISO 8601, UTC as `Z`.
pub fn time(t: Option<DateTime<Utc>>) -> Option<String> {
    t.map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

fn dag_response(d: &DagRow, has_import_errors: bool) -> DagResponse {
    let owners: Vec<String> = d
        .owners
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(str::to_owned)
        .collect();
    // Runs made by assets or messages alone are not on a clock (Airflow's asset timetable
    // is not periodic either).
    let periodic = !matches!(
        d.schedule.as_str(),
        "None" | "none" | "" | "@once" | "@continuous" | "Asset"
    ) && !d.schedule.starts_with("kafka:");
    DagResponse {
        dag_id: d.dag_id.clone(),
        dag_display_name: d.dag_id.clone(),
        is_paused: d.is_paused,
        is_stale: !d.is_active,
        last_parsed_time: time(Some(d.last_parsed_time)),
        last_parse_duration: None,
        last_expired: None,
        bundle_name: Some("dags-folder".into()),
        bundle_version: None,
        relative_fileloc: Some(d.relative_fileloc.clone()),
        fileloc: d.fileloc.clone(),
        description: d.description.clone(),
        timetable_summary: Some(d.timetable_summary.clone()),
        timetable_description: Some(d.timetable_summary.clone()),
        timetable_partitioned: false,
        // Client 3.3 requires these: cron and interval schedules are periodic and backfillable.
        timetable_periodic: periodic,
        is_backfillable: periodic,
        tags: d
            .tags
            .iter()
            .map(|t| DagTag {
                name: t.clone(),
                dag_id: d.dag_id.clone(),
                dag_display_name: d.dag_id.clone(),
            })
            .collect(),
        max_active_tasks: d.max_active_tasks,
        max_active_runs: Some(d.max_active_runs),
        max_consecutive_failed_dag_runs: 0,
        has_task_concurrency_limits: false,
        has_import_errors,
        next_dagrun_logical_date: time(d.next_dagrun),
        next_dagrun_data_interval_start: time(d.next_dagrun_data_interval_start),
        next_dagrun_data_interval_end: time(d.next_dagrun_data_interval_end),
        next_dagrun_run_after: time(d.next_dagrun_create_after),
        owners,
        allowed_run_types: None,
        file_token: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&d.relative_fileloc),
    }
}

/// Query parameters of `GET /dags` and `PATCH /dags` that flow supports (others are accepted
/// and ignored, as FastAPI ignores unknown ones).
#[derive(Default)]
struct ListQuery {
    limit: Option<String>,
    offset: Option<String>,
    dag_id_pattern: Option<String>,
    paused: Option<String>,
    tags: Vec<String>,
    tags_match_mode: Option<String>,
    owners: Vec<String>,
    order_by: Option<String>,
    exclude_stale: Option<String>,
    update_mask: Vec<String>,
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

/// A `*_pattern` parameter as Airflow reads it: case-insensitive `ILIKE '%term%'` for each
/// `|`-separated term (`%` and `_` stay wildcards); `~` or nothing matches everything
/// (`None`).
fn like_terms(pattern: &str) -> Option<Vec<String>> {
    if pattern == "~" || pattern.trim().is_empty() {
        return None;
    }
    Some(
        pattern
            .split('|')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| format!("%{}%", t.to_lowercase()))
            .collect(),
    )
}

fn matches_pattern(pattern: &str, text: &str) -> bool {
    let t: Vec<char> = text.to_lowercase().chars().collect();
    like_terms(pattern).is_none_or(|terms| {
        terms.iter().any(|p| {
            let p: Vec<char> = p.chars().collect();
            like(&p, &t)
        })
    })
}

/// SQL `LIKE` (`%` any run, `_` one character), in time proportional to the pattern's length
/// times the text's at worst: on a mismatch it resumes after the last `%` only, instead of
/// trying every split (which made a pattern with many `%` take exponential time).
fn like(p: &[char], t: &[char]) -> bool {
    let (mut pi, mut ti) = (0, 0);
    // After the last `%` seen: where the pattern resumes and which text position it took.
    let mut resume: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('%') => {
                resume = Some((pi + 1, ti));
                pi += 1;
            }
            Some(&c) if c == '_' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match resume {
                // Let the last `%` swallow one more character and try again from there.
                Some((after, taken)) => {
                    resume = Some((after, taken + 1));
                    pi = after;
                    ti = taken + 1;
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == '%')
}

#[cfg(test)]
mod like_tests {
    use super::*;

    fn like_str(p: &str, t: &str) -> bool {
        let p: Vec<char> = p.chars().collect();
        let t: Vec<char> = t.chars().collect();
        like(&p, &t)
    }

    #[test]
    fn like_matches_as_sql_does() {
        for (p, t, want) in [
            ("%etl%", "my_etl_daily", true),
            ("%etl%", "my_elt", false),
            ("etl%", "etl_daily", true),
            ("etl%", "my_etl", false),
            ("%daily", "etl_daily", true),
            ("e_l", "etl", true),
            ("e_l", "el", false),
            ("%", "", true),
            ("", "", true),
            ("", "a", false),
            ("%a%b%", "xxaxxbxx", true),
            ("%a%b%", "xxbxxaxx", false),
            ("_é_", "aéb", true),
        ] {
            assert_eq!(like_str(p, t), want, "{p} vs {t}");
        }
    }

    /// Any Viewer can send this: with the old backtracking matcher it took exponential time
    /// (longer than the test suite); now it is a few thousand steps.
    #[test]
    fn many_wildcards_stay_cheap() {
        let pattern = format!("{}b", "%a".repeat(40));
        let text = "a".repeat(5000);
        assert!(!like_str(&pattern, &text));
        assert!(matches_pattern(&format!("{}|x", "%".repeat(500)), &text));
    }
}

/// The DAGs a list query selects, ordered, before paging.
async fn select(state: &AppState, q: &ListQuery) -> ApiResult<Vec<DagRow>> {
    let paused = parse_bool("paused", q.paused.as_deref())?;
    let exclude_stale = parse_bool("exclude_stale", q.exclude_stale.as_deref())?.unwrap_or(true);
    let match_all = match q.tags_match_mode.as_deref() {
        None | Some("any") => false,
        Some("all") => true,
        Some(_) => {
            return Err(ApiError::invalid(
                &["query", "tags_match_mode"],
                "Input should be 'any' or 'all'",
            ));
        }
    };
    let mut dags: Vec<DagRow> = state
        .store()
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
        .filter(|d| {
            q.tags.is_empty()
                || if match_all {
                    q.tags.iter().all(|t| d.tags.contains(t))
                } else {
                    q.tags.iter().any(|t| d.tags.contains(t))
                }
        })
        .filter(|d| {
            q.owners.is_empty()
                || q.owners
                    .iter()
                    .any(|o| d.owners.split(',').any(|x| x.trim() == o))
        })
        .collect();
    match q.order_by.as_deref().unwrap_or("dag_id") {
        "dag_id" | "dag_display_name" => dags.sort_by(|a, b| a.dag_id.cmp(&b.dag_id)),
        "-dag_id" | "-dag_display_name" => dags.sort_by(|a, b| b.dag_id.cmp(&a.dag_id)),
        "next_dagrun" => {
            dags.sort_by(|a, b| (a.next_dagrun, &a.dag_id).cmp(&(b.next_dagrun, &b.dag_id)))
        }
        "-next_dagrun" => {
            dags.sort_by(|a, b| (b.next_dagrun, &b.dag_id).cmp(&(a.next_dagrun, &a.dag_id)))
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "Ordering with '{other}' is disallowed or the attribute does not exist on the model"
            )));
        }
    }
    Ok(dags)
}

/// A page of DAGs in Airflow's envelope.
async fn page(state: &AppState, q: &ListQuery, dags: &[DagRow]) -> ApiResult<DagCollection> {
    let limit = parse_int("limit", q.limit.as_deref(), 50)?.min(100);
    let offset = parse_int("offset", q.offset.as_deref(), 0)?;
    let errors: std::collections::HashSet<String> = state
        .store()
        .import_errors()
        .await?
        .into_iter()
        .map(|e| e.filename)
        .collect();
    Ok(DagCollection {
        dags: dags
            .iter()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .take(usize::try_from(limit).unwrap_or(0))
            .map(|d| dag_response(d, errors.contains(&d.fileloc)))
            .collect(),
        total_entries: dags.len(),
    })
}

#[utoipa::path(get, path = "/api/v2/dags", tag = "DAG", summary = "List DAGs",
    params(
        ("limit" = Option<i64>, Query, minimum = 0, description = "At most this many (default 50, clamped to 100)"),
        ("offset" = Option<i64>, Query, minimum = 0),
        ("dag_id_pattern" = Option<String>, Query, description = "Case-insensitive substring; `%` and `_` are wildcards; `~` matches all"),
        ("paused" = Option<bool>, Query),
        ("exclude_stale" = Option<bool>, Query, description = "Leave out DAGs whose file is gone (default true)"),
        ("tags" = Option<Vec<String>>, Query, explode = true),
        ("tags_match_mode" = Option<String>, Query, description = "`any` (default) or `all`"),
        ("owners" = Option<Vec<String>>, Query, explode = true),
        ("order_by" = Option<String>, Query, description = "`dag_id`, `dag_display_name` or `next_dagrun`, `-` for descending"),
    ),
    responses((status = 200, body = DagCollection)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn list(
    State(state): State<AppState>,
    user: ApiUser,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<DagCollection>> {
    user.require(Permission::Read)?;
    let q = parse_list_query(raw.as_deref())?;
    if q.tags.is_empty() && q.owners.is_empty() {
        return sql_page(&state, &q).await.map(Json);
    }
    let dags = select(&state, &q).await?;
    page(&state, &q, &dags).await.map(Json)
}

/// The common list, filtered, ordered and paged by the database.
async fn sql_page(state: &AppState, q: &ListQuery) -> ApiResult<DagCollection> {
    parse_bool("exclude_stale", q.exclude_stale.as_deref())?;
    let (by_next_dagrun, descending) = match q.order_by.as_deref().unwrap_or("dag_id") {
        "dag_id" | "dag_display_name" => (false, false),
        "-dag_id" | "-dag_display_name" => (false, true),
        "next_dagrun" => (true, false),
        "-next_dagrun" => (true, true),
        other => {
            return Err(ApiError::bad_request(format!(
                "Ordering with '{other}' is disallowed or the attribute does not exist on the model"
            )));
        }
    };
    let query = flow_store::DagQuery {
        dag_id_like: q
            .dag_id_pattern
            .as_deref()
            .and_then(like_terms)
            .unwrap_or_default(),
        paused: parse_bool("paused", q.paused.as_deref())?,
        by_next_dagrun,
        descending,
        limit: parse_int("limit", q.limit.as_deref(), 50)?.min(100),
        offset: parse_int("offset", q.offset.as_deref(), 0)?,
    };
    let store = state.store();
    let (rows, total) = store.dag_query(&query).await?;
    let errors: std::collections::HashSet<String> = if rows.is_empty() {
        std::collections::HashSet::new()
    } else {
        store
            .import_errors()
            .await?
            .into_iter()
            .map(|e| e.filename)
            .collect()
    };
    Ok(DagCollection {
        dags: rows
            .iter()
            .map(|d| dag_response(d, errors.contains(&d.fileloc)))
            .collect(),
        total_entries: usize::try_from(total).unwrap_or(0),
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = DAGPatchBody)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    is_paused: bool,
}

fn check_update_mask(mask: &[String]) -> ApiResult<()> {
    if mask.iter().any(|m| m != "is_paused") {
        return Err(ApiError::bad_request(
            "Only `is_paused` field can be updated through the REST API",
        ));
    }
    Ok(())
}

/// `PATCH /dags`: pause or unpause every DAG the filters select. As in Airflow, nothing is
/// selected unless `dag_id_pattern` is given (`~` for all).
#[utoipa::path(patch, path = "/api/v2/dags", tag = "DAG", summary = "Pause or unpause many DAGs",
    params(
        ("dag_id_pattern" = Option<String>, Query, description = "Required to select anything; `~` for all"),
        ("limit" = Option<i64>, Query, minimum = 0),
        ("offset" = Option<i64>, Query, minimum = 0),
        ("paused" = Option<bool>, Query),
        ("exclude_stale" = Option<bool>, Query),
        ("tags" = Option<Vec<String>>, Query, explode = true),
        ("tags_match_mode" = Option<String>, Query),
        ("owners" = Option<Vec<String>>, Query, explode = true),
        ("update_mask" = Option<Vec<String>>, Query, explode = true, description = "Only `is_paused`"),
    ),
    request_body = PatchBody,
    responses((status = 200, description = "The DAGs changed, as they are now", body = DagCollection)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn patch_many(
    State(state): State<AppState>,
    user: ApiUser,
    RawQuery(raw): RawQuery,
    body: Body<PatchBody>,
) -> ApiResult<Json<DagCollection>> {
    user.require(Permission::EditDags)?;
    let body = read_body(body)?;
    let mut q = parse_list_query(raw.as_deref())?;
    check_update_mask(&q.update_mask)?;
    if q.dag_id_pattern.is_none() {
        return Ok(Json(DagCollection {
            dags: Vec::new(),
            total_entries: 0,
        }));
    }
    q.order_by = None;
    let selected = select(&state, &q).await?;
    for d in &selected {
        if d.is_paused != body.is_paused {
            state
                .store()
                .dag_set_paused(&d.dag_id, body.is_paused)
                .await?;
            let event = if body.is_paused { "paused" } else { "unpaused" };
            super::audit(&state, &user, event, Some(&d.dag_id), None).await;
        }
    }
    let ids: std::collections::HashSet<&str> = selected.iter().map(|d| d.dag_id.as_str()).collect();
    let mut after: Vec<DagRow> = state
        .store()
        .dag_list()
        .await?
        .into_iter()
        .filter(|d| ids.contains(d.dag_id.as_str()))
        .collect();
    after.sort_by(|a, b| a.dag_id.cmp(&b.dag_id));
    page(&state, &q, &after).await.map(Json)
}

fn parse_list_query(raw: Option<&str>) -> ApiResult<ListQuery> {
    let mut q = ListQuery::default();
    for (k, v) in query_pairs(raw)? {
        match k.as_str() {
            "limit" => q.limit = Some(v),
            "offset" => q.offset = Some(v),
            "dag_id_pattern" => q.dag_id_pattern = Some(v),
            "paused" => q.paused = Some(v),
            "tags" => q.tags.push(v),
            "tags_match_mode" => q.tags_match_mode = Some(v),
            "owners" => q.owners.push(v),
            "order_by" => q.order_by = Some(v),
            "exclude_stale" => q.exclude_stale = Some(v),
            "update_mask" => q.update_mask.push(v),
            _ => {}
        }
    }
    Ok(q)
}

#[utoipa::path(get, path = "/api/v2/dags/{dag_id}", tag = "DAG", summary = "Get a DAG",
    params(("dag_id" = String, Path)),
    responses((status = 200, body = DagResponse)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn get_one(
    State(state): State<AppState>,
    user: ApiUser,
    Path(dag_id): Path<String>,
) -> ApiResult<Json<DagResponse>> {
    user.require(Permission::Read)?;
    one(&state, &dag_id).await.map(|(d, _)| Json(d))
}

/// The DAG's response and its row.
async fn one(state: &AppState, dag_id: &str) -> ApiResult<(DagResponse, DagRow)> {
    let store = state.store();
    let d = store
        .dag_get(dag_id)
        .await?
        .ok_or_else(|| super::dag_not_found(dag_id))?;
    let has_errors = store
        .import_errors()
        .await?
        .iter()
        .any(|e| e.filename == d.fileloc);
    Ok((dag_response(&d, has_errors), d))
}

#[utoipa::path(patch, path = "/api/v2/dags/{dag_id}", tag = "DAG", summary = "Pause or unpause a DAG",
    params(
        ("dag_id" = String, Path),
        ("update_mask" = Option<Vec<String>>, Query, explode = true, description = "Only `is_paused`"),
    ),
    request_body = PatchBody,
    responses((status = 200, body = DagResponse)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn patch_one(
    State(state): State<AppState>,
    user: ApiUser,
    Path(dag_id): Path<String>,
    RawQuery(raw): RawQuery,
    body: Body<PatchBody>,
) -> ApiResult<Json<DagResponse>> {
    user.require(Permission::EditDags)?;
    let body = read_body(body)?;
    check_update_mask(&parse_list_query(raw.as_deref())?.update_mask)?;
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
    one(&state, &dag_id).await.map(|(d, _)| Json(d))
}

/// `DELETE /dags/{dag_id}`: the DAG's metadata and history go; its file stays, so the DAG
/// returns when the file is parsed again. 409 while any of its tasks is queued or running.
#[utoipa::path(delete, path = "/api/v2/dags/{dag_id}", tag = "DAG",
    summary = "Delete a DAG's metadata and history",
    params(("dag_id" = String, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 409, description = "Task instances of the DAG are running", body = ErrorBody),
    ),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn delete_one(
    State(state): State<AppState>,
    user: ApiUser,
    Path(dag_id): Path<String>,
) -> ApiResult<Response> {
    user.require(Permission::EditDags)?;
    match state.store().dag_delete(&dag_id).await? {
        DagDelete::NotFound => Err(ApiError::not_found(format!(
            "Dag with id: {dag_id} was not found"
        ))),
        DagDelete::Running => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("Task instances of dag with id: '{dag_id}' are still running"),
        )),
        DagDelete::Deleted => {
            super::audit(&state, &user, "delete dag", Some(&dag_id), None).await;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
    }
}

/// The DAG's params as Airflow serialises them in DAG details.
fn params_json(params: &indexmap::IndexMap<String, flow_dag::Param>) -> Value {
    params
        .iter()
        .map(|(name, p)| {
            (
                name.clone(),
                json!({
                    "__class": "airflow.sdk.definitions.param.Param",
                    "value": p.default,
                    "description": p.description,
                    "schema": p.schema,
                }),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// A duration as pydantic prints a timedelta (`PT1H30M`, `P1D`).
fn iso_duration(d: chrono::TimeDelta) -> String {
    let secs = u64::try_from(d.num_seconds()).unwrap_or(0);
    let micros = u32::try_from(d.subsec_nanos() / 1000).unwrap_or(0);
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let mut out = String::from("P");
    if days > 0 {
        out.push_str(&format!("{days}D"));
    }
    if rest > 0 || micros > 0 || days == 0 {
        out.push('T');
        let (h, m, s) = (rest / 3600, rest % 3600 / 60, rest % 60);
        if h > 0 {
            out.push_str(&format!("{h}H"));
        }
        if m > 0 {
            out.push_str(&format!("{m}M"));
        }
        if micros > 0 {
            out.push_str(&format!("{s}.{micros:06}S"));
        } else if s > 0 || (h == 0 && m == 0) {
            out.push_str(&format!("{s}S"));
        }
    }
    out
}

#[utoipa::path(get, path = "/api/v2/dags/{dag_id}/details", tag = "DAG",
    summary = "Get a DAG with its schedule, params and other settings",
    params(("dag_id" = String, Path)),
    responses((status = 200, body = DagDetails)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn details(
    State(state): State<AppState>,
    user: ApiUser,
    Path(dag_id): Path<String>,
) -> ApiResult<Json<DagDetails>> {
    user.require(Permission::Read)?;
    let (response, row) = one(&state, &dag_id).await?;
    let (dag, _) = super::load_dag(&state, &dag_id)
        .await?
        .ok_or_else(|| super::dag_not_found(&dag_id))?;
    let (_, active) = state
        .store()
        .dag_run_query(&RunQuery {
            dag_ids: vec![dag_id.clone()],
            states: vec![DagRunState::Queued, DagRunState::Running],
            limit: 0,
            ..RunQuery::default()
        })
        .await?;
    let owner_links = (!dag.owner_links.is_empty()).then(|| {
        dag.owner_links
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    });
    Ok(Json(DagDetails {
        catchup: dag.catchup,
        dag_run_timeout: dag.dagrun_timeout.map(iso_duration),
        asset_expression: dag
            .asset_schedule
            .as_ref()
            .map(flow_dag::assets::AssetCondition::airflow_expression),
        doc_md: dag.doc_md.clone(),
        start_date: time(dag.start_date),
        end_date: time(dag.end_date),
        is_paused_upon_creation: dag.is_paused_upon_creation,
        params: Some(params_json(&dag.params)),
        render_template_as_native_obj: dag.render_template_as_native_obj,
        template_search_path: None,
        timezone: Some(dag.timetable.timezone.name().to_owned()),
        last_parsed: time(Some(row.last_parsed_time)),
        default_args: None,
        owner_links,
        is_favorite: false,
        active_runs_count: active,
        latest_dag_version: None,
        concurrency: response.max_active_tasks,
        dag: response,
    }))
}

fn task_response(dag: &Dag, t: &Task) -> TaskResponse {
    let def = t.operator.def();
    let (module_path, class_name, template_fields, ui_color) =
        (def.module, def.class, def.template_fields, def.ui_color);
    TaskResponse {
        task_id: t.task_id.to_string(),
        task_display_name: t
            .display_name
            .clone()
            .unwrap_or_else(|| t.task_id.to_string()),
        owner: Some(t.owner.clone()),
        start_date: time(dag.start_date),
        end_date: time(dag.end_date),
        trigger_rule: Some(t.trigger_rule.as_str().to_owned()),
        depends_on_past: t.depends_on_past,
        wait_for_downstream: t.wait_for_downstream,
        retries: Some(f64::from(t.retries)),
        queue: Some(t.queue.clone()),
        pool: Some(t.pool.to_string()),
        pool_slots: Some(f64::from(t.pool_slots)),
        execution_timeout: t.execution_timeout.map(TimeDelta::from_duration),
        retry_delay: Some(TimeDelta::from_duration(t.retry_delay)),
        retry_exponential_backoff: if t.retry_exponential_backoff {
            1.0
        } else {
            0.0
        },
        priority_weight: Some(f64::from(t.priority_weight)),
        weight_rule: Some(t.weight_rule.as_str().to_owned()),
        ui_color: Some(ui_color.to_owned()),
        ui_fgcolor: Some("#000".to_owned()),
        template_fields: Some(template_fields.iter().map(|f| (*f).to_owned()).collect()),
        downstream_task_ids: Some(t.downstream.iter().map(ToString::to_string).collect()),
        doc_md: t.doc_md.clone(),
        operator_name: Some(t.operator.class_name().to_owned()),
        params: Some(params_json(&t.params)),
        class_ref: Some(json!({ "module_path": module_path, "class_name": class_name })),
        is_mapped: Some(t.mapping.is_some()),
        extra_links: Vec::new(),
    }
}

#[utoipa::path(get, path = "/api/v2/dags/{dag_id}/tasks", tag = "Task", summary = "List a DAG's tasks",
    params(
        ("dag_id" = String, Path),
        ("order_by" = Option<String>, Query, description = "A task attribute (default `task_id`), `-` for descending"),
    ),
    responses((status = 200, body = TaskCollection)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn tasks(
    State(state): State<AppState>,
    user: ApiUser,
    Path(dag_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<TaskCollection>> {
    user.require(Permission::Read)?;
    let (dag, _) = super::load_dag(&state, &dag_id)
        .await?
        .ok_or_else(|| super::dag_not_found(&dag_id))?;
    let pairs = query_pairs(raw.as_deref())?;
    let order = pairs
        .iter()
        .find(|(k, _)| k == "order_by")
        .map_or("task_id", |(_, v)| v.as_str());
    let (desc, key) = order
        .strip_prefix('-')
        .map_or((false, order), |k| (true, k));
    let mut tasks: Vec<TaskResponse> = dag.tasks.iter().map(|t| task_response(&dag, t)).collect();
    let sort_key = |t: &TaskResponse| -> Option<Value> {
        let v = serde_json::to_value(t).ok()?;
        v.get(key).cloned()
    };
    if tasks.first().is_some_and(|t| sort_key(t).is_none()) {
        return Err(ApiError::bad_request(format!(
            "Ordering with '{key}' is disallowed or the attribute does not exist on the model"
        )));
    }
    tasks.sort_by(|a, b| {
        let (x, y) = (
            sort_key(a).unwrap_or(Value::Null),
            sort_key(b).unwrap_or(Value::Null),
        );
        x.to_string().cmp(&y.to_string())
    });
    if desc {
        tasks.reverse();
    }
    Ok(Json(TaskCollection {
        total_entries: tasks.len(),
        tasks,
    }))
}

#[utoipa::path(get, path = "/api/v2/dags/{dag_id}/tasks/{task_id}", tag = "Task", summary = "Get a task",
    params(("dag_id" = String, Path), ("task_id" = String, Path)),
    responses((status = 200, body = TaskResponse)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn task(
    State(state): State<AppState>,
    user: ApiUser,
    Path((dag_id, task_id)): Path<(String, String)>,
) -> ApiResult<Json<TaskResponse>> {
    user.require(Permission::Read)?;
    let (dag, _) = super::load_dag(&state, &dag_id)
        .await?
        .ok_or_else(|| super::dag_not_found(&dag_id))?;
    let t = dag
        .task(&task_id)
        .ok_or_else(|| ApiError::not_found(format!("Task with id {task_id} was not found")))?;
    Ok(Json(task_response(&dag, t)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_as_airflow_matches_them() {
        assert!(matches_pattern("~", "anything"));
        assert!(matches_pattern("etl", "daily_ETL_job"));
        assert!(matches_pattern("etl%", "etl_daily"));
        assert!(
            matches_pattern("etl%", "daily_etl"),
            "a substring, as ILIKE '%etl%%'"
        );
        assert!(matches_pattern("e_l", "etl"));
        assert!(!matches_pattern("e_l", "el"));
        assert!(
            matches_pattern("nope | etl", "etl_daily"),
            "`|` separates terms"
        );
        assert!(!matches_pattern("nope|other", "etl_daily"));
    }
}
