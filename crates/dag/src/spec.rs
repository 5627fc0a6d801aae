//! The YAML format mirrored as-is: raw spec types with every key a user may write.
//!
//! These types say what may be written, nothing more: they carry no defaults and no cross-field
//! rules. `build.rs` turns them into the validated [`crate::Dag`] in one place. The JSON Schema of
//! the format (`flow dags schema`) is generated from these same types, so the schema and the
//! loader cannot drift apart.
//!
//! Values whose meaning depends on context (tasks, defaults, dates, schedules) are kept as
//! [`Raw`] nodes with their positions and read later, where the context is known.

use std::marker::PhantomData;

use indexmap::IndexMap;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer};

use crate::de::{RAW_NODE, take_raw_node};
use crate::yaml::Node;

/// A YAML node kept with its position, to be interpreted later as a `T`.
#[derive(Debug, Clone)]
pub struct Raw<T> {
    pub node: Node,
    _marker: PhantomData<fn() -> T>,
}

impl<'de, T> Deserialize<'de> for Raw<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RawVisitor;
        impl serde::de::Visitor<'_> for RawVisitor {
            type Value = ();
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a YAML node")
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
                Ok(())
            }
        }
        deserializer.deserialize_newtype_struct(RAW_NODE, RawVisitor)?;
        let node = take_raw_node()
            .ok_or_else(|| serde::de::Error::custom("raw nodes can only be read from YAML"))?;
        Ok(Raw {
            node,
            _marker: PhantomData,
        })
    }
}

impl<T: JsonSchema> JsonSchema for Raw<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        T::json_schema(generator)
    }
    fn inline_schema() -> bool {
        T::inline_schema()
    }
}

/// Any YAML value (used for keys whose content flow does not interpret yet).
#[derive(Debug, Clone)]
pub struct AnyValue;

impl JsonSchema for AnyValue {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "AnyValue".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!(true)
    }
}

/// A duration: `90s`, `5m`, `1h30m`, `2d`, plain seconds, or dag-factory's
/// `{__type__: datetime.timedelta, minutes: 5}`.
#[derive(Debug, Clone)]
pub struct DurationSpec;

impl JsonSchema for DurationSpec {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A duration: `90s`, `5m`, `1h30m`, `2d`, seconds as a number, or `{__type__: datetime.timedelta, minutes: 5}`",
            "anyOf": [
                {"type": "string", "pattern": "^\\s*([0-9]+(\\.[0-9]+)?\\s*(w|d|h|m|s|ms)?\\s*)+$"},
                {"type": "number", "minimum": 0},
                {"type": "object", "properties": {
                    "__type__": {"const": "datetime.timedelta"},
                    "weeks": {"type": "number"}, "days": {"type": "number"}, "hours": {"type": "number"},
                    "minutes": {"type": "number"}, "seconds": {"type": "number"},
                    "milliseconds": {"type": "number"}, "microseconds": {"type": "number"}
                }, "required": ["__type__"], "additionalProperties": false}
            ]
        })
    }
}

/// A date or date-time: `2025-01-01`, `2025-01-01T06:00:00`, with an optional UTC offset, a
/// relative `2 days` (midnight of today minus two days, as dag-factory), or
/// `{__type__: datetime.datetime, year: 2025, month: 1, day: 1}`.
#[derive(Debug, Clone)]
pub struct DateSpec;

impl JsonSchema for DateSpec {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Date".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "`2025-01-01`, `2025-01-01T06:00:00+01:00`, a relative `2 days`, or `{__type__: datetime.datetime, year: 2025, month: 1, day: 1}`",
            "anyOf": [{"type": "string"}, {"type": "object", "properties": {"__type__": {"type": "string"}}, "required": ["__type__"]}]
        })
    }
}

/// `schedule`: a 5-field cron, a preset (`@daily`, `@once`, `@continuous`, ...), an interval
/// (`30m`), `null` for manual only, or an Airflow timetable given as
/// `{__type__: airflow.timetables.trigger.CronTriggerTimetable, cron: ..., timezone: ...}`.
#[derive(Debug, Clone)]
pub struct ScheduleSpec;

