//! The pages and form actions of the dashboard.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::Form;
use axum::Router;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Json, Redirect, Response};
use axum::routing::{get, post};
use chrono::Utc;
use flow_dag::Dag;
use flow_model::{DagRunState, Permission, TaskInstanceState};
use flow_store::{AuditEvent, TiKey, TriggerError, TriggerRequest};
use serde::Deserialize;

use crate::auth::{self, SESSION_COOKIE, SESSION_TTL};
use crate::session::cookie;
use crate::views::{self, Chrome, fmt_duration, fmt_time, page, url_encode};
use crate::{AppState, CurrentUser, HttpError};

/// The pre-login CSRF cookie (double submit: the login form must echo it).
const LOGIN_CSRF_COOKIE: &str = "flow_login_csrf";
/// DAGs per page on the home page.
const PAGE_SIZE: usize = 50;
/// Log lines per page (the live tail asks for more as they come).
const LOG_PAGE: i64 = 5000;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/", get(home))
        .route("/import-errors", get(import_errors))
        .route("/audit", get(audit_page))
        .route("/dags/{dag_id}", get(dag_page))
        .route("/dags/{dag_id}/pause", post(pause))
        .route("/dags/{dag_id}/favorite", post(favorite))
        .route("/dags/{dag_id}/trigger", get(trigger_form).post(trigger))
        .route("/dags/{dag_id}/backfill", post(backfill))
        .route("/dags/{dag_id}/runs/{run_id}/mark", post(mark_run))
        .route("/dags/{dag_id}/runs/{run_id}/delete", post(delete_run))
        .route(
            "/dags/{dag_id}/runs/{run_id}/clear",
            get(clear_form).post(clear),
        )
        .route(
            "/dags/{dag_id}/runs/{run_id}/tasks/{task_id}",
            get(task_page),
        )
        .route(
            "/dags/{dag_id}/runs/{run_id}/tasks/{task_id}/log",
            get(task_log),
        )
        .route(
            "/dags/{dag_id}/runs/{run_id}/tasks/{task_id}/log/stream",
            get(task_log_stream),
        )
        .route(
            "/dags/{dag_id}/runs/{run_id}/tasks/{task_id}/log/raw",
            get(task_log_raw),
        )
        .route(
            "/dags/{dag_id}/runs/{run_id}/tasks/{task_id}/mark",
            post(mark_task),
        )
        .route("/pools", get(pools_page).post(pools_set))
        .route("/pools/delete", post(pools_delete))
        .route("/variables", get(variables_page).post(variables_set))
        .route("/variables/delete", post(variables_delete))
}

// ---- health and login ----

/// Airflow's `/health`: the metadatabase, and the scheduler by its latest heartbeat (healthy
/// within 30 s, Airflow's `scheduler_health_check_threshold`).
async fn health(State(state): State<AppState>) -> Response {
    let (db_ok, heartbeat, scheduler_ok) = crate::health_status(state.store()).await;
    let status = |ok: bool| if ok { "healthy" } else { "unhealthy" };
    let (db, scheduler) = (status(db_ok), status(scheduler_ok));
    Json(serde_json::json!({
        "metadatabase": { "status": db },
        "scheduler": {
            "status": scheduler,
            "latest_scheduler_heartbeat": heartbeat.map(|h| h.to_rfc3339()),
        },
    }))
    .into_response()
}

#[derive(Deserialize)]
struct NextQuery {
    next: Option<String>,
}

fn set_cookie(state: &AppState, name: &str, value: &str, max_age_secs: i64) -> HeaderValue {
    let secure = if state.inner.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    let text =
        format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age_secs}{secure}");
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

async fn login_form(
    State(state): State<AppState>,
    Query(q): Query<NextQuery>,
) -> Result<Response, HttpError> {
    let csrf = auth::random_token(24)?;
    let body = views::LoginPage {
        error: None,
        next: auth::safe_next(q.next.as_deref()),
        csrf: csrf.clone(),
    };
    let mut response = page(&body);
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&state, LOGIN_CSRF_COOKIE, &csrf, 3600),
    );
    Ok(response)
}

#[derive(Deserialize)]
struct LoginForm {
    username: String,
    password: String,
    csrf_token: String,
    next: Option<String>,
}

async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<Response, HttpError> {
    let expected = cookie(&headers, LOGIN_CSRF_COOKIE).unwrap_or("");
    if expected.is_empty() || !auth::constant_time_eq(expected, &form.csrf_token) {
        return Err(HttpError::Csrf);
    }
    let ip = Some(peer.ip());
    let next = auth::safe_next(form.next.as_deref());
    let retry = |error: &str| -> Result<Response, HttpError> {
        let csrf = auth::random_token(24)?;
        let mut response = page(&views::LoginPage {
            error: Some(error.to_owned()),
            next: next.clone(),
            csrf: csrf.clone(),
        });
        *response.status_mut() = axum::http::StatusCode::UNAUTHORIZED;
        response.headers_mut().append(
            header::SET_COOKIE,
            set_cookie(&state, LOGIN_CSRF_COOKIE, &csrf, 3600),
        );
        Ok(response)
    };
    match state.inner.limiter.check(ip, &form.username) {
        auth::LoginVerdict::Allowed => {}
        auth::LoginVerdict::SlowDown(pause) => tokio::time::sleep(pause).await,
        auth::LoginVerdict::Blocked(_) => return Err(HttpError::TooManyAttempts),
    }
    let found = state.store().user_for_login(&form.username).await?;
    // Verify against a dummy hash for unknown users: same cost, no enumeration by timing.
    let password = form.password.clone();
    let hash = found
        .as_ref()
        .map_or_else(|| auth::dummy_hash().to_owned(), |(_, h)| h.clone());
    let ok = tokio::task::spawn_blocking(move || auth::verify_password(&password, &hash))
        .await
        .map_err(|e| HttpError::Internal(e.to_string()))?;
    let user = match found {
        Some((user, _)) if ok && user.active => user,
        _ => {
            state.inner.limiter.record_failure(ip, &form.username);
            tracing::info!(username = %form.username, client = %peer.ip(), "failed login");
            return retry("Wrong username or password.");
        }
    };
    state.inner.limiter.record_success(ip, &form.username);
    // A new session id at every login: a session id planted before login is worthless.
    let session_id = auth::random_token(32)?;
    let csrf = auth::random_token(24)?;
    let now = Utc::now();
    state
        .store()
        .session_create(&session_id, &user.username, &csrf, now, now + SESSION_TTL)
        .await?;
    audit(&state, &user.username, "login", None, None, None, None).await;
    let mut response = Redirect::to(&next).into_response();
    let signed = state.inner.signer.sign(&session_id);
    let h = response.headers_mut();
    h.append(
        header::SET_COOKIE,
        set_cookie(&state, SESSION_COOKIE, &signed, SESSION_TTL.num_seconds()),
    );
    h.append(
        header::SET_COOKIE,
        set_cookie(&state, LOGIN_CSRF_COOKIE, "", 0),
    );
    Ok(response)
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf_token: String,
}

async fn logout(
    State(state): State<AppState>,
    user: CurrentUser,
    Form(form): Form<CsrfForm>,
) -> Result<Response, HttpError> {
    user.check_csrf(&form.csrf_token)?;
    state.store().session_delete(&user.session_id).await?;
    audit(&state, &user.username, "logout", None, None, None, None).await;
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&state, SESSION_COOKIE, "", 0),
    );
    Ok(response)
}

