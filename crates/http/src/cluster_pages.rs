//! The cluster page: the deployment's processes (schedulers, workers, triggerers, web
//! servers) with their heartbeats, the pools, the task instances waiting and running, and
//! the last 24 hours of tries and runs as server-side charts.

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use chrono::{DateTime, Utc};
use flow_model::Permission;
use flow_store::{HourStats, JobQuery};

use crate::charts::{Bar, MAX_SERIES, lines, stacked_bars};
use crate::views::{self, Chrome, fmt_duration, page};
use crate::{AppState, CurrentUser, HttpError};

pub fn routes() -> Router<AppState> {
    Router::new().route("/cluster", get(cluster))
}

/// A process that has not heartbeat for this long is shown as unhealthy (Airflow's default
/// `scheduler_health_check_threshold`).
const HEALTHY_WITHIN: i64 = 30;

async fn cluster(State(state): State<AppState>, user: CurrentUser) -> Result<Response, HttpError> {
    user.require(Permission::Read)?;
    let store = state.store();
    let now = Utc::now();
    let (jobs, _) = store
        .job_list(&JobQuery {
            limit: 500,
            ..JobQuery::default()
        })
        .await?;
    let mut components: Vec<views::ComponentRow> = jobs
        .iter()
        .filter(|j| j.end_date.is_none() || now - j.latest_heartbeat < chrono::Duration::hours(1))
        .map(|j| {
            let age = (now - j.latest_heartbeat).num_seconds().max(0);
            let health = if j.end_date.is_some() || j.state != "running" {
                "ended"
            } else if age <= HEALTHY_WITHIN {
                "healthy"
            } else {
                "unhealthy"
            };
            views::ComponentRow {
                job_type: component_name(&j.job_type).to_owned(),
                hostname: j.hostname.clone(),
                id: j.instance.clone().unwrap_or_else(|| j.id.to_string()),
                queues: j.queues.join(", "),
                health: health.to_owned(),
                heartbeat_age: format!("{age}s ago"),
                started: views::fmt_time(&Some(j.start_date)),
            }
        })
        .collect();
    components.sort_by(|a, b| (&a.job_type, &a.hostname).cmp(&(&b.job_type, &b.hostname)));
    let counts = store.monitor_counts().await?;
    let pools = counts
        .pools
        .iter()
        .map(|p| views::PoolUse {
            name: p.name.clone(),
            slots: if p.slots < 0 {
                "unlimited".to_owned()
            } else {
                p.slots.to_string()
            },
            running: p.running,
            queued: p.queued,
            open: if p.slots < 0 {
                "∞".to_owned()
            } else {
                p.open().to_string()
            },
            used_pct: if p.slots > 0 {
                (p.occupied() * 100 / p.slots).clamp(0, 100)
            } else {
                0
            },
        })
        .collect();
    let day = store.last_day(now).await?;
    Ok(page(&views::ClusterPage {
        chrome: Chrome::of(&user),
        components,
        pools,
        task_counts: counts.task_instances.into_iter().collect(),
        tries_chart: tries_chart("tries-chart", &day),
        runs_chart: runs_chart("runs-chart", &day),
        durations_chart: durations_chart("durations-chart", &day),
        summary: day_summary(&day),
    }))
}

/// Airflow's job type names, as a person reads them.
fn component_name(job_type: &str) -> &str {
    match job_type {
        "SchedulerJob" => "scheduler",
        "WorkerJob" => "worker",
        "TriggererJob" => "triggerer",
        "WebserverJob" | "ApiServerJob" => "web server",
        "DagProcessorJob" => "dag processor",
        "KafkaTriggerJob" => "kafka consumer",
        other => other,
    }
}

/// An hour's label in the user's zone (`%H:%M`: some zones are half an hour off UTC).
fn hour_label(h: &DateTime<Utc>) -> String {
    h.with_timezone(&views::ui_timezone())
        .format("%H:%M")
        .to_string()
}

/// Ended tries per hour, failures on top so that they stand out.
pub fn tries_chart(id: &str, day: &[HourStats]) -> String {
    let order = [
        "success",
        "skipped",
        "up_for_retry",
        "upstream_failed",
        "failed",
    ];
    let bars: Vec<Bar> = day
        .iter()
        .map(|h| Bar {
            label: hour_label(&h.hour),
            parts: order
                .iter()
                .map(|s| {
                    (
                        (*s).to_owned(),
                        h.tries.get(*s).copied().unwrap_or(0) as f64,
                    )
                })
                .collect(),
        })
        .collect();
    stacked_bars(id, &bars, "tries")
}

/// Finished runs per hour by state.
pub fn runs_chart(id: &str, day: &[HourStats]) -> String {
    let bars: Vec<Bar> = day
        .iter()
        .map(|h| Bar {
            label: hour_label(&h.hour),
            parts: ["success", "failed"]
                .iter()
                .map(|s| ((*s).to_owned(), h.runs.get(*s).copied().unwrap_or(0) as f64))
                .collect(),
        })
        .collect();
    stacked_bars(id, &bars, "runs")
}

