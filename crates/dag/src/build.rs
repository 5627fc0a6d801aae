//! Raw spec -> validated [`Dag`], in one place.
//!
//! Input is one DAG's mapping node with every default already merged in (file `default:` block
//! and `defaults.yml` files, see `loader.rs`). Output is a [`Dag`] or nothing, plus diagnostics.
//! The builder never stops at the first problem: it reports every unknown key, every bad value
//! and every unresolved dependency it can find, and only then gives up on the DAG.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use flow_model::{DagId, PoolId, TaskId, TriggerRule};
use indexmap::IndexMap;
use minijinja::Environment;
use serde_json::Value as Json;

use crate::dag::{
    Arg, DEFAULT_KAFKA_CONN_ID, DEFAULT_POOL, DEFAULT_QUEUE, Dag, KafkaTrigger, Mapping, Param,
    Task, TaskGroup, WeightRule,
};
use crate::de::{
    DeError, did_you_mean, did_you_mean_hint, from_node, to_json, unknown_key_message,
};
use crate::diagnostic::{Diagnostic, Severity};
use crate::duration::{date_from_node, duration_from_node};
use crate::operators::kafka::{check_filter, check_topic, read_topics};
use crate::operators::{self, ReadOp};
use crate::schedule::{Schedule, Timetable, TimetableKind, parse_schedule};
use crate::spec::{
    DAG_UNSUPPORTED_KEYS, DagSpec, ParamObjectSpec, TASK_UNSUPPORTED_KEYS, TaskCommonSpec,
    TaskGroupSpec, field_names,
};
use crate::template::{self, TemplateIssue};
use crate::yaml::{Node, Span, Value};

/// Everything the builder needs besides the node.
pub(crate) struct Ctx<'a> {
    /// File table: a span's `file` indexes it.
    pub files: &'a [PathBuf],
    pub dags_root: &'a Path,
    pub relative_fileloc: &'a str,
    pub env: &'a Environment<'static>,
    pub now: DateTime<Utc>,
    pub diagnostics: Vec<Diagnostic>,
    /// Other files the DAGs were read from (dataset files named by `file:`), with the hash
    /// of what was read: a change to one must re-read the DAGs.
    pub dependencies: Vec<(PathBuf, String)>,
    /// Prefix for messages: "dag `x`: " or "dag `x`, task `y`: ".
    scope: String,
}

impl<'a> Ctx<'a> {
    pub fn new(
        files: &'a [PathBuf],
        dags_root: &'a Path,
        relative_fileloc: &'a str,
        env: &'a Environment<'static>,
        now: DateTime<Utc>,
    ) -> Self {
        Ctx {
            files,
            dags_root,
            relative_fileloc,
            env,
            now,
            diagnostics: Vec::new(),
            dependencies: Vec::new(),
            scope: String::new(),
        }
    }

    pub fn push(&mut self, severity: Severity, span: Span, message: impl AsRef<str>) {
        let file = self
            .files
            .get(span.file as usize)
            .or_else(|| self.files.first())
            .cloned()
            .unwrap_or_default();
        self.diagnostics.push(Diagnostic {
            severity,
            file,
            line: span.line,
            col: span.col,
            message: format!("{}{}", self.scope, message.as_ref()),
        });
    }

    /// A `*_file` path as dag-factory reads it: `$CONFIG_ROOT_DIR` is the dags folder, a
    /// relative path is relative to the DAG file.
    pub fn callable_file(&self, file: &str) -> PathBuf {
        let root = self.dags_root.to_string_lossy();
        let expanded = file
            .replace("$CONFIG_ROOT_DIR", &root)
            .replace("${CONFIG_ROOT_DIR}", &root);
        let path = PathBuf::from(expanded);
        if path.is_absolute() {
            return path;
        }
        let dir = self
            .files
            .first()
            .and_then(|f| f.parent())
            .unwrap_or(self.dags_root);
        dir.join(path)
    }

    pub fn error(&mut self, span: Span, message: impl AsRef<str>) {
        self.push(Severity::Error, span, message);
    }

    pub fn warn(&mut self, span: Span, message: impl AsRef<str>) {
        self.push(Severity::Warning, span, message);
    }

    fn de_error(&mut self, fallback: Span, e: &DeError) {
        self.error(e.span.unwrap_or(fallback), e.describe());
    }

    fn errors(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
    }
}

/// Reports keys of `node` outside `allowed` and returns the node without them, so that the
/// typed read that follows can report the remaining problems too.
fn check_keys(ctx: &mut Ctx<'_>, node: &Node, allowed: &[&str], what: &str) -> Node {
    let Some(entries) = node.as_map() else {
        return node.clone();
    };
    let mut kept = Vec::with_capacity(entries.len());
    for (k, v) in entries {
        let key = k.as_str().unwrap_or("null");
        if allowed.contains(&key) {
            kept.push((k.clone(), v.clone()));
        } else {
            ctx.error(
                k.span,
                format!("{}{what}", unknown_key_message(key, allowed)),
            );
        }
    }
    Node::new(node.span, Value::Map(kept))
}

fn warn_unsupported(ctx: &mut Ctx<'_>, node: &Node, keys: &[&str]) {
    let Some(entries) = node.as_map() else { return };
    for (k, _) in entries {
        let Some(key) = k.as_str() else { continue };
        if keys.contains(&key) {
            ctx.warn(
                k.span,
                format!("`{key}` is not supported by flow yet; it is kept but has no effect"),
            );
        }
    }
}

/// Builds one DAG. `key` is the `dag_id:` key node, `node` its merged spec.
pub(crate) fn build_dag(ctx: &mut Ctx<'_>, key: &Node, node: &Node) -> Option<Dag> {
    let raw_id = key.as_str().unwrap_or("null");
    ctx.scope = format!("dag `{raw_id}`: ");
    let errors_before = ctx.errors();
    let dag_id = match DagId::parse(raw_id) {
        Ok(id) => Some(id),
        Err(e) => {
            ctx.error(key.span, e.to_string());
            None
        }
    };
    if !matches!(node.value, Value::Map(_)) {
        ctx.error(
            node.span,
            format!("expected a mapping with `tasks`, found {}", node.kind()),
        );
        return None;
    }
    let filtered = check_keys(ctx, node, field_names::<DagSpec>(), "");
    warn_unsupported(ctx, &filtered, DAG_UNSUPPORTED_KEYS);
    let spec: DagSpec = read_spec(ctx, &filtered, key.span)?;
    let dag = DagDraft::build(ctx, key, node, spec);
    let dag_id = dag_id?;
    let dag = dag?;
    if ctx.errors() > errors_before {
        return None;
    }
    let dag = dag.finish(dag_id, ctx);
    if ctx.errors() > errors_before {
        return None;
    }
    Some(dag)
}

/// Reads a spec struct, reporting every bad field rather than only the first: if the whole
/// read fails, each key is read on its own to find all the culprits, and the struct is read
/// again without them so that validation of the other fields can go on. The errors reported
/// keep the DAG from loading either way.
pub(crate) fn read_spec<T: serde::de::DeserializeOwned>(
    ctx: &mut Ctx<'_>,
    node: &Node,
    fallback: Span,
) -> Option<T> {
    let first = match from_node::<T>(node) {
        Ok(v) => return Some(v),
        Err(e) => e,
    };
    let entries = node.as_map().unwrap_or_default();
    let mut good: Vec<(Node, Node)> = Vec::with_capacity(entries.len());
    let mut found = false;
    for entry in entries {
        let single = Node::new(node.span, Value::Map(vec![entry.clone()]));
        match from_node::<T>(&single) {
            Err(e) if !e.message.starts_with("missing required key") => {
                ctx.de_error(fallback, &e);
                found = true;
            }
            _ => good.push(entry.clone()),
        }
    }
    let rest = Node::new(node.span, Value::Map(good));
    match from_node::<T>(&rest) {
        Ok(v) if found => Some(v),
        Ok(_) => {
            ctx.de_error(fallback, &first);
            None
        }
        Err(e) => {
            // Only a missing required key is left; point at the owner, not at a sibling key.
            let e = DeError {
                span: Some(fallback),
                ..e
            };
            ctx.de_error(fallback, &e);
            None
        }
    }
}

/// A task read from YAML whose dependencies are not resolved yet.
struct TaskDraft {
    task: Task,
    name: String,
    name_span: Span,
    dependencies: Vec<(String, Span)>,
    /// `+task` references in arguments: implicit dependencies.
    references: Vec<(String, Span)>,
}

struct GroupDraft {
    name: String,
    span: Span,
    spec: TaskGroupSpec,
    full_id: String,
    default_args: Option<Node>,
}

struct DagDraft {
    dag: Dag,
    tasks: Vec<TaskDraft>,
    groups: Vec<GroupDraft>,
}

/// Defaults Airflow applies when neither the task nor `default_args` says otherwise.
const DEFAULT_RETRY_DELAY_SECS: i64 = 300;
const DEFAULT_MAX_ACTIVE_RUNS: u32 = 16;
const DEFAULT_MAX_ACTIVE_TASKS: u32 = 16;

