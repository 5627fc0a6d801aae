//! The Grid tab: runs as columns (a page of them, oldest on the left as in Airflow), tasks as
//! rows under collapsible task groups, and a details panel for the selected run, task instance
//! or group, served alone too so the page can swap it in without reloading.
//!
//! A grid is paged both ways (at most [`MAX_RUNS`] runs by [`GRID_ROWS`] rows), so even a DAG
//! with 1,000 runs of 500 tasks never makes a page of more than about a megabyte.

use std::collections::HashMap;

use askama::Template;
use axum::Form;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::Utc;
use flow_dag::{Dag, Task};
use flow_model::{Permission, TaskInstanceState as S};
use flow_store::{DagRunRow, TaskStates, TiKey, TiRow};
use serde::Deserialize;

use crate::views::{self, fmt_duration, fmt_short, fmt_time, url_encode};
use crate::{AppState, CurrentUser, HttpError, auth};

/// Runs on a grid page unless asked otherwise, and at most.
pub const GRID_RUNS: i64 = 25;
pub const MAX_RUNS: i64 = 100;
/// Rows (tasks and groups) on a grid page.
pub const GRID_ROWS: usize = 200;
/// Instances of a mapped task listed in the panel.
const PANEL_INSTANCES: usize = 100;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/dags/{dag_id}/grid/details", get(details_fragment))
        .route("/dags/{dag_id}/runs/{run_id}/note", post(set_note))
        .route(
            "/dags/{dag_id}/runs/{run_id}/tasks/{task_id}/note",
            post(set_ti_note),
        )
}

/// What the grid shows: which page of runs and rows, and what is selected.
#[derive(Debug, Default, Deserialize)]
pub struct GridQuery {
    /// Runs per page.
    pub runs: Option<i64>,
    /// Runs skipped from the newest (the page of older runs).
    pub offset: Option<i64>,
    /// Rows skipped from the top.
    pub rows_offset: Option<usize>,
    /// The selected run, and in it a task (or group) and an instance of a mapped task.
    pub run_id: Option<String>,
    pub task_id: Option<String>,
    pub map_index: Option<i64>,
}

impl GridQuery {
    fn runs(&self) -> i64 {
        self.runs.unwrap_or(GRID_RUNS).clamp(1, MAX_RUNS)
    }

    fn offset(&self) -> i64 {
        self.offset.unwrap_or(0).max(0)
    }

    /// The grid's URL with this page and `selection` (a run, a task in it, an instance).
    fn url(
        &self,
        dag_id_url: &str,
        selection: Option<(&str, Option<&str>, Option<i64>)>,
    ) -> String {
        let mut url = format!("/dags/{dag_id_url}?tab=grid&runs={}", self.runs());
        if self.offset() > 0 {
            url.push_str(&format!("&offset={}", self.offset()));
        }
        if let Some(rows) = self.rows_offset.filter(|r| *r > 0) {
            url.push_str(&format!("&rows_offset={rows}"));
        }
        if let Some((run, task, index)) = selection {
            url.push_str(&format!("&run_id={}", url_encode(run)));
            if let Some(task) = task {
                url.push_str(&format!("&task_id={}", url_encode(task)));
            }
            if let Some(index) = index.filter(|i| *i >= 0) {
                url.push_str(&format!("&map_index={index}"));
            }
        }
        url
    }
}

/// One row of the grid: a task group (with the state that stands for its tasks) or a task.
pub struct GridRow {
    pub task_id: String,
    pub task_id_url: String,
    /// What the row shows: a task's label or a group's last id part.
    pub label: String,
    pub is_group: bool,
    /// How deep in task groups (0: top level).
    pub depth: usize,
    /// The ids of the groups it is in, space separated (collapsing any hides it).
    pub groups: String,
    /// One cell per run in column order.
    pub cells: Vec<views::GridCell>,
}

/// One column's head: the run's logical date and duration, its state and its duration bar.
pub struct GridRun {
    pub run_id: String,
    pub run_id_url: String,
    pub state: String,
    /// `12-05 08:30` in the user's zone.
    pub date: String,
    /// The full logical date (or run after), for the tooltip.
    pub label: String,
    /// 0..=10, the height of the duration bar relative to the longest shown.
    pub bar: u8,
    pub duration: String,
    /// The grid with this run selected.
    pub url: String,
    pub selected: bool,
}

