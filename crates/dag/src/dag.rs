//! The validated DAG: what the rest of flow works with once a file has been read.
//!
//! Everything here has passed validation: ids are valid, dependencies resolve, there is no
//! cycle, defaults are applied. Tasks are stored in topological order, so "every upstream comes
//! first" is an invariant consumers may rely on.

use std::path::PathBuf;

use chrono::{DateTime, Duration, Utc};
use flow_model::{DagId, PoolId, TaskId, TriggerRule};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::schedule::{Schedule, Timetable};

/// Airflow's default pool.
pub const DEFAULT_POOL: &str = "default_pool";
/// Airflow's default queue.
pub const DEFAULT_QUEUE: &str = "default";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dag {
    pub dag_id: DagId,
    /// The file the DAG was read from.
    pub fileloc: PathBuf,
    /// `fileloc` relative to the dags folder, with `/` separators.
    pub relative_fileloc: String,
    /// 1-based line of the DAG's key in its file.
    pub line: u32,
    pub description: Option<String>,
    pub doc_md: Option<String>,
    pub display_name: Option<String>,
    /// The owners of its tasks, comma separated, as Airflow's DAG list shows them.
    pub owner: String,
    /// The schedule as written, for display (`0 3 * * *`, `@daily`, `30m`, `None`).
    pub schedule_text: String,
    pub timetable: Timetable,
    /// Runs created by Kafka messages, beside (or instead of) the timetable.
    #[serde(default)]
    pub kafka_trigger: Option<KafkaTrigger>,
    /// Runs created when assets are updated (`asset_triggered`), beside (Airflow's
    /// `AssetOrTimeSchedule`) or instead of the timetable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset_schedule: Option<crate::assets::AssetCondition>,
    /// `on_success_callback` / `on_failure_callback` of the DAG: once per run.
    #[serde(default, skip_serializing_if = "crate::callbacks::Callbacks::is_empty")]
    pub callbacks: crate::callbacks::Callbacks,
    pub start_date: Option<DateTime<Utc>>,
    pub end_date: Option<DateTime<Utc>>,
    pub catchup: bool,
    pub max_active_runs: u32,
    pub max_active_tasks: u32,
    pub max_consecutive_failed_dag_runs: u32,
    #[serde(with = "millis_opt")]
    pub dagrun_timeout: Option<Duration>,
    pub tags: Vec<String>,
    pub params: IndexMap<String, Param>,
    pub is_paused_upon_creation: Option<bool>,
    pub render_template_as_native_obj: bool,
    pub owner_links: IndexMap<String, String>,
    pub task_groups: Vec<TaskGroup>,
    /// In topological order: every task comes after all of its upstream tasks.
    pub tasks: Vec<Task>,
    /// task id -> position in `tasks`, built on first lookup: the scheduler looks tasks up for
    /// every task instance of every pass, and a DAG may have thousands.
    #[serde(skip)]
    pub task_index: std::sync::OnceLock<std::collections::HashMap<String, usize>>,
}

impl Dag {
    pub fn schedule(&self) -> &Schedule {
        &self.timetable.schedule
    }

    /// Every task downstream of `task_id`, however far, sorted (the task itself excluded).
    pub fn all_downstream(&self, task_id: &str) -> Vec<String> {
        let mut seen: Vec<String> = Vec::new();
        let mut stack: Vec<String> = self
            .task(task_id)
            .map(|t| t.downstream.iter().map(ToString::to_string).collect())
            .unwrap_or_default();
        while let Some(id) = stack.pop() {
            if seen.contains(&id) {
                continue;
            }
            if let Some(t) = self.task(&id) {
                stack.extend(t.downstream.iter().map(ToString::to_string));
            }
            seen.push(id);
        }
        seen.sort();
        seen
    }

    pub fn task(&self, task_id: &str) -> Option<&Task> {
        let index = self.task_index.get_or_init(|| {
            self.tasks
                .iter()
                .enumerate()
                .map(|(i, t)| (t.task_id.to_string(), i))
                .collect()
        });
        match index.get(task_id).and_then(|&i| self.tasks.get(i)) {
            Some(t) if t.task_id.as_str() == task_id => Some(t),
            // `tasks` changed since the index was built (only while a DAG is being built).
            _ => self.tasks.iter().find(|t| t.task_id.as_str() == task_id),
        }
    }