/// Records an action; a failure to record is logged, not shown (the action itself happened).
pub(crate) async fn audit(
    state: &AppState,
    username: &str,
    event: &str,
    dag_id: Option<&str>,
    run_id: Option<&str>,
    task_id: Option<&str>,
    extra: Option<&str>,
) {
    let e = AuditEvent {
        username,
        event,
        dag_id,
        run_id,
        task_id,
        extra,
    };
    if let Err(err) = state.store().audit_record(&e, Utc::now()).await {
        tracing::warn!(error = %err, event, "could not write the audit log");
    }
}

// ---- pages ----

#[derive(Deserialize, Default)]
struct HomeQuery {
    search: Option<String>,
    tag: Option<String>,
    paused: Option<String>,
    page: Option<usize>,
    /// Only the user's favourite DAGs.
    favorites: Option<String>,
}

async fn home(
    State(state): State<AppState>,
    user: CurrentUser,
    Query(q): Query<HomeQuery>,
) -> Result<Response, HttpError> {
    user.require(Permission::Read)?;
    let store = state.store();
    let search = q.search.unwrap_or_default().trim().to_lowercase();
    let tag = q.tag.unwrap_or_default();
    let paused_filter = q.paused.unwrap_or_default();
    let all = store.dag_list().await?;
    let matching: Vec<_> = all
        .into_iter()
        .filter(|d| search.is_empty() || d.dag_id.to_lowercase().contains(&search))
        .filter(|d| tag.is_empty() || d.tags.contains(&tag))
        .filter(|d| match paused_filter.as_str() {
            "active" => !d.is_paused,
            "paused" => d.is_paused,
            _ => true,
        })
        .collect();
    // The user's favourites first, each group in the list's own order.
    let favorites = store.dag_favorites(&user.username).await?;
    let mut matching: Vec<_> = matching
        .into_iter()
        .filter(|d| q.favorites.is_none() || favorites.contains(&d.dag_id))
        .collect();
    matching.sort_by_key(|d| !favorites.contains(&d.dag_id));
    let mut warnings: HashMap<String, Vec<String>> = HashMap::new();
    for w in store.dag_warnings(None, None).await? {
        warnings.entry(w.dag_id).or_default().push(w.message);
    }
    let total = matching.len();
    let pages = total.div_ceil(PAGE_SIZE).max(1);
    let page_no = q.page.unwrap_or(1).clamp(1, pages);
    let shown: Vec<_> = matching
        .iter()
        .skip((page_no - 1) * PAGE_SIZE)
        .take(PAGE_SIZE)
        .collect();
    let ids: Vec<String> = shown.iter().map(|d| d.dag_id.clone()).collect();
    let mut recent_runs = store.dag_run_recent_states(&ids, 5).await?;
    let mut task_counts = store.ti_state_counts_latest_run(&ids).await?;
    let mut dags = Vec::new();
    for d in shown {
        let recent = recent_runs
            .remove(&d.dag_id)
            .unwrap_or_default()
            .into_iter()
            .map(|(run_id, state)| (state.as_str().to_owned(), run_id))
            .collect();
        dags.push(views::DagListItem {
            dag_id: d.dag_id.clone(),
            dag_id_url: url_encode(&d.dag_id),
            description: d.description.clone().unwrap_or_default(),
            paused: d.is_paused,
            owners: d.owners.clone(),
            schedule: d.schedule.clone(),
            tags: d.tags.iter().map(|t| (t.clone(), url_encode(t))).collect(),
            recent,
            task_counts: task_counts
                .remove(&d.dag_id)
                .unwrap_or_default()
                .into_iter()
                .map(|(s, n)| (s.as_str().to_owned(), n))
                .collect(),
            next_run: fmt_time(&d.next_dagrun),
            favorite: favorites.contains(&d.dag_id),
            warnings: warnings.remove(&d.dag_id).unwrap_or_default(),
        });
    }
    let mut query_base = String::new();
    let favorites_filter = if q.favorites.is_some() {
        "1".to_owned()
    } else {
        String::new()
    };
    for (k, v) in [
        ("search", &search),
        ("tag", &tag),
        ("paused", &paused_filter),
        ("favorites", &favorites_filter),
    ] {
        if !v.is_empty() {
            query_base.push_str(&format!("&{k}={}", url_encode(v)));
        }
    }
    let import_errors = store.import_errors().await?.len();
    Ok(page(&views::HomePage {
        chrome: Chrome::of(&user),
        dags,
        search,
        tag,
        paused_filter,
        page: page_no,
        pages,
        total,
        import_errors,
        query_base,
        favorites_only: q.favorites.is_some(),
        overview: crate::cluster_pages::overview(&state).await?,
    }))
}

async fn import_errors(
    State(state): State<AppState>,
    user: CurrentUser,
) -> Result<Response, HttpError> {
    user.require(Permission::Read)?;
    let errors = state
        .store()
        .import_errors()
        .await?
        .into_iter()
        .map(|e| (e.filename, fmt_time(&Some(e.timestamp)), e.stacktrace))
        .collect();
    Ok(page(&views::ImportErrorsPage {
        chrome: Chrome::of(&user),
        errors,
    }))
}

#[derive(Deserialize)]
struct AuditQuery {
    dag_id: Option<String>,
}

async fn audit_page(
    State(state): State<AppState>,
    user: CurrentUser,
    Query(q): Query<AuditQuery>,
) -> Result<Response, HttpError> {
    user.require(Permission::Read)?;
    let dag_filter = q.dag_id.filter(|d| !d.is_empty());
    let items = state
        .store()
        .audit_list(dag_filter.as_deref(), 500)
        .await?
        .into_iter()
        .map(|a| views::AuditItem {
            at: fmt_time(&Some(a.at)),
            username: a.username,
            event: a.event,
            dag_id: a.dag_id.unwrap_or_default(),
            run_id: a.run_id.unwrap_or_default(),
            task_id: a.task_id.unwrap_or_default(),
            extra: a.extra.unwrap_or_default(),
        })
        .collect();
    Ok(page(&views::AuditPage {
        chrome: Chrome::of(&user),
        items,
        dag_filter: dag_filter.unwrap_or_default(),
    }))
}

/// The DAG as the store holds it (the last version that loaded).
pub(crate) async fn load_dag(state: &AppState, dag_id: &str) -> Result<Dag, HttpError> {
    let (data, _) = state
        .store()
        .serialized_dag_get(dag_id)
        .await?
        .ok_or_else(|| HttpError::NotFound(format!("dag `{dag_id}`")))?;
    Dag::from_json(&data).map_err(|e| HttpError::Internal(format!("serialized dag: {e}")))
}

#[derive(Deserialize)]
struct TabQuery {
    tab: Option<String>,
    /// How many runs the grid shows, and how many newer ones it skips.
    runs: Option<i64>,
    offset: Option<i64>,
    /// Grid rows skipped from the top.
    rows_offset: Option<usize>,
    /// The run whose states colour the graph (default: the latest), or the grid's selection
    /// with `task_id` and `map_index`.
    run_id: Option<String>,
    task_id: Option<String>,
    map_index: Option<i64>,
    /// The Overview tab's window: `24h`, `7d` or `30d`.
    window: Option<String>,
    /// The Versions tab: the version shown and the one it is compared with.
    version: Option<i64>,
    against: Option<i64>,
}