impl DagDraft {
    fn build(ctx: &mut Ctx<'_>, key: &Node, node: &Node, spec: DagSpec) -> Option<DagDraft> {
        let default_args = spec.default_args.as_ref().map(|r| r.node.clone());
        if let Some(da) = &default_args {
            check_default_args(ctx, da);
        }
        let da_get = |name: &str| default_args.as_ref().and_then(|d| d.get(name));

        let tz_text = spec
            .timezone
            .clone()
            .or_else(|| da_get("timezone").and_then(Node::as_str).map(str::to_owned))
            .unwrap_or_else(|| "UTC".to_owned());
        let tz_span = node
            .get("timezone")
            .or_else(|| da_get("timezone"))
            .map_or(node.span, |n| n.span);
        let timezone = parse_timezone(ctx, &tz_text, tz_span).unwrap_or(Tz::UTC);

        let start_node = spec
            .start_date
            .as_ref()
            .map(|r| &r.node)
            .or_else(|| da_get("start_date"));
        let start_date = start_node.and_then(|n| read_date(ctx, n, timezone, "start_date"));
        let end_node = spec
            .end_date
            .as_ref()
            .map(|r| &r.node)
            .or_else(|| da_get("end_date"));
        let end_date = end_node.and_then(|n| read_date(ctx, n, timezone, "end_date"));
        if let (Some(s), Some(e), Some(n)) = (start_date, end_date, end_node)
            && e < s
        {
            ctx.error(n.span, "`end_date` is before `start_date`");
        }

        // `timetable:` is flow's `trigger`/`data_interval` switch, or (dag-factory) an Airflow
        // timetable object, which then plays the role of `schedule`.
        let timetable_node = spec.timetable.as_ref().map(|r| &r.node);
        let timetable_object = timetable_node.filter(|n| n.as_map().is_some());
        let kind = match timetable_object {
            Some(_) => TimetableKind::DataInterval,
            None => read_timetable_kind(ctx, timetable_node),
        };
        let schedule_node = match (&spec.schedule, &spec.schedule_interval, timetable_object) {
            (Some(a), Some(_), _) | (Some(a), None, Some(_)) | (None, Some(a), Some(_)) => {
                ctx.error(
                    a.node.span,
                    "set only one of `schedule`, `schedule_interval` and a `timetable` object",
                );
                None
            }
            (Some(r), None, None) | (None, Some(r), None) => Some(&r.node),
            (None, None, Some(t)) => Some(t),
            (None, None, None) => None,
        };
        // `{kafka: {...}}`, optionally with a `cron` beside it: event runs from messages.
        let mut kafka_trigger = None;
        let schedule_node = match schedule_node {
            Some(n) if n.get("__type__").is_none() && n.get("kafka").is_some() => {
                if let Some(k) = n.get("kafka") {
                    kafka_trigger = read_kafka_trigger(ctx, k);
                }
                for (k, _) in n.as_map().unwrap_or_default() {
                    let key = k.as_str().unwrap_or("null");
                    if !matches!(key, "kafka" | "cron") {
                        ctx.error(
                            k.span,
                            format!(
                                "`schedule`: {}",
                                unknown_key_message(key, &["kafka", "cron"])
                            ),
                        );
                    }
                }
                n.get("cron")
            }
            other => other,
        };
        // Assets: alone, or with a timetable beside them (`AssetOrTimeSchedule`).
        let mut asset_schedule = None;
        let schedule_node = match schedule_node {
            Some(n) if crate::assets::is_asset_schedule(n) => {
                match crate::assets::read_asset_schedule(ctx, n) {
                    Some(a) => {
                        asset_schedule = Some((a.condition, n.span));
                        a.timetable
                    }
                    None => None,
                }
            }
            other => other,
        };
        let (schedule, mut schedule_text, kind, schedule_tz) = match schedule_node {
            Some(n) => read_schedule(ctx, n, kind),
            None => (Schedule::None, "None".to_owned(), kind, None),
        };
        if asset_schedule.is_some() {
            schedule_text = if matches!(schedule, Schedule::None) {
                "Asset".to_owned()
            } else {
                format!("Asset or {schedule_text}")
            };
        }
        if let Some(k) = &kafka_trigger {
            let topics = format!("kafka:{}", k.topics.join(","));
            schedule_text = if matches!(schedule, Schedule::None) {
                topics
            } else {
                format!("{schedule_text} + {topics}")
            };
        }
        if matches!(schedule, Schedule::Continuous) && spec.max_active_runs.is_some_and(|n| n > 1) {
            let span = node.get("max_active_runs").map_or(key.span, |n| n.span);
            ctx.error(
                span,
                "`@continuous` runs one run at a time: `max_active_runs` must be 1",
            );
        }
        if !matches!(schedule, Schedule::None) && start_node.is_none() {
            ctx.warn(
                key.span,
                "no `start_date`: scheduled runs start from the first interval after the DAG is first seen",
            );
        }

        let max_active_runs = positive(
            ctx,
            node,
            "max_active_runs",
            spec.max_active_runs,
            DEFAULT_MAX_ACTIVE_RUNS,
        );
        if spec.max_active_tasks.is_some() && spec.concurrency.is_some() {
            let span = node.get("concurrency").map_or(node.span, |n| n.span);
            ctx.error(
                span,
                "both `max_active_tasks` and `concurrency` are set; keep only `max_active_tasks`",
            );
        }
        let (mat_key, mat) = if spec.concurrency.is_some() {
            ("concurrency", spec.concurrency)
        } else {
            ("max_active_tasks", spec.max_active_tasks)
        };
        let max_active_tasks = positive(ctx, node, mat_key, mat, DEFAULT_MAX_ACTIVE_TASKS);

        let dagrun_timeout = match (&spec.dagrun_timeout, &spec.dagrun_timeout_sec) {
            (Some(r), _) | (None, Some(r)) => read_duration(ctx, &r.node, "dagrun_timeout"),
            (None, None) => None,
        };

        let mut tags = spec.tags.clone().unwrap_or_default();
        if let Some(tags_node) = node.get("tags").and_then(Node::as_seq) {
            for (tag, n) in tags.iter().zip(tags_node) {
                if tag.trim().is_empty() || tag.chars().count() > 100 {
                    ctx.error(n.span, "`tags`: a tag must be 1 to 100 characters");
                }
            }
        }
        tags.dedup();

        let params = spec
            .params
            .as_ref()
            .map(|r| read_params(ctx, &r.node))
            .unwrap_or_default();

        let groups = read_groups(ctx, spec.task_groups.as_ref().map(|r| &r.node));
        let tasks_node = spec.tasks.as_ref().map(|r| r.node.clone());
        let Some(tasks_node) = tasks_node.filter(|n| !n.is_null()) else {
            ctx.error(key.span, "no `tasks`: a DAG needs at least one task");
            return None;
        };
        let task_entries = entries_by_id(ctx, &tasks_node, "task_id", "tasks");
        if task_entries.is_empty() && ctx.errors() == 0 {
            ctx.error(
                tasks_node.span,
                "`tasks` is empty: a DAG needs at least one task",
            );
        }
        let scope = ctx.scope.clone();
        let mut tasks = Vec::with_capacity(task_entries.len());
        for (name, name_span, task_node) in task_entries {
            ctx.scope = format!("{scope}task `{name}`: ");
            if let Some(t) = read_task(
                ctx,
                &name,
                name_span,
                &task_node,
                default_args.as_ref(),
                &groups,
            ) {
                tasks.push(t);
            }
            ctx.scope = scope.clone();
        }

        warn_unquoted_inputs(ctx, &tasks, &params);
        if let Some((condition, span)) = &asset_schedule {
            warn_asset_loops(ctx, condition, *span, &tasks);
        }
        let asset_schedule = asset_schedule.map(|(c, _)| c);
        let callbacks = read_dag_callbacks(ctx, node);
        let dag = Dag {
            dag_id: DagId::parse("placeholder").ok()?,
            fileloc: ctx.files.first().cloned().unwrap_or_default(),
            relative_fileloc: ctx.relative_fileloc.to_owned(),
            line: key.span.line,
            description: spec.description,
            doc_md: spec.doc_md,
            display_name: spec.dag_display_name,
            owner: String::new(),
            schedule_text,
            timetable: Timetable {
                schedule,
                timezone: schedule_tz.unwrap_or(timezone),
                kind,
            },
            kafka_trigger,
            asset_schedule,
            callbacks,
            start_date,
            end_date,
            catchup: spec.catchup.unwrap_or(false),
            max_active_runs,
            max_active_tasks,
            max_consecutive_failed_dag_runs: spec.max_consecutive_failed_dag_runs.unwrap_or(0),
            dagrun_timeout,
            tags,
            params,
            is_paused_upon_creation: spec.is_paused_upon_creation,
            render_template_as_native_obj: spec.render_template_as_native_obj.unwrap_or(false),
            owner_links: spec.owner_links.unwrap_or_default(),
            task_groups: groups
                .iter()
                .map(|g| TaskGroup {
                    group_id: g.full_id.clone(),
                    parent: g.spec.parent_group_name.as_ref().and_then(|p| {
                        groups
                            .iter()
                            .find(|x| &x.name == p)
                            .map(|x| x.full_id.clone())
                    }),
                    tooltip: g.spec.tooltip.clone(),
                    ui_color: g.spec.ui_color.clone(),
                    ui_fgcolor: g.spec.ui_fgcolor.clone(),
                    prefix_group_id: g.spec.prefix_group_id.unwrap_or(true),
                })
                .collect(),
            tasks: Vec::new(),
            task_index: Default::default(),
        };
        Some(DagDraft { dag, tasks, groups })
    }