/// The page's grid, its paging links and the panel for the selection.
pub struct Grid {
    pub runs: Vec<GridRun>,
    pub rows: Vec<GridRow>,
    /// `runs 26–50 of 1000`, `rows 1–200 of 520`.
    pub runs_shown: String,
    pub rows_shown: String,
    pub newer: Option<String>,
    pub older: Option<String>,
    pub rows_prev: Option<String>,
    pub rows_next: Option<String>,
    /// The grid page's URL without a selection (what Escape goes back to).
    pub url: String,
    /// The rendered details panel (our own escaped template), or empty.
    pub panel: String,
    /// Whether a run is still going (the page refreshes itself then).
    pub live: bool,
}

/// A row before it gets its cells: a group and the tasks under it, or a task.
enum Entry<'a> {
    Group {
        group_id: &'a str,
        tasks: Vec<&'a str>,
    },
    Task(&'a Task),
}

/// Tasks in DAG order under their groups: a group comes where its first task would, and holds
/// its tasks and subgroups in their order (Airflow's grid tree).
fn entries(dag: &Dag) -> Vec<(Entry<'_>, usize, Vec<&str>)> {
    let parent: HashMap<&str, Option<&str>> = dag
        .task_groups
        .iter()
        .map(|g| (g.group_id.as_str(), g.parent.as_deref()))
        .collect();
    // Children of each group (None: the top level), in order of first appearance.
    enum Child<'a> {
        Group(&'a str),
        Task(&'a Task),
    }
    let mut children: HashMap<Option<&str>, Vec<Child<'_>>> = HashMap::new();
    let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for task in &dag.tasks {
        let group = task.group_id.as_deref().filter(|g| parent.contains_key(g));
        // Register the group chain, outermost first, each under its parent.
        let mut chain = Vec::new();
        let mut at = group;
        while let Some(g) = at {
            if seen.contains(g) || chain.contains(&g) {
                break;
            }
            chain.push(g);
            at = parent.get(g).copied().flatten();
        }
        for g in chain.into_iter().rev() {
            seen.insert(g);
            let up = parent.get(g).copied().flatten();
            children.entry(up).or_default().push(Child::Group(g));
        }
        children.entry(group).or_default().push(Child::Task(task));
    }
    fn walk<'a>(
        at: Option<&'a str>,
        depth: usize,
        ancestors: &mut Vec<&'a str>,
        children: &HashMap<Option<&'a str>, Vec<Child<'a>>>,
        out: &mut Vec<(Entry<'a>, usize, Vec<&'a str>)>,
    ) -> Vec<&'a str> {
        let mut tasks = Vec::new();
        for child in children.get(&at).map(Vec::as_slice).unwrap_or_default() {
            match child {
                Child::Task(t) => {
                    tasks.push(t.task_id.as_str());
                    out.push((Entry::Task(t), depth, ancestors.clone()));
                }
                Child::Group(g) => {
                    let slot = out.len();
                    out.push((
                        Entry::Group {
                            group_id: g,
                            tasks: Vec::new(),
                        },
                        depth,
                        ancestors.clone(),
                    ));
                    ancestors.push(g);
                    let inner = walk(Some(g), depth + 1, ancestors, children, out);
                    ancestors.pop();
                    tasks.extend(&inner);
                    if let Entry::Group { tasks: t, .. } = &mut out[slot].0 {
                        *t = inner;
                    }
                }
            }
        }
        tasks
    }
    let mut out = Vec::new();
    walk(None, 0, &mut Vec::new(), &children, &mut out);
    out
}

/// One task's cell in one run: its state, or for a mapped task the state that stands for its
/// instances, how many there are, and how many are in each state.
fn task_cell(states: Option<&TaskStates>) -> views::GridCell {
    let Some(states) = states else {
        return views::GridCell {
            state: "none".to_owned(),
            mapped: 0,
            counts: String::new(),
        };
    };
    views::GridCell {
        state: states.summary().as_str().to_owned(),
        mapped: if states.mapped {
            states.states.len()
        } else {
            0
        },
        counts: counts_text(&states.counts()),
    }
}

fn counts_text(counts: &[(S, usize)]) -> String {
    counts
        .iter()
        .map(|(s, n)| format!("{n} {s}"))
        .collect::<Vec<_>>()
        .join(" · ")
}

/// A group's cell: the state standing for all its tasks' instances in the run.
fn group_cell(tasks: &[&str], run: Option<&HashMap<String, TaskStates>>) -> views::GridCell {
    let all = TaskStates {
        mapped: false,
        states: tasks
            .iter()
            .flat_map(|t| {
                run.and_then(|r| r.get(*t))
                    .map_or(vec![S::NoStatus], |s| s.states.clone())
            })
            .collect(),
    };
    views::GridCell {
        state: all.summary().as_str().to_owned(),
        mapped: 0,
        counts: counts_text(&all.counts()),
    }
}