async fn dag_page(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(dag_id): Path<String>,
    Query(q): Query<TabQuery>,
) -> Result<Response, HttpError> {
    user.require(Permission::Read)?;
    let store = state.store();
    let row = store
        .dag_get(&dag_id)
        .await?
        .ok_or_else(|| HttpError::NotFound(format!("dag `{dag_id}`")))?;
    let dag = load_dag(&state, &dag_id).await?;
    let tab = match q.tab.as_deref() {
        Some(t @ ("overview" | "graph" | "gantt" | "runs" | "code" | "details" | "versions")) => {
            t.to_owned()
        }
        _ => "grid".to_owned(),
    };
    let mut body = views::DagPage {
        chrome: Chrome::of(&user),
        dag_id: dag_id.clone(),
        dag_id_url: url_encode(&dag_id),
        description: row.description.clone().unwrap_or_default(),
        paused: row.is_paused,
        tab: tab.clone(),
        grid: None,
        versions: None,
        run_list: Vec::new(),
        code: String::new(),
        details: Vec::new(),
        next_runs: Vec::new(),
        params: String::new(),
        graph: None,
        graph_runs: Vec::new(),
        graph_run_url: String::new(),
        gantt: Vec::new(),
        gantt_span: String::new(),
        overview: None,
    };
    match tab.as_str() {
        "overview" => {
            body.overview = Some(
                crate::cluster_pages::dag_overview(&state, &dag_id, q.window.as_deref()).await?,
            );
        }
        "grid" => {
            let grid_query = crate::grid::GridQuery {
                runs: q.runs,
                offset: q.offset,
                rows_offset: q.rows_offset,
                run_id: q.run_id,
                task_id: q.task_id,
                map_index: q.map_index,
            };
            body.grid = Some(crate::grid::grid(&state, &user, &dag, &grid_query).await?);
        }
        "versions" => {
            body.versions = Some(versions(store, &dag_id, q.version, q.against).await?);
        }
        "gantt" => {
            if let Some(run_id) = select_run(store, &dag_id, q.run_id, &mut body).await? {
                let tis = store.ti_list_for_run(&dag_id, &run_id).await?;
                (body.gantt, body.gantt_span) = gantt(&dag, &tis);
            }
        }
        "graph" => {
            let states: HashMap<String, String> =
                match select_run(store, &dag_id, q.run_id, &mut body).await? {
                    Some(run_id) => store
                        .ti_states_for_runs(&dag_id, std::slice::from_ref(&run_id))
                        .await?
                        .remove(&run_id)
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(t, s)| (t, s.summary().as_str().to_owned()))
                        .collect(),
                    None => HashMap::new(),
                };
            body.graph = Some(crate::graph::layout(&dag, &states));
        }
        "runs" => {
            body.run_list = store
                .dag_run_list(&dag_id, 200)
                .await?
                .into_iter()
                .map(|r| views::RunItem {
                    run_id_url: url_encode(&r.run_id),
                    run_id: r.run_id,
                    state: r.state.as_str().to_owned(),
                    run_type: r.run_type.as_str().to_owned(),
                    logical_date: fmt_time(&r.logical_date),
                    start: fmt_time(&r.start_date),
                    end: fmt_time(&r.end_date),
                    conf: r.conf.to_string(),
                })
                .collect();
        }
        "code" => {
            body.code = store
                .dag_code_get(&row.fileloc)
                .await?
                .unwrap_or_else(|| "(source not available)".to_owned());
        }
        _ => {
            body.details = vec![
                ("file".into(), row.relative_fileloc.clone()),
                ("owner".into(), row.owners.clone()),
                ("schedule".into(), row.schedule.clone()),
                ("timetable".into(), row.timetable_summary.clone()),
                ("tags".into(), row.tags.join(", ")),
                ("max_active_runs".into(), row.max_active_runs.to_string()),
                ("max_active_tasks".into(), row.max_active_tasks.to_string()),
                ("tasks".into(), dag.tasks.len().to_string()),
                ("last parsed".into(), fmt_time(&Some(row.last_parsed_time))),
            ];
            let restriction = flow_dag::schedule::TimeRestriction {
                earliest: dag.start_date,
                latest: dag.end_date,
                catchup: dag.catchup,
            };
            body.next_runs = dag
                .timetable
                .upcoming_runs(None, &restriction, Utc::now(), 5)
                .into_iter()
                .map(|info| {
                    format!(
                        "{} (data interval {} – {})",
                        fmt_time(&Some(info.logical_date)),
                        fmt_time(&Some(info.data_interval.start)),
                        fmt_time(&Some(info.data_interval.end))
                    )
                })
                .collect();
            body.params = serde_json::to_string_pretty(&dag.params).unwrap_or_default();
        }
    }
    Ok(page(&body))
}

/// Versions listed on the Versions tab (the newest first).
const VERSIONS_LISTED: i64 = 100;

/// The Versions tab: the DAG's versions, and the source of one (the latest by default)
/// against another (by default the one before it) as unified hunks.
async fn versions(
    store: &flow_store::Store,
    dag_id: &str,
    version: Option<i64>,
    against: Option<i64>,
) -> Result<views::VersionsView, HttpError> {
    let (list, total) = store.dag_versions(dag_id, true, VERSIONS_LISTED, 0).await?;
    let Some(latest) = list.first().map(|v| v.version_number) else {
        return Ok(views::VersionsView {
            items: Vec::new(),
            shown: 0,
            against: None,
            hunks: Vec::new(),
            total,
        });
    };
    let shown = version.unwrap_or(latest);
    let (_, new_source) = store
        .dag_version_get(dag_id, shown)
        .await?
        .ok_or_else(|| HttpError::NotFound(format!("version {shown} of dag `{dag_id}`")))?;
    // The version before, unless another is asked for; the first version is compared with
    // nothing (all added).
    let against = against.or_else(|| (shown > 1).then_some(shown - 1));
    let old_source = match against {
        Some(v) => {
            store
                .dag_version_get(dag_id, v)
                .await?
                .ok_or_else(|| HttpError::NotFound(format!("version {v} of dag `{dag_id}`")))?
                .1
        }
        None => String::new(),
    };
    Ok(views::VersionsView {
        items: list
            .iter()
            .map(|v| views::VersionItem {
                number: v.version_number,
                created: fmt_time(&Some(v.created_at)),
                hash: v.dag_hash.chars().take(12).collect(),
                file: v.fileloc.clone(),
                selected: v.version_number == shown,
            })
            .collect(),
        shown,
        against,
        hunks: crate::diff::hunks(&old_source, &new_source),
        total,
    })
}