    /// Tasks nobody depends on: a run's outcome is decided by them.
    pub fn leaves(&self) -> impl Iterator<Item = &Task> {
        self.tasks.iter().filter(|t| t.downstream.is_empty())
    }

    /// Tasks with no upstream.
    pub fn roots(&self) -> impl Iterator<Item = &Task> {
        self.tasks.iter().filter(|t| t.upstream.is_empty())
    }

    /// `selected` plus, optionally, every task downstream and/or upstream of them (transitively),
    /// as clearing and marking "with downstream/upstream" select them.
    pub fn with_relatives(
        &self,
        selected: impl IntoIterator<Item = String>,
        downstream: bool,
        upstream: bool,
    ) -> std::collections::BTreeSet<String> {
        let selected: std::collections::BTreeSet<String> = selected.into_iter().collect();
        let walk = |down: bool| {
            let mut stack: Vec<String> = selected.iter().cloned().collect();
            let mut seen: std::collections::BTreeSet<String> = selected.clone();
            while let Some(id) = stack.pop() {
                let Some(t) = self.task(&id) else { continue };
                let next = if down { &t.downstream } else { &t.upstream };
                for n in next {
                    if seen.insert(n.to_string()) {
                        stack.push(n.to_string());
                    }
                }
            }
            seen
        };
        let mut out = selected.clone();
        if downstream {
            out.extend(walk(true));
        }
        if upstream {
            out.extend(walk(false));
        }
        out
    }
}

/// A task group: a named, possibly nested, set of tasks drawn together in the UI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskGroup {
    /// The full, dotted id (`outer.inner`).
    pub group_id: String,
    pub parent: Option<String>,
    pub tooltip: Option<String>,
    pub ui_color: Option<String>,
    pub ui_fgcolor: Option<String>,
    pub prefix_group_id: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Task {
    /// The full id, prefixed with its task group's id as Airflow does (`group.task`).
    pub task_id: TaskId,
    /// The id as written in the YAML file (without group prefix).
    pub label: String,
    pub group_id: Option<String>,
    pub operator: Operator,
    /// Direct upstream tasks, sorted.
    pub upstream: Vec<TaskId>,
    /// Direct downstream tasks, sorted.
    pub downstream: Vec<TaskId>,
    pub trigger_rule: TriggerRule,
    pub retries: u32,
    #[serde(with = "millis")]
    pub retry_delay: Duration,
    pub retry_exponential_backoff: bool,
    #[serde(with = "millis_opt")]
    pub max_retry_delay: Option<Duration>,
    #[serde(with = "millis_opt")]
    pub execution_timeout: Option<Duration>,
    pub pool: PoolId,
    pub pool_slots: u32,
    pub priority_weight: i32,
    pub weight_rule: WeightRule,
    pub queue: String,
    pub owner: String,
    pub depends_on_past: bool,
    pub ignore_first_depends_on_past: bool,
    pub wait_for_downstream: bool,
    pub do_xcom_push: bool,
    pub multiple_outputs: bool,
    pub max_active_tis_per_dag: Option<u32>,
    pub max_active_tis_per_dagrun: Option<u32>,
    pub params: IndexMap<String, Param>,
    pub doc_md: Option<String>,
    pub display_name: Option<String>,
    /// Dynamic task mapping, if the task is mapped.
    pub mapping: Option<Mapping>,
    pub map_index_template: Option<String>,
    /// Assets a success updates: one event each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outlets: Vec<crate::assets::Outlet>,
    /// Assets the task reads (shown, and in its context).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inlets: Vec<crate::assets::Asset>,
    /// What runs when a try starts, succeeds, fails, is retried or skips itself (with
    /// `email` / `email_on_failure` / `email_on_retry` as email notifiers).
    #[serde(default, skip_serializing_if = "crate::callbacks::Callbacks::is_empty")]
    pub callbacks: crate::callbacks::Callbacks,
    /// 1-based line of the task in its file.
    pub line: u32,
}

impl Task {
    /// Whether the task is mapped: its instances are made at run time, one per element.
    pub fn is_mapped(&self) -> bool {
        self.mapping.as_ref().is_some_and(Mapping::is_mapped)
    }

