//! Rendering a task's templated fields with Airflow's template context.
//!
//! Input is the validated task, and everything the worker knows about the run
//! ([`RunContext`]: dates, conf, params, the run's XComs, variables). Output is a
//! [`RenderedTask`]: the command or call to run, with every template resolved. Nothing here
//! reads the database or the environment; the only I/O is reading a `.sh`/`.bash` template
//! file named by `bash_command`, as Airflow does.
//!
//! Choices, all Airflow's: undefined names are errors (`StrictUndefined`, Airflow's default);
//! values print as Python's `str()` (`True`, `None`, `{'a': 1}`); dates in the context are UTC
//! (`ds` is the UTC date of `logical_date`); `+task` arguments resolve to that task's
//! `return_value` XCom and are not themselves rendered.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Days, Utc};
use flow_dag::{Arg, PythonCallable, Task};
use indexmap::IndexMap;
use minijinja::value::ValueKind;
use minijinja::{Environment, Value};
use serde_json::Value as Json;

use crate::jinja::{
    self, Macros, Notes, PyDateTime, TaskInstanceObject, VarAccessor, json_value, map, py_str,
    to_json,
};
use crate::xcom::{RETURN_VALUE, XcomMap};

/// Everything about the run a task's templates may refer to. The worker builds it from the
/// claimed task instance, its dag run, the run's XComs and the variables.
#[derive(Debug, Clone)]
pub struct RunContext {
    pub dag_id: String,
    pub task_id: String,
    pub run_id: String,
    /// -1 for an unmapped task.
    pub map_index: i64,
    pub try_number: u32,
    pub max_tries: u32,
    /// `scheduled`, `manual`, `backfill` or `event`.
    pub run_type: String,
    pub logical_date: Option<DateTime<Utc>>,
    pub data_interval_start: Option<DateTime<Utc>>,
    pub data_interval_end: Option<DateTime<Utc>>,
    pub run_after: DateTime<Utc>,
    pub dag_run_start_date: Option<DateTime<Utc>>,
    /// `dag_run.conf`.
    pub conf: Json,
    /// Already merged: DAG params < task params < conf (see [`crate::merge_params`]).
    pub params: serde_json::Map<String, Json>,
    /// The task's owner. Airflow's `AIRFLOW_CTX_DAG_OWNER` is the task's owner too.
    pub owner: String,
    pub dags_folder: PathBuf,
    /// The dags folder the DAG was parsed from (on the scheduler's machine): paths under it
    /// are found under `dags_folder` here (a worker's copy of the DAG bundle).
    pub source_root: PathBuf,
    /// The DAG's time zone, shown as `dag.timezone`. Context dates stay in UTC, as Airflow's.
    pub timezone: chrono_tz::Tz,
    /// The DAG's `render_template_as_native_obj`: Python arguments keep the rendered value's
    /// type (`{{ params.n }}` stays a number) instead of becoming strings.
    pub render_template_as_native_obj: bool,
    /// Folders searched for `.sh`/`.bash` template files before the dags folder; Airflow's
    /// default is the DAG file's own folder.
    pub template_searchpath: Vec<PathBuf>,
    /// XComs of this run, fetched before rendering, or [`XcomMap::unfetched`] for a first
    /// render that finds out whether they are needed. Shared: rendering does not copy them.
    pub xcoms: Arc<XcomMap>,
    /// Airflow Variables (`var.value.x`, `var.json.x`), environment overrides included (see
    /// [`crate::variables_with_env`]).
    pub variables: HashMap<String, String>,
    /// Set while `variables` is not fetched yet: a template that looks at `var` raises the
    /// flag, so that a worker reads the variables only for tasks that use them.
    pub variables_wanted: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Connections templates read (`conn.my_db.host`), by conn_id.
    pub connections: HashMap<String, flow_model::Connection>,
    /// The asset events an asset-triggered run consumed, by asset URI (an empty mapping for
    /// other runs): `{{ triggering_asset_events }}`.
    pub triggering_asset_events: Json,
    /// Set while `connections` is not resolved yet: collects the conn_ids templates ask for.
    pub connections_wanted: Option<Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>>,
}

/// The try a context is built for: the run as the store (or `flow tasks test`) describes it,
/// and which try of which task instance.
#[derive(Debug, Clone)]
pub struct TryOf {
    pub run_id: String,
    pub run_type: String,
    pub logical_date: Option<DateTime<Utc>>,
    pub data_interval_start: Option<DateTime<Utc>>,
    pub data_interval_end: Option<DateTime<Utc>>,
    pub run_after: DateTime<Utc>,
    pub run_start_date: Option<DateTime<Utc>>,
    pub conf: Json,
    pub map_index: i64,
    pub try_number: u32,
    pub max_tries: u32,
}

