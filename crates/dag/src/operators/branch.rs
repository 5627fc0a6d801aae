//! Branching and control flow: which of a task's downstream tasks run. Each operator here
//! succeeds and names the direct downstream tasks to follow (its XCom); the others are skipped
//! and Airflow's trigger rules carry the skip further (`none_failed_min_one_success` joins the
//! branches again).
//!
//! `branch_python` (BranchPythonOperator, `@task.branch`) and `branch_bash` take the ids from
//! a callable's return value or a command's last output line; `short_circuit` skips everything
//! downstream when its condition is false; `branch_day_of_week`, `branch_datetime` and
//! `latest_only` decide from the calendar.

use chrono::{NaiveDateTime, NaiveTime, Weekday};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::bash::{Bash, BashOperator, BashSpec};
use super::python::{Python, PythonOperator, PythonSpec};
use super::{OperatorKind, ReadOp};
use crate::build::{Ctx, read_spec, split_keys};
use crate::dag::Operator;
use crate::de::to_json;
use crate::spec::{AnyValue, Raw, field_names};
use crate::yaml::Node;

pub(crate) struct BranchPython;

impl OperatorKind for BranchPython {
    const NAME: &'static str = "branch_python";
    const ALIASES: &'static [&'static str] = &[
        "BranchPythonOperator",
        "airflow.operators.python.BranchPythonOperator",
        "airflow.operators.python_operator.BranchPythonOperator",
        "airflow.providers.standard.operators.python.BranchPythonOperator",
    ];
    const MODULE: &'static str = "airflow.providers.standard.operators.python";
    const CLASS: &'static str = "BranchPythonOperator";
    const TEMPLATE_FIELDS: &'static [&'static str] = &["templates_dict", "op_args", "op_kwargs"];
    const UI_COLOR: &'static str = "#ffefeb";
    type Spec = PythonSpec;

    fn build(ctx: &mut Ctx<'_>, spec: Self::Spec, read: &mut ReadOp<'_>) -> Option<Operator> {
        match Python::build(ctx, spec, read)? {
            Operator::Python(op) => Some(Operator::BranchPython(op)),
            _ => None,
        }
    }
}

pub(crate) struct BranchBash;

impl OperatorKind for BranchBash {
    const NAME: &'static str = "branch_bash";
    const ALIASES: &'static [&'static str] = &["BranchBashOperator"];
    const MODULE: &'static str = "airflow.providers.standard.operators.bash";
    const CLASS: &'static str = "BranchBashOperator";
    const TEMPLATE_FIELDS: &'static [&'static str] = &["bash_command", "env", "cwd"];
    const UI_COLOR: &'static str = "#f0ede4";
    type Spec = BashSpec;

    fn build(ctx: &mut Ctx<'_>, spec: Self::Spec, read: &mut ReadOp<'_>) -> Option<Operator> {
        match Bash::build(ctx, spec, read)? {
            Operator::Bash(op) => Some(Operator::BranchBash(op)),
            _ => None,
        }
    }
}

/// `short_circuit`: a Python callable or a bash command (its last output line) as the
/// condition, and whether the skip ignores downstream trigger rules. The condition's keys are
/// read as [`BashSpec`] or [`PythonSpec`]; this struct lists them for the key check and the
/// schema.
#[allow(dead_code)]
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShortCircuitSpec {
    /// Skip every task downstream, whatever its trigger rule (default true, as Airflow);
    /// false skips the direct downstream tasks and lets trigger rules decide the rest.
    pub ignore_downstream_trigger_rules: Option<bool>,
    /// A bash condition instead of a Python one: its last output line, read as Python reads
    /// truth (`""`, `0`, `false`, `none` are false).
    pub bash_command: Option<String>,
    #[schemars(with = "Option<serde_json::Value>")]
    pub env: Option<Raw<AnyValue>>,
    pub append_env: Option<bool>,
    pub cwd: Option<String>,
    pub python_callable: Option<String>,
    pub python_callable_name: Option<String>,
    pub python_callable_file: Option<String>,
    #[schemars(with = "Option<Vec<serde_json::Value>>")]
    pub op_args: Option<Raw<AnyValue>>,
    #[schemars(with = "Option<serde_json::Value>")]
    pub op_kwargs: Option<Raw<AnyValue>>,
    #[schemars(with = "Option<serde_json::Value>")]
    pub templates_dict: Option<Raw<AnyValue>>,
    pub show_return_value_in_logs: Option<bool>,
}