impl JsonSchema for ScheduleSpec {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Schedule".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "cron (`0 3 * * *`), preset (`@daily`, `@hourly`, `@once`, `@continuous`, ...), interval (`30m`), null (manual only) or an Airflow timetable object",
            "anyOf": [
                {"type": "string"},
                {"type": "null"},
                {"type": "object", "properties": {
                    "__type__": {"type": "string"},
                    "__args__": {"type": "array"},
                    "cron": {"type": "string"},
                    "timezone": {"type": "string"},
                    "delta": {"$ref": "#/$defs/Duration"}
                }}
            ]
        })
    }
}

/// A DAG in a YAML file: `dag_id: {spec}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DagSpec {
    /// One line shown in the DAG list.
    pub description: Option<String>,
    /// Long documentation in Markdown.
    pub doc_md: Option<String>,
    /// Name shown in the UI instead of the dag_id.
    pub dag_display_name: Option<String>,
    /// When runs are created: cron, preset, interval, null, or a timetable object.
    pub schedule: Option<Raw<ScheduleSpec>>,
    /// Airflow 2's name for `schedule`.
    pub schedule_interval: Option<Raw<ScheduleSpec>>,
    /// `data_interval` (Airflow 2 semantics, the default) or `trigger` (Airflow 3's
    /// CronTriggerTimetable: zero-width intervals, logical date = run time).
    pub timetable: Option<Raw<AnyValue>>,
    /// First logical date. May also be given in `default_args`.
    pub start_date: Option<Raw<DateSpec>>,
    /// No run starts after this date.
    pub end_date: Option<Raw<DateSpec>>,
    /// IANA time zone in which the schedule is evaluated (default UTC).
    pub timezone: Option<String>,
    /// Create runs for every missed interval since `start_date` (default false, as Airflow 3).
    pub catchup: Option<bool>,
    /// At most this many active runs (default 16).
    pub max_active_runs: Option<u32>,
    /// At most this many running task instances across the DAG's active runs (default 16).
    pub max_active_tasks: Option<u32>,
    /// Airflow 2's name for `max_active_tasks`.
    pub concurrency: Option<u32>,
    /// Pause the DAG after this many consecutive failed runs (0 = never).
    pub max_consecutive_failed_dag_runs: Option<u32>,
    /// Fail a run that takes longer than this.
    pub dagrun_timeout: Option<Raw<DurationSpec>>,
    /// dag-factory's older form of `dagrun_timeout`, in seconds.
    pub dagrun_timeout_sec: Option<Raw<DurationSpec>>,
    pub tags: Option<Vec<String>>,
    /// Run parameters with defaults; a value or `{__type__: airflow.models.param.Param, default:
    /// ..., type: ..., description: ...}`.
    pub params: Option<Raw<IndexMap<String, ParamSpec>>>,
    /// Arguments applied to every task unless the task sets them.
    pub default_args: Option<Raw<DefaultArgsSpec>>,
    /// Tasks: a list of `{task_id: ...}` or a mapping keyed by task id.
    pub tasks: Option<Raw<TasksSpec>>,
    /// Task groups: a list of `{group_name: ...}` or a mapping keyed by group name.
    pub task_groups: Option<Raw<TaskGroupsSpec>>,
    /// Overrides `[core] dags_are_paused_at_creation` for this DAG.
    pub is_paused_upon_creation: Option<bool>,
    pub render_template_as_native_obj: Option<bool>,
    pub owner_links: Option<IndexMap<String, String>>,
    /// Airflow 2 UI hints; accepted and ignored.
    pub default_view: Option<String>,
    pub orientation: Option<String>,
    // Keys of features flow does not implement yet: accepted, kept and reported as warnings.
    pub on_success_callback: Option<Raw<AnyValue>>,
    pub on_failure_callback: Option<Raw<AnyValue>>,
    pub on_success_callback_name: Option<Raw<AnyValue>>,
    pub on_success_callback_file: Option<Raw<AnyValue>>,
    pub on_failure_callback_name: Option<Raw<AnyValue>>,
    pub on_failure_callback_file: Option<Raw<AnyValue>>,
    pub sla_miss_callback: Option<Raw<AnyValue>>,
    pub user_defined_macros: Option<Raw<AnyValue>>,
    pub user_defined_filters: Option<Raw<AnyValue>>,
    pub access_control: Option<Raw<AnyValue>>,
    pub template_searchpath: Option<Raw<AnyValue>>,
    pub jinja_environment_kwargs: Option<Raw<AnyValue>>,
    pub doc_md_file_path: Option<Raw<AnyValue>>,
    pub doc_md_python_callable_name: Option<Raw<AnyValue>>,
    pub doc_md_python_callable_file: Option<Raw<AnyValue>>,
    pub doc_md_python_arguments: Option<Raw<AnyValue>>,
    pub fail_fast: Option<Raw<AnyValue>>,
    pub fail_stop: Option<Raw<AnyValue>>,
    pub on_execute_callback: Option<Raw<AnyValue>>,
    pub on_execute_callback_name: Option<Raw<AnyValue>>,
    pub on_execute_callback_file: Option<Raw<AnyValue>>,
    pub on_retry_callback: Option<Raw<AnyValue>>,
    pub on_retry_callback_name: Option<Raw<AnyValue>>,
    pub on_retry_callback_file: Option<Raw<AnyValue>>,
    pub on_skipped_callback: Option<Raw<AnyValue>>,
    pub on_skipped_callback_name: Option<Raw<AnyValue>>,
    pub on_skipped_callback_file: Option<Raw<AnyValue>>,
}