/// The dags folder a DAG was parsed from: its file's path less its path within the folder.
fn source_root(dag: &flow_dag::Dag) -> PathBuf {
    let depth = Path::new(&dag.relative_fileloc).components().count();
    dag.fileloc
        .ancestors()
        .nth(depth)
        .map_or_else(|| dag.fileloc.clone(), Path::to_path_buf)
}

impl RunContext {
    /// The context of one try of `task`: params merged from the DAG, the task and the run's
    /// conf (and checked), DAG-level settings copied. The worker and `flow tasks test` both
    /// build contexts here, so a test renders exactly as a real run does.
    pub fn new(
        dag: &flow_dag::Dag,
        task: &Task,
        run: TryOf,
        dags_folder: &Path,
        xcoms: XcomMap,
    ) -> Result<Self, crate::ParamError> {
        let params = crate::merge_params(&dag.params, &task.params, &run.conf)?;
        Ok(RunContext {
            dag_id: dag.dag_id.to_string(),
            task_id: task.task_id.to_string(),
            run_id: run.run_id,
            map_index: run.map_index,
            try_number: run.try_number,
            max_tries: run.max_tries,
            run_type: run.run_type,
            logical_date: run.logical_date,
            data_interval_start: run.data_interval_start,
            data_interval_end: run.data_interval_end,
            run_after: run.run_after,
            dag_run_start_date: run.run_start_date,
            conf: run.conf,
            params,
            owner: task.owner.clone(),
            dags_folder: dags_folder.to_path_buf(),
            source_root: source_root(dag),
            timezone: dag.timetable.timezone,
            render_template_as_native_obj: dag.render_template_as_native_obj,
            template_searchpath: dag
                .fileloc
                .parent()
                .map(|p| vec![crate::relocate(&source_root(dag), dags_folder, p)])
                .unwrap_or_default(),
            xcoms: Arc::new(xcoms),
            variables: HashMap::new(),
            variables_wanted: None,
            connections: HashMap::new(),
            connections_wanted: None,
            triggering_asset_events: Json::Object(serde_json::Map::new()),
        })
    }
}

/// A task with every templated field rendered: what the runner executes.
#[derive(Debug, Clone, PartialEq)]
pub enum RenderedTask {
    Bash {
        command: String,
        env: Option<IndexMap<String, String>>,
        append_env: bool,
        cwd: Option<String>,
        skip_on_exit_code: Vec<i32>,
    },
    Python {
        callable: PythonCallable,
        op_args: Vec<Json>,
        op_kwargs: IndexMap<String, Json>,
        templates_dict: IndexMap<String, Json>,
        show_return_value_in_logs: bool,
    },
    Empty,
    KafkaProduce {
        conn_id: String,
        topic: String,
        /// Rendered messages, or the rendered command whose stdout lines are the values.
        messages: Result<Vec<Json>, String>,
        delivery_timeout: std::time::Duration,
    },
    KafkaConsume {
        conn_id: String,
        topics: Vec<String>,
        group_id: String,
        max_messages: u64,
        max_batch_size: u64,
        poll_timeout: std::time::Duration,
        apply: Option<String>,
        push_to_xcom: bool,
        xcom_max_messages: u64,
    },
    Sql(crate::operators::sql::SqlRun),
    Http(crate::operators::http::HttpRun),
    TriggerDagRun(crate::operators::cross_dag::TriggerRun),
    Email(crate::operators::email::EmailRun),
    /// A sensor, with what it waits for.
    Sensor {
        wait: SensorWait,
        sensor: flow_dag::Sensor,
    },
}

/// What a sensor waits for, rendered.
#[derive(Debug, Clone, PartialEq)]
pub enum SensorWait {
    /// A moment (time_delta, date_time).
    Until(DateTime<Utc>),
    /// A Kafka message matching `filter`, evaluated with `context` (params, conf, run_id)
    /// beside the message's fields.
    KafkaMessage {
        conn_id: String,
        topics: Vec<String>,
        group_id: String,
        filter: String,
        context: Json,
    },
    /// A query whose first row says when (`sql_sensor`).
    Sql(crate::operators::sql::SqlPoke),
    /// An endpoint that answers as `response_check` wants (`http_sensor`).
    Http(crate::operators::http::HttpPoke),
    /// Another DAG's tasks or run (`external_task_sensor`).
    External(crate::operators::cross_dag::ExternalPoke),
    /// A path or glob (`file_sensor`).
    File(crate::operators::sensors::FilePoke),
    /// A callable or a command asked each poke (`python_sensor`, `bash_sensor`).
    Process(crate::operators::sensors::ProcessPoke),
}