/// The condition of a short-circuit task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Condition {
    Python(PythonOperator),
    Bash(BashOperator),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShortCircuitOperator {
    pub condition: Condition,
    pub ignore_downstream_trigger_rules: bool,
}

pub(crate) struct ShortCircuit;

impl OperatorKind for ShortCircuit {
    const NAME: &'static str = "short_circuit";
    const ALIASES: &'static [&'static str] = &[
        "ShortCircuitOperator",
        "airflow.operators.python.ShortCircuitOperator",
        "airflow.operators.python_operator.ShortCircuitOperator",
        "airflow.providers.standard.operators.python.ShortCircuitOperator",
    ];
    const MODULE: &'static str = "airflow.providers.standard.operators.python";
    const CLASS: &'static str = "ShortCircuitOperator";
    const TEMPLATE_FIELDS: &'static [&'static str] = &["templates_dict", "op_args", "op_kwargs"];
    const UI_COLOR: &'static str = "#ffefeb";
    type Spec = ShortCircuitSpec;

    fn build(ctx: &mut Ctx<'_>, spec: Self::Spec, read: &mut ReadOp<'_>) -> Option<Operator> {
        let ignore = spec.ignore_downstream_trigger_rules.unwrap_or(true);
        let (_, rest) = split_keys(read.node, &["ignore_downstream_trigger_rules"]);
        let condition = if spec.bash_command.is_some() {
            let (bash_keys, python_keys) = split_keys(&rest, field_names::<BashSpec>());
            reject_mixed(ctx, read, &python_keys, "bash_command")?;
            let bash: BashSpec = read_spec(ctx, &bash_keys, read.fallback)?;
            let mut inner = read.with_node(&bash_keys);
            match Bash::build(ctx, bash, &mut inner)? {
                Operator::Bash(op) => Condition::Bash(op),
                _ => return None,
            }
        } else {
            let python: PythonSpec = read_spec(ctx, &rest, read.fallback)?;
            let mut inner = read.with_node(&rest);
            match Python::build(ctx, python, &mut inner)? {
                Operator::Python(op) => Condition::Python(op),
                _ => return None,
            }
        };
        Some(Operator::ShortCircuit(ShortCircuitOperator {
            condition,
            ignore_downstream_trigger_rules: ignore,
        }))
    }
}

fn reject_mixed(ctx: &mut Ctx<'_>, read: &ReadOp<'_>, others: &Node, with: &str) -> Option<()> {
    let keys: Vec<&str> = others
        .as_map()
        .unwrap_or_default()
        .iter()
        .filter_map(|(k, _)| k.as_str())
        .collect();
    if keys.is_empty() {
        return Some(());
    }
    ctx.error(
        read.span_of(keys[0]),
        format!(
            "`{}` is a Python condition's key; with `{with}` the condition is a command",
            keys[0]
        ),
    );
    None
}

/// `follow_task_ids_if_true` / `_if_false`: one id or a list.
fn read_ids(ctx: &mut Ctx<'_>, read: &ReadOp<'_>, key: &str, raw: &Raw<AnyValue>) -> Vec<String> {
    match to_json(&raw.node) {
        Json::String(s) => vec![s],
        Json::Array(items) => items
            .into_iter()
            .filter_map(|i| match i {
                Json::String(s) => Some(s),
                other => {
                    ctx.error(
                        read.span_of(key),
                        format!("`{key}`: `{other}` is not a task id"),
                    );
                    None
                }
            })
            .collect(),
        Json::Null => Vec::new(),
        other => {
            ctx.error(
                read.span_of(key),
                format!("`{key}`: expected a task id or a list of them, found `{other}`"),
            );
            Vec::new()
        }
    }
}