    /// Resolves dependencies, checks for cycles and orders tasks topologically.
    fn finish(self, dag_id: DagId, ctx: &mut Ctx<'_>) -> Dag {
        let DagDraft {
            mut dag,
            tasks,
            groups,
        } = self;
        dag.dag_id = dag_id;
        let by_name: HashMap<&str, usize> = tasks
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.as_str(), i))
            .collect();
        // A full id must be unique too: `a.b` the task and task `b` in group `a` collide.
        let mut seen_ids: HashMap<&str, &TaskDraft> = HashMap::new();
        for t in &tasks {
            if let Some(first) = seen_ids.insert(t.task.task_id.as_str(), t) {
                ctx.error(
                    t.name_span,
                    format!(
                        "duplicate task id `{}` (also produced by `{}` at line {})",
                        t.task.task_id, first.name, first.name_span.line
                    ),
                );
            }
        }
        // A task belongs to its group and to every ancestor of it. Walk names, not ids: with
        // `prefix_group_id: false` a nested group's id does not start with its parent's.
        let group_by_full: HashMap<&str, &GroupDraft> =
            groups.iter().map(|g| (g.full_id.as_str(), g)).collect();
        let ancestors_of = |full: &str| -> Vec<&str> {
            let mut out = Vec::new();
            let mut cur = group_by_full.get(full).copied();
            while let Some(g) = cur {
                if out.contains(&g.name.as_str()) || out.len() > groups.len() {
                    break;
                }
                out.push(g.name.as_str());
                cur = g
                    .spec
                    .parent_group_name
                    .as_ref()
                    .and_then(|p| groups.iter().find(|x| &x.name == p));
            }
            out
        };
        let group_members = |group: &str| -> Vec<usize> {
            tasks
                .iter()
                .enumerate()
                .filter(|(_, t)| {
                    t.task
                        .group_id
                        .as_deref()
                        .is_some_and(|g| ancestors_of(g).contains(&group))
                })
                .map(|(i, _)| i)
                .collect()
        };
        let names: Vec<&str> = tasks
            .iter()
            .map(|t| t.name.as_str())
            .chain(groups.iter().map(|g| g.name.as_str()))
            .collect();

        // Task-level edges first; group roots and leaves are computed from them.
        let n = tasks.len();
        let mut upstream: Vec<HashSet<usize>> = vec![HashSet::new(); n];
        let mut group_deps: Vec<(usize, Vec<usize>)> = Vec::new();
        for (i, t) in tasks.iter().enumerate() {
            for (dep, span) in t.dependencies.iter().chain(&t.references) {
                if let Some(&j) = by_name.get(dep.as_str()) {
                    if j == i {
                        ctx.error(*span, format!("task `{dep}` depends on itself"));
                    } else {
                        upstream[i].insert(j);
                    }
                } else if groups.iter().any(|g| &g.name == dep) {
                    group_deps.push((i, group_members(dep)));
                } else {
                    unknown_dependency(ctx, &t.name, dep, *span, &names);
                }
            }
        }
        let edges_snapshot = upstream.clone();
        let leaves_of = |members: &[usize]| -> Vec<usize> {
            let set: HashSet<usize> = members.iter().copied().collect();
            members
                .iter()
                .copied()
                .filter(|&m| !set.iter().any(|&o| edges_snapshot[o].contains(&m)))
                .collect()
        };
        let roots_of = |members: &[usize]| -> Vec<usize> {
            let set: HashSet<usize> = members.iter().copied().collect();
            members
                .iter()
                .copied()
                .filter(|&m| !edges_snapshot[m].iter().any(|u| set.contains(u)))
                .collect()
        };
        // `task: dependencies: [group]` -> the group's leaves are upstream of the task.
        for (i, members) in &group_deps {
            for leaf in leaves_of(members) {
                if leaf != *i {
                    upstream[*i].insert(leaf);
                }
            }
        }
        // `group: dependencies: [x]` -> x (a task, or a group's leaves) is upstream of the
        // group's roots.
        for g in &groups {
            let Some(deps) = &g.spec.dependencies else {
                continue;
            };
            let members = group_members(&g.name);
            let roots = roots_of(&members);
            let dep_span = g.span;
            for dep in deps {
                let sources: Vec<usize> = if let Some(&j) = by_name.get(dep.as_str()) {
                    vec![j]
                } else if groups.iter().any(|x| &x.name == dep) {
                    leaves_of(&group_members(dep))
                } else {
                    ctx.scope = format!("dag `{}`, task group `{}`: ", dag.dag_id, g.name);
                    let msg = match did_you_mean(dep, names.iter().copied()) {
                        Some(s) => format!("unknown dependency `{dep}` (did you mean `{s}`?)"),
                        None => format!("unknown dependency `{dep}`"),
                    };
                    ctx.error(dep_span, msg);
                    continue;
                };
                for &r in &roots {
                    for &s in &sources {
                        if s != r {
                            upstream[r].insert(s);
                        }
                    }
                }
            }
        }
        ctx.scope = format!("dag `{}`: ", dag.dag_id);

        let order = match topological_order(&upstream) {
            Ok(order) => order,
            Err(cycle) => {
                let path: Vec<&str> = cycle
                    .iter()
                    .map(|&i| tasks[i].task.task_id.as_str())
                    .collect();
                let first = cycle.first().copied().unwrap_or(0);
                ctx.error(
                    tasks[first].name_span,
                    format!("dependency cycle: {}", path.join(" -> ")),
                );
                (0..n).collect()
            }
        };
        let mut downstream: Vec<Vec<TaskId>> = vec![Vec::new(); n];
        for (i, ups) in upstream.iter().enumerate() {
            for &u in ups {
                downstream[u].push(tasks[i].task.task_id.clone());
            }
        }
        let mut owners: Vec<String> = Vec::new();
        let mut slots: Vec<Option<TaskDraft>> = tasks.into_iter().map(Some).collect();
        let ids: Vec<TaskId> = slots
            .iter()
            .map(|t| t.as_ref().map(|t| t.task.task_id.clone()))
            .collect::<Option<Vec<_>>>()
            .unwrap_or_default();
        for i in order {
            let Some(draft) = slots[i].take() else {
                continue;
            };
            let mut task = draft.task;
            let mut ups: Vec<TaskId> = upstream[i].iter().map(|&u| ids[u].clone()).collect();
            ups.sort();
            task.upstream = ups;
            let mut downs = std::mem::take(&mut downstream[i]);
            downs.sort();
            task.downstream = downs;
            if !owners.contains(&task.owner) {
                owners.push(task.owner.clone());
            }
            dag.tasks.push(task);
        }
        dag.owner = owners.join(", ");
        dag
    }
}

fn unknown_dependency(ctx: &mut Ctx<'_>, _task: &str, dep: &str, span: Span, names: &[&str]) {
    let msg = match did_you_mean(dep, names.iter().copied()) {
        Some(s) => format!("unknown dependency `{dep}` (did you mean `{s}`?)"),
        None => format!("unknown dependency `{dep}`; no task or task group has that name"),
    };
    ctx.error(span, msg);
}