    /// Where a failed try goes (Airflow's `handle_failure`): `up_for_retry`, due after the
    /// retry delay, while tries are left (`try_number <= max_tries`), else `failed`.
    pub fn after_failure(
        &self,
        try_number: i64,
        max_tries: i64,
        now: DateTime<Utc>,
    ) -> (flow_model::TaskInstanceState, Option<DateTime<Utc>>) {
        use flow_model::TaskInstanceState as S;
        if try_number <= max_tries {
            return (
                S::UpForRetry,
                Some(now + self.retry_delay_after(try_number)),
            );
        }
        (S::Failed, None)
    }

    /// How long to wait before retrying after try `try_number` failed: `retry_delay`, doubled
    /// per try with `retry_exponential_backoff`, capped by `max_retry_delay` (and a day).
    pub fn retry_delay_after(&self, try_number: i64) -> Duration {
        let base = self.retry_delay;
        if !self.retry_exponential_backoff {
            return base;
        }
        let exp = u32::try_from((try_number - 1).clamp(0, 30)).unwrap_or(0);
        let delay = base
            .checked_mul(2i32.saturating_pow(exp))
            .unwrap_or(Duration::days(1));
        match self.max_retry_delay {
            Some(max) => delay.min(max),
            None => delay.min(Duration::days(1)),
        }
    }
}

/// How a task's priority weight adds up (Airflow's `weight_rule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightRule {
    /// Own weight plus all downstream tasks' weights (the default).
    Downstream,
    /// Own weight plus all upstream tasks' weights.
    Upstream,
    /// Own weight only.
    Absolute,
}

impl WeightRule {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "downstream" => Some(Self::Downstream),
            "upstream" => Some(Self::Upstream),
            "absolute" => Some(Self::Absolute),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Downstream => "downstream",
            Self::Upstream => "upstream",
            Self::Absolute => "absolute",
        }
    }
}

pub use crate::operators::bash::BashOperator;
pub use crate::operators::branch::{
    BranchDateTimeOperator, BranchDayOfWeekOperator, Condition, DateTimeBound, ShortCircuitOperator,
};
pub use crate::operators::cross_dag::{
    ExternalTarget, ExternalTaskMarker, ExternalTaskSensor, TriggerDagRunOperator,
};
pub use crate::operators::date_time::DateTimeSensor;
pub use crate::operators::email::EmailOperator;
pub use crate::operators::http::{HttpOperator, HttpOptions, HttpRequest};
pub use crate::operators::http_sensor::HttpSensor;
pub use crate::operators::kafka_await_message::KafkaAwaitMessageSensor;
pub use crate::operators::kafka_consume::KafkaConsumeOperator;
pub use crate::operators::kafka_produce::{KafkaMessages, KafkaProduceOperator};
pub use crate::operators::python::{PythonCallable, PythonOperator};
pub use crate::operators::sensors::{BashSensor, DEFAULT_FS_CONN_ID, FileSensor, PythonSensor};
pub use crate::operators::sql::{SqlOperator, SqlStatements, is_sql_file};
pub use crate::operators::sql_sensor::SqlSensor;
pub use crate::operators::time_delta::TimeDeltaSensor;

/// What a task does: one variant per operator module (`crate::operators`), serialized with
/// the operator's short name as `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Operator {
    Bash(BashOperator),
    Python(PythonOperator),
    Empty,
    KafkaProduce(KafkaProduceOperator),
    KafkaConsume(KafkaConsumeOperator),
    KafkaAwaitMessage(KafkaAwaitMessageSensor),
    TimeDelta(TimeDeltaSensor),
    DateTime(DateTimeSensor),
    Sql(SqlOperator),
    SqlSensor(SqlSensor),
    Http(HttpOperator),
    HttpSensor(HttpSensor),
    BranchPython(PythonOperator),
    BranchBash(BashOperator),
    ShortCircuit(ShortCircuitOperator),
    BranchDayOfWeek(BranchDayOfWeekOperator),
    BranchDateTime(BranchDateTimeOperator),
    LatestOnly,
    TriggerDagRun(TriggerDagRunOperator),
    ExternalTaskSensor(ExternalTaskSensor),
    ExternalTaskMarker(ExternalTaskMarker),
    FileSensor(FileSensor),
    PythonSensor(PythonSensor),
    BashSensor(BashSensor),
    Email(EmailOperator),
}