fn run_seconds(r: &DagRunRow) -> Option<f64> {
    let start = r.start_date?;
    let end = r.end_date.unwrap_or_else(Utc::now);
    Some((end - start).num_milliseconds() as f64 / 1000.0)
}

/// The grid for one page of runs and rows, with the panel of the selection if any.
pub async fn grid(
    state: &AppState,
    user: &CurrentUser,
    dag: &Dag,
    q: &GridQuery,
) -> Result<Grid, HttpError> {
    let store = state.store();
    let dag_id = dag.dag_id.as_str();
    let dag_id_url = url_encode(dag_id);
    let (n, offset) = (q.runs(), q.offset());
    let total_runs = store.dag_run_count(dag_id).await?;
    let mut runs = store.dag_run_page(dag_id, n, offset).await?;
    runs.reverse(); // oldest on the left, as in Airflow
    let run_ids: Vec<String> = runs.iter().map(|r| r.run_id.clone()).collect();
    let by_run = store.ti_states_for_runs(dag_id, &run_ids).await?;
    let durations: Vec<Option<f64>> = runs.iter().map(run_seconds).collect();
    let longest = durations.iter().flatten().copied().fold(0.0_f64, f64::max);
    let selected_run = q.run_id.as_deref();
    let columns: Vec<GridRun> = runs
        .iter()
        .zip(&durations)
        .map(|(r, d)| {
            let when = r.logical_date.unwrap_or(r.run_after);
            GridRun {
                run_id: r.run_id.clone(),
                run_id_url: url_encode(&r.run_id),
                state: r.state.as_str().to_owned(),
                date: fmt_short(&when),
                label: fmt_time(&Some(when)),
                bar: d.map_or(0, |d| {
                    if longest <= 0.0 {
                        1
                    } else {
                        ((d / longest) * 10.0).ceil().clamp(1.0, 10.0) as u8
                    }
                }),
                duration: fmt_duration(*d),
                url: q.url(&dag_id_url, Some((&r.run_id, None, None))),
                selected: selected_run == Some(r.run_id.as_str()) && q.task_id.is_none(),
            }
        })
        .collect();
    let all = entries(dag);
    let total_rows = all.len();
    let first_row = q.rows_offset.unwrap_or(0).min(total_rows.saturating_sub(1));
    let run_states: Vec<Option<&HashMap<String, TaskStates>>> =
        runs.iter().map(|r| by_run.get(&r.run_id)).collect();
    let rows = all
        .iter()
        .skip(first_row)
        .take(GRID_ROWS)
        .map(|(entry, depth, ancestors)| {
            let groups = ancestors.join(" ");
            match entry {
                Entry::Group { group_id, tasks } => GridRow {
                    task_id: (*group_id).to_owned(),
                    task_id_url: url_encode(group_id),
                    label: group_id.rsplit('.').next().unwrap_or(group_id).to_owned(),
                    is_group: true,
                    depth: (*depth).min(5),
                    groups,
                    cells: run_states.iter().map(|r| group_cell(tasks, *r)).collect(),
                },
                Entry::Task(t) => GridRow {
                    task_id: t.task_id.to_string(),
                    task_id_url: url_encode(t.task_id.as_str()),
                    label: t.display_name.clone().unwrap_or_else(|| t.label.clone()),
                    is_group: false,
                    depth: (*depth).min(5),
                    groups,
                    cells: run_states
                        .iter()
                        .map(|r| task_cell(r.and_then(|m| m.get(t.task_id.as_str()))))
                        .collect(),
                },
            }
        })
        .collect::<Vec<_>>();
    let page = |offset: i64| GridQuery {
        runs: Some(n),
        offset: Some(offset),
        rows_offset: q.rows_offset,
        ..GridQuery::default()
    };
    let rows_page = |rows: usize| GridQuery {
        runs: Some(n),
        offset: Some(offset),
        rows_offset: Some(rows),
        ..GridQuery::default()
    };
    // A selection that is gone (a deleted run, a task removed from the DAG) leaves the grid
    // without a panel rather than making a bookmarked page a 404.
    let panel = match selected_run {
        Some(run_id) => match details(state, user, dag, run_id, q).await {
            Ok(details) => details
                .render()
                .map_err(|e| HttpError::Internal(format!("details panel: {e}")))?,
            Err(HttpError::NotFound(_)) => String::new(),
            Err(e) => return Err(e),
        },
        None => String::new(),
    };
    let shown = |from: usize, count: usize, total: usize| {
        if count == 0 {
            format!("0 of {total}")
        } else {
            format!("{}–{} of {total}", from + 1, from + count)
        }
    };
    Ok(Grid {
        live: runs.iter().any(|r| !r.state.is_finished()),
        runs_shown: shown(
            usize::try_from(offset).unwrap_or(0),
            runs.len(),
            usize::try_from(total_runs).unwrap_or(0),
        ),
        rows_shown: shown(first_row, rows.len(), total_rows),
        newer: (offset > 0).then(|| page((offset - n).max(0)).url(&dag_id_url, None)),
        older: (offset + n < total_runs).then(|| page(offset + n).url(&dag_id_url, None)),
        rows_prev: (first_row > 0)
            .then(|| rows_page(first_row.saturating_sub(GRID_ROWS)).url(&dag_id_url, None)),
        rows_next: (first_row + GRID_ROWS < total_rows)
            .then(|| rows_page(first_row + GRID_ROWS).url(&dag_id_url, None)),
        url: q.url(&dag_id_url, None),
        runs: columns,
        rows,
        panel,
    })
}