/// The mean duration of the runs that finished in each hour.
pub fn durations_chart(id: &str, day: &[HourStats]) -> String {
    let bars: Vec<Bar> = day
        .iter()
        .map(|h| {
            let n: i64 = h.runs.values().sum();
            let mean = if n > 0 { h.run_seconds / n as f64 } else { 0.0 };
            Bar {
                label: hour_label(&h.hour),
                parts: vec![("running".to_owned(), (mean * 10.0).round() / 10.0)],
            }
        })
        .collect();
    stacked_bars(id, &bars, "s mean run duration")
}

/// Totals of the last day: `(what, count, state class)`.
pub fn day_summary(day: &[HourStats]) -> Vec<(String, i64, String)> {
    let sum = |f: &dyn Fn(&HourStats) -> i64| day.iter().map(f).sum::<i64>();
    let tries_failed = sum(&|h| h.tries.get("failed").copied().unwrap_or(0));
    let tries = sum(&|h| h.tries.values().sum());
    let runs_failed = sum(&|h| h.runs.get("failed").copied().unwrap_or(0));
    let runs = sum(&|h| h.runs.values().sum());
    let seconds: f64 = day.iter().map(|h| h.run_seconds).sum();
    let mean = (runs > 0).then(|| seconds / runs as f64);
    vec![
        ("tries ended".into(), tries, "none".into()),
        ("tries failed".into(), tries_failed, "failed".into()),
        ("runs finished".into(), runs, "none".into()),
        ("runs failed".into(), runs_failed, "failed".into()),
        (
            format!("mean run duration {}", fmt_duration(mean)),
            runs,
            "success".into(),
        ),
    ]
}

/// The home page's summary, from the same reads as the cluster page.
pub async fn overview(state: &AppState) -> Result<views::Overview, HttpError> {
    let store = state.store();
    let now = Utc::now();
    let (jobs, _) = store
        .job_list(&JobQuery {
            limit: 500,
            ..JobQuery::default()
        })
        .await?;
    let mut health: Vec<(String, usize, usize)> = Vec::new();
    for j in jobs
        .iter()
        .filter(|j| j.end_date.is_none() && j.state == "running")
    {
        let name = component_name(&j.job_type).to_owned();
        let ok = (now - j.latest_heartbeat).num_seconds() <= HEALTHY_WITHIN;
        match health.iter_mut().find(|(n, _, _)| *n == name) {
            Some(entry) => {
                entry.1 += usize::from(ok);
                entry.2 += 1;
            }
            None => health.push((name, usize::from(ok), 1)),
        }
    }
    health.sort();
    let pools = store
        .pool_rows()
        .await?
        .into_iter()
        .map(|p| {
            let slots = if p.slots < 0 {
                "unlimited".to_owned()
            } else {
                p.slots.to_string()
            };
            (p.name.clone(), p.occupied(), slots)
        })
        .collect();
    let day = store.last_day(now).await?;
    Ok(views::Overview {
        dags: store.dag_counts().await?,
        health,
        pools,
        tries_chart: tries_chart("home-tries-chart", &day),
        runs_chart: runs_chart("home-runs-chart", &day),
        day: day_summary(&day),
    })
}

/// Runs the Overview tab charts, and failures it shows with their logs.
const OVERVIEW_RUNS: i64 = 30;
const OVERVIEW_FAILURES: i64 = 5;
const LOG_TAIL: i64 = 12;