impl Operator {
    /// The short name (`bash`, `python`, `empty`), the operator's name in the registry.
    pub fn kind(&self) -> &'static str {
        match self {
            Operator::Bash(_) => "bash",
            Operator::Python(_) => "python",
            Operator::Empty => "empty",
            Operator::KafkaProduce(_) => "kafka_produce",
            Operator::KafkaConsume(_) => "kafka_consume",
            Operator::KafkaAwaitMessage(_) => "kafka_await_message",
            Operator::TimeDelta(_) => "time_delta",
            Operator::DateTime(_) => "date_time",
            Operator::Sql(_) => "sql",
            Operator::SqlSensor(_) => "sql_sensor",
            Operator::Http(_) => "http",
            Operator::HttpSensor(_) => "http_sensor",
            Operator::BranchPython(_) => "branch_python",
            Operator::BranchBash(_) => "branch_bash",
            Operator::ShortCircuit(_) => "short_circuit",
            Operator::BranchDayOfWeek(_) => "branch_day_of_week",
            Operator::BranchDateTime(_) => "branch_datetime",
            Operator::LatestOnly => "latest_only",
            Operator::TriggerDagRun(_) => "trigger_dagrun",
            Operator::ExternalTaskSensor(_) => "external_task_sensor",
            Operator::ExternalTaskMarker(_) => "external_task_marker",
            Operator::FileSensor(_) => "file_sensor",
            Operator::PythonSensor(_) => "python_sensor",
            Operator::BashSensor(_) => "bash_sensor",
            Operator::Email(_) => "email",
        }
    }

    /// The operator's registry entry: Airflow's class, template fields, UI colour.
    pub fn def(&self) -> &'static crate::operators::OperatorDef {
        crate::operators::get(self.kind())
            .unwrap_or_else(|| unreachable!("every operator is registered"))
    }

    /// The sensor settings, for sensors.
    pub fn sensor(&self) -> Option<&Sensor> {
        match self {
            Operator::KafkaAwaitMessage(s) => Some(&s.sensor),
            Operator::TimeDelta(s) => Some(&s.sensor),
            Operator::DateTime(s) => Some(&s.sensor),
            Operator::SqlSensor(s) => Some(&s.sensor),
            Operator::HttpSensor(s) => Some(&s.sensor),
            Operator::ExternalTaskSensor(s) => Some(&s.sensor),
            Operator::FileSensor(s) => Some(&s.sensor),
            Operator::PythonSensor(s) => Some(&s.sensor),
            Operator::BashSensor(s) => Some(&s.sensor),
            _ => None,
        }
    }

    /// Airflow's class name, as the UI shows it.
    pub fn class_name(&self) -> &'static str {
        match self {
            Operator::Python(p) if p.decorated => "@task",
            Operator::BranchPython(p) if p.decorated => "@task.branch",
            Operator::ShortCircuit(ShortCircuitOperator {
                condition: Condition::Python(p),
                ..
            }) if p.decorated => "@task.short_circuit",
            _ => self.def().class,
        }
    }
}

/// The default connection of Kafka operators and triggers (the provider's `kafka_default`).
pub const DEFAULT_KAFKA_CONN_ID: &str = "kafka_default";

pub use crate::operators::sensor::{Sensor, SensorMode};

/// `schedule: {kafka: ...}`: every matching message creates one run of type `event`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KafkaTrigger {
    pub conn_id: String,
    pub topics: Vec<String>,
    /// A minijinja expression over the message; `None` matches every message.
    pub filter: Option<String>,
    /// Default `flow-triggers.<topics>`: DAGs watching the same topics share one consumer.
    pub group_id: String,
    /// Messages the filter cannot evaluate are copied here when set.
    pub dead_letter_topic: Option<String>,
}

/// An argument value: a literal, or another task's output (`+task_id`, Airflow's XComArg).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arg {
    Value(Json),
    Output(TaskId),
}

/// Dynamic task mapping (`expand` / `expand_kwargs` / `partial`).
///
/// A mapped task has one task instance per element of its expanded arguments, made at run
/// time once its upstream tasks are done (so that it can map over their output). With several
/// `expand` arguments the instances are their cross product, the last argument varying
/// fastest, as in Airflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mapping {
    pub expand: IndexMap<String, Arg>,
    pub partial: IndexMap<String, Arg>,
    /// `expand_kwargs`: one instance per mapping of arguments.
    #[serde(default)]
    pub kwargs: Option<Arg>,
}