impl RenderedTask {
    /// The connection the task uses, if any.
    pub fn conn_id(&self) -> Option<&str> {
        match self {
            RenderedTask::KafkaProduce { conn_id, .. }
            | RenderedTask::KafkaConsume { conn_id, .. }
            | RenderedTask::Sensor {
                wait: SensorWait::KafkaMessage { conn_id, .. },
                ..
            } => Some(conn_id),
            RenderedTask::Sql(run) => Some(&run.conn_id),
            RenderedTask::Http(run) => Some(&run.call.conn_id),
            RenderedTask::Email(email) => email.conn_id.as_deref(),
            RenderedTask::Sensor {
                wait: SensorWait::File(check),
                ..
            } => crate::operators::sensors::file_conn_id(check),
            RenderedTask::Sensor {
                wait: SensorWait::Http(check),
                ..
            } => Some(&check.call.conn_id),
            RenderedTask::Sensor {
                wait: SensorWait::Sql(check),
                ..
            } => Some(&check.conn_id),
            _ => None,
        }
    }

    /// Whether the task calls a Python callable (itself, or as a sensor's poke): it gets the
    /// Python context and the variables.
    pub fn runs_python(&self) -> bool {
        match self {
            RenderedTask::Python { .. } => true,
            RenderedTask::Sensor {
                wait: SensorWait::Process(check),
                ..
            } => check.run.runs_python(),
            _ => false,
        }
    }

    /// Whether the task talks to Kafka (and needs librdkafka settings from its connection).
    pub fn is_kafka(&self) -> bool {
        matches!(
            self,
            RenderedTask::KafkaProduce { .. }
                | RenderedTask::KafkaConsume { .. }
                | RenderedTask::Sensor {
                    wait: SensorWait::KafkaMessage { .. },
                    ..
                }
        )
    }

    /// Rendered template fields for display (Airflow's "Rendered Template" tab): field name ->
    /// rendered text. Structured values are shown as JSON. Mask secrets before showing them
    /// (see [`crate::Masker`]).
    pub fn fields(&self) -> Vec<(String, String)> {
        let json = |v: &Json| v.to_string();
        match self {
            RenderedTask::Bash {
                command, env, cwd, ..
            } => vec![
                ("bash_command".to_owned(), command.clone()),
                (
                    "env".to_owned(),
                    env.as_ref().map_or_else(
                        || "None".to_owned(),
                        |e| {
                            json(&Json::Object(
                                e.iter()
                                    .map(|(k, v)| (k.clone(), Json::from(v.as_str())))
                                    .collect(),
                            ))
                        },
                    ),
                ),
                (
                    "cwd".to_owned(),
                    cwd.clone().unwrap_or_else(|| "None".to_owned()),
                ),
            ],
            RenderedTask::Python {
                op_args,
                op_kwargs,
                templates_dict,
                ..
            } => vec![
                ("templates_dict".to_owned(), json(&object(templates_dict))),
                ("op_args".to_owned(), json(&Json::Array(op_args.clone()))),
                ("op_kwargs".to_owned(), json(&object(op_kwargs))),
            ],
            RenderedTask::Empty => Vec::new(),
            RenderedTask::KafkaProduce {
                topic, messages, ..
            } => vec![
                ("topic".to_owned(), topic.clone()),
                match messages {
                    Ok(m) => ("messages".to_owned(), json(&Json::Array(m.clone()))),
                    Err(cmd) => ("command".to_owned(), cmd.clone()),
                },
            ],
            RenderedTask::KafkaConsume {
                topics,
                group_id,
                apply,
                ..
            } => vec![
                ("topics".to_owned(), topics.join(",")),
                ("group_id".to_owned(), group_id.clone()),
                (
                    "apply".to_owned(),
                    apply.clone().unwrap_or_else(|| "None".to_owned()),
                ),
            ],
            RenderedTask::Sensor { wait, .. } => match wait {
                SensorWait::Until(at) => vec![("target_time".to_owned(), at.to_rfc3339())],
                SensorWait::KafkaMessage {
                    topics,
                    group_id,
                    filter,
                    ..
                } => vec![
                    ("topics".to_owned(), topics.join(",")),
                    ("group_id".to_owned(), group_id.clone()),
                    ("filter".to_owned(), filter.clone()),
                ],
                SensorWait::Http(check) => http_fields(&check.call),
                SensorWait::File(check) => vec![("filepath".to_owned(), check.filepath.clone())],
                SensorWait::Process(check) => check.run.fields(),
                SensorWait::External(check) => vec![
                    ("external_dag_id".to_owned(), check.dag_id.clone()),
                    (
                        "logical_date".to_owned(),
                        check
                            .logical_date
                            .map_or_else(|| "execution_date_fn".to_owned(), |d| d.to_rfc3339()),
                    ),
                ],
                SensorWait::Sql(check) => vec![
                    ("sql".to_owned(), check.statement.clone()),
                    ("parameters".to_owned(), json(&check.parameters)),
                ],
            },
            RenderedTask::Http(run) => http_fields(&run.call),
            RenderedTask::Email(e) => vec![
                ("to".to_owned(), e.to.join(", ")),
                ("subject".to_owned(), e.subject.clone()),
                ("html_content".to_owned(), e.html_content.clone()),
                ("files".to_owned(), e.files.join(", ")),
            ],
            RenderedTask::TriggerDagRun(t) => vec![
                ("trigger_dag_id".to_owned(), t.dag_id.clone()),
                (
                    "trigger_run_id".to_owned(),
                    t.run_id.clone().unwrap_or_else(|| "None".to_owned()),
                ),
                ("conf".to_owned(), json(&t.conf)),
            ],
            RenderedTask::Sql(run) => vec![
                ("sql".to_owned(), run.statements.join(";\n")),
                ("parameters".to_owned(), json(&run.parameters)),
            ],
        }
    }
}