/// Kahn's algorithm, stable in declaration order; on a cycle returns one cycle's path
/// (`a -> b -> a`).
fn topological_order(upstream: &[HashSet<usize>]) -> Result<Vec<usize>, Vec<usize>> {
    let n = upstream.len();
    let mut indegree: Vec<usize> = upstream.iter().map(HashSet::len).collect();
    let mut downstream: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, ups) in upstream.iter().enumerate() {
        for &u in ups {
            downstream[u].push(i);
        }
    }
    for d in &mut downstream {
        d.sort_unstable();
    }
    let mut ready: std::collections::VecDeque<usize> =
        (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_front() {
        order.push(i);
        for &d in &downstream[i] {
            indegree[d] -= 1;
            if indegree[d] == 0 {
                ready.push_back(d);
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    // Walk upstream edges among the remaining nodes until one repeats: that is a cycle.
    let remaining: HashSet<usize> = (0..n).filter(|&i| indegree[i] > 0).collect();
    let mut start = remaining.iter().copied().min().unwrap_or(0);
    let mut path: Vec<usize> = Vec::new();
    let mut pos: HashMap<usize, usize> = HashMap::new();
    loop {
        if let Some(&p) = pos.get(&start) {
            let mut cycle: Vec<usize> = path[p..].to_vec();
            cycle.reverse();
            // Present it downstream-wise, starting from its first-declared task.
            let min_pos = cycle
                .iter()
                .enumerate()
                .min_by_key(|(_, v)| **v)
                .map_or(0, |(i, _)| i);
            cycle.rotate_left(min_pos);
            let first = cycle[0];
            cycle.push(first);
            return Err(cycle);
        }
        pos.insert(start, path.len());
        path.push(start);
        let next = upstream[start]
            .iter()
            .copied()
            .filter(|u| remaining.contains(u))
            .min();
        match next {
            Some(u) => start = u,
            None => return Err(path),
        }
    }
}

fn check_default_args(ctx: &mut Ctx<'_>, node: &Node) {
    let Some(entries) = node.as_map() else {
        ctx.error(
            node.span,
            format!("`default_args`: expected a mapping, found {}", node.kind()),
        );
        return;
    };
    let mut allowed: Vec<&str> = field_names::<TaskCommonSpec>().to_vec();
    for def in operators::registry() {
        allowed.extend_from_slice(&def.fields);
    }
    let dag_fields = field_names::<DagSpec>();
    for (k, _) in entries {
        let key = k.as_str().unwrap_or("null");
        if allowed.contains(&key) {
            continue;
        }
        if dag_fields.contains(&key) {
            // Airflow hands default_args to operators only; a DAG argument there is ignored.
            ctx.warn(
                k.span,
                format!("`default_args`: `{key}` is a DAG argument and has no effect here; set it on the DAG"),
            );
            continue;
        }
        ctx.error(
            k.span,
            format!("`default_args`: {}", unknown_key_message(key, &allowed)),
        );
    }
    warn_unsupported(ctx, node, TASK_UNSUPPORTED_KEYS);
}

/// Keys of `default_args` that configure the DAG rather than its tasks.
const DAG_LEVEL_DEFAULT_ARGS: &[&str] = &["start_date", "end_date", "timezone"];

fn parse_timezone(ctx: &mut Ctx<'_>, text: &str, span: Span) -> Option<Tz> {
    match text.parse::<Tz>() {
        Ok(tz) => Some(tz),
        Err(_) => {
            let hint = did_you_mean_hint(text, chrono_tz::TZ_VARIANTS.iter().map(|t| t.name()));
            ctx.error(
                span,
                format!("`timezone`: unknown time zone `{text}`{hint}; use an IANA name such as `Europe/Berlin`"),
            );
            None
        }
    }
}

fn read_date(ctx: &mut Ctx<'_>, node: &Node, tz: Tz, field: &str) -> Option<DateTime<Utc>> {
    match date_from_node(node, tz, ctx.now) {
        Ok(d) => Some(d),
        Err(e) => {
            ctx.error(node.span, format!("`{field}`: {e}"));
            None
        }
    }
}

pub(crate) fn read_duration(ctx: &mut Ctx<'_>, node: &Node, field: &str) -> Option<Duration> {
    match duration_from_node(node) {
        Ok(d) => Some(d),
        Err(e) => {
            ctx.error(node.span, format!("`{field}`: {e}"));
            None
        }
    }
}

fn positive(ctx: &mut Ctx<'_>, node: &Node, key: &str, value: Option<u32>, default: u32) -> u32 {
    match value {
        Some(0) => {
            let span = node.get(key).map_or(node.span, |n| n.span);
            ctx.error(span, format!("`{key}` must be at least 1"));
            default
        }
        Some(v) => v,
        None => default,
    }
}

fn read_timetable_kind(ctx: &mut Ctx<'_>, node: Option<&Node>) -> TimetableKind {
    let Some(node) = node else {
        return TimetableKind::DataInterval;
    };
    match node.as_str() {
        Some("trigger") => TimetableKind::Trigger,
        Some("data_interval" | "interval") => TimetableKind::DataInterval,
        _ => {
            ctx.error(
                node.span,
                "`timetable`: expected `data_interval` (Airflow 2 semantics, the default) or `trigger` (Airflow 3's CronTriggerTimetable)",
            );
            TimetableKind::DataInterval
        }
    }
}

/// Reads `schedule`: a string, null, or an Airflow timetable object.
/// What `schedule` says: the schedule, its display text, the timetable kind, and the time zone a
/// timetable object names for itself.
type ScheduleParts = (Schedule, String, TimetableKind, Option<Tz>);

fn read_schedule(ctx: &mut Ctx<'_>, node: &Node, kind: TimetableKind) -> ScheduleParts {
    match &node.value {
        Value::Null => (Schedule::None, "None".to_owned(), kind, None),
        Value::Scalar(s) => match parse_schedule(&s.text) {
            Ok(schedule) => (schedule, s.text.trim().to_owned(), kind, None),
            Err(e) => {
                ctx.error(node.span, format!("`schedule`: {e}"));
                (Schedule::None, s.text.clone(), kind, None)
            }
        },
        Value::Map(_)
            if node.get("__type__").and_then(Node::as_str) == Some("datetime.timedelta") =>
        {
            match duration_from_node(node) {
                Ok(d) if d > Duration::zero() => (
                    Schedule::Interval(d),
                    crate::schedule::format_duration(d),
                    kind,
                    None,
                ),
                Ok(_) => {
                    ctx.error(
                        node.span,
                        "`schedule`: the interval must be longer than zero",
                    );
                    (Schedule::None, "None".to_owned(), kind, None)
                }
                Err(e) => {
                    ctx.error(node.span, format!("`schedule`: {e}"));
                    (Schedule::None, "None".to_owned(), kind, None)
                }
            }
        }
        Value::Map(_) if node.get("__type__").is_none() => {
            ctx.error(
                node.span,
                "`schedule`: expected a cron, a preset, an interval, null, a timetable object or assets (a list, `{datasets: ...}`, `__and__`/`__or__`)",
            );
            (Schedule::None, "None".to_owned(), kind, None)
        }
        Value::Map(_) => read_timetable_object(ctx, node, kind),
        Value::Seq(_) => {
            ctx.error(
                node.span,
                "`schedule`: a list of assets cannot be a timetable",
            );
            (Schedule::None, "None".to_owned(), kind, None)
        }
    }
}

/// `{__type__: airflow.timetables.trigger.CronTriggerTimetable, cron: "0 1 * * 3", timezone: UTC}`
/// and its siblings, as dag-factory writes Airflow timetables.
fn read_timetable_object(ctx: &mut Ctx<'_>, node: &Node, kind: TimetableKind) -> ScheduleParts {
    const KEYS: &[&str] = &[
        "__type__",
        "__args__",
        "cron",
        "timezone",
        "delta",
        "interval",
        "run_immediately",
    ];
    let type_path = node.get("__type__").and_then(Node::as_str).unwrap_or("");
    let class = type_path.rsplit('.').next().unwrap_or("");
    for (k, _) in node.as_map().unwrap_or_default() {
        let key = k.as_str().unwrap_or("null");
        if !KEYS.contains(&key) {
            ctx.error(
                k.span,
                format!("`schedule`: {}", unknown_key_message(key, KEYS)),
            );
        }
    }
    let tz = match node.get("timezone") {
        Some(t) => match t.as_str() {
            Some(name) => parse_timezone(ctx, name, t.span),
            None => {
                ctx.error(t.span, "`timezone` must be an IANA time zone name");
                None
            }
        },
        None => None,
    };
    let first_arg = node
        .get("__args__")
        .and_then(Node::as_seq)
        .and_then(|a| a.first());
    let fail = |ctx: &mut Ctx<'_>, msg: String| {
        ctx.error(node.span, format!("`schedule`: {msg}"));
        (Schedule::None, "None".to_owned(), kind, None)
    };
    match class {
        "CronTriggerTimetable" | "CronDataIntervalTimetable" => {
            let Some(cron) = node.get("cron").or(first_arg).and_then(Node::as_str) else {
                return fail(ctx, format!("`{class}` needs a `cron` expression"));
            };
            let kind = if class == "CronTriggerTimetable" {
                TimetableKind::Trigger
            } else {
                TimetableKind::DataInterval
            };
            match parse_schedule(cron) {
                Ok(s) => (s, cron.trim().to_owned(), kind, tz),
                Err(e) => fail(ctx, e.to_string()),
            }
        }
        "DeltaDataIntervalTimetable" | "DeltaTriggerTimetable" => {
            let Some(delta) = node.get("delta").or(first_arg) else {
                return fail(ctx, format!("`{class}` needs a `delta`"));
            };
            let kind = if class == "DeltaTriggerTimetable" {
                TimetableKind::Trigger
            } else {
                TimetableKind::DataInterval
            };
            match duration_from_node(delta) {
                Ok(d) if d > Duration::zero() => (
                    Schedule::Interval(d),
                    crate::schedule::format_duration(d),
                    kind,
                    tz,
                ),
                Ok(_) => fail(ctx, "the interval must be longer than zero".into()),
                Err(e) => fail(ctx, e),
            }
        }
        "NullTimetable" => (Schedule::None, "None".to_owned(), kind, tz),
        "OnceTimetable" => (Schedule::Once, "@once".to_owned(), kind, tz),
        "ContinuousTimetable" => (Schedule::Continuous, "@continuous".to_owned(), kind, tz),
        _ => fail(
            ctx,
            format!(
                "unsupported timetable `{type_path}`; supported: CronTriggerTimetable, CronDataIntervalTimetable, DeltaDataIntervalTimetable, DeltaTriggerTimetable, NullTimetable, OnceTimetable, ContinuousTimetable"
            ),
        ),
    }
}

/// Reads `params`: plain defaults or Airflow `Param` objects.
fn read_params(ctx: &mut Ctx<'_>, node: &Node) -> IndexMap<String, Param> {
    let mut out = IndexMap::new();
    let Some(entries) = node.as_map() else {
        if !node.is_null() {
            ctx.error(
                node.span,
                format!("`params`: expected a mapping, found {}", node.kind()),
            );
        }
        return out;
    };
    for (k, v) in entries {
        let name = k.as_str().unwrap_or("null").to_owned();
        let is_param_object = v
            .get("__type__")
            .and_then(Node::as_str)
            .is_some_and(|t| t.ends_with("Param"));
        if !is_param_object {
            out.insert(name, Param::plain(to_json(v)));
            continue;
        }
        let spec: ParamObjectSpec = match from_node(v) {
            Ok(s) => s,
            Err(e) => {
                ctx.error(
                    e.span.unwrap_or(v.span),
                    format!("`params.{name}`: {}", e.describe()),
                );
                continue;
            }
        };
        let mut schema = serde_json::Map::new();
        if let Some(t) = &spec.value_type {
            schema.insert("type".into(), to_json(&t.node));
        }
        if let Some(e) = &spec.enum_values {
            schema.insert("enum".into(), to_json(&e.node));
        }
        for (key, value) in [("minimum", spec.minimum), ("maximum", spec.maximum)] {
            if let Some(x) = value.and_then(serde_json::Number::from_f64) {
                schema.insert(key.into(), Json::Number(x));
            }
        }
        for (key, value) in [
            ("minLength", spec.min_length),
            ("maxLength", spec.max_length),
        ] {
            if let Some(x) = value {
                schema.insert(key.into(), Json::from(x));
            }
        }
        if let Some(p) = &spec.pattern {
            schema.insert("pattern".into(), Json::String(p.clone()));
        }
        if let Some(f) = &spec.format {
            schema.insert("format".into(), Json::String(f.clone()));
        }
        out.insert(
            name,
            Param {
                default: spec.default.as_ref().map(|d| to_json(&d.node)),
                schema,
                description: spec.description,
                title: spec.title,
            },
        );
    }
    out
}

/// Normalizes the list form (`- task_id: x`) and the map form (`x: {...}`) into
/// `(id, span of the id, node)` entries, reporting duplicates.
fn entries_by_id(
    ctx: &mut Ctx<'_>,
    node: &Node,
    id_key: &str,
    what: &str,
) -> Vec<(String, Span, Node)> {
    let mut out: Vec<(String, Span, Node)> = Vec::new();
    let push = |ctx: &mut Ctx<'_>,
                out: &mut Vec<(String, Span, Node)>,
                name: String,
                span: Span,
                n: Node| {
        if let Some((_, first, _)) = out.iter().find(|(x, _, _)| *x == name) {
            ctx.error(
                span,
                format!(
                    "duplicate {} `{name}` (first defined at line {})",
                    singular(what),
                    first.line
                ),
            );
            return;
        }
        out.push((name, span, n));
    };
    match &node.value {
        Value::Map(entries) => {
            for (k, v) in entries {
                let name = k.as_str().unwrap_or("null").to_owned();
                let v = if v.is_null() {
                    Node::new(v.span, Value::Map(Vec::new()))
                } else {
                    v.clone()
                };
                if !matches!(v.value, Value::Map(_)) {
                    ctx.error(
                        v.span,
                        format!(
                            "{} `{name}`: expected a mapping, found {}",
                            singular(what),
                            v.kind()
                        ),
                    );
                    continue;
                }
                push(ctx, &mut out, name, k.span, v);
            }
        }
        Value::Seq(items) => {
            for item in items {
                let Some(entries) = item.as_map() else {
                    ctx.error(
                        item.span,
                        format!(
                            "`{what}`: each item must be a mapping with `{id_key}`, found {}",
                            item.kind()
                        ),
                    );
                    continue;
                };
                let Some((k, v)) = entries.iter().find(|(k, _)| k.as_str() == Some(id_key)) else {
                    ctx.error(item.span, format!("`{what}`: item has no `{id_key}`"));
                    continue;
                };
                let Some(name) = v.as_str() else {
                    ctx.error(v.span, format!("`{id_key}` must be a string"));
                    continue;
                };
                let rest: Vec<(Node, Node)> = entries
                    .iter()
                    .filter(|(kk, _)| kk.as_str() != Some(id_key))
                    .cloned()
                    .collect();
                let _ = k;
                push(
                    ctx,
                    &mut out,
                    name.to_owned(),
                    v.span,
                    Node::new(item.span, Value::Map(rest)),
                );
            }
        }
        Value::Null => {}
        Value::Scalar(_) => {
            ctx.error(
                node.span,
                format!("`{what}`: expected a list or a mapping, found a scalar"),
            );
        }
    }
    out
}

fn singular(what: &str) -> &str {
    match what {
        "tasks" => "task",
        "task_groups" => "task group",
        other => other,
    }
}

fn read_groups(ctx: &mut Ctx<'_>, node: Option<&Node>) -> Vec<GroupDraft> {
    let Some(node) = node else { return Vec::new() };
    let scope = ctx.scope.clone();
    let mut groups: Vec<GroupDraft> = Vec::new();
    for (name, span, gnode) in entries_by_id(ctx, node, "group_name", "task_groups") {
        ctx.scope = format!("{scope}task group `{name}`: ");
        if let Err(e) = flow_model::ids::validate_id("group id", &name) {
            ctx.error(span, e.to_string());
        }
        let filtered = check_keys(ctx, &gnode, field_names::<TaskGroupSpec>(), "");
        if let Some(spec) = read_spec::<TaskGroupSpec>(ctx, &filtered, span) {
            let default_args = spec.default_args.as_ref().map(|r| r.node.clone());
            if let Some(da) = &default_args {
                check_default_args(ctx, da);
            }
            groups.push(GroupDraft {
                name,
                span,
                spec,
                full_id: String::new(),
                default_args,
            });
        }
    }
    ctx.scope = scope;
    // Full ids follow the parent chain; a missing parent or a parent loop is an error.
    let names: Vec<String> = groups.iter().map(|g| g.name.clone()).collect();
    for i in 0..groups.len() {
        let mut chain: Vec<usize> = vec![i];
        let mut cur = i;
        let mut ok = true;
        while let Some(parent) = groups[cur].spec.parent_group_name.clone() {
            let Some(p) = groups.iter().position(|g| g.name == parent) else {
                let hint = did_you_mean_hint(&parent, names.iter().map(String::as_str));
                ctx.error(
                    groups[cur].span,
                    format!(
                        "task group `{}`: unknown `parent_group_name` `{parent}`{hint}",
                        groups[cur].name
                    ),
                );
                ok = false;
                break;
            };
            if chain.contains(&p) {
                if cur == i {
                    ctx.error(
                        groups[i].span,
                        format!("task group `{}` is its own ancestor", groups[i].name),
                    );
                }
                ok = false;
                break;
            }
            chain.push(p);
            cur = p;
        }
        if !ok {
            groups[i].full_id = groups[i].name.clone();
            continue;
        }
        // Outermost first; a group with prefix_group_id: false contributes no prefix to its
        // children, as in Airflow.
        let mut full = String::new();
        for (pos, &g) in chain.iter().rev().enumerate() {
            let is_self = pos == chain.len() - 1;
            if is_self || groups[g].spec.prefix_group_id.unwrap_or(true) {
                if !full.is_empty() {
                    full.push('.');
                }
                full.push_str(&groups[g].name);
            }
        }
        groups[i].full_id = full;
    }
    groups
}

/// Layers defaults under a task node: `defaults` innermost first (the task's group, its parent
/// groups, then the DAG's `default_args`). Only keys the task can take are applied.
fn apply_defaults(task: &Node, defaults: &[&Node], accepts: &dyn Fn(&str) -> bool) -> Node {
    let mut entries: Vec<(Node, Node)> = task.as_map().map(<[_]>::to_vec).unwrap_or_default();
    for d in defaults {
        let Some(d_entries) = d.as_map() else {
            continue;
        };
        for (k, v) in d_entries {
            let Some(key) = k.as_str() else { continue };
            if DAG_LEVEL_DEFAULT_ARGS.contains(&key) || !accepts(key) {
                continue;
            }
            if entries.iter().any(|(ek, _)| ek.as_str() == Some(key)) {
                continue;
            }
            entries.push((k.clone(), v.clone()));
        }
    }
    Node::new(task.span, Value::Map(entries))
}

pub(crate) fn split_keys(node: &Node, first: &[&str]) -> (Node, Node) {
    let mut a = Vec::new();
    let mut b = Vec::new();
    for (k, v) in node.as_map().unwrap_or_default() {
        if k.as_str().is_some_and(|key| first.contains(&key)) {
            a.push((k.clone(), v.clone()));
        } else {
            b.push((k.clone(), v.clone()));
        }
    }
    (
        Node::new(node.span, Value::Map(a)),
        Node::new(node.span, Value::Map(b)),
    )
}

/// The operator a task without one can only mean: `bash_command` is bash's, `python_callable`
/// (or its `_name`/`_file` forms) is python's.
fn implied_operator(node: &Node) -> Option<(&'static str, &'static operators::OperatorDef)> {
    let pick =
        |key: &'static str, op: &str| node.get(key).and(operators::get(op)).map(|d| (key, d));
    pick("bash_command", "bash")
        .or_else(|| pick("python_callable", "python"))
        .or_else(|| pick("python_callable_name", "python"))
}

fn read_task(
    ctx: &mut Ctx<'_>,
    name: &str,
    name_span: Span,
    node: &Node,
    dag_defaults: Option<&Node>,
    groups: &[GroupDraft],
) -> Option<TaskDraft> {
    let errors_before = ctx.errors();
    if let Err(e) = flow_model::ids::validate_id("task_id", name) {
        ctx.error(name_span, e.to_string());
    }
    let common_fields = field_names::<TaskCommonSpec>();
    let operator_name = node.get("operator").and_then(Node::as_str);
    let decorator_name = node.get("decorator").and_then(Node::as_str);
    let def = match (operator_name, decorator_name) {
        (Some(_), Some(_)) => {
            ctx.error(name_span, "set either `operator` or `decorator`, not both");
            return None;
        }
        (Some(op), None) => match operators::resolve(op).and_then(operators::get) {
            Some(def) => def,
            None => {
                let span = node.get("operator").map_or(name_span, |n| n.span);
                let names = operators::registry()
                    .iter()
                    .flat_map(|d| std::iter::once(d.name).chain(d.aliases.iter().copied()));
                let hint = did_you_mean_hint(op, names);
                ctx.error(
                    span,
                    format!("unknown operator `{op}`{hint}; known operators: {} (or their Airflow class paths)", operators::known_list()),
                );
                return None;
            }
        },
        (None, Some(dec)) => match operators::decorator_operator(dec).and_then(operators::get) {
            Some(def) => def,
            None => {
                let span = node.get("decorator").map_or(name_span, |n| n.span);
                let known: Vec<&str> = operators::DECORATORS.iter().map(|(d, _)| *d).collect();
                ctx.error(
                    span,
                    format!(
                        "unknown decorator `{dec}`; known decorators: {}",
                        known.join(", ")
                    ),
                );
                return None;
            }
        },
        (None, None) => match implied_operator(node) {
            // dag-factory's own example (`example_dag_datasets_outlet_inlet.yml`) leaves the
            // operator out of a task whose `bash_command` says what it is.
            Some((key, def)) => {
                ctx.warn(
                    name_span,
                    format!(
                        "no `operator`: `{key}` makes this a `{}` task; write `operator: {}` (Airflow and dag-factory refuse a task without one)",
                        def.name, def.name
                    ),
                );
                def
            }
            None => {
                ctx.error(
                    name_span,
                    format!(
                        "no `operator`: set one of {} (or an Airflow class path), or a `decorator`",
                        operators::known_list()
                    ),
                );
                return None;
            }
        },
    };
    let decorated = decorator_name.is_some();
    // Airflow's `...Async` sensor classes are the deferrable ones.
    let async_alias = operator_name.is_some_and(|n| n.trim().ends_with("Async"));
    let kind = def.name;
    let op_fields: &[&str] = &def.fields;

    // The group chain, innermost first, for default_args layering and the id prefix.
    let group_name = node.get("task_group_name").and_then(Node::as_str);
    let mut group_defaults: Vec<&Node> = Vec::new();
    let mut group_full_id: Option<String> = None;
    // Airflow's `TaskGroup.child_id`: a group with `prefix_group_id: false` leaves its own
    // tasks' ids bare.
    let mut prefix_ids = true;
    if let Some(gname) = group_name {
        match groups.iter().find(|g| g.name == gname) {
            Some(g) => {
                group_full_id = Some(g.full_id.clone());
                prefix_ids = g.spec.prefix_group_id.unwrap_or(true);
                let mut cur = Some(g);
                let mut hops = 0;
                while let Some(gg) = cur {
                    if let Some(da) = &gg.default_args {
                        group_defaults.push(da);
                    }
                    hops += 1;
                    if hops > groups.len() {
                        break;
                    }
                    cur = gg
                        .spec
                        .parent_group_name
                        .as_ref()
                        .and_then(|p| groups.iter().find(|x| &x.name == p));
                }
            }
            None => {
                let span = node.get("task_group_name").map_or(name_span, |n| n.span);
                let hint = did_you_mean_hint(gname, groups.iter().map(|g| g.name.as_str()));
                ctx.error(span, format!("unknown `task_group_name` `{gname}`{hint}"));
            }
        }
    }
    if let Some(d) = dag_defaults {
        group_defaults.push(d);
    }
    let accepts = |key: &str| common_fields.contains(&key) || op_fields.contains(&key);
    let merged = apply_defaults(node, &group_defaults, &accepts);
    let (common_node, op_node) = split_keys(&merged, common_fields);
    // Keys inherited from default_args were already reported there.
    warn_unsupported(ctx, node, TASK_UNSUPPORTED_KEYS);

    // Unknown keys: for a decorated task they are the function's keyword arguments.
    let (op_node, kwargs_node) = if decorated {
        split_keys(&op_node, op_fields)
    } else {
        let mut allowed: Vec<&str> = common_fields.to_vec();
        allowed.extend_from_slice(op_fields);
        let kept = check_keys(ctx, &op_node, &allowed, &format!(" for operator `{kind}`"));
        (kept, Node::new(node.span, Value::Map(Vec::new())))
    };

    let common: TaskCommonSpec = read_spec(ctx, &common_node, name_span)?;
    let mut references: Vec<(String, Span)> = Vec::new();
    let mapped = mapped_keys(&merged);
    let op_node = if mapped.is_empty() {
        op_node
    } else {
        with_mapped_placeholders(&op_node, &mapped, def.mappable)
    };
    let operator = def.read(
        ctx,
        &mut ReadOp {
            node: &op_node,
            fallback: name_span,
            kwargs: &kwargs_node,
            decorated,
            alias: operator_name.or(decorator_name).unwrap_or_default().trim(),
            async_alias,
            references: &mut references,
            sensor_keys: None,
        },
    );

    let trigger_rule = match &common.trigger_rule {
        None => TriggerRule::AllSuccess,
        Some(text) => match text.parse::<TriggerRule>() {
            Ok(rule) => rule,
            Err(_) => {
                let span = merged.get("trigger_rule").map_or(name_span, |n| n.span);
                let all: Vec<&str> = TriggerRule::ALL.iter().map(|r| r.as_str()).collect();
                let hint = did_you_mean_hint(text, all.iter().copied());
                ctx.error(
                    span,
                    format!(
                        "`trigger_rule`: unknown rule `{text}`{hint}; valid rules: {}",
                        all.join(", ")
                    ),
                );
                TriggerRule::AllSuccess
            }
        },
    };
    let weight_rule = match &common.weight_rule {
        None => WeightRule::Downstream,
        Some(text) => WeightRule::parse(text).unwrap_or_else(|| {
            let span = merged.get("weight_rule").map_or(name_span, |n| n.span);
            ctx.error(span, format!("`weight_rule`: unknown rule `{text}`; valid rules: downstream, upstream, absolute"));
            WeightRule::Downstream
        }),
    };
    let dur = |ctx: &mut Ctx<'_>,
               a: &Option<crate::spec::Raw<crate::spec::DurationSpec>>,
               b: &Option<crate::spec::Raw<crate::spec::DurationSpec>>,
               field: &str| {
        a.as_ref()
            .or(b.as_ref())
            .and_then(|r| read_duration(ctx, &r.node, field))
    };
    let retry_delay = dur(
        ctx,
        &common.retry_delay,
        &common.retry_delay_sec,
        "retry_delay",
    )
    .unwrap_or(Duration::seconds(DEFAULT_RETRY_DELAY_SECS));
    let max_retry_delay = dur(ctx, &common.max_retry_delay, &None, "max_retry_delay");
    let execution_timeout = dur(
        ctx,
        &common.execution_timeout,
        &common.execution_timeout_secs,
        "execution_timeout",
    );
    if let Some(t) = execution_timeout
        && t <= Duration::zero()
    {
        let span = merged
            .get("execution_timeout")
            .map_or(name_span, |n| n.span);
        ctx.error(span, "`execution_timeout` must be longer than zero");
    }
    let pool_text = common
        .pool
        .clone()
        .unwrap_or_else(|| DEFAULT_POOL.to_owned());
    let pool = match PoolId::parse(pool_text) {
        Ok(p) => Some(p),
        Err(e) => {
            let span = merged.get("pool").map_or(name_span, |n| n.span);
            ctx.error(span, format!("`pool`: {e}"));
            None
        }
    };
    let pool_slots = match common.pool_slots {
        Some(0) => {
            let span = merged.get("pool_slots").map_or(name_span, |n| n.span);
            ctx.error(span, "`pool_slots` must be at least 1");
            1
        }
        Some(n) => n,
        None => 1,
    };
    for key in ["max_active_tis_per_dag", "max_active_tis_per_dagrun"] {
        let value = if key == "max_active_tis_per_dag" {
            common.max_active_tis_per_dag
        } else {
            common.max_active_tis_per_dagrun
        };
        if value == Some(0) {
            let span = merged.get(key).map_or(name_span, |n| n.span);
            ctx.error(span, format!("`{key}` must be at least 1"));
        }
    }
    let params = common
        .params
        .as_ref()
        .map(|r| read_params(ctx, &r.node))
        .unwrap_or_default();
    let mapping = read_mapping(ctx, &common, &mut references);
    if let Some(m) = &mapping
        && !decorated
    {
        check_mapped_arguments(ctx, m, &merged, def);
    }

    if let Some(template) = &common.map_index_template {
        let span = merged
            .get("map_index_template")
            .map_or(name_span, |n| n.span);
        // Rendered after the try, with the names the task added to its context: only the
        // syntax can be checked here.
        for issue in template::check(ctx.env, template) {
            if let TemplateIssue::Syntax { .. } = issue {
                report_template_issue(ctx, "map_index_template", span, issue);
            }
        }
    }

    let full_id = match &group_full_id {
        Some(g) if prefix_ids => format!("{g}.{name}"),
        _ => name.to_owned(),
    };
    let task_id = match TaskId::parse(full_id) {
        Ok(id) => Some(id),
        Err(e) => {
            if group_full_id.is_some() {
                ctx.error(name_span, e.to_string());
            }
            None
        }
    };
    let dependencies: Vec<(String, Span)> = match merged.get("dependencies") {
        Some(deps) => deps
            .as_seq()
            .unwrap_or_default()
            .iter()
            .filter_map(|d| d.as_str().map(|s| (s.to_owned(), d.span)))
            .collect(),
        None => Vec::new(),
    };
    let outlets = common
        .outlets
        .as_ref()
        .map(|r| crate::assets::read_outlets(ctx, &r.node))
        .unwrap_or_default();
    let inlets = common
        .inlets
        .as_ref()
        .map(|r| crate::assets::read_inlets(ctx, &r.node))
        .unwrap_or_default();
    let mut callbacks = crate::callbacks::read(
        ctx,
        &merged,
        Some(node),
        &crate::callbacks::CallbackEvent::ALL,
    );
    crate::callbacks::read_email(ctx, &merged, &mut callbacks);
    let operator = operator?;
    if ctx.errors() > errors_before {
        return None;
    }
    Some(TaskDraft {
        task: Task {
            task_id: task_id?,
            label: name.to_owned(),
            group_id: group_full_id.clone(),
            operator,
            upstream: Vec::new(),
            downstream: Vec::new(),
            trigger_rule,
            retries: common.retries.unwrap_or(0),
            retry_delay,
            retry_exponential_backoff: common.retry_exponential_backoff.unwrap_or(false),
            max_retry_delay,
            execution_timeout,
            pool: pool?,
            pool_slots,
            priority_weight: common.priority_weight.unwrap_or(1),
            weight_rule,
            queue: common
                .queue
                .clone()
                .unwrap_or_else(|| DEFAULT_QUEUE.to_owned()),
            owner: common.owner.clone().unwrap_or_else(|| "airflow".to_owned()),
            // As in Airflow, waiting for the previous run's downstream implies depending on
            // the previous run.
            depends_on_past: common.depends_on_past.unwrap_or(false)
                || common.wait_for_downstream.unwrap_or(false),
            ignore_first_depends_on_past: common.ignore_first_depends_on_past.unwrap_or(false),
            wait_for_downstream: common.wait_for_downstream.unwrap_or(false),
            do_xcom_push: common.do_xcom_push.unwrap_or(true),
            multiple_outputs: common.multiple_outputs.unwrap_or(false),
            max_active_tis_per_dag: common.max_active_tis_per_dag,
            max_active_tis_per_dagrun: common.max_active_tis_per_dagrun,
            params,
            doc_md: common.doc_md.clone().or(common.doc.clone()),
            display_name: common.task_display_name.clone(),
            mapping,
            map_index_template: common.map_index_template.clone(),
            outlets,
            inlets,
            callbacks,
            line: name_span.line,
        },
        name: name.to_owned(),
        name_span,
        dependencies,
        references,
    })
}

/// A DAG's own callbacks: `on_success_callback` and `on_failure_callback` (once per run). The
/// task events are no DAG argument in Airflow: said so, and ignored (dag-factory's example
/// sets `on_execute_callback` on its DAG).
fn read_dag_callbacks(ctx: &mut Ctx<'_>, node: &Node) -> crate::callbacks::Callbacks {
    use crate::callbacks::CallbackEvent as E;
    for event in [E::OnExecute, E::OnRetry, E::OnSkipped] {
        let key = event.key();
        for k in [key.to_owned(), format!("{key}_name"), format!("{key}_file")] {
            if let Some(n) = node.get(&k) {
                ctx.warn(
                    n.span,
                    format!("`{k}` has no effect on a DAG (Airflow's DAG takes on_success_callback and on_failure_callback); set it in `default_args` for every task"),
                );
            }
        }
    }
    crate::callbacks::read(ctx, node, None, &[E::OnSuccess, E::OnFailure])
}

/// An asset in the DAG's schedule that one of its own tasks updates: every run triggers the
/// next. Airflow allows it (a deliberate loop); `flow dags validate` and `dags show` say so.
fn warn_asset_loops(
    ctx: &mut Ctx<'_>,
    condition: &crate::assets::AssetCondition,
    span: Span,
    tasks: &[TaskDraft],
) {
    for asset in condition.assets() {
        for t in tasks {
            let updates = t.task.outlets.iter().any(|o| {
                matches!(o, crate::assets::Outlet::Asset { asset: a, .. } if a.uri == asset.uri)
            });
            if updates {
                ctx.warn(
                    span,
                    format!(
                        "asset `{}` schedules this DAG and is an outlet of its own task `{}`: each success of that task triggers another run (a loop, allowed as in Airflow)",
                        asset.uri, t.name
                    ),
                );
            }
        }
    }
}

/// `flow dags validate` warns where a shell command prints a run input unquoted: a conf value,
/// or a param a conf can set to any text (no `enum`, `const` or `pattern`, not a number or a
/// boolean). Params are checked against their schema when a run is created, so a constrained
/// one cannot carry shell syntax.
fn warn_unquoted_inputs(
    ctx: &mut Ctx<'_>,
    tasks: &[TaskDraft],
    dag_params: &IndexMap<String, Param>,
) {
    for draft in tasks {
        let crate::dag::Operator::Bash(op) = &draft.task.operator else {
            continue;
        };
        let mut commands: Vec<String> = Vec::new();
        if op.bash_command != MAPPED_PLACEHOLDER {
            commands.push(op.bash_command.clone());
        }
        if let Some(m) = &draft.task.mapping {
            for arg in m
                .expand
                .get("bash_command")
                .into_iter()
                .chain(m.partial.get("bash_command"))
            {
                if let Arg::Value(v) = arg {
                    collect_strings(v, &mut commands);
                }
            }
        }
        let mut warned: Vec<String> = Vec::new();
        for command in &commands {
            for input in template::unquoted_inputs(command) {
                let risky = match input.strip_prefix("params.") {
                    Some(name) => draft
                        .task
                        .params
                        .get(name)
                        .or_else(|| dag_params.get(name))
                        .is_none_or(|p| !is_constrained(p)),
                    None => true,
                };
                if risky && !warned.contains(&input) {
                    ctx.warn(
                        draft.name_span,
                        format!(
                            "`bash_command` puts `{input}` into the shell unquoted: a run's conf \
                             can make it any text, and the shell runs what it says; write \
                             `{{{{ {input} | shell_quote }}}}`{}",
                            if input.starts_with("params.") {
                                ", or constrain the param (`enum`, `pattern`, a number type)"
                            } else {
                                ""
                            }
                        ),
                    );
                    warned.push(input);
                }
            }
        }
    }
}

fn collect_strings(v: &Json, out: &mut Vec<String>) {
    match v {
        Json::String(s) => out.push(s.clone()),
        Json::Array(items) => items.iter().for_each(|i| collect_strings(i, out)),
        _ => {}
    }
}

/// Whether a param's schema keeps shell syntax out of it.
fn is_constrained(p: &Param) -> bool {
    let s = &p.schema;
    if s.contains_key("enum") || s.contains_key("const") || s.contains_key("pattern") {
        return true;
    }
    let safe = |t: &str| matches!(t, "integer" | "number" | "boolean" | "null");
    match s.get("type") {
        Some(Json::String(t)) => safe(t),
        Some(Json::Array(ts)) => ts.iter().all(|t| t.as_str().is_some_and(safe)),
        _ => false,
    }
}

pub(crate) fn check_template(ctx: &mut Ctx<'_>, field: &str, source: &str, span: Span) {
    for issue in template::check(ctx.env, source) {
        report_template_issue(ctx, field, span, issue);
    }
}

fn report_template_issue(ctx: &mut Ctx<'_>, field: &str, span: Span, issue: TemplateIssue) {
    match issue {
        TemplateIssue::RemovedInAirflow3(names) => {
            for name in names {
                ctx.warn(
                    span,
                    format!(
                        "`{field}`: template uses `{name}`, which Airflow 3 removed from the \
                         context; flow still provides it, Airflow 3 fails the task"
                    ),
                );
            }
        }
        TemplateIssue::Syntax { line, message } => {
            ctx.error(
                span,
                format!(
                    "`{field}`: template syntax error on line {line} of the template: {message}"
                ),
            );
        }
        TemplateIssue::UnknownNames(names) => {
            for name in names {
                let hint = did_you_mean_hint(&name, template::CONTEXT_NAMES.iter().copied());
                ctx.warn(
                    span,
                    format!("`{field}`: template uses `{name}`, which is not in the template context{hint}"),
                );
            }
        }
    }
}

/// Checks every string inside a JSON-like node as a template.
pub(crate) fn check_templates_in(ctx: &mut Ctx<'_>, field: &str, node: &Node) {
    match &node.value {
        Value::Scalar(s) => check_template(ctx, field, &s.text, node.span),
        Value::Seq(items) => items.iter().for_each(|i| check_templates_in(ctx, field, i)),
        Value::Map(entries) => entries
            .iter()
            .for_each(|(_, v)| check_templates_in(ctx, field, v)),
        Value::Null => {}
    }
}

/// `+task_id` (dag-factory's XComArg shorthand), `task_id.output` or `XcomArg(task_id)` become
/// task outputs; with `allow_refs` false everything is a literal.
pub(crate) fn read_arg(node: &Node, allow_refs: bool, references: &mut Vec<(String, Span)>) -> Arg {
    if allow_refs && let Value::Scalar(s) = &node.value {
        // `+task`, `"+task"`, `+task['key']` (dag-factory), and unquoted `task.output`
        // (Airflow) and `XcomArg(task)` (dag-factory's other spelling).
        let text = s.text.trim();
        let text = match (text.starts_with('+'), text.find('[')) {
            (true, Some(i)) if text.ends_with(']') => &text[..i],
            _ => text,
        };
        let target = text
            .strip_prefix('+')
            .or_else(|| {
                if !s.plain {
                    return None;
                }
                text.strip_suffix(".output").or_else(|| {
                    text.strip_prefix("XcomArg(")
                        .or_else(|| text.strip_prefix("XComArg("))
                        .and_then(|t| t.strip_suffix(')'))
                        .map(str::trim)
                })
            })
            .filter(|t| !t.is_empty() && flow_model::ids::validate_id("task_id", t).is_ok());
        if let Some(t) = target
            && let Ok(id) = TaskId::parse(t)
        {
            references.push((t.to_owned(), node.span));
            return Arg::Output(id);
        }
    }
    Arg::Value(to_json(node))
}

fn read_mapping(
    ctx: &mut Ctx<'_>,
    common: &TaskCommonSpec,
    references: &mut Vec<(String, Span)>,
) -> Option<Mapping> {
    if common.expand.is_none() && common.partial.is_none() && common.expand_kwargs.is_none() {
        return None;
    }
    let mut mapping = Mapping {
        expand: IndexMap::new(),
        partial: IndexMap::new(),
        kwargs: None,
    };
    if let Some(expand) = &common.expand {
        match expand.node.as_map() {
            Some([]) => ctx.error(expand.node.span, "`expand` is empty"),
            Some(entries) => {
                for (k, v) in entries {
                    let key = k.as_str().unwrap_or("null").to_owned();
                    let arg = read_arg(v, true, references);
                    match &arg {
                        Arg::Output(_) | Arg::Value(Json::Array(_)) => {}
                        Arg::Value(Json::Object(m)) if !m.is_empty() => {}
                        _ => ctx.error(
                            v.span,
                            format!(
                                "`expand.{key}`: expected a list, or `+task_id` for another task's output"
                            ),
                        ),
                    }
                    if let Arg::Value(Json::Array(items)) = &arg {
                        check_map_length(ctx, &format!("expand.{key}"), items.len(), v.span);
                    }
                    // Each literal element may be a template, as the argument it stands for.
                    if matches!(&arg, Arg::Value(_)) {
                        check_templates_in(ctx, &format!("expand.{key}"), v);
                    }
                    mapping.expand.insert(key, arg);
                }
            }
            None => ctx.error(
                expand.node.span,
                format!(
                    "`expand`: expected a mapping of argument to values, found {}",
                    expand.node.kind()
                ),
            ),
        }
    }
    if let Some(kwargs) = &common.expand_kwargs {
        if common.expand.is_some() {
            ctx.error(
                kwargs.node.span,
                "set `expand` or `expand_kwargs`, not both",
            );
        }
        let arg = read_arg(&kwargs.node, true, references);
        match &arg {
            Arg::Output(_) => {}
            Arg::Value(Json::Array(items)) if items.iter().all(Json::is_object) => {
                check_map_length(ctx, "expand_kwargs", items.len(), kwargs.node.span);
                check_templates_in(ctx, "expand_kwargs", &kwargs.node);
            }
            _ => ctx.error(
                kwargs.node.span,
                "`expand_kwargs`: expected a list of mappings of arguments, or `+task_id` for \
                 another task's output",
            ),
        }
        mapping.kwargs = Some(arg);
    }
    if let Some(partial) = &common.partial {
        match partial.node.as_map() {
            Some(entries) => {
                for (k, v) in entries {
                    let key = k.as_str().unwrap_or("null").to_owned();
                    if mapping.expand.contains_key(&key) {
                        ctx.error(k.span, format!("`partial.{key}` is also in `expand`"));
                    }
                    let arg = read_arg(v, true, references);
                    if matches!(&arg, Arg::Value(_)) {
                        check_templates_in(ctx, &format!("partial.{key}"), v);
                    }
                    mapping.partial.insert(key, arg);
                }
            }
            None => ctx.error(partial.node.span, "`partial`: expected a mapping"),
        }
    }
    Some(mapping)
}

/// `expand` and `partial` name arguments of the operator; a task-level key (`params`,
/// `retries`) cannot be mapped, as in Airflow, and would otherwise fail every try.
fn check_mapped_arguments(
    ctx: &mut Ctx<'_>,
    mapping: &Mapping,
    node: &Node,
    def: &operators::OperatorDef,
) {
    for (field, keys) in [("expand", &mapping.expand), ("partial", &mapping.partial)] {
        for key in keys.keys() {
            if def.fields.contains(&key.as_str()) {
                continue;
            }
            let span = node
                .get(field)
                .and_then(|n| n.as_map())
                .and_then(|e| e.iter().find(|(k, _)| k.as_str() == Some(key.as_str())))
                .map_or(node.span, |(k, _)| k.span);
            let hint = did_you_mean_hint(key, def.fields.iter().copied());
            ctx.error(
                span,
                format!(
                    "`{field}.{key}`: `{key}` is not an argument of the {} operator{hint}; only its own arguments can be mapped",
                    def.name
                ),
            );
        }
    }
}

/// A literal list longer than Airflow's `max_map_length` could never be expanded.
fn check_map_length(ctx: &mut Ctx<'_>, field: &str, len: usize, span: Span) {
    if len > crate::dag::DEFAULT_MAX_MAP_LENGTH {
        ctx.error(
            span,
            format!(
                "`{field}`: {len} values; a mapped task may have at most {} instances \
                 (max_map_length)",
                crate::dag::DEFAULT_MAX_MAP_LENGTH
            ),
        );
    }
}

/// Arguments `expand`, `expand_kwargs` or `partial` give a task: they satisfy the operator's
/// required keys (`expand: {bash_command: [...]}` needs no `bash_command` of its own).
fn mapped_keys(node: &Node) -> Vec<String> {
    let mut keys = Vec::new();
    for field in ["expand", "partial"] {
        if let Some(entries) = node.get(field).and_then(Node::as_map) {
            keys.extend(
                entries
                    .iter()
                    .filter_map(|(k, _)| k.as_str().map(str::to_owned)),
            );
        }
    }
    // `expand_kwargs` from another task's output may give any argument.
    if let Some(kwargs) = node.get("expand_kwargs") {
        match kwargs.as_seq() {
            Some(items) => {
                for item in items {
                    if let Some(entries) = item.as_map() {
                        keys.extend(
                            entries
                                .iter()
                                .filter_map(|(k, _)| k.as_str().map(str::to_owned)),
                        );
                    }
                }
            }
            None => keys.push("*".to_owned()),
        }
    }
    keys
}

/// For a mapped task, the operator's node with a placeholder for each required argument that
/// mapping supplies at run time, so that reading the operator does not report it missing.
fn with_mapped_placeholders(op_node: &Node, mapped: &[String], required: &[&str]) -> Node {
    let Some(entries) = op_node.as_map() else {
        return op_node.clone();
    };
    let mut entries = entries.to_vec();
    for key in required {
        let supplied = mapped.iter().any(|m| m == key || m == "*");
        if supplied && op_node.get(key).is_none() {
            let span = op_node.span;
            entries.push((Node::str(span, *key), Node::str(span, MAPPED_PLACEHOLDER)));
        }
    }
    Node::new(op_node.span, Value::Map(entries))
}

/// What a required argument holds until mapping fills it in at run time.
pub const MAPPED_PLACEHOLDER: &str = "{{ mapped }}";

pub(crate) fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || c == '_')
}