/// A DAG's Overview tab.
pub async fn dag_overview(
    state: &AppState,
    dag_id: &str,
    window: Option<&str>,
) -> Result<views::DagOverview, HttpError> {
    let store = state.store();
    let now = Utc::now();
    let (window, span) = match window {
        Some("7d") => ("7d", chrono::Duration::days(7)),
        Some("30d") => ("30d", chrono::Duration::days(30)),
        _ => ("24h", chrono::Duration::hours(24)),
    };
    let (failed_tries, failed_runs) = store.failure_counts(dag_id, now - span).await?;
    let mut runs = store.dag_run_list(dag_id, OVERVIEW_RUNS).await?;
    runs.reverse(); // oldest first, as time runs left to right
    let bars: Vec<Bar> = runs
        .iter()
        .map(|r| {
            let queued = match (r.queued_at, r.start_date) {
                (Some(q), Some(s)) => (s - q).num_milliseconds().max(0) as f64 / 1000.0,
                (Some(q), None) => (now - q).num_milliseconds().max(0) as f64 / 1000.0,
                _ => 0.0,
            };
            let running = match (r.start_date, r.end_date) {
                (Some(s), Some(e)) => (e - s).num_milliseconds().max(0) as f64 / 1000.0,
                (Some(s), None) => (now - s).num_milliseconds().max(0) as f64 / 1000.0,
                _ => 0.0,
            };
            Bar {
                label: r.run_id.clone(),
                parts: vec![
                    ("queued".to_owned(), (queued * 10.0).round() / 10.0),
                    (r.state.as_str().to_owned(), (running * 10.0).round() / 10.0),
                ],
            }
        })
        .collect();
    let (task_durations_chart, task_series) = task_durations(store, dag_id, &runs).await?;
    let mut failures = Vec::new();
    for f in store
        .failed_tries(dag_id, now - span, OVERVIEW_FAILURES)
        .await?
    {
        let key = flow_store::TiKey::new(dag_id, &f.run_id, &f.task_id, f.map_index);
        let lines = store
            .log_tail(&key, f.try_number, LOG_TAIL)
            .await?
            .into_iter()
            .map(|l| l.line)
            .collect();
        let index = if f.map_index >= 0 {
            format!("&map_index={}", f.map_index)
        } else {
            String::new()
        };
        failures.push(views::FailureExcerpt {
            url: format!(
                "/dags/{}/runs/{}/tasks/{}?try={}{index}",
                views::url_encode(dag_id),
                views::url_encode(&f.run_id),
                views::url_encode(&f.task_id),
                f.try_number
            ),
            run_id: f.run_id,
            task_id: f.task_id,
            try_number: f.try_number,
            ended: views::fmt_time(&Some(f.end_date)),
            lines,
        });
    }
    Ok(views::DagOverview {
        window: window.to_owned(),
        failed_tries,
        failed_runs,
        durations_chart: stacked_bars("run-durations-chart", &bars, "s"),
        calendar: calendar(
            &store
                .daily_run_states(dag_id, now - chrono::Duration::days(364))
                .await?,
            now,
        ),
        failures,
        task_durations_chart,
        task_series,
    })
}

/// The longest tasks' durations over the recent runs (Airflow's Task Duration chart): one
/// line per task, the [`MAX_SERIES`] tasks with the longest mean duration.
async fn task_durations(
    store: &flow_store::Store,
    dag_id: &str,
    runs: &[flow_store::DagRunRow],
) -> Result<(String, Vec<String>), HttpError> {
    let rows = store
        .ti_durations_for_latest_runs(dag_id, OVERVIEW_RUNS)
        .await?;
    let column: std::collections::HashMap<&str, usize> = runs
        .iter()
        .enumerate()
        .map(|(i, r)| (r.run_id.as_str(), i))
        .collect();
    let mut by_task: std::collections::BTreeMap<String, Vec<Option<f64>>> = Default::default();
    for (run_id, task_id, seconds) in rows {
        let Some(&i) = column.get(run_id.as_str()) else {
            continue;
        };
        by_task
            .entry(task_id)
            .or_insert_with(|| vec![None; runs.len()])[i] = Some(seconds);
    }
    let mean = |v: &[Option<f64>]| {
        let known: Vec<f64> = v.iter().flatten().copied().collect();
        known.iter().sum::<f64>() / known.len().max(1) as f64
    };
    let mut series: Vec<(String, Vec<Option<f64>>)> = by_task.into_iter().collect();
    series.sort_by(|a, b| mean(&b.1).total_cmp(&mean(&a.1)).then(a.0.cmp(&b.0)));
    series.truncate(MAX_SERIES);
    let labels: Vec<String> = runs.iter().map(|r| r.run_id.clone()).collect();
    let names = series.iter().map(|(name, _)| name.clone()).collect();
    Ok((lines("task-durations-chart", &labels, &series, "s"), names))
}

/// A year of days, a week per column (Monday first), each day coloured by its worst run
/// state (failed over running over success), as Airflow's Calendar view.
fn calendar(
    days: &[(chrono::NaiveDate, String, i64)],
    now: DateTime<Utc>,
) -> Vec<Vec<(String, String, String)>> {
    use chrono::Datelike as _;
    let today = now.date_naive();
    let mut start = today - chrono::Duration::days(364);
    start -= chrono::Duration::days(i64::from(start.weekday().num_days_from_monday()));
    let mut weeks = Vec::new();
    let mut day = start;
    while day <= today {
        let mut week = Vec::with_capacity(7);
        for _ in 0..7 {
            let on: Vec<&(chrono::NaiveDate, String, i64)> =
                days.iter().filter(|(d, _, _)| *d == day).collect();
            let has = |s: &str| on.iter().any(|(_, st, _)| st == s);
            let class = if day > today {
                "future"
            } else if has("failed") {
                "failed"
            } else if has("running") || has("queued") {
                "running"
            } else if has("success") {
                "success"
            } else {
                "none"
            };
            let counts: Vec<String> = on.iter().map(|(_, s, n)| format!("{n} {s}")).collect();
            let title = if counts.is_empty() {
                format!("{day}: no runs")
            } else {
                format!("{day}: {}", counts.join(", "))
            };
            week.push((day.to_string(), class.to_owned(), title));
            day += chrono::Duration::days(1);
        }
        weeks.push(week);
    }
    weeks
}