fn http_fields(call: &crate::operators::http::HttpCall) -> Vec<(String, String)> {
    vec![
        ("endpoint".to_owned(), call.endpoint.clone()),
        ("data".to_owned(), call.data.to_string()),
        (
            "headers".to_owned(),
            Json::Object(
                call.headers
                    .iter()
                    .map(|(k, v)| (k.clone(), Json::from(v.as_str())))
                    .collect(),
            )
            .to_string(),
        ),
    ]
}

pub(crate) fn object(m: &IndexMap<String, Json>) -> Json {
    Json::Object(m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// A template that cannot be rendered; `field` names the templated field
/// (`bash_command`, `op_kwargs.limit`, `env.TARGET`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RenderError {
    pub field: String,
    pub message: String,
}

impl RenderError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        RenderError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A consumer group per task unless the DAG names one: a retry resumes where the last try
/// committed.
pub(crate) fn default_group(ctx: &RunContext) -> String {
    format!("flow-{}-{}", ctx.dag_id, ctx.task_id)
}

/// ISO 8601 with an offset, or without one (read as UTC, as Airflow reads naive dates in
/// the default time zone UTC).
pub(crate) fn parse_datetime(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S",
    ] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(text, format) {
            return Some(t.and_utc());
        }
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

/// A field's value before rendering. Values that came from another task's XCom are data, not
/// templates, and are passed through as they are (Airflow does not render them either).
#[derive(Debug, Clone)]
pub(crate) struct Field {
    pub(crate) value: Json,
    pub(crate) templated: bool,
}

impl Field {
    pub(crate) fn literal(value: Json) -> Self {
        Field {
            value,
            templated: true,
        }
    }

    pub(crate) fn from_arg(field: &str, arg: &Arg, xcoms: &XcomMap) -> Result<Self, RenderError> {
        match arg {
            Arg::Value(v) => Ok(Field::literal(v.clone())),
            Arg::Output(task_id) => Ok(Field {
                value: output(field, task_id.as_str(), xcoms)?,
                templated: false,
            }),
        }
    }
}

fn output(field: &str, task_id: &str, xcoms: &XcomMap) -> Result<Json, RenderError> {
    xcoms.output(task_id, RETURN_VALUE).ok_or_else(|| {
        RenderError::new(
            field,
            format!("task `{task_id}` has no `{RETURN_VALUE}` XCom in this run"),
        )
    })
}

/// Applies `partial` arguments, then this map index's arguments: its element of the cross
/// product of the `expand` arguments (the last one varying fastest, as in Airflow), or its
/// mapping of `expand_kwargs`.
pub(crate) fn apply_mapping(
    task: &Task,
    ctx: &RunContext,
    mut set: impl FnMut(&str, Field) -> Result<(), String>,
) -> Result<(), RenderError> {
    let Some(mapping) = &task.mapping else {
        return Ok(());
    };
    for (key, arg) in &mapping.partial {
        let field = format!("partial.{key}");
        let value = Field::from_arg(&field, arg, &ctx.xcoms)?;
        set(key, value).map_err(|m| RenderError::new(&field, m))?;
    }
    if !mapping.is_mapped() {
        return Ok(());
    }
    let index = usize::try_from(ctx.map_index)
        .map_err(|_| RenderError::new("expand", "a mapped task needs a map_index of 0 or more"))?;
    if let Some(kwargs) = &mapping.kwargs {
        let whole = Field::from_arg("expand_kwargs", kwargs, &ctx.xcoms)?;
        let item = match whole.value {
            Json::Array(mut items) if index < items.len() => items.swap_remove(index),
            Json::Array(items) => {
                return Err(RenderError::new(
                    "expand_kwargs",
                    format!("map_index {index} is out of range ({} values)", items.len()),
                ));
            }
            other => {
                return Err(RenderError::new(
                    "expand_kwargs",
                    format!(
                        "expand_kwargs() expects a list[dict], not {}",
                        python_type(&other)
                    ),
                ));
            }
        };
        let Json::Object(arguments) = item else {
            return Err(RenderError::new(
                "expand_kwargs",
                format!(
                    "expand_kwargs() expects a list[dict], not list[{}]",
                    python_type(&item)
                ),
            ));
        };
        for (key, value) in arguments {
            let field = format!("expand_kwargs.{key}");
            let value = Field {
                value,
                templated: whole.templated,
            };
            set(&key, value).map_err(|m| RenderError::new(&field, m))?;
        }
        return Ok(());
    }
    // Each argument's elements; a mapping's are its (key, value) pairs.
    let mut resolved: Vec<(&str, Vec<Json>, bool)> = Vec::new();
    for (key, arg) in &mapping.expand {
        let field = format!("expand.{key}");
        let whole = Field::from_arg(&field, arg, &ctx.xcoms)?;
        let items = match whole.value {
            Json::Array(items) => items,
            Json::Object(entries) => entries
                .into_iter()
                .map(|(k, v)| Json::Array(vec![Json::String(k), v]))
                .collect(),
            other => {
                return Err(RenderError::new(
                    field,
                    format!("unmappable return type '{}'", python_type(&other)),
                ));
            }
        };
        resolved.push((key, items, whole.templated));
    }
    let lengths: Vec<usize> = resolved.iter().map(|(_, items, _)| items.len()).collect();
    let Some(picks) = cross_product_position(index, &lengths) else {
        return Err(RenderError::new(
            "expand",
            format!(
                "map_index {index} is out of range ({} instances)",
                lengths.iter().product::<usize>()
            ),
        ));
    };
    for ((key, mut items, templated), pick) in resolved.into_iter().zip(picks) {
        let value = Field {
            value: items.swap_remove(pick),
            templated,
        };
        set(key, value).map_err(|m| RenderError::new(format!("expand.{key}"), m))?;
    }
    Ok(())
}

/// Where map index `index` falls in the cross product of lists of these lengths: one position
/// per list, the last list varying fastest (Airflow's `DictOfListsExpandInput`). `None` if
/// the index is past the end.
pub fn cross_product_position(index: usize, lengths: &[usize]) -> Option<Vec<usize>> {
    let mut rest = index;
    let mut picks = vec![0; lengths.len()];
    for (pick, len) in picks.iter_mut().zip(lengths).rev() {
        if *len == 0 {
            return None;
        }
        *pick = rest % len;
        rest /= len;
    }
    (rest == 0).then_some(picks)
}

pub use flow_dag::python_type;

/// A mapped task instance's label (Airflow's `rendered_map_index`): its `map_index_template`
/// rendered after the try with the try's context, plus the names the task itself set in its
/// context (a Python callable's `get_current_context()`). `None` for tasks without one.
pub fn render_map_index(
    task: &Task,
    ctx: &RunContext,
    extra: &serde_json::Map<String, Json>,
) -> Option<Result<String, RenderError>> {
    let template = task.map_index_template.as_deref()?;
    let notes = Arc::new(Notes::default());
    let mut context = context_entries(task, ctx, &notes);
    for (k, v) in extra {
        context.insert(k.clone(), json_value(v));
    }
    let renderer = Renderer {
        env: jinja::environment(),
        context: Value::from(context),
        notes,
        native: false,
    };
    Some(renderer.string("map_index_template", template))
}

pub(crate) fn render_bash(
    renderer: &Renderer,
    ctx: &RunContext,
    mut fields: IndexMap<String, Field>,
) -> Result<RenderedTask, RenderError> {
    let mut take = |key: &str| {
        fields
            .swap_remove(key)
            .unwrap_or(Field::literal(Json::Null))
    };

    let command = take("bash_command");
    let command = match &command.value {
        Json::String(s) if command.templated => {
            let source = bash_template_source(s, ctx)?;
            renderer.string("bash_command", &source)?
        }
        Json::String(s) => s.clone(),
        other => {
            return Err(RenderError::new(
                "bash_command",
                format!("expected a string, got {other}"),
            ));
        }
    };

    let env_field = take("env");
    let env = match &env_field.value {
        Json::Null => None,
        Json::Object(entries) => {
            let mut env = IndexMap::new();
            for (k, v) in entries {
                let name = format!("env.{k}");
                let text = match v {
                    Json::String(s) if env_field.templated => renderer.string(&name, s)?,
                    Json::String(s) => s.clone(),
                    Json::Number(n) => n.to_string(),
                    Json::Bool(b) => if *b { "True" } else { "False" }.to_owned(),
                    other => {
                        return Err(RenderError::new(
                            name,
                            format!("expected a string, got {other}"),
                        ));
                    }
                };
                env.insert(k.clone(), text);
            }
            Some(env)
        }
        other => {
            return Err(RenderError::new(
                "env",
                format!("expected a mapping, got {other}"),
            ));
        }
    };

    let append_env = match take("append_env").value {
        Json::Bool(b) => b,
        Json::Null => false,
        other => {
            return Err(RenderError::new(
                "append_env",
                format!("expected true or false, got {other}"),
            ));
        }
    };

    let cwd_field = take("cwd");
    let cwd = match &cwd_field.value {
        Json::Null => None,
        Json::String(s) if cwd_field.templated => Some(renderer.string("cwd", s)?),
        Json::String(s) => Some(s.clone()),
        other => {
            return Err(RenderError::new(
                "cwd",
                format!("expected a string, got {other}"),
            ));
        }
    };

    let skip_field = take("skip_on_exit_code");
    let as_code = |v: &Json| v.as_i64().and_then(|c| i32::try_from(c).ok());
    let skip_on_exit_code = match &skip_field.value {
        Json::Null => Some(Vec::new()),
        Json::Array(items) => items.iter().map(as_code).collect::<Option<Vec<_>>>(),
        v => as_code(v).map(|c| vec![c]),
    }
    .ok_or_else(|| {
        RenderError::new(
            "skip_on_exit_code",
            format!("expected exit codes, got {}", skip_field.value),
        )
    })?;

    Ok(RenderedTask::Bash {
        command,
        env,
        append_env,
        cwd,
        skip_on_exit_code,
    })
}

/// Airflow treats a `bash_command` ending in `.sh` or `.bash` as the path of a template file,
/// looked up in the template search path and then the dags folder. Like Airflow, a command
/// such as `bash run.sh` is looked up as a file too; a trailing space opts out.
pub(crate) fn bash_template_source(command: &str, ctx: &RunContext) -> Result<String, RenderError> {
    if !(command.ends_with(".sh") || command.ends_with(".bash")) {
        return Ok(command.to_owned());
    }
    if let Some(source) = read_template_file("bash_command", command, ctx)? {
        return Ok(source);
    }
    Err(RenderError::new(
        "bash_command",
        format!(
            "template file `{command}` not found (a command ending in .sh or .bash is read as a template file, as in Airflow; add a space at the end to run it as a command)"
        ),
    ))
}

/// A template file (a `.sh` command, a `.sql` file) where Airflow looks: an absolute path,
/// else the template search path (the DAG's folder), then the dags folder. `None` when it is
/// in none of them.
pub(crate) fn read_template_file(
    field: &str,
    name: &str,
    ctx: &RunContext,
) -> Result<Option<String>, RenderError> {
    let relative = Path::new(name);
    let candidates: Vec<PathBuf> = if relative.is_absolute() {
        vec![relative.to_path_buf()]
    } else {
        ctx.template_searchpath
            .iter()
            .chain(std::iter::once(&ctx.dags_folder))
            .map(|dir| dir.join(relative))
            .collect()
    };
    match candidates.iter().find(|p| p.is_file()) {
        Some(path) => std::fs::read_to_string(path).map(Some).map_err(|e| {
            RenderError::new(
                field,
                format!("cannot read template file {}: {e}", path.display()),
            )
        }),
        None => Ok(None),
    }
}

/// One task's rendering session: the environment, the context, and where notes about
/// undefined variables are collected.
pub(crate) struct Renderer {
    env: Environment<'static>,
    context: Value,
    notes: Arc<Notes>,
    native: bool,
}

impl Renderer {
    pub(crate) fn new(task: &Task, ctx: &RunContext) -> Self {
        let notes = Arc::new(Notes::default());
        Renderer {
            env: jinja::environment(),
            context: context_value(task, ctx, &notes),
            notes,
            native: ctx.render_template_as_native_obj,
        }
    }

    pub(crate) fn string(&self, field: &str, source: &str) -> Result<String, RenderError> {
        if !has_markup(source) {
            // Jinja drops one trailing newline from every rendered template.
            let trimmed = source.strip_suffix('\n').unwrap_or(source);
            let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
            return Ok(trimmed.to_owned());
        }
        self.notes.clear();
        self.env
            .render_str(source, &self.context)
            .map_err(|e| self.error(field, &e))
    }

    /// Renders every string inside a JSON value. With native rendering, a string that is
    /// exactly one `{{ expression }}` becomes the expression's value, and a rendered string
    /// that reads as a JSON literal (`5`, `[1, 2]`, `true`, and Python's `True`/`None`) becomes
    /// that value, approximating Airflow's `NativeEnvironment`.
    pub(crate) fn field(&self, field: &str, f: &Field) -> Result<Json, RenderError> {
        if !f.templated {
            return Ok(f.value.clone());
        }
        self.json(field, &f.value)
    }

    pub(crate) fn json(&self, field: &str, value: &Json) -> Result<Json, RenderError> {
        Ok(match value {
            Json::String(s) if self.native => self.native(field, s)?,
            Json::String(s) => Json::String(self.string(field, s)?),
            Json::Array(items) => Json::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| self.json(&format!("{field}[{i}]"), v))
                    .collect::<Result<_, _>>()?,
            ),
            Json::Object(entries) => Json::Object(
                entries
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), self.json(&format!("{field}.{k}"), v)?)))
                    .collect::<Result<_, RenderError>>()?,
            ),
            other => other.clone(),
        })
    }

    pub(crate) fn native(&self, field: &str, source: &str) -> Result<Json, RenderError> {
        if let Some(expr) = single_expression(source) {
            self.notes.clear();
            let value = self
                .env
                .compile_expression_owned(expr.to_owned())
                .and_then(|e| e.eval(&self.context))
                .map_err(|e| self.error(field, &e))?;
            if value.is_undefined() {
                return Err(RenderError::new(
                    field,
                    format!("`{}` is undefined", expr.trim()),
                ));
            }
            return Ok(match value.kind() {
                ValueKind::String => literal(&py_str(&value)),
                _ => to_json(&value),
            });
        }
        Ok(literal(&self.string(field, source)?))
    }

    /// A template that must give a list: rendered natively, and a string result read as JSON
    /// (an XCom pulled as text).
    pub(crate) fn list(&self, field: &str, source: &str) -> Result<Vec<Json>, RenderError> {
        let value = match single_expression(source) {
            Some(_) => Renderer {
                env: self.env.clone(),
                context: self.context.clone(),
                notes: self.notes.clone(),
                native: true,
            }
            .native(field, source)?,
            None => literal(&self.string(field, source)?),
        };
        let value = match value {
            Json::String(s) => serde_json::from_str(&s).unwrap_or(Json::String(s)),
            other => other,
        };
        match value {
            Json::Array(items) => Ok(items),
            other => Err(RenderError::new(
                field,
                format!("must render to a list of messages, got {other}"),
            )),
        }
    }

    fn error(&self, field: &str, e: &minijinja::Error) -> RenderError {
        let note = match (e.kind(), e.detail()) {
            (minijinja::ErrorKind::UndefinedError, Some(detail)) => self.notes.explain(detail),
            _ => None,
        };
        let mut message = match (note, e.detail()) {
            (Some(note), _) => note,
            // A missing variable says so in Airflow's words.
            (None, Some(detail)) if detail.starts_with("VARIABLE_NOT_FOUND") => detail.to_owned(),
            (None, Some(detail)) => format!("{}: {detail}", e.kind()),
            (None, None) => e.kind().to_string(),
        };
        if let Some(line) = e.line()
            && line > 1
        {
            message.push_str(&format!(" (template line {line})"));
        }
        RenderError::new(field, message)
    }
}