/// The run the Graph and Gantt tabs show: the requested one if it is among the latest 25,
/// else the latest. Fills the page's run selector; returns the run id.
async fn select_run(
    store: &flow_store::Store,
    dag_id: &str,
    requested: Option<String>,
    body: &mut views::DagPage,
) -> Result<Option<String>, HttpError> {
    let runs = store.dag_run_list(dag_id, 25).await?;
    let selected = requested
        .filter(|id| runs.iter().any(|r| r.run_id == *id))
        .or_else(|| runs.first().map(|r| r.run_id.clone()));
    body.graph_runs = runs
        .iter()
        .map(|r| {
            (
                r.run_id.clone(),
                url_encode(&r.run_id),
                selected.as_deref() == Some(r.run_id.as_str()),
            )
        })
        .collect();
    body.graph_run_url = selected.as_deref().map(url_encode).unwrap_or_default();
    Ok(selected)
}

/// Bars for the task instances of one run that have started, in DAG order, scaled to the
/// span from the first queued time to the last end (or now, while running).
fn gantt(dag: &Dag, tis: &[flow_store::TiRow]) -> (Vec<views::GanttBar>, String) {
    let mut by_id: HashMap<&str, Vec<&flow_store::TiRow>> = HashMap::new();
    for t in tis {
        by_id.entry(t.key.task_id.as_str()).or_default().push(t);
    }
    // In DAG order; a mapped task's instances by map index.
    let started: Vec<&flow_store::TiRow> = dag
        .tasks
        .iter()
        .filter_map(|t| by_id.get(t.task_id.as_str()))
        .flat_map(|rows| {
            let mut rows = rows.clone();
            rows.sort_by_key(|r| r.key.map_index);
            rows
        })
        .filter(|t| t.start_date.is_some())
        .collect();
    let now = Utc::now();
    let Some(begin) = started
        .iter()
        .filter_map(|t| t.queued_dttm.or(t.start_date))
        .min()
    else {
        return (Vec::new(), String::new());
    };
    let end = started
        .iter()
        .map(|t| t.end_date.unwrap_or(now))
        .max()
        .unwrap_or(now);
    let span = ((end - begin).num_microseconds().unwrap_or(0) as f64).max(1.0);
    let x = |t: chrono::DateTime<Utc>| {
        (t - begin).num_microseconds().unwrap_or(0) as f64 / span * 1000.0
    };
    let bars = started
        .iter()
        .enumerate()
        .filter_map(|(i, t)| {
            let start = t.start_date?;
            let stop = t.end_date.unwrap_or(now);
            let (label, query) = if t.key.map_index >= 0 {
                (
                    format!("{}[{}]", t.key.task_id, t.key.map_index),
                    format!("?map_index={}", t.key.map_index),
                )
            } else {
                (t.key.task_id.clone(), String::new())
            };
            Some(views::GanttBar {
                task_id: label,
                task_id_url: format!("{}{query}", url_encode(&t.key.task_id)),
                state: t.state.as_str().to_owned(),
                queued_x: t.queued_dttm.map_or(x(start), x).min(x(start)),
                start_x: x(start),
                width: (x(stop) - x(start)).max(1.0),
                duration: fmt_duration(Some((stop - start).num_milliseconds() as f64 / 1000.0)),
                y: i as f64 * 22.0,
            })
        })
        .collect();
    (bars, fmt_duration(Some(span / 1_000_000.0)))
}

#[derive(Deserialize)]
struct TryQuery {
    #[serde(rename = "try")]
    try_number: Option<i64>,
    after: Option<i64>,
    /// Which instance of a mapped task (-1, or absent, for an unmapped one).
    map_index: Option<i64>,
}