/// `follow_task_ids_if_true` and `follow_task_ids_if_false`, the calendar branches' keys.
fn read_follow(
    ctx: &mut Ctx<'_>,
    read: &ReadOp<'_>,
    if_true: &Raw<AnyValue>,
    if_false: &Raw<AnyValue>,
) -> (Vec<String>, Vec<String>) {
    (
        read_ids(ctx, read, "follow_task_ids_if_true", if_true),
        read_ids(ctx, read, "follow_task_ids_if_false", if_false),
    )
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BranchDayOfWeekSpec {
    /// A day (`Monday`, `monday`, `WeekDay.MONDAY`) or a list of days.
    #[schemars(with = "serde_json::Value")]
    pub week_day: Raw<AnyValue>,
    #[schemars(with = "serde_json::Value")]
    pub follow_task_ids_if_true: Raw<AnyValue>,
    #[schemars(with = "serde_json::Value")]
    pub follow_task_ids_if_false: Raw<AnyValue>,
    /// Compare the run's logical date instead of the time the task runs (default false).
    pub use_task_logical_date: Option<bool>,
    /// Airflow 2's name for `use_task_logical_date`.
    pub use_task_execution_day: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BranchDayOfWeekOperator {
    /// Monday = 0.
    pub week_days: Vec<u8>,
    pub follow_if_true: Vec<String>,
    pub follow_if_false: Vec<String>,
    pub use_task_logical_date: bool,
}

pub(crate) struct BranchDayOfWeek;

impl OperatorKind for BranchDayOfWeek {
    const NAME: &'static str = "branch_day_of_week";
    const ALIASES: &'static [&'static str] = &[
        "BranchDayOfWeekOperator",
        "airflow.operators.weekday.BranchDayOfWeekOperator",
        "airflow.providers.standard.operators.weekday.BranchDayOfWeekOperator",
    ];
    const MODULE: &'static str = "airflow.providers.standard.operators.weekday";
    const CLASS: &'static str = "BranchDayOfWeekOperator";
    const TEMPLATE_FIELDS: &'static [&'static str] = &[];
    type Spec = BranchDayOfWeekSpec;

    fn build(ctx: &mut Ctx<'_>, spec: Self::Spec, read: &mut ReadOp<'_>) -> Option<Operator> {
        let days: Vec<String> = match to_json(&spec.week_day.node) {
            Json::String(s) => vec![s],
            Json::Array(items) => items
                .into_iter()
                .map(|i| i.as_str().map(str::to_owned).unwrap_or_default())
                .collect(),
            _ => Vec::new(),
        };
        let mut week_days = Vec::new();
        for day in &days {
            let name = day.trim().trim_start_matches("WeekDay.");
            match name.parse::<Weekday>() {
                Ok(d) => week_days.push(u8::try_from(d.num_days_from_monday()).unwrap_or(0)),
                Err(_) => ctx.error(
                    read.span_of("week_day"),
                    format!("`week_day`: `{day}` is not a day of the week (Monday ... Sunday)"),
                ),
            }
        }
        if days.is_empty() {
            ctx.error(
                read.span_of("week_day"),
                "`week_day`: expected a day or a list of days",
            );
        }
        let (follow_if_true, follow_if_false) = read_follow(
            ctx,
            read,
            &spec.follow_task_ids_if_true,
            &spec.follow_task_ids_if_false,
        );
        Some(Operator::BranchDayOfWeek(BranchDayOfWeekOperator {
            week_days,
            follow_if_true,
            follow_if_false,
            use_task_logical_date: spec
                .use_task_logical_date
                .or(spec.use_task_execution_day)
                .unwrap_or(false),
        }))
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BranchDateTimeSpec {
    /// A time of day (`09:00`) or a date-time; at least one of the two bounds.
    pub target_lower: Option<String>,
    pub target_upper: Option<String>,
    #[schemars(with = "serde_json::Value")]
    pub follow_task_ids_if_true: Raw<AnyValue>,
    #[schemars(with = "serde_json::Value")]
    pub follow_task_ids_if_false: Raw<AnyValue>,
    pub use_task_logical_date: Option<bool>,
}

/// A bound of `branch_datetime`: a time of day (on the day compared) or a date-time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DateTimeBound {
    Time(NaiveTime),
    DateTime(NaiveDateTime),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BranchDateTimeOperator {
    pub target_lower: Option<DateTimeBound>,
    pub target_upper: Option<DateTimeBound>,
    pub follow_if_true: Vec<String>,
    pub follow_if_false: Vec<String>,
    pub use_task_logical_date: bool,
}

fn read_bound(
    ctx: &mut Ctx<'_>,
    read: &ReadOp<'_>,
    key: &str,
    text: &str,
) -> Option<DateTimeBound> {
    let t = text.trim();
    for f in ["%H:%M:%S", "%H:%M"] {
        if let Ok(time) = NaiveTime::parse_from_str(t, f) {
            return Some(DateTimeBound::Time(time));
        }
    }
    for f in [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(dt) = NaiveDateTime::parse_from_str(t, f) {
            return Some(DateTimeBound::DateTime(dt));
        }
    }
    ctx.error(
        read.span_of(key),
        format!(
            "`{key}`: `{text}` is neither a time (HH:MM[:SS]) nor a date-time (YYYY-MM-DDTHH:MM:SS)"
        ),
    );
    None
}

pub(crate) struct BranchDateTime;

impl OperatorKind for BranchDateTime {
    const NAME: &'static str = "branch_datetime";
    const ALIASES: &'static [&'static str] = &[
        "BranchDateTimeOperator",
        "airflow.operators.datetime.BranchDateTimeOperator",
        "airflow.providers.standard.operators.datetime.BranchDateTimeOperator",
    ];
    const MODULE: &'static str = "airflow.providers.standard.operators.datetime";
    const CLASS: &'static str = "BranchDateTimeOperator";
    const TEMPLATE_FIELDS: &'static [&'static str] = &[];
    type Spec = BranchDateTimeSpec;

    fn build(ctx: &mut Ctx<'_>, spec: Self::Spec, read: &mut ReadOp<'_>) -> Option<Operator> {
        if spec.target_lower.is_none() && spec.target_upper.is_none() {
            ctx.error(read.fallback, "set `target_lower`, `target_upper` or both");
            return None;
        }
        let target_lower = match &spec.target_lower {
            Some(t) => Some(read_bound(ctx, read, "target_lower", t)?),
            None => None,
        };
        let target_upper = match &spec.target_upper {
            Some(t) => Some(read_bound(ctx, read, "target_upper", t)?),
            None => None,
        };
        let (follow_if_true, follow_if_false) = read_follow(
            ctx,
            read,
            &spec.follow_task_ids_if_true,
            &spec.follow_task_ids_if_false,
        );
        Some(Operator::BranchDateTime(BranchDateTimeOperator {
            target_lower,
            target_upper,
            follow_if_true,
            follow_if_false,
            use_task_logical_date: spec.use_task_logical_date.unwrap_or(false),
        }))
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LatestOnlySpec {}

pub(crate) struct LatestOnly;

impl OperatorKind for LatestOnly {
    const NAME: &'static str = "latest_only";
    const ALIASES: &'static [&'static str] = &[
        "LatestOnlyOperator",
        "airflow.operators.latest_only.LatestOnlyOperator",
        "airflow.operators.latest_only_operator.LatestOnlyOperator",
        "airflow.providers.standard.operators.latest_only.LatestOnlyOperator",
    ];
    const MODULE: &'static str = "airflow.providers.standard.operators.latest_only";
    const CLASS: &'static str = "LatestOnlyOperator";
    const TEMPLATE_FIELDS: &'static [&'static str] = &[];
    const UI_COLOR: &'static str = "#e9ffdb";
    type Spec = LatestOnlySpec;

    fn build(_: &mut Ctx<'_>, _: Self::Spec, _: &mut ReadOp<'_>) -> Option<Operator> {
        Some(Operator::LatestOnly)
    }
}