fn has_markup(s: &str) -> bool {
    s.contains("{{") || s.contains("{%") || s.contains("{#")
}

/// `{{ expr }}` and nothing else.
fn single_expression(s: &str) -> Option<&str> {
    let inner = s.strip_prefix("{{")?.strip_suffix("}}")?;
    let inner = inner.strip_prefix('-').unwrap_or(inner);
    let inner = inner.strip_suffix('-').unwrap_or(inner);
    if has_markup(inner) || inner.contains("}}") {
        return None;
    }
    Some(inner)
}

/// A rendered string read as a literal where it plainly is one, else kept as a string.
fn literal(s: &str) -> Json {
    match s.trim() {
        "True" => return Json::Bool(true),
        "False" => return Json::Bool(false),
        "None" => return Json::Null,
        _ => {}
    }
    match serde_json::from_str::<Json>(s.trim()) {
        Ok(v) if !v.is_string() => v,
        _ => Json::String(s.to_owned()),
    }
}

/// The template context: Airflow's names, as far as flow has them.
fn context_value(task: &Task, ctx: &RunContext, notes: &Arc<Notes>) -> Value {
    Value::from(context_entries(task, ctx, notes))
}

/// [`context_value`]'s entries, for callers that add names of their own.
fn context_entries(
    task: &Task,
    ctx: &RunContext,
    notes: &Arc<Notes>,
) -> std::collections::BTreeMap<String, Value> {
    let dt = |d: Option<DateTime<Utc>>| {
        d.map_or(Value::from(()), |d| Value::from_object(PyDateTime::utc(d)))
    };
    let logical_date = dt(ctx.logical_date);
    let mut c: Vec<(&'static str, Value)> = Vec::with_capacity(40);

    if let Some(ld) = ctx.logical_date {
        let ld = PyDateTime::utc(ld);
        let ds = ld.0.format("%Y-%m-%d").to_string();
        let ds_nodash = ld.0.format("%Y%m%d").to_string();
        let day = ld.0.date_naive();
        let shift = |up: bool| {
            let shifted = if up {
                day.checked_add_days(Days::new(1))
            } else {
                day.checked_sub_days(Days::new(1))
            };
            shifted.unwrap_or(day)
        };
        let (yesterday, tomorrow) = (shift(false), shift(true));
        c.push(("ds", Value::from(ds.as_str())));
        c.push(("ds_nodash", Value::from(ds_nodash.as_str())));
        c.push(("ts", Value::from(ld.isoformat())));
        c.push(("ts_nodash", Value::from(ld.ts_nodash())));
        c.push(("ts_nodash_with_tz", Value::from(ld.ts_nodash_with_tz())));
        c.push((
            "yesterday_ds",
            Value::from(yesterday.format("%Y-%m-%d").to_string()),
        ));
        c.push((
            "yesterday_ds_nodash",
            Value::from(yesterday.format("%Y%m%d").to_string()),
        ));
        c.push((
            "tomorrow_ds",
            Value::from(tomorrow.format("%Y-%m-%d").to_string()),
        ));
        c.push((
            "tomorrow_ds_nodash",
            Value::from(tomorrow.format("%Y%m%d").to_string()),
        ));
        c.push((
            "task_instance_key_str",
            Value::from(format!("{}__{}__{}", ctx.dag_id, ctx.task_id, ds_nodash)),
        ));
    }
    c.push(("logical_date", logical_date.clone()));
    c.push(("execution_date", logical_date.clone()));
    c.push(("data_interval_start", dt(ctx.data_interval_start)));
    c.push(("data_interval_end", dt(ctx.data_interval_end)));
    c.push(("run_id", Value::from(ctx.run_id.as_str())));
    c.push(("try_number", Value::from(ctx.try_number)));
    c.push(("test_mode", Value::from(false)));
    c.push(("inlets", json_value(&crate::assets::inlets_json(task))));
    c.push(("outlets", json_value(&crate::assets::outlets_json(task))));
    let triggering = json_value(&ctx.triggering_asset_events);
    c.push(("triggering_asset_events", triggering.clone()));
    c.push(("triggering_dataset_events", triggering));
    c.push(("params", json_value(&Json::Object(ctx.params.clone()))));
    c.push((
        "dag_run",
        map(vec![
            ("dag_id", Value::from(ctx.dag_id.as_str())),
            ("run_id", Value::from(ctx.run_id.as_str())),
            ("run_type", Value::from(ctx.run_type.as_str())),
            ("conf", json_value(&ctx.conf)),
            ("logical_date", logical_date.clone()),
            ("execution_date", logical_date),
            ("data_interval_start", dt(ctx.data_interval_start)),
            ("data_interval_end", dt(ctx.data_interval_end)),
            ("run_after", dt(Some(ctx.run_after))),
            ("start_date", dt(ctx.dag_run_start_date)),
            ("external_trigger", Value::from(ctx.run_type == "manual")),
            ("state", Value::from("running")),
        ]),
    ));
    c.push((
        "dag",
        map(vec![
            ("dag_id", Value::from(ctx.dag_id.as_str())),
            ("owner", Value::from(ctx.owner.as_str())),
            ("timezone", Value::from(ctx.timezone.name())),
        ]),
    ));
    c.push((
        "task",
        map(vec![
            ("task_id", Value::from(ctx.task_id.as_str())),
            ("dag_id", Value::from(ctx.dag_id.as_str())),
            ("owner", Value::from(task.owner.as_str())),
            ("retries", Value::from(task.retries)),
            ("queue", Value::from(task.queue.as_str())),
            ("pool", Value::from(task.pool.as_str())),
            ("task_type", Value::from(task.operator.class_name())),
            ("label", Value::from(task.label.as_str())),
        ]),
    ));
    let ti = Value::from_object(TaskInstanceObject {
        dag_id: ctx.dag_id.clone(),
        task_id: ctx.task_id.clone(),
        run_id: ctx.run_id.clone(),
        map_index: ctx.map_index,
        try_number: ctx.try_number,
        max_tries: ctx.max_tries,
        xcoms: ctx.xcoms.clone(),
    });
    c.push(("ti", ti.clone()));
    c.push(("task_instance", ti));
    let variables = Arc::new(ctx.variables.clone());
    let accessor = |json| {
        Value::from_object(VarAccessor {
            variables: variables.clone(),
            json,
            notes: notes.clone(),
            wanted: ctx.variables_wanted.clone(),
        })
    };
    c.push((
        "var",
        map(vec![("value", accessor(false)), ("json", accessor(true))]),
    ));
    c.push((
        "conn",
        Value::from_object(jinja::ConnAccessor {
            connections: Arc::new(ctx.connections.clone()),
            wanted: ctx.connections_wanted.clone(),
        }),
    ));
    c.push(("macros", Value::from_object(Macros)));
    c.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}