/// The Python type name of a JSON value, as Airflow's mapping errors name it.
pub fn python_type(v: &Json) -> &'static str {
    match v {
        Json::Null => "NoneType",
        Json::Bool(_) => "bool",
        Json::Number(n) if n.is_f64() => "float",
        Json::Number(_) => "int",
        Json::String(_) => "str",
        Json::Array(_) => "list",
        Json::Object(_) => "dict",
    }
}

/// How many instances an upstream's return value makes when a task maps over it: a list's
/// items or a mapping's entries. Anything else (nothing pushed, a scalar) gets Airflow's error.
pub fn mapped_length(value: Option<&Json>) -> Result<usize, String> {
    match value {
        None | Some(Json::Null) => {
            Err("XComForMappingNotPushed: did not push XCom for task mapping".to_owned())
        }
        Some(Json::Array(items)) => Ok(items.len()),
        Some(Json::Object(entries)) => Ok(entries.len()),
        Some(other) => Err(format!(
            "UnmappableXComTypePushed: unmappable return type '{}'",
            python_type(other)
        )),
    }
}

impl Mapping {
    /// Whether the task is mapped (`partial` alone only sets arguments).
    pub fn is_mapped(&self) -> bool {
        !self.expand.is_empty() || self.kwargs.is_some()
    }

    /// The tasks whose output this mapping expands over.
    pub fn sources(&self) -> impl Iterator<Item = &TaskId> {
        self.expand
            .values()
            .chain(&self.kwargs)
            .filter_map(|a| match a {
                Arg::Output(t) => Some(t),
                Arg::Value(_) => None,
            })
    }
}

/// Airflow's `[core] max_map_length`: the most instances one mapped task may have.
pub const DEFAULT_MAX_MAP_LENGTH: usize = 1024;

/// A run parameter (Airflow's `Param`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Param {
    pub default: Option<Json>,
    /// JSON Schema keywords (`type`, `enum`, `minimum`, ...), as Airflow's Param keeps them.
    pub schema: serde_json::Map<String, Json>,
    pub description: Option<String>,
    pub title: Option<String>,
}

impl Param {
    pub fn plain(default: Json) -> Self {
        Param {
            default: Some(default),
            schema: serde_json::Map::new(),
            description: None,
            title: None,
        }
    }
}

/// Durations are stored as milliseconds in the serialized DAG.
pub(crate) mod millis {
    use chrono::Duration;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(d.num_milliseconds())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::milliseconds(i64::deserialize(d)?))
    }
}

pub(crate) mod millis_opt {
    use chrono::Duration;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.num_milliseconds()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<i64>::deserialize(d)?.map(Duration::milliseconds))
    }
}

impl Dag {
    /// Effective priority weights per Airflow's weight rules: `downstream` adds the weights of all
    /// descendants, `upstream` of all ancestors, `absolute` is the task's own.
    pub fn priority_weights(&self) -> std::collections::HashMap<String, i64> {
        let index: std::collections::HashMap<&str, usize> = self
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| (t.task_id.as_str(), i))
            .collect();
        let own: Vec<i64> = self
            .tasks
            .iter()
            .map(|t| i64::from(t.priority_weight))
            .collect();
        let collect = |start: usize, down: bool| -> i64 {
            let mut seen = vec![false; self.tasks.len()];
            let mut stack = vec![start];
            let mut sum = 0i64;
            while let Some(i) = stack.pop() {
                if std::mem::replace(&mut seen[i], true) {
                    continue;
                }
                sum = sum.saturating_add(own[i]);
                let next = if down {
                    &self.tasks[i].downstream
                } else {
                    &self.tasks[i].upstream
                };
                stack.extend(next.iter().filter_map(|t| index.get(t.as_str()).copied()));
            }
            sum
        };
        self.tasks
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let w = match t.weight_rule {
                    WeightRule::Absolute => own[i],
                    WeightRule::Downstream => collect(i, true),
                    WeightRule::Upstream => collect(i, false),
                };
                (t.task_id.to_string(), w)
            })
            .collect()
    }

    /// The serialized form stored in the metadata database; workers and the webserver read
    /// DAGs from it and never need the dags folder.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }

    pub fn from_json(text: &str) -> Result<Dag, serde_json::Error> {
        serde_json::from_str(text)
    }
}