pub(crate) fn is_dotted_identifier(s: &str) -> bool {
    s.split('.').all(is_identifier)
}

/// `schedule: {kafka: {conn_id, topics, filter, group_id, dead_letter_topic}}`, optionally with
/// a `cron` beside it.
fn read_kafka_trigger(ctx: &mut Ctx<'_>, node: &Node) -> Option<KafkaTrigger> {
    const KEYS: &[&str] = &[
        "conn_id",
        "topics",
        "filter",
        "group_id",
        "dead_letter_topic",
    ];
    let Some(entries) = node.as_map() else {
        ctx.error(
            node.span,
            "`schedule.kafka`: expected a mapping {conn_id, topics, filter, group_id, dead_letter_topic}",
        );
        return None;
    };
    for (k, _) in entries {
        let key = k.as_str().unwrap_or("null");
        if !KEYS.contains(&key) {
            ctx.error(
                k.span,
                format!("`schedule.kafka`: {}", unknown_key_message(key, KEYS)),
            );
        }
    }
    let text = |ctx: &mut Ctx<'_>, key: &str| -> Option<(String, Span)> {
        let n = node.get(key)?;
        match n.as_str() {
            Some(s) => Some((s.to_owned(), n.span)),
            None => {
                ctx.error(n.span, format!("`schedule.kafka.{key}` must be a string"));
                None
            }
        }
    };
    let conn_id = match text(ctx, "conn_id") {
        Some((id, span)) => {
            if let Err(e) = flow_model::ids::validate_id("conn_id", &id) {
                ctx.error(span, e.to_string());
            }
            id
        }
        None => DEFAULT_KAFKA_CONN_ID.to_owned(),
    };
    let Some(topics_node) = node.get("topics") else {
        ctx.error(node.span, "`schedule.kafka` needs `topics`");
        return None;
    };
    let topics = read_topics(ctx, topics_node);
    // Run ids are `event__<topic>:<partition>:<offset>` and ids are limited to 250 characters.
    if let Some(long) = topics.iter().find(|t| t.len() > 200) {
        ctx.error(
            topics_node.span,
            format!("`schedule.kafka.topics`: `{long}` is longer than 200 characters, too long to name event runs after"),
        );
    }
    let filter = text(ctx, "filter").map(|(f, span)| {
        check_filter(ctx, &f, span);
        f
    });
    // By default one group per topic set: DAGs watching the same topics share a consumer,
    // and no group mixes subscriptions (which makes some brokers' assignments stall).
    let group_id = text(ctx, "group_id").map_or_else(
        || {
            let mut sorted = topics.clone();
            sorted.sort();
            format!("flow-triggers.{}", sorted.join(","))
        },
        |(g, _)| g,
    );
    let dead_letter_topic = text(ctx, "dead_letter_topic").map(|(t, span)| {
        check_topic(ctx, "dead_letter_topic", &t, span);
        t
    });
    Some(KafkaTrigger {
        conn_id,
        topics,
        filter,
        group_id,
        dead_letter_topic,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topo_order_and_cycle_path() {
        let ups = vec![HashSet::new(), HashSet::from([0]), HashSet::from([1])];
        assert_eq!(topological_order(&ups).unwrap(), vec![0, 1, 2]);
        // 0 -> 1 -> 2 -> 0, plus an innocent 3 after 2.
        let ups = vec![
            HashSet::from([2]),
            HashSet::from([0]),
            HashSet::from([1]),
            HashSet::from([2]),
        ];
        assert_eq!(topological_order(&ups).unwrap_err(), vec![0, 1, 2, 0]);
    }
}