/// DAG-level keys of features not built yet.
pub const DAG_UNSUPPORTED_KEYS: &[&str] = &[
    "sla_miss_callback",
    "user_defined_macros",
    "user_defined_filters",
    "access_control",
    "template_searchpath",
    "jinja_environment_kwargs",
    "doc_md_file_path",
    "doc_md_python_callable_name",
    "doc_md_python_callable_file",
    "doc_md_python_arguments",
    "fail_fast",
    "fail_stop",
];

/// A run parameter.
#[derive(Debug, Clone, JsonSchema)]
#[serde(untagged)]
pub enum ParamSpec {
    /// `{__type__: airflow.models.param.Param, default: 1, type: integer, ...}`
    Param(ParamObjectSpec),
    /// A plain default value.
    Value(#[schemars(with = "serde_json::Value")] AnyValue),
}

/// Airflow's `Param`: a default plus a JSON-Schema-like description of valid values.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParamObjectSpec {
    #[serde(rename = "__type__")]
    pub type_path: String,
    #[schemars(with = "Option<serde_json::Value>")]
    pub default: Option<Raw<AnyValue>>,
    #[serde(rename = "type")]
    #[schemars(with = "Option<serde_json::Value>")]
    pub value_type: Option<Raw<AnyValue>>,
    pub description: Option<String>,
    pub title: Option<String>,
    #[schemars(with = "Option<Vec<serde_json::Value>>")]
    #[serde(rename = "enum")]
    pub enum_values: Option<Raw<AnyValue>>,
    pub minimum: Option<f64>,
    pub maximum: Option<f64>,
    #[serde(rename = "minLength")]
    pub min_length: Option<u64>,
    #[serde(rename = "maxLength")]
    pub max_length: Option<u64>,
    pub pattern: Option<String>,
    pub format: Option<String>,
    pub values_display: Option<IndexMap<String, String>>,
}

/// `tasks:` as a list of `{task_id: ...}` or a mapping `task_id: {...}`.
#[derive(Debug, JsonSchema)]
#[serde(untagged)]
pub enum TasksSpec {
    List(Vec<TaskSpec>),
    Map(IndexMap<String, TaskSpec>),
}

