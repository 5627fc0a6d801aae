//! Page models and their askama templates (in `web/templates`). Templates escape every value
//! as HTML; nothing user-written is ever marked safe.

use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};

/// Renders a page, or a plain 500 if the template fails.
pub fn page<T: Template>(t: &T) -> Response {
    match t.render() {
        Ok(body) => Html(body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "template failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "template error").into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    status: u16,
    reason: &'a str,
    message: &'a str,
}

pub fn error_page(status: StatusCode, message: &str) -> Response {
    let body = ErrorPage {
        status: status.as_u16(),
        reason: status.canonical_reason().unwrap_or(""),
        message,
    };
    let mut response = page(&body);
    *response.status_mut() = status;
    response
}

/// Percent-encodes a query or path component.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The cookie that keeps a user's chosen time zone (an IANA name, percent-encoded).
pub const TIMEZONE_COOKIE: &str = "flow_tz";

tokio::task_local! {
    /// The zone this request's pages show times in: the user's choice, else the server's
    /// `default_ui_timezone`. Set around each request so every formatter agrees without
    /// threading a zone through every page model.
    static UI_TIMEZONE: chrono_tz::Tz;
}

/// The zone times are shown in for the current request (UTC outside one).
pub fn ui_timezone() -> chrono_tz::Tz {
    UI_TIMEZONE.try_with(|tz| *tz).unwrap_or(chrono_tz::UTC)
}

/// The zone named by the request's `flow_tz` cookie, if it names a real one.
pub fn chosen_timezone(headers: &axum::http::HeaderMap) -> Option<chrono_tz::Tz> {
    let raw = crate::session::cookie(headers, TIMEZONE_COOKIE)?;
    flow_model::connection::percent_decode(raw)
        .ok()?
        .parse()
        .ok()
}

/// Runs the request with the user's time zone in scope (see [`ui_timezone`]).
pub async fn with_user_timezone(
    axum::extract::State(state): axum::extract::State<crate::AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let tz = chosen_timezone(request.headers()).unwrap_or_else(|| state.default_ui_timezone());
    UI_TIMEZONE.scope(tz, next.run(request)).await
}

/// `2025-01-01 10:00:00` in the user's time zone, or an empty string.
pub fn fmt_time(t: &Option<DateTime<Utc>>) -> String {
    t.map(|t| {
        t.with_timezone(&ui_timezone())
            .format("%Y-%m-%d %H:%M:%S")
            .to_string()
    })
    .unwrap_or_default()
}

/// `08:30:15.123` in `tz`: a log line's time.
pub fn fmt_clock(t: &DateTime<Utc>, tz: chrono_tz::Tz) -> String {
    t.with_timezone(&tz).format("%H:%M:%S%.3f").to_string()
}

/// `12-05 08:30` in the user's time zone: a grid column's header.
pub fn fmt_short(t: &DateTime<Utc>) -> String {
    t.with_timezone(&ui_timezone())
        .format("%m-%d %H:%M")
        .to_string()
}

/// `1.2s`, `3m 04s`, `2h 05m`.
pub fn fmt_duration(seconds: Option<f64>) -> String {
    let Some(s) = seconds else {
        return String::new();
    };
    if s < 1.0 {
        return format!("{:.0} ms", s * 1000.0);
    }
    if s < 60.0 {
        return format!("{s:.1}s");
    }
    let total = s.round() as i64;
    let (h, m, sec) = (total / 3600, (total % 3600) / 60, total % 60);
    if h > 0 {
        format!("{h}h {m:02}m")
    } else {
        format!("{m}m {sec:02}s")
    }
}

/// What every logged-in page shows in its header.
pub struct Chrome {
    pub username: String,
    pub role: String,
    pub csrf: String,
    pub can_edit: bool,
    /// The zone the page's times are in (shown in the header, a link to change it).
    pub timezone: String,
}

impl Chrome {
    pub fn of(user: &crate::CurrentUser) -> Chrome {
        Chrome {
            username: user.username.clone(),
            role: user.role.as_str().to_owned(),
            csrf: user.csrf_token.clone(),
            can_edit: user.can_edit(),
            timezone: ui_timezone().name().to_owned(),
        }
    }
}

#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage {
    pub error: Option<String>,
    pub next: String,
    pub csrf: String,
}

pub struct DagListItem {
    pub dag_id: String,
    pub dag_id_url: String,
    pub description: String,
    pub paused: bool,
    pub owners: String,
    pub schedule: String,
    pub tags: Vec<(String, String)>,
    /// (state, run id) of the latest runs, newest first.
    pub recent: Vec<(String, String)>,
    /// (state, count) of the latest run's task instances.
    pub task_counts: Vec<(String, i64)>,
    pub next_run: String,
    /// One of the signed-in user's favourites.
    pub favorite: bool,
    /// Standing problems (a missing pool or connection), Airflow's DAG warnings.
    pub warnings: Vec<String>,
}

#[derive(Template)]
#[template(path = "home.html")]
pub struct HomePage {
    pub chrome: Chrome,
    pub dags: Vec<DagListItem>,
    pub search: String,
    pub tag: String,
    pub paused_filter: String,
    pub page: usize,
    pub pages: usize,
    pub total: usize,
    pub import_errors: usize,
    pub query_base: String,
    pub favorites_only: bool,
    /// Airflow 3's Home: what the deployment is doing, above the list.
    pub overview: Overview,
}

/// The home page's summary: DAG counts, component health, pool use, the last day.
pub struct Overview {
    pub dags: flow_store::DagCounts,
    /// (component, healthy, total) per kind of process.
    pub health: Vec<(String, usize, usize)>,
    /// (pool, occupied, slots or "unlimited").
    pub pools: Vec<(String, i64, String)>,
    /// The last day's totals: (what, count, state class).
    pub day: Vec<(String, i64, String)>,
    /// Inline SVG of tries ended per hour.
    pub tries_chart: String,
    pub runs_chart: String,
}

/// A task in a run: its state (`none` when no task instance); for a mapped task, the state
/// that stands for its instances, their number, and the number in each state.
pub struct GridCell {
    pub state: String,
    /// Instances of a mapped task (0: not mapped).
    pub mapped: usize,
    /// `3 success · 1 failed`.
    pub counts: String,
}

/// The instances of a mapped task in one run.
#[derive(Template)]
#[template(path = "mapped.html")]
pub struct MappedPage {
    pub chrome: Chrome,
    pub dag_id: String,
    pub dag_id_url: String,
    pub run_id: String,
    pub run_id_url: String,
    pub task_id: String,
    pub task_id_url: String,
    pub instances: Vec<MappedInstance>,
}

pub struct MappedInstance {
    pub map_index: i64,
    pub label: String,
    pub state: String,
    pub try_number: i64,
    pub started: String,
    pub duration: String,
}

#[derive(Template)]
#[template(path = "dag.html")]
pub struct DagPage {
    pub chrome: Chrome,
    pub dag_id: String,
    pub dag_id_url: String,
    pub description: String,
    pub paused: bool,
    pub tab: String,
    pub grid: Option<crate::grid::Grid>,
    pub versions: Option<VersionsView>,
    pub run_list: Vec<RunItem>,
    pub code: String,
    pub details: Vec<(String, String)>,
    pub next_runs: Vec<String>,
    pub params: String,
    pub graph: Option<crate::graph::GraphLayout>,
    /// Runs to colour the graph with: (run id, url-encoded, selected).
    pub graph_runs: Vec<(String, String, bool)>,
    /// The selected run, url-encoded (empty when the DAG has no run).
    pub graph_run_url: String,
    pub gantt: Vec<GanttBar>,
    /// Total span of the Gantt chart, formatted.
    pub gantt_span: String,
    pub overview: Option<DagOverview>,
}

/// A DAG's Overview tab (Airflow 3's): failures over a window, the recent runs' durations
/// split into queued and running, a calendar of daily run states, the recent failures' logs.
pub struct DagOverview {
    /// `24h`, `7d` or `30d`.
    pub window: String,
    pub failed_tries: i64,
    pub failed_runs: i64,
    /// Inline SVG (escaped by `charts`).
    pub durations_chart: String,
    /// Weeks of (date, state class, tooltip), Monday first; empty dates pad the first week.
    pub calendar: Vec<Vec<(String, String, String)>>,
    pub failures: Vec<FailureExcerpt>,
    /// Inline SVG: the longest tasks' durations over the same runs.
    pub task_durations_chart: String,
    /// The tasks charted, in their series' order (the legend).
    pub task_series: Vec<String>,
}

/// A failed try with the end of its log.
pub struct FailureExcerpt {
    pub run_id: String,
    pub task_id: String,
    pub url: String,
    pub try_number: i64,
    pub ended: String,
    pub lines: Vec<String>,
}

/// One task instance on the Gantt chart; offsets and widths are per mille of the run's span
/// (classes `o0`..`o1000` would be too many, so the template uses SVG coordinates).
pub struct GanttBar {
    pub task_id: String,
    pub task_id_url: String,
    pub state: String,
    /// Queued-to-start and start-to-end, in SVG units out of 1000.
    pub queued_x: f64,
    pub start_x: f64,
    pub width: f64,
    pub duration: String,
    pub y: f64,
}

pub struct RunItem {
    pub run_id: String,
    pub run_id_url: String,
    pub state: String,
    pub run_type: String,
    pub logical_date: String,
    pub start: String,
    pub end: String,
    pub conf: String,
}

#[derive(Template)]
#[template(path = "task.html")]
pub struct TaskPage {
    pub chrome: Chrome,
    pub dag_id: String,
    pub dag_id_url: String,
    pub run_id: String,
    pub run_id_url: String,
    pub task_id: String,
    pub task_id_url: String,
    /// -1 for an unmapped task.
    pub map_index: i64,
    pub state: String,
    pub fields: Vec<(String, String)>,
    pub tries: Vec<i64>,
    pub shown_try: i64,
    pub log_lines: Vec<LogLineView>,
    pub log_next: i64,
    pub live: bool,
    /// The page holds only the first lines of a long log.
    pub truncated: bool,
    pub xcoms: Vec<(String, String)>,
    pub rendered: Vec<(String, String)>,
    pub callbacks: Vec<CallbackItem>,
    /// Why it is not running: (dependency, reason); empty once it runs or ended.
    pub waiting_on: Vec<(String, String)>,
}

/// A callback of the task instance, as its page lists it.
pub struct CallbackItem {
    pub try_number: i64,
    pub event: String,
    pub description: String,
    /// pending, running, success or failed.
    pub status: String,
    pub attempts: i64,
    /// The latest attempt's summary line.
    pub last: String,
}

pub struct LogLineView {
    pub at: String,
    pub stream: String,
    /// (css class, text) spans after ANSI colour codes were interpreted.
    pub spans: Vec<(String, String)>,
}

#[derive(Template)]
#[template(path = "trigger.html")]
pub struct TriggerPage {
    pub chrome: Chrome,
    pub dag_id: String,
    pub dag_id_url: String,
    pub conf: String,
    pub params: Vec<ParamField>,
    pub error: Option<String>,
}

pub struct ParamField {
    pub name: String,
    pub kind: String,
    pub value: String,
    pub required: bool,
    pub description: String,
}

#[derive(Template)]
#[template(path = "clear.html")]
pub struct ClearPage {
    pub chrome: Chrome,
    pub dag_id: String,
    pub dag_id_url: String,
    pub run_id: String,
    pub run_id_url: String,
    pub task_id: String,
    pub downstream: bool,
    pub upstream: bool,
    /// (task id, current state) of what will be cleared.
    pub affected: Vec<(String, String)>,
}

pub struct AuditItem {
    pub at: String,
    pub username: String,
    pub event: String,
    pub dag_id: String,
    pub run_id: String,
    pub task_id: String,
    pub extra: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
pub struct AuditPage {
    pub chrome: Chrome,
    pub items: Vec<AuditItem>,
    pub dag_filter: String,
}

#[derive(Template)]
#[template(path = "pools.html")]
pub struct PoolsPage {
    pub chrome: Chrome,
    pub pools: Vec<flow_store::PoolRow>,
    pub can_operate: bool,
}

/// One variable as the Variables page shows it: a secret's value is `***`.
#[derive(Debug)]
pub struct VariableItem {
    pub key: String,
    pub value: String,
    pub description: String,
}

#[derive(Template)]
#[template(path = "variables.html")]
pub struct VariablesPage {
    pub chrome: Chrome,
    pub variables: Vec<VariableItem>,
    pub can_operate: bool,
}

#[derive(Template)]
#[template(path = "import_errors.html")]
pub struct ImportErrorsPage {
    pub chrome: Chrome,
    pub errors: Vec<(String, String, String)>,
}

/// Splits a log line into spans by ANSI SGR colour codes (`ESC[31m` ...), dropping every
/// other escape sequence. The text stays text: the template escapes it.
pub fn ansi_spans(line: &str) -> Vec<(String, String)> {
    let mut spans = Vec::new();
    let mut class = String::new();
    let mut text = String::new();
    let mut rest = line;
    while let Some(pos) = rest.find('\u{1b}') {
        text.push_str(&rest[..pos]);
        rest = &rest[pos + 1..];
        let Some(body) = rest.strip_prefix('[') else {
            continue;
        };
        let end = body
            .find(|c: char| c.is_ascii_alphabetic())
            .unwrap_or(body.len());
        let (params, after) = body.split_at(end);
        let command = after.chars().next();
        rest = after.get(1..).unwrap_or("");
        if command != Some('m') {
            continue;
        }
        if !text.is_empty() {
            spans.push((class.clone(), std::mem::take(&mut text)));
        }
        for p in params.split(';') {
            match p {
                "" | "0" | "39" => class.clear(),
                "1" => class = "ansi-bold".into(),
                "30" | "90" => class = "ansi-black".into(),
                "31" | "91" => class = "ansi-red".into(),
                "32" | "92" => class = "ansi-green".into(),
                "33" | "93" => class = "ansi-yellow".into(),
                "34" | "94" => class = "ansi-blue".into(),
                "35" | "95" => class = "ansi-magenta".into(),
                "36" | "96" => class = "ansi-cyan".into(),
                "37" | "97" => class = "ansi-white".into(),
                _ => {}
            }
        }
    }
    text.push_str(rest);
    if !text.is_empty() || spans.is_empty() {
        spans.push((class, text));
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_colours_become_classes_and_other_escapes_vanish() {
        assert_eq!(
            ansi_spans("plain \u{1b}[31mred\u{1b}[0m back"),
            vec![
                (String::new(), "plain ".to_owned()),
                ("ansi-red".to_owned(), "red".to_owned()),
                (String::new(), " back".to_owned()),
            ]
        );
        assert_eq!(
            ansi_spans("\u{1b}[2Kcleared"),
            vec![(String::new(), "cleared".to_owned())]
        );
        assert_eq!(ansi_spans(""), vec![(String::new(), String::new())]);
    }

    #[test]
    fn encodes_urls_and_durations() {
        assert_eq!(url_encode("a b/c?d"), "a%20b%2Fc%3Fd");
        assert_eq!(fmt_duration(Some(1.25)), "1.2s");
        assert_eq!(fmt_duration(Some(0.0123)), "12 ms");
        assert_eq!(fmt_duration(Some(184.0)), "3m 04s");
        assert_eq!(fmt_duration(Some(7500.0)), "2h 05m");
        assert_eq!(fmt_duration(None), "");
    }
}

/// One asset as the Assets page lists it.
#[derive(Debug)]
pub struct AssetItem {
    pub id: i64,
    pub uri: String,
    pub name: String,
    pub group: String,
    /// (dag_id, task_id) of the tasks that update it.
    pub producers: Vec<(String, String)>,
    /// The DAGs scheduled on it.
    pub consumers: Vec<String>,
    /// (dag_id, task_id) of the tasks that read it (`inlets`).
    pub readers: Vec<(String, String)>,
    pub last_event: String,
    /// (dag_id, events) waiting for a DAG.
    pub queued: Vec<(String, i64)>,
}

#[derive(Template)]
#[template(path = "assets.html")]
pub struct AssetsPage {
    pub chrome: Chrome,
    pub items: Vec<AssetItem>,
    pub total: i64,
}

/// One event as an asset's page shows it.
#[derive(Debug)]
pub struct AssetEventItem {
    pub id: i64,
    pub timestamp: String,
    /// (dag_id, run_id, run_id URL-encoded, task_id) of the task that made it, if a task did.
    pub source: Option<(String, String, String, String)>,
    pub extra: String,
    /// (dag_id, run_id, run_id URL-encoded) of the runs it triggered.
    pub runs: Vec<(String, String, String)>,
}

#[derive(Template)]
#[template(path = "asset.html")]
pub struct AssetPage {
    pub chrome: Chrome,
    pub can_operate: bool,
    pub id: i64,
    pub uri: String,
    pub name: String,
    pub group: String,
    pub producers: Vec<(String, String)>,
    pub consumers: Vec<String>,
    pub readers: Vec<(String, String)>,
    pub queued: Vec<(String, i64)>,
    pub events: Vec<AssetEventItem>,
    pub total_events: i64,
}

/// A process of the deployment, as the cluster page lists it.
pub struct ComponentRow {
    pub job_type: String,
    pub hostname: String,
    pub id: String,
    pub queues: String,
    /// healthy, unhealthy or ended.
    pub health: String,
    pub heartbeat_age: String,
    pub started: String,
}

/// A pool's use, as the cluster page shows it.
pub struct PoolUse {
    pub name: String,
    pub slots: String,
    pub running: i64,
    pub queued: i64,
    pub open: String,
    /// 0..=100, for the bar.
    pub used_pct: i64,
}

#[derive(Template)]
#[template(path = "cluster.html")]
pub struct ClusterPage {
    pub chrome: Chrome,
    pub components: Vec<ComponentRow>,
    pub pools: Vec<PoolUse>,
    /// Unfinished task instances by state.
    pub task_counts: Vec<(String, i64)>,
    /// Inline SVG, made by `charts` (escaped there).
    pub tries_chart: String,
    pub runs_chart: String,
    pub durations_chart: String,
    /// The last day's totals: (what, count, state class).
    pub summary: Vec<(String, i64, String)>,
}

/// What the navigation offers by role (the admin pages check again on every request).
impl Chrome {
    fn role(&self) -> Option<flow_model::Role> {
        flow_model::Role::parse(&self.role).ok()
    }

    /// Connections: Op and Admin.
    pub fn can_operate(&self) -> bool {
        self.role()
            .is_some_and(|r| r.can(flow_model::Permission::Operate))
    }

    /// Users: Admin.
    pub fn can_manage_users(&self) -> bool {
        self.role()
            .is_some_and(|r| r.can(flow_model::Permission::ManageUsers))
    }
}

#[derive(Template)]
#[template(path = "settings.html")]
pub struct SettingsPage {
    pub chrome: Chrome,
    /// Every IANA zone name, for the selector.
    pub zones: Vec<String>,
    pub current: String,
    pub default_zone: String,
    pub next: String,
    /// The time now in the current zone, as pages show it.
    pub now: String,
}

/// The Versions tab: the DAG's versions and the diff of one against another.
pub struct VersionsView {
    pub items: Vec<VersionItem>,
    /// The version shown and the one it is compared with (`None`: the first version).
    pub shown: i64,
    pub against: Option<i64>,
    pub hunks: Vec<crate::diff::Hunk>,
    pub total: i64,
}

pub struct VersionItem {
    pub number: i64,
    pub created: String,
    pub hash: String,
    pub file: String,
    pub selected: bool,
}