async fn task_page(
    State(state): State<AppState>,
    user: CurrentUser,
    Path((dag_id, run_id, task_id)): Path<(String, String, String)>,
    Query(q): Query<TryQuery>,
) -> Result<Response, HttpError> {
    user.require(Permission::Read)?;
    let store = state.store();
    let map_index = q.map_index.unwrap_or(-1);
    let key = TiKey::new(
        dag_id.as_str(),
        run_id.as_str(),
        task_id.as_str(),
        map_index,
    );
    let Some(ti) = store.ti_get(&key).await? else {
        // A mapped task without a map index: the list of its instances.
        let instances: Vec<flow_store::TiRow> = store
            .ti_list_for_run(&dag_id, &run_id)
            .await?
            .into_iter()
            .filter(|t| t.key.task_id == task_id && t.key.map_index >= 0)
            .collect();
        if map_index < 0 && !instances.is_empty() {
            return Ok(page(&views::MappedPage {
                chrome: Chrome::of(&user),
                dag_id_url: url_encode(&dag_id),
                run_id_url: url_encode(&run_id),
                task_id_url: url_encode(&task_id),
                dag_id,
                run_id,
                task_id,
                instances: instances
                    .iter()
                    .map(|t| views::MappedInstance {
                        map_index: t.key.map_index,
                        label: t.rendered_map_index.clone().unwrap_or_default(),
                        state: t.state.as_str().to_owned(),
                        try_number: t.try_number,
                        started: fmt_time(&t.start_date),
                        duration: fmt_duration(t.duration),
                    })
                    .collect(),
            }));
        }
        return Err(HttpError::NotFound(format!(
            "task `{task_id}` in run `{run_id}` of `{dag_id}`"
        )));
    };
    let dag = load_dag(&state, &dag_id).await.ok();
    let task = dag.as_ref().and_then(|d| d.task(&task_id));
    let tries: Vec<i64> = (1..=ti.try_number.max(1)).collect();
    let shown_try = q
        .try_number
        .unwrap_or(ti.try_number)
        .clamp(1, tries.len() as i64);
    let log = store.log_read(&key, shown_try, 0, LOG_PAGE).await?;
    let log_lines = log
        .lines
        .iter()
        .map(|l| views::LogLineView {
            at: views::fmt_clock(&l.at, views::ui_timezone()),
            stream: l.stream.clone(),
            spans: views::ansi_spans(&l.line),
        })
        .collect();
    let xcoms = store
        .xcom_list_for_run(&dag_id, &run_id)
        .await?
        .into_iter()
        .filter(|x| x.task_id == task_id && x.map_index == map_index)
        .map(|x| {
            (
                x.key,
                serde_json::to_string_pretty(&x.value).unwrap_or_default(),
            )
        })
        .collect();
    let rendered = store
        .ti_rendered_fields(&key)
        .await?
        .and_then(|text| {
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&text).ok()
        })
        .map(|m| {
            m.into_iter()
                .map(|(k, v)| (k, v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
                .collect()
        })
        .unwrap_or_default();
    let mut fields = vec![
        ("state".to_owned(), ti.state.as_str().to_owned()),
        (
            "try".to_owned(),
            format!("{} of {}", ti.try_number, ti.max_tries + 1),
        ),
        ("operator".to_owned(), ti.operator.clone()),
        (
            "trigger rule".to_owned(),
            task.map(|t| t.trigger_rule.as_str().to_owned())
                .unwrap_or_default(),
        ),
        (
            "pool".to_owned(),
            format!("{} ({} slot(s))", ti.pool, ti.pool_slots),
        ),
        ("queue".to_owned(), ti.queue.clone()),
        ("priority weight".to_owned(), ti.priority_weight.to_string()),
        ("queued".to_owned(), fmt_time(&ti.queued_dttm)),
        ("started".to_owned(), fmt_time(&ti.start_date)),
        ("ended".to_owned(), fmt_time(&ti.end_date)),
        ("duration".to_owned(), fmt_duration(ti.duration)),
        ("hostname".to_owned(), ti.hostname.clone()),
    ];
    if map_index >= 0 {
        fields.insert(0, ("map index".to_owned(), map_index.to_string()));
        if let Some(label) = &ti.rendered_map_index {
            fields.insert(1, ("label".to_owned(), label.clone()));
        }
    }
    let live = matches!(
        ti.state,
        TaskInstanceState::Running | TaskInstanceState::Queued | TaskInstanceState::Scheduled
    ) && shown_try == ti.try_number;
    let waiting_on = match store.dag_run_get(&dag_id, &run_id).await? {
        Some(run) => store
            .ti_dependencies(dag.as_ref(), &run, &ti, Utc::now())
            .await?
            .into_iter()
            .map(|d| (d.name, d.reason))
            .collect(),
        None => Vec::new(),
    };
    let callbacks = store
        .callback_list_for_ti(&dag_id, &run_id, &task_id, map_index)
        .await?
        .into_iter()
        .map(|c| views::CallbackItem {
            try_number: c.target.try_number,
            event: c.event,
            description: c.description,
            status: c.status,
            attempts: c.attempts,
            last: c
                .log
                .lines()
                .rev()
                .find(|l| l.contains("attempt"))
                .unwrap_or("")
                .to_owned(),
        })
        .collect();
    Ok(page(&views::TaskPage {
        chrome: Chrome::of(&user),
        dag_id_url: url_encode(&dag_id),
        run_id_url: url_encode(&run_id),
        task_id_url: url_encode(&task_id),
        dag_id,
        run_id,
        task_id,
        map_index,
        state: ti.state.as_str().to_owned(),
        fields,
        tries,
        shown_try,
        log_lines,
        truncated: log.lines.len() as i64 >= LOG_PAGE,
        log_next: log.next,
        live,
        xcoms,
        rendered,
        callbacks,
        waiting_on,
    }))
}

/// The task instance a log route names, and the try asked for (default: the latest).
async fn log_target(
    state: &AppState,
    dag_id: &str,
    run_id: &str,
    task_id: &str,
    q: &TryQuery,
) -> Result<(TiKey, flow_store::TiRow, i64), HttpError> {
    let key = TiKey::new(dag_id, run_id, task_id, q.map_index.unwrap_or(-1));
    let ti = state
        .store()
        .ti_get(&key)
        .await?
        .ok_or_else(|| HttpError::NotFound(format!("task `{task_id}`")))?;
    let try_number = q.try_number.unwrap_or(ti.try_number);
    Ok((key, ti, try_number))
}

/// Log lines as the browser's live tail takes them: time, stream, ANSI-coloured spans.
fn lines_json(lines: &[flow_store::LogLine], tz: chrono_tz::Tz) -> Vec<serde_json::Value> {
    lines
        .iter()
        .map(|l| {
            serde_json::json!({
                "at": views::fmt_clock(&l.at, tz),
                "stream": l.stream,
                "spans": views::ansi_spans(&l.line),
            })
        })
        .collect()
}

/// New log lines after `after`, for the live tail: `{lines: [{at, stream, text}], next, state}`.
async fn task_log(
    State(state): State<AppState>,
    user: CurrentUser,
    Path((dag_id, run_id, task_id)): Path<(String, String, String)>,
    Query(q): Query<TryQuery>,
) -> Result<Response, HttpError> {
    user.require(Permission::Read)?;
    let (key, ti, try_number) = log_target(&state, &dag_id, &run_id, &task_id, &q).await?;
    let log = state
        .store()
        .log_read(&key, try_number, q.after.unwrap_or(0), LOG_PAGE)
        .await?;
    let lines = lines_json(&log.lines, views::ui_timezone());
    Ok(Json(serde_json::json!({
        "lines": lines,
        "next": log.next,
        "state": ti.state.as_str(),
        "try_number": ti.try_number,
    }))
    .into_response())
}

/// The log of a try as server-sent events: a `lines` event (JSON like `/log`) whenever new
/// lines are stored, a `state` event when the state changes, and the end of the stream once
/// the try is over. The browser's EventSource reconnects on its own after a network error.
async fn task_log_stream(
    State(state): State<AppState>,
    user: CurrentUser,
    Path((dag_id, run_id, task_id)): Path<(String, String, String)>,
    Query(q): Query<TryQuery>,
) -> Result<Response, HttpError> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    user.require(Permission::Read)?;
    let (key, _, try_number) = log_target(&state, &dag_id, &run_id, &task_id, &q).await?;
    struct Tail {
        state: AppState,
        key: TiKey,
        try_number: i64,
        after: i64,
        last_state: String,
        done: bool,
        /// The request's zone: the stream outlives the request's task-local.
        tz: chrono_tz::Tz,
    }
    let start = Tail {
        tz: views::ui_timezone(),
        state,
        key,
        try_number,
        after: q.after.unwrap_or(0),
        last_state: String::new(),
        done: false,
    };
    let stream = futures_util::stream::unfold(start, |mut t| async move {
        if t.done {
            return None;
        }
        loop {
            let store = t.state.store();
            let Ok(log) = store
                .log_read(&t.key, t.try_number, t.after, LOG_PAGE)
                .await
            else {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                continue;
            };
            let ti_state = store
                .ti_get(&t.key)
                .await
                .ok()
                .flatten()
                .map(|ti| (ti.state, ti.try_number));
            if !log.lines.is_empty() {
                t.after = log.next;
                let lines = lines_json(&log.lines, t.tz);
                let data = serde_json::json!({ "lines": lines, "next": log.next }).to_string();
                return Some((
                    Ok::<_, std::convert::Infallible>(Event::default().event("lines").data(data)),
                    t,
                ));
            }
            let (current, current_try) = ti_state.unwrap_or((TaskInstanceState::Removed, 0));
            if current.as_str() != t.last_state {
                t.last_state = current.as_str().to_owned();
                return Some((
                    Ok(Event::default().event("state").data(current.as_str())),
                    t,
                ));
            }
            let live = matches!(
                current,
                TaskInstanceState::Running
                    | TaskInstanceState::Queued
                    | TaskInstanceState::Scheduled
            ) && current_try == t.try_number;
            if !live {
                t.done = true;
                return Some((Ok(Event::default().event("end").data("")), t));
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// A try's whole log as plain text (for logs longer than a page holds).
async fn task_log_raw(
    State(state): State<AppState>,
    user: CurrentUser,
    Path((dag_id, run_id, task_id)): Path<(String, String, String)>,
    Query(q): Query<TryQuery>,
) -> Result<Response, HttpError> {
    user.require(Permission::Read)?;
    let (key, _, try_number) = log_target(&state, &dag_id, &run_id, &task_id, &q).await?;
    let mut text = String::new();
    let mut after = 0;
    loop {
        let page = state
            .store()
            .log_read(&key, try_number, after, LOG_PAGE)
            .await?;
        if page.lines.is_empty() {
            break;
        }
        for l in &page.lines {
            text.push_str(&format!(
                "{} {} {}\n",
                l.at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                l.stream,
                l.line
            ));
        }
        after = page.next;
    }
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(response)
}

async fn pools_page(
    State(state): State<AppState>,
    user: CurrentUser,
) -> Result<Response, HttpError> {
    user.require(Permission::Read)?;
    let pools = state.store().pool_rows().await?;
    Ok(page(&views::PoolsPage {
        can_operate: user.role.can(Permission::Operate),
        chrome: Chrome::of(&user),
        pools,
    }))
}

#[derive(Deserialize)]
struct PoolForm {
    csrf_token: String,
    pool: String,
    slots: String,
    #[serde(default)]
    description: String,
}

async fn pools_set(
    State(state): State<AppState>,
    user: CurrentUser,
    Form(form): Form<PoolForm>,
) -> Result<Response, HttpError> {
    user.check_csrf(&form.csrf_token)?;
    user.require(Permission::Operate)?;
    let name = form.pool.trim();
    flow_model::PoolId::parse(name)
        .map_err(|e| HttpError::BadRequest(format!("pool name: {e}")))?;
    let slots: i64 = form
        .slots
        .trim()
        .parse()
        .ok()
        .filter(|n| *n >= -1)
        .ok_or_else(|| {
            HttpError::BadRequest("slots must be a whole number, 0 or more (-1: unlimited)".into())
        })?;
    state
        .store()
        .pool_set(name, slots, &form.description)
        .await?;
    audit(
        &state,
        &user.username,
        "set pool",
        None,
        None,
        None,
        Some(&format!("{name}: {slots} slot(s)")),
    )
    .await;
    Ok(Redirect::to("/pools").into_response())
}

#[derive(Deserialize)]
struct PoolDeleteForm {
    csrf_token: String,
    pool: String,
}

async fn pools_delete(
    State(state): State<AppState>,
    user: CurrentUser,
    Form(form): Form<PoolDeleteForm>,
) -> Result<Response, HttpError> {
    user.check_csrf(&form.csrf_token)?;
    user.require(Permission::Operate)?;
    if form.pool == flow_store::DEFAULT_POOL {
        return Err(HttpError::BadRequest(
            "default_pool cannot be deleted".into(),
        ));
    }
    if state.store().pool_delete(&form.pool).await? == flow_store::PoolWrite::Missing {
        return Err(HttpError::NotFound(format!("no pool `{}`", form.pool)));
    }
    audit(
        &state,
        &user.username,
        "delete pool",
        None,
        None,
        None,
        Some(&form.pool),
    )
    .await;
    Ok(Redirect::to("/pools").into_response())
}

// ---- actions ----

#[derive(Deserialize)]
struct PauseForm {
    csrf_token: String,
    is_paused: String,
    next: Option<String>,
}

async fn pause(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(dag_id): Path<String>,
    Form(form): Form<PauseForm>,
) -> Result<Response, HttpError> {
    user.check_csrf(&form.csrf_token)?;
    user.require(Permission::EditDags)?;
    let paused = form.is_paused == "true";
    if !state.store().dag_set_paused(&dag_id, paused).await? {
        return Err(HttpError::NotFound(format!("dag `{dag_id}`")));
    }
    let event = if paused { "paused" } else { "unpaused" };
    audit(
        &state,
        &user.username,
        event,
        Some(&dag_id),
        None,
        None,
        None,
    )
    .await;
    Ok(Redirect::to(&auth::safe_next(form.next.as_deref())).into_response())
}

#[derive(Deserialize)]
struct FavoriteForm {
    csrf_token: String,
    /// `true` to mark, `false` to unmark.
    favorite: String,
    next: Option<String>,
}

/// Marks or unmarks a DAG as one of the signed-in user's favourites (listed first).
async fn favorite(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(dag_id): Path<String>,
    Form(form): Form<FavoriteForm>,
) -> Result<Response, HttpError> {
    user.check_csrf(&form.csrf_token)?;
    user.require(Permission::Read)?;
    if state.store().dag_get(&dag_id).await?.is_none() {
        return Err(HttpError::NotFound(format!("dag `{dag_id}`")));
    }
    state
        .store()
        .dag_favorite_set(&user.username, &dag_id, form.favorite == "true")
        .await?;
    Ok(Redirect::to(&auth::safe_next(form.next.as_deref())).into_response())
}

/// The trigger form's fields: one per DAG param, typed from its schema.
fn param_fields(dag: &Dag) -> Vec<views::ParamField> {
    dag.params
        .iter()
        .map(|(name, p)| {
            let types: Vec<&str> = match p.schema.get("type") {
                Some(serde_json::Value::String(t)) => vec![t.as_str()],
                Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_str()).collect(),
                _ => Vec::new(),
            };
            let nullable = types.contains(&"null");
            let kind = types
                .iter()
                .find(|t| **t != "null")
                .map(|t| (*t).to_owned())
                .unwrap_or_else(|| match &p.default {
                    Some(serde_json::Value::Bool(_)) => "boolean".into(),
                    Some(serde_json::Value::Number(n)) if n.is_i64() => "integer".into(),
                    Some(serde_json::Value::Number(_)) => "number".into(),
                    Some(serde_json::Value::Array(_)) => "array".into(),
                    Some(serde_json::Value::Object(_)) => "object".into(),
                    _ => "string".into(),
                });
            let value = match &p.default {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Null) | None => String::new(),
                Some(v) => v.to_string(),
            };
            views::ParamField {
                name: name.clone(),
                required: matches!(p.default, None | Some(serde_json::Value::Null)) && !nullable,
                description: p.description.clone().unwrap_or_default(),
                kind,
                value,
            }
        })
        .collect()
}

async fn trigger_form(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(dag_id): Path<String>,
) -> Result<Response, HttpError> {
    user.require(Permission::EditDags)?;
    let dag = load_dag(&state, &dag_id).await?;
    Ok(page(&views::TriggerPage {
        chrome: Chrome::of(&user),
        dag_id_url: url_encode(&dag_id),
        dag_id,
        conf: String::new(),
        params: param_fields(&dag),
        error: None,
    }))
}

/// Reads the trigger form into `dag_run.conf`: a raw JSON object if given, else the typed
/// param fields.
fn conf_from_form(dag: &Dag, form: &HashMap<String, String>) -> Result<serde_json::Value, String> {
    if let Some(raw) = form.get("conf").map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(raw).map_err(|e| format!("conf is not valid JSON: {e}"))?;
        if !v.is_object() {
            return Err("conf must be a JSON object".into());
        }
        return Ok(v);
    }
    let mut conf = serde_json::Map::new();
    for field in param_fields(dag) {
        let Some(text) = form.get(&format!("param.{}", field.name)) else {
            continue;
        };
        let text = text.trim();
        if text.is_empty() {
            if field.required {
                return Err(format!("param `{}` is required", field.name));
            }
            continue;
        }
        let value = match field.kind.as_str() {
            "boolean" => serde_json::Value::Bool(text == "true"),
            "integer" => text
                .parse::<i64>()
                .map(Into::into)
                .map_err(|_| format!("param `{}` must be an integer", field.name))?,
            "number" => text
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(serde_json::Value::Number)
                .ok_or_else(|| format!("param `{}` must be a number", field.name))?,
            "object" | "array" => serde_json::from_str(text)
                .map_err(|e| format!("param `{}` must be JSON: {e}", field.name))?,
            _ => serde_json::Value::String(text.to_owned()),
        };
        conf.insert(field.name, value);
    }
    Ok(serde_json::Value::Object(conf))
}

async fn trigger(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(dag_id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response, HttpError> {
    user.check_csrf(form.get("csrf_token").map_or("", String::as_str))?;
    user.require(Permission::EditDags)?;
    let (dag, hash) = stored_dag(&state, &dag_id).await?;
    let again = |error: String| {
        let mut response = page(&views::TriggerPage {
            chrome: Chrome::of(&user),
            dag_id_url: url_encode(&dag_id),
            dag_id: dag_id.clone(),
            conf: form.get("conf").cloned().unwrap_or_default(),
            params: param_fields(&dag),
            error: Some(error),
        });
        *response.status_mut() = axum::http::StatusCode::BAD_REQUEST;
        response
    };
    let conf = match conf_from_form(&dag, &form) {
        Ok(c) => c,
        Err(e) => return Ok(again(e)),
    };
    let mut request = TriggerRequest::manual(conf);
    request.run_id = form
        .get("run_id")
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    request.triggered_by = Some(format!("ui:{}", user.username));
    let run = match state
        .store()
        .dag_run_trigger(&dag, &hash, &request, Utc::now())
        .await
    {
        Ok(run) => run,
        Err(TriggerError::Store(e)) => return Err(e.into()),
        Err(e) => return Ok(again(e.to_string())),
    };
    audit(
        &state,
        &user.username,
        "trigger",
        Some(&dag_id),
        Some(&run.run_id),
        None,
        Some(&run.conf.to_string()),
    )
    .await;
    Ok(Redirect::to(&format!("/dags/{}", url_encode(&dag_id))).into_response())
}

/// The DAG as the store holds it, and its hash.
async fn stored_dag(state: &AppState, dag_id: &str) -> Result<(Dag, String), HttpError> {
    let (data, hash) = state
        .store()
        .serialized_dag_get(dag_id)
        .await?
        .ok_or_else(|| HttpError::NotFound(format!("dag `{dag_id}`")))?;
    let dag = Dag::from_json(&data).map_err(|e| HttpError::Internal(e.to_string()))?;
    Ok((dag, hash))
}

/// The trigger page's backfill form: Airflow 3's backfill, as `POST /api/v2/backfills`.
async fn backfill(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(dag_id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response, HttpError> {
    user.check_csrf(form.get("csrf_token").map_or("", String::as_str))?;
    user.require(Permission::EditDags)?;
    let (dag, hash) = stored_dag(&state, &dag_id).await?;
    let field = |k: &str| form.get(k).map_or("", |v| v.trim());
    let when = |k: &str| {
        crate::api::backfills::parse_form_time(field(k))
            .ok_or_else(|| HttpError::BadRequest(format!("`{k}`: a date such as 2025-01-31")))
    };
    let (from, to) = (when("from_date")?, when("to_date")?);
    if to < from {
        return Err(HttpError::BadRequest("the end is before the start".into()));
    }
    let reprocess = flow_store::ReprocessBehavior::parse(field("reprocess_behavior"))
        .unwrap_or(flow_store::ReprocessBehavior::None);
    let max_active_runs: i64 = field("max_active_runs").parse().unwrap_or(10);
    if !(1..=1000).contains(&max_active_runs) {
        return Err(HttpError::BadRequest("max active runs is 1 to 1000".into()));
    }
    let conf = conf_from_form(&dag, &form).map_err(HttpError::BadRequest)?;
    let infos = dag.timetable.runs_in_range(from, to, 10_001);
    if infos.len() > 10_000 {
        return Err(HttpError::BadRequest(
            "the range holds more than 10000 runs; backfill it in parts".into(),
        ));
    }
    let new = flow_store::NewBackfill {
        dag_id: dag_id.clone(),
        from_date: from,
        to_date: to,
        conf,
        reprocess,
        max_active_runs,
        run_backwards: form.contains_key("run_backwards"),
        triggering_user: Some(user.username.clone()),
    };
    let (backfill, runs) = state
        .store()
        .backfill_create(&dag, &hash, &new, &infos, Utc::now())
        .await
        .map_err(|e| match e {
            flow_store::BackfillError::Store(s) => HttpError::from(s),
            other => HttpError::BadRequest(other.to_string()),
        })?;
    audit(
        &state,
        &user.username,
        "backfill",
        Some(&dag_id),
        None,
        None,
        Some(&format!("backfill {}: {} run(s)", backfill.id, runs.len())),
    )
    .await;
    Ok(Redirect::to(&format!("/dags/{}?tab=runs", url_encode(&dag_id))).into_response())
}

#[derive(Deserialize)]
struct MarkForm {
    csrf_token: String,
    state: String,
    /// One instance of a mapped task.
    map_index: Option<i64>,
    /// Where to go after (the grid's details panel comes back to itself).
    next: Option<String>,
}

async fn mark_run(
    State(state): State<AppState>,
    user: CurrentUser,
    Path((dag_id, run_id)): Path<(String, String)>,
    Form(form): Form<MarkForm>,
) -> Result<Response, HttpError> {
    user.check_csrf(&form.csrf_token)?;
    user.require(Permission::EditDags)?;
    let to = match form.state.as_str() {
        "success" => DagRunState::Success,
        "failed" => DagRunState::Failed,
        other => {
            return Err(HttpError::BadRequest(format!(
                "cannot mark a run `{other}`"
            )));
        }
    };
    if !state
        .store()
        .dag_run_mark(&dag_id, &run_id, to, Utc::now())
        .await?
    {
        return Err(HttpError::NotFound(format!("run `{run_id}`")));
    }
    audit(
        &state,
        &user.username,
        &format!("mark run {}", to.as_str()),
        Some(&dag_id),
        Some(&run_id),
        None,
        None,
    )
    .await;
    if form.next.is_some() {
        return Ok(Redirect::to(&auth::safe_next(form.next.as_deref())).into_response());
    }
    Ok(Redirect::to(&format!("/dags/{}?tab=runs", url_encode(&dag_id))).into_response())
}

async fn mark_task(
    State(state): State<AppState>,
    user: CurrentUser,
    Path((dag_id, run_id, task_id)): Path<(String, String, String)>,
    Form(form): Form<MarkForm>,
) -> Result<Response, HttpError> {
    user.check_csrf(&form.csrf_token)?;
    user.require(Permission::EditDags)?;
    let to = match form.state.as_str() {
        "success" => TaskInstanceState::Success,
        "failed" => TaskInstanceState::Failed,
        "skipped" => TaskInstanceState::Skipped,
        other => {
            return Err(HttpError::BadRequest(format!(
                "cannot mark a task instance `{other}`"
            )));
        }
    };
    let map_index = form.map_index.unwrap_or(-1);
    let key = TiKey::new(
        dag_id.as_str(),
        run_id.as_str(),
        task_id.as_str(),
        map_index,
    );
    state.store().ti_mark(&[key], to, Utc::now()).await?;
    audit(
        &state,
        &user.username,
        &format!("mark {}", to.as_str()),
        Some(&dag_id),
        Some(&run_id),
        Some(&task_id),
        None,
    )
    .await;
    if form.next.is_some() {
        return Ok(Redirect::to(&auth::safe_next(form.next.as_deref())).into_response());
    }
    let index = if map_index >= 0 {
        format!("?map_index={map_index}")
    } else {
        String::new()
    };
    Ok(Redirect::to(&format!(
        "/dags/{}/runs/{}/tasks/{}{index}",
        url_encode(&dag_id),
        url_encode(&run_id),
        url_encode(&task_id)
    ))
    .into_response())
}

async fn delete_run(
    State(state): State<AppState>,
    user: CurrentUser,
    Path((dag_id, run_id)): Path<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, HttpError> {
    user.check_csrf(&form.csrf_token)?;
    user.require(Permission::EditDags)?;
    let run = state.store().dag_run_get(&dag_id, &run_id).await?;
    if run.as_ref().map(|r| r.state) == Some(DagRunState::Running) {
        return Err(HttpError::BadRequest(format!(
            "run `{run_id}` is running: mark it success or failed before deleting it"
        )));
    }
    if !state.store().dag_run_delete(&dag_id, &run_id).await? {
        return Err(HttpError::NotFound(format!("run `{run_id}`")));
    }
    audit(
        &state,
        &user.username,
        "delete run",
        Some(&dag_id),
        Some(&run_id),
        None,
        None,
    )
    .await;
    Ok(Redirect::to(&format!("/dags/{}?tab=runs", url_encode(&dag_id))).into_response())
}

#[derive(Deserialize)]
struct ClearQuery {
    task_id: String,
    #[serde(default)]
    downstream: Option<String>,
    #[serde(default)]
    upstream: Option<String>,
    csrf_token: Option<String>,
}

/// The task instances clearing `q.task_id` (with its relatives) would touch.
async fn affected(
    state: &AppState,
    dag_id: &str,
    run_id: &str,
    q: &ClearQuery,
) -> Result<Vec<flow_store::TiRow>, HttpError> {
    let dag = load_dag(state, dag_id).await?;
    if dag.task(&q.task_id).is_none() {
        return Err(HttpError::NotFound(format!("task `{}`", q.task_id)));
    }
    let selected = dag.with_relatives(
        [q.task_id.clone()],
        q.downstream.as_deref() == Some("true"),
        q.upstream.as_deref() == Some("true"),
    );
    Ok(state
        .store()
        .ti_list_for_run(dag_id, run_id)
        .await?
        .into_iter()
        .filter(|t| selected.contains(&t.key.task_id))
        .filter(|t| {
            !matches!(
                t.state,
                TaskInstanceState::NoStatus | TaskInstanceState::Removed
            )
        })
        .collect())
}

async fn clear_form(
    State(state): State<AppState>,
    user: CurrentUser,
    Path((dag_id, run_id)): Path<(String, String)>,
    Query(q): Query<ClearQuery>,
) -> Result<Response, HttpError> {
    user.require(Permission::EditDags)?;
    let tis = affected(&state, &dag_id, &run_id, &q).await?;
    Ok(page(&views::ClearPage {
        chrome: Chrome::of(&user),
        dag_id_url: url_encode(&dag_id),
        run_id_url: url_encode(&run_id),
        dag_id,
        run_id,
        task_id: q.task_id.clone(),
        downstream: q.downstream.as_deref() == Some("true"),
        upstream: q.upstream.as_deref() == Some("true"),
        affected: tis
            .iter()
            .map(|t| (t.key.task_id.clone(), t.state.as_str().to_owned()))
            .collect(),
    }))
}

async fn clear(
    State(state): State<AppState>,
    user: CurrentUser,
    Path((dag_id, run_id)): Path<(String, String)>,
    Form(q): Form<ClearQuery>,
) -> Result<Response, HttpError> {
    user.check_csrf(q.csrf_token.as_deref().unwrap_or(""))?;
    user.require(Permission::EditDags)?;
    let dag = load_dag(&state, &dag_id).await?;
    let tis = affected(&state, &dag_id, &run_id, &q).await?;
    let keys: Vec<(TiKey, i64)> = tis
        .into_iter()
        .map(|t| {
            let retries = dag.task(&t.key.task_id).map_or(0, |t| i64::from(t.retries));
            (t.key, retries)
        })
        .collect();
    // ExternalTaskMarkers reach into other DAGs, as Airflow's clear follows them.
    let keys = state.store().clear_across_markers(&dag, keys).await?;
    let report = state.store().ti_clear(&keys, Utc::now()).await?;
    audit(
        &state,
        &user.username,
        "clear",
        Some(&dag_id),
        Some(&run_id),
        Some(&q.task_id),
        Some(&format!(
            "{} task instance(s); downstream={} upstream={}",
            report.cleared,
            q.downstream.as_deref() == Some("true"),
            q.upstream.as_deref() == Some("true")
        )),
    )
    .await;
    Ok(Redirect::to(&format!("/dags/{}", url_encode(&dag_id))).into_response())
}

fn variables_cipher(state: &AppState) -> Result<&flow_store::Cipher, HttpError> {
    state
        .cipher()
        .ok_or_else(|| HttpError::BadRequest("this server has no fernet key for variables".into()))
}

async fn variables_page(
    State(state): State<AppState>,
    user: CurrentUser,
) -> Result<Response, HttpError> {
    // As in Airflow, variables (configuration) are for Op and Admin.
    user.require(Permission::Operate)?;
    let variables = state
        .store()
        .variable_list(Some(variables_cipher(&state)?))
        .await?
        .into_iter()
        .map(|v| views::VariableItem {
            value: if v.is_sensitive() {
                "***".to_owned()
            } else {
                v.value.clone()
            },
            description: v.description.clone().unwrap_or_default(),
            key: v.key,
        })
        .collect();
    Ok(page(&views::VariablesPage {
        can_operate: user.role.can(Permission::Operate),
        chrome: Chrome::of(&user),
        variables,
    }))
}

#[derive(Deserialize)]
struct VariableForm {
    csrf_token: String,
    key: String,
    #[serde(default)]
    value: String,
    #[serde(default)]
    description: String,
}

async fn variables_set(
    State(state): State<AppState>,
    user: CurrentUser,
    Form(form): Form<VariableForm>,
) -> Result<Response, HttpError> {
    user.check_csrf(&form.csrf_token)?;
    user.require(Permission::Operate)?;
    let key = form.key.trim();
    flow_store::check_variable_key(key).map_err(HttpError::BadRequest)?;
    let variable = flow_store::Variable {
        key: key.to_owned(),
        value: form.value,
        description: (!form.description.trim().is_empty()).then(|| form.description.clone()),
    };
    state
        .store()
        .variable_set(
            &variable,
            Some(variables_cipher(&state)?),
            false,
            Utc::now(),
        )
        .await?;
    audit(
        &state,
        &user.username,
        "set variable",
        None,
        None,
        None,
        Some(key),
    )
    .await;
    Ok(Redirect::to("/variables").into_response())
}

#[derive(Deserialize)]
struct VariableDeleteForm {
    csrf_token: String,
    key: String,
}

async fn variables_delete(
    State(state): State<AppState>,
    user: CurrentUser,
    Form(form): Form<VariableDeleteForm>,
) -> Result<Response, HttpError> {
    user.check_csrf(&form.csrf_token)?;
    user.require(Permission::Operate)?;
    if !state.store().variable_delete(&form.key).await? {
        return Err(HttpError::NotFound(format!("no variable `{}`", form.key)));
    }
    audit(
        &state,
        &user.username,
        "delete variable",
        None,
        None,
        None,
        Some(&form.key),
    )
    .await;
    Ok(Redirect::to("/variables").into_response())
}