/// `task_groups:` as a list of `{group_name: ...}` or a mapping `group_name: {...}`.
#[derive(Debug, JsonSchema)]
#[serde(untagged)]
pub enum TaskGroupsSpec {
    List(Vec<TaskGroupSpec>),
    Map(IndexMap<String, TaskGroupSpec>),
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskGroupSpec {
    /// The group's name (list form only).
    pub group_name: Option<String>,
    pub tooltip: Option<String>,
    pub ui_color: Option<String>,
    pub ui_fgcolor: Option<String>,
    /// Prefix task ids with the group id (default true, as Airflow).
    pub prefix_group_id: Option<bool>,
    /// Tasks or groups the whole group runs after.
    pub dependencies: Option<Vec<String>>,
    /// The group this group is nested in.
    pub parent_group_name: Option<String>,
    /// Arguments applied to the group's tasks, over the DAG's `default_args`.
    pub default_args: Option<Raw<DefaultArgsSpec>>,
}

/// Keys every task accepts, whatever its operator. `default_args` may hold any of these (and
/// any operator's keys, applied to the tasks whose operator takes them).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskCommonSpec {
    /// The task's id (list form only).
    pub task_id: Option<String>,
    /// `bash`, `python`, `empty`, or an Airflow class path such as
    /// `airflow.providers.standard.operators.bash.BashOperator`.
    pub operator: Option<String>,
    /// A TaskFlow decorator such as `airflow.sdk.task`; the task calls `python_callable`.
    pub decorator: Option<String>,
    /// Tasks or task groups this task runs after.
    pub dependencies: Option<Vec<String>>,
    /// The task group the task belongs to.
    pub task_group_name: Option<String>,
    pub trigger_rule: Option<String>,
    pub retries: Option<u32>,
    pub retry_delay: Option<Raw<DurationSpec>>,
    /// dag-factory's older form of `retry_delay`, in seconds.
    pub retry_delay_sec: Option<Raw<DurationSpec>>,
    pub retry_exponential_backoff: Option<bool>,
    pub max_retry_delay: Option<Raw<DurationSpec>>,
    pub execution_timeout: Option<Raw<DurationSpec>>,
    /// dag-factory's older form of `execution_timeout`, in seconds.
    pub execution_timeout_secs: Option<Raw<DurationSpec>>,
    pub pool: Option<String>,
    pub pool_slots: Option<u32>,
    pub priority_weight: Option<i32>,
    /// `downstream` (default), `upstream` or `absolute`.
    pub weight_rule: Option<String>,
    pub queue: Option<String>,
    pub owner: Option<String>,
    pub depends_on_past: Option<bool>,
    pub ignore_first_depends_on_past: Option<bool>,
    pub wait_for_downstream: Option<bool>,
    pub do_xcom_push: Option<bool>,
    pub multiple_outputs: Option<bool>,
    pub max_active_tis_per_dag: Option<u32>,
    pub max_active_tis_per_dagrun: Option<u32>,
    #[schemars(with = "Option<IndexMap<String, ParamSpec>>")]
    pub params: Option<Raw<IndexMap<String, ParamSpec>>>,
    pub doc_md: Option<String>,
    pub doc: Option<String>,
    pub task_display_name: Option<String>,
    /// Only meaningful in `default_args`: the DAG's start date.
    pub start_date: Option<Raw<DateSpec>>,
    pub end_date: Option<Raw<DateSpec>>,
    /// Only meaningful in `default_args`: the DAG's time zone (dag-factory).
    pub timezone: Option<String>,
    /// Dynamic task mapping: one mapped instance per element.
    #[schemars(with = "Option<IndexMap<String, serde_json::Value>>")]
    pub expand: Option<Raw<AnyValue>>,
    /// Arguments shared by every mapped instance.
    #[schemars(with = "Option<IndexMap<String, serde_json::Value>>")]
    pub partial: Option<Raw<AnyValue>>,
    /// Dynamic task mapping over sets of arguments (Airflow's `expand_kwargs`): a list of
    /// mappings, or `+task_id` for another task's output that is one; one mapped instance per
    /// mapping.
    #[schemars(with = "Option<serde_json::Value>")]
    pub expand_kwargs: Option<Raw<AnyValue>>,
    pub map_index_template: Option<String>,
    /// Assets the task's success updates: URIs, `airflow.sdk.Asset` objects, asset aliases, or
    /// dag-factory's `{file: ..., datasets: [names]}`.
    #[schemars(with = "Option<serde_json::Value>")]
    pub outlets: Option<Raw<AnyValue>>,
    /// Assets the task reads, in the same forms.
    #[schemars(with = "Option<serde_json::Value>")]
    pub inlets: Option<Raw<AnyValue>>,
    // Keys of features flow does not implement yet: accepted, kept and reported as warnings.
    pub email: Option<Raw<AnyValue>>,
    pub email_on_failure: Option<Raw<AnyValue>>,
    pub email_on_retry: Option<Raw<AnyValue>>,
    pub sla: Option<Raw<AnyValue>>,
    pub sla_secs: Option<Raw<AnyValue>>,
    pub on_execute_callback: Option<Raw<AnyValue>>,
    pub on_failure_callback: Option<Raw<AnyValue>>,
    pub on_success_callback: Option<Raw<AnyValue>>,
    pub on_retry_callback: Option<Raw<AnyValue>>,
    pub on_skipped_callback: Option<Raw<AnyValue>>,
    pub on_failure_callback_name: Option<Raw<AnyValue>>,
    pub on_failure_callback_file: Option<Raw<AnyValue>>,
    pub on_success_callback_name: Option<Raw<AnyValue>>,
    pub on_success_callback_file: Option<Raw<AnyValue>>,
    pub executor_config: Option<Raw<AnyValue>>,
    pub resources: Option<Raw<AnyValue>>,
    pub run_as_user: Option<Raw<AnyValue>>,
    pub task_concurrency: Option<Raw<AnyValue>>,
    pub on_execute_callback_name: Option<Raw<AnyValue>>,
    pub on_execute_callback_file: Option<Raw<AnyValue>>,
    pub on_retry_callback_name: Option<Raw<AnyValue>>,
    pub on_retry_callback_file: Option<Raw<AnyValue>>,
    pub on_skipped_callback_name: Option<Raw<AnyValue>>,
    pub on_skipped_callback_file: Option<Raw<AnyValue>>,
}