/// The details panel: a run, a task instance (or a mapped task's instances) or a group.
#[derive(Template)]
#[template(path = "grid_details.html")]
pub struct Details {
    pub dag_id_url: String,
    pub csrf: String,
    pub can_edit: bool,
    /// Where the panel's forms come back to.
    pub back: String,
    /// The grid without a selection (the panel's close link).
    pub close: String,
    pub run: RunDetails,
    pub task: Option<TaskDetails>,
    pub group: Option<GroupDetails>,
}

pub struct RunDetails {
    pub run_id: String,
    pub run_id_url: String,
    pub state: String,
    pub run_type: String,
    pub facts: Vec<(&'static str, String)>,
    pub conf: String,
    pub note: String,
    pub running: bool,
}

pub struct TaskDetails {
    pub task_id: String,
    pub task_id_url: String,
    /// `?map_index=N` for one instance of a mapped task, else empty.
    pub index_query: String,
    pub map_index: i64,
    pub state: String,
    pub facts: Vec<(&'static str, String)>,
    /// A mapped task's instances: (map index, label, state), and counts per state.
    pub instances: Vec<(i64, String, String)>,
    pub more_instances: usize,
    pub counts: String,
    /// Why it is not running (Airflow's dependencies), when it is waiting.
    pub waiting: Vec<(String, String)>,
    /// The instance exists (a task added after the run has none).
    pub exists: bool,
    /// The instance's note.
    pub note: String,
}

pub struct GroupDetails {
    pub group_id: String,
    pub state: String,
    pub counts: String,
    /// (task id, url-encoded, state).
    pub tasks: Vec<(String, String, String)>,
}

fn run_details(r: &DagRunRow) -> RunDetails {
    let interval = match (r.data_interval_start, r.data_interval_end) {
        (Some(a), Some(b)) => format!("{} – {}", fmt_time(&Some(a)), fmt_time(&Some(b))),
        _ => String::new(),
    };
    let mut facts = vec![
        ("logical date", fmt_time(&r.logical_date)),
        ("data interval", interval),
        ("run after", fmt_time(&Some(r.run_after))),
        ("queued", fmt_time(&r.queued_at)),
        ("started", fmt_time(&r.start_date)),
        ("ended", fmt_time(&r.end_date)),
        ("duration", fmt_duration(run_seconds(r))),
        ("triggered by", r.triggered_by.clone().unwrap_or_default()),
    ];
    facts.retain(|(_, v)| !v.is_empty());
    RunDetails {
        run_id: r.run_id.clone(),
        run_id_url: url_encode(&r.run_id),
        state: r.state.as_str().to_owned(),
        run_type: r.run_type.as_str().to_owned(),
        facts,
        conf: serde_json::to_string_pretty(&r.conf).unwrap_or_default(),
        note: r.note.clone().unwrap_or_default(),
        running: !r.state.is_finished(),
    }
}

fn ti_facts(t: &TiRow) -> Vec<(&'static str, String)> {
    let seconds = t.start_date.map(|s| {
        let end = t.end_date.unwrap_or_else(Utc::now);
        (end - s).num_milliseconds() as f64 / 1000.0
    });
    let mut facts = vec![
        ("try", format!("{} of {}", t.try_number, t.max_tries + 1)),
        ("operator", t.operator.clone()),
        ("pool", t.pool.clone()),
        ("queue", t.queue.clone()),
        ("host", t.hostname.clone()),
        ("scheduled", fmt_time(&t.scheduled_dttm)),
        ("queued", fmt_time(&t.queued_dttm)),
        ("started", fmt_time(&t.start_date)),
        ("ended", fmt_time(&t.end_date)),
        ("duration", fmt_duration(seconds)),
        ("next try", fmt_time(&t.next_retry_at)),
    ];
    facts.retain(|(_, v)| !v.is_empty());
    facts
}

async fn task_details(
    state: &AppState,
    dag: &Dag,
    run: &DagRunRow,
    task: &Task,
    map_index: Option<i64>,
) -> Result<TaskDetails, HttpError> {
    let store = state.store();
    let task_id = task.task_id.as_str();
    let mut details = TaskDetails {
        task_id: task_id.to_owned(),
        task_id_url: url_encode(task_id),
        index_query: String::new(),
        map_index: -1,
        state: "none".to_owned(),
        facts: vec![("operator", task.operator.kind().to_owned())],
        instances: Vec::new(),
        more_instances: 0,
        counts: String::new(),
        waiting: Vec::new(),
        exists: false,
        note: String::new(),
    };
    let index = map_index.unwrap_or(-1);
    let key = TiKey::new(dag.dag_id.as_str(), run.run_id.as_str(), task_id, index);
    if let Some(ti) = store.ti_get(&key).await? {
        details.exists = true;
        details.map_index = index;
        if index >= 0 {
            details.index_query = format!("?map_index={index}");
        }
        details.state = ti.state.as_str().to_owned();
        details.facts = ti_facts(&ti);
        details.note = ti.note.clone().unwrap_or_default();
        if !matches!(ti.state, S::Running | S::Success | S::Skipped | S::Removed) {
            details.waiting = store
                .ti_dependencies(Some(dag), run, &ti, Utc::now())
                .await?
                .into_iter()
                .map(|d| (d.name, d.reason))
                .collect();
        }
        return Ok(details);
    }
    // A mapped task without an index: its instances, and how many are in each state.
    let instances: Vec<TiRow> = store
        .ti_list_for_run(dag.dag_id.as_str(), &run.run_id)
        .await?
        .into_iter()
        .filter(|t| t.key.task_id == task_id && t.key.map_index >= 0)
        .collect();
    if instances.is_empty() {
        return Ok(details);
    }
    details.exists = true;
    let states = TaskStates {
        mapped: true,
        states: instances.iter().map(|t| t.state).collect(),
    };
    details.state = states.summary().as_str().to_owned();
    details.counts = counts_text(&states.counts());
    details.more_instances = instances.len().saturating_sub(PANEL_INSTANCES);
    details.instances = instances
        .iter()
        .take(PANEL_INSTANCES)
        .map(|t| {
            (
                t.key.map_index,
                t.rendered_map_index.clone().unwrap_or_default(),
                t.state.as_str().to_owned(),
            )
        })
        .collect();
    Ok(details)
}

async fn group_details(
    state: &AppState,
    dag: &Dag,
    run: &DagRunRow,
    group_id: &str,
) -> Result<GroupDetails, HttpError> {
    let tasks: Vec<&str> = entries(dag)
        .into_iter()
        .find_map(|(e, _, _)| match e {
            Entry::Group { group_id: g, tasks } if g == group_id => Some(tasks),
            _ => None,
        })
        .unwrap_or_default();
    let by_task = state
        .store()
        .ti_states_for_runs(dag.dag_id.as_str(), std::slice::from_ref(&run.run_id))
        .await?
        .remove(&run.run_id)
        .unwrap_or_default();
    let cell = group_cell(&tasks, Some(&by_task));
    Ok(GroupDetails {
        group_id: group_id.to_owned(),
        state: cell.state,
        counts: cell.counts,
        tasks: tasks
            .iter()
            .map(|t| {
                (
                    (*t).to_owned(),
                    url_encode(t),
                    task_cell(by_task.get(*t)).state,
                )
            })
            .collect(),
    })
}

async fn details(
    state: &AppState,
    user: &CurrentUser,
    dag: &Dag,
    run_id: &str,
    q: &GridQuery,
) -> Result<Details, HttpError> {
    let dag_id = dag.dag_id.as_str();
    let run = state
        .store()
        .dag_run_get(dag_id, run_id)
        .await?
        .ok_or_else(|| HttpError::NotFound(format!("run `{run_id}` of dag `{dag_id}`")))?;
    let dag_id_url = url_encode(dag_id);
    let (mut task, mut group) = (None, None);
    if let Some(task_id) = q.task_id.as_deref() {
        if let Some(t) = dag.task(task_id) {
            task = Some(task_details(state, dag, &run, t, q.map_index).await?);
        } else if dag.task_groups.iter().any(|g| g.group_id == task_id) {
            group = Some(group_details(state, dag, &run, task_id).await?);
        } else {
            return Err(HttpError::NotFound(format!(
                "task or task group `{task_id}` in dag `{dag_id}`"
            )));
        }
    }
    Ok(Details {
        csrf: user.csrf_token.clone(),
        can_edit: user.can_edit(),
        back: q.url(
            &dag_id_url,
            Some((run_id, q.task_id.as_deref(), q.map_index)),
        ),
        close: q.url(&dag_id_url, None),
        dag_id_url,
        run: run_details(&run),
        task,
        group,
    })
}

/// The panel alone, for the grid's script to swap in (the same HTML the page embeds).
async fn details_fragment(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(dag_id): Path<String>,
    Query(q): Query<GridQuery>,
) -> Result<Response, HttpError> {
    user.require(Permission::Read)?;
    let dag = crate::pages::load_dag(&state, &dag_id).await?;
    let run_id = q
        .run_id
        .clone()
        .ok_or_else(|| HttpError::BadRequest("run_id: which run's details?".into()))?;
    let details = details(&state, &user, &dag, &run_id, &q).await?;
    let html = details
        .render()
        .map_err(|e| HttpError::Internal(format!("details panel: {e}")))?;
    Ok(Html(html).into_response())
}

/// Longest note accepted (Airflow's limit is 1,000 characters).
const NOTE_MAX: usize = 1000;

#[derive(Deserialize)]
struct NoteForm {
    csrf_token: String,
    note: String,
    next: Option<String>,
    /// One instance of a mapped task (a task instance's note).
    map_index: Option<i64>,
}

/// The note as stored: trimmed, `None` when empty, refused when too long.
fn form_note(note: &str) -> Result<Option<&str>, HttpError> {
    let note = note.trim();
    if note.chars().count() > NOTE_MAX {
        return Err(HttpError::BadRequest(format!(
            "note: at most {NOTE_MAX} characters"
        )));
    }
    Ok((!note.is_empty()).then_some(note))
}

/// Sets or (empty) removes a task instance's note, from the details panel.
async fn set_ti_note(
    State(state): State<AppState>,
    user: CurrentUser,
    Path((dag_id, run_id, task_id)): Path<(String, String, String)>,
    Form(form): Form<NoteForm>,
) -> Result<Response, HttpError> {
    user.check_csrf(&form.csrf_token)?;
    user.require(Permission::EditDags)?;
    let note = form_note(&form.note)?;
    let key = TiKey::new(
        dag_id.as_str(),
        run_id.as_str(),
        task_id.as_str(),
        form.map_index.unwrap_or(-1),
    );
    if state
        .store()
        .ti_set_note(std::slice::from_ref(&key), note)
        .await?
        == 0
    {
        return Err(HttpError::NotFound(format!("task instance `{task_id}`")));
    }
    crate::pages::audit(
        &state,
        &user.username,
        "set task instance note",
        Some(&dag_id),
        Some(&run_id),
        Some(&task_id),
        None,
    )
    .await;
    Ok(Redirect::to(&auth::safe_next(form.next.as_deref())).into_response())
}

/// Sets or (empty) removes a run's note, from the details panel.
async fn set_note(
    State(state): State<AppState>,
    user: CurrentUser,
    Path((dag_id, run_id)): Path<(String, String)>,
    Form(form): Form<NoteForm>,
) -> Result<Response, HttpError> {
    user.check_csrf(&form.csrf_token)?;
    user.require(Permission::EditDags)?;
    let note = form_note(&form.note)?;
    if !state
        .store()
        .dag_run_set_note(&dag_id, &run_id, note)
        .await?
    {
        return Err(HttpError::NotFound(format!("run `{run_id}`")));
    }
    crate::pages::audit(
        &state,
        &user.username,
        "set run note",
        Some(&dag_id),
        Some(&run_id),
        None,
        None,
    )
    .await;
    Ok(Redirect::to(&auth::safe_next(form.next.as_deref())).into_response())
}