/// Task-level keys of features not built yet.
pub const TASK_UNSUPPORTED_KEYS: &[&str] = &[
    "sla",
    "sla_secs",
    "executor_config",
    "resources",
    "run_as_user",
    "task_concurrency",
];

/// `default_args`: any task key; operator keys apply to tasks whose operator takes them.
pub type DefaultArgsSpec = TaskCommonSpec;

/// What the JSON Schema documents as a task: the common keys plus every operator's keys. Its
/// schema is assembled in `schema.rs` from the structs above.
#[derive(Debug)]
pub struct TaskSpec;

impl JsonSchema for TaskSpec {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Task".into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        crate::schema::task_schema(generator)
    }
}

/// The names of a struct's fields, as serde sees them, read from its `Deserialize` impl.
pub fn field_names<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    struct Probe(Option<&'static [&'static str]>);
    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("probe")
        }
    }
    impl std::error::Error for Stop {}
    impl serde::de::Error for Stop {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Stop
        }
    }
    impl<'de> Deserializer<'de> for &mut Probe {
        type Error = Stop;
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Stop> {
            self.0 = Some(fields);
            Err(Stop)
        }
        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }
    let mut probe = Probe(None);
    let _ = T::deserialize(&mut probe);
    probe.0.unwrap_or(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_probe() {
        let names = field_names::<crate::operators::bash::BashSpec>();
        assert!(names.contains(&"bash_command"));
        assert!(names.contains(&"append_env"));
        assert!(field_names::<TaskCommonSpec>().contains(&"trigger_rule"));
    }
}
